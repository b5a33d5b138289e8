"""Losses of the online algorithms (``prefkit.losses.online``): hand-worked golden values and gradients.

``ipo_soft`` is a registry loss (also covered by test_losses_contract.py); ``sppo_sample_loss``,
``nash_md_pg`` and ``xpo_bonus`` are pure helpers of the online objectives.

Shared pair inputs (B = 3), as in test_losses_pairwise.py:

    policy    chosen [-1.0, -2.0, -4.0]   rejected [-2.0, -1.0, -4.0]
    reference chosen [-1.5, -1.5, -3.0]   rejected [-1.5, -1.5, -5.0]
    h = lr_w − lr_l = [1.0, -1.0, -2.0]

Shared single-sample inputs (B = 3):

    policy    logps [-1.0, -2.0, -0.5]
    reference logps [-1.5, -1.0, -0.5]
    logratio  ℓ     [ 0.5, -1.0,  0.0]
    scores    P     [ 0.9,  0.1,  0.5]
"""

from __future__ import annotations

import pytest
import torch

from prefkit.errors import DataError
from prefkit.losses import LOSSES
from prefkit.losses.online import ipo_soft, nash_md_pg, sppo_sample_loss, xpo_bonus
from prefkit.losses.types import PairLogps, UnpairedLogps


def pair(c, r, dtype=torch.float64) -> PairLogps:
    return PairLogps(torch.tensor(c, dtype=dtype), torch.tensor(r, dtype=dtype), torch.ones(3), torch.ones(3))


POLICY = pair([-1.0, -2.0, -4.0], [-2.0, -1.0, -4.0])
REFERENCE = pair([-1.5, -1.5, -3.0], [-1.5, -1.5, -5.0])


def single(values, grad=False) -> UnpairedLogps:
    return UnpairedLogps(torch.tensor(values, dtype=torch.float64, requires_grad=grad), torch.ones(3))


def close(actual: torch.Tensor, expected: list[float], tol: float = 1e-9) -> None:
    assert actual.shape == (len(expected),)
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=actual.dtype), rtol=tol, atol=tol)


def test_ipo_soft_golden():
    """τ = 0.5, p = [1.0, 0.5, 0.3]: targets (p − ½)/τ = [1.0, 0.0, −0.4];
    losses (h − target)² = [(1 − 1)², (−1 − 0)², (−2 + 0.4)²] = [0, 1, 2.56];
    rewards τ·lr: chosen [0.25, −0.25, −0.5], rejected [−0.25, 0.25, 0.5]."""
    out = ipo_soft(POLICY, REFERENCE, strength=torch.tensor([1.0, 0.5, 0.3], dtype=torch.float64), beta=0.5)
    close(out.losses, [0.0, 1.0, 2.56])
    close(out.chosen_rewards, [0.25, -0.25, -0.5])
    close(out.rejected_rewards, [-0.25, 0.25, 0.5])


def test_ipo_soft_at_p_one_is_ipo_and_is_symmetric():
    """p = 1 gives the registry's IPO exactly; swapping the pair with p → 1 − p leaves the loss unchanged."""
    p = torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64)
    torch.testing.assert_close(ipo_soft(POLICY, REFERENCE, strength=p, beta=0.2).losses,
                               LOSSES["ipo"].fn(POLICY, REFERENCE, beta=0.2).losses)
    q = torch.tensor([0.8, 0.4, 0.1], dtype=torch.float64)
    torch.testing.assert_close(ipo_soft(POLICY, REFERENCE, strength=q).losses,
                               ipo_soft(POLICY.swapped(), REFERENCE.swapped(), strength=1 - q).losses)


def test_ipo_soft_rejects_bad_probabilities():
    with pytest.raises(DataError, match=r"strength in \[0, 1\]"):
        ipo_soft(POLICY, REFERENCE, strength=torch.tensor([1.5, 0.5, 0.5], dtype=torch.float64))
    with pytest.raises(DataError, match="needs a strength"):
        ipo_soft(POLICY, REFERENCE)


def test_sppo_sample_loss_golden():
    """η = 2: targets η(P − ½) = [0.8, −0.8, 0.0]; losses (ℓ − target)² = [(0.5 − 0.8)², (−1 + 0.8)², 0²]
    = [0.09, 0.04, 0]; gradient w.r.t. the policy log-prob 2(ℓ − target) = [−0.6, −0.4, 0]."""
    policy = single([-1.0, -2.0, -0.5], grad=True)
    out = sppo_sample_loss(policy, single([-1.5, -1.0, -0.5]), scores=torch.tensor([0.9, 0.1, 0.5], dtype=torch.float64), eta=2.0)
    close(out.losses, [0.09, 0.04, 0.0])
    close(out.rewards, [0.5, -1.0, 0.0])
    close(out.metrics["target"], [0.8, -0.8, 0.0])
    out.losses.sum().backward()
    close(policy.logps.grad, [-0.6, -0.4, 0.0])


def test_nash_md_pg_golden_value_and_gradient():
    """τ = 0.5: losses −(P − ½)·logπ + τ·ℓ·logπ = [−0.4·(−1) + 0.5·0.5·(−1), 0.4·(−2) + 0.5·(−1)·(−2), 0]
    = [0.15, 0.2, 0.0]; gradient (ℓ is stop-gradient) −(P − ½) + τ·ℓ = [−0.15, −0.1, 0.0]: a sample
    that wins (P = 0.9) is pushed up unless its log-ratio already pays for it (τ·ℓ = 0.25 < 0.4)."""
    policy = single([-1.0, -2.0, -0.5], grad=True)
    out = nash_md_pg(policy, single([-1.5, -1.0, -0.5]), scores=torch.tensor([0.9, 0.1, 0.5], dtype=torch.float64), beta=0.5)
    close(out.losses, [0.15, 0.2, -0.0])
    close(out.rewards, [0.25, -0.5, 0.0])
    out.losses.sum().backward()
    close(policy.logps.grad, [-0.15, -0.1, 0.0])


def test_nash_md_pg_expected_gradient_is_the_regularised_game_gradient():
    """On a softmax over 3 actions with exact expectations, E_{y∼π}[∇ loss] = −∇_z(E_π[P(y ≻ q)] − τ·KL(π‖π_ref))
    for a fixed opponent distribution q (hand identity: the score-function trick)."""
    z = torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64, requires_grad=True)
    ref = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    q = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
    pm = torch.tensor([[0.5, 0.9, 0.1], [0.1, 0.5, 0.9], [0.9, 0.1, 0.5]], dtype=torch.float64)
    tau = 0.3
    logp = z.log_softmax(0)
    pi = logp.exp().detach()
    out = nash_md_pg(UnpairedLogps(logp, torch.ones(3)), UnpairedLogps(ref.log(), torch.ones(3)),
                     scores=pm @ q, beta=tau)
    (grad_surrogate,) = torch.autograd.grad((pi * out.losses).sum(), z)
    p = z.softmax(0)
    objective = p @ (pm @ q) - tau * (p * (p.log() - ref.log())).sum()
    (grad_true,) = torch.autograd.grad(-objective, z)
    torch.testing.assert_close(grad_surrogate, grad_true)


def test_xpo_bonus_golden():
    """α = 0.1: α·log π(ỹ) = [−0.1, −0.2, −0.05]; its gradient α lowers log π(ỹ) when minimised."""
    logps = torch.tensor([-1.0, -2.0, -0.5], dtype=torch.float64, requires_grad=True)
    term = xpo_bonus(logps, alpha=0.1)
    close(term, [-0.1, -0.2, -0.05])
    term.sum().backward()
    close(logps.grad, [0.1, 0.1, 0.1])
