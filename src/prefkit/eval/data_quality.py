"""Preference strength over a reward-model ensemble, likely-mislabelled pairs and a margin filter.

The data-floor checks live in ``prefkit.data.diagnose``; this module adds what needs reward models.

Preference strength (Wang et al. 2024, "Secrets of RLHF in Large Language Models Part II: Reward
Modeling", §2.1): score each pair with M reward models; the margin of model m on pair i is its
preference logit, ``r_m(x, y_c) - r_m(x, y_r)`` for scalar heads. The pair's strength is the mean of
its M margins and its uncertainty their standard deviation (population, ``ddof=0``). A pair is *likely
mislabelled* when its mean margin is below 0 and every model puts the rejected answer ahead (all
margins < 0); the paper finds such low-strength pairs are mostly wrong labels or ambiguous.
Deviations: the paper trains its own ensemble of 10 models on bootstrap splits; here any prefkit
reward models serve (one model gives a spread of 0). Tie pairs are scored but never mislabelled and
never filtered.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from prefkit.data.diagnose import MAX_EXAMPLES, Check
from prefkit.data.records import Pair, Record
from prefkit.errors import ConfigError
from prefkit.models.reward import RewardModel, score_records

_KEY = "_strength"


@dataclass(frozen=True)
class Strength:
    """Per-pair margins of an ensemble: ``margins`` (M, N), one row per model, one column per pair."""

    models: tuple[str, ...]
    margins: np.ndarray  # (M, N) float64
    ties: np.ndarray  # (N,) bool

    @property
    def mean(self) -> np.ndarray:
        return self.margins.mean(0)  # (N,)

    @property
    def std(self) -> np.ndarray:
        return self.margins.std(0)  # (N,)

    @property
    def mislabelled(self) -> np.ndarray:
        """(N,) bool: mean margin < 0 with every model agreeing (all margins < 0); ties excluded."""
        return (self.mean < 0) & np.all(self.margins < 0, axis=0) & ~self.ties

    def summary(self) -> dict[str, float | int | list[str]]:
        mean, std = self.mean, self.std
        return {"models": list(self.models), "pairs": int(mean.size),
                "mean_margin": float(mean.mean()) if mean.size else float("nan"),
                "std_of_mean_margin": float(mean.std()) if mean.size else float("nan"),
                "mean_spread": float(std.mean()) if std.size else float("nan"),
                "mislabelled": int(self.mislabelled.sum())}


def pairs_of(records: Sequence[Record]) -> list[int]:
    """Indices of the pair records (the only ones an ensemble scores)."""
    return [i for i, r in enumerate(records) if isinstance(r, Pair)]


def preference_strength(records: Sequence[Pair], models: Sequence[RewardModel], *,
                        names: Sequence[str] | None = None, batch_size: int = 32) -> Strength:
    """Margins of every model on every pair (the preference logit; GPM heads included)."""
    if not models:
        raise ConfigError("preference strength needs at least one reward model")
    if any(not isinstance(r, Pair) for r in records):
        raise ConfigError("preference strength scores pair records only; pass the pairs")
    names = tuple(names) if names is not None else tuple(f"model {i}" for i in range(len(models)))
    rows = []
    for model in models:
        scored = score_records(model, list(records), batch_size=batch_size, key=_KEY)
        rows.append([r.metadata[f"{_KEY}_margin"] for r in scored])
    margins = np.asarray(rows, dtype=float).reshape(len(models), len(records))  # (M, N)
    return Strength(names, margins, np.array([r.tie for r in records], dtype=bool))


def strength_checks(strength: Strength, where: Sequence[str], min_margin: float | None = None) -> list[Check]:
    """Checks for the diagnose table: likely-mislabelled pairs, and pairs below ``min_margin``."""
    n = strength.margins.shape[1]
    bad = np.flatnonzero(strength.mislabelled)
    worst = bad[np.argsort(strength.mean[bad])]
    hits = [f"{where[i]} ({strength.mean[i]:+.2f})" for i in worst]
    out = [Check("mislabelled", f"likely mislabelled (all {len(strength.models)} models disagree)", len(hits), n,
                 tuple(hits[:MAX_EXAMPLES]))]
    if min_margin is not None:
        low = np.flatnonzero((strength.mean < min_margin) & ~strength.ties)
        low = low[np.argsort(strength.mean[low])]
        out.append(Check("below_min_margin", f"mean margin < {min_margin:g} (dropped)", len(low), n,
                         tuple(f"{where[i]} ({strength.mean[i]:+.2f})" for i in low[:MAX_EXAMPLES])))
    return out


def filter_by_margin(records: Sequence[Record], strength: Strength, min_margin: float) -> list[Record]:
    """``records`` without the non-tie pairs whose mean margin is below ``min_margin``; each kept pair gets
    ``metadata["rm_margin_mean"]`` and ``["rm_margin_std"]``. Other records are kept as they are.
    ``strength`` holds the pairs of ``records`` in order (as :func:`pairs_of` lists them)."""
    idx = pairs_of(records)
    if len(idx) != strength.margins.shape[1]:
        raise ConfigError(f"strength covers {strength.margins.shape[1]} pairs, records hold {len(idx)}")
    col = {i: k for k, i in enumerate(idx)}
    mean, std = strength.mean, strength.std
    out: list[Record] = []
    for i, r in enumerate(records):
        if i not in col:
            out.append(r)
            continue
        k = col[i]
        if mean[k] < min_margin and not strength.ties[k]:
            continue
        out.append(replace(r, metadata={**r.metadata, "rm_margin_mean": float(mean[k]),
                                        "rm_margin_std": float(std[k])}))
    return out


__all__ = ["Strength", "filter_by_margin", "pairs_of", "preference_strength", "strength_checks"]
