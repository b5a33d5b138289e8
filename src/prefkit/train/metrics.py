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

PLOTS = {  # file -> keys drawn (train and eval/ variants when present)
    "loss.png": ("loss",),
    "rewards.png": ("rewards/chosen", "rewards/rejected", "rewards/margins"),
    "accuracy.png": ("rewards/accuracies",),
    "logps.png": ("logps/chosen", "logps/rejected"),
    "lr.png": ("lr",),
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

    def truncate_after(self, step: int) -> None:
        """Drop lines past ``step`` (a resumed run rewrites them)."""
        if not self.path.is_file():
            return
        keep = [line for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= step]
        self.path.write_text("".join(line + "\n" for line in keep))

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The lines of ``<run_dir>/metrics.jsonl``."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_metrics(run_dir: str | Path) -> list[Path]:
    """PNG plots of the main curves (matplotlib, Agg backend) in ``<run_dir>/plots``; returns the files."""
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
                       if isinstance(r.get(prefix + key), (int, float)) and "step" in r]
                if pts:
                    series[prefix + key] = pts
        if not series:
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        for label, pts in series.items():
            xs, ys = zip(*pts, strict=True)
            is_eval = label.startswith("eval/")
            color = f"C{keys.index(label.removeprefix('eval/'))}"  # train and eval of one key share a color
            ax.plot(xs, ys, label=label, color=color, linestyle="--" if is_eval else "-",
                    marker="o" if is_eval else None)
        ax.set_xlabel("step")
        ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        out_dir.mkdir(parents=True, exist_ok=True)
        fig.savefig(out_dir / name, dpi=100)
        plt.close(fig)
        written.append(out_dir / name)
    return written


def progress_bar(total: int, enabled: bool) -> Any:
    """A rich progress bar with loss, accuracy and tokens/s fields (a no-op object when disabled)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    progress = Progress(
        TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}  acc {task.fields[acc]:.2f}  {task.fields[tps]:.0f} tok/s"),
        TimeRemainingColumn(), disable=not enabled, transient=False,
    )
    return progress


__all__ = ["MetricsWriter", "read_metrics", "plot_metrics", "progress_bar", "PLOTS"]
