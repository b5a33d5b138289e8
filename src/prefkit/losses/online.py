"""Losses of the online algorithms (``prefkit.online.algorithms``): soft-label IPO, SPPO, Nash-MD, XPO.

``ipo_soft`` is a registry pair loss (EGPO's online IPO loss). The others are pure helpers that the
online objectives (``prefkit.online.objectives``) call on single sampled completions; they are not
registry entries because the registry has no kind for "one policy sample with a judged number"
(``Rating`` records trained through the policy, not a reward model).

Sign convention everywhere: log-probs are log-likelihoods (higher = more likely); every loss is
minimised; nothing is reduced (per-example losses, the trainer reduces); rewards are detached.
"""

from __future__ import annotations

import torch
from torch import Tensor

from prefkit.errors import DataError
from prefkit.losses.types import LossOutput, PairLogps, UnpairedLogps


def _probabilities(p: Tensor | None, like: Tensor, loss: str, what: str) -> Tensor:
    """``p`` (B,) as ``like``'s dtype, checked to lie in [0, 1]; a one-line DataError otherwise."""
    if p is None:
        raise DataError(f"loss {loss!r} needs {what} (a preference probability in [0, 1]) on every example")
    p = p.to(dtype=like.dtype, device=like.device)
    if p.numel() and (bool(torch.isnan(p).any()) or bool((p < 0).any()) or bool((p > 1).any())):
        raise DataError(f"loss {loss!r} needs {what} in [0, 1] (a preference probability); got values in "
                        f"[{p.min().item():g}, {p.max().item():g}]")
    return p


def ipo_soft(policy: PairLogps, reference: PairLogps | None, *, strength: Tensor | None = None,
             beta: float = 0.1) -> LossOutput:
    """Soft-label IPO: regress the log-ratio margin onto (p − ½)/τ, p = P(chosen ≻ rejected).

    Formula:
        h    = [log π(y₁) − log π_ref(y₁)] − [log π(y₂) − log π_ref(y₂)]
        loss = (h − (p − ½)/τ)²,  p = strength,  τ = ``beta``

    References:
        Azar et al. 2023, "A General Theoretical Paradigm to Understand Learning from Human
        Preferences", arXiv 2310.12036, Eq. 17 (p = 1 gives IPO's target 1/(2τ)); Calandriello et al.
        2024, "Human Alignment of Large Language Models through Online Preference Optimisation", arXiv
        2403.08635, the online IPO loss ( y₁, y₂ sampled from the current policy, stop-gradient on the
        sampling; its fixed point is the KL-regularised Nash equilibrium π ∝ π_ref·exp(P(y ≻ π)/τ)); the
        loss EGPO (Zhou et al. 2025) takes extragradient steps on.

    p = ``strength`` (B,) is the judge's P(y₁ ≻ y₂) ∈ [0, 1] (a DataError otherwise); y₁ is the record's
    "chosen" and y₂ its "rejected" but nothing requires p > ½: swapping the two and p ↔ 1 − p gives the same
    loss. p = ½ targets a zero margin; identical y₁ = y₂ would give h = 0 and no gradient (the online
    algorithm skips such pairs). Shapes: (B,) everywhere. Sign convention: higher log-prob = more likely,
    loss minimised; rewards are τ·logratio. Typical: τ 0.05–1. Deviations from the paper: none; h uses
    summed log-probs.
    """
    if reference is None:
        raise DataError("loss 'ipo_soft' needs reference log-probs")
    p = _probabilities(strength, policy.chosen_logps, "ipo_soft", "a strength")
    chosen_logratios = policy.chosen_logps - reference.chosen_logps  # (B,)
    rejected_logratios = policy.rejected_logps - reference.rejected_logps  # (B,)
    losses = (chosen_logratios - rejected_logratios - (p - 0.5) / beta) ** 2
    return LossOutput(losses, (beta * chosen_logratios).detach(), (beta * rejected_logratios).detach())


def sppo_sample_loss(policy: UnpairedLogps, reference: UnpairedLogps, *, scores: Tensor,
                     eta: float = 10.0) -> LossOutput:
    """SPPO's per-sample squared loss: log π(y)/π_t(y) regressed onto η(P̂(y ≻ π_t) − ½).

    Formula:
        loss = (log π(y|x) − log π_t(y|x) − η·(P̂(y ≻ π_t|x) − ½))²,  P̂ = ``scores``

    References:
        Wu et al. 2024, "Self-Play Preference Optimization for Language Model Alignment", arXiv
        2405.00675, Sec. 4, the SPPO objective of Algorithm 1 (its minimiser is the multiplicative-weights
        step π_{t+1} ∝ π_t·exp(η·P(y ≻ π_t)) with log Z approximated by η/2). Equation numbers differ
        between the paper's versions and are not given here.

    ``reference`` is the previous iterate π_t (the online loop refreshes it every round); y is a sample of
    π_t and ``scores`` (B,) its estimated win probability against π_t. Shapes: (B,) everywhere. Sign
    convention: higher log-prob = more likely, loss minimised; ``rewards`` is the log-ratio
    log π(y)/π_t(y) (detached), ``metrics["target"]`` the regression target. Typical: η = 1/β with β
    0.001–0.1 in the paper (η large), small η for small steps. Deviations from the paper: none in the loss;
    P̂'s estimator is the caller's (``prefkit.online.algorithms``).
    """
    p = _probabilities(scores, policy.logps, "sppo_sample_loss", "scores")
    logratios = policy.logps - reference.logps  # (B,)
    target = eta * (p - 0.5)  # (B,)
    return LossOutput((logratios - target) ** 2, rewards=logratios.detach(), metrics={"target": target.detach()})


def nash_md_pg(policy: UnpairedLogps, reference: UnpairedLogps, *, scores: Tensor,
               beta: float = 0.1) -> LossOutput:
    """Nash-MD's policy-gradient surrogate: REINFORCE of the win probability against an opponent drawn from
    the geometric mixture, plus the gradient of τ·KL(π‖π_ref).

    Formula:
        loss = −(P(y ≻ y') − ½)·log π(y|x) + τ·sg(log π(y|x) − log π_ref(y|x))·log π(y|x)
        y ∼ π (sampled), y' ∼ π^(1−β_mix)·π_ref^β_mix (token-level mixture), P = ``scores``, τ = ``beta``

    References:
        Munos et al. 2023, "Nash Learning from Human Feedback", arXiv 2312.00886, the gradient version of Nash-MD
        (Nash-MD-PG: the policy gradient of E_{y∼π, y'∼π^β_mix}[P(y ≻ y')] − τ·KL(π‖π_ref)) of the
        mirror-descent update π_{t+1} = argmax η·P(π ≻ π_t^β) − KL(π‖π_t^β), π_t^β ∝ π_t^(1−ητ)·π_ref^(ητ).

    Its expected gradient over y ∼ π is ∇_θ(E[P(y ≻ y')] − τ·KL(π‖π_ref)) up to the sign (score-function
    identity; E[∇ log π] = 0 makes ½ a baseline). The loss *value* is a surrogate (only its gradient is
    meaningful). Shapes: (B,) everywhere. Sign convention: higher log-prob = more likely, loss minimised;
    ``rewards`` is τ·log π(y)/π_ref(y) (detached). Typical: τ 0.01–1. Deviations from the paper: the
    baseline ½ (the value of a tie) instead of none; one opponent per sample.
    """
    p = _probabilities(scores, policy.logps, "nash_md_pg", "scores")
    logratios = (policy.logps - reference.logps).detach()  # (B,) sg(log π/π_ref)
    losses = -(p - 0.5) * policy.logps + beta * logratios * policy.logps
    return LossOutput(losses, rewards=beta * logratios)


def xpo_bonus(explore_logps: Tensor, *, alpha: float = 1e-5) -> Tensor:
    """XPO's exploration term, added to any pair loss: α·log π(ỹ|x) for ỹ ∼ π_ref.

    Formula:
        term = α·log π(ỹ|x),  ỹ ∼ π_ref(·|x),  per example (B,)

    References:
        Xie et al. 2024, "Exploratory Preference Optimization: Harnessing Implicit Q*-Approximation for
        Sample-Efficient RLHF", arXiv 2405.21046, Algorithm 1, line 8 (the objective α·Σ log π(ỹ) plus the
        DPO loss, minimised).

    Minimising it *lowers* the likelihood of what the reference already generates (optimism: mass moves to
    responses the reference rarely produces). ``explore_logps`` (B,) are summed log-probs of ỹ under the
    policy. Sign convention: higher log-prob = more likely, the term is minimised with the loss. Typical: α
    1e-6–1e-4 for LLMs (TRL 1e-5). Deviations from the paper: none.
    """
    return alpha * explore_logps


__all__ = ["ipo_soft", "sppo_sample_loss", "nash_md_pg", "xpo_bonus"]
