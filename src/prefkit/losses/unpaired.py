"""Unpaired losses: single completions labelled desirable or undesirable (no pairing).

Every function here has the signature
``fn(policy: UnpairedLogps, reference: UnpairedLogps, *, labels: Tensor, **params)`` with ``labels``
(B,) bool (True = desirable), and returns a ``LossOutput`` with ``losses`` (B,), ``rewards`` (B,)
= β·(log πθ − log π_ref) detached, and ``chosen_rewards`` / ``rejected_rewards`` left None: read the
rewards of desirable and undesirable examples from ``rewards`` and the labels.

Sign convention: log-probs are log-likelihoods, higher = more likely; every loss is minimised.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from prefkit.losses.types import LossOutput, UnpairedLogps


def _logratios(policy: UnpairedLogps, reference: UnpairedLogps | None) -> Tensor:
    if reference is None:
        raise ValueError("unpaired losses need reference log-probs (spec.needs_reference is True)")
    return policy.logps - reference.logps  # (B,)


def _labels(labels: Tensor | None, like: Tensor) -> Tensor:
    if labels is None:
        raise ValueError("unpaired losses need labels=(B,) bool, True for desirable completions")
    return labels.to(device=like.device).bool()  # (B,)


def kto(policy: UnpairedLogps, reference: UnpairedLogps, *, labels: Tensor, beta: float = 0.1,
        desirable_weight: float = 1.0, undesirable_weight: float = 1.0,
        z0_fallback: str = "zero") -> LossOutput:
    """KTO: Kahneman–Tversky Optimization on unpaired desirable / undesirable completions.

    Formula:
        r_θ(x, y) = log πθ(y|x) − log π_ref(y|x)
        z0 = max(0, mean_j [log πθ(y'_j|x_j) − log π_ref(y'_j|x_j)])   (detached; y'_j mismatched)
        v(x, y) = λ_D · σ(β (r_θ − z0))   if y desirable
                = λ_U · σ(β (z0 − r_θ))   if y undesirable
        L(x, y) = λ_y − v(x, y)

    References:
        Ethayarajh et al., "KTO: Model Alignment as Prospect Theoretic Optimization", arXiv 2402.01306,
        the KTO loss (L_KTO = E[λ_y − v(x, y)], with the reference point z0 estimated from
        mismatched pairs).

    Shapes: policy.logps, reference.logps (B,); policy.kl_logps, reference.kl_logps (B,) log-probs of
    mismatched (x_i, y_j) pairs, optional; ``labels`` (B,) bool, True = desirable.

    z0 is a batch statistic: every example's loss in the batch shares the same z0 (the mean over the
    batch's mismatched pairs), so the per-example losses are not independent of the batch they sit in.
    With data parallelism the caller may all-reduce kl_logps first; this function does not.

    When kl_logps is absent (either side None), ``z0_fallback`` decides: "zero" (default) uses z0 = 0,
    the same as TRL's KTO without the KL term; "batch" uses the detached, clamped mean of this batch's
    own (matched) log-ratios, a cheaper but biased (upward, since the policy is trained on them)
    estimate.

    Sign convention: log-probs are log-likelihoods; the loss is minimised; rewards are β·r_θ
    (detached). Typical β: 0.1; λ_D, λ_U chosen so that λ_D·n_D / (λ_U·n_U) is in [1, 4/3].

    Deviations from the paper: none in the formula; z0 is the clamped batch mean as in the paper's
    implementation; the fallback without mismatched pairs is ours (see above). Metric ``kto/z0``.
    """
    logratios = _logratios(policy, reference)  # (B,)
    desirable = _labels(labels, logratios)
    if policy.kl_logps is not None and reference.kl_logps is not None:
        z0 = (policy.kl_logps - reference.kl_logps).mean().detach().clamp(min=0)  # ()
    elif z0_fallback == "batch":
        z0 = logratios.mean().detach().clamp(min=0)
    else:  # "zero"
        z0 = torch.zeros((), dtype=logratios.dtype, device=logratios.device)
    z0 = z0.to(logratios.dtype)
    # λ_y − λ_y·σ(x) = λ_y·σ(−x), computed directly so it keeps precision when σ(x) → 1.
    desirable_losses = desirable_weight * torch.sigmoid(-beta * (logratios - z0))  # (B,)
    undesirable_losses = undesirable_weight * torch.sigmoid(-beta * (z0 - logratios))  # (B,)
    losses = torch.where(desirable, desirable_losses, undesirable_losses)
    return LossOutput(losses=losses, rewards=(beta * logratios).detach(), metrics={"kto/z0": z0.detach()})


def bco(policy: UnpairedLogps, reference: UnpairedLogps, *, labels: Tensor, beta: float = 0.1,
        delta: float = 0.0) -> LossOutput:
    """BCO: Binary Classifier Optimization, logistic regression on implicit rewards with a shift δ.

    Formula:
        r_θ(x, y) = β · (log πθ(y|x) − log π_ref(y|x))
        L(x, y) = −log σ(r_θ − δ)      if y desirable
                = −log σ(−(r_θ − δ))   if y undesirable
        δ: reward shift, in the paper the running mean of the rewards over training.

    References:
        Jung et al., "Binary Classifier Optimization for Large Language Model Alignment",
        arXiv 2404.04656: binary cross-entropy on implicit rewards with the reward shift δ.

    Shapes: policy.logps, reference.logps (B,); ``labels`` (B,) bool, True = desirable.

    Sign convention: log-probs are log-likelihoods; the loss is minimised; rewards are r_θ (detached).
    Typical β: 0.1.

    Deviations from the paper: δ is a parameter, not state. A pure function cannot keep a running mean,
    so the caller keeps it (e.g. an exponential moving average of the metric ``bco/rewards_mean``) and
    passes ``delta=`` each step (the registry marks BCO ``running_reward_mean``, and the trainer does
    this); the configured value is the starting point (0 = no shift). The paper's
    underlying-distribution-matching (density-ratio) weights are not implemented.
    """
    rewards = beta * _logratios(policy, reference)  # (B,)
    desirable = _labels(labels, rewards)
    shifted = rewards - delta  # (B,)
    losses = torch.where(desirable, F.softplus(-shifted), F.softplus(shifted))  # −log σ(±(r − δ))
    return LossOutput(losses=losses, rewards=rewards.detach(),
                      metrics={"bco/rewards_mean": rewards.detach().mean(), "bco/delta": torch.as_tensor(float(delta))})


__all__ = ["kto", "bco"]
