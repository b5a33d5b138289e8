"""Reinforcement learning from rewards: advantages, KL estimators, the clipped policy and value losses.

Pure functions over per-token log-probs, rewards and values; the online loop (``prefkit.online``) samples,
scores and calls them. Reward combination and shaping are in ``prefkit.losses.rewards``.

Conventions shared by every function here:

- log-probs are log-likelihoods of the sampled completion tokens, higher = more likely; losses are
  minimised;
- shapes: B sequences (rows), T completion positions, G samples per prompt. Token tensors are (B, T) and
  right-padded; ``mask`` (B, T) is 1 on completion tokens and 0 on padding. The completion of a row is
  one run of 1s: a 0 after a 1 ends the episode (``gae``, ``per_token_kl_rewards``);
- advantages, returns and rewards are plain tensor maths with no ``detach``: compute them under
  ``torch.no_grad()``. The losses detach their targets themselves (old log-probs, advantages, returns,
  reference log-probs), so no gradient can leak through them;
- losses return one value per sequence, (B,): nothing is reduced across rows except where the formula
  defines a normalisation over the batch's tokens (``normalize="token"``, see ``clipped_policy_loss``);
  diagnostics in ``LossOutput.metrics`` are detached (B,) tensors under TRL's names;
- results keep the input dtype and device; shape errors are one-line ``DataError``s, unknown choices
  one-line ``ConfigError``s.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor

from prefkit.errors import ConfigError, DataError
from prefkit.losses.types import LossOutput, as_float

Scale = Literal["group_std", "batch_std", "none"]
Normalize = Literal["sequence", "token", "constant"]
Estimator = Literal["k1", "k2", "k3"]


# --- checks -----------------------------------------------------------------------------------------


def _check_2d(name: str, x: Tensor, what: str) -> None:
    if x.dim() != 2:
        raise DataError(f"{name}: {what} must be 2-D, got shape {tuple(x.shape)}")


def _check_same(name: str, like: Tensor, **tensors: Tensor | None) -> None:
    for key, x in tensors.items():
        if x is not None and x.shape != like.shape:
            raise DataError(f"{name}: {key} has shape {tuple(x.shape)}, expected {tuple(like.shape)}")


def _choice(name: str, key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name}: unknown {key}={value!r}; choose from {list(choices)}")


# --- advantages ---------------------------------------------------------------------------------------


def grpo_advantages(rewards: Tensor, *, scale: Scale = "group_std", eps: float = 1e-4) -> Tensor:
    """Group-relative advantages of GRPO: each sample's reward minus its group's mean, optionally scaled.

    Formula (i = sample of one prompt's group of G):
        "group_std": Â_i = (r_i − mean_g(r)) / (std_g(r) + eps)    (GRPO)
        "batch_std": Â_i = (r_i − mean_g(r)) / (std_batch(r) + eps)  (group mean, batch std)
        "none":      Â_i =  r_i − mean_g(r)                           (Dr. GRPO)

    References:
        Shao et al. 2024, "DeepSeekMath: Pushing the Limits of Mathematical Reasoning in Open Language
        Models", arXiv 2402.03300, Sec. 4.1.2 (outcome supervision: Â_{i,t} = r̃_i = (r_i − mean(r)) /
        std(r) for every token t). Liu et al. 2025, "Understanding R1-Zero-Like Training: A Critical
        Perspective", arXiv 2503.20783, Sec. 3.2 (Dr. GRPO drops the std division, a question-level
        difficulty bias). Liu et al. 2025, "Part I: Tricks or Traps? A Deep Dive into RL for LLM
        Reasoning", arXiv 2508.08221 (group mean with batch std; TRL's ``scale_rewards="batch"``).

    Shapes: ``rewards`` (B, G), row b = the G samples of prompt b; returns (B, G). Every token of sample i
    gets Â_i (pass the (B·G,) flattening to ``clipped_policy_loss``). std is the unbiased (Bessel) one,
    as TRL's ``torch.std``; ``eps`` keeps a group of equal rewards at Â = 0. Sign convention: rewards
    higher = better; Â > 0 raises the sample's likelihood. Deviations: none (DeepSeekMath does not state
    which std; the unbiased one is TRL's).
    """
    _check_2d("grpo_advantages", rewards, "rewards (B, G)")
    _choice("grpo_advantages", "scale", scale, ("group_std", "batch_std", "none"))
    if rewards.shape[1] < 2:
        raise DataError(f"grpo_advantages: needs G >= 2 samples per prompt, got G={rewards.shape[1]}")
    centred = rewards - rewards.mean(dim=1, keepdim=True)  # (B, G)
    if scale == "group_std":
        return centred / (rewards.std(dim=1, keepdim=True) + eps)  # (B, G)
    if scale == "batch_std":
        return centred / (rewards.std() + eps)  # (B, G)
    return centred


def rloo_advantages(rewards: Tensor) -> Tensor:
    """REINFORCE Leave-One-Out advantages: each sample's reward minus the mean of the other G − 1.

    Formula:
        Â_i = r_i − 1/(G−1) · Σ_{j≠i} r_j  =  G/(G−1) · (r_i − mean_g(r))

    References:
        Ahmadian et al. 2024, "Back to Basics: Revisiting REINFORCE Style Optimization for Learning from
        Human Feedback in LLMs", arXiv 2402.14740, the RLOO estimator (leave-one-out baseline); Kool et al.
        2019, "Buy 4 REINFORCE Samples, Get a Baseline for Free!".

    Shapes: ``rewards`` (B, G), G ≥ 2; returns (B, G). The baseline excludes the sample itself, so Â_i is
    an unbiased policy-gradient weight. Sign convention: rewards higher = better. Deviations: none; the
    paper's REINFORCE loss on the whole sequence is ``clipped_policy_loss`` with one update per batch
    (ratio = 1, never clipped) and ``normalize="constant"``, ``max_tokens=1`` (sequence sum).
    """
    _check_2d("rloo_advantages", rewards, "rewards (B, G)")
    group = rewards.shape[1]
    if group < 2:
        raise DataError(f"rloo_advantages: needs G >= 2 samples per prompt, got G={group}")
    others = (rewards.sum(dim=1, keepdim=True) - rewards) / (group - 1)  # (B, G) leave-one-out mean
    return rewards - others


def gae(rewards: Tensor, values: Tensor, mask: Tensor, *, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[Tensor, Tensor]:
    """Generalized Advantage Estimation over right-padded token sequences: (advantages, returns).

    Formula (t over completion tokens; V after the last token is 0, a terminal state):
        δ_t = r_t + γ·V_{t+1} − V_t
        Â_t = Σ_{l≥0} (γλ)^l δ_{t+l}  =  δ_t + γλ·Â_{t+1}
        R_t = Â_t + V_t                 (the value target, TD(λ) return)

    References:
        Schulman et al. 2016, "High-Dimensional Continuous Control Using Generalized Advantage
        Estimation", arXiv 1506.02438, Eq. 16 (GAE(γ, λ)); the returns as in Huang et al. 2024, "The N+
        Implementation Details of RLHF with PPO: A Case Study on TL;DR Summarization", arXiv 2403.17031.

    Shapes: ``rewards``, ``values``, ``mask`` (B, T); returns two (B, T) tensors, 0 where ``mask`` is 0.
    Each row's episode ends at its last completion token: V_{t+1} and Â_{t+1} count only where
    mask_{t+1} = 1, so rows of different lengths never read padding. Typical: γ = 1, λ = 0.95 (TRL's PPO).
    Sign convention: rewards higher = better. Deviations: none.
    """
    _check_2d("gae", rewards, "rewards (B, T)")
    _check_same("gae", rewards, values=values, mask=mask)
    mask = as_float(mask, values)  # (B, T)
    steps = rewards.shape[1]
    next_value = torch.zeros_like(values[:, 0])  # (B,)
    next_advantage = torch.zeros_like(values[:, 0])  # (B,)
    advantages = []
    for t in reversed(range(steps)):
        delta = rewards[:, t] + gamma * next_value - values[:, t]  # (B,)
        advantage = (delta + gamma * lam * next_advantage) * mask[:, t]  # (B,) 0 on padding
        advantages.append(advantage)
        next_value = values[:, t] * mask[:, t]  # (B,) V_{t+1} seen from t − 1; 0 past the end
        next_advantage = advantage
    advantages_bt = torch.stack(advantages[::-1], dim=1)  # (B, T)
    return advantages_bt, (advantages_bt + values) * mask


def whiten(x: Tensor, mask: Tensor | None = None, *, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """Masked whitening: zero mean and unit variance over every unmasked element of the batch.

    Formula (over the N elements with mask = 1):
        μ = Σ m·x / N,  σ² = Σ m·(x − μ)² / (N − 1)
        whiten(x) = (x − μ) / sqrt(σ² + eps)   (+ μ when shift_mean is False)

    References:
        Ziegler et al. 2019, "Fine-Tuning Language Models from Human Preferences", arXiv 1909.08593 (the
        lm-human-preferences PPO code whitens advantages); Huang et al. 2024, "The N+ Implementation
        Details of RLHF with PPO", arXiv 2403.17031, details on advantage whitening (``shift_mean=True``)
        and reward whitening (``shift_mean=False`` keeps the mean).

    Shapes: ``x`` any shape, ``mask`` the same shape (None = all ones), N ≥ 2; returns ``x``'s shape, 0
    where the mask is 0. The variance is unbiased (Bessel), as in TRL's ``masked_whiten``. Deviations: none.
    """
    mask_f = torch.ones_like(x) if mask is None else as_float(mask, x)
    _check_same("whiten", x, mask=mask_f)
    count = mask_f.sum()
    if count.item() < 2:
        raise DataError(f"whiten: needs at least 2 unmasked values, got {int(count.item())}")
    mean = (x * mask_f).sum() / count
    var = (((x - mean) * mask_f) ** 2).sum() / (count - 1)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask_f


# --- KL estimators ------------------------------------------------------------------------------------


def kl_k1(logps: Tensor, ref_logps: Tensor) -> Tensor:
    """k1 per-token estimator of KL(π ‖ π_ref): −log r with r = π_ref/π, i.e. log π − log π_ref.

    Formula:
        log r = log π_ref(y_t) − log π(y_t);   k1 = −log r

    References: Schulman 2020, "Approximating KL Divergence", http://joschu.net/blog/kl-approx.html (k1).

    Unbiased for KL(π ‖ π_ref) when y_t ~ π, but negative on some tokens and high-variance. The classic RLHF
    reward penalty (``per_token_kl_rewards``). Shapes: elementwise, any matching shapes.
    """
    return logps - ref_logps


def kl_k2(logps: Tensor, ref_logps: Tensor) -> Tensor:
    """k2 per-token estimator of KL(π ‖ π_ref): ½(log r)², r = π_ref/π.

    Formula:
        k2 = ½·(log π_ref(y_t) − log π(y_t))²

    References: Schulman 2020, "Approximating KL Divergence", http://joschu.net/blog/kl-approx.html (k2).

    Always ≥ 0, low variance, biased (the bias is third order in log r). Shapes: elementwise.
    """
    return 0.5 * (ref_logps - logps) ** 2


def kl_k3(logps: Tensor, ref_logps: Tensor) -> Tensor:
    """k3 per-token estimator of KL(π ‖ π_ref): (r − 1) − log r, r = π_ref/π.

    Formula:
        log r = log π_ref(y_t) − log π(y_t);   k3 = exp(log r) − 1 − log r

    References: Schulman 2020, "Approximating KL Divergence", http://joschu.net/blog/kl-approx.html (k3);
    used as GRPO's KL term, Shao et al. 2024, DeepSeekMath, arXiv 2402.03300, Eq. 4.

    Unbiased (E_π[r] = 1) and always ≥ 0 (x − 1 ≥ log x). Shapes: elementwise. Deviations: no clamp of
    log r (verl clamps k3 to ±10); it overflows only when π_ref/π exceeds e^88 in fp32.
    """
    log_ratio = ref_logps - logps
    return torch.expm1(log_ratio) - log_ratio


KL_ESTIMATORS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3}
"""The per-token KL estimators by Schulman's names, for the ``kl_estimator`` / ``estimator`` keywords."""


# --- losses -------------------------------------------------------------------------------------------


def _normalised(token_values: Tensor, mask: Tensor, normalize: Normalize, mean_tokens: float | None,
                max_tokens: float | None, name: str) -> Tensor:
    """Per-sequence values (B,) from per-token values (B, T) under one of the three normalisations."""
    _choice(name, "normalize", normalize, ("sequence", "token", "constant"))
    if mean_tokens is not None and normalize != "token":
        raise ConfigError(f"{name}: mean_tokens is read only by normalize='token', got {normalize!r}")
    if max_tokens is not None and normalize != "constant":
        raise ConfigError(f"{name}: max_tokens is read only by normalize='constant', got {normalize!r}")
    sums = (token_values * mask).sum(dim=1)  # (B,)
    if normalize == "sequence":
        return sums / mask.sum(dim=1).clamp_min(1.0)
    if normalize == "token":
        divisor = mask.sum(dim=1).mean().clamp_min(1.0) if mean_tokens is None else mean_tokens
        return sums / divisor
    return sums / (mask.shape[1] if max_tokens is None else max_tokens)


def _token_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Per-row masked mean (B,) of (B, T) values, detached; 0 for an empty row."""
    return ((x * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)).detach()


def clipped_policy_loss(logps: Tensor, old_logps: Tensor, advantages: Tensor, mask: Tensor, *,
                        clip_low: float = 0.2, clip_high: float | None = None, ref_logps: Tensor | None = None,
                        kl_coef: float = 0.0, kl_estimator: Estimator = "k3", normalize: Normalize = "sequence",
                        mean_tokens: float | None = None, max_tokens: float | None = None) -> LossOutput:
    """The PPO/GRPO clipped surrogate over per-token log-probs, with an optional KL-to-reference term.

    Formula (per token t of sequence i, m = mask):
        ρ_t    = exp(log π(y_t) − log π_old(y_t))
        ℓ_t    = −min(ρ_t·Â_t, clip(ρ_t, 1 − ε_low, 1 + ε_high)·Â_t) + β·k(log π, log π_ref)_t
        "sequence": loss_i = Σ_t m·ℓ_t / |o_i|                          (GRPO's 1/|o_i|)
        "token":    loss_i = Σ_t m·ℓ_t / mean_j |o_j|                   (DAPO / Dr. GRPO token mean)
        "constant": loss_i = Σ_t m·ℓ_t / max_tokens                     (Dr. GRPO's constant)

    References:
        Schulman et al. 2017, "Proximal Policy Optimization Algorithms", arXiv 1707.06347, Eq. 7 (L^CLIP).
        Shao et al. 2024, DeepSeekMath, arXiv 2402.03300, Eq. 3 (GRPO: per-sequence 1/|o_i| mean, −β·D_KL
        inside the token sum, Eq. 4 the k3 estimator). Yu et al. 2025, "DAPO: An Open-Source LLM
        Reinforcement Learning System at Scale", arXiv 2503.14476, Sec. 3.1 (Clip-Higher: ε_high > ε_low,
        e.g. 0.28 / 0.2) and Sec. 3.3 (token-level loss 1/Σ|o_i|). Liu et al. 2025, "Understanding
        R1-Zero-Like Training", arXiv 2503.20783, Sec. 3.2 (Dr. GRPO: a constant divisor, no length bias).

    How "token" is represented per example: each sequence's token sum is divided by the batch's mean
    completion length N/B (N = Σ mask), so the trainer's *mean* over the B rows equals Σ_{i,t} m·ℓ / N, the
    token mean. Under gradient accumulation pass ``mean_tokens`` = the whole optimizer step's mean length
    (total tokens / total sequences), so the step's example mean is its exact token mean. ``max_tokens``
    (the generation budget) defaults to T. The trainer reduces by the (weighted) mean in every mode.

    Shapes: ``logps``, ``old_logps``, ``mask``, ``ref_logps`` (B, T); ``advantages`` (B,) (one per
    sequence, broadcast to its tokens) or (B, T). Returns ``LossOutput(losses (B,), metrics)`` with detached
    (B,) metrics: ``clip_ratio`` (fraction of tokens whose gradient the clip zeroes: ρ > 1 + ε_high with
    Â > 0 or ρ < 1 − ε_low with Â < 0), ``clip_ratio/low_mean`` and ``clip_ratio/high_mean`` (each side),
    ``ratio/mean``, ``ratio/min``, ``ratio/max`` (over the row's tokens; ±inf for a row without tokens), and ``kl`` (token mean of the
    estimator) when ``ref_logps`` is given. ``old_logps``, ``advantages`` and ``ref_logps`` are detached.
    Sign convention: log-probs higher = more likely; Â > 0 pushes the likelihood up; loss minimised.
    Typical: ε 0.2 (ε_high 0.28 for DAPO), β 0.0–0.04 (GRPO 0.04; DAPO and Dr. GRPO 0). Deviations: none;
    ``clip_high=None`` means ε_high = ε_low (symmetric PPO clip).
    """
    name = "clipped_policy_loss"
    _check_2d(name, logps, "logps (B, T)")
    _check_same(name, logps, old_logps=old_logps, mask=mask, ref_logps=ref_logps)
    if advantages.shape not in (logps.shape[:1], logps.shape):
        raise DataError(f"{name}: advantages has shape {tuple(advantages.shape)}, expected "
                        f"({logps.shape[0]},) or {tuple(logps.shape)}")
    _choice(name, "kl_estimator", kl_estimator, tuple(KL_ESTIMATORS))
    high = clip_low if clip_high is None else clip_high
    if not (0.0 <= clip_low < 1.0 and high >= 0.0):
        raise ConfigError(f"{name}: needs 0 <= clip_low < 1 and clip_high >= 0, got {clip_low}, {high}")
    if kl_coef != 0.0 and ref_logps is None:
        raise ConfigError(f"{name}: kl_coef={kl_coef} needs ref_logps (reference per-token log-probs)")
    mask_f = as_float(mask, logps)  # (B, T)
    adv = advantages.detach().to(logps.dtype)
    adv = adv[:, None].expand_as(logps) if adv.dim() == 1 else adv  # (B, T)
    ratio = torch.exp(logps - old_logps.detach())  # (B, T)
    clipped = torch.clamp(ratio, 1.0 - clip_low, 1.0 + high)  # (B, T)
    token_losses = -torch.min(ratio * adv, clipped * adv)  # (B, T) −surrogate: maximise the surrogate
    metrics: dict[str, Tensor] = {}
    if ref_logps is not None:
        kl = KL_ESTIMATORS[kl_estimator](logps, ref_logps.detach())  # (B, T)
        token_losses = token_losses + kl_coef * kl
        metrics["kl"] = _token_mean(kl, mask_f)
    losses = _normalised(token_losses, mask_f, normalize, mean_tokens, max_tokens, name)  # (B,)
    with torch.no_grad():
        low_clipped = ((ratio < 1.0 - clip_low) & (adv < 0)).to(logps.dtype)  # (B, T)
        high_clipped = ((ratio > 1.0 + high) & (adv > 0)).to(logps.dtype)  # (B, T)
        valid = mask_f > 0
        metrics.update({
            "clip_ratio": _token_mean(low_clipped + high_clipped, mask_f),
            "clip_ratio/low_mean": _token_mean(low_clipped, mask_f),
            "clip_ratio/high_mean": _token_mean(high_clipped, mask_f),
            "ratio/mean": _token_mean(ratio, mask_f),
            "ratio/min": torch.where(valid, ratio, torch.full_like(ratio, float("inf"))).amin(dim=1),
            "ratio/max": torch.where(valid, ratio, torch.full_like(ratio, float("-inf"))).amax(dim=1),
        })
    return LossOutput(losses=losses, metrics={k: v.detach() for k, v in metrics.items()})


def clipped_value_loss(values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, *,
                       clip: float = 0.2, normalize: Normalize = "sequence", mean_tokens: float | None = None,
                       max_tokens: float | None = None) -> LossOutput:
    """PPO's clipped value loss: the larger of the clipped and unclipped squared errors, halved.

    Formula (per token t):
        V^clip_t = V_old,t + clip(V_t − V_old,t, −c, c)
        ℓ_t      = ½·max((V_t − R_t)², (V^clip_t − R_t)²)
        loss_i   = the normalisation of ``clipped_policy_loss`` over ℓ_t (default: token mean per row)

    References:
        Huang et al. 2024, "The N+ Implementation Details of RLHF with PPO: A Case Study on TL;DR
        Summarization", arXiv 2403.17031 (value clipping and the ½ factor, as in lm-human-preferences and
        TRL's PPO); the clipped value loss goes back to OpenAI baselines' PPO2 (Dhariwal et al. 2017).

    Shapes: ``values``, ``old_values``, ``returns``, ``mask`` (B, T); returns ``LossOutput(losses (B,),
    metrics)`` with detached (B,) ``val/clipfrac`` (fraction of tokens where the clipped error is the larger)
    and ``val/error`` (token mean of (V − R)²). ``old_values`` and ``returns`` are detached. Sign
    convention: loss minimised. Typical: c = 0.2 (TRL's ``cliprange_value``). Deviations: TRL takes the
    token mean over the whole batch; that is ``normalize="token"`` here, the default is per row.
    """
    name = "clipped_value_loss"
    _check_2d(name, values, "values (B, T)")
    _check_same(name, values, old_values=old_values, returns=returns, mask=mask)
    mask_f = as_float(mask, values)  # (B, T)
    old_values, returns = old_values.detach(), returns.detach()
    clipped = old_values + torch.clamp(values - old_values, -clip, clip)  # (B, T)
    unclipped_error = (values - returns) ** 2  # (B, T)
    clipped_error = (clipped - returns) ** 2  # (B, T)
    token_losses = 0.5 * torch.max(unclipped_error, clipped_error)  # (B, T)
    losses = _normalised(token_losses, mask_f, normalize, mean_tokens, max_tokens, name)  # (B,)
    metrics = {"val/clipfrac": _token_mean((clipped_error > unclipped_error).to(values.dtype), mask_f),
               "val/error": _token_mean(unclipped_error, mask_f)}
    return LossOutput(losses=losses, metrics=metrics)


def _last_index(mask: Tensor, name: str) -> Tensor:
    """Index (B,) of each row's last completion token; a DataError for a row without one."""
    present = mask > 0  # (B, T)
    if not bool(present.any(dim=1).all()):
        raise DataError(f"{name}: every row needs at least one completion token (mask = 1)")
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(present)  # (B, T)
    return torch.where(present, positions, torch.full_like(positions, -1)).amax(dim=1)


def per_token_kl_rewards(scores: Tensor, logps: Tensor, ref_logps: Tensor, mask: Tensor, *,
                         kl_coef: float = 0.05, estimator: Estimator = "k1") -> Tensor:
    """The classic RLHF per-token reward: −β·KL on every completion token, the score added at the last.

    Formula (t over the completion, T_i = index of the last completion token of row i):
        r_t = −β·k(log π, log π_ref)_t + [t = T_i]·score_i,    k = k1 = log π − log π_ref by default

    References:
        Ziegler et al. 2019, "Fine-Tuning Language Models from Human Preferences", arXiv 1909.08593, the
        KL-penalised reward R(x, y) = r(x, y) − β·log(π(y|x)/ρ(y|x)), here spread over tokens; Ouyang et al. 2022,
        arXiv 2203.02155, Eq. 2; Huang et al. 2024, arXiv 2403.17031 (score at the EOS token).

    Shapes: ``scores`` (B,), ``logps``, ``ref_logps``, ``mask`` (B, T); returns (B, T), 0 on padding; feed
    it to ``gae``. Every row needs one completion token. Sign convention: rewards higher = better; a
    policy more likely than the reference pays β·(log π − log π_ref). Typical: β 0.01–0.1 (TRL's PPO
    0.05). Deviations: the estimator is selectable (TRL's ``kl_estimator``), k1 is the paper's.
    """
    name = "per_token_kl_rewards"
    _check_2d(name, logps, "logps (B, T)")
    _check_same(name, logps, ref_logps=ref_logps, mask=mask)
    if scores.shape != logps.shape[:1]:
        raise DataError(f"{name}: scores has shape {tuple(scores.shape)}, expected ({logps.shape[0]},)")
    _choice(name, "estimator", estimator, tuple(KL_ESTIMATORS))
    mask_f = as_float(mask, logps)  # (B, T)
    rewards = -kl_coef * KL_ESTIMATORS[estimator](logps, ref_logps) * mask_f  # (B, T)
    last = _last_index(mask, name)  # (B,)
    return rewards.scatter_add(1, last[:, None], scores.to(rewards.dtype)[:, None])


__all__ = ["grpo_advantages", "rloo_advantages", "gae", "whiten", "kl_k1", "kl_k2", "kl_k3", "KL_ESTIMATORS",
           "clipped_policy_loss", "clipped_value_loss", "per_token_kl_rewards"]
