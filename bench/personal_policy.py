"""User-conditioned DPO and the MaxMin objective in the two-group one-token world (issue 16, item 3),
printed as markdown tables for the docs.

    OMP_NUM_THREADS=1 python bench/personal_policy.py                  # both parts, seeds 0–2: about 2 minutes
    OMP_NUM_THREADS=1 python bench/personal_policy.py --part dpo --seeds 0

The world, the pairs and the runs are those of ``tests/test_personal_policy.py`` (imported from it; its
module docstring describes them): K = 5 actions, group 0 wants high actions (r_0(a_i) = i/4), group 1 low
ones (r_1 = 1 − r_0); every reward below is exact (from the policy's logits), never sampled.

Parts:

1. **dpo**: DPO on the same pairs (20 users × 20 pairs, 50/50 and 80/20 splits), user-blind and
   user-conditioned: by group (one marker per group, the test's setting) and by user (one marker per user,
   20 markers; each group's numbers are the mean over its users' prompts). Plus the generic fallback:
   by user with ``generic_weight`` 0.2 (P-DPO's generic term), a user never seen served with the generic
   marker. (expected, greedy) hidden reward per group.
2. **maxmin**: 80/20; RLOO on the user-blind prompt from a reference that leans to the majority, with the
   population-weighted reward 0.8·r_0 + 0.2·r_1 (standard) vs MaxMin (``RewardMix(combine="maxmin")``,
   τ = 0, and a softmin τ = 0.05); offline user-blind DPO on the 80/20 pairs for comparison. Expected
   hidden reward per group.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import tempfile
import time
from pathlib import Path
from statistics import mean, stdev

from prefkit.data.condition import UserConditioning, condition_on_users, user_markers, users_of
from prefkit.models.load import frozen_copy
from prefkit.train.trainer import Trainer

# The test's world, pairs and runs, so the tables measure exactly what the tests check.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
t = importlib.import_module("test_personal_policy")


def by_user(shares: tuple[float, float], seed: int, generic_weight: float = 0.0) -> dict[str, tuple[float, float]]:
    """DPO conditioned by user; per group the mean (expected, greedy) over its users' prompts, and with
    ``generic_weight`` the generic marker's (an unseen user) per group."""
    records = t.group_pairs(shares, seed=seed)
    conditioning = UserConditioning(generic_weight=generic_weight)
    users = users_of(records)
    world = t.group_world(tuple(user_markers(users, conditioning)), seed=seed)
    reference = frozen_copy(world.model)
    with tempfile.TemporaryDirectory() as tmp:
        Trainer(t.dpo_config(Path(tmp), t.DPO_STEPS, seed), world.model, world.tokenizer,
                condition_on_users(records, conditioning), reference_model=lambda: reference).train()
    group_of = {r.user_id: r.metadata["group"] for r in records}
    out = {}
    for g in t.GROUPS:
        rows = [t.exact_rewards(world, g, f"{conditioning.marker(u)} {t.PROMPT}") for u in users if group_of[u] == g]
        out[f"group {g}"] = (mean(r[0] for r in rows), mean(r[1] for r in rows))
        if generic_weight:
            out[f"unseen, group {g}"] = t.exact_rewards(world, g, f"{conditioning.marker(conditioning.generic)} "
                                                                    f"{t.PROMPT}")
    return out


def dpo_part(seeds: list[int]) -> None:
    print("\n### User-conditioned vs user-blind DPO: (expected, greedy) hidden reward per group\n")
    print("| split | policy | seed | group 0 | group 1 | seconds |")
    print("|---|---|---|---|---|---|")
    for shares in ((0.5, 0.5), (0.8, 0.2)):
        split = f"{round(shares[0] * 100)}/{round(shares[1] * 100)}"
        for seed in seeds:
            for name, fn in (("user-blind", lambda s=shares, sd=seed: t.serve_groups(s, False, sd)),
                             ("by group", lambda s=shares, sd=seed: t.serve_groups(s, True, sd)),
                             ("by user", lambda s=shares, sd=seed: by_user(s, sd))):
                t0 = time.perf_counter()
                res = fn()
                sec = time.perf_counter() - t0
                rows = [res[g] if g in res else res[f"group {g}"] for g in t.GROUPS]
                cells = " | ".join(f"{e:.3f} / {gr:.2f}" for e, gr in rows)
                print(f"| {split} | {name} | {seed} | {cells} | {sec:.1f} |", flush=True)
            res = by_user(shares, seed, generic_weight=0.2)
            cells = " | ".join(f"{res[f'unseen, group {g}'][0]:.3f} / {res[f'unseen, group {g}'][1]:.2f}"
                               for g in t.GROUPS)
            print(f"| {split} | unseen user (generic marker, by user, generic_weight 0.2) | {seed} | {cells} | |",
                  flush=True)


def maxmin_part(seeds: list[int]) -> None:
    print("\n### 80/20: standard vs MaxMin policy objective, exact expected hidden reward per group\n")
    rows: dict[str, list[tuple[float, float]]] = {}
    world = t.group_world(reference=t.SKEWED)
    rows["reference (leans to the majority)"] = [(t.exact_rewards(world, 0, t.PROMPT)[0],
                                                  t.exact_rewards(world, 1, t.PROMPT)[0])] * len(seeds)
    runs = {
        "RLOO, population-weighted reward 0.8·r_0 + 0.2·r_1": lambda s: t.rl_groups("standard", s),
        "RLOO, MaxMin (τ = 0)": lambda s: t.rl_groups("maxmin", s),
        "RLOO, MaxMin (softmin τ = 0.05)": lambda s: t.rl_groups("maxmin", s, temperature=0.05),
        "offline DPO on the pooled 80/20 pairs (user-blind)": lambda s: tuple(
            v[0] for v in t.serve_groups((0.8, 0.2), False, s).values()),
    }
    for name, fn in runs.items():
        rows[name] = []
        for seed in seeds:
            res = fn(seed)
            rows[name].append((res[0], res[1]) if isinstance(res, dict) else tuple(res))
    print("| training | group 0 (majority) | group 1 (minority) | min | per seed (minority) |")
    print("|---|---|---|---|---|")
    for name, vals in rows.items():
        maj, mino = [v[0] for v in vals], [v[1] for v in vals]

        def fmt(xs: list[float]) -> str:
            return f"{mean(xs):.3f} ± {stdev(xs):.3f}" if len(xs) > 1 else f"{xs[0]:.3f}"

        mins = [min(a, b) for a, b in vals]
        print(f"| {name} | {fmt(maj)} | {fmt(mino)} | {fmt(mins)} | {', '.join(f'{x:.3f}' for x in mino)} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=["dpo", "maxmin", "all"], default="all")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    if args.part in ("dpo", "all"):
        dpo_part(args.seeds)
    if args.part in ("maxmin", "all"):
        maxmin_part(args.seeds)


if __name__ == "__main__":
    main()
