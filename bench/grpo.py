"""One GRPO step on CPU: prefkit's ``run_online`` (``algorithm: grpo``) vs TRL's ``GRPOTrainer``.

    python bench/grpo.py --threads 1               # default: Llama hidden 256, 4 layers; 8 prompts x G=4, 32 new tokens
    python bench/grpo.py --quick                   # smoke test: a few seconds per system
    python bench/grpo.py --threads 1 --beta 0.04   # with the KL term (both sides keep a frozen reference)

The same random-init Llama (``prefkit.testing.tiny_llama``, fp32, eager attention; the helpers of
``bench/online.py``) is saved to a temporary folder with its tokenizer, so both systems load the same
weights. A round samples G completions for each of ``--prompts`` prompts, scores them with the same
Python reward function (``bench/online.py``'s fraction of vowels), computes group-normalised advantages
and takes **one** AdamW step of the clipped GRPO loss over all P x G samples.

prefkit: ``run_online`` with ``OnlineConfig(algorithm={"name": "grpo", "scale": "group_std",
"normalize": <--loss>, "clip_low": 0.2, "kl_coef": β, "kl_estimator": "k3", "iterations": 1,
"truncated": "mask_eos"}, prompts_per_round=P, samples_per_prompt=G, steps_per_round=1)`` and
``train.batch_size = P x G`` (one step covers the round). With β = 0 the loss section is
``simpo`` (reference-free, so the loop keeps no reference and scores none: TRL with β = 0 builds no
reference either); with β > 0 it is ``dpo`` (which keeps the frozen reference the KL term needs).

TRL: ``GRPOTrainer`` with ``per_device_train_batch_size = P x G`` (TRL counts completions),
``gradient_accumulation_steps=1`` and so ``steps_per_generation=1``, ``num_iterations=1`` (one generation
batch = one optimizer step), ``num_generations=G``, ``scale_rewards="group"``, ``loss_type`` matching
``--loss``, ``epsilon=0.2``, ``beta=β``, ``use_bias_correction_kl=False`` (prefkit's KL term is the plain
k3 estimator, not importance-weighted), ``mask_truncated_completions=False``, no vLLM.

``--loss`` picks matching normalisations: ``dapo`` (TRL's default; prefkit ``normalize: token``: the
token sum over the batch's trained tokens), ``grpo`` (``sequence``: each sample's token mean, then the
mean over samples), ``dr_grpo`` (``constant``: 1/max_new_tokens). Both sides: temperature 1, no top-k /
top-p, ``max_new_tokens=--max-new``, lr constant, AdamW (0.9, 0.999), ε 1e-8, no weight decay, grad-norm
clip 1.0, fp32, no gradient checkpointing (TRL's default turns it on and its generation then runs
without a KV cache: the second TRL row, ``TRL defaults``, measures that; ``--no-trl-defaults`` skips it),
the same plain-text prompts with the same token ids (one BOS: prefkit's encoder adds it, TRL's GRPO
tokenizes with ``add_special_tokens=True``, so TRL gets the plain text; the script checks the ids),
prefkit's ``win_rate_vs_reference`` off.

Timing as in ``bench/online.py``: a global post-step hook on ``torch.optim.Optimizer`` marks every step,
a round is the time between two marks (wall clock and process CPU time); the first round and
``--warmup`` more are dropped, the median of the next ``--rounds`` is reported. Equal-work checks
printed per side: tokens generated per round (up to and including EOS), optimizer steps per round and
the mean reward per round (same reward function, same temperature, same initial weights: the two
means should agree within sampling noise).

TRL is optional (``pip install --no-deps trl==1.16.0``; recorded with 1.16.0). Results are written up in
``docs/benchmarks.md`` ("GRPO step").
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import statistics
import sys
import tempfile
import warnings
from pathlib import Path

import torch

from prefkit.data.encode import Encoder
from prefkit.online import FunctionJudge, OnlineConfig, SamplingSettings, run_online
from prefkit.online.loop import prompt_ids
from prefkit.train.config import load_config

sys.path.insert(0, str(Path(__file__).resolve().parent))
_online = importlib.import_module("online")  # bench/online.py: the model, prompts, reward and step clock
Clock, load, make_prompts, reward, save_model = (_online.Clock, _online.load, _online.make_prompts, _online.reward,
                                                 _online.save_model)

# --loss: TRL's loss_type -> prefkit's GRPO ``normalize`` option (the same reduction for one full-batch step)
NORMALIZE = {"dapo": "token", "bnpo": "token", "grpo": "sequence", "dr_grpo": "constant"}


def bench_prefkit(folder: Path, prompts: list[str], args, work: Path) -> dict:
    policy, tok = load(folder)
    clock = Clock()
    g, p = args.g, args.prompts
    # β > 0 needs a loss with a reference (the loop keeps one only then); β = 0: a reference-free loss, so
    # that no reference copy is kept or scored (TRL with beta=0 builds none)
    loss = ["loss.name=dpo", f"loss.beta={args.beta}"] if args.beta > 0 else ["loss.name=simpo"]
    config = load_config(overrides=[
        *loss, f"train.lr={args.lr}", f"train.batch_size={p * g}", "train.scheduler=constant",
        "train.max_grad_norm=1.0", "train.weight_decay=0.0", "train.log_every=1",
        f"encode.max_length={args.max_length}", f"output.dir={work / 'unused'}", *args.prefkit_set],
        check_files=False)

    def score(prompt, completion) -> float:
        return reward(completion)

    algorithm = {"name": "grpo", "scale": "group_std", "normalize": NORMALIZE[args.loss], "clip_low": 0.2,
                 "kl_coef": args.beta, "kl_estimator": "k3", "iterations": 1, "truncated": "mask_eos"}
    online = OnlineConfig(algorithm=algorithm, rounds=1 + args.warmup + args.rounds, prompts_per_round=p,
                          samples_per_prompt=g, sampling=SamplingSettings(max_new_tokens=args.max_new, temperature=1.0),
                          steps_per_round=1, seed=args.seed, win_rate_vs_reference=False)
    with clock:
        history = run_online(policy=policy, tokenizer=tok, prompts=prompts, judge=FunctionJudge(score, name="vowels"),
                             run_config=config, online=online, out_dir=work / "prefkit-run")
    out = clock.rounds(args.warmup)
    timed = history[args.warmup + 1:]
    rewards = [h["reward"] for h in timed]
    out["tokens_per_round"] = [round(h["completions/mean_length"] * p * g) for h in timed]
    out["optimizer_steps_per_round"] = [int(h.get("train/step", 0)) for h in timed]
    out["samples_trained_per_round"] = [h.get("samples_trained") for h in timed]
    out["mean_reward_per_round"] = [round(r, 4) for r in rewards]
    out["mean_reward"] = statistics.mean(rewards)
    out["round_s_own_metric"] = statistics.median(h["seconds"] for h in timed)
    return out


def bench_trl(folder: Path, prompts: list[str], args, work: Path, *, defaults: bool) -> dict:
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    policy, tok = load(folder)
    clock = Clock()
    eos = tok.eos_token_id
    steps: list[int] = []
    tokens: list[int] = []
    rewards: list[float] = []

    def vowels(prompts, completions, completion_ids, **kwargs) -> list[float]:
        tokens.append(sum(ids.index(eos) + 1 if eos in ids else sum(t != tok.pad_token_id for t in ids)
                          for ids in completion_ids))
        out = [reward(c) for c in completions]
        rewards.append(statistics.mean(out))
        return out

    class Steps(TrainerCallback):
        def on_step_end(self, args_, state, control, **kwargs):
            steps.append(state.global_step)

    n_rounds = 1 + args.warmup + args.rounds
    # plain text: TRL tokenizes prompts with add_special_tokens=True, so the tokenizer adds the BOS prefkit adds
    data = Dataset.from_dict({"prompt": list(prompts)})
    config = GRPOConfig(
        output_dir=str(work / ("trl-defaults" if defaults else "trl-run")), max_steps=n_rounds,
        per_device_train_batch_size=args.prompts * args.g, gradient_accumulation_steps=1, num_generations=args.g,
        num_iterations=1, max_completion_length=args.max_new, temperature=1.0, top_k=0, top_p=1.0,
        beta=args.beta, loss_type=args.loss, scale_rewards="group", epsilon=0.2, use_bias_correction_kl=False,
        mask_truncated_completions=False, use_vllm=False,
        learning_rate=args.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
        adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8,
        report_to=[], save_strategy="no", logging_steps=10_000, disable_tqdm=True, use_cpu=True,
        dataloader_num_workers=0, seed=args.seed, bf16=False, fp16=False, push_to_hub=False,
        # TRL's default is True, which also turns off the KV cache in its generation (use_cache=False)
        gradient_checkpointing=defaults)
    trainer = GRPOTrainer(model=policy, reward_funcs=[vowels], args=config, train_dataset=data,
                          processing_class=tok, callbacks=[Steps()])
    with clock:
        trainer.train()
    out = clock.rounds(args.warmup)
    out["tokens_per_round"] = tokens[args.warmup + 1:]
    out["optimizer_steps_per_round"] = [b - a for a, b in zip(steps, steps[1:])][args.warmup:]
    out["mean_reward_per_round"] = [round(r, 4) for r in rewards[args.warmup + 1:]]
    out["mean_reward"] = statistics.mean(rewards[args.warmup + 1:])
    out["gradient_checkpointing"] = defaults
    return out


def trl_status() -> str | None:
    """None when TRL's GRPO trainer can be imported, else why not (one line)."""
    try:
        import trl
    except ImportError:
        return "TRL is not installed (pip install --no-deps trl==1.16.0)"
    try:
        for name in ("GRPOConfig", "GRPOTrainer"):
            getattr(trl, name)
    except (ImportError, AttributeError) as err:
        return f"TRL {trl.__version__} has no GRPOTrainer ({err})"
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--prompts", type=int, default=8, help="prompts per round (P)")
    ap.add_argument("--g", type=int, default=4, help="samples per prompt (G, TRL's num_generations)")
    ap.add_argument("--max-new", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--beta", type=float, default=0.0, help="KL coefficient β (TRL 1.16's default: 0.0)")
    ap.add_argument("--loss", choices=sorted(NORMALIZE), default="dapo",
                    help="TRL loss_type; prefkit's matching normalize option is used")
    ap.add_argument("--rounds", type=int, default=6, help="timed rounds (median reported)")
    ap.add_argument("--warmup", type=int, default=1, help="rounds dropped before timing (after the first)")
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--no-trl-defaults", action="store_true",
                    help="skip the second TRL row (its default gradient_checkpointing=True)")
    ap.add_argument("--prefkit-set", action="append", default=[], metavar="KEY=VALUE",
                    help="an extra prefkit config override, e.g. model.packing=false (repeatable; a diagnostic)")
    ap.add_argument("--quick", action="store_true", help="tiny smoke configuration")
    ap.add_argument("--out", default=None, help="also write the results as JSON here")
    args = ap.parse_args()
    if args.quick:
        args.hidden, args.layers, args.heads, args.prompts, args.g, args.max_new = 64, 2, 4, 2, 2, 8
        args.rounds, args.warmup = 2, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("WANDB_DISABLED", "true")
    warnings.filterwarnings("ignore")

    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    prompts = make_prompts(max(args.prompts, 16), seed=args.seed)
    versions = {"python": platform.python_version(), "torch": torch.__version__,
                "transformers": transformers.__version__}
    missing = trl_status()
    if missing is None:
        import trl
        versions["trl"] = trl.__version__
    theirs: dict[str, dict | None] = {"TRL GRPOTrainer": None, "TRL GRPOTrainer, defaults": None}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        save_model(work / "model", args.hidden, args.layers, args.heads)
        params = sum(p.numel() for p in load(work / "model")[0].parameters())
        print(f"model: Llama hidden={args.hidden} layers={args.layers} heads={args.heads} "
              f"({params / 1e6:.2f}M params, fp32, eager); {args.prompts} prompts x G={args.g}, "
              f"max_new_tokens={args.max_new}, beta={args.beta}, loss {args.loss} / normalize "
              f"{NORMALIZE[args.loss]}; {torch.get_num_threads()} threads, {os.cpu_count()} CPUs; " +
              ", ".join(f"{k} {v}" for k, v in versions.items()), flush=True)
        tok = load(work / "model")[1]
        same_ids = all(tok(q)["input_ids"] == prompt_ids(Encoder(tok), q) for q in prompts)
        print(f"prompt token ids: TRL's (tokenizer(text), add_special_tokens=True) == prefkit's encoder: {same_ids}")
        ours = bench_prefkit(work / "model", prompts, args, work)
        print(f"prefkit round: {json.dumps(ours)}", flush=True)
        if missing is None:
            theirs["TRL GRPOTrainer"] = bench_trl(work / "model", prompts, args, work, defaults=False)
            print(f"TRL round: {json.dumps(theirs['TRL GRPOTrainer'])}", flush=True)
            if not args.no_trl_defaults:
                theirs["TRL GRPOTrainer, defaults"] = bench_trl(work / "model", prompts, args, work, defaults=True)
                print(f"TRL round (gradient_checkpointing=True): {json.dumps(theirs['TRL GRPOTrainer, defaults'])}",
                      flush=True)
        else:
            print(f"TRL round: skipped: {missing}")

    print()
    print(f"| GRPO round ({args.prompts} prompts x G={args.g}, {args.max_new} new tokens, β {args.beta}, "
          f"{args.loss}, 1 step) | wall s (median) | CPU s (median) | prefkit speed-up wall / CPU | tokens/round | "
          "optimizer steps/round | mean reward |")
    print("|---|---:|---:|---:|---|---|---:|")
    rows = {"prefkit run_online (grpo)": ours, **theirs}
    for name, r in rows.items():
        if r is None:
            continue
        speed = (f"{r['round_s'] / ours['round_s']:.2f}x / {r['round_cpu_s'] / ours['round_cpu_s']:.2f}x"
                 if r is not ours else "-")
        print(f"| {name} | {r['round_s']:.3f} | {r['round_cpu_s']:.3f} | {speed} | {r['tokens_per_round']} | "
              f"{r['optimizer_steps_per_round']} | {r['mean_reward']:.4f} |")
    result = {"args": vars(args), "versions": versions, "same_prompt_ids": same_ids, "prefkit": ours, "trl": theirs["TRL GRPOTrainer"],
              "trl_defaults": theirs["TRL GRPOTrainer, defaults"], "trl_missing": missing}
    t = theirs["TRL GRPOTrainer"]
    if t is not None:
        result["speedup_wall"] = t["round_s"] / ours["round_s"]
        result["speedup_cpu"] = t["round_cpu_s"] / ours["round_cpu_s"]
        a, b = ours["mean_reward_per_round"], t["mean_reward_per_round"]
        se = (statistics.variance(a) / len(a) + statistics.variance(b) / len(b)) ** 0.5 if min(len(a), len(b)) > 1 \
            else float("nan")
        result["reward_difference"], result["reward_difference_se"] = ours["mean_reward"] - t["mean_reward"], se
        print()
        print(f"mean reward per round: prefkit {ours['mean_reward']:.4f}, TRL {t['mean_reward']:.4f} (difference "
              f"{result['reward_difference']:+.4f}, standard error of the difference {se:.4f})")
        print(f"prefkit round speed-up over TRL: {result['speedup_wall']:.2f}x (wall), "
              f"{result['speedup_cpu']:.2f}x (CPU time); target >= 1.5x")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
