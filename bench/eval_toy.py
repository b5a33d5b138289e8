"""Policy diagnostics on the toy world (issue 15): ranking accuracy beside the idealized one, and CHES.

    OMP_NUM_THREADS=1 python bench/eval_toy.py               # seeds 0-2: about 12 minutes on 1 thread of a busy machine
    OMP_NUM_THREADS=1 python bench/eval_toy.py --seeds 1

Per seed, from the demo's SFT stage at quick sizes (``prefkit.toy.demo.sft_policy`` with ``QUICK``,
the reference) and the demo's preference stage (``demo.yaml`` with ``train.max_steps=150``, the quick
demo's length, and ``loss.name=dpo``, β = 0.5 as in demo.yaml):

1. **ranking**: on the held-out pairs, the DPO policy's ranking accuracy (summed and per-token) beside
   the idealized ranking accuracy of the exact DPO optimum for several choices of the true preference
   probability p (toy pairs are labelled by a deterministic rule, so p = 1; the Bradley–Terry choices
   p = σ(Δr/τ) of the hidden reward gap Δr show how the number moves with a noisier world). The demo's
   own loss (RPO) is reported too; its optimum is not DPO's, so its gap is indicative only.
2. **CHES**: CHES (raw and length-normalised) of every training pair under the reference; after DPO on
   all pairs, the mean change of log π(y_w) on the top and bottom CHES deciles; then DPO again (same seed,
   steps, batches) without the top 10% (and, as a control, without a random 10%), and the mean change of
   log π(y_w) on the pairs every run trained on and on the held-out pairs.

The test ``tests/test_eval_ches.py`` checks the same claims at one seed; numbers go to
``docs/evaluation.md``.
"""

from __future__ import annotations

import argparse
import copy
import random
import statistics
import tempfile
from typing import Any

import torch

from prefkit.data.records import Pair
from prefkit.eval.displacement import add_ches, ches_scores, filter_top_ches, likelihood_displacement
from prefkit.eval.ranking import (
    alignment_gap,
    bradley_terry_prob,
    idealized_ranking_accuracy,
    policy_pair_logps,
)
from prefkit.models.load import frozen_copy
from prefkit.toy import world
from prefkit.toy.demo import QUICK, sft_policy
from prefkit.train.config import load_config
from prefkit.train.trainer import Trainer

BETA = 0.5


def preference_stage(model: Any, reference: Any, tokenizer: Any, pairs: list[Pair], seed: int, out: str,
                     loss: str = "dpo") -> Any:
    # demo.yaml's preference stage (batch 32, lr 1e-3 constant, warmup 10) at the quick demo's 150 steps
    cfg = load_config(overrides=[
        f"output.dir={out}", "output.overwrite=true", "output.save_model=false", "output.plots=false",
        "output.tensorboard=false", "train.progress=false", "train.max_steps=150", f"train.seed={seed}",
        "train.batch_size=32", "train.lr=1e-3", "train.scheduler=constant", "train.warmup_steps=10",
        f"loss.name={loss}", f"loss.beta={BETA}"] + (["loss.alpha=0.5"] if loss == "rpo" else []))
    Trainer(cfg, model, tokenizer, pairs, reference_model=reference).train()
    return model


def run(seed: int, tmp: str) -> dict[str, float]:
    torch.manual_seed(seed)
    rng = random.Random(seed)
    tok = world.build_tokenizer()
    sft = sft_policy(tok, QUICK, seed, rng, f"{tmp}/sft{seed}", plots=False)
    train = world.preference_pairs(QUICK.train_pairs, rng)
    held = world.preference_pairs(QUICK.eval_pairs, rng)
    ref = frozen_copy(sft)
    out: dict[str, float] = {}

    policy = preference_stage(copy.deepcopy(sft), ref, tok, train, seed, f"{tmp}/dpo{seed}")
    gap = alignment_gap(policy, ref, tok, held, beta=BETA, true_pref_prob=1.0)
    out.update({"acc": gap.achieved.accuracy, "acc_norm": gap.achieved.normalized_accuracy,
                "ref_acc": gap.idealized.reference_accuracy, "ideal_p1": gap.idealized.accuracy, "gap_p1": gap.gap})
    ref_held = policy_pair_logps(ref, tok, held)
    rc = torch.tensor([p.metadata["chosen_reward"] for p in held])
    rr = torch.tensor([p.metadata["rejected_reward"] for p in held])
    for tau in (0.1, 0.25):
        ideal = idealized_ranking_accuracy(ref_held.chosen_logps, ref_held.rejected_logps, BETA,
                                           bradley_terry_prob(rc, rr, tau))
        out[f"ideal_bt{tau}"] = ideal.accuracy
    for p in (0.9, 0.75):
        out[f"ideal_p{p}"] = idealized_ranking_accuracy(ref_held.chosen_logps, ref_held.rejected_logps, BETA,
                                                        p).accuracy
    # share of held-out pairs the reference ranks wrongly that DPO turned right
    wrong = gap.idealized.difficulty > 0
    out["flipped_of_wrong"] = float((gap.achieved.margins[wrong] > 0).float().mean())
    rpo = preference_stage(copy.deepcopy(sft), ref, tok, train, seed, f"{tmp}/rpo{seed}", "rpo")
    out["acc_rpo"] = alignment_gap(rpo, ref, tok, held, beta=BETA, true_pref_prob=1.0).achieved.accuracy

    d_full = likelihood_displacement(policy, ref, tok, train)
    for normalize in (False, True):
        ches = ches_scores(ref, tok, train, length_normalize=normalize)
        order = ches.argsort()  # ascending
        k = len(order) // 10
        tag = "norm" if normalize else "raw"
        out[f"top_{tag}"] = float(d_full.chosen_logratios[order[-k:]].mean())
        out[f"bottom_{tag}"] = float(d_full.chosen_logratios[order[:k]].mean())
        kept, removed = filter_top_ches(add_ches(train, ches), 0.1)
        top = set(order[-len(removed):].tolist())  # the indices filter_top_ches removed
        random_drop = set(random.Random(seed + 1000).sample(range(len(train)), len(removed)))
        common = [p for i, p in enumerate(train) if i not in random_drop and i not in top]
        d_full_common = likelihood_displacement(policy, ref, tok, common).chosen_logratios.mean()
        filt = preference_stage(copy.deepcopy(sft), ref, tok, kept, seed, f"{tmp}/f{seed}")
        rand = preference_stage(copy.deepcopy(sft), ref, tok,
                                [p for i, p in enumerate(train) if i not in random_drop], seed, f"{tmp}/r{seed}")
        out[f"common_full_{tag}"] = float(d_full_common)
        out[f"common_filtered_{tag}"] = float(likelihood_displacement(filt, ref, tok, common).chosen_logratios.mean())
        out[f"common_random_{tag}"] = float(likelihood_displacement(rand, ref, tok, common).chosen_logratios.mean())
        out[f"held_full_{tag}"] = float(likelihood_displacement(policy, ref, tok, held).chosen_logratios.mean())
        out[f"held_filtered_{tag}"] = float(likelihood_displacement(filt, ref, tok, held).chosen_logratios.mean())
        out[f"held_random_{tag}"] = float(likelihood_displacement(rand, ref, tok, held).chosen_logratios.mean())
        out[f"acc_filtered_{tag}"] = alignment_gap(filt, ref, tok, held, beta=BETA, true_pref_prob=1.0).achieved.accuracy
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.seeds):
            rows.append(run(seed, tmp))
            print(f"seed {seed}: " + ", ".join(f"{k}={v:.3f}" for k, v in rows[-1].items()), flush=True)
    print("\n| quantity | " + " | ".join(f"seed {s}" for s in range(args.seeds)) + " | mean |")
    print("|---|" + "---:|" * (args.seeds + 1))
    for key in rows[0]:
        vals = [r[key] for r in rows]
        print(f"| {key} | " + " | ".join(f"{v:.3f}" for v in vals) + f" | {statistics.mean(vals):.3f} |")


if __name__ == "__main__":
    main()
