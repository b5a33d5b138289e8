"""CPU time of a reward model's forward + backward, padded vs the padding-free fast path.

A random-init Llama backbone (``--layers``, ``--width``; vocabulary 4,096) under a scalar head, pairs
with prompts of ``--prompt-len`` tokens and completions of ``--completion-len MIN MAX`` tokens (uniform),
``--pairs`` per batch: the Bradley-Terry loss's forward + backward, in process, each engine in turn
(median over ``--reps``), process CPU time, one torch thread by default. Engines: padded
(``packing=False``), packed (``share_prefix=False``), packed + shared prompt (the default).

    OMP_NUM_THREADS=1 python bench/rm_fastpath.py
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--prompt-len", type=int, default=256)
    parser.add_argument("--completion-len", type=int, nargs=2, default=(64, 512), metavar=("MIN", "MAX"))
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from transformers import LlamaConfig, LlamaModel

    from prefkit.losses import get_loss
    from prefkit.losses.reward import PairScores
    from prefkit.models.reward import RewardModel, RewardModelConfig

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=4096, hidden_size=args.width, intermediate_size=4 * args.width,
                         num_hidden_layers=args.layers, num_attention_heads=max(1, args.width // 64),
                         num_key_value_heads=max(1, args.width // 128), max_position_embeddings=4096,
                         attn_implementation="sdpa")
    model = RewardModel.from_backbone(LlamaModel(config), RewardModelConfig(pooling="last"))
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, 4096, (args.prompt_len,), generator=gen) for _ in range(args.pairs)]
    lo, hi = args.completion_len
    seqs = [torch.cat([prompts[b], torch.randint(3, 4096, (int(torch.randint(lo, hi + 1, (1,), generator=gen)),),
                                                 generator=gen)]) for _ in range(2) for b in range(args.pairs)]
    width = max(len(s) for s in seqs)
    ids = torch.zeros(len(seqs), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        ids[i, :len(s)], mask[i, :len(s)] = s, 1
    loss_fn = get_loss("bradley_terry").fn
    engines = {"padded": {"packing": False}, "packed": {"packing": True, "share_prefix": False},
               "packed + shared prompt": {"packing": True, "share_prefix": True}}

    def step(kw: dict) -> None:
        r = model(ids, mask, group_size=2, **kw).rewards
        loss_fn(PairScores(r[:args.pairs], r[args.pairs:]), None).losses.mean().backward()
        model.zero_grad(set_to_none=True)

    times: dict[str, list[float]] = {k: [] for k in engines}
    for kw in engines.values():
        step(kw)  # warm-up
    for _ in range(args.reps):
        for name, kw in engines.items():
            start = time.process_time()
            step(kw)
            times[name].append(time.process_time() - start)
    real = int(mask.sum())
    print(f"{args.pairs} pairs, padded {tuple(ids.shape)} = {ids.numel()} tokens, {real} real, prompts "
          f"{args.prompt_len}; Llama {args.layers} layers x {args.width}; CPU s per forward + backward "
          f"(median of {args.reps}, {args.threads} thread):")
    base = statistics.median(times["padded"])
    for name, ts in times.items():
        t = statistics.median(ts)
        print(f"  {name:24s} {t:7.3f} s   {base / t:4.2f}x")


if __name__ == "__main__":
    main()
