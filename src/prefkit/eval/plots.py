"""PNG plots for evaluation reports (matplotlib, headless ``Agg`` backend, no global style changes)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def _figure(width: float = 5.0, height: float = 4.0) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=110)  # no pyplot: no global state, no GUI backend


def plot_reliability(calibration: Mapping[str, Any], path: str | Path) -> Path:
    """Reliability diagram: accuracy per confidence bin (bars) against the diagonal, counts below.

    ``calibration`` is the ``"calibration"`` section of a reward-model report (``ece`` and ``bins``
    with ``low``, ``high``, ``count``, ``confidence``, ``accuracy``).
    """
    bins: Sequence[Mapping[str, Any]] = calibration["bins"]
    fig = _figure(5.0, 5.2)
    ax, ax_n = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    lows = [b["low"] for b in bins]
    widths = [b["high"] - b["low"] for b in bins]
    acc = [b["accuracy"] if b["count"] and b["accuracy"] is not None else 0.0 for b in bins]
    conf = [b["confidence"] if b["count"] and b["confidence"] is not None else math.nan for b in bins]
    ax.bar(lows, acc, width=widths, align="edge", color="#4c72b0", edgecolor="white", label="accuracy")
    ax.plot([b["low"] + (b["high"] - b["low"]) / 2 for b in bins], conf, "o", color="#dd8452",
            label="mean confidence")
    lo = lows[0] if lows else 0.5
    ax.plot([lo, 1.0], [lo, 1.0], "--", color="gray", label="perfect calibration")
    ax.set_xlim(lo, 1.0)
    ax.set_ylim(0.0, 1.0)
    ax.set_ylabel("accuracy (chosen scored higher)")
    ece = calibration.get("ece")
    ax.set_title(f"Reliability diagram (ECE {ece:.3f})" if isinstance(ece, float) and math.isfinite(ece)
                 else "Reliability diagram")
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.08), ncol=3, fontsize=8, frameon=False)  # above the axes
    ax_n.bar(lows, [b["count"] for b in bins], width=widths, align="edge", color="#8c8c8c",
             edgecolor="white")
    ax_n.set_xlabel("confidence max(p, 1 − p)")
    ax_n.set_ylabel("pairs")
    out = Path(path)
    fig.savefig(out, bbox_inches="tight")  # "tight": the legend outside the axes is kept
    return out


def plot_margin_histogram(histogram: Mapping[str, Any], path: str | Path) -> Path:
    """Histogram of margins (chosen − rejected), stacked by correct (> 0) and wrong (≤ 0) pairs."""
    edges: Sequence[float] = histogram["edges"]
    fig = _figure()
    ax = fig.subplots()
    lefts, widths = list(edges[:-1]), [b - a for a, b in zip(edges, edges[1:], strict=False)]
    ax.bar(lefts, histogram["wrong"], width=widths, align="edge", color="#c44e52", label="wrong")
    ax.bar(lefts, histogram["correct"], width=widths, align="edge", bottom=histogram["wrong"],
           color="#55a868", label="correct")
    ax.axvline(0.0, color="black", linewidth=0.8)
    ax.set_xlabel("margin  log P(chosen ≻ rejected) − log P(rejected ≻ chosen)")
    ax.set_ylabel("pairs")
    ax.set_title("Reward margins")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, fontsize=8)  # beside the axes
    out = Path(path)
    fig.savefig(out, bbox_inches="tight")  # "tight": the legend outside the axes is kept
    return out


__all__ = ["plot_reliability", "plot_margin_histogram"]
