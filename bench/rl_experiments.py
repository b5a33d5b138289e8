"""RL on the toy world (issue 13): reward over-optimisation and DPO vs RL under matched data, printed as
markdown for ``docs/rl.md``.

    OMP_NUM_THREADS=1 python bench/rl_experiments.py --part overopt              # + docs/rl_overoptimisation.png
    OMP_NUM_THREADS=1 python bench/rl_experiments.py --part table --seeds 0 1 2

Parts:

1. **overopt** (Gao et al. 2023, "Scaling Laws for Reward Model Overoptimization", arXiv 2210.10760): a
   proxy reward model (a one-layer tiny Llama, width 32, scalar head, Bradley–Terry, 150 steps of 32) trained
   on 300 toy pairs judged by the hidden rule (``world.preference_pairs``); then GRPO from the demo's SFT
   policy against the proxy (``RewardModelJudge``), 120 rounds of 32 prompts × 8 samples, 2 full-batch steps
   per round, lr 5e-4. Per round: the proxy reward of the samples (``rewards/proxy/mean``), their gold
   reward (the hidden rule on the texts of ``rounds/NNNN.jsonl``) and KL(π‖π_ref) (``objective/kl``, k1
   over the sequence), as 5-round trailing means. Six runs: β = 0.005 without shaping; the same with PAR
   (``RewardMix(par=True)``, one SFT-policy sample per prompt as the reference); β = 0.1 and 0.5; and
   Dr. GRPO (``scale: none``) without and with PAR. The plot of gold and proxy against KL goes to
   ``docs/rl_overoptimisation.png``.
2. **table**: from the demo's SFT policy (quick sizes, one per seed), the hidden rule as the judge, the same
   prompt list and the same number of judged samples for every method (``ROUNDS`` × ``PROMPTS`` × ``G``):
   offline DPO (one round of SFT-policy samples, best vs worst), online DPO, GRPO, RLOO, RSF (and PPO when
   ``ppo`` is in ``prefkit.online.ALGORITHMS``). Greedy hidden reward on 200 held-out prompts, before and
   after, mean ± sd over seeds, and seconds per run. Each method keeps its own tuned settings: DPO those of
   ``bench/online_experiments.py`` (β 0.5, lr 1e-4, 4 steps of 32 pairs per round), RL those of
   ``docs/rl.md`` (lr 5e-4, 2 full-batch steps per round).

Helpers shared with ``bench/online_experiments.py`` are imported from it (``greedy_reward``).
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from statistics import mean, stdev

import torch
from online_experiments import greedy_reward  # bench/ is on sys.path when this script runs

from prefkit.errors import ConfigError
from prefkit.models.heads import RewardModelConfig
from prefkit.models.reward import RewardModel
from prefkit.online import (
    ALGORITHMS,
    FunctionJudge,
    OnlineConfig,
    RewardModelJudge,
    SamplingSettings,
    run_online,
)
from prefkit.online.rewards import RewardComponent, RewardMix
from prefkit.toy import world
from prefkit.toy.demo import QUICK, build_model, generate, sft_policy
from prefkit.train import load_reward_config, train_reward_model
from prefkit.train.config import load_config

DOCS = Path(__file__).resolve().parents[1] / "docs"
QUIET = ["train.progress=false", "train.log_every=100000", "output.tensorboard=false", "output.plots=false",
         "output.save_model=false", "output.overwrite=true"]


def hidden_judge() -> FunctionJudge:
    return FunctionJudge(lambda prompt, completion: world.reward(prompt, completion), name="hidden rule")


def toy_start(seed: int, tmp: Path):
    """(tokenizer, SFT policy, 512 training prompt texts, 200 held-out prompts) for ``seed``, as the tests."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    tokenizer = world.build_tokenizer()
    sft = sft_policy(tokenizer, QUICK, seed, rng, tmp / f"sft-{seed}", plots=False)
    prompts = [p.text for p in world.sample_prompts(512, rng)]
    held_out = world.sample_prompts(200, random.Random(10_000))
    return tokenizer, sft, prompts, held_out


def run_config(tmp: Path, *, loss: str = "dpo", beta: float | None = None, lr: float = 5e-4, batch: int = 512):
    overrides = [f"loss.name={loss}", f"train.lr={lr}", f"train.batch_size={batch}", "train.scheduler=constant",
                 "train.warmup_steps=0", f"output.dir={tmp / 'unused'}", *QUIET]
    if beta is not None:
        overrides.append(f"loss.beta={beta}")
    return load_config(overrides=overrides, check_files=False)


def gold_per_round(run: Path, rounds: int) -> list[float]:
    """Mean hidden reward of each round's judged samples (``rounds/NNNN.jsonl``)."""
    out = []
    for r in range(rounds):
        rows = [json.loads(x) for x in (run / "rounds" / f"{r:04d}.jsonl").read_text().splitlines()]
        out.append(mean(world.reward(row["prompt"], row["response"]) for row in rows))
    return out


def sd(xs: list[float]) -> float:
    return stdev(xs) if len(xs) > 1 else 0.0


# -- part 1: over-optimisation ---------------------------------------------------------------------------

PROXY_PAIRS, PROXY_STEPS, PROXY_HIDDEN = 300, 150, 32


class NonEmptyJudge:
    """A pointwise judge that scores only non-empty completions with ``judge`` and gives an empty one (EOS
    first) the lowest score of the call. ``RewardModelJudge.score`` raises ``DataError: field 'response' is
    empty`` on an empty completion, and the policy samples some (the hidden rule gives them 0)."""

    pointwise, pairwise = True, False

    def __init__(self, judge, name: str):
        self.judge, self.name = judge, name

    def score(self, prompts, completions) -> torch.Tensor:
        keep = [i for i, c in enumerate(completions) if str(c).strip()]
        out = torch.zeros(len(completions))
        if keep:
            scores = self.judge.score([prompts[i] for i in keep], [completions[i] for i in keep]).float().cpu()
            out.fill_(float(scores.min()))
            out[keep] = scores
        return out

    def prefer(self, prompts, a, b) -> torch.Tensor:
        raise ConfigError(f"judge {self.name!r} is pointwise only")


def train_proxy(tokenizer, seed: int, tmp: Path) -> tuple[RewardModel, float, float]:
    """A Bradley–Terry reward model on ``PROXY_PAIRS`` hidden-rule pairs; (model, train acc., held-out acc.)."""
    rng = random.Random(20_000 + seed)
    train, held = world.preference_pairs(PROXY_PAIRS, rng), world.preference_pairs(500, rng)
    cfg = load_reward_config(None, [f"output.dir={tmp / 'proxy'}", f"train.max_steps={PROXY_STEPS}", "train.lr=2e-3",
                                    "train.batch_size=32", "train.scheduler=constant", "train.warmup_steps=0",
                                    f"train.seed={seed}", *QUIET])
    backbone = build_model(tokenizer, replace(QUICK, hidden_size=PROXY_HIDDEN, num_layers=1), 100 + seed)
    model = RewardModel.from_backbone(backbone, RewardModelConfig(max_length=64), tokenizer)
    model, _ = train_reward_model(cfg, train_records=train, model=model)
    model.eval()

    def accuracy(pairs) -> float:
        chosen = model.score([p.prompt for p in pairs], [p.chosen for p in pairs], batch_size=256)
        rejected = model.score([p.prompt for p in pairs], [p.rejected for p in pairs], batch_size=256)
        return float((chosen > rejected).float().mean())

    return model, accuracy(train), accuracy(held)


def part_overopt(seed: int, rounds: int, tmp: Path, plot: Path | None) -> None:
    tokenizer, sft, prompts, held_out = toy_start(seed, tmp)
    t0 = time.perf_counter()
    proxy, train_acc, held_acc = train_proxy(tokenizer, seed, tmp)
    print(f"proxy: {PROXY_PAIRS} pairs, train accuracy {train_acc:.3f}, held-out {held_acc:.3f} "
          f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
    proxy_judge = NonEmptyJudge(RewardModelJudge(proxy, batch_size=512), name="proxy")
    # PAR's references: one SFT-policy sample (temperature 1) per training prompt; an empty sample (EOS first)
    # is not a valid completion, so it is drawn again (greedy after 5 tries)
    gen = torch.Generator().manual_seed(30_000 + seed)
    sft.eval()
    refs = [""] * len(prompts)
    for attempt in range(6):
        todo = [i for i, r in enumerate(refs) if not r.strip()]
        if not todo:
            break
        ids, _ = generate(sft, tokenizer, [prompts[i] for i in todo], sample=attempt < 5, generator=gen)
        for i, text in zip(todo, tokenizer.batch_decode(ids, skip_special_tokens=True), strict=True):
            refs[i] = text
    sft.train()

    def par_mix() -> RewardMix:  # a new one per run: a mix keeps its round counter
        mix = RewardMix([RewardComponent("proxy", proxy_judge)], par=True, name="proxy (PAR)")
        mix.set_references(prompts, refs)
        return mix

    small = 0.005
    runs = [("GRPO, β = 0.005, no shaping", False, {"kl_coef": small}),
            ("GRPO + PAR, β = 0.005", True, {"kl_coef": small}),
            ("GRPO, β = 0.1", False, {"kl_coef": 0.1}),
            ("GRPO, β = 0.5", False, {"kl_coef": 0.5}),
            ("Dr. GRPO (scale none), β = 0.005, no shaping", False, {"kl_coef": small, "scale": "none"}),
            ("Dr. GRPO (scale none) + PAR, β = 0.005", True, {"kl_coef": small, "scale": "none"})]
    before = greedy_reward(sft, tokenizer, held_out)
    print(f"\n#### Over-optimisation: GRPO against a proxy reward model (seed {seed}, {rounds} rounds × 32 prompts "
          f"× 8 samples, 2 full-batch steps per round, lr 5e-4)\n\nProxy: {PROXY_PAIRS} hidden-rule pairs, held-out "
          f"pair accuracy {held_acc:.3f} (train {train_acc:.3f}). SFT policy: greedy hidden reward {before:.3f}.\n")
    curves, summary = {}, []
    marks = sorted({r for r in (0, 2, 5, 10, 20, 40, 60, 80, 100, 150, 200) if r < rounds} | {rounds - 1})
    for n, (label, par, options) in enumerate(runs):
        judge = par_mix() if par else proxy_judge
        policy = copy.deepcopy(sft)
        online = OnlineConfig(algorithm={"name": "grpo", **options}, rounds=rounds, prompts_per_round=32,
                              samples_per_prompt=8, sampling=SamplingSettings(max_new_tokens=world.MAX_LEN + 1),
                              steps_per_round=2, seed=seed, win_rate_vs_reference=False)
        t0 = time.perf_counter()
        history = run_online(policy, tokenizer, prompts, judge, run_config(tmp), online, tmp / f"overopt-{n}")
        seconds = time.perf_counter() - t0
        gold = rolling(gold_per_round(tmp / f"overopt-{n}", rounds))
        proxy_sampled = rolling([h["rewards/proxy/mean"] for h in history])  # the raw proxy (PAR: its component)
        kl = rolling([h["objective/kl"] for h in history])
        after = greedy_reward(policy, tokenizer, held_out)
        curves[label] = (kl, gold, proxy_sampled)
        peak = max(range(rounds), key=gold.__getitem__)
        summary.append((label, gold[peak], peak, kl[peak], gold[-1], proxy_sampled[-1], kl[-1], after, seconds))
        print(f"**{label}** ({seconds:.0f} s); means over the last {WINDOW} rounds:\n")
        print("| round | " + " | ".join(str(r) for r in marks) + " |")
        print("|---|" + "---:|" * len(marks))
        for name, xs in (("KL (k1, nats/seq.)", kl), ("proxy reward", proxy_sampled), ("gold reward", gold)):
            print(f"| {name} | " + " | ".join(f"{xs[r]:.3f}" for r in marks) + " |")
        print(flush=True)
    print(f"Summary (sampled rewards: means over {WINDOW} rounds; greedy: 200 held-out prompts, before {before:.3f}):\n")
    print("| run | gold at its peak (round, KL) | gold, end | proxy, end | KL, end | greedy hidden reward, end "
          "| seconds |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, g_peak, peak, kl_peak, g_end, p_end, kl_end, after, seconds in summary:
        print(f"| {label} | {g_peak:.3f} ({peak}, {kl_peak:.2f}) | {g_end:.3f} | {p_end:.3f} | {kl_end:.2f} | "
              f"{after:.3f} | {seconds:.0f} |")
    if plot is not None:
        plot_overopt(curves, plot, held_acc)


WINDOW = 5


def rolling(xs: list[float], window: int = WINDOW) -> list[float]:
    """Trailing mean over the last ``window`` rounds (fewer at the start)."""
    return [mean(xs[max(0, i - window + 1):i + 1]) for i in range(len(xs))]


def plot_overopt(curves, path: Path, held_acc: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_gold, ax_proxy) = plt.subplots(1, 2, figsize=(12, 4.6))
    colors = ("tab:red", "tab:blue", "tab:green", "tab:olive", "tab:orange", "tab:purple")
    for (label, (kl, gold, proxy)), color in zip(curves.items(), colors):
        x = [max(k, 0.0) for k in kl]
        ax_gold.plot(x, gold, color=color, lw=1.2, label=label)
        ax_proxy.plot(x, proxy, color=color, lw=1.2, label=label)
    xlabel = "KL(π‖π_ref), nats per sequence (k1; √ scale)"
    ax_gold.set(title="Gold (hidden-rule) reward of the sampled completions", xlabel=xlabel, ylabel="gold reward")
    ax_proxy.set(title=f"Proxy reward of the same samples (RM, held-out acc. {held_acc:.2f})", xlabel=xlabel,
                 ylabel="proxy reward (PAR runs: the raw proxy)")
    for ax in (ax_gold, ax_proxy):
        ax.set_xscale("function", functions=(lambda v: v ** 0.5, lambda v: v ** 2))
        ax.set_xticks([0, 1, 2, 5, 10, 20, 30, 40])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"Reward over-optimisation on the toy world: GRPO against a proxy reward model "
                 f"({WINDOW}-round means)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"plot: {path}", file=sys.stderr)


# -- part 2: DPO vs RL under matched data ----------------------------------------------------------------

ROUNDS, PROMPTS, G, STEPS = 40, 32, 8, 2  # 40 × 32 × 8 = 10,240 judged samples per run


def table_methods(rounds: int) -> list[tuple[str, str, dict, dict]]:
    """(label, loss, run-config settings, OnlineConfig fields); every method sees ROUNDS × PROMPTS prompts
    × G judged samples from the same prompt list."""
    dpo = {"beta": 0.5, "lr": 1e-4, "batch": PROMPTS}  # bench/online_experiments.py's toy settings
    rl = {"lr": 5e-4, "batch": PROMPTS * G}  # docs/rl.md's toy settings (full-batch steps)
    online = {"rounds": rounds, "prompts_per_round": PROMPTS}
    methods = [
        ("offline DPO (SFT-policy samples, 1 round, best vs worst)", "dpo", dpo,
         {"rounds": 1, "prompts_per_round": rounds * PROMPTS, "steps_per_round": rounds * 4, "pairs": "best_vs_worst"}),
        ("online DPO (best vs worst)", "dpo", dpo, {**online, "steps_per_round": 4, "pairs": "best_vs_worst"}),
        ("GRPO, β = 0.02 (k3 in the loss)", "dpo", rl,
         {**online, "steps_per_round": STEPS, "algorithm": {"name": "grpo", "kl_coef": 0.02}}),
        ("RLOO, β = 0.05 (k1 in the reward)", "dpo", rl,
         {**online, "steps_per_round": STEPS, "algorithm": {"name": "rloo", "kl_coef": 0.05}}),
        ("RSF (best of 8, SFT)", "simpo", rl, {**online, "steps_per_round": STEPS, "algorithm": {"name": "rsf"}}),
    ]
    if "ppo" in ALGORITHMS:
        methods.append(("PPO, β = 0.02 (k1 per token in the reward)", "dpo", rl,
                        {**online, "steps_per_round": STEPS, "algorithm": {"name": "ppo", "kl_coef": 0.02}}))
    return methods


def part_table(seeds: list[int], rounds: int, tmp: Path, only: list[str] | None) -> None:
    methods = [m for m in table_methods(rounds) if not only or any(o in m[0] for o in only)]
    results: dict[str, list[tuple[float, float]]] = {label: [] for label, *_ in methods}
    befores = []
    for seed in seeds:
        tokenizer, sft, prompts, held_out = toy_start(seed, tmp)
        before = greedy_reward(sft, tokenizer, held_out)
        befores.append(before)
        for m, (label, loss, settings, fields) in enumerate(methods):
            policy = copy.deepcopy(sft)
            online = OnlineConfig(samples_per_prompt=G, sampling=SamplingSettings(max_new_tokens=world.MAX_LEN + 1),
                                  seed=seed, win_rate_vs_reference=False, **fields)
            t0 = time.perf_counter()
            run_online(policy, tokenizer, prompts, hidden_judge(), run_config(tmp, loss=loss, **settings), online,
                       tmp / f"table-{seed}-{m}")
            seconds = time.perf_counter() - t0
            after = greedy_reward(policy, tokenizer, held_out)
            results[label].append((after, seconds))
            print(f"seed {seed} {label}: greedy {before:.3f} -> {after:.3f} ({seconds:.0f} s)", file=sys.stderr,
                  flush=True)
    print(f"\n#### DPO vs RL under matched data: {rounds * PROMPTS} prompts × {G} judged samples = "
          f"{rounds * PROMPTS * G:,} per run, seeds {', '.join(map(str, seeds))}\n")
    print(f"Greedy hidden reward on 200 held-out prompts; SFT policy (before) {mean(befores):.3f} ± {sd(befores):.3f} "
          f"(per seed {', '.join(f'{b:.3f}' for b in befores)}).\n")
    print("| method | before | after, mean ± sd | after, per seed | seconds per run |")
    print("|---|---:|---:|---|---:|")
    for label, *_ in methods:
        rows = results[label]
        afters = [a for a, _ in rows]
        print(f"| {label} | {mean(befores):.3f} | {mean(afters):.3f} ± {sd(afters):.3f} | "
              f"{', '.join(f'{a:.3f}' for a in afters)} | {mean(s for _, s in rows):.0f} |")
    if "ppo" not in ALGORITHMS:
        print("\nPPO: not in `prefkit.online.ALGORITHMS` when this ran; no row.")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=["overopt", "table"], required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=None,
                    help="seeds (default: 0 for overopt, 0 1 2 for table)")
    ap.add_argument("--rounds", type=int, default=None,
                    help=f"rounds per run (default: 120 for overopt, {ROUNDS} for table; offline DPO: 1 round of as many prompts)")
    ap.add_argument("--methods", nargs="*", default=None, help="table: only methods whose label contains one of these")
    ap.add_argument("--no-plot", action="store_true", help="overopt: do not write docs/rl_overoptimisation.png")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        if args.part == "overopt":
            part_overopt((args.seeds or [0])[0], args.rounds or 120, Path(tmp),
                         None if args.no_plot else DOCS / "rl_overoptimisation.png")
        else:
            part_table(args.seeds or [0, 1, 2], args.rounds or ROUNDS, Path(tmp), args.methods)


if __name__ == "__main__":
    main()
