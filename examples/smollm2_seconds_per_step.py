"""Seconds per optimizer step of the SmolLM2 DPO+LoRA example (the number in docs/benchmarks.md).

Run from the repository root after the one-time setup in examples/README.md:

    python examples/smollm2_seconds_per_step.py [key=value ...]      # e.g. train.batch_size=2

Builds the example's Trainer (model, LoRA, data, encoding as in examples/smollm2_dpo_lora.yaml), runs
``train.max_steps`` (default 4) steps and prints the wall-clock time of each step (from one optimizer
step to the next; the first also holds the first forward pass), their median, torch's thread count and
the library versions.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import transformers

from prefkit.models import load as model_load
from prefkit.train.config import load_config
from prefkit.train.run import load_policy, read_data
from prefkit.train.trainer import Trainer

CONFIG = Path(__file__).resolve().parent / "smollm2_dpo_lora.yaml"


def main(argv: list[str]) -> None:
    out = tempfile.mkdtemp(prefix="prefkit-smollm2-")
    cfg = load_config(CONFIG, ["train.max_steps=4", "train.eval_every=0", "data.eval_fraction=0",
                               "train.log_every=1", "train.progress=false", "output.save_model=false",
                               "output.plots=false", f"output.dir={out}", *argv])
    t0 = time.perf_counter()
    model, tokenizer = load_policy(cfg)
    train, _ = read_data(cfg)
    trainer = Trainer(cfg, model, tokenizer, train, reference_model=lambda: model_load.frozen(
        model_load.load_model(cfg.model.path)))
    print(f"load + encode: {time.perf_counter() - t0:.1f} s")
    stamps = [time.perf_counter()]
    step = trainer.optimizer.step

    def timed_step(*args, **kwargs):  # record the time of every optimizer step
        result = step(*args, **kwargs)
        stamps.append(time.perf_counter())
        return result

    trainer.optimizer.step = timed_step
    trainer.train()
    per_step = [b - a for a, b in zip(stamps, stamps[1:])]
    print("seconds per step:", " ".join(f"{s:.1f}" for s in per_step))
    print(f"median {statistics.median(per_step):.1f} s/step; batch_size={cfg.train.batch_size} pairs, "
          f"max_length={cfg.encode.max_length}, lora.r={cfg.lora.r}, reference={cfg.reference.mode}; "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads), transformers {transformers.__version__}")


if __name__ == "__main__":
    main(sys.argv[1:])
