"""An arena: ratings of models from pairwise battles, with bootstrap intervals.

A battles file (JSONL, JSON, CSV, Parquet; read by :mod:`prefkit.data.sources`) has one row per battle
with the columns ``model_a``, ``model_b`` and ``winner`` ∈ {``model_a``, ``model_b``, ``tie``} (Chatbot
Arena's ``tie (bothbad)`` counts as a tie); other columns are ignored.

:func:`fit_bradley_terry` fits one strength θ_m per model by maximum likelihood under the registry's
Bradley–Terry loss (``LOSSES[ARENA_LOSS]``, ``−log σ(θ_w − θ_l)`` per battle, summed):

- ``ties="half"``: a tie is half a win for each side (two half-weighted battles, as Chatbot Arena does);
- ``ties=<tie model>``: one of the registry's tie models (the ``reward_pair`` losses with a tie head
  parameter: Rao–Kupper's θ, Davidson's ν), whose tie parameter is fitted with the strengths.

A weak ridge (``l2 · Σ θ²`` on the mean loss) keeps strengths finite when a model never loses. Strengths
go on the Elo scale, ``rating = 1000 + 400 · (θ_m − θ_anchor) / ln 10``, so a 400-point gap is 10:1 odds;
the anchor is a chosen model (rated exactly 1000) or, by default, the mean strength (mean rating 1000).
The 95% intervals are percentile intervals over ``bootstrap`` resamples of the battles (with
replacement); all resamples are fitted at once (L-BFGS on the stacked strengths), so a thousand resamples
take about a second.

:func:`elo_ratings` is the online Elo of the battles in file order (depends on the order; the fitted
ratings do not). :func:`kendall_tau` compares two rankings (τ-b, ties allowed).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from prefkit.data.sources import open_source
from prefkit.errors import ConfigError, DataError, did_you_mean
from prefkit.losses import ARENA_LOSS, LOSSES, PairScores, names_of

COLUMNS = ("model_a", "model_b", "winner")
"""The columns a battles file must have."""
WINNERS = {"model_a": 1.0, "model_b": 0.0, "tie": 0.5, "tie (bothbad)": 0.5}
"""``winner`` values and the outcome for model_a they mean."""
HALF = "half"
"""``ties=`` value: a tie counts as half a win for each side."""
TIE_MODELS: tuple[str, ...] = tuple(names_of(lambda spec: spec.kind == "reward_pair" and bool(spec.head_params)))
"""The registry's tie models (``ties=`` values besides :data:`HALF`)."""
SCALE, BASE, INITIAL = 400.0, 10.0, 1000.0
"""Elo scale: ``INITIAL + SCALE · log_BASE(odds)``."""


@dataclass(frozen=True)
class Battles:
    """Battles among ``models``: ``a``, ``b`` (N,) model indices, ``outcome`` (N,) 1 = a won, 0 = b won,
    ½ = tie."""

    models: tuple[str, ...]
    a: np.ndarray
    b: np.ndarray
    outcome: np.ndarray

    def __len__(self) -> int:
        return int(self.a.size)


def battles_from_rows(rows: Sequence[Mapping[str, Any]], source: str = "<rows>") -> Battles:
    """:class:`Battles` from dicts with ``model_a``, ``model_b``, ``winner``."""
    return _battles([(("row", i), r) for i, r in enumerate(rows)], source)


def read_battles(path: str | Path) -> Battles:
    """:class:`Battles` from a file; a bad row or column is a one-line ``DataError`` naming the line."""
    name, rows = open_source(path, frozenset(COLUMNS))
    return _battles(rows, name)


def _battles(rows: Any, source: str) -> Battles:
    index: dict[str, int] = {}
    a, b, outcome = [], [], []
    for (unit, where), row in rows:
        line = where if unit == "line" else None
        at = "" if line is not None else f"row {where}: "
        if isinstance(row, DataError):
            raise row
        if not isinstance(row, Mapping):
            raise DataError(f"{at}expected an object with {', '.join(COLUMNS)}", source=source, line=line)
        for column in COLUMNS:
            if column not in row:
                raise DataError(f"{at}missing column {column!r}{did_you_mean(column, map(str, row))}; a battle needs "
                                f"{', '.join(COLUMNS)}", source=source, line=line, field=column)
        ma, mb, winner = (row[c].strip() if isinstance(row[c], str) else row[c] for c in COLUMNS)
        if not (isinstance(ma, str) and isinstance(mb, str) and ma and mb):
            raise DataError(f"{at}model_a and model_b must be non-empty names", source=source, line=line)
        if ma == mb:
            raise DataError(f"{at}model {ma!r} battles itself", source=source, line=line)
        if winner not in WINNERS:
            raise DataError(f"{at}winner must be one of {list(WINNERS)}, got {winner!r}", source=source,
                            line=line, field="winner")
        a.append(index.setdefault(ma, len(index)))
        b.append(index.setdefault(mb, len(index)))
        outcome.append(WINNERS[winner])
    if not a:
        raise DataError("no battles", source=source)
    return Battles(tuple(index), np.array(a), np.array(b), np.array(outcome, dtype=np.float64))


def _as_battles(battles: Battles | str | Path | Sequence[Mapping[str, Any]]) -> Battles:
    if isinstance(battles, Battles):
        return battles
    if isinstance(battles, str | Path):
        return read_battles(battles)
    return battles_from_rows(battles)


@dataclass(frozen=True)
class Rating:
    """One model's row of the arena table: rating and 95% interval (Elo scale), battles played, win
    rate (ties ½)."""

    model: str
    rating: float
    low: float
    high: float
    battles: int
    win_rate: float


@dataclass(frozen=True)
class Arena:
    """What :func:`fit_bradley_terry` returns: ``ratings`` best first; ``anchor`` (a model, or None = mean
    rating 1000); ``ties`` (:data:`HALF` or a tie model) and its fitted ``tie_param`` (θ or ν);
    ``bootstrap`` resamples over ``n_battles`` battles."""

    ratings: tuple[Rating, ...]
    anchor: str | None
    ties: str
    tie_param: float | None
    bootstrap: int
    n_battles: int

    def rating_of(self) -> dict[str, float]:
        """model -> rating."""
        return {r.model: r.rating for r in self.ratings}

    def to_dict(self) -> dict[str, Any]:
        return {"anchor": self.anchor, "ties": self.ties, "tie_param": self.tie_param, "bootstrap": self.bootstrap,
                "n_battles": self.n_battles, "ratings": [r.__dict__ for r in self.ratings]}


def _design(battles: Battles, ties: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Battles grouped by (a, b, outcome): the group of every battle (N,), and the loss rows of the groups:
    winner, loser, tie flag, weight per battle of the group, group (M,)."""
    code = np.rint(battles.outcome * 2).astype(np.int64)  # 2 = a won, 0 = b won, 1 = tie
    keys, group = np.unique(np.stack([battles.a, battles.b, code], 1), axis=0, return_inverse=True)
    win, lose, tie, weight, of = [], [], [], [], []
    for g, (a, b, c) in enumerate(keys):
        if c == 1 and ties == HALF:  # half a win each way
            rows = [(a, b, False, 0.5), (b, a, False, 0.5)]
        else:
            rows = [(a, b, c == 1, 1.0)] if c >= 1 else [(b, a, False, 1.0)]
        for w, lo, t, wt in rows:
            win.append(w), lose.append(lo), tie.append(t), weight.append(wt), of.append(g)
    return (group.reshape(-1), np.array(win), np.array(lose), np.array(tie), np.array(weight), np.array(of))


def _fit_strengths(n_models: int, win: np.ndarray, lose: np.ndarray, tie: np.ndarray, weight: np.ndarray,
                   ties: str, l2: float) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Strengths (R, P) maximising the registry loss for every row of ``weight`` (R, M) at once, and the
    fitted tie parameter (R,) for a tie model."""
    spec = LOSSES[ARENA_LOSS] if ties == HALF else LOSSES[ties]
    w = torch.as_tensor(weight, dtype=torch.float64)  # (R, M) battles per loss row, per resample
    total = w.sum(1, keepdim=True).clamp_min(1e-12)  # (R, 1)
    r = w.shape[0]
    theta = torch.zeros(r, n_models, dtype=torch.float64, requires_grad=True)  # (R, P)
    params = [theta]
    tie_name = spec.head_params[0] if spec.head_params else None
    raw = None
    if tie_name is not None:  # fitted as low + softplus(raw), starting at the registry default
        param = spec.params[tie_name]
        low = float(param.low or 0.0)
        start = max(float(param.default) - low, 1e-3)
        raw = torch.full((r, 1), math.log(math.expm1(start)), dtype=torch.float64, requires_grad=True)  # (R, 1)
        params.append(raw)
    win_t, lose_t = torch.as_tensor(win), torch.as_tensor(lose)  # (M,)
    tie_t = torch.as_tensor(tie).expand(r, -1).reshape(-1)  # (R·M,)

    def objective() -> torch.Tensor:
        pred = PairScores(theta[:, win_t].reshape(-1), theta[:, lose_t].reshape(-1))  # (R·M,)
        kwargs: dict[str, Any] = {}
        if tie_name is not None and raw is not None:
            kwargs = {"ties": tie_t, tie_name: (low + F.softplus(raw)).expand(-1, win_t.numel()).reshape(-1)}
        losses = spec.fn(pred, None, **kwargs).losses.reshape(r, -1)  # (R, M)
        return ((w * losses).sum(1, keepdim=True) / total).sum() + l2 * (theta ** 2).sum()

    opt = torch.optim.LBFGS(params, lr=1, max_iter=500, tolerance_grad=1e-10, tolerance_change=1e-14,
                            history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = objective()
        loss.backward()
        return loss

    opt.step(closure)
    tie_param = None if raw is None else (low + F.softplus(raw.detach())).reshape(-1)
    return theta.detach(), tie_param


def fit_bradley_terry(battles: Battles | str | Path | Sequence[Mapping[str, Any]], *, anchor: str | None = None,
                      bootstrap: int = 1000, seed: int = 0, ties: str = HALF, l2: float = 1e-4) -> Arena:
    """Bradley–Terry ratings (Elo scale) with 95% bootstrap intervals over battles; see the module
    docstring. ``battles``: a file, rows, or :class:`Battles`; ``anchor``: the model rated 1000 (None:
    the mean rating is 1000); ``ties``: :data:`HALF` or one of :data:`TIE_MODELS`."""
    data = _as_battles(battles)
    if ties != HALF and ties not in TIE_MODELS:
        raise ConfigError(f"ties must be one of {[HALF, *TIE_MODELS]}, got {ties!r}"
                          f"{did_you_mean(ties, [HALF, *TIE_MODELS])}")
    if anchor is not None and anchor not in data.models:
        raise ConfigError(f"anchor {anchor!r} is not a model of the battles{did_you_mean(anchor, data.models)}; "
                          f"models: {sorted(data.models)}")
    if bootstrap < 0:
        raise ConfigError(f"bootstrap must be >= 0, got {bootstrap}")
    group, win, lose, tie, weight, of = _design(data, ties)
    n_groups = int(of.max()) + 1
    counts = np.bincount(group, minlength=n_groups).astype(np.float64)  # (G,) battles per group
    rng = np.random.default_rng(seed)
    resampled = rng.multinomial(len(data), counts / counts.sum(), size=bootstrap)  # (B, G) battles resampled
    group_counts = np.vstack([counts[None], resampled])  # (1 + B, G); row 0: the data
    theta, tie_param = _fit_strengths(len(data.models), win, lose, tie, group_counts[:, of] * weight, ties, l2)
    center = theta[:, data.models.index(anchor)] if anchor is not None else theta.mean(1)  # (1 + B,)
    elo = (INITIAL + SCALE / math.log(BASE) * (theta - center[:, None])).numpy()  # (1 + B, P)
    tail = 2.5
    low, high = (np.percentile(elo[1:], [tail, 100 - tail], axis=0) if bootstrap else (elo[0], elo[0]))
    played = np.bincount(data.a, minlength=len(data.models)) + np.bincount(data.b, minlength=len(data.models))
    won = (np.bincount(data.a, weights=data.outcome, minlength=len(data.models))
           + np.bincount(data.b, weights=1 - data.outcome, minlength=len(data.models)))
    rows = [Rating(m, float(elo[0, i]), float(low[i]), float(high[i]), int(played[i]), float(won[i] / played[i]))
            for i, m in enumerate(data.models)]
    rows.sort(key=lambda r: -r.rating)
    return Arena(tuple(rows), anchor, ties, None if tie_param is None else float(tie_param[0]), bootstrap, len(data))


def elo_ratings(battles: Battles | str | Path | Sequence[Mapping[str, Any]], k: float = 4.0) -> dict[str, float]:
    """Online Elo over the battles in order: every model starts at 1000; after each battle
    ``R_a += k · (S_a − E_a)`` and ``R_b −= k · (S_a − E_a)``, with ``E_a = 1 / (1 + 10^((R_b − R_a)/400))``
    and ``S_a`` = 1, ½ or 0 (k = 4 as Chatbot Arena's notebook). Order-dependent; prefer
    :func:`fit_bradley_terry`. Returns model -> rating."""
    data = _as_battles(battles)
    ratings = np.full(len(data.models), INITIAL)
    for a, b, s in zip(data.a.tolist(), data.b.tolist(), data.outcome.tolist(), strict=True):
        expected = 1.0 / (1.0 + BASE ** ((ratings[b] - ratings[a]) / SCALE))
        ratings[a] += k * (s - expected)
        ratings[b] -= k * (s - expected)
    return {m: float(r) for m, r in zip(data.models, ratings, strict=True)}


def kendall_tau(a: Sequence[float] | Mapping[str, float], b: Sequence[float] | Mapping[str, float]) -> float:
    """Kendall's τ-b between two rankings: sequences of scores over the same items, or mappings item ->
    score (compared on their common items; they must share at least two).

    τ-b = (C − D) / √((n0 − t_a)(n0 − t_b)), with C, D the concordant and discordant pairs, n0 = n(n−1)/2
    and t_a, t_b the pairs tied in a and in b. NaN when either ranking is constant."""
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        common = [k for k in a if k in b]
        x, y = np.array([a[k] for k in common], float), np.array([b[k] for k in common], float)
    else:
        x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1 or x.size < 2:
        raise ValueError(f"kendall_tau needs two rankings of the same >= 2 items, got {x.shape} and {y.shape}")
    i, j = np.triu_indices(x.size, k=1)
    sx, sy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])  # (n0,)
    n0 = i.size
    denom = math.sqrt(float(n0 - np.sum(sx == 0)) * float(n0 - np.sum(sy == 0)))
    return float(np.sum(sx * sy) / denom) if denom else math.nan


def plot_ratings(arena: Arena, path: str | Path) -> Path:
    """PNG of the ratings, best first, with their 95% intervals as error bars."""
    from matplotlib.figure import Figure

    rows = arena.ratings
    fig = Figure(figsize=(max(4.0, 0.6 * len(rows) + 2), 4.0), dpi=110)
    ax = fig.subplots()
    x = np.arange(len(rows))
    y = np.array([r.rating for r in rows])
    err = np.array([[r.rating - r.low for r in rows], [r.high - r.rating for r in rows]]).clip(min=0)
    ax.errorbar(x, y, yerr=err, fmt="o", color="#4c72b0", ecolor="#8c8c8c", capsize=4)
    ax.axhline(INITIAL, color="gray", linewidth=0.8, linestyle="--")
    ax.set_xticks(x, [r.model for r in rows], rotation=30, ha="right")
    ax.set_xlabel("model")
    anchor = f"{arena.anchor} = 1000" if arena.anchor else "mean = 1000"
    ax.set_ylabel(f"rating (Elo scale, {anchor})")
    ties = "ties ½" if arena.ties == HALF else f"ties: {arena.ties.replace('_', '-')}"
    ax.set_title(f"Bradley–Terry ratings, 95% bootstrap intervals\n{arena.n_battles} battles, {ties}")
    out = Path(path)
    fig.savefig(out, bbox_inches="tight")
    return out


__all__ = ["Battles", "Rating", "Arena", "read_battles", "battles_from_rows", "fit_bradley_terry", "elo_ratings",
           "kendall_tau", "plot_ratings", "COLUMNS", "WINNERS", "HALF", "TIE_MODELS"]
