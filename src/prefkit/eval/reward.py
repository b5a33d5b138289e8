"""Reward-model evaluation on preference pairs: accuracy tables, length baselines, calibration, ties.

:func:`evaluate_margins` works on precomputed margins (any scorer: a reward model, a policy's implicit
reward, a judge), :func:`evaluate_reward_model` scores pairs with a
:class:`~prefkit.models.reward.RewardModel` first. Both return a :class:`RewardEvalReport`, a plain
nested dict (``.data``) that :func:`write_report` saves as JSON next to the reliability-diagram and
margin-histogram PNGs, and :func:`print_report` shows as terminal tables.

What is measured (margin = ``log P(chosen ≻ rejected) / P(rejected ≻ chosen)`` per pair; for scalar
heads ``r_chosen − r_rejected``):

- **accuracy**: fraction of non-tie pairs with margin > 0 (0 counts 1/2), overall, per value of a
  subset/category column (``by``), per length bucket (quantiles of the mean response length in
  characters) and per length relation (chosen longer / shorter / same length);
- the two **length baselines** next to each: "longer wins" and "shorter wins";
- **calibration**: confidence ``max(p, 1 − p)`` with ``p = σ(margin)`` against correctness, in
  equal-width bins over [0.5, 1]; expected calibration error (ECE) and a reliability diagram;
- **margins**: mean, median and a histogram (correct vs wrong pairs);
- **ties** (when the data has tie pairs): how many, mean ``|margin|`` on tie and non-tie pairs, and
  three-way accuracy (chosen / tie / rejected): with a tie-aware head the most likely outcome; else
  "tie" when ``|p − 0.5| < tie_band``.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from prefkit.data.records import Pair, num_chars
from prefkit.errors import DataError
from prefkit.eval.metrics import (
    bucket_labels,
    bucket_of,
    calibration_bins,
    expected_calibration_error,
    pair_confidence,
    pairwise_accuracy,
    quantile_edges,
    sign_baseline_accuracy,
)
from prefkit.eval.personal import personal_report

if TYPE_CHECKING:
    from prefkit.models.reward import RewardModel

REPORT_JSON = "rm_eval.json"
RELIABILITY_PNG = "reliability.png"
MARGINS_PNG = "margins.png"


@dataclass
class RewardEvalReport:
    """The evaluation result: ``data`` is a JSON-ready nested dict (see the module docstring)."""

    data: dict[str, Any]
    margins: list[float] = field(default_factory=list)
    ties: list[bool] = field(default_factory=list)

    @property
    def accuracy(self) -> float:
        """Pairwise accuracy on the non-tie pairs."""
        return float(self.data["accuracy"])

    def __getitem__(self, key: str) -> Any:
        return self.data[key]


def group_value(record: Pair, column: str) -> str:
    """The value of a subset/category column: a record attribute (``source``, ``user_id``...) or a
    ``metadata`` key; ``"(none)"`` when absent."""
    value = getattr(record, column, None) if column != "metadata" else None
    if value is None:
        value = record.metadata.get(column) if record.metadata else None
    return "(none)" if value is None else str(value)


def _row(margins: Sequence[float], lc: Sequence[float], lr: Sequence[float]) -> dict[str, Any]:
    return {"n": len(margins), "accuracy": pairwise_accuracy(margins),
            "longer_wins": sign_baseline_accuracy(lc, lr), "shorter_wins": sign_baseline_accuracy(lr, lc)}


def evaluate_margins(margins: Sequence[float] | Tensor, records: Sequence[Pair], *,
                     by: str | None = None, num_length_buckets: int = 4, num_bins: int = 10,
                     tie_probs: Sequence[float] | Tensor | None = None, tie_band: float = 0.1,
                     margin_bins: int = 30) -> RewardEvalReport:
    """Evaluate pairwise margins against the pairs they were computed on (same order).

    ``tie_probs``: predicted P(tie) per pair from a tie-aware model (three-way accuracy uses the most
    likely outcome); without it a pair is predicted a tie when ``|σ(margin) − 0.5| < tie_band``.
    """
    m = [float(x) for x in torch.as_tensor(margins, dtype=torch.float64).reshape(-1)]
    if len(m) != len(records):
        raise ValueError(f"{len(m)} margins for {len(records)} records")
    if not records:
        raise DataError("no preference pairs to evaluate")
    if any(math.isnan(x) for x in m):
        raise DataError("the model produced NaN scores; check the model and the data")
    ties = [bool(r.tie) for r in records]
    lc = [float(num_chars(r.chosen)) for r in records]
    lr = [float(num_chars(r.rejected)) for r in records]
    strict = [i for i, t in enumerate(ties) if not t]

    def pick(idx: Sequence[int]) -> dict[str, Any]:
        return _row([m[i] for i in idx], [lc[i] for i in idx], [lr[i] for i in idx])

    data: dict[str, Any] = {"n_pairs": len(records), "n_ties": sum(ties)}
    overall = pick(strict)
    data.update(accuracy=overall["accuracy"], baselines={"longer_wins": overall["longer_wins"],
                                                          "shorter_wins": overall["shorter_wins"]})
    if by:
        groups: dict[str, list[int]] = {}
        for i in strict:
            groups.setdefault(group_value(records[i], by), []).append(i)
        data["by"] = by
        data["by_subset"] = {k: pick(v) for k, v in sorted(groups.items())}
    mean_len = [(lc[i] + lr[i]) / 2 for i in strict]
    edges = quantile_edges(mean_len, num_length_buckets)
    labels = bucket_labels([round(e) for e in edges], " chars")
    buckets: dict[int, list[int]] = {}
    for i, v in zip(strict, mean_len, strict=True):
        buckets.setdefault(bucket_of(v, edges), []).append(i)
    data["by_length"] = [{"bucket": labels[k], **pick(buckets[k])} for k in sorted(buckets)]
    relation = {"chosen longer": [i for i in strict if lc[i] > lr[i]],
                "chosen shorter": [i for i in strict if lc[i] < lr[i]],
                "same length": [i for i in strict if lc[i] == lr[i]]}
    data["by_length_relation"] = {k: pick(v) for k, v in relation.items() if v}

    conf, correct = pair_confidence([m[i] for i in strict])
    bins = calibration_bins(conf, correct, num_bins=num_bins)
    data["calibration"] = {"ece": expected_calibration_error(bins), "mean_confidence": float(conf.mean())
                           if conf.numel() else math.nan,
                           "bins": [b.__dict__ for b in bins]}
    strict_m = [m[i] for i in strict]
    hist_edges = _hist_edges(strict_m, margin_bins)
    data["margins"] = {
        "mean": statistics.fmean(strict_m) if strict_m else math.nan,
        "median": statistics.median(strict_m) if strict_m else math.nan,
        "histogram": {"edges": hist_edges,
                      "correct": _hist([x for x in strict_m if x > 0], hist_edges),
                      "wrong": _hist([x for x in strict_m if x <= 0], hist_edges)},
    }
    if any(ties):
        data["ties"] = _tie_metrics(m, ties, tie_probs, tie_band)
    return RewardEvalReport(data, m, ties)


def _tie_metrics(m: list[float], ties: list[bool], tie_probs: Sequence[float] | Tensor | None,
                 tie_band: float) -> dict[str, Any]:
    tie_idx = [i for i, t in enumerate(ties) if t]
    strict_idx = [i for i, t in enumerate(ties) if not t]
    if tie_probs is not None:
        pt = [float(x) for x in torch.as_tensor(tie_probs, dtype=torch.float64).reshape(-1)]
        pred_tie = []
        for x, t in zip(m, pt, strict=True):
            p_win = (1 - t) / (1 + math.exp(-x))
            pred_tie.append(t > max(p_win, 1 - t - p_win))
        rule = "most likely of (chosen, tie, rejected) under the tie model"
    else:
        pred_tie = [abs(1 / (1 + math.exp(-x)) - 0.5) < tie_band for x in m]
        rule = f"tie when |sigmoid(margin) - 0.5| < {tie_band}"
    three_way = [(pred_tie[i] if ties[i] else (not pred_tie[i] and m[i] > 0)) for i in range(len(m))]
    out = {"n": len(tie_idx), "rule": rule,
           "tie_recall": statistics.fmean(pred_tie[i] for i in tie_idx),
           "three_way_accuracy": statistics.fmean(three_way),
           "mean_abs_margin_ties": statistics.fmean(abs(m[i]) for i in tie_idx),
           "mean_abs_margin_strict": statistics.fmean(abs(m[i]) for i in strict_idx) if strict_idx else math.nan}
    if tie_probs is not None:
        pt = torch.as_tensor(tie_probs, dtype=torch.float64).reshape(-1)
        out["mean_p_tie_on_ties"] = float(pt[tie_idx].mean())
        out["mean_p_tie_on_strict"] = float(pt[strict_idx].mean()) if strict_idx else math.nan
    return out


def _hist_edges(values: Sequence[float], n: int) -> list[float]:
    if not values:
        return [0.0, 1.0]
    hi = max(abs(v) for v in values) or 1.0
    return [(-hi + 2 * hi * k / n) for k in range(n + 1)]


def _hist(values: Sequence[float], edges: Sequence[float]) -> list[int]:
    counts = [0] * (len(edges) - 1)
    for v in values:
        k = min(max(bucket_of(v, edges[1:-1]), 0), len(counts) - 1)
        counts[k] += 1
    return counts


# -- with a reward model ---------------------------------------------------------------------------


def evaluate_reward_model(model: RewardModel, records: Sequence[Any], *, by: str | None = None,
                          batch_size: int = 32, **kwargs: Any) -> RewardEvalReport:
    """Score the pair records of ``records`` with ``model`` and evaluate them (others are skipped)."""
    from prefkit.models.reward import TieHead

    pairs = [r for r in records if isinstance(r, Pair)]
    if not pairs:
        raise DataError("no preference pairs in the data; rm eval needs pair records (chosen/rejected)")
    if getattr(model.head, "personal", False):  # each pair scored for its own user (prefkit.models.personal)
        with torch.no_grad():
            margins, tie_probs = model.pair_logits(pairs, batch_size=batch_size), None
    else:
        chosen, rejected = model.pair_outputs(pairs, batch_size=batch_size)
        with torch.no_grad():
            margins = model.head.preference_logits(chosen, rejected)
            tie = isinstance(model.head, TieHead)
            tie_probs = model.head.outcome_probs(chosen, rejected)[1] if tie else None
    report = evaluate_margins(margins, pairs, by=by, tie_probs=tie_probs, **kwargs)
    report.data["skipped_non_pairs"] = len(records) - len(pairs)
    if any(r.user_id is not None for r in pairs) and any(not r.tie for r in pairs):
        report.data["personal"] = personal_report(report.margins, pairs)
    return report


# -- output ----------------------------------------------------------------------------------------


def _json_safe(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    return x


def write_report(report: RewardEvalReport, out_dir: str | Path, *, plots: bool = True) -> dict[str, Path]:
    """Write ``rm_eval.json`` (NaN as null) and, with ``plots``, ``reliability.png`` and ``margins.png``."""
    from prefkit.eval.plots import plot_margin_histogram, plot_reliability

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / REPORT_JSON}
    paths["json"].write_text(json.dumps(_json_safe(report.data), indent=2) + "\n")
    if plots:
        paths["reliability"] = plot_reliability(report.data["calibration"], out / RELIABILITY_PNG)
        paths["margins"] = plot_margin_histogram(report.data["margins"]["histogram"], out / MARGINS_PNG)
    return paths


def _fmt(x: Any) -> str:
    if isinstance(x, float):
        return "—" if math.isnan(x) else f"{x:.3f}"
    return str(x)


def print_report(report: RewardEvalReport, echo: Callable[[Any], None] | None = None) -> None:
    """Show the report as rich tables (accuracy beside the length baselines, calibration, ties)."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    show = echo or console.print
    d = report.data
    table = Table(title=f"Reward-model pairwise accuracy ({d['n_pairs'] - d['n_ties']} pairs"
                        + (f", {d['n_ties']} ties" if d["n_ties"] else "") + ")")
    for col in ("slice", "n", "accuracy", "longer wins", "shorter wins"):
        table.add_column(col, justify="left" if col == "slice" else "right")
    base = d["baselines"]
    table.add_row("overall", str(d["n_pairs"] - d["n_ties"]), _fmt(d["accuracy"]),
                  _fmt(base["longer_wins"]), _fmt(base["shorter_wins"]), style="bold")

    def rows(title: str, items: list[tuple[str, dict[str, Any]]]) -> None:
        table.add_section()
        for name, r in items:
            table.add_row(f"{title}: {name}", str(r["n"]), _fmt(r["accuracy"]), _fmt(r["longer_wins"]),
                          _fmt(r["shorter_wins"]))

    if "by_subset" in d:
        rows(d["by"], list(d["by_subset"].items()))
    rows("length", [(r["bucket"], r) for r in d["by_length"]])
    rows("relation", list(d["by_length_relation"].items()))
    show(table)
    cal, mar = d["calibration"], d["margins"]
    show(f"calibration: ECE {_fmt(cal['ece'])} (mean confidence {_fmt(cal['mean_confidence'])}); "
         f"margin mean {_fmt(mar['mean'])}, median {_fmt(mar['median'])}")
    if "personal" in d:
        print_personal(d["personal"], show)
    if "ties" in d:
        t = d["ties"]
        show(f"ties: {t['n']} pairs; three-way accuracy {_fmt(t['three_way_accuracy'])}, tie recall "
             f"{_fmt(t['tie_recall'])} ({t['rule']}); mean |margin| ties {_fmt(t['mean_abs_margin_ties'])} "
             f"vs strict {_fmt(t['mean_abs_margin_strict'])}")


def print_personal(personal: dict[str, Any], echo: Callable[[Any], None] | None = None) -> None:
    """The per-user summary (count, mean, min, worst users) and the per-group accuracy table of a
    :func:`prefkit.eval.personal.personal_report`."""
    from rich.console import Console
    from rich.table import Table

    show = echo or Console().print
    u = personal["users"]
    if u.get("count"):
        worst = ", ".join(f"{w['user']} {_fmt(w['accuracy'])} ({w['n']})" for w in u["worst"])
        show(f"per user: {u['count']} users; accuracy mean {_fmt(u['mean'])}, median {_fmt(u['median'])}, "
             f"min {_fmt(u['min'])}, max {_fmt(u['max'])}; worst: {worst}")
    groups = personal["per_group"]
    if set(groups) != {"(none)"}:
        table = Table(title="Accuracy per group (metadata.group)")
        for col in ("group", "n", "accuracy"):
            table.add_column(col, justify="left" if col == "group" else "right")
        for g, r in groups.items():
            table.add_row(g, str(r["n"]), _fmt(r["accuracy"]))
        show(table)


__all__ = ["RewardEvalReport", "print_personal",
           "evaluate_margins", "evaluate_reward_model", "write_report", "print_report",
           "group_value", "REPORT_JSON", "RELIABILITY_PNG", "MARGINS_PNG"]
