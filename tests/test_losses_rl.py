"""RL from rewards (``prefkit.losses.rl``, ``prefkit.losses.rewards``): hand-worked golden values.

Every expected number is written out as hand arithmetic in the test's docstring or comments; the
asserts recompute it with ``math`` only where a transcendental value (exp, log, sqrt) is involved.
Then: finite values and gradients in fp32 and bf16, and ``gradcheck`` in fp64 for the differentiable
functions.
"""

from __future__ import annotations

import math

import pytest
import torch

from prefkit.errors import ConfigError, DataError
from prefkit.losses.rewards import (
    clip_rewards,
    combine_rewards,
    lagrange_update,
    lagrangian_rewards,
    par_shaping,
    rsf_select,
    spo_rewards,
)
from prefkit.losses.rl import (
    clipped_policy_loss,
    clipped_value_loss,
    gae,
    grpo_advantages,
    kl_k1,
    kl_k2,
    kl_k3,
    per_token_kl_rewards,
    rloo_advantages,
    whiten,
)

F64 = torch.float64


def t(values, dtype=F64, **kwargs) -> torch.Tensor:
    return torch.tensor(values, dtype=dtype, **kwargs)


def close(actual: torch.Tensor, expected, tol: float = 1e-9) -> None:
    expected_t = torch.as_tensor(expected, dtype=actual.dtype)
    assert actual.shape == expected_t.shape, (actual.shape, expected_t.shape)
    torch.testing.assert_close(actual, expected_t, rtol=tol, atol=tol)


def sig(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


# --- advantages ---------------------------------------------------------------------------------------


def test_gae_three_step_trajectory_by_hand():
    """γ = 0.9, λ = 0.8 (γλ = 0.72); row 0 has 3 tokens, row 1 has 2 tokens and one padding position.

    Row 0: r = [0, 0, 1], V = [0.5, 0.6, 0.7], V after the end = 0:
        δ_2 = 1 + 0.9·0   − 0.7 = 0.3                 Â_2 = 0.3
        δ_1 = 0 + 0.9·0.7 − 0.6 = 0.03                Â_1 = 0.03 + 0.72·0.3   = 0.246
        δ_0 = 0 + 0.9·0.6 − 0.5 = 0.04                Â_0 = 0.04 + 0.72·0.246 = 0.21712
        R = Â + V = [0.71712, 0.846, 1.0]
    Row 1: r = [1, 2, (99)], V = [1, 1, (99)], mask [1, 1, 0] (the 99s must not leak in):
        δ_1 = 2 + 0 − 1 = 1                           Â_1 = 1
        δ_0 = 1 + 0.9·1 − 1 = 0.9                     Â_0 = 0.9 + 0.72·1 = 1.62
        R = [2.62, 2.0, 0]
    """
    rewards = t([[0.0, 0.0, 1.0], [1.0, 2.0, 99.0]])
    values = t([[0.5, 0.6, 0.7], [1.0, 1.0, 99.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    advantages, returns = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    close(advantages, [[0.21712, 0.246, 0.3], [1.62, 1.0, 0.0]])
    close(returns, [[0.71712, 0.846, 1.0], [2.62, 2.0, 0.0]])


def test_gae_with_gamma_and_lambda_one_is_the_monte_carlo_advantage():
    """γ = λ = 1: Â_t = Σ_{s≥t} r_s − V_t; row 0 above: [1 − 0.5, 1 − 0.6, 1 − 0.7] = [0.5, 0.4, 0.3]."""
    advantages, returns = gae(t([[0.0, 0.0, 1.0]]), t([[0.5, 0.6, 0.7]]), torch.ones(1, 3), gamma=1.0, lam=1.0)
    close(advantages, [[0.5, 0.4, 0.3]])
    close(returns, [[1.0, 1.0, 1.0]])


def test_grpo_advantages_on_a_group_of_four():
    """r = [1, 2, 3, 6]: mean 3, r − mean = [−2, −1, 0, 3], Σ(r − mean)² = 4 + 1 + 0 + 9 = 14.

    group_std: unbiased std = sqrt(14/3) = 2.160247 → Â = [−0.925820, −0.462910, 0, 1.388730].
    none (Dr. GRPO): Â = [−2, −1, 0, 3].
    batch_std with a second, constant group [0, 0, 0, 0]: the 8 rewards have mean 12/8 = 1.5 and
    Σ(r − 1.5)² = 0.25 + 0.25 + 2.25 + 20.25 + 4·2.25 = 32 → std = sqrt(32/7) = 2.138090; row 0 is
    [−2, −1, 0, 3] / 2.138090, row 1 stays 0 (centred by its own mean).
    """
    rewards = t([[1.0, 2.0, 3.0, 6.0]])
    close(grpo_advantages(rewards, eps=0.0), [[x / math.sqrt(14 / 3) for x in (-2, -1, 0, 3)]])
    close(grpo_advantages(rewards, scale="none"), [[-2.0, -1.0, 0.0, 3.0]])
    two = t([[1.0, 2.0, 3.0, 6.0], [0.0, 0.0, 0.0, 0.0]])
    close(grpo_advantages(two, scale="batch_std", eps=0.0),
          [[x / math.sqrt(32 / 7) for x in (-2, -1, 0, 3)], [0.0] * 4])
    # a group of equal rewards has std 0: eps keeps it at 0 instead of 0/0
    close(grpo_advantages(two)[1], [0.0] * 4)


def test_rloo_advantages_on_a_group_of_four():
    """r = [1, 2, 3, 6], Σ = 12: Â_i = r_i − (12 − r_i)/3.

        1 − 11/3 = −8/3,  2 − 10/3 = −4/3,  3 − 9/3 = 0,  6 − 6/3 = 4
    (= 4/3 · (r − mean) = 4/3 · [−2, −1, 0, 3]).
    """
    close(rloo_advantages(t([[1.0, 2.0, 3.0, 6.0]])), [[-8 / 3, -4 / 3, 0.0, 4.0]])


def test_advantages_need_a_group():
    with pytest.raises(DataError, match="G >= 2"):
        grpo_advantages(t([[1.0], [2.0]]))
    with pytest.raises(DataError, match="G >= 2"):
        rloo_advantages(t([[1.0], [2.0]]))
    with pytest.raises(ConfigError, match="scale"):
        grpo_advantages(t([[1.0, 2.0]]), scale="rank")  # type: ignore[arg-type]


def test_whiten_by_hand():
    """Unmasked values 1, 2, 3, 4, 5: mean 3, unbiased var (4 + 1 + 0 + 1 + 4)/4 = 2.5.

    whiten = [−2, −1, 0, 1, 2] / sqrt(2.5) = [−1.264911, −0.632456, 0, 0.632456, 1.264911]; masked
    positions (100, 0, 0) give 0; shift_mean=False adds the mean 3 back.
    """
    x = t([[1.0, 2.0, 3.0, 100.0], [4.0, 5.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    s = math.sqrt(2.5 + 1e-8)
    close(whiten(x, mask), [[-2 / s, -1 / s, 0.0, 0.0], [1 / s, 2 / s, 0.0, 0.0]])
    close(whiten(x, mask, shift_mean=False), [[3 - 2 / s, 3 - 1 / s, 3.0, 0.0], [3 + 1 / s, 3 + 2 / s, 0.0, 0.0]])
    w = whiten(t([1.0, 2.0, 3.0, 4.0, 5.0]))
    close(w.mean(), 0.0)
    close(w.std(), 1.0, tol=1e-6)
    with pytest.raises(DataError, match="at least 2"):
        whiten(t([1.0, 2.0]), torch.tensor([1, 0]))


# --- KL estimators ------------------------------------------------------------------------------------


def test_kl_estimators_by_hand():
    """π = 0.5, π_ref = 0.25 → r = π_ref/π = 0.5, log r = −ln 2 = −0.693147:
        k1 = ln 2 = 0.693147,  k2 = ½(ln 2)² = 0.240227,  k3 = 0.5 − 1 + ln 2 = 0.193147
    π = 0.25, π_ref = 0.5 → r = 2, log r = ln 2:
        k1 = −ln 2 = −0.693147 (negative on this token),  k2 = 0.240227,  k3 = 2 − 1 − ln 2 = 0.306853
    """
    ln2 = math.log(2.0)
    logps, ref = t([math.log(0.5), math.log(0.25)]), t([math.log(0.25), math.log(0.5)])
    close(kl_k1(logps, ref), [ln2, -ln2])
    close(kl_k2(logps, ref), [0.5 * ln2 ** 2, 0.5 * ln2 ** 2])
    close(kl_k3(logps, ref), [0.5 - 1 + ln2, 2 - 1 - ln2])


def test_k3_is_never_negative():
    gen = torch.Generator().manual_seed(0)
    logps, ref = -5 * torch.rand(1000, generator=gen, dtype=F64), -5 * torch.rand(1000, generator=gen, dtype=F64)
    assert (kl_k3(logps, ref) >= 0).all()
    assert (kl_k2(logps, ref) >= 0).all()
    assert (kl_k1(logps, ref) < 0).any()


def test_k1_and_k3_are_unbiased_for_the_exact_kl_on_a_categorical():
    """π = [0.5, 0.3, 0.2], π_ref = [0.2, 0.3, 0.5]:
        KL(π‖π_ref) = 0.5·ln 2.5 + 0.3·ln 1 + 0.2·ln 0.4 = 0.3·ln 2.5 = 0.274887
    Exactly, E_π[k1] = E_π[k3] = KL; E_π[k2] = ½·(ln 2.5)²·(0.5 + 0.2) = 0.293856 ≠ KL (biased).
    By Monte Carlo with 200 000 draws from π, the k1 and k3 means are within 4 standard errors of KL.
    """
    pi, pi_ref = t([0.5, 0.3, 0.2]), t([0.2, 0.3, 0.5])
    exact = 0.3 * math.log(2.5)
    logps, ref = pi.log(), pi_ref.log()
    close((pi * kl_k1(logps, ref)).sum(), exact)
    close((pi * kl_k3(logps, ref)).sum(), exact)
    close((pi * kl_k2(logps, ref)).sum(), 0.5 * math.log(2.5) ** 2 * 0.7)
    gen = torch.Generator().manual_seed(0)
    draws = torch.multinomial(pi, 200_000, replacement=True, generator=gen)  # (N,) token ids ~ π
    for estimator in (kl_k1, kl_k3):
        samples = estimator(logps[draws], ref[draws])  # (N,)
        stderr = samples.std().item() / math.sqrt(samples.numel())
        assert abs(samples.mean().item() - exact) < 4 * stderr, (estimator.__name__, samples.mean(), exact)


# --- the clipped policy loss ----------------------------------------------------------------------------

# Six one-token rows, ε_low = ε_high = 0.2 (clip range [0.8, 1.2]), old log-prob −1 everywhere:
#   row  Â    ρ     ρ·Â    clip(ρ)·Â   min     loss = −min   d loss / d log π  (= −ρ·Â unless clipped)
#   a   +1   1.1   1.1     1.1        1.1     −1.1          −1.1   inside
#   b   +1   1.5   1.5     1.2        1.2     −1.2           0     clipped above (Â > 0)
#   c   −1   0.5  −0.5    −0.8       −0.8      0.8           0     clipped below (Â < 0)
#   d   −1   1.5  −1.5    −1.2       −1.5      1.5           1.5   above but Â < 0: not clipped
#   e   +1   0.5   0.5     0.8        0.5     −0.5          −0.5   below but Â > 0: not clipped
#   f   −1   0.9  −0.9    −0.9       −0.9      0.9           0.9   inside
RATIOS = [1.1, 1.5, 0.5, 1.5, 0.5, 0.9]
ADVANTAGES = [1.0, 1.0, -1.0, -1.0, 1.0, -1.0]


def _one_token_rows(ratios, dtype=F64):
    old = torch.full((len(ratios), 1), -1.0, dtype=dtype)
    logps = (old + torch.tensor(ratios, dtype=dtype).log()[:, None]).requires_grad_(True)
    return logps, old, torch.ones(len(ratios), 1)


def test_clipped_policy_loss_on_both_sides_of_the_clip():
    logps, old, mask = _one_token_rows(RATIOS)
    out = clipped_policy_loss(logps, old, t(ADVANTAGES), mask, clip_low=0.2)
    close(out.losses, [-1.1, -1.2, 0.8, 1.5, -0.5, 0.9])
    out.losses.sum().backward()
    close(logps.grad[:, 0], [-1.1, 0.0, 0.0, 1.5, -0.5, 0.9])  # zero gradient exactly where clipped
    close(out.metrics["clip_ratio"], [0.0, 1.0, 1.0, 0.0, 0.0, 0.0])
    close(out.metrics["clip_ratio/high_mean"], [0.0, 1.0, 0.0, 0.0, 0.0, 0.0])
    close(out.metrics["clip_ratio/low_mean"], [0.0, 0.0, 1.0, 0.0, 0.0, 0.0])
    close(out.metrics["ratio/mean"], RATIOS)
    assert all(not v.requires_grad for v in out.metrics.values())


def test_clip_higher_widens_only_the_upper_side():
    """DAPO clip-higher, ε_low = 0.2, ε_high = 0.28 (range [0.8, 1.28]), Â = +1 unless noted:
        ρ = 1.25: symmetric → −1.2, grad 0;  clip-higher → inside: −1.25, grad −1.25
        ρ = 1.5:  clip-higher → −1.28, grad 0
        ρ = 0.5, Â = −1: the lower side is unchanged → 0.8, grad 0
    """
    logps, old, mask = _one_token_rows([1.25, 1.5, 0.5])
    adv = t([1.0, 1.0, -1.0])
    close(clipped_policy_loss(logps, old, adv, mask).losses, [-1.2, -1.2, 0.8])
    out = clipped_policy_loss(logps, old, adv, mask, clip_low=0.2, clip_high=0.28)
    close(out.losses, [-1.25, -1.28, 0.8])
    out.losses.sum().backward()
    close(logps.grad[:, 0], [-1.25, 0.0, 0.0])


def test_loss_normalisations_sequence_token_constant():
    """Row 0: 3 tokens, Â = +1; row 1: 1 token + 2 padding, Â = −2; ρ = 1 on completion tokens, so each
    token loss is −Â: row 0 sums to −3, row 1 to 2. Padding has log π = 0 vs old −5 (ρ = e⁵) and must not count.
        sequence:  [−3/3, 2/1]          = [−1, 2]
        token:     mean length (3+1)/2 = 2 → [−3/2, 2/2] = [−1.5, 1];  row mean −0.25 = (−3 + 2)/4, the token mean
        constant:  max_tokens = 4 → [−0.75, 0.5];  default T = 3 → [−1, 2/3]
        token with mean_tokens = 4 (a longer optimizer step) → [−0.75, 0.5]
    """
    old = t([[-1.0, -1.0, -1.0], [-1.0, -5.0, -5.0]])
    logps = t([[-1.0, -1.0, -1.0], [-1.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    adv = t([1.0, -2.0])
    close(clipped_policy_loss(logps, old, adv, mask).losses, [-1.0, 2.0])
    token = clipped_policy_loss(logps, old, adv, mask, normalize="token").losses
    close(token, [-1.5, 1.0])
    close(token.mean(), -0.25)
    close(clipped_policy_loss(logps, old, adv, mask, normalize="token", mean_tokens=4).losses, [-0.75, 0.5])
    close(clipped_policy_loss(logps, old, adv, mask, normalize="constant", max_tokens=4).losses, [-0.75, 0.5])
    close(clipped_policy_loss(logps, old, adv, mask, normalize="constant").losses, [-1.0, 2 / 3])
    # per-token advantages (B, T) equal to the broadcast (B,) ones give the same losses
    close(clipped_policy_loss(logps, old, adv[:, None].expand(2, 3), mask).losses, [-1.0, 2.0])


def test_kl_term_in_the_policy_loss():
    """One row, 2 tokens, ρ = 1, Â = 0, log π = −1 and log π_ref = −2 on both: log r = −1 per token.
        k3 = e⁻¹ − 1 + 1 = 0.367879;  loss = β·mean_t k3 = 0.1·0.367879 = 0.0367879 (sequence)
        k1 = 1 → loss = 0.1;  the metric ``kl`` is the token mean of the estimator (k3: 0.367879)
    """
    logps, ref, mask = t([[-1.0, -1.0]]), t([[-2.0, -2.0]]), torch.ones(1, 2)
    out = clipped_policy_loss(logps, logps, t([0.0]), mask, ref_logps=ref, kl_coef=0.1)
    close(out.losses, [0.1 * math.exp(-1)])
    close(out.metrics["kl"], [math.exp(-1)])
    out = clipped_policy_loss(logps, logps, t([0.0]), mask, ref_logps=ref, kl_coef=0.1, kl_estimator="k1")
    close(out.losses, [0.1])


def test_policy_loss_input_errors():
    logps, old, mask = _one_token_rows([1.0, 1.0])
    with pytest.raises(DataError, match="advantages"):
        clipped_policy_loss(logps, old, t([1.0, 1.0, 1.0]), mask)
    with pytest.raises(DataError, match="old_logps"):
        clipped_policy_loss(logps, old[:1], t([1.0, 1.0]), mask)
    with pytest.raises(ConfigError, match="ref_logps"):
        clipped_policy_loss(logps, old, t([1.0, 1.0]), mask, kl_coef=0.1)
    with pytest.raises(ConfigError, match="normalize"):
        clipped_policy_loss(logps, old, t([1.0, 1.0]), mask, normalize="batch")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="max_tokens"):
        clipped_policy_loss(logps, old, t([1.0, 1.0]), mask, max_tokens=8)
    with pytest.raises(ConfigError, match="kl_estimator"):
        clipped_policy_loss(logps, old, t([1.0, 1.0]), mask, kl_estimator="k4")  # type: ignore[arg-type]


# --- value loss and per-token rewards -------------------------------------------------------------------


def test_clipped_value_loss_by_hand():
    """c = 0.2, three one-token rows:
        V = 0.5, V_old = 0, R = 1: V_clip = 0.2; (V − R)² = 0.25, (V_clip − R)² = 0.64 → ½·0.64 = 0.32,
            the clipped error wins: gradient 0, clipfrac 1
        V = 1, V_old = 1, R = 0: V_clip = V; ½·1 = 0.5, gradient V − R = 1
        V = 2, V_old = 1, R = 1: V_clip = 1.2; errors 1 and 0.04 → ½·1 = 0.5, gradient V − R = 1, clipfrac 0
    """
    values = t([[0.5], [1.0], [2.0]]).requires_grad_(True)
    out = clipped_value_loss(values, t([[0.0], [1.0], [1.0]]), t([[1.0], [0.0], [1.0]]), torch.ones(3, 1))
    close(out.losses, [0.32, 0.5, 0.5])
    close(out.metrics["val/clipfrac"], [1.0, 0.0, 0.0])
    out.losses.sum().backward()
    close(values.grad[:, 0], [0.0, 1.0, 1.0])


def test_per_token_kl_rewards_by_hand():
    """β = 0.1, k1 = log π − log π_ref:
        row 0 (2 tokens): k1 = [−1 − (−2), −1 − (−1)] = [1, 0] → r = [−0.1, 0 + score 1] = [−0.1, 1], pad 0
        row 1 (1 token):  k1 = [−2 − (−1)] = [−1]           → r = [0.1 + score 2] = [2.1], pads 0
    """
    logps = t([[-1.0, -1.0, 0.0], [-2.0, 0.0, 0.0]])
    ref = t([[-2.0, -1.0, 5.0], [-1.0, 5.0, 5.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    rewards = per_token_kl_rewards(t([1.0, 2.0]), logps, ref, mask, kl_coef=0.1)
    close(rewards, [[-0.1, 1.0, 0.0], [2.1, 0.0, 0.0]])
    with pytest.raises(DataError, match="at least one completion token"):
        per_token_kl_rewards(t([1.0, 2.0]), logps, ref, torch.tensor([[1, 1, 0], [0, 0, 0]]))


# --- rewards --------------------------------------------------------------------------------------------


def test_combine_and_lagrangian_rewards_by_hand():
    """components [[1, 2], [3, 4]]:
        weights [0.5, −1]                       → [0.5 − 2, 1.5 − 4] = [−1.5, −2.5]
        λ = [0.25, 0.6], senses (ge, le), objective [10, 20]
                                                → [10 + 0.25 − 1.2, 20 + 0.75 − 2.4] = [9.05, 18.35]
    """
    components = t([[1.0, 2.0], [3.0, 4.0]])
    close(combine_rewards(components, t([0.5, -1.0])), [-1.5, -2.5])
    close(lagrangian_rewards(components, t([0.25, 0.6]), senses=("ge", "le"), objective=t([10.0, 20.0])),
          [9.05, 18.35])
    with pytest.raises(DataError, match="components"):
        combine_rewards(components, t([1.0, 1.0, 1.0]))


def test_lagrange_multiplier_updates_over_three_steps():
    """η = 0.5; component 0 must stay ≥ 1.0 ("ge"), component 1 ≤ 0.2 ("le"); λ starts at [0, 0.5].
        step 1, means [0.6, 0.5]:  λ0 = 0    + 0.5·(1.0 − 0.6) = 0.2;  λ1 = 0.5  + 0.5·(0.5 − 0.2) = 0.65
        step 2, means [0.9, 0.1]:  λ0 = 0.2  + 0.5·(1.0 − 0.9) = 0.25; λ1 = 0.65 + 0.5·(0.1 − 0.2) = 0.6
        step 3, means [1.6, −1.2]: λ0 = 0.25 + 0.5·(1.0 − 1.6) = −0.05 → 0;
                                   λ1 = 0.6  + 0.5·(−1.2 − 0.2) = −0.1 → 0   (both satisfied: projected to 0)
    "eq": λ = 0, target 1, mean 3 → 0 + 0.5·(1 − 3) = −1 (not projected); max_multiplier caps.
    """
    lam, targets, senses = t([0.0, 0.5]), t([1.0, 0.2]), ("ge", "le")
    expected = [[0.2, 0.65], [0.25, 0.6], [0.0, 0.0]]
    for means, want in zip(([0.6, 0.5], [0.9, 0.1], [1.6, -1.2]), expected, strict=True):
        lam = lagrange_update(lam, t(means), targets, lr=0.5, senses=senses)
        close(lam, want)
    close(lagrange_update(t([0.0]), t([3.0]), t([1.0]), lr=0.5, senses=("eq",)), [-1.0])
    close(lagrange_update(t([0.9]), t([0.0]), t([1.0]), lr=0.5, max_multiplier=1.0), [1.0])
    with pytest.raises(ConfigError, match="sense"):
        lagrange_update(t([0.0]), t([0.0]), t([1.0]), senses=("gt",))  # type: ignore[arg-type]
    with pytest.raises(DataError, match="targets"):
        lagrange_update(t([0.0, 0.0]), t([0.0, 0.0]), t([1.0]))


def test_par_shaping_by_hand():
    """σ(r − r_ref): r = [0, 2], r_ref = [0, 1] → [σ(0), σ(1)] = [0.5, 0.731059].
    Two references [0, 2] for r = 1: (σ(1) + σ(−1))/2 = 0.5 (exactly the middle).
    """
    close(par_shaping(t([0.0, 2.0]), t([0.0, 1.0])), [0.5, sig(1.0)])
    close(par_shaping(t([1.0]), t([[0.0, 2.0]])), [0.5])
    shaped = par_shaping(t([-1e4, 1e4]), t([0.0, 0.0]))
    assert ((shaped >= 0) & (shaped <= 1)).all()
    with pytest.raises(DataError, match="reference_rewards"):
        par_shaping(t([1.0, 2.0]), t([1.0]))


def test_clip_rewards():
    close(clip_rewards(t([-3.0, 0.5, 3.0]), -1.0, 1.0), [-1.0, 0.5, 1.0])
    close(clip_rewards(t([-3.0, 3.0]), high=1.0), [-3.0, 1.0])
    with pytest.raises(ConfigError, match="above"):
        clip_rewards(t([0.0]), 1.0, -1.0)


def test_rsf_select_top_k_per_prompt():
    """rewards [0.1, 0.9, 0.5, 0.9]: best first, ties to the lower index → k=1: [1]; k=2: [1, 3]."""
    rewards = t([[0.1, 0.9, 0.5, 0.9], [3.0, 2.0, 1.0, 0.0]])
    assert rsf_select(rewards).tolist() == [[1], [0]]
    assert rsf_select(rewards, k=2).tolist() == [[1, 3], [0, 1]]
    with pytest.raises(ConfigError, match="k=5"):
        rsf_select(rewards, k=5)


def test_spo_rewards_win_share():
    """P (row beats column), G = 3; the diagonal (set to 1) is ignored:
        sample 0: P01 = 1,   P02 = 0.5 → (1 + 0.5)/2 = 0.75
        sample 1: P10 = 0,   P12 = 1   → (0 + 1)/2   = 0.5
        sample 2: P20 = 0.5, P21 = 0   → (0.5 + 0)/2 = 0.25
    """
    p = t([[[1.0, 1.0, 0.5], [0.0, 1.0, 1.0], [0.5, 0.0, 1.0]]])
    close(spo_rewards(p), [[0.75, 0.5, 0.25]])
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        spo_rewards(2 * p)
    with pytest.raises(DataError, match="G, G"):
        spo_rewards(t([[1.0, 0.0]]))


# --- dtypes and gradients -------------------------------------------------------------------------------


def _random_rollout(dtype, seed=0, rows=4, steps=5):
    gen = torch.Generator().manual_seed(seed)
    old = -3 * torch.rand(rows, steps, generator=gen, dtype=F64)
    logps = old + 0.5 * (torch.rand(rows, steps, generator=gen, dtype=F64) - 0.5)
    ref = old + 0.5 * (torch.rand(rows, steps, generator=gen, dtype=F64) - 0.5)
    lengths = torch.tensor([steps, 3, 1, 4])[:rows]
    mask = (torch.arange(steps)[None, :] < lengths[:, None]).to(F64)  # (B, T) right-padded
    adv = torch.randn(rows, generator=gen, dtype=F64)
    return [x.to(dtype) for x in (logps, old, ref, adv)] + [mask.to(dtype)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_finite_values_and_gradients_in_low_precision(dtype):
    logps, old, ref, adv, mask = _random_rollout(dtype)
    logps.requires_grad_(True)
    for normalize in ("sequence", "token", "constant"):
        out = clipped_policy_loss(logps, old, adv, mask, clip_high=0.28, ref_logps=ref, kl_coef=0.04,
                                  normalize=normalize)
        assert out.losses.dtype == dtype and out.losses.shape == (4,)
        assert torch.isfinite(out.losses).all()
        (grad,) = torch.autograd.grad(out.losses.sum(), logps)
        assert torch.isfinite(grad).all()
    values = old.detach().clone().requires_grad_(True)
    advantages, returns = gae(ref, values.detach(), mask)
    vout = clipped_value_loss(values, old, returns, mask)
    assert vout.losses.dtype == dtype and torch.isfinite(vout.losses).all()
    vout.losses.sum().backward()
    assert torch.isfinite(values.grad).all()
    for result in (advantages, whiten(advantages, mask), kl_k3(logps, ref), par_shaping(adv, adv.flip(0)),
                   grpo_advantages(ref), rloo_advantages(ref), per_token_kl_rewards(adv, logps, ref, mask)):
        assert result.dtype == dtype and torch.isfinite(result).all()


def test_gradcheck_fp64():
    logps, old, ref, adv, mask = _random_rollout(F64)

    def policy(x):
        return clipped_policy_loss(x, old, adv, mask, clip_high=0.28, ref_logps=ref, kl_coef=0.04,
                                   normalize="token").losses

    def value(v):
        return clipped_value_loss(v, old, ref, mask).losses

    checks = [
        (policy, logps),
        (value, logps),
        (lambda v: torch.cat([x.flatten() for x in gae(ref, v, mask, gamma=0.9, lam=0.8)]), old),
        (lambda x: whiten(x, mask), logps),
        (lambda x: kl_k1(x, ref), logps), (lambda x: kl_k2(x, ref), logps), (lambda x: kl_k3(x, ref), logps),
        (grpo_advantages, logps), (rloo_advantages, logps),
        (lambda r: par_shaping(r, adv.flip(0)), adv),
        (lambda c: lagrangian_rewards(c, t([0.3, 0.7]), senses=("ge", "le")), logps[:, :2]),
    ]
    for fn, x in checks:
        assert torch.autograd.gradcheck(fn, (x.detach().clone().requires_grad_(True),))
