"""Pairwise losses: hand-worked golden values, identities between losses, transforms.

The registry-wide contract (shapes, dtypes, finite values and gradients at ±1e4, detached rewards,
swapping, reference-free losses ignoring the reference, fp64 gradcheck) is in test_losses_contract.py;
parameter ranges are the registry's (test_losses_registry.py).

Shared golden inputs (B = 3), used unless a test says otherwise:

    policy    chosen   [-1.0, -2.0, -4.0]   rejected [-2.0, -1.0, -4.0]
    reference chosen   [-1.5, -1.5, -3.0]   rejected [-1.5, -1.5, -5.0]
    tokens    chosen   [1, 2, 4]            rejected [2, 1, 2]

    lr_w = policy − reference (chosen)   = [ 0.5, -0.5, -1.0]
    lr_l = policy − reference (rejected) = [-0.5,  0.5,  1.0]
    h    = lr_w − lr_l                   = [ 1.0, -1.0, -2.0]

Notation in docstrings: ℓ(z) = −log σ(z) = log(1 + e^(−z)); ℓ(1) = 0.313262, ℓ(−1) = 1.313262,
ℓ(0) = log 2 = 0.693147, ℓ(2) = 0.126928, ℓ(−2) = 2.126928, ℓ(0.5) = 0.474077, ℓ(−0.5) = 0.974077.
Expected values are recomputed with ``math`` from the same hand formulas.
"""

from __future__ import annotations

import math

import pytest
import torch

from prefkit.errors import ConfigError, DataError
from prefkit.losses import LOSSES, pairwise
from prefkit.losses.registry import reference_free_pair_losses
from prefkit.losses.transforms import ld_dpo, wpo_weights
from prefkit.losses.types import PairLogps

PAIRWISE = sorted(name for name, spec in LOSSES.items() if spec.fn.__module__ == pairwise.__name__)


def ell(z: float) -> float:
    """−log σ(z)."""
    return math.log1p(math.exp(-z))


def sig(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


def pair(c, r, ct=(1, 2, 4), rt=(2, 1, 2), dtype=torch.float64) -> PairLogps:
    return PairLogps(torch.tensor(c, dtype=dtype), torch.tensor(r, dtype=dtype),
                     torch.tensor(ct), torch.tensor(rt))


POLICY = pair([-1.0, -2.0, -4.0], [-2.0, -1.0, -4.0])
REFERENCE = pair([-1.5, -1.5, -3.0], [-1.5, -1.5, -5.0])
LR_W, LR_L, H = [0.5, -0.5, -1.0], [-0.5, 0.5, 1.0], [1.0, -1.0, -2.0]


def close(actual: torch.Tensor, expected: list[float], tol: float = 1e-9) -> None:
    assert actual.shape == (len(expected),)
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=actual.dtype), rtol=tol, atol=tol)


# --- golden values ---------------------------------------------------------------------------------


def test_dpo_golden():
    """β = 0.5: β·h = [0.5, -0.5, -1]; loss = ℓ(β·h) = [0.474077, 0.974077, 1.313262].

    Rewards β·lr: chosen [0.25, -0.25, -0.5], rejected [-0.25, 0.25, 0.5].
    """
    out = pairwise.dpo(POLICY, REFERENCE, beta=0.5)
    close(out.losses, [ell(0.5), ell(-0.5), ell(-1.0)])
    close(out.losses, [0.474077, 0.974077, 1.313262], tol=1e-6)
    close(out.chosen_rewards, [0.25, -0.25, -0.5])
    close(out.rejected_rewards, [-0.25, 0.25, 0.5])


def test_cdpo_golden():
    """β = 1, ε = 0.25: loss = 0.75·ℓ(h) + 0.25·ℓ(−h).

    h = 1: 0.75·0.313262 + 0.25·1.313262 = 0.563262; h = −1: 0.75·1.313262 + 0.25·0.313262 = 1.063262;
    h = −2: 0.75·2.126928 + 0.25·0.126928 = 1.626928.
    """
    out = pairwise.dpo(POLICY, REFERENCE, beta=1.0, label_smoothing=0.25)
    close(out.losses, [0.75 * ell(h) + 0.25 * ell(-h) for h in H])
    close(out.losses, [0.563262, 1.063262, 1.626928], tol=1e-6)


def test_robust_dpo_golden():
    """β = 1, ε = 0.25: loss = (0.75·ℓ(h) − 0.25·ℓ(−h)) / 0.5.

    h = 1: (0.234946 − 0.328315)/0.5 = −0.186738; h = −1: (0.984946 − 0.078315)/0.5 = 1.813262;
    h = −2: (1.595196 − 0.031732)/0.5 = 3.126928.
    """
    out = pairwise.robust_dpo(POLICY, REFERENCE, beta=1.0, label_smoothing=0.25)
    close(out.losses, [(0.75 * ell(h) - 0.25 * ell(-h)) / 0.5 for h in H])
    close(out.losses, [-0.186738, 1.813262, 3.126928], tol=1e-6)


def test_dpo_soft_golden():
    """β = 1, p = [1, 0.5, 0]: loss = p·ℓ(h) + (1 − p)·ℓ(−h).

    [ℓ(1), 0.5·ℓ(−1) + 0.5·ℓ(1), ℓ(2)] = [0.313262, 0.813262, 0.126928].
    """
    p = torch.tensor([1.0, 0.5, 0.0], dtype=torch.float64)
    out = pairwise.dpo_soft(POLICY, REFERENCE, strength=p, beta=1.0)
    close(out.losses, [ell(1.0), 0.5 * ell(-1.0) + 0.5 * ell(1.0), ell(2.0)])
    close(out.losses, [0.313262, 0.813262, 0.126928], tol=1e-6)


def test_ln_dpo_golden():
    """β = 1: lr_w/|y_w| = [0.5/1, -0.5/2, -1/4] = [0.5, -0.25, -0.25];
    lr_l/|y_l| = [-0.5/2, 0.5/1, 1/2] = [-0.25, 0.5, 0.5]; difference [0.75, -0.75, -0.75];
    loss = [ℓ(0.75), ℓ(−0.75), ℓ(−0.75)].
    """
    out = pairwise.ln_dpo(POLICY, REFERENCE, beta=1.0)
    close(out.losses, [ell(0.75), ell(-0.75), ell(-0.75)])
    close(out.chosen_rewards, [0.5, -0.25, -0.25])
    close(out.rejected_rewards, [-0.25, 0.5, 0.5])


def test_ipo_golden():
    """τ = 0.25: target 1/(2τ) = 2; loss = (h − 2)² = [(−1)², (−3)², (−4)²] = [1, 9, 16]."""
    out = pairwise.ipo(POLICY, REFERENCE, beta=0.25)
    close(out.losses, [1.0, 9.0, 16.0])


def test_rdpo_golden():
    """β = 1, α = 0.5: α·(|y_w| − |y_l|) = 0.5·[−1, 1, 2] = [−0.5, 0.5, 1];
    h + that = [0.5, −0.5, −1]; loss = [ℓ(0.5), ℓ(−0.5), ℓ(−1)] = [0.474077, 0.974077, 1.313262].
    """
    out = pairwise.rdpo(POLICY, REFERENCE, beta=1.0, alpha=0.5)
    close(out.losses, [ell(0.5), ell(-0.5), ell(-1.0)])
    close(out.metrics["length_term"], [-0.5, 0.5, 1.0])


def test_dpop_golden():
    """β = 1, λ = 2: penalty max(0, −lr_w) = [0, 0.5, 1]; h − 2·penalty = [1, −2, −4];
    loss = [ℓ(1), ℓ(−2), ℓ(−4)] = [0.313262, 2.126928, 4.018150].
    """
    out = pairwise.dpop(POLICY, REFERENCE, beta=1.0, lam=2.0)
    close(out.losses, [ell(1.0), ell(-2.0), ell(-4.0)])
    close(out.losses, [0.313262, 2.126928, 4.018150], tol=1e-6)
    close(out.metrics["penalty"], [0.0, 0.5, 1.0])


def test_odpo_golden():
    """β = 1, α = 1. linear, s = [0, 1, 0.5]: h − s = [1, −2, −2.5] → [ℓ(1), ℓ(−2), ℓ(−2.5)].
    log, s = [1, e, 1]: Δ = log s = [0, 1, 0]; h − Δ = [1, −2, −2] → [ℓ(1), ℓ(−2), ℓ(−2)].
    """
    s = torch.tensor([0.0, 1.0, 0.5], dtype=torch.float64)
    out = pairwise.odpo(POLICY, REFERENCE, strength=s, beta=1.0, alpha=1.0)
    close(out.losses, [ell(1.0), ell(-2.0), ell(-2.5)])
    s = torch.tensor([1.0, math.e, 1.0], dtype=torch.float64)
    out = pairwise.odpo(POLICY, REFERENCE, strength=s, beta=1.0, alpha=1.0, offset="log")
    close(out.losses, [ell(1.0), ell(-2.0), ell(-2.0)])


def test_fdpo_golden():
    """β = 1, lr_w = [0.5, −0.5, −1], lr_l = [−0.5, 0.5, 1].

    forward KL, f′(u) = −1/u: difference e^(−lr_l) − e^(−lr_w) = [e^0.5 − e^−0.5, e^−0.5 − e^0.5, e^−1 − e]
        = [1.042190, −1.042190, −2.350402].
    JS, f′(u) = log(2u/(1+u)) = log 2 + log σ(lr): difference log σ(lr_w) − log σ(lr_l); since
        lr_l = −lr_w and log σ(x) − log σ(−x) = x, that is [0.5, −0.5, −1].
    α = 0.5, f′(u) = (1 − u^−0.5)/0.5: difference 2·(e^(−lr_l/2) − e^(−lr_w/2)) = ±4·sinh(0.25),
        4·sinh(0.5) = [1.010449, −1.010449, −2.084381].
    loss = ℓ(difference).
    """
    out = pairwise.fdpo(POLICY, REFERENCE, beta=1.0, divergence="forward_kl")
    diffs = [math.exp(-lo) - math.exp(-w) for w, lo in zip(LR_W, LR_L, strict=True)]
    close(out.losses, [ell(d) for d in diffs])
    assert diffs[0] == pytest.approx(1.042190, abs=1e-6)
    out = pairwise.fdpo(POLICY, REFERENCE, beta=1.0, divergence="js")
    close(out.losses, [ell(0.5), ell(-0.5), ell(-1.0)])
    out = pairwise.fdpo(POLICY, REFERENCE, beta=1.0, divergence="alpha", alpha=0.5)
    diffs = [2 * (math.exp(-lo / 2) - math.exp(-w / 2)) for w, lo in zip(LR_W, LR_L, strict=True)]
    assert diffs == pytest.approx([1.010449, -1.010449, -2.084381], abs=1e-6)
    close(out.losses, [ell(d) for d in diffs])


def test_rpo_golden():
    """β = 1, α = 1: ℓ(h) + NLL_w/|y_w|; NLL per token = [1/1, 2/2, 4/4] = [1, 1, 1];
    loss = [1.313262, 2.313262, 3.126928].
    """
    out = pairwise.rpo(POLICY, REFERENCE, beta=1.0, alpha=1.0)
    close(out.losses, [ell(h) + 1.0 for h in H])
    close(out.metrics["nll"], [1.0, 1.0, 1.0])


def test_rso_hinge_golden():
    """β = 0.5: max(0, 1 − 0.5·h) = [0.5, 1.5, 2.0]."""
    close(pairwise.rso_hinge(POLICY, REFERENCE, beta=0.5).losses, [0.5, 1.5, 2.0])


def test_exo_golden():
    """β = 1, ε = 0.1: q_w = σ(h), q_l = σ(−h); loss = q_w·log(q_w/0.9) + q_l·log(q_l/0.1).

    h = 1: q = (0.731059, 0.268941): 0.731059·log(0.812288) + 0.268941·log(2.689414)
         = −0.151988 + 0.266070 = 0.114082.
    """
    out = pairwise.exo(POLICY, REFERENCE, beta=1.0, label_smoothing=0.1)
    expected = [sig(h) * math.log(sig(h) / 0.9) + sig(-h) * math.log(sig(-h) / 0.1) for h in H]
    close(out.losses, expected)
    assert expected[0] == pytest.approx(0.114082, abs=1e-6)


def test_nca_golden():
    """β = 1: loss = ℓ(lr_w) + ½·ℓ(−lr_w) + ½·ℓ(−lr_l).

    pair 0: ℓ(0.5) + ½ℓ(−0.5) + ½ℓ(0.5) = 0.474077 + 0.487038 + 0.237038 = 1.198154.
    """
    out = pairwise.nca(POLICY, REFERENCE, beta=1.0)
    expected = [ell(w) + 0.5 * ell(-w) + 0.5 * ell(-lo) for w, lo in zip(LR_W, LR_L, strict=True)]
    close(out.losses, expected)
    assert expected[0] == pytest.approx(1.198154, abs=1e-6)


def test_bco_pair_golden():
    """β = 1, δ = 0.5: loss = ℓ(lr_w − δ) + ℓ(δ − lr_l).

    pair 0: ℓ(0) + ℓ(1) = 0.693147 + 0.313262 = 1.006409; pair 1: ℓ(−1) + ℓ(0) = 2.006409;
    pair 2: ℓ(−1.5) + ℓ(−0.5) = 1.701413 + 0.974077 = 2.675490.
    """
    out = pairwise.bco_pair(POLICY, REFERENCE, beta=1.0, delta=0.5)
    close(out.losses, [ell(w - 0.5) + ell(0.5 - lo) for w, lo in zip(LR_W, LR_L, strict=True)])
    close(out.losses, [1.006409, 2.006409, 2.675490], tol=1e-6)


def test_sppo_golden():
    """β = 0.5 (η = 2, targets ±1): (lr_w − 1)² + (lr_l + 1)²
    = [0.25 + 0.25, 2.25 + 2.25, 4 + 4] = [0.5, 4.5, 8].
    """
    close(pairwise.sppo(POLICY, REFERENCE, beta=0.5).losses, [0.5, 4.5, 8.0])


def test_apo_golden():
    """β = 1. zero: −σ(lr_w) + σ(lr_l) = [−0.622459 + 0.377541, −0.377541 + 0.622459, −0.268941 + 0.731059]
    = [−0.244919, 0.244919, 0.462117].
    down: σ(lr_w) − σ(h) = [0.622459 − 0.731059, 0.377541 − 0.268941, 0.268941 − 0.119203]
    = [−0.108600, 0.108600, 0.149738].
    """
    out = pairwise.apo_zero(POLICY, REFERENCE, beta=1.0)
    close(out.losses, [-sig(w) + sig(lo) for w, lo in zip(LR_W, LR_L, strict=True)])
    close(out.losses, [-0.244919, 0.244919, 0.462117], tol=1e-6)
    out = pairwise.apo_down(POLICY, REFERENCE, beta=1.0)
    close(out.losses, [sig(w) - sig(h) for w, h in zip(LR_W, H, strict=True)])
    close(out.losses, [-0.108600, 0.108600, 0.149738], tol=1e-6)


def test_discopop_golden():
    """β = 1, τ = 0.5, ρ = h: loss = σ(−ρ/τ)·ℓ(ρ) + σ(ρ/τ)·e^(−ρ).

    ρ = 1: σ(−2)·ℓ(1) + σ(2)·e^−1 = 0.119203·0.313262 + 0.880797·0.367879 = 0.037342 + 0.324027 = 0.361369.
    """
    out = pairwise.discopop(POLICY, REFERENCE, beta=1.0, tau=0.5)
    expected = [sig(-h / 0.5) * ell(h) + sig(h / 0.5) * math.exp(-h) for h in H]
    close(out.losses, expected)
    assert expected[0] == pytest.approx(0.361369, abs=1e-6)


def test_aot_golden():
    """β = 1, ε = 0. paired: policy log π(y_w) − log π(y_l) = [1, −1, 0] → sorted [−1, 0, 1];
    reference [0, 0, 2] → sorted [0, 0, 2]; differences [−1, 0, −1] → [ℓ(−1), ℓ(0), ℓ(−1)].
    unpaired: sorted lr_w [−1, −0.5, 0.5], sorted lr_l [−0.5, 0.5, 1]; differences [−0.5, −1, −0.5].
    """
    out = pairwise.aot(POLICY, REFERENCE, beta=1.0)
    close(out.losses, [ell(-1.0), ell(0.0), ell(-1.0)])
    close(out.chosen_rewards, LR_W)  # rewards stay per pair, unsorted
    out = pairwise.aot(POLICY, REFERENCE, beta=1.0, variant="unpaired")
    close(out.losses, [ell(-0.5), ell(-1.0), ell(-0.5)])


def test_simpo_golden():
    """β = 2, γ = 1: β·logp/|y|: chosen [2·−1/1, 2·−2/2, 2·−4/4] = [−2, −2, −2];
    rejected [2·−2/2, 2·−1/1, 2·−4/2] = [−2, −2, −4]; difference − γ = [−1, −1, 1];
    loss = [ℓ(−1), ℓ(−1), ℓ(1)] = [1.313262, 1.313262, 0.313262].
    """
    out = pairwise.simpo(POLICY, None, beta=2.0, gamma=1.0)
    close(out.losses, [ell(-1.0), ell(-1.0), ell(1.0)])
    close(out.chosen_rewards, [-2.0, -2.0, -2.0])
    close(out.rejected_rewards, [-2.0, -2.0, -4.0])


def test_cpo_golden():
    """β = 1, α = 1: ℓ(log π(y_w) − log π(y_l)) + NLL/|y_w|; log-prob differences [1, −1, 0];
    NLL per token [1, 1, 1]; loss = [1.313262, 2.313262, 1.693147].
    """
    out = pairwise.cpo(POLICY, None, beta=1.0, alpha=1.0)
    close(out.losses, [ell(1.0) + 1, ell(-1.0) + 1, ell(0.0) + 1])
    close(out.losses, [1.313262, 2.313262, 1.693147], tol=1e-6)


def test_orpo_golden():
    """λ = 1. Mean log-probs: chosen [−1, −1, −1], rejected [−1, −1, −2].
    log odds(m) = m − log(1 − e^m) = −log(e^−m − 1): odds(−1) = 1/(e − 1), odds(−2) = 1/(e² − 1).
    log odds ratio = [0, 0, log((e² − 1)/(e − 1))] = [0, 0, log(e + 1)] = [0, 0, 1.313262].
    loss = NLL/|y_w| + ℓ(ratio) = [1 + log 2, 1 + log 2, 1 + ℓ(1.313262)] = [1.693147, 1.693147, 1.238183].
    """
    out = pairwise.orpo(POLICY, None, lam=1.0)
    close(out.metrics["log_odds_ratio"], [0.0, 0.0, math.log(math.e + 1)])
    close(out.losses, [1 + math.log(2), 1 + math.log(2), 1 + ell(math.log(math.e + 1))])
    close(out.losses, [1.693147, 1.693147, 1.238183], tol=1e-6)


def test_orpo_memorised_responses_golden():
    """A one-token chosen with log-prob m_w = −1e-7 and a one-token rejected with m_l = −1e-8 (both
    memorised, the rejected more), λ = 0.1 (the default). By hand, in float64:

        log(1 − e^m) = log(−expm1(m)) = log|m| + m/2 + O(m²)
        log odds(y_w) = −1e-7 − log(1e-7) + 5e-8 = 16.118095601
        log odds(y_l) = −1e-8 − log(1e-8) + 5e-9 = 18.420680739
        ratio = −2.302585138 (≈ −ln 10: the rejected is ten times closer to P = 1)
        loss = 1e-7 + 0.1·log(1 + e^2.302585138) = 1e-7 + 0.1·log(11.0000005) = 0.2397897

    The former clamp of m at −1e-6 moved both to −1e-6: ratio 0, loss 1e-7 + 0.1·ln 2 = 0.0693148.
    """
    policy = pair([-1e-7], [-1e-8], ct=(1,), rt=(1,))
    out = pairwise.orpo(policy, None)
    lo_w = -1e-7 - math.log(-math.expm1(-1e-7))
    lo_l = -1e-8 - math.log(-math.expm1(-1e-8))
    assert lo_w == pytest.approx(16.118095601, abs=1e-9) and lo_l == pytest.approx(18.420680739, abs=1e-9)
    close(out.metrics["log_odds_ratio"], [lo_w - lo_l])
    close(out.losses, [1e-7 + 0.1 * ell(lo_w - lo_l)])
    close(out.losses, [0.2397897], tol=1e-7)
    fp32 = pairwise.orpo(pair([-1e-7], [-1e-8], ct=(1,), rt=(1,), dtype=torch.float32), None)
    assert fp32.losses.item() == pytest.approx(0.2397897, abs=1e-6)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_orpo_memorised_rejected_gets_a_gradient(dtype):
    """Same case: d loss / d log π(y_l) = λ·σ(−ratio)·d log odds/dm = 0.1·σ(2.302585)/(1 − e^m_l)
    = 0.1·(10/11)/1e-8 ≈ 9.09e6 (nonzero: the loss pushes the memorised rejected response down; the
    former clamp gave 0 here). The chosen gets −1 (NLL) − 0.1·(10/11)/(1 − e^m_w) ≈ −9.09e5 − 1.
    """
    chosen = torch.tensor([-1e-7], dtype=dtype, requires_grad=True)
    rejected = torch.tensor([-1e-8], dtype=dtype, requires_grad=True)
    out = pairwise.orpo(PairLogps(chosen, rejected, torch.tensor([1]), torch.tensor([1])), None)
    out.losses.sum().backward()
    weight = 0.1 * sig(-(out.metrics["log_odds_ratio"].item()))
    assert rejected.grad.item() > 0
    assert rejected.grad.item() == pytest.approx(weight / -math.expm1(-1e-8), rel=1e-4)
    assert chosen.grad.item() == pytest.approx(-1 - weight / -math.expm1(-1e-7), rel=1e-4)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
def test_orpo_probability_one_stays_finite(dtype):
    """Only mean log-probs >= 0 (P = 1, or malformed positive log-probs) are clamped, to −tiny (the
    smallest normal of the dtype): log odds = −tiny − log(tiny), finite, and no gradient flows through
    the clamped log odds (the NLL term still gives −1/|y_w| to the chosen)."""
    chosen = torch.tensor([0.0, 5.0, -2.0], dtype=dtype, requires_grad=True)
    rejected = torch.tensor([0.0, -1e4, 3.0], dtype=dtype, requires_grad=True)
    out = pairwise.orpo(PairLogps(chosen, rejected, torch.tensor([1, 1, 2]), torch.tensor([1, 1, 1])), None)
    tiny = torch.finfo(dtype).tiny
    clamped = (-tiny - math.log(tiny)) * 0.1  # λ·log odds at the clamp
    assert torch.isfinite(out.losses).all()
    assert out.chosen_rewards[0].item() == pytest.approx(clamped, rel=1e-2)
    assert out.rejected_rewards[2].item() == pytest.approx(clamped, rel=1e-2)
    out.losses.sum().backward()
    assert torch.isfinite(chosen.grad).all() and torch.isfinite(rejected.grad).all()
    assert chosen.grad[:2].tolist() == [-1.0, -1.0] and rejected.grad[[0, 2]].tolist() == [0.0, 0.0]


def test_slic_golden():
    """δ = 1, λ = 0.5: max(0, 1 − [1, −1, 0]) + 0.5·[1, 1, 1] = [0, 2, 1] + 0.5 = [0.5, 2.5, 1.5]."""
    out = pairwise.slic(POLICY, None, delta=1.0, lam=0.5)
    close(out.losses, [0.5, 2.5, 1.5])
    close(out.chosen_rewards, [-1.0, -2.0, -4.0])


# --- identities ------------------------------------------------------------------------------------


def _dpo(beta: float = 0.1) -> torch.Tensor:
    return pairwise.dpo(POLICY, REFERENCE, beta=beta).losses


@pytest.mark.parametrize("beta", [0.1, 0.7])
def test_identities_reduce_to_dpo(beta):
    ones, zeros = torch.ones(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    expected = _dpo(beta)
    same = {
        "cDPO ε=0": pairwise.dpo(POLICY, REFERENCE, beta=beta, label_smoothing=0.0),
        "robust_dpo ε=0": pairwise.robust_dpo(POLICY, REFERENCE, beta=beta, label_smoothing=0.0),
        "odpo Δ=0": pairwise.odpo(POLICY, REFERENCE, strength=zeros, beta=beta),
        "odpo log(1)=0": pairwise.odpo(POLICY, REFERENCE, strength=ones, beta=beta, offset="log"),
        "fdpo reverse KL": pairwise.fdpo(POLICY, REFERENCE, beta=beta, divergence="reverse_kl"),
        "dpo_soft p=1": pairwise.dpo_soft(POLICY, REFERENCE, strength=ones, beta=beta),
        "rdpo α=0": pairwise.rdpo(POLICY, REFERENCE, beta=beta, alpha=0.0),
        "dpop λ=0": pairwise.dpop(POLICY, REFERENCE, beta=beta, lam=0.0),
        "rpo α=0": pairwise.rpo(POLICY, REFERENCE, beta=beta, alpha=0.0),
    }
    for name, out in same.items():
        torch.testing.assert_close(out.losses, expected, msg=name)
    # cDPO with constant p = 1 − ε is the soft-label form
    torch.testing.assert_close(pairwise.dpo_soft(POLICY, REFERENCE, strength=0.8 * ones, beta=beta).losses,
                               pairwise.dpo(POLICY, REFERENCE, beta=beta, label_smoothing=0.2).losses)
    # α-divergence tends to reverse KL as α → 0
    near_reverse_kl = pairwise.fdpo(POLICY, REFERENCE, beta=beta, divergence="alpha", alpha=1e-6)
    torch.testing.assert_close(near_reverse_kl.losses, expected, rtol=1e-5, atol=1e-5)


def test_robust_dpo_is_unbiased_under_flips():
    """E over a flip of rate ε of the rDPO loss = the clean DPO loss: (1−ε)·L̂(h) + ε·L̂(−h) = ℓ(βh)."""
    eps, beta = 0.2, 0.5
    clean = pairwise.robust_dpo(POLICY, REFERENCE, beta=beta, label_smoothing=eps).losses
    flipped = pairwise.robust_dpo(POLICY.swapped(), REFERENCE.swapped(), beta=beta,
                                  label_smoothing=eps).losses
    torch.testing.assert_close((1 - eps) * clean + eps * flipped, _dpo(beta))


# --- gradients -------------------------------------------------------------------------------------

# Away from every kink, for the f-DPO divergences the contract test (default divergence) does not reach.
_GC_POLICY = ([-1.3, -2.1, -0.7], [-1.9, -0.4, -2.6], (2, 3, 1), (1, 2, 3))
_GC_REFERENCE = ([-1.0, -2.5, -1.2], [-1.5, -1.0, -2.0])


@pytest.mark.parametrize("divergence", pairwise.FDPO_DIVERGENCES)
def test_fdpo_gradcheck_every_divergence(divergence):
    c, r = (torch.tensor(x, dtype=torch.float64, requires_grad=True) for x in _GC_POLICY[:2])
    ref = PairLogps(*(torch.tensor(x, dtype=torch.float64) for x in _GC_REFERENCE),
                    torch.ones(3), torch.ones(3))
    assert torch.autograd.gradcheck(
        lambda c, r: pairwise.fdpo(PairLogps(c, r, ref.chosen_tokens, ref.rejected_tokens), ref,
                                   divergence=divergence, beta=0.5).losses, (c, r))


# --- errors ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("call,error,match", [
    (lambda: pairwise.dpo(POLICY, None), ConfigError, "needs reference log-probs"),
    (lambda: pairwise.odpo(POLICY, REFERENCE), ConfigError, "needs a per-pair strength"),
    (lambda: pairwise.dpo_soft(POLICY, REFERENCE, strength=torch.tensor([0.5, 1.5, 0.0], dtype=torch.float64)),
     DataError, r"needs strength in \[0, 1\]"),
    (lambda: pairwise.odpo(POLICY, REFERENCE, strength=torch.zeros(3, dtype=torch.float64), offset="log"),
     DataError, "needs strength > 0"),
], ids=["reference", "strength", "dpo_soft-range", "odpo-log"])
def test_input_errors_are_one_line_prefkit_errors(call, error, match):
    """The bodies check their inputs only; parameter ranges are the registry's (test_losses_registry)."""
    with pytest.raises(error, match=match) as err:
        call()
    assert "\n" not in str(err.value)


def test_missing_reference_names_the_reference_free_losses():
    with pytest.raises(ConfigError) as err:
        pairwise.dpo(POLICY, None)
    free = reference_free_pair_losses()
    assert f"({', '.join(free)})" in str(err.value)
    assert free == sorted(n for n in PAIRWISE if not LOSSES[n].needs_reference) and "orpo" in free


# --- transforms ------------------------------------------------------------------------------------


def test_wpo_weights():
    """Mean log-probs: chosen [−1, −1, −1], rejected [−1, −1, −2] → w = [e^−2, e^−2, e^−3]."""
    policy = PairLogps(POLICY.chosen_logps.clone().requires_grad_(), POLICY.rejected_logps,
                       POLICY.chosen_tokens, POLICY.rejected_tokens)
    w = wpo_weights(policy)
    close(w, [math.exp(-2), math.exp(-2), math.exp(-3)])
    assert not w.requires_grad and w.dtype == torch.float64
    # fp32, a malformed positive log-prob (mean clamped to 0) and an underflowing weight:
    # chosen means [5 → 0, −1e4, −1], rejected means [−1, −1, −2] → w = [e^−1, e^−10001 = 0, e^−3].
    policy = PairLogps(torch.tensor([5.0, -1e4, -3.0], requires_grad=True), torch.tensor([-1.0, -1.0, -2.0]),
                       torch.tensor([1, 1, 3]), torch.tensor([1, 1, 1]))
    w = wpo_weights(policy)
    torch.testing.assert_close(w, torch.tensor([math.exp(-1), 0.0, math.exp(-3)]))
    assert (w >= 0).all() and (w <= 1).all() and not w.requires_grad and w.dtype == torch.float32


def _token_pair(dtype=torch.float64) -> PairLogps:
    """Row 0: chosen 3 tokens [−1, −1, −1], rejected 2 tokens [−2, −2]; public length 2.
    Row 1: chosen 1 token [−3] at position 1 (a masked prompt token before it), rejected 4 tokens
    [−1, −1, −1, −1]; public length 1.
    """
    chosen_token_logps = torch.tensor([[-1.0, -1.0, -1.0, 0.0], [0.0, -3.0, 0.0, 0.0]], dtype=dtype)
    chosen_mask = torch.tensor([[1, 1, 1, 0], [0, 1, 0, 0]])
    rejected_token_logps = torch.tensor([[-2.0, -2.0, 0.0, 0.0], [-1.0, -1.0, -1.0, -1.0]], dtype=dtype)
    rejected_mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    return PairLogps(chosen_token_logps.sum(1), rejected_token_logps.sum(1), chosen_mask.sum(1),
                     rejected_mask.sum(1), chosen_token_logps, rejected_token_logps, chosen_mask,
                     rejected_mask)


def test_ld_dpo_golden():
    """α = 0.5. Row 0: chosen −1 −1 + 0.5·(−1) = −2.5, rejected −4 (no token past 2).
    Row 1: chosen −3 (1 token, none past 1), rejected −1 + 0.5·(−3) = −2.5.
    """
    out = ld_dpo(_token_pair(), alpha=0.5)
    close(out.chosen_logps, [-2.5, -3.0])
    close(out.rejected_logps, [-4.0, -2.5])
    torch.testing.assert_close(out.chosen_token_logps.sum(1), out.chosen_logps)
    torch.testing.assert_close(out.chosen_tokens, _token_pair().chosen_tokens)


def test_ld_dpo_alpha_one_is_identity_and_composes_with_a_loss():
    logps = _token_pair()
    same = ld_dpo(logps, alpha=1.0)
    torch.testing.assert_close(same.chosen_logps, logps.chosen_logps)
    torch.testing.assert_close(same.rejected_logps, logps.rejected_logps)
    reference = PairLogps(logps.chosen_logps - 0.5, logps.rejected_logps + 0.5, logps.chosen_tokens,
                          logps.rejected_tokens, logps.chosen_token_logps - 0.1, logps.rejected_token_logps,
                          logps.chosen_mask, logps.rejected_mask)
    out = pairwise.dpo(ld_dpo(logps, alpha=0.3), ld_dpo(reference, alpha=0.3))
    assert out.losses.shape == (2,) and torch.isfinite(out.losses).all()
    with pytest.raises(ConfigError, match="token"):
        ld_dpo(POLICY, alpha=0.5)
    with pytest.raises(ConfigError, match="alpha"):
        ld_dpo(logps, alpha=1.5)


def test_ld_dpo_gradcheck():
    logps = _token_pair()
    c = logps.chosen_token_logps.clone().requires_grad_()
    r = logps.rejected_token_logps.clone().requires_grad_()

    def f(c, r):
        p = PairLogps(c.sum(1), r.sum(1), logps.chosen_tokens, logps.rejected_tokens, c, r,
                      logps.chosen_mask, logps.rejected_mask)
        out = ld_dpo(p, alpha=0.4)
        return torch.cat([out.chosen_logps, out.rejected_logps])

    assert torch.autograd.gradcheck(f, (c, r))


# --- learning happens ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", PAIRWISE)
def test_minimising_the_loss_separates_chosen_from_rejected(name):
    """Free log-probs start at the reference (chosen less likely than rejected); 60 Adam steps on the
    mean loss must raise the margin chosen_rewards − rejected_rewards of every pair.

    DiscoPOP starts with the chosen log-prob 4 nats up (ρ = 0.05·4 = 0.2): its LRML with τ = 0.05 has a
    local maximum at ρ ≈ 0.07 and a local minimum at ρ ≈ −0.12, so from ρ = 0 descent lowers ρ.
    """
    spec = LOSSES[name]
    tokens = torch.tensor([3, 5, 2, 4])
    reference = PairLogps(torch.tensor([-7.0, -9.0, -5.0, -8.0]), torch.tensor([-6.0, -8.0, -4.0, -6.0]),
                          tokens, tokens.flip(0))
    start = 4.0 if name == "discopop" else 0.0
    chosen = (reference.chosen_logps + start).requires_grad_()
    rejected = reference.rejected_logps.clone().requires_grad_()
    kw = {"strength": torch.tensor([0.9, 1.0, 0.8, 0.7])} if "strength" in spec.needs else {}
    ref = reference if spec.needs_reference else None

    def margin() -> torch.Tensor:
        out = spec.fn(PairLogps(chosen, rejected, reference.chosen_tokens, reference.rejected_tokens), ref, **kw)
        return out.chosen_rewards - out.rejected_rewards

    before = margin()
    optimizer = torch.optim.Adam([chosen, rejected], lr=0.05)
    for _ in range(60):
        optimizer.zero_grad()
        spec.fn(PairLogps(chosen, rejected, reference.chosen_tokens, reference.rejected_tokens), ref,
                **kw).losses.mean().backward()
        optimizer.step()
    assert (margin() > before + 1e-3).all(), (before, margin())
