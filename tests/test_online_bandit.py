"""Budget-matched bandit through the real online loop (issue 12, "Must show" 1).

A one-token world (:func:`prefkit.testing.token_world`): 100 actions, a hidden reward ``r(a)`` and a
pairwise judge with Bradley–Terry noise. Online DPO (``run_online``, pairs from the current policy) and
offline DPO (the same ``Trainer``, loss, β, lr, batch size and number of optimizer steps, on pairs drawn
from the reference) get the same number of judged pairs. Everything is compared with exact answers:
``world.probs`` is the exact action distribution and the KL-regularised optimum
``π*(a) ∝ π_ref(a)·exp(r(a)/β)`` is computed in closed form.

The judge returns a *sampled* verdict (1 with probability ``σ(r_a − r_b)``, from a seeded generator), not
the probability itself. With G = 2 samples per prompt the loop's win rate is then that verdict, so each
record's label is one Bradley–Terry draw: DPO's population optimum on such labels is exactly π*. Returning
``σ(r_a − r_b)`` would label every pair by the higher hidden reward (noise-free labels), whose DPO optimum
is the argmax, not π*, and the control world could not be checked against π*.

Measured numbers (seeds 0–9, one thread) are in the test docstrings and ``docs/online.md``.
"""

from __future__ import annotations

import math
from statistics import mean

import torch

from prefkit.data.records import Pair
from prefkit.models.load import frozen_copy
from prefkit.online import FunctionJudge, OnlineConfig, SamplingSettings, run_online
from prefkit.testing import token_world
from prefkit.train.config import load_config
from prefkit.train.trainer import Trainer

K = 100
BETA = 0.5
LR = 6e-3
ROUNDS, PAIRS_PER_ROUND, STEPS_PER_ROUND = 32, 16, 2  # 512 judged pairs, 64 optimizer steps of 16 pairs
HARD = (ROUNDS, PAIRS_PER_ROUND, STEPS_PER_ROUND)
# The control world's budget: 1,024 judged pairs, 32 steps of 64 pairs. With batches of 16 pairs over 100
# actions (HARD), both methods stop short of π*, in opposite directions (online above, offline below; mean
# gap +0.041 over seeds 0–9): per-row Adam steps on sparse, Bradley–Terry-noisy gradients do not settle at the
# mean-gradient zero. Batches of 64 pairs average that noise (mean gap +0.013, below).
CONTROL = (16, 64, 2)
T_975_DF9 = 2.2622  # Student t 0.975 quantile, 9 degrees of freedom (scipy.stats.t.ppf(0.975, 9))


def bandit(seed: int, *, best_reward: float, best_prob: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(hidden rewards (K,), reference probabilities (K,)): action 0 is the best, with ``best_reward``;
    the others draw theirs uniformly from [0, 2]; the reference puts ``best_prob`` on action 0 and
    spreads the rest evenly."""
    r = torch.rand(K, generator=torch.Generator().manual_seed(1000 + seed), dtype=torch.float64) * 2.0
    r[0] = best_reward
    ref = torch.full((K,), (1.0 - best_prob) / (K - 1), dtype=torch.float64)
    ref[0] = best_prob
    return r, ref


def optimum(r: torch.Tensor, ref: torch.Tensor, beta: float = BETA) -> torch.Tensor:
    """The exact KL-regularised optimum π*(a) ∝ π_ref(a)·exp(r(a)/β)."""
    return (ref.log() + r / beta).softmax(0)


def bt_judge(actions: tuple[str, ...], r: torch.Tensor, seed: int) -> FunctionJudge:
    """Pairwise only: ``prefer_fn`` returns a sampled 0/1 verdict, 1 with probability σ(r_a − r_b)."""
    index = {a: i for i, a in enumerate(actions)}
    gen = torch.Generator().manual_seed(seed)

    def prefer(prompt, a, b) -> float:
        p = torch.sigmoid(r[index[a]] - r[index[b]])
        return float(torch.rand((), generator=gen, dtype=torch.float64) < p)

    return FunctionJudge(prefer_fn=prefer, name="bradley-terry")


def run_config(out, batch_size: int = PAIRS_PER_ROUND, **train):
    overrides = ["loss.name=dpo", f"loss.beta={BETA}", f"train.lr={LR}", f"train.batch_size={batch_size}",
                 "train.scheduler=constant", "train.warmup_steps=0", "train.max_grad_norm=null",
                 "train.log_every=100000", "train.progress=false", "encode.add_eos=false", f"output.dir={out}",
                 "output.save_model=false", "output.plots=false", "output.tensorboard=false", "output.overwrite=true",
                 *(f"train.{k}={v}" for k, v in train.items())]
    return load_config(overrides=overrides, check_files=False)


def online_best(seed: int, r, ref, tmp, budget: tuple[int, int, int] = HARD) -> tuple[float, torch.Tensor, int]:
    """Online DPO through ``run_online``: (best-action probability, final distribution, judged pairs);
    ``budget`` = (rounds, pairs per round, optimizer steps per round)."""
    rounds, per_round, steps = budget
    world = token_world(K, ref.tolist())
    judge = bt_judge(world.actions, r, seed)
    asked = 0
    inner = judge.prefer_fn

    def counted(prompt, a, b) -> float:
        nonlocal asked
        asked += 1
        return inner(prompt, a, b)

    judge.prefer_fn = counted
    online = OnlineConfig(rounds=rounds, prompts_per_round=per_round, samples_per_prompt=2,
                          pairs="best_vs_worst", sampling=SamplingSettings(max_new_tokens=1),
                          steps_per_round=steps, seed=seed, win_rate_vs_reference=False)
    run_online(world.model, world.tokenizer, [world.prompt], judge, run_config(tmp / "unused", per_round), online,
               tmp / f"online-{seed}")
    probs = world.probs().double()
    return float(probs[0]), probs, asked


def offline_best(seed: int, r, ref, tmp, budget: tuple[int, int, int] = HARD) -> tuple[float, torch.Tensor]:
    """Offline DPO: the same number of judged pairs, both actions drawn from the reference, one Trainer run
    with the same loss, lr, batch size and total optimizer steps."""
    rounds, per_round, steps = budget
    world = token_world(K, ref.tolist())
    judge = bt_judge(world.actions, r, seed)
    n = rounds * per_round
    drawn = torch.multinomial(ref, 2 * n, replacement=True, generator=torch.Generator().manual_seed(50_000 + seed))
    records = []
    for a, b in drawn.view(n, 2).tolist():
        verdict = judge.prefer([world.prompt], [world.actions[a]], [world.actions[b]])[0]  # asked for every pair
        if a != b:  # the loop skips a pair of equal texts too
            hi, lo = (a, b) if verdict > 0.5 else (b, a)
            records.append(Pair(world.prompt, world.actions[hi], world.actions[lo]))
    reference = frozen_copy(world.model)
    Trainer(run_config(tmp / f"offline-{seed}", per_round, max_steps=rounds * steps), world.model, world.tokenizer,
            records, reference_model=lambda: reference).train()
    probs = world.probs().double()
    return float(probs[0]), probs


def test_online_dpo_finds_the_rare_best_action_that_offline_dpo_misses(tmp_path):
    """Reference π_ref(best) = 0.005, r(best) = 5, others U[0, 2]: π*(best) ≈ 0.89 (β = 0.5).

    Measured, seeds 0–9: online − offline best-action probability, mean +0.489, 95% t-interval
    [+0.283, +0.694]; offline ends at 0.011–0.085, online at 0.033–0.898 (docs/online.md has every seed)."""
    diffs, online_probs = [], []
    for seed in range(10):
        r, ref = bandit(seed, best_reward=5.0, best_prob=0.005)
        on, _, asked = online_best(seed, r, ref, tmp_path)
        off, _ = offline_best(seed, r, ref, tmp_path)
        assert asked == ROUNDS * PAIRS_PER_ROUND  # budget matched: one judged pair per prompt (G = 2)
        diffs.append(on - off)
        online_probs.append(on)
    d = torch.tensor(diffs, dtype=torch.float64)
    half = T_975_DF9 * float(d.std()) / math.sqrt(len(d))
    low, high = float(d.mean()) - half, float(d.mean()) + half
    print(f"\nbandit: diffs {[round(x, 3) for x in diffs]} online {[round(x, 3) for x in online_probs]} "
          f"mean {float(d.mean()):.3f} CI [{low:.3f}, {high:.3f}]")
    assert low > 0, (low, high, diffs)
    # learning happened: from 0.005 to a mean above 0.3; online does not find the best action on every seed
    # (seeds 4 and 6 collapse early on a good-but-not-best action: 0.09 and 0.03)
    assert mean(online_probs) > 0.3, online_probs


def test_control_world_both_reach_the_kl_optimum(tmp_path):
    """Reference π_ref(best) = 0.5, r(best) = 3: π*(best) ≈ 0.97. Exploration does not matter here: with the
    CONTROL budget both end near π* and near each other. Measured, seeds 0–9: online − offline best-action
    probability per seed +0.002, +0.015, +0.016, −0.015, +0.014, +0.017, +0.022, +0.020, +0.011, +0.029 (mean
    +0.013); total variation to π* at most 0.035 (online) and 0.019 (offline)."""
    on_all, off_all, opt_all = [], [], []
    for seed in range(10):
        r, ref = bandit(seed, best_reward=3.0, best_prob=0.5)
        star = optimum(r, ref)
        on, on_probs, asked = online_best(seed, r, ref, tmp_path, CONTROL)
        off, off_probs = offline_best(seed, r, ref, tmp_path, CONTROL)
        assert asked == CONTROL[0] * CONTROL[1]
        for probs in (on_probs, off_probs):
            assert 0.5 * float((probs - star).abs().sum()) < 0.05, (seed, float(probs[0]), float(star[0]))
        on_all.append(on)
        off_all.append(off)
        opt_all.append(float(star[0]))
    print(f"\ncontrol: online {[round(x, 3) for x in on_all]} offline {[round(x, 3) for x in off_all]} "
          f"optimum {[round(x, 3) for x in opt_all]}")
    assert abs(mean(on_all) - mean(opt_all)) < 0.02, (on_all, opt_all)
    assert abs(mean(off_all) - mean(opt_all)) < 0.02, (off_all, opt_all)
    assert abs(mean(on_all) - mean(off_all)) < 0.02, (on_all, off_all)
