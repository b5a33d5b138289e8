"""Generation speed: prefkit's ``TorchSampler`` vs ``model.generate`` on the same model and batch (CPU).

    python bench/online_generate.py                          # default: a small Llama, 8 prompts x 4 samples
    python bench/online_generate.py --hidden 512 --layers 8 --max-new 128 --prompts 16

Both generate exactly ``prompts * n * max_new`` tokens (EOS disabled on both sides, so every row runs to
``max_new_tokens``) from the same left-padded prompts of different lengths, under ``torch.inference_mode``.
``model.generate`` gets ``num_return_sequences=n`` (it repeats each prompt n times before the prefill;
the sampler prefills each prompt once and repeats its KV cache). Each setting is timed ``--repeats``
times per engine, alternating engines; the best wall time and the process CPU time of that run are kept
(on a shared machine CPU time is the fairer of the two). Reported: generated tokens/s and the ratio
sampler / generate. Random-init weights (``prefkit.testing.tiny_llama``), fp32, eager attention.
Settings: plain sampling, temperature + top-k + top-p, greedy, and plain sampling with a stop string that
never occurs (``generate(stop_strings=..., tokenizer=...)`` on the other side): the cost of the check.
"""

from __future__ import annotations

import argparse
import random
import time

import torch

from prefkit.online import SamplingSettings, TorchSampler
from prefkit.testing import tiny_llama, tiny_tokenizer

SETTINGS = {
    "T=1": dict(temperature=1.0),
    "T=0.7 top_k=50 top_p=0.9": dict(temperature=0.7, top_k=50, top_p=0.9),
    "greedy": dict(temperature=0.0),
    # a stop string that never occurs: the cost of checking for it at every step
    "T=1 + stop string": dict(temperature=1.0, stop=("@@STOP@@",)),
}


def best_times(ours, theirs, tokens: int, repeats: int) -> dict[str, tuple[float, float]]:
    """Time the two engines ``repeats`` times each, alternating, after one warm-up call each; per engine
    the best wall time and the process CPU time of that call. Each call must return ``tokens``."""
    best = {"sampler": (float("inf"), 0.0), "generate": (float("inf"), 0.0)}
    ours(), theirs()  # warm-up
    for _ in range(repeats):
        for engine, fn in (("sampler", ours), ("generate", theirs)):
            wall, cpu = time.perf_counter(), time.process_time()
            made = fn()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            assert made == tokens, (engine, made, tokens)
            if wall < best[engine][0]:
                best[engine] = (wall, cpu)
    return best


def _generate_kwargs(setting: dict, max_new: int, n: int, tokenizer) -> dict:
    t = setting["temperature"]
    extra = dict(stop_strings=list(setting["stop"]), tokenizer=tokenizer) if "stop" in setting else {}
    if t == 0:  # greedy generate refuses num_return_sequences > 1: the rows are repeated by hand
        return dict(do_sample=False, max_new_tokens=max_new, **extra)
    return dict(do_sample=True, temperature=t, top_k=setting.get("top_k", 0), top_p=setting.get("top_p", 1.0),
                max_new_tokens=max_new, num_return_sequences=n, **extra)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--n", type=int, default=4, help="samples per prompt")
    ap.add_argument("--prompt-min", type=int, default=16)
    ap.add_argument("--prompt-max", type=int, default=48)
    ap.add_argument("--max-new", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    tok = tiny_tokenizer()
    model = tiny_llama(len(tok), hidden=args.hidden, layers=args.layers, heads=args.heads, max_positions=1024)
    model.generation_config.eos_token_id = None  # every row runs to max_new_tokens on both sides
    model.generation_config.pad_token_id = tok.pad_token_id
    rng = random.Random(0)
    prompts = [[tok.bos_token_id] + [rng.randrange(7, len(tok)) for _ in range(rng.randint(args.prompt_min, args.prompt_max) - 1)]
               for _ in range(args.prompts)]
    width = max(map(len, prompts))
    ids = torch.tensor([[tok.pad_token_id] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    sampler = TorchSampler(model, tok, eos_token_ids=[], seed=0)
    tokens = args.prompts * args.n * args.max_new

    params = sum(p.numel() for p in model.parameters())
    print(f"model: Llama hidden={args.hidden} layers={args.layers} heads={args.heads} vocab={len(tok)} "
          f"({params / 1e6:.1f}M params, fp32); batch: {args.prompts} prompts ({args.prompt_min}-{args.prompt_max} "
          f"tokens) x n={args.n}, max_new_tokens={args.max_new} -> {tokens} tokens per call; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    rows = []
    for name, setting in SETTINGS.items():
        settings = SamplingSettings(max_new_tokens=args.max_new, **setting)
        gen_kwargs = _generate_kwargs(setting, args.max_new, args.n, tok)

        def ours() -> int:
            return sampler.sample(prompts, settings, n=args.n).num_tokens()

        def theirs() -> int:
            rep = args.n if "num_return_sequences" not in gen_kwargs else 1
            with torch.inference_mode():
                out = model.generate(input_ids=ids.repeat_interleave(rep, 0), attention_mask=mask.repeat_interleave(rep, 0),
                                     **gen_kwargs)
            return (out.shape[1] - width) * out.shape[0]

        rows.append((name, best_times(ours, theirs, tokens, args.repeats)))

    print()
    print("| setting | sampler tok/s (wall) | generate tok/s (wall) | ratio (wall) | ratio (CPU time) |")
    print("|---|---:|---:|---:|---:|")
    for name, best in rows:
        (sw, sc), (gw, gc) = best["sampler"], best["generate"]
        print(f"| {name} | {tokens / sw:,.0f} | {tokens / gw:,.0f} | {gw / sw:.2f}x | {gc / sc:.2f}x |")


if __name__ == "__main__":
    main()
