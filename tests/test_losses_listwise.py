"""Golden values and identities for the listwise losses (``prefkit.losses.listwise``)."""

from __future__ import annotations

import math

import pytest
import torch

from prefkit.losses import listwise, pairwise
from prefkit.losses.types import ListLogps, PairLogps


def lists(policy: list[list[float]], reference: list[list[float]] | None = None,
          tokens: list[list[int]] | None = None) -> tuple[ListLogps, ListLogps]:
    p = torch.tensor(policy, dtype=torch.float64)
    r = torch.zeros_like(p) if reference is None else torch.tensor(reference, dtype=torch.float64)
    t = torch.ones_like(p, dtype=torch.long) if tokens is None else torch.tensor(tokens)
    return ListLogps(p, t), ListLogps(r, t)


def as_pairs(policy: ListLogps, reference: ListLogps) -> tuple[PairLogps, PairLogps]:
    """The K = 2 lists as pairs (item 0 chosen, item 1 rejected)."""
    def pair(x: ListLogps) -> PairLogps:
        return PairLogps(x.logps[:, 0], x.logps[:, 1], x.tokens[:, 0], x.tokens[:, 1])
    return pair(policy), pair(reference)


def random_lists(b: int, k: int, seed: int = 0) -> tuple[ListLogps, ListLogps]:
    g = torch.Generator().manual_seed(seed)
    p = -10 * torch.rand(b, k, generator=g, dtype=torch.float64)
    r = -10 * torch.rand(b, k, generator=g, dtype=torch.float64)
    t = torch.randint(1, 20, (b, k), generator=g)
    return ListLogps(p, t), ListLogps(r, t)


def test_pl_dpo_golden() -> None:
    """policy [-1, -2, -3], reference [-2, -2, -2], β = 1 → s = [1, 0, -1].

    L = [logsumexp(1, 0, -1) − 1] + [logsumexp(0, -1) − 0]
      = ln(1 + e^-1 + e^-2) + ln(1 + e^-1)
      = ln(1.503215) + ln(1.367879) = 0.407606 + 0.313262 = 0.720868
    rewards = s; chosen_rewards = 1; rejected_rewards = mean(0, -1) = -0.5.
    """
    policy, reference = lists([[-1.0, -2.0, -3.0]], [[-2.0, -2.0, -2.0]])
    out = listwise.pl_dpo(policy, reference, beta=1.0)
    assert out.losses.tolist() == pytest.approx([0.720868], abs=1e-6)
    assert out.rewards.tolist() == [[1.0, 0.0, -1.0]]
    assert out.chosen_rewards.tolist() == [1.0]
    assert out.rejected_rewards.tolist() == [-0.5]


def test_pl_dpo_with_two_items_is_dpo() -> None:
    """K = 2: −log σ(s_0 − s_1), which is pairwise.dpo with the same β."""
    policy, reference = random_lists(8, 2)
    pl = listwise.pl_dpo(policy, reference, beta=0.3)
    dpo = pairwise.dpo(*as_pairs(policy, reference), beta=0.3)
    torch.testing.assert_close(pl.losses, dpo.losses)
    torch.testing.assert_close(pl.chosen_rewards, dpo.chosen_rewards)
    torch.testing.assert_close(pl.rejected_rewards, dpo.rejected_rewards)


def test_lipo_lambda_golden() -> None:
    """s = [1, 0, -1] (β = 1), labels ψ = [2, 1, 0] → gains G = 2^ψ − 1 = [3, 1, 0].

    Ranks under s: τ = [1, 2, 3]; 1/D(τ) = 1/log2(1 + τ) = [1, 0.630930, 0.5].
    (0,1): Δ = |3−1|·|1−0.630930| = 0.738140, ℓ = ln(1+e^-1) = 0.313262 → 0.231232
    (0,2): Δ = |3−0|·|1−0.5|      = 1.5,      ℓ = ln(1+e^-2) = 0.126928 → 0.190392
    (1,2): Δ = |1−0|·|0.630930−0.5| = 0.130930, ℓ = 0.313262           → 0.041016
    L = 0.462640
    """
    policy, reference = lists([[-1.0, -2.0, -3.0]], [[-2.0, -2.0, -2.0]])
    out = listwise.lipo(policy, reference, scores=torch.tensor([[2.0, 1.0, 0.0]]), beta=1.0)
    assert out.losses.tolist() == pytest.approx([0.462638], abs=1e-5)


def test_lipo_hinge_golden_and_label_ties() -> None:
    """Hinge, no weights, δ = 1.5, s = [1, 0, -1]: pair differences 1, 2, 1.

    All ordered pairs (ψ = [2, 1, 0]): max(0, 1.5−1) + max(0, 1.5−2) + max(0, 1.5−1) = 0.5 + 0 + 0.5 = 1.
    With ψ = [1, 1, 0] the pair (0, 1) is a tie and is skipped: 0 + 0.5 = 0.5.
    """
    policy, reference = lists([[-1.0, -2.0, -3.0]], [[-2.0, -2.0, -2.0]])
    kw = {"beta": 1.0, "form": "hinge", "weighting": "none", "delta": 1.5}
    out = listwise.lipo(policy, reference, scores=torch.tensor([[2.0, 1.0, 0.0]]), **kw)
    assert out.losses.tolist() == pytest.approx([1.0])
    out = listwise.lipo(policy, reference, scores=torch.tensor([[1.0, 1.0, 0.0]]), **kw)
    assert out.losses.tolist() == pytest.approx([0.5])


def test_lipo_without_scores_uses_rank_labels() -> None:
    policy, reference = random_lists(5, 4)
    ranks = torch.tensor([[3.0, 2.0, 1.0, 0.0]]).expand(5, 4)
    torch.testing.assert_close(listwise.lipo(policy, reference).losses,
                               listwise.lipo(policy, reference, scores=ranks).losses)


def test_lipo_logistic_with_two_items_is_dpo() -> None:
    """K = 2, unweighted logistic: log(1 + e^−(s_0 − s_1)) = −log σ(β·h) = DPO."""
    policy, reference = random_lists(8, 2, seed=1)
    lipo = listwise.lipo(policy, reference, beta=0.2, form="logistic", weighting="none")
    dpo = pairwise.dpo(*as_pairs(policy, reference), beta=0.2)
    torch.testing.assert_close(lipo.losses, dpo.losses)


def test_lipo_hinge_with_two_items_is_slic() -> None:
    """K = 2, unweighted hinge: max(0, δ − β·h).

    With β = 1 and a zero reference, h = log π(y_w) − log π(y_l), so this is pairwise.slic(δ, λ = 0)
    (SLiC-HF's calibration loss). With a reference it is SLiC on log-ratios: δ = 1 gives
    pairwise.rso_hinge (max(0, 1 − β·h)).
    """
    policy, reference = random_lists(8, 2, seed=2)
    zero = ListLogps(torch.zeros_like(policy.logps), policy.tokens)
    lipo = listwise.lipo(policy, zero, beta=1.0, form="hinge", weighting="none", delta=2.5)
    slic = pairwise.slic(as_pairs(policy, zero)[0], None, delta=2.5, lam=0.0)
    torch.testing.assert_close(lipo.losses, slic.losses)
    lipo = listwise.lipo(policy, reference, beta=0.3, form="hinge", weighting="none", delta=1.0)
    rso = pairwise.rso_hinge(*as_pairs(policy, reference), beta=0.3)
    torch.testing.assert_close(lipo.losses, rso.losses)


def test_pro_golden_constant_temperature() -> None:
    """logps [-2, -6, -3], tokens [2, 3, 1] → r = [-1, -2, -3]; T = 1, w = 0.1.

    ranking: [logsumexp(-1,-2,-3) + 1] + [logsumexp(-2,-3) + 2] = ln(1+e^-1+e^-2) + ln(1+e^-1)
           = 0.407606 + 0.313262 = 0.720868
    SFT: −r_0 = 1 → L = 0.720868 + 0.1·1 = 0.820868
    """
    policy, _ = lists([[-2.0, -6.0, -3.0]], tokens=[[2, 3, 1]])
    out = listwise.pro(policy, None, sft_weight=0.1)
    assert out.losses.tolist() == pytest.approx([0.820868], abs=1e-6)
    assert out.rewards.tolist() == [[-1.0, -2.0, -3.0]]


def test_pro_golden_dynamic_temperature() -> None:
    """r = [-1, -2, -3], reward scores ψ = [3, 1, 0], w = 0.1.

    k = 0: 1/T_0^1 = 3−1 = 2, 1/T_0^2 = 3−0 = 3, 1/T_0^0 = max(2, 3) = 3
           logits [−1·3, −2·2, −3·3] = [−3, −4, −9]; term = ln(1 + e^-1 + e^-6) = 0.315073
    k = 1: 1/T_1^2 = 1−0 = 1, 1/T_1^1 = 1; logits [−2, −3]; term = ln(1 + e^-1) = 0.313262
    L = 0.628335 + 0.1·1 = 0.728335
    """
    policy, _ = lists([[-2.0, -6.0, -3.0]], tokens=[[2, 3, 1]])
    out = listwise.pro(policy, None, scores=torch.tensor([[3.0, 1.0, 0.0]]), sft_weight=0.1)
    assert out.losses.tolist() == pytest.approx([0.728334], abs=1e-5)
    off = listwise.pro(policy, None, scores=torch.tensor([[3.0, 1.0, 0.0]]), sft_weight=0.1,
                       dynamic_temperature=False)
    assert off.losses.tolist() == pytest.approx([0.820868], abs=1e-6)


def test_listnet_golden() -> None:
    """s = [1, 0, -1] (β = 1), labels ψ = [1, 0, 0].

    P_ψ = [e, 1, 1] / (e + 2) = [0.576117, 0.211942, 0.211942]
    log P_s = s − ln(e + 1 + e^-1) = [−0.407606, −1.407606, −2.407606]
    L = 0.576117·0.407606 + 0.211942·1.407606 + 0.211942·2.407606 = 1.043431
    """
    policy, reference = lists([[-1.0, -2.0, -3.0]], [[-2.0, -2.0, -2.0]])
    out = listwise.listnet(policy, reference, scores=torch.tensor([[1.0, 0.0, 0.0]]), beta=1.0)
    assert out.losses.tolist() == pytest.approx([1.043431], abs=1e-6)


def test_list_rewards_convention() -> None:
    """chosen_rewards = item 0's reward, rejected_rewards = the mean of the other items; detached."""
    policy, reference = random_lists(3, 4, seed=3)
    policy = ListLogps(policy.logps.requires_grad_(), policy.tokens)
    for fn in (listwise.pl_dpo, listwise.lipo, listwise.listnet, listwise.pro):
        out = fn(policy, reference)
        assert not out.rewards.requires_grad
        torch.testing.assert_close(out.chosen_rewards, out.rewards[:, 0])
        torch.testing.assert_close(out.rejected_rewards, out.rewards[:, 1:].mean(-1))


def test_plackett_luce_nll_matches_product_of_choices() -> None:
    """−log Π_k softmax(s_k..s_{K−1})[0], computed the long way."""
    s = torch.tensor([[0.3, -1.2, 2.0, 0.5]], dtype=torch.float64)
    expected = -sum(torch.log_softmax(s[0, k:], -1)[0] for k in range(4))
    assert listwise.plackett_luce_nll(s).item() == pytest.approx(expected.item())
    assert math.isclose(listwise.plackett_luce_nll(s[:, :1]).item(), 0.0)


@pytest.mark.parametrize("fn", [listwise.lipo, listwise.listnet, listwise.pro])
def test_rows_without_scores_fall_back(fn) -> None:
    """The collator fills lists without scores with NaN: those rows use rank labels (or PRO's constant
    temperature), other rows their scores; values and gradients stay finite."""
    policy, reference = random_lists(2, 3, seed=4)
    policy = ListLogps(policy.logps.requires_grad_(), policy.tokens)
    nan = float("nan")
    mixed = fn(policy, reference, scores=torch.tensor([[5.0, 2.0, 1.0], [nan, nan, nan]]))
    scored = fn(policy, reference, scores=torch.tensor([[5.0, 2.0, 1.0], [5.0, 2.0, 1.0]]))
    unscored = fn(policy, reference)
    assert mixed.losses[0].item() == pytest.approx(scored.losses[0].item())
    assert mixed.losses[1].item() == pytest.approx(unscored.losses[1].item())
    mixed.losses.sum().backward()
    assert torch.isfinite(policy.logps.grad).all()
