"""Online DPO on CPU: prefkit's sampler and online round vs ``model.generate`` and TRL's ``OnlineDPOTrainer``.

    python bench/online.py                  # default: Llama hidden 256, 4 layers; 8 prompts x G=2, 48 new tokens
    python bench/online.py --quick          # smoke test: a few seconds
    python bench/online.py --hidden 384 --layers 6 --prompts 16 --max-new 64 --rounds 8

One run measures two ratios on the same random-init Llama (``prefkit.testing.tiny_llama``, fp32, eager
attention), saved to a temporary folder with its tokenizer so that every system loads the same weights:

1. **Generation**: generated tokens/s of prefkit's ``TorchSampler`` vs ``model.generate`` on the same
   left-padded batch (``--prompts`` prompts x G samples, EOS disabled on both sides, so both generate
   exactly ``prompts * G * max_new`` tokens); best of ``--repeats`` calls per engine after a warm-up,
   engines alternating.
2. **One online DPO round**: sample G = 2 completions per prompt, score them with the same Python reward
   function, build one (chosen, rejected) pair per prompt, one AdamW step of the sigmoid DPO loss (β 0.1)
   against a frozen copy of the initial policy. prefkit: ``prefkit.online.run_online`` with
   ``prompts_per_round=--prompts``, ``samples_per_prompt=2``, ``pairs=best_vs_worst``,
   ``steps_per_round=1``, ``train.batch_size=--prompts``. TRL: ``trl.experimental.online_dpo.
   OnlineDPOTrainer`` (it always samples 2 per prompt) with ``per_device_train_batch_size=--prompts``, one
   optimizer step per batch of prompts, ``reward_funcs=[the function]``. Both: temperature 1, no top-k /
   top-p, ``max_new_tokens=--max-new``, lr 1e-5 constant, AdamW (0.9, 0.999), ε 1e-8, no weight decay,
   grad-norm clip 1.0, no gradient checkpointing (TRL's default turns it on, and with it its generation
   runs without a KV cache: ``--trl-checkpointing`` measures that default), the same plain-text prompts
   (BOS prepended on both sides). prefkit's per-round ``win_rate_vs_reference`` metric, which samples the
   reference as well, is off (``--win-rate`` turns it on): TRL has no such step.

A round is timed from one optimizer step to the next (a global post-step hook on
``torch.optim.Optimizer``, so both systems are timed at the same point of their loop and everything a
round does is counted: sampling, scoring, pairing, the training step, logging), wall clock and process
CPU time; the first round and ``--warmup`` more are dropped, the median of the next ``--rounds`` is
reported. CPU time is the fairer number on a shared machine. The check that both do comparable work:
generated tokens per round (real tokens, up to and including EOS) and optimizer steps per round.

TRL is optional (``pip install --no-deps trl==1.16.0``; recorded with 1.16.0); without it, or if it no
longer ships an online DPO trainer, the script says so and reports the generation comparison only.
Results are written up in ``docs/benchmarks.md`` ("Online loop").
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import platform
import random
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch
from online_generate import best_times  # bench/ is on sys.path when a bench script runs

from prefkit.online import FunctionJudge, OnlineConfig, SamplingSettings, TorchSampler, run_online
from prefkit.testing import tiny_llama, tiny_tokenizer
from prefkit.train.config import load_config

WORDS = ("the", "a", "red", "blue", "cat", "dog", "runs", "sees", "quick", "small", "house", "tree", "under",
         "over", "and", "then", "river", "stone", "light", "sings")


def reward(text: str) -> float:
    """The verifiable reward both systems use: the fraction of the completion's characters that are
    vowels (a smooth number, so the two samples of a prompt rarely tie)."""
    return sum(c in "aeiou" for c in text) / max(1, len(text))


def make_prompts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12))) + ":" for _ in range(n)]


def save_model(folder: Path, hidden: int, layers: int, heads: int) -> None:
    tok = tiny_tokenizer(chat_template=None)
    model = tiny_llama(len(tok), hidden=hidden, layers=layers, heads=heads, max_positions=1024)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)


def load(folder: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager")
    return model.train(), AutoTokenizer.from_pretrained(folder)


# -- 1. generation ---------------------------------------------------------------------------------------


def bench_generation(folder: Path, prompts: list[str], g: int, max_new: int, repeats: int) -> dict:
    model, tok = load(folder)
    model.eval()
    model.generation_config.eos_token_id = None  # every row runs to max_new_tokens on both sides
    model.generation_config.pad_token_id = tok.pad_token_id
    rows = [tok(p)["input_ids"] for p in prompts]  # BOS + prompt
    width = max(map(len, rows))
    ids = torch.tensor([[tok.pad_token_id] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    sampler = TorchSampler(model, tok, eos_token_ids=[], seed=0)
    settings = SamplingSettings(max_new_tokens=max_new, temperature=1.0)
    tokens = len(rows) * g * max_new

    def ours() -> int:
        return sampler.sample(rows, settings, n=g).num_tokens()

    def theirs() -> int:
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0, top_k=0,
                                 top_p=1.0, max_new_tokens=max_new, num_return_sequences=g)
        return (out.shape[1] - width) * out.shape[0]

    best = best_times(ours, theirs, tokens, repeats)
    (sw, sc), (gw, gc) = best["sampler"], best["generate"]
    return {"tokens": tokens, "sampler_tok_s": tokens / sw, "generate_tok_s": tokens / gw,
            "sampler_tok_s_cpu": tokens / sc, "generate_tok_s_cpu": tokens / gc,
            "ratio_wall": gw / sw, "ratio_cpu": gc / sc}


# -- 2. one online DPO round -----------------------------------------------------------------------------


class Clock:
    """Marks every optimizer step (a global post-step hook on ``torch.optim.Optimizer``, so it sees the
    AdamW of both systems); both systems take exactly one step per round, so a round is the time
    between two consecutive marks."""

    def __init__(self) -> None:
        self.marks: list[tuple[float, float]] = []

    def __enter__(self) -> Clock:
        from torch.optim.optimizer import register_optimizer_step_post_hook

        self._handle = register_optimizer_step_post_hook(
            lambda optimizer, args, kwargs: self.marks.append((time.perf_counter(), time.process_time())))
        return self

    def __exit__(self, *exc) -> None:
        self._handle.remove()

    def rounds(self, warmup: int) -> dict:
        walls = [b[0] - a[0] for a, b in zip(self.marks, self.marks[1:])][warmup:]
        cpus = [b[1] - a[1] for a, b in zip(self.marks, self.marks[1:])][warmup:]
        return {"round_s": statistics.median(walls), "round_cpu_s": statistics.median(cpus),
                "rounds_timed": len(walls), "optimizer_steps": len(self.marks)}


def bench_prefkit(folder: Path, prompts: list[str], args, work: Path) -> dict:
    policy, tok = load(folder)
    clock = Clock()
    config = load_config(overrides=[
        "loss.name=dpo", "loss.beta=0.1", f"train.lr={args.lr}", f"train.batch_size={args.prompts}",
        "train.scheduler=constant", "train.max_grad_norm=1.0", "train.weight_decay=0.0", "train.log_every=1",
        f"encode.max_length={args.max_length}", f"output.dir={work / 'unused'}"], check_files=False)

    def score(prompt, completion) -> float:
        return reward(completion)

    options = dict(rounds=1 + args.warmup + args.rounds, prompts_per_round=args.prompts, samples_per_prompt=2,
                   pairs="best_vs_worst", sampling=SamplingSettings(max_new_tokens=args.max_new, temperature=1.0),
                   steps_per_round=1, seed=args.seed)
    if "win_rate_vs_reference" in {f.name for f in dataclasses.fields(OnlineConfig)}:
        # a monitoring metric that samples the reference too: TRL has no such step, so it is off here
        options["win_rate_vs_reference"] = args.win_rate
    with clock:
        history = run_online(policy=policy, tokenizer=tok, prompts=prompts, judge=FunctionJudge(score, name="vowels"),
                             run_config=config, online=OnlineConfig(**options), out_dir=work / "prefkit-run")
    out = clock.rounds(args.warmup)
    timed = history[args.warmup + 1:]
    out["tokens_per_round"] = [round(h["completions/mean_length"] * args.prompts * 2) for h in timed]
    out["win_rate_vs_reference"] = options.get("win_rate_vs_reference", False)
    out["optimizer_steps_per_round"] = [int(h.get("train/step", 1 if h["records"] else 0)) for h in timed]
    out["pairs_per_round"] = [h["records"] for h in timed]
    out["round_s_own_metric"] = statistics.median(h["seconds"] for h in timed)
    return out


def bench_trl(folder: Path, prompts: list[str], args, work: Path) -> dict:
    from datasets import Dataset
    from transformers import TrainerCallback

    module = importlib.import_module("trl.experimental.online_dpo")
    policy, tok = load(folder)
    clock = Clock()
    eos = tok.eos_token_id
    steps: list[int] = []
    tokens: list[int] = []

    def vowels(prompts, completions, completion_ids, **kwargs) -> list[float]:
        tokens.append(sum(ids.index(eos) + 1 if eos in ids else sum(t != tok.pad_token_id for t in ids)
                          for ids in completion_ids))
        return [reward(c) for c in completions]

    class Steps(TrainerCallback):
        def on_step_end(self, args_, state, control, **kwargs):
            steps.append(state.global_step)

    n_rounds = 1 + args.warmup + args.rounds
    order = [prompts[i] for r in range(n_rounds) for i in
             torch.randperm(len(prompts), generator=torch.Generator().manual_seed(args.seed + r)).tolist()]
    data = Dataset.from_dict({"prompt": [tok.bos_token + p for p in order]})  # BOS as prefkit renders it
    config = module.OnlineDPOConfig(
        output_dir=str(work / "trl-run"), per_device_train_batch_size=args.prompts, max_steps=n_rounds,
        learning_rate=args.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
        adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8, beta=[0.1], loss_type="sigmoid",
        max_new_tokens=args.max_new, max_length=args.max_length, temperature=1.0, top_k=0, top_p=1.0,
        report_to=[], save_strategy="no", logging_steps=10_000, disable_tqdm=True, use_cpu=True,
        dataloader_num_workers=0, seed=args.seed, bf16=False, fp16=False, push_to_hub=False,
        # TRL's default is True, which also turns off the KV cache in its generation (use_cache=False):
        # prefkit does not checkpoint here, so neither does TRL (--trl-checkpointing measures the default)
        gradient_checkpointing=args.trl_checkpointing)
    trainer = module.OnlineDPOTrainer(model=policy, reward_funcs=[vowels], args=config, train_dataset=data,
                                      processing_class=tok, callbacks=[Steps()])
    with clock:
        trainer.train()
    out = clock.rounds(args.warmup)
    out["tokens_per_round"] = tokens[args.warmup + 1:]
    out["optimizer_steps_per_round"] = [b - a for a, b in zip(steps, steps[1:])][args.warmup:]
    out["pairs_per_round"] = [args.prompts] * out["rounds_timed"]
    return out


def trl_status() -> str | None:
    """None when TRL's online DPO trainer can be imported, else why not (one line)."""
    try:
        import trl
    except ImportError:
        return "TRL is not installed (pip install --no-deps trl==1.16.0)"
    try:
        module = importlib.import_module("trl.experimental.online_dpo")
        for name in ("OnlineDPOTrainer", "OnlineDPOConfig"):
            getattr(module, name)
    except (ImportError, AttributeError) as err:
        return f"TRL {trl.__version__} ships no online DPO trainer ({type(err).__name__}: {err})"
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--prompts", type=int, default=8, help="prompts per round (= batch size, = pairs per step)")
    ap.add_argument("--g", type=int, default=2, help="samples per prompt in the generation comparison")
    ap.add_argument("--max-new", type=int, default=48)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=8, help="timed rounds (median reported)")
    ap.add_argument("--warmup", type=int, default=2, help="rounds dropped before timing")
    ap.add_argument("--repeats", type=int, default=3, help="generation calls per engine (best kept)")
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--win-rate", action="store_true",
                    help="keep prefkit's per-round win rate vs the reference (extra reference samples; TRL has none)")
    ap.add_argument("--trl-checkpointing", action="store_true",
                    help="TRL with its default gradient_checkpointing=True (generation without a KV cache)")
    ap.add_argument("--quick", action="store_true", help="tiny smoke configuration")
    ap.add_argument("--out", default=None, help="also write the results as JSON here")
    args = ap.parse_args()
    if args.quick:
        args.hidden, args.layers, args.heads, args.prompts, args.max_new = 64, 2, 4, 4, 8
        args.rounds, args.warmup, args.repeats = 2, 1, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("WANDB_DISABLED", "true")
    warnings.filterwarnings("ignore")

    import transformers

    transformers.utils.logging.disable_progress_bar()
    prompts = make_prompts(max(args.prompts, 16), seed=args.seed)
    versions = {"python": platform.python_version(), "torch": torch.__version__,
                "transformers": transformers.__version__}
    missing = trl_status()
    if missing is None:
        import trl
        versions["trl"] = trl.__version__
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        save_model(work / "model", args.hidden, args.layers, args.heads)
        params = sum(p.numel() for p in load(work / "model")[0].parameters())
        print(f"model: Llama hidden={args.hidden} layers={args.layers} heads={args.heads} "
              f"({params / 1e6:.2f}M params, fp32, eager); {args.prompts} prompts x G, max_new_tokens={args.max_new}; "
              f"{torch.get_num_threads()} threads, {os.cpu_count()} CPUs; " +
              ", ".join(f"{k} {v}" for k, v in versions.items()), flush=True)
        gen = bench_generation(work / "model", prompts[:args.prompts], args.g, args.max_new, args.repeats)
        print(f"generation: {json.dumps(gen)}", flush=True)
        ours = bench_prefkit(work / "model", prompts, args, work)
        print(f"prefkit round: {json.dumps(ours)}", flush=True)
        theirs = None
        if missing is None:
            theirs = bench_trl(work / "model", prompts, args, work)
            print(f"TRL round: {json.dumps(theirs)}", flush=True)
        else:
            print(f"TRL round: skipped: {missing}")

    print()
    print(f"| generation ({args.prompts} prompts x G={args.g} x {args.max_new} tokens) | sampler tok/s | "
          "generate tok/s | ratio (wall) | ratio (CPU time) |")
    print("|---|---:|---:|---:|---:|")
    print(f"| T=1, EOS off | {gen['sampler_tok_s']:,.0f} | {gen['generate_tok_s']:,.0f} | {gen['ratio_wall']:.2f}x | "
          f"{gen['ratio_cpu']:.2f}x |")
    print()
    print(f"| online DPO round ({args.prompts} prompts x G=2, {args.max_new} new tokens, 1 step) | wall s "
          "(median) | CPU s (median) | tokens/round | optimizer steps/round | pairs/round |")
    print("|---|---:|---:|---|---|---|")
    for name, r in (("prefkit run_online", ours), ("TRL OnlineDPOTrainer", theirs)):
        if r is None:
            print(f"| {name} | - | - | - | - | - |")
            continue
        print(f"| {name} | {r['round_s']:.3f} | {r['round_cpu_s']:.3f} | {r['tokens_per_round']} | "
              f"{r['optimizer_steps_per_round']} | {r['pairs_per_round']} |")
    result = {"args": vars(args), "versions": versions, "generation": gen, "prefkit": ours, "trl": theirs,
              "trl_missing": missing}
    if theirs is not None:
        result["speedup_wall"] = theirs["round_s"] / ours["round_s"]
        result["speedup_cpu"] = theirs["round_cpu_s"] / ours["round_cpu_s"]
        print()
        print(f"prefkit round speed-up over TRL: {result['speedup_wall']:.2f}x (wall), "
              f"{result['speedup_cpu']:.2f}x (CPU time); target >= 1.5x")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
