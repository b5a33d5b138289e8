"""Run outputs: ``metrics.jsonl`` (TRL-compatible keys), TensorBoard events, PNG plots, the progress bar.

Keys written per logged step: ``step``, ``epoch``, ``loss``, ``grad_norm``, ``lr``, ``tokens/s`` and
the objective's metrics (for preference losses TRL's ``rewards/chosen``, ``rewards/rejected``,
``rewards/margins``, ``rewards/accuracies``, ``logps/chosen``, ``logps/rejected``). Evaluation lines
carry the same keys prefixed ``eval/``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prefkit.errors import PrefkitError

PLOTS = {  # file -> keys drawn (train and eval/ variants when present)
    "loss.png": ("loss",),
    "rewards.png": ("rewards/chosen", "rewards/rejected", "rewards/margins"),
    "accuracy.png": ("rewards/accuracies",),
    "logps.png": ("logps/chosen", "logps/rejected"),
    "lr.png": ("lr",),
    "ranking.png": ("ranking/accuracy", "ranking/normalized_accuracy", "ranking/idealized_accuracy"),  # eval: section
    "displacement.png": ("displacement/chosen", "displacement/rejected", "displacement/margin"),
}

# file -> (title, y-axis label). ``logps/*`` are log-probs *summed* over the completion tokens (the
# engine's ``sequence_logps``; for rankings "rejected" is the mean of the other responses' sums).
PLOT_LABELS = {
    "loss.png": ("Training loss", "loss"),
    "rewards.png": ("Rewards of chosen and rejected, and their margin", "reward"),
    "accuracy.png": ("Preference accuracy (reward chosen > rejected)", "accuracy"),
    "logps.png": ("Completion log-probs, summed over tokens", "log π(completion | prompt), sum"),
    "lr.png": ("Learning rate", "learning rate"),
    "ranking.png": ("Ranking accuracy: log π(y_w|x) > log π(y_l|x)", "accuracy"),
    "displacement.png": ("Likelihood displacement: log π(y|x) − log π_ref(y|x)", "log-ratio, summed"),
}


class MetricsWriter:
    """Appends metric lines to ``metrics.jsonl`` and mirrors them to TensorBoard when available."""

    def __init__(self, run_dir: str | Path, *, tensorboard: bool = True):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard not installed: JSONL only
                SummaryWriter = None
            if SummaryWriter is not None:
                self.tb = SummaryWriter(str(Path(run_dir) / "tensorboard"))

    def write(self, values: Mapping[str, Any]) -> None:
        line = {k: (float(v) if isinstance(v, float) else v) for k, v in values.items()}
        with self.path.open("a") as fh:
            fh.write(json.dumps(line) + "\n")
        if self.tb is not None:
            step = int(values.get("step", 0))
            for key, value in values.items():
                if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                    self.tb.add_scalar(key, value, step)

    def truncate_after(self, step: int, *, final: bool = False) -> str | None:
        """Drop lines past ``step`` (a resumed run rewrites them), and with ``final`` (resuming from the
        last step's checkpoint) the evaluation lines at ``step`` too (the final evaluation is written again).
        A half-written last line (a run killed mid-write) is dropped; returns a notice saying so."""
        if not self.path.is_file():
            return None
        rows, torn = _parse(self.path)
        keep = [line for line, row in rows if row.get("step", 0) < step or (
            row.get("step", 0) == step and not (final and _is_eval(row)))]
        self.path.write_text("".join(line + "\n" for line in keep))
        if torn is None:
            return None
        return f"{self.path}: dropped a half-written last line ({torn[:40]!r}...), left by a stopped run"

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The lines of ``<run_dir>/metrics.jsonl`` (a half-written last line is left out)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    return [row for _, row in _parse(path)[0]]


def _parse(path: Path) -> tuple[list[tuple[str, dict[str, Any]]], str | None]:
    """((line, row) of every complete line, the half-written last line or None). A bad line elsewhere is
    one ``PrefkitError`` naming it."""
    text = path.read_text(errors="replace")
    lines = text.split("\n")
    tail = lines.pop()  # "" when the file ends with a newline
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        row = _row(line)
        if row is None:
            if number == len(lines) and not tail:  # the last line, newline written but not JSON: torn too
                return rows, line
            raise PrefkitError(f"{path} line {number}: not a metrics line (not a JSON object); "
                               "fix or remove that line")
        rows.append((line, row))
    if tail.strip():
        row = _row(tail)
        if row is None:
            return rows, tail
        rows.append((tail, row))
    return rows, None


def _row(line: str) -> dict[str, Any] | None:
    try:
        row = json.loads(line)
    except (ValueError, RecursionError):
        return None
    return row if isinstance(row, dict) else None


def _is_eval(row: dict[str, Any]) -> bool:
    """An evaluation line: only ``step`` and ``eval/`` keys."""
    return any(k.startswith("eval/") for k in row) and all(k == "step" or k.startswith("eval/") for k in row)


def plot_metrics(run_dir: str | Path) -> list[Path]:
    """PNG plots of the main curves (matplotlib, Agg backend) in ``<run_dir>/plots``; returns the files.

    Each plot has a title naming the run folder, axis labels and a legend outside the axes (train
    curves solid, evaluation curves dashed with markers; one color per key).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(run_dir)
    out_dir = Path(run_dir) / "plots"
    written = []
    for name, keys in PLOTS.items():
        series = {}
        for key in keys:
            for prefix in ("", "eval/"):
                pts = [(r["step"], r[prefix + key]) for r in rows
                       if isinstance(r.get(prefix + key), (int, float)) and "step" in r
                       and math.isfinite(r[prefix + key])]
                if pts:
                    series[prefix + key] = pts
        if not series:
            continue
        title, ylabel = PLOT_LABELS.get(name, (name.removesuffix(".png"), name.removesuffix(".png")))
        fig, ax = plt.subplots(figsize=(7.5, 4))
        for label, pts in series.items():
            xs, ys = zip(*pts, strict=True)
            is_eval = label.startswith("eval/")
            key = label.removeprefix("eval/")
            color = f"C{keys.index(key)}"  # train and eval of one key share a color
            ax.plot(xs, ys, label=f"{key} ({'eval' if is_eval else 'train'})", color=color,
                    linestyle="--" if is_eval else "-", marker="o" if is_eval or len(xs) == 1 else None)
        if name in ("accuracy.png", "ranking.png"):
            ax.set_ylim(-0.03, 1.03)
        ax.set_title(f"{title}: {Path(run_dir).resolve().name}")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(ylabel)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, fontsize=8)  # beside the axes
        ax.grid(alpha=0.3)
        fig.tight_layout()
        out_dir.mkdir(parents=True, exist_ok=True)
        fig.savefig(out_dir / name, dpi=100, bbox_inches="tight")
        plt.close(fig)
        written.append(out_dir / name)
    return written


def _fields_column() -> Any:
    """The progress bar's loss / accuracy / tokens/s text; a field shows only once it has a finite value
    (an SFT run has no preference accuracy, and nothing is known before the first logged step)."""
    from rich.progress import ProgressColumn
    from rich.text import Text

    class FieldsColumn(ProgressColumn):
        def render(self, task: Any) -> Text:
            parts = []
            for field, fmt in (("loss", "loss {:.4f}"), ("acc", "acc {:.2f}"), ("tps", "{:.0f} tok/s")):
                value = task.fields.get(field)
                if isinstance(value, (int, float)) and math.isfinite(value) and (field != "tps" or value > 0):
                    parts.append(fmt.format(value))
            return Text("  ".join(parts))

    return FieldsColumn()


def progress_bar(total: int, enabled: bool) -> Any:
    """A rich progress bar with loss, accuracy and tokens/s fields (a no-op object when disabled); a field
    that is NaN (not measured, e.g. accuracy in an SFT run) is left out rather than shown as ``nan``."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    progress = Progress(
        TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
        _fields_column(), TimeRemainingColumn(), disable=not enabled, transient=False,
    )
    return progress


__all__ = ["MetricsWriter", "read_metrics", "plot_metrics", "progress_bar", "PLOTS", "PLOT_LABELS"]
