"""Ranking accuracy and the idealized ranking accuracy (prefkit.eval.ranking; Chen et al. 2024)."""

from __future__ import annotations

import copy
import math
import random

import pytest
import torch

from prefkit.data.records import Pair
from prefkit.eval.ranking import (
    alignment_gap,
    bradley_terry_prob,
    idealized_ranking_accuracy,
    policy_pair_logps,
    ranking_accuracy,
    ranking_accuracy_from_logps,
)
from prefkit.losses.types import PairLogps
from prefkit.models.load import frozen_copy
from prefkit.toy import world
from prefkit.toy.demo import QUICK, ToySettings, build_model, sft_policy
from prefkit.train.config import load_config
from prefkit.train.trainer import Trainer


def test_idealized_ranking_accuracy_golden() -> None:
    """Four pairs, β = 0.5, by hand.

    m_ref = log π_ref(y_w) − log π_ref(y_l) = [−2+3, −5+4, −3+3, −1+6] = [1, −1, 0, 5].
    p = [0.5, 0.6, 0.8, 1]: logit(p)/β = [0, 2·ln 1.5, 2·ln 4, +∞] = [0, 0.810930, 2.772589, +∞].
    optimum margin = [1, −0.189070, 2.772589, +∞] -> correct [T, F, T, T] -> 3/4.
    reference ranks [T, F, F(tie), T] -> 2/4. difficulty d = −m_ref = [−1, 1, 0, −5].
    flip loss −log σ(β·d) = softplus(−β·d) = softplus([0.5, −0.5, 0, 2.5])
                          = [0.974077, 0.474077, 0.693147, 2.578890].
    """
    ref_c, ref_r = torch.tensor([-2.0, -5.0, -3.0, -1.0]), torch.tensor([-3.0, -4.0, -3.0, -6.0])
    out = idealized_ranking_accuracy(ref_c, ref_r, 0.5, torch.tensor([0.5, 0.6, 0.8, 1.0]))
    assert out.accuracy == 0.75 and out.reference_accuracy == 0.5
    assert out.margins[:3].tolist() == pytest.approx([1.0, -0.189070, 2.772589], abs=1e-5)
    assert math.isinf(out.margins[3]) and out.margins[3] > 0
    assert out.difficulty.tolist() == [-1.0, 1.0, 0.0, -5.0]
    assert out.flip_loss.tolist() == pytest.approx([0.974077, 0.474077, 0.693147, 2.578890], abs=1e-5)
    # one p for every pair: p = 0.5 is the reference's own (strict) ranking; p = 1 ranks all correctly
    assert idealized_ranking_accuracy(ref_c, ref_r, 0.5, 0.5).accuracy == 0.5
    assert idealized_ranking_accuracy(ref_c, ref_r, 0.5, 1.0).accuracy == 1.0
    # smaller β: the true preference outweighs the reference (pair 2 at β = 0.1: −1 + 10·0.405 > 0)
    assert idealized_ranking_accuracy(ref_c, ref_r, 0.1, torch.tensor([0.5, 0.6, 0.8, 1.0])).accuracy == 1.0
    for bad in (0.0, 1.5, float("nan")):
        with pytest.raises(ValueError, match="true_pref_prob"):
            idealized_ranking_accuracy(ref_c, ref_r, 0.5, bad)
    with pytest.raises(ValueError, match="beta"):
        idealized_ranking_accuracy(ref_c, ref_r, 0.0, 0.9)


def test_ranking_accuracy_from_logps_golden() -> None:
    """chosen [−2, −6, −3] over [2, 3, 1] tokens, rejected [−4, −5, −3] over [4, 1, 3] tokens.

    summed margins [2, −1, 0] -> only the first is strictly correct -> 1/3.
    per token: chosen [−1, −2, −3], rejected [−1, −5, −1] -> margins [0, 3, −2] -> 1/3.
    """
    logps = PairLogps(torch.tensor([-2.0, -6.0, -3.0]), torch.tensor([-4.0, -5.0, -3.0]),
                      torch.tensor([2.0, 3.0, 1.0]), torch.tensor([4.0, 1.0, 3.0]))
    out = ranking_accuracy_from_logps(logps)
    assert out.accuracy == pytest.approx(1 / 3) and out.normalized_accuracy == pytest.approx(1 / 3)
    assert out.margins.tolist() == [2.0, -1.0, 0.0]
    assert out.normalized_margins.tolist() == [0.0, 3.0, -2.0]


def _uniform_model() -> torch.nn.Module:
    """The toy Llama with every weight 0: hidden states 0, logits 0, so π(token) = 1/V everywhere."""
    tok = world.build_tokenizer()
    model = build_model(tok, ToySettings(hidden_size=16, num_layers=1), seed=0)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    return model


def test_ranking_accuracy_on_a_tiny_model_by_hand() -> None:
    """A uniform model over the V = 18 toy tokens: log π(y|x) = −(|y| + 1)·ln 18 (EOS is scored too).

    pair 1: "4 5" (3 tokens) over "4 5 6" (4): margin +ln 18 -> correct;
    pair 2: "1 2 3" (4) over "7" (2): margin −2·ln 18 -> wrong;
    pair 3: "1 2" over "9 9": margin 0 -> a tie, wrong.  Accuracy 1/3.
    Per token every completion scores −ln 18: all ties -> normalised accuracy 0.
    With this model as its own reference and p = 1 the optimum ranks all three correctly: gap 2/3.
    """
    tok, model = world.build_tokenizer(), _uniform_model()
    assert len(tok) == 18
    pairs = [Pair("up 3 :", "4 5", "4 5 6"), Pair("up 3 :", "1 2 3", "7"), Pair("near 2 :", "1 2", "9 9")]
    ln_v = math.log(18)
    for packing in (True, False):
        out = ranking_accuracy(model, tok, pairs, batch_size=2, packing=packing)
        assert out.accuracy == pytest.approx(1 / 3) and out.normalized_accuracy == 0.0
        assert out.margins.tolist() == pytest.approx([ln_v, -2 * ln_v, 0.0], abs=1e-5)
        assert out.logps.chosen_logps.tolist() == pytest.approx([-3 * ln_v, -4 * ln_v, -3 * ln_v], abs=1e-5)
        assert out.logps.chosen_tokens.tolist() == [3.0, 4.0, 3.0]
    gap = alignment_gap(model, model, tok, pairs, beta=0.1, true_pref_prob=1.0)
    assert gap.idealized.accuracy == 1.0 and gap.gap == pytest.approx(2 / 3)
    assert gap.idealized.difficulty.tolist() == pytest.approx([-ln_v, 2 * ln_v, 0.0], abs=1e-5)
    assert set(gap.summary()) >= {"ranking/accuracy", "ranking/idealized_accuracy", "ranking/alignment_gap"}


def test_bradley_terry_prob() -> None:
    """σ((r_w − r_l)/τ): gap 0 -> ½; gap 0.25 at τ = 0.25 -> σ(1) = 0.731059."""
    p = bradley_terry_prob(torch.tensor([0.5, 0.75]), torch.tensor([0.5, 0.5]), temperature=0.25)
    assert p.tolist() == pytest.approx([0.5, 0.731059], abs=1e-6)


def test_toy_demo_ranking_beside_idealized(tmp_path) -> None:
    """The demo's SFT stage (quick sizes) then its preference stage with DPO (β 0.5, 150 steps of 32).

    Toy pairs are labelled by a deterministic rule, so the true preference probability is 1 and the
    exact DPO optimum ranks every pair correctly (idealized accuracy 1): the gap is 1 − achieved.
    The SFT reference has no preference (its ranking accuracy is near ½); DPO lifts it, short of 1.
    Numbers at three seeds: docs/evaluation.md (bench/eval_toy.py).
    """
    torch.manual_seed(0)
    rng, tok = random.Random(0), world.build_tokenizer()
    sft = sft_policy(tok, QUICK, 0, rng, tmp_path / "sft", plots=False)
    train = world.preference_pairs(QUICK.train_pairs, rng)
    held = world.preference_pairs(QUICK.eval_pairs, rng)
    reference, policy = frozen_copy(sft), copy.deepcopy(sft)
    cfg = load_config(overrides=[
        f"output.dir={tmp_path / 'dpo'}", "output.save_model=false", "output.plots=false", "output.tensorboard=false",
        "train.progress=false", "train.max_steps=150", "train.batch_size=32", "train.lr=1e-3",
        "train.scheduler=constant", "train.warmup_steps=10", "loss.name=dpo", "loss.beta=0.5"])
    Trainer(cfg, policy, tok, train, reference_model=reference).train()
    gap = alignment_gap(policy, reference, tok, held, beta=0.5, true_pref_prob=1.0)
    print(gap.summary())
    assert gap.idealized.accuracy == 1.0
    assert 0.4 < gap.idealized.reference_accuracy < 0.65
    assert gap.idealized.reference_accuracy + 0.2 < gap.achieved.accuracy < 1.0
    assert gap.gap == pytest.approx(1.0 - gap.achieved.accuracy)
    ref = policy_pair_logps(reference, tok, held)
    rewards = [torch.tensor([p.metadata[k] for p in held]) for k in ("chosen_reward", "rejected_reward")]
    noisy = idealized_ranking_accuracy(ref.chosen_logps, ref.rejected_logps, 0.5, bradley_terry_prob(*rewards, 0.25))
    assert gap.idealized.reference_accuracy < noisy.accuracy < 1.0  # a noisier world: the optimum keeps some errors
