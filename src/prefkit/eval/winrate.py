"""Win rate of a policy against a baseline under any judge, with a bootstrap interval and a
length-controlled win rate.

:func:`win_rate` asks a judge of :mod:`prefkit.online.judges` about N prompts, each with one policy
completion and one baseline completion:

- a **pointwise** judge scores both; the policy wins a prompt when its score is higher, ties count ½;
- a **pairwise** judge answers ``P(policy ≻ baseline)`` through
  :func:`~prefkit.online.judges.preference_probs` (an ``LMJudge`` asks both orders and averages them), and
  that probability is the prompt's outcome.

The win rate is the mean outcome. Its 95% interval is a percentile bootstrap over prompts (resample the N
prompts with replacement ``bootstrap`` times; the 2.5th and 97.5th percentiles of the resampled means).

Length control (``length_controlled=True``) follows Dubois et al. 2024, "Length-Controlled AlpacaEval:
A Simple Way to Debias Automatic Evaluators" (arXiv 2404.04475), reduced to one policy and one baseline:

    Δ_i = len(policy_i) − len(baseline_i)               (characters of the completion text)
    x_i = tanh(Δ_i / sd(Δ))                             (AlpacaEval-LC's normalised length feature)
    P(policy wins prompt i) = σ(θ0 + θ1 · x_i)          (logistic regression on the outcomes y_i ∈ [0, 1])
    length-controlled win rate = σ(θ0)                  (the win rate at zero length difference)

The fit maximises Σ y log p + (1 − y) log(1 − p) with a weak ridge (``1e-3 · θ²``, so an all-win set stays
finite) by Newton's method, for the data and for every bootstrap resample at once (the same resamples
as the raw win rate), so the length-controlled rate has its own interval. Deviations from AlpacaEval-LC:
no per-instruction difficulty term (there is one policy, so it would be absorbed by the outcomes), and
outcomes may be soft probabilities (a pairwise judge's ``P(a ≻ b)``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from prefkit.data.records import Completion, Prompt
from prefkit.online.judges import Judge, completion_text, preference_probs

LEVEL = 0.95
"""Coverage of the bootstrap intervals."""
RIDGE = 1e-3
"""Ridge on (θ0, θ1) of the length-control regression: keeps the fit finite when every outcome is a win."""
_CHUNK = 4_000_000  # resample matrix entries held at once (rows × prompts)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # σ(z), without overflow warnings


@dataclass(frozen=True)
class WinRate:
    """What :func:`win_rate` returns.

    ``win_rate`` with its 95% bootstrap interval ``[low, high]`` over ``n`` prompts; ``method``: how the
    judge answered (pointwise scores compared, or pairwise probabilities); ``agreement``: for judges that
    ask both orders, the fraction of prompts where both orders agreed. With length control:
    ``length_controlled`` (σ(θ0)) and its interval ``[lc_low, lc_high]``, ``length_coef`` (θ1, per unit
    of tanh-normalised length difference; > 0 means longer answers win more) and ``mean_length_diff``.
    """

    win_rate: float
    low: float
    high: float
    n: int
    method: str
    agreement: float | None = None
    length_controlled: float | None = None
    lc_low: float | None = None
    lc_high: float | None = None
    length_coef: float | None = None
    mean_length_diff: float | None = None

    def to_dict(self) -> dict[str, float | int | str | None]:
        return asdict(self)


def pair_outcomes(policy: Sequence[Completion], baseline: Sequence[Completion], prompts: Sequence[Prompt],
                  judge: Judge) -> tuple[np.ndarray, str, float | None]:
    """Per-prompt outcomes (N,) in [0, 1] of the policy against the baseline, the judge's method line and,
    for judges that ask both orders, their agreement.

    Pointwise judges: 1 when the policy's score is higher, ½ on equal scores, 0 otherwise. Pairwise
    judges: ``P(policy ≻ baseline)``.
    """
    prefs = preference_probs(judge, prompts, policy, baseline)
    if prefs.scores_a is not None and prefs.scores_b is not None:  # pointwise: compare the scores
        a = prefs.scores_a.double().numpy()
        b = prefs.scores_b.double().numpy()
        outcomes = np.where(a > b, 1.0, np.where(a == b, 0.5, 0.0))
        return outcomes, "pointwise judge: scores compared, ties ½", None
    return prefs.probs.double().numpy(), prefs.method, prefs.agreement


def _resample_counts(n: int, bootstrap: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Bootstrap resamples of n items as count matrices (rows, n), in chunks of at most ``_CHUNK`` entries."""
    rows = max(1, _CHUNK // max(n, 1))
    done = 0
    while done < bootstrap:
        r = min(rows, bootstrap - done)
        idx = rng.integers(0, n, size=(r, n))  # (r, n) indices drawn with replacement
        flat = (idx + n * np.arange(r)[:, None]).ravel()
        yield np.bincount(flat, minlength=r * n).reshape(r, n).astype(np.float64)  # (r, n)
        done += r


def length_control_fit(outcomes: np.ndarray, x: np.ndarray, weights: np.ndarray | None = None, *,
                       iterations: int = 50) -> np.ndarray:
    """(θ0, θ1) of ``P(win) = σ(θ0 + θ1·x)`` fitted to ``outcomes`` (N,) in [0, 1], for each row of
    ``weights`` (R, N) (bootstrap counts; None = the data once). Returns (R, 2). Newton's method with the
    ridge :data:`RIDGE`, batched over rows."""
    y = np.asarray(outcomes, dtype=np.float64)  # (N,)
    x = np.asarray(x, dtype=np.float64)  # (N,)
    w = np.ones((1, y.size)) if weights is None else np.asarray(weights, dtype=np.float64)  # (R, N)
    theta = np.zeros((w.shape[0], 2))  # (R, 2)
    for _ in range(iterations):
        p = _sigmoid(theta[:, :1] + theta[:, 1:] * x)  # (R, N)
        r = w * (y - p)  # (R, N)
        g = np.stack([r.sum(1), r @ x], 1) - 2 * RIDGE * theta  # (R, 2) gradient of the log-likelihood
        v = w * p * (1 - p)  # (R, N)
        h00, h01, h11 = v.sum(1) + 2 * RIDGE, v @ x, v @ (x * x) + 2 * RIDGE  # (R,) −Hessian entries
        det = h00 * h11 - h01 * h01  # (R,)
        step = np.stack([h11 * g[:, 0] - h01 * g[:, 1], h00 * g[:, 1] - h01 * g[:, 0]], 1) / det[:, None]
        theta = theta + step
        if np.abs(step).max() < 1e-10:
            break
    return theta


def win_rate_from_outcomes(outcomes: Sequence[float] | np.ndarray, *, seed: int, bootstrap: int = 2000,
                           length_diff: Sequence[float] | np.ndarray | None = None,
                           method: str = "outcomes", agreement: float | None = None) -> WinRate:
    """The :class:`WinRate` of per-prompt ``outcomes`` (N,) in [0, 1]; with ``length_diff`` (N,) (policy
    minus baseline length) also the length-controlled win rate. :func:`win_rate` calls this after judging."""
    y = np.asarray(outcomes, dtype=np.float64)  # (N,)
    n = y.size
    if n == 0:
        raise ValueError("win rate of no prompts: give at least one prompt")
    if bootstrap < 1:
        raise ValueError(f"bootstrap must be >= 1, got {bootstrap}")
    if not np.all((y >= 0) & (y <= 1)):
        raise ValueError("outcomes must lie in [0, 1]")
    rng = np.random.default_rng(seed)
    lc = length_diff is not None
    if lc:
        delta = np.asarray(length_diff, dtype=np.float64)  # (N,)
        sd = float(delta.std())
        x = np.tanh(delta / sd) if sd > 0 else np.zeros_like(delta)  # (N,) AlpacaEval-LC feature
    means, lc_rates = [], []
    for counts in _resample_counts(n, bootstrap, rng):  # (r, N) per chunk
        means.append(counts @ y / n)  # (r,)
        if lc:
            lc_rates.append(_sigmoid(length_control_fit(y, x, counts)[:, 0]))  # (r,)
    tail = (1 - LEVEL) / 2 * 100
    low, high = np.percentile(np.concatenate(means), [tail, 100 - tail])
    fields: dict[str, float | None] = {}
    if lc:
        theta = length_control_fit(y, x)[0]
        lc_low, lc_high = np.percentile(np.concatenate(lc_rates), [tail, 100 - tail])
        fields = {"length_controlled": float(_sigmoid(theta[0])), "lc_low": float(lc_low),
                  "lc_high": float(lc_high), "length_coef": float(theta[1]), "mean_length_diff": float(delta.mean())}
    return WinRate(win_rate=float(y.mean()), low=float(low), high=float(high), n=n, method=method,
                   agreement=None if agreement is None or math.isnan(agreement) else float(agreement),
                   **fields)


def win_rate(policy_completions: Sequence[Completion], baseline_completions: Sequence[Completion],
             prompts: Sequence[Prompt], judge: Judge, *, seed: int, bootstrap: int = 2000,
             length_controlled: bool = False) -> WinRate:
    """Win rate of ``policy_completions`` against ``baseline_completions`` (one each per prompt) under
    ``judge``, with a percentile-bootstrap 95% interval over prompts and, with ``length_controlled``, the
    AlpacaEval-LC style length-controlled win rate (see the module docstring for the formula).

    Example::

        judge = FunctionJudge(lambda prompt, completion: reward(prompt, completion))
        result = win_rate(new_answers, old_answers, prompts, judge, seed=0, length_controlled=True)
        print(f"{result.win_rate:.3f} [{result.low:.3f}, {result.high:.3f}]")
    """
    if not len(policy_completions) == len(baseline_completions) == len(prompts):
        raise ValueError(f"one policy and one baseline completion per prompt: got {len(policy_completions)} "
                         f"policy, {len(baseline_completions)} baseline, {len(prompts)} prompts")
    outcomes, method, agreement = pair_outcomes(policy_completions, baseline_completions, prompts, judge)
    diff = None
    if length_controlled:
        diff = [len(completion_text(a)) - len(completion_text(b))
                for a, b in zip(policy_completions, baseline_completions, strict=True)]
    return win_rate_from_outcomes(outcomes, bootstrap=bootstrap, seed=seed, length_diff=diff, method=method,
                                  agreement=agreement)


__all__ = ["WinRate", "win_rate", "win_rate_from_outcomes", "pair_outcomes", "length_control_fit", "LEVEL",
           "RIDGE"]
