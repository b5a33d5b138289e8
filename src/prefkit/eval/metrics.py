"""Generic metrics on plain tensors or sequences: accuracy of signed margins, calibration, buckets.

Conventions: a *margin* (or logit) is ``log P(a ≻ b) − log P(b ≻ a)``, positive when the model prefers
the labelled winner; an exact 0 counts as half right (a coin flip), so a constant model scores 0.5.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


def pairwise_accuracy(margins: Tensor | Sequence[float]) -> float:
    """Fraction of margins > 0, counting exact zeros as 1/2; NaN for no margins.

    Example: margins [2.0, -1.0, 0.0, 0.5] -> (1 + 0 + 0.5 + 1) / 4 = 0.625.
    """
    m = torch.as_tensor(margins, dtype=torch.float64).reshape(-1)
    if m.numel() == 0:
        return math.nan
    return float(((m > 0).double() + 0.5 * (m == 0).double()).mean())


def sign_baseline_accuracy(chosen: Sequence[float], rejected: Sequence[float]) -> float:
    """Accuracy of the rule "the larger value wins" (e.g. lengths): ``pairwise_accuracy(c − r)``."""
    return pairwise_accuracy(torch.as_tensor(chosen, dtype=torch.float64)
                             - torch.as_tensor(rejected, dtype=torch.float64))


@dataclass(frozen=True)
class CalibrationBin:
    """One reliability bin: confidence range [low, high), examples, mean confidence, accuracy."""

    low: float
    high: float
    count: int
    confidence: float
    accuracy: float


def calibration_bins(confidence: Tensor | Sequence[float], correct: Tensor | Sequence[float], *,
                     num_bins: int = 10, low: float = 0.5) -> list[CalibrationBin]:
    """Equal-width bins of ``confidence`` over [low, 1] with mean confidence and accuracy per bin.

    ``correct`` is 1 / 0 (or 0.5 for a coin flip) per example. The last bin includes 1.0. Empty bins
    are kept (count 0, NaN confidence and accuracy) so plots have a fixed x axis.
    """
    conf = torch.as_tensor(confidence, dtype=torch.float64).reshape(-1)
    corr = torch.as_tensor(correct, dtype=torch.float64).reshape(-1)
    edges = torch.linspace(low, 1.0, num_bins + 1, dtype=torch.float64)
    index = torch.bucketize(conf.clamp(low, 1.0), edges[1:-1], right=True)  # (N,) in [0, num_bins)
    out = []
    for k in range(num_bins):
        sel = index == k
        n = int(sel.sum())
        out.append(CalibrationBin(float(edges[k]), float(edges[k + 1]), n,
                                  float(conf[sel].mean()) if n else math.nan,
                                  float(corr[sel].mean()) if n else math.nan))
    return out


def expected_calibration_error(bins: Sequence[CalibrationBin]) -> float:
    """ECE = Σ_k (n_k / N) · |accuracy_k − confidence_k| over non-empty bins (Guo et al. 2017, Eq. 3).

    Example: bins (n=2, conf 0.6, acc 0.5) and (n=2, conf 0.9, acc 1.0) -> 0.5·0.1 + 0.5·0.1 = 0.1.
    """
    total = sum(b.count for b in bins)
    if total == 0:
        return math.nan
    return sum(b.count / total * abs(b.accuracy - b.confidence) for b in bins if b.count)


def pair_confidence(margins: Tensor | Sequence[float]) -> tuple[Tensor, Tensor]:
    """(confidence, correct) of pairwise predictions from margins (logits).

    The model predicts the side it prefers, with confidence ``max(p, 1 − p)``, ``p = σ(margin)``;
    ``correct`` is 1 when that side is the labelled winner, 0.5 for margin 0. This is the symmetric
    (orientation-free) form of reward-model calibration, so ECE does not depend on which response a
    file lists first.
    """
    m = torch.as_tensor(margins, dtype=torch.float64).reshape(-1)
    p = torch.sigmoid(m)
    return torch.maximum(p, 1 - p), (m > 0).double() + 0.5 * (m == 0).double()


def quantile_edges(values: Sequence[float], num_buckets: int) -> list[float]:
    """Interior bucket edges at the quantiles of ``values`` (duplicates removed), for ``bucket_of``."""
    v = torch.as_tensor(values, dtype=torch.float64).reshape(-1)
    if v.numel() == 0 or num_buckets < 2:
        return []
    qs = torch.quantile(v, torch.linspace(0, 1, num_buckets + 1, dtype=torch.float64)[1:-1])
    return sorted({float(q) for q in qs})


def bucket_of(value: float, edges: Sequence[float]) -> int:
    """Index of the bucket holding ``value``: bucket k is [edges[k-1], edges[k]) (open at both ends)."""
    k = 0
    while k < len(edges) and value >= edges[k]:
        k += 1
    return k


def bucket_labels(edges: Sequence[float], unit: str = "") -> list[str]:
    """Readable labels for the buckets defined by ``edges``: ``<120``, ``120–300``, ``>=300``."""
    if not edges:
        return ["all"]
    fmt = [f"{e:g}" for e in edges]
    return ([f"<{fmt[0]}{unit}"] + [f"{a}–{b}{unit}" for a, b in zip(fmt, fmt[1:], strict=False)]
            + [f">={fmt[-1]}{unit}"])


__all__ = ["pairwise_accuracy", "sign_baseline_accuracy", "CalibrationBin", "calibration_bins",
           "expected_calibration_error", "pair_confidence", "quantile_edges", "bucket_of", "bucket_labels"]
