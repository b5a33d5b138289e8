"""The ``eval:`` section of a run config: policy diagnostics during training.

The trainer only reads ``eval.every`` (when to call the evaluators it was given, ``Trainer(evaluators=...)``);
what the other fields switch on is built above ``train``, in ``prefkit.eval.during_training``, and wired
by ``prefkit train`` (``prefkit.train.run.run(..., evaluators=...)``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from prefkit.errors import ConfigError


@dataclass
class EvalConfig:
    """Policy diagnostics during training (``prefkit.eval``), logged as ``eval/ranking/*``,
    ``eval/displacement/*`` and ``eval/ches/*`` lines of ``metrics.jsonl`` (docs/evaluation.md)."""

    every: int = 0
    """Run the diagnostics before the first step, every N optimizer steps and at the end; 0: before the
    first step and at the end only."""
    ranking: bool = False
    """Ranking accuracy P[log π(y_w|x) > log π(y_l|x)] (summed and per token) on the evaluation pairs."""
    displacement: bool = False
    """Likelihood displacement on the evaluation pairs: mean log π(y|x) − log π_ref(y|x) of chosen and
    rejected, their margin, and the share of pairs whose chosen log-prob fell (π_ref: ``reference.path``,
    else the policy before training)."""
    ches: bool = False
    """Once, before the first step: CHES statistics (Razin et al. 2024) of the training pairs under the
    policy before training (mean, median, 90th percentile, max)."""
    max_pairs: int | None = 256
    """Score at most this many pairs per split (a seeded subsample, the same at every evaluation); null:
    all."""
    true_pref_prob: float | None = None
    """With ``eval.ranking``: the true preference probability p in (0, 1] (1: deterministic labels) for the
    idealized ranking accuracy of the exact DPO optimum and the alignment gap (needs ``loss.beta``);
    null: not logged."""
    batch_size: int = 16
    """Pairs per forward pass of the diagnostics."""

    def __post_init__(self) -> None:
        if self.every < 0:
            raise ConfigError(f"eval.every must be >= 0; got {self.every}")
        if self.batch_size < 1:
            raise ConfigError(f"eval.batch_size must be >= 1; got {self.batch_size}")
        if self.max_pairs is not None and self.max_pairs < 1:
            raise ConfigError(f"eval.max_pairs must be >= 1 (null: all pairs); got {self.max_pairs}")
        p = self.true_pref_prob
        if p is not None and not (math.isfinite(p) and 0 < p <= 1):
            raise ConfigError(f"eval.true_pref_prob must be in (0, 1]; got {p!r}")
        if p is not None and not self.ranking:
            raise ConfigError("eval.true_pref_prob is used by eval.ranking; set eval.ranking: true")

    @property
    def enabled(self) -> bool:
        """Whether any diagnostic is switched on."""
        return self.ranking or self.displacement or self.ches


__all__ = ["EvalConfig"]
