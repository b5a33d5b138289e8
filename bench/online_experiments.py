"""The online loop's measured results (issue 12): the budget-matched bandit, the rounds × pairs sweep and
the toy-world table, printed as markdown for ``docs/online.md``.

    OMP_NUM_THREADS=1 python bench/online_experiments.py              # everything: about 10 minutes, 1 thread
    OMP_NUM_THREADS=1 python bench/online_experiments.py --part bandit  # or sweep, toy
    OMP_NUM_THREADS=1 python bench/online_experiments.py --part toy --seeds 1  # a quick look

Parts:

1. **bandit**: the one-token world of ``tests/test_online_bandit.py`` (100 actions, hidden reward, a
   pairwise judge returning a sampled Bradley–Terry verdict). Online DPO through ``run_online`` vs offline
   DPO (same ``Trainer``, loss, β, lr, batch, steps) on pairs drawn from the reference at the same number
   of judged pairs: the hard world (π_ref(best) = 0.005; 512 pairs, 32 rounds, 64 steps of 16) and the
   control world (π_ref(best) = 0.5; 1,024 pairs, 16 rounds, 32 steps of 64), seeds 0–9; the paired
   difference with a 95% Student-t interval; the exact KL-regularised optimum π*.
2. **sweep**: the hard world at a fixed budget of 512 judged pairs and 64 optimizer steps of up to 16
   pairs, split into R rounds of 512 / R pairs (64 / R steps each); R = 1 is offline DPO on reference
   samples drawn by the loop's own sampler.
3. **toy**: the toy world (``prefkit.toy``), the hidden rule as a pointwise judge, from the demo's SFT
   policy (``prefkit.toy.demo.sft_policy``, quick sizes): offline DPO, online DPO, listwise online DPO
   and XPO at the same budget of judged samples, seeds 0–2.

The bandit helpers are those of the tests (kept in step by hand: a test may not import a script).
"""

from __future__ import annotations

import argparse
import copy
import math
import random
import sys
import tempfile
import time
from pathlib import Path
from statistics import mean, stdev

import torch

from prefkit.data.records import Pair
from prefkit.models.load import frozen_copy
from prefkit.online import ALGORITHMS, FunctionJudge, OnlineConfig, SamplingSettings, run_online
from prefkit.testing import token_world
from prefkit.toy import world
from prefkit.toy.demo import QUICK, generate, sft_policy
from prefkit.train.config import load_config
from prefkit.train.trainer import Trainer

K = 100
BETA = 0.5
LR = 6e-3
BUDGET, STEPS, BATCH = 512, 64, 16  # judged pairs, optimizer steps, pairs per step (bandit)


def t_quantile(df: int) -> float:
    """The 0.975 quantile of Student's t (scipy when installed, else the table value for df = 9)."""
    try:
        from scipy.stats import t
    except ImportError:
        if df != 9:
            raise SystemExit("install scipy for a t quantile with df != 9") from None
        return 2.2622
    return float(t.ppf(0.975, df))


# -- the bandit (as in tests/test_online_bandit.py) ---------------------------------------------------------


def bandit(seed: int, *, best_reward: float, best_prob: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(hidden rewards, reference probabilities): action 0 is best; the others' rewards are U[0, 2]."""
    r = torch.rand(K, generator=torch.Generator().manual_seed(1000 + seed), dtype=torch.float64) * 2.0
    r[0] = best_reward
    ref = torch.full((K,), (1.0 - best_prob) / (K - 1), dtype=torch.float64)
    ref[0] = best_prob
    return r, ref


def optimum(r: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """π*(a) ∝ π_ref(a)·exp(r(a)/β)."""
    return (ref.log() + r / BETA).softmax(0)


def bt_judge(actions: tuple[str, ...], r: torch.Tensor, seed: int) -> FunctionJudge:
    """Pairwise: a sampled verdict, 1 with probability σ(r_a − r_b)."""
    index = {a: i for i, a in enumerate(actions)}
    gen = torch.Generator().manual_seed(seed)

    def prefer(prompt, a, b) -> float:
        return float(torch.rand((), generator=gen, dtype=torch.float64) < torch.sigmoid(r[index[a]] - r[index[b]]))

    return FunctionJudge(prefer_fn=prefer, name="bradley-terry")


def bandit_config(out: Path, batch: int = BATCH, **train):
    overrides = ["loss.name=dpo", f"loss.beta={BETA}", f"train.lr={LR}", f"train.batch_size={batch}",
                 "train.scheduler=constant", "train.warmup_steps=0", "train.max_grad_norm=null",
                 "train.log_every=100000", "train.progress=false", "encode.add_eos=false", f"output.dir={out}",
                 "output.save_model=false", "output.plots=false", "output.tensorboard=false", "output.overwrite=true",
                 *(f"train.{k}={v}" for k, v in train.items())]
    return load_config(overrides=overrides, check_files=False)


def bandit_online(seed: int, r, ref, tmp: Path, rounds: int = 32, budget: int = BUDGET, steps: int = STEPS,
                  batch: int = BATCH) -> torch.Tensor:
    """Online DPO: ``rounds`` rounds of budget / rounds pairs (G = 2), steps / rounds steps each."""
    w = token_world(K, ref.tolist())
    online = OnlineConfig(rounds=rounds, prompts_per_round=budget // rounds, samples_per_prompt=2,
                          pairs="best_vs_worst", sampling=SamplingSettings(max_new_tokens=1),
                          steps_per_round=steps // rounds, seed=seed, win_rate_vs_reference=False)
    run_online(w.model, w.tokenizer, [w.prompt], bt_judge(w.actions, r, seed),
               bandit_config(tmp / "unused", batch),
               online, Path(tempfile.mkdtemp(dir=tmp)))
    return w.probs().double()


def bandit_offline(seed: int, r, ref, tmp: Path, budget: int = BUDGET, steps: int = STEPS, batch: int = BATCH
                   ) -> torch.Tensor:
    """Offline DPO on ``budget`` pairs drawn from the reference, ``steps`` steps of ``batch``."""
    w = token_world(K, ref.tolist())
    judge = bt_judge(w.actions, r, seed)
    drawn = torch.multinomial(ref, 2 * budget, replacement=True, generator=torch.Generator().manual_seed(50_000 + seed))
    records = []
    for a, b in drawn.view(budget, 2).tolist():
        verdict = judge.prefer([w.prompt], [w.actions[a]], [w.actions[b]])[0]
        if a != b:
            hi, lo = (a, b) if verdict > 0.5 else (b, a)
            records.append(Pair(w.prompt, w.actions[hi], w.actions[lo]))
    reference = frozen_copy(w.model)
    Trainer(bandit_config(Path(tempfile.mkdtemp(dir=tmp)), batch, max_steps=steps), w.model, w.tokenizer, records,
            reference_model=lambda: reference).train()
    return w.probs().double()


def part_bandit(seeds: list[int], tmp: Path) -> None:
    # (title, r(best), π_ref(best), rounds, judged pairs, optimizer steps); batch = pairs per round
    worlds = (("Hard world: π_ref(best) = 0.005, r(best) = 5", 5.0, 0.005, 32, BUDGET, STEPS),
              ("Control world: π_ref(best) = 0.5, r(best) = 3; 16 rounds × 64 pairs, 2 steps each", 3.0, 0.5, 16,
               1024, 32))
    for title, best_reward, best_prob, rounds, budget, steps in worlds:
        print(f"\n#### {title}\n")
        print("| seed | π*(best) | online DPO | offline DPO | online − offline | TV(online, π*) | TV(offline, π*) |")
        print("|---:|---:|---:|---:|---:|---:|---:|")
        diffs, ons, offs, stars = [], [], [], []
        t0 = time.perf_counter()
        for seed in seeds:
            r, ref = bandit(seed, best_reward=best_reward, best_prob=best_prob)
            star = optimum(r, ref)
            on = bandit_online(seed, r, ref, tmp, rounds, budget, steps, budget // rounds)
            off = bandit_offline(seed, r, ref, tmp, budget, steps, budget // rounds)
            tv_on, tv_off = 0.5 * float((on - star).abs().sum()), 0.5 * float((off - star).abs().sum())
            diffs.append(float(on[0] - off[0]))
            ons.append(float(on[0]))
            offs.append(float(off[0]))
            stars.append(float(star[0]))
            print(f"| {seed} | {star[0]:.3f} | {on[0]:.3f} | {off[0]:.3f} | {diffs[-1]:+.3f} | {tv_on:.3f} | {tv_off:.3f} |")
        n = len(diffs)
        if n > 1:
            half = t_quantile(n - 1) * stdev(diffs) / math.sqrt(n)
            print(f"| mean | {mean(stars):.3f} | {mean(ons):.3f} | {mean(offs):.3f} | {mean(diffs):+.3f} | | |")
            print(f"\nPaired difference online − offline (best-action probability), {n} seeds: mean "
                  f"{mean(diffs):+.3f}, 95% t-interval [{mean(diffs) - half:+.3f}, {mean(diffs) + half:+.3f}]; "
                  f"max |online − π*| {max(abs(a - b) for a, b in zip(ons, stars)):.3f}, "
                  f"max |offline − π*| {max(abs(a - b) for a, b in zip(offs, stars)):.3f} "
                  f"({time.perf_counter() - t0:.0f} s).")


def part_sweep(seeds: list[int], tmp: Path) -> None:
    for budget, steps in ((BUDGET, STEPS), (BUDGET // 4, STEPS // 4)):
        print(f"\n#### Rounds × pairs per round at {budget} judged pairs and {steps} optimizer steps (hard world)\n")
        offline = []
        for seed in seeds:
            r, ref = bandit(seed, best_reward=5.0, best_prob=0.005)
            offline.append(float(bandit_offline(seed, r, ref, tmp, budget, steps)[0]))
        print(f"Offline DPO (Trainer, reference pairs), same budget: {mean(offline):.3f} ± "
              f"{stdev(offline) if len(offline) > 1 else 0.0:.3f} (min {min(offline):.3f}, max {max(offline):.3f}).\n")
        print("| rounds × pairs per round | steps per round | best-action prob., mean ± sd | min | max "
              "| seeds with π(best) > 0.5 | seeds below offline DPO | seconds per run |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for rounds in (1, 2, 4, 8, 16, 32, 64):
            if steps // rounds < 1:
                continue
            got = []
            t0 = time.perf_counter()
            for seed in seeds:
                r, ref = bandit(seed, best_reward=5.0, best_prob=0.005)
                got.append(float(bandit_online(seed, r, ref, tmp, rounds, budget, steps)[0]))
            sd = stdev(got) if len(got) > 1 else 0.0
            below = sum(g < o for g, o in zip(got, offline))
            print(f"| {rounds} × {budget // rounds} | {steps // rounds} | {mean(got):.3f} ± {sd:.3f} | {min(got):.3f} | "
                  f"{max(got):.3f} | {sum(g > 0.5 for g in got)}/{len(got)} | {below}/{len(got)} | "
                  f"{(time.perf_counter() - t0) / len(got):.2f} |", flush=True)


# -- the toy world ---------------------------------------------------------------------------------------

TOY_ROUNDS, TOY_PROMPTS, TOY_G, TOY_STEPS = 30, 32, 4, 4  # 960 prompts × 4 = 3,840 judged samples


def greedy_reward(model, tokenizer, prompts: list[world.Prompt]) -> float:
    was_training = model.training
    model.eval()
    ids, _ = generate(model, tokenizer, [p.text for p in prompts], sample=False)
    model.train(was_training)
    texts = tokenizer.batch_decode(ids, skip_special_tokens=True)
    return mean(world.reward(p, t) for p, t in zip(prompts, texts, strict=True))


def toy_methods() -> list[tuple[str, str, dict]]:
    """(label, loss, OnlineConfig fields): every method sees 960 prompts × G = 4 judged samples and takes
    120 optimizer steps of up to 32 records."""
    online = {"rounds": TOY_ROUNDS, "prompts_per_round": TOY_PROMPTS, "steps_per_round": TOY_STEPS}
    offline = {"rounds": 1, "prompts_per_round": TOY_ROUNDS * TOY_PROMPTS, "steps_per_round": TOY_ROUNDS * TOY_STEPS}
    methods = [
        ("offline DPO (SFT-policy samples, 1 round)", "dpo", {**offline, "pairs": "best_vs_worst"}),
        ("online DPO", "dpo", {**online, "pairs": "best_vs_worst"}),
        ("listwise online DPO (`pl_dpo`, ranked_list)", "pl_dpo", {**online, "pairs": "ranked_list"}),
        ("listwise online (`lipo`, ranked_list)", "lipo", {**online, "pairs": "ranked_list"}),
    ]
    if "xpo" in ALGORITHMS:
        for alpha in (1e-5, 1e-2):
            methods.append((f"XPO, α = {alpha:g}", "dpo",
                            {**online, "pairs": "best_vs_worst", "algorithm": {"name": "xpo", "alpha": alpha}}))
    return methods


def part_toy(seeds: list[int], tmp: Path) -> None:
    tokenizer = world.build_tokenizer()
    held_out = world.sample_prompts(200, random.Random(10_000))
    methods = toy_methods()
    results: dict[str, list[tuple[float, float, float]]] = {label: [] for label, _, _ in methods}
    before_all = []
    for seed in seeds:
        rng = random.Random(seed)
        torch.manual_seed(seed)
        sft = sft_policy(tokenizer, QUICK, seed, rng, tmp / f"sft-{seed}", plots=False)
        prompts = [p.text for p in world.sample_prompts(512, rng)]
        before = greedy_reward(sft, tokenizer, held_out)
        before_all.append(before)
        for m, (label, loss, fields) in enumerate(methods):
            policy = copy.deepcopy(sft)
            cfg = load_config(overrides=[f"loss.name={loss}", "loss.beta=0.5", "train.lr=1e-4",
                                         f"train.batch_size={TOY_PROMPTS}", "train.scheduler=constant",
                                         "train.warmup_steps=0", "train.log_every=100000",
                                         f"output.dir={tmp / 'unused'}"], check_files=False)
            online = OnlineConfig(samples_per_prompt=TOY_G, sampling=SamplingSettings(max_new_tokens=world.MAX_LEN + 1),
                                  seed=seed, win_rate_vs_reference=False, **fields)
            judge = FunctionJudge(lambda p, c: world.reward(p, c), name="hidden rule")
            t0 = time.perf_counter()
            history = run_online(policy, tokenizer, prompts, judge, cfg, online, tmp / f"toy-{seed}-{m}")
            seconds = time.perf_counter() - t0
            results[label].append((greedy_reward(policy, tokenizer, held_out) - before,
                                   history[-1]["objective/scores"], seconds))
            print(f"seed {seed} {label}: greedy {before:.3f} -> {before + results[label][-1][0]:.3f} "
                  f"({seconds:.0f} s)", file=sys.stderr, flush=True)
    print(f"\n#### Toy world, {len(seeds)} seeds; greedy hidden reward of the SFT policy "
          f"{mean(before_all):.3f} (per seed {', '.join(f'{b:.3f}' for b in before_all)})\n")
    print("| method | Δ greedy hidden reward, mean ± sd | per seed | judge score, last round's samples | seconds |")
    print("|---|---:|---|---:|---:|")
    for label, _, _ in methods:
        rows = results[label]
        gains = [g for g, _, _ in rows]
        sd = stdev(gains) if len(gains) > 1 else 0.0
        print(f"| {label} | {mean(gains):+.3f} ± {sd:.3f} | {', '.join(f'{g:+.3f}' for g in gains)} | "
              f"{mean(s for _, s, _ in rows):.3f} | {mean(t for _, _, t in rows):.0f} |")
    if "xpo" not in ALGORITHMS:
        print("\nXPO: not in `prefkit.online.ALGORITHMS` when this ran; no row.")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=["all", "bandit", "sweep", "toy"], default="all")
    ap.add_argument("--seeds", type=int, default=None, help="seeds 0..N-1 (default 10 for bandit/sweep, 3 for toy)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if args.part in ("all", "bandit"):
            part_bandit(list(range(args.seeds or 10)), tmp)
        if args.part in ("all", "sweep"):
            part_sweep(list(range(args.seeds or 10)), tmp)
        if args.part in ("all", "toy"):
            part_toy(list(range(args.seeds or 3)), tmp)


if __name__ == "__main__":
    main()
