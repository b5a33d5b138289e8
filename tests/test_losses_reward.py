"""Golden values and identities for the reward-model losses (``prefkit.losses.reward``)."""

from __future__ import annotations

import math

import pytest
import torch

from prefkit.errors import DataError
from prefkit.losses import reward
from prefkit.losses.reward import ListScores, PairScores, RatingScores

NAN = float("nan")


def pairs(chosen: list[float], rejected: list[float]) -> PairScores:
    return PairScores(torch.tensor(chosen, dtype=torch.float64), torch.tensor(rejected, dtype=torch.float64))


def test_bradley_terry_golden() -> None:
    """chosen [2, 0, 1], rejected [1, 0, 3] → Δ = [1, 0, −2]; strength [1, 0, 0.5], margin_scale 1,
    center_coef η = 0.1.

    Δ − m = [0, 0, −2.5]; −log σ(·) = [ln 2, ln 2, ln(1 + e^2.5)] = [0.693147, 0.693147, 2.578889]
    η(r_w + r_l)² = 0.1·[9, 0, 16] = [0.9, 0, 1.6]
    L = [1.593147, 0.693147, 4.178889]
    """
    out = reward.bradley_terry(pairs([2.0, 0.0, 1.0], [1.0, 0.0, 3.0]), None,
                               strength=torch.tensor([1.0, 0.0, 0.5]), margin_scale=1.0, center_coef=0.1)
    assert out.losses.tolist() == pytest.approx([1.593147, 0.693147, 4.178889], abs=1e-6)
    assert out.chosen_rewards.tolist() == [2.0, 0.0, 1.0]
    assert out.rejected_rewards.tolist() == [1.0, 0.0, 3.0]


def test_bradley_terry_zero_margin_is_soft_bt_with_p_one() -> None:
    g = torch.Generator().manual_seed(0)
    pred = PairScores(torch.randn(16, generator=g), torch.randn(16, generator=g))
    bt = reward.bradley_terry(pred, None, strength=torch.rand(16, generator=g), margin_scale=0.0)
    torch.testing.assert_close(bt.losses, reward.soft_bradley_terry(pred, None, strength=torch.ones(16)).losses)
    torch.testing.assert_close(bt.losses, reward.soft_bradley_terry(pred, None).losses)


def test_soft_bradley_terry_golden() -> None:
    """Δ = [1, 0, −2]; p = strength [0.8, 0.3, 1.0]; the third pair is a tie → p = 0.5.

    0.8·ln(1+e^-1) + 0.2·ln(1+e)   = 0.8·0.313262 + 0.2·1.313262 = 0.513262
    Δ = 0: ln 2                                                    = 0.693147
    tie:  0.5·ln(1+e^2) + 0.5·ln(1+e^-2) = 0.5·(2.126928 + 0.126928) = 1.126928
    """
    out = reward.soft_bradley_terry(pairs([1.0, 0.0, 0.0], [0.0, 0.0, 2.0]), None,
                                    strength=torch.tensor([0.8, 0.3, 1.0]),
                                    ties=torch.tensor([False, False, True]))
    assert out.losses.tolist() == pytest.approx([0.513262, 0.693147, 1.126928], abs=1e-6)


def test_rao_kupper_golden() -> None:
    """θ = 2, η = ln 2.

    strict, Δ = 1: −log σ(1 − ln 2) = ln(1 + 2/e) = ln(1.735759) = 0.551445
    tie,    Δ = 0: P(tie) = (θ² − 1)/((1 + θ)(1 + θ)) = 3/9 → −ln(1/3) = 1.098612
    """
    out = reward.rao_kupper(pairs([1.0, 0.0], [0.0, 0.0]), None, ties=torch.tensor([False, True]), theta=2.0)
    assert out.losses.tolist() == pytest.approx([0.551445, math.log(3)], abs=1e-6)


def test_davidson_golden() -> None:
    """ν = 1. π_w = 4, π_l = 1, √(π_w π_l) = 2: P(w) = 4/7, P(tie) = 2/7; Δ = 0: P(w) = 1/3.

    L = [ln(7/4), ln(7/2), ln 3] = [0.559616, 1.252763, 1.098612]
    """
    out = reward.davidson(pairs([math.log(4), math.log(4), 0.0], [0.0, 0.0, 0.0]), None,
                          ties=torch.tensor([False, True, False]), nu=1.0)
    assert out.losses.tolist() == pytest.approx([0.559616, 1.252763, 1.098612], abs=1e-6)


@pytest.mark.parametrize("fn,param", [(reward.rao_kupper, {"theta": 1.7}), (reward.davidson, {"nu": 0.8})])
def test_tie_models_are_distributions(fn, param) -> None:
    """P(w ≻ l) + P(l ≻ w) + P(tie) = 1 for any score difference."""
    pred = pairs([2.0, -1.0, 0.3, 7.0], [0.0, 0.5, 0.3, -2.0])
    win = torch.exp(-fn(pred, None, **param).losses)
    lose = torch.exp(-fn(pred.swapped(), None, **param).losses)
    tie = torch.exp(-fn(pred, None, ties=torch.ones(4, dtype=torch.bool), **param).losses)
    torch.testing.assert_close(win + lose + tie, torch.ones(4, dtype=torch.float64))


@pytest.mark.parametrize("fn,name", [(reward.rao_kupper, "theta"), (reward.davidson, "nu")])
def test_tie_parameter_can_be_learned(fn, name) -> None:
    """A tensor tie parameter receives a gradient (the caller owns it, e.g. as an nn.Parameter)."""
    raw = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    value = 1 + torch.nn.functional.softplus(raw) if name == "theta" else torch.nn.functional.softplus(raw)
    out = fn(pairs([1.0, 0.0], [0.0, 0.0]), None, ties=torch.tensor([False, True]), **{name: value})
    out.losses.sum().backward()
    assert raw.grad is not None and torch.isfinite(raw.grad) and raw.grad != 0


def test_plackett_luce_golden_and_two_items_is_bradley_terry() -> None:
    """scores [1, 0, −1]: ln(1 + e^-1 + e^-2) + ln(1 + e^-1) = 0.407606 + 0.313262 = 0.720868.
    K = 2: −log σ(r_0 − r_1) = bradley_terry."""
    out = reward.plackett_luce(ListScores(torch.tensor([[1.0, 0.0, -1.0]])), None)
    assert out.losses.tolist() == pytest.approx([0.720868], abs=1e-6)
    assert out.chosen_rewards.tolist() == [1.0] and out.rejected_rewards.tolist() == [-0.5]
    s = torch.randn(6, 2, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(reward.plackett_luce(ListScores(s), None).losses,
                               reward.bradley_terry(PairScores(s[:, 0], s[:, 1]), None).losses)


def test_rm_regression_golden() -> None:
    """pred [1, 2, 3], ratings [1.5, 2, 0] → (pred − s)² = [0.25, 0, 9]; (B, 1) targets are squeezed.
    (B, A): mean over attributes, [[1, 2], [0, 0]] vs [[2, 2], [1, 3]] → [(1 + 0)/2, (1 + 9)/2] = [0.5, 5]."""
    pred = RatingScores(torch.tensor([1.0, 2.0, 3.0]))
    assert reward.rm_regression(pred, None, scores=torch.tensor([1.5, 2.0, 0.0])).losses.tolist() == [0.25, 0, 9]
    assert reward.rm_regression(pred, None, scores=torch.tensor([[1.5], [2.0], [0.0]])).losses.tolist() == [
        0.25, 0, 9]
    multi = RatingScores(torch.tensor([[1.0, 2.0], [0.0, 0.0]]))
    assert reward.rm_regression(multi, None, scores=torch.tensor([[2.0, 2.0], [1.0, 3.0]])).losses.tolist() == [
        0.5, 5.0]


def test_rm_multi_regression_golden_with_missing_attributes() -> None:
    """pred [[1, 2], [0, 0], [3, 1]], ratings [[2, NaN], [NaN, NaN], [1, 1]] (NaN = not rated).

    [(1−2)²/1, 0 (nothing rated), ((3−1)² + 0)/2] = [1, 0, 2]; gradients stay finite.
    """
    p = torch.tensor([[1.0, 2.0], [0.0, 0.0], [3.0, 1.0]], requires_grad=True)
    out = reward.rm_multi_regression(RatingScores(p), None,
                                     scores=torch.tensor([[2.0, NAN], [NAN, NAN], [1.0, 1.0]]))
    assert out.losses.tolist() == [1.0, 0.0, 2.0]
    out.losses.sum().backward()
    assert torch.isfinite(p.grad).all()
    assert p.grad.tolist() == [[-2.0, 0.0], [0.0, 0.0], [2.0, 0.0]]


def test_regression_needs_scores() -> None:
    with pytest.raises(ValueError, match="scores"):
        reward.rm_regression(RatingScores(torch.zeros(2)), None)
    with pytest.raises(DataError, match="rm_multi_regression"):
        reward.rm_regression(RatingScores(torch.zeros(2)), None, scores=torch.tensor([1.0, NAN]))


def test_missing_strength_is_no_margin_and_hard_label() -> None:
    """The collator writes NaN strength for pairs without one: BT uses no margin, soft BT uses p = 1."""
    pred = pairs([1.0, 2.0], [0.0, 0.0])
    strength = torch.tensor([NAN, 0.5], dtype=torch.float64)
    bt = reward.bradley_terry(pred, None, strength=strength, margin_scale=1.0)
    assert bt.losses.tolist() == pytest.approx([math.log1p(math.exp(-1.0)), math.log1p(math.exp(-1.5))])
    soft = reward.soft_bradley_terry(pred, None, strength=strength)
    assert soft.losses[0].item() == pytest.approx(math.log1p(math.exp(-1.0)))
    assert torch.isfinite(soft.losses).all()
