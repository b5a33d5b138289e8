"""Golden values and behaviour of the unpaired losses (``prefkit.losses.unpaired``)."""

from __future__ import annotations

import pytest
import torch

from prefkit.losses import unpaired
from prefkit.losses.types import UnpairedLogps


def batch(policy: list[float], reference: list[float], kl_policy: list[float] | None = None,
          kl_reference: list[float] | None = None) -> tuple[UnpairedLogps, UnpairedLogps]:
    tokens = torch.ones(len(policy), dtype=torch.long)
    kl_p = None if kl_policy is None else torch.tensor(kl_policy)
    kl_r = None if kl_reference is None else torch.tensor(kl_reference)
    return (UnpairedLogps(torch.tensor(policy), tokens, kl_p), UnpairedLogps(torch.tensor(reference), tokens, kl_r))


LABELS = torch.tensor([True, True, False, False])


def test_kto_golden() -> None:
    """log-ratios r = [1, −1, 0, −1]; labels [D, D, U, U]; β = 1, λ_D = 1, λ_U = 2.

    Mismatched log-ratios [1, 0, 1, 0] → z0 = max(0, mean) = 0.5.
    D, r = 1 : 1 − σ(1 − 0.5)        = σ(−0.5)   = 0.377541
    D, r = −1: 1 − σ(−1 − 0.5)       = σ(1.5)    = 0.817574
    U, r = 0 : 2 − 2σ(0.5 − 0)       = 2σ(−0.5)  = 0.755081
    U, r = −1: 2 − 2σ(0.5 + 1)       = 2σ(−1.5)  = 0.364851
    """
    policy, reference = batch([-1.0, -3.0, -2.0, -2.0], [-2.0, -2.0, -2.0, -1.0],
                              [-1.0, -2.0, -1.0, -2.0], [-2.0, -2.0, -2.0, -2.0])
    out = unpaired.kto(policy, reference, labels=LABELS, beta=1.0, undesirable_weight=2.0)
    assert out.losses.tolist() == pytest.approx([0.377541, 0.817574, 0.755081, 0.364851], abs=1e-6)
    assert out.metrics["kto/z0"].item() == pytest.approx(0.5)
    assert out.rewards.tolist() == pytest.approx([1.0, -1.0, 0.0, -1.0])
    assert out.chosen_rewards is None and out.rejected_rewards is None


def test_kto_z0_is_clamped_detached_and_shared() -> None:
    """Negative mean mismatched log-ratio → z0 = 0; no gradient reaches kl_logps (z0 is detached)."""
    kl_policy = torch.tensor([-3.0, -3.0, -3.0, -3.0], requires_grad=True)
    policy = UnpairedLogps(torch.tensor([-1.0, -3.0, -2.0, -2.0], requires_grad=True),
                           torch.ones(4), kl_policy)
    reference = UnpairedLogps(torch.tensor([-2.0, -2.0, -2.0, -1.0]), torch.ones(4), torch.full((4,), -2.0))
    out = unpaired.kto(policy, reference, labels=LABELS)
    assert out.metrics["kto/z0"].item() == 0.0
    out.losses.sum().backward()
    assert kl_policy.grad is None
    assert policy.logps.grad is not None


def test_kto_fallback_without_kl_logps() -> None:
    """No kl_logps: 'zero' uses z0 = 0; 'batch' uses max(0, mean of own log-ratios) = max(0, −0.25) = 0,
    and with log-ratios [1, 1, 1, 1] it is 1 (every desirable loss then equals σ(0) = 0.5)."""
    policy, reference = batch([-1.0, -3.0, -2.0, -2.0], [-2.0, -2.0, -2.0, -1.0])
    zero = unpaired.kto(policy, reference, labels=LABELS, beta=1.0)
    assert zero.metrics["kto/z0"].item() == 0.0
    assert zero.losses[0].item() == pytest.approx(torch.sigmoid(torch.tensor(-1.0)).item())
    policy, reference = batch([-1.0, -1.0, -1.0, -1.0], [-2.0, -2.0, -2.0, -2.0])
    out = unpaired.kto(policy, reference, labels=LABELS, beta=1.0, z0_fallback="batch")
    assert out.metrics["kto/z0"].item() == pytest.approx(1.0)
    assert out.losses.tolist() == pytest.approx([0.5, 0.5, 0.5, 0.5])


def test_bco_golden() -> None:
    """β = 0.5, log-ratios [2, −2, 0, 4] → rewards [1, −1, 0, 2]; labels [D, U, D, U]; δ = 1.

    shifted r − δ = [0, −2, −1, 1]
    D: −log σ(0)  = ln 2          = 0.693147
    U: −log σ(2)  = ln(1 + e^-2)  = 0.126928
    D: −log σ(−1) = ln(1 + e)     = 1.313262
    U: −log σ(−1) = 1.313262
    """
    policy, reference = batch([2.0, -2.0, 0.0, 4.0], [0.0, 0.0, 0.0, 0.0])
    labels = torch.tensor([True, False, True, False])
    out = unpaired.bco(policy, reference, labels=labels, beta=0.5, delta=1.0)
    assert out.losses.tolist() == pytest.approx([0.693147, 0.126928, 1.313262, 1.313262], abs=1e-6)
    assert out.metrics["bco/rewards_mean"].item() == pytest.approx(0.5)


def test_unpaired_losses_need_labels() -> None:
    policy, reference = batch([-1.0], [-1.0])
    with pytest.raises(ValueError, match="labels"):
        unpaired.kto(policy, reference, labels=None)
