"""Win rates (``prefkit.eval.winrate``): outcomes under pointwise and pairwise judges, bootstrap intervals
that cover a known win probability, and a length-controlled win rate that removes a planted length bias."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from prefkit.eval.winrate import RIDGE, length_control_fit, win_rate, win_rate_from_outcomes
from prefkit.online.judges import FunctionJudge, Verdicts

SCORE = {"good": 1.0, "ok": 0.5, "bad": 0.0}


def test_pointwise_scores_are_compared_with_ties_half():
    """Scores policy (3, 1, 2) vs baseline (1, 1, 5): win, tie, loss → (1 + ½ + 0)/3 = ½."""
    scores = {"p1": 3.0, "p2": 1.0, "p3": 2.0, "b1": 1.0, "b2": 1.0, "b3": 5.0}
    judge = FunctionJudge(lambda prompt, completion: scores[completion])
    result = win_rate(["p1", "p2", "p3"], ["b1", "b2", "b3"], ["x", "y", "z"], judge, seed=0, bootstrap=200)
    assert result.win_rate == pytest.approx(0.5) and result.n == 3
    assert 0.0 <= result.low <= 0.5 <= result.high <= 1.0
    assert "pointwise" in result.method and result.length_controlled is None


def test_pairwise_probabilities_are_the_outcomes():
    judge = FunctionJudge(prefer_fn=lambda prompt, a, b: 0.8)
    result = win_rate(["a"] * 5, ["b"] * 5, ["x"] * 5, judge, seed=0, bootstrap=100)
    assert result.win_rate == pytest.approx(0.8)
    assert result.low == pytest.approx(0.8) and result.high == pytest.approx(0.8)  # no spread to resample
    assert "pairwise" in result.method


class _BothOrdersJudge:
    """A pairwise judge that answers in both orders (like LMJudge): first order says a, second says b on
    pair 2."""

    pointwise, pairwise = False, True

    def prefer(self, prompts, a, b):
        return self.verdicts(prompts, a, b).probs

    def verdicts(self, prompts, a, b):
        first = torch.tensor([0.9, 0.7])  # P(first shown ≻ second), a shown first
        second = torch.tensor([0.1, 0.6])  # b shown first: P(b ≻ a)
        return Verdicts(probs=0.5 * (first + 1 - second), first=first, second=second, agree=torch.tensor([True, False]))


def test_a_judge_asking_both_orders_is_averaged_and_reports_agreement():
    """Outcomes ½(0.9 + 1 − 0.1) = 0.9 and ½(0.7 + 1 − 0.6) = 0.55; mean 0.725; agreement ½."""
    result = win_rate(["a1", "a2"], ["b1", "b2"], ["x", "y"], _BothOrdersJudge(), seed=0, bootstrap=50)
    assert result.win_rate == pytest.approx(0.725) and result.agreement == pytest.approx(0.5)


def test_interval_covers_a_known_win_probability():
    """200 trials of 200 prompts; the policy answer is better than the baseline's with probability 0.55,
    equal with 0.10 (a tie, ½) and worse otherwise: the true win rate is 0.6. The 95% percentile
    bootstrap interval covers 0.6 in at least 90% of the trials."""
    rng = np.random.default_rng(0)
    judge = FunctionJudge(lambda prompt, completion: SCORE[completion])
    n, covered = 200, 0
    prompts, baseline = [f"q{i}" for i in range(n)], ["ok"] * n
    for trial in range(200):
        u = rng.random(n)
        policy = np.where(u < 0.55, "good", np.where(u < 0.65, "ok", "bad")).tolist()
        result = win_rate(policy, baseline, prompts, judge, seed=trial)
        covered += result.low <= 0.6 <= result.high
    assert covered / 200 >= 0.9, covered


def test_length_control_recovers_a_planted_win_rate():
    """A judge with a planted length bias: the policy wins prompt i with probability σ(0 + 1.5·x_i),
    x_i = tanh(Δ_i / sd(Δ)), and the policy is ~120 characters longer on average. The raw win rate is
    inflated well above ½; the length-controlled win rate recovers σ(0) = ½."""
    rng = np.random.default_rng(0)
    n = 2000
    delta = np.rint(rng.normal(120, 150, n)).astype(int)
    base_len = rng.integers(200, 400, n)
    policy = ["x" * int(max(1, b + d)) for b, d in zip(base_len, delta, strict=True)]
    baseline = ["y" * int(b) for b in base_len]
    real = np.array([len(p) - len(b) for p, b in zip(policy, baseline, strict=True)])
    p_win = 1 / (1 + np.exp(-1.5 * np.tanh(real / real.std())))
    prompts = [f"q{i}" for i in range(n)]
    wins = dict(zip(prompts, (rng.random(n) < p_win).astype(float), strict=True))
    judge = FunctionJudge(prefer_fn=lambda prompt, a, b: wins[prompt])
    result = win_rate(policy, baseline, prompts, judge, seed=0, bootstrap=1000, length_controlled=True)
    assert result.win_rate > 0.6 and result.low > 0.55  # biased raw win rate
    assert result.length_controlled == pytest.approx(0.5, abs=0.04)
    assert result.lc_low <= 0.5 <= result.lc_high
    assert result.length_coef == pytest.approx(1.5, abs=0.3)
    assert result.mean_length_diff == pytest.approx(real.mean())


def test_length_control_fit_solves_the_score_equations():
    """At the ridge-penalised optimum: Σ(y − p) = 2λθ0 and Σ(y − p)x = 2λθ1, for every weight row."""
    rng = np.random.default_rng(1)
    x, y = np.tanh(rng.normal(size=50)), rng.random(50)
    weights = rng.integers(0, 3, size=(4, 50)).astype(float)
    theta = length_control_fit(y, x, weights)
    p = 1 / (1 + np.exp(-(theta[:, :1] + theta[:, 1:] * x)))
    np.testing.assert_allclose((weights * (y - p)).sum(1), 2 * RIDGE * theta[:, 0], atol=1e-8)
    np.testing.assert_allclose((weights * (y - p)) @ x, 2 * RIDGE * theta[:, 1], atol=1e-8)
    # no length difference: σ(θ0) is the win rate itself (up to the tiny ridge)
    flat = win_rate_from_outcomes([1, 1, 1, 0], seed=0, bootstrap=10, length_diff=[0, 0, 0, 0])
    assert flat.length_controlled == pytest.approx(0.75, abs=1e-3)


def test_bad_inputs():
    judge = FunctionJudge(lambda prompt, completion: 0.0)
    with pytest.raises(ValueError, match="one policy and one baseline"):
        win_rate(["a"], ["b", "c"], ["x"], judge, seed=0)
    with pytest.raises(ValueError, match="no prompts"):
        win_rate_from_outcomes([], seed=0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        win_rate_from_outcomes([1.5], seed=0)
