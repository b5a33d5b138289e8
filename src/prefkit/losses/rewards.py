"""Rewards for RL: several components combined by weights or Lagrange multipliers, shaping, selection.

Pure functions on reward tensors, before the advantages of ``prefkit.losses.rl``. Shapes: B samples (or
B prompts × G samples), C reward components. Sign convention: rewards higher = better. Nothing is
detached (compute rewards under ``torch.no_grad()``; the losses detach their targets). Shape errors are
one-line ``DataError``s, unknown choices one-line ``ConfigError``s.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from prefkit.errors import ConfigError, DataError

Sense = Literal["ge", "le", "eq"]

# The sign each constraint sense gives its multiplier in the mixed reward and in the dual step:
#   "ge": mean_c ≥ target_c  → reward + λ_c·r_c,  λ_c ← max(0, λ_c + η·(target_c − mean_c))
#   "le": mean_c ≤ target_c  → reward − λ_c·r_c,  λ_c ← max(0, λ_c + η·(mean_c − target_c))
#   "eq": mean_c = target_c  → reward + λ_c·r_c,  λ_c ←        λ_c + η·(target_c − mean_c)   (λ free)
_SIGN: dict[str, float] = {"ge": 1.0, "le": -1.0, "eq": 1.0}


def _check_components(name: str, components: Tensor, count: int, what: str) -> None:
    if components.dim() != 2 or components.shape[1] != count:
        raise DataError(f"{name}: components must be (B, {count}) to match {what}, "
                        f"got shape {tuple(components.shape)}")


def _senses(name: str, senses: tuple[Sense, ...] | None, count: int) -> tuple[Sense, ...]:
    senses = ("ge",) * count if senses is None else tuple(senses)
    if len(senses) != count:
        raise DataError(f"{name}: {len(senses)} senses for {count} constraints; give one per component")
    for sense in senses:
        if sense not in _SIGN:
            raise ConfigError(f"{name}: unknown constraint sense {sense!r}; choose from {list(_SIGN)}")
    return senses


def combine_rewards(components: Tensor, weights: Tensor) -> Tensor:
    """A fixed-weight sum of C reward components per sample.

    Formula:
        r_b = Σ_c w_c·r_{b,c}

    References: the weighted sum of reward functions of TRL's GRPO trainer (``reward_weights``); the
    "fixed weights" baseline of Moskovitz et al. 2023 (arXiv 2310.04373).

    Shapes: ``components`` (B, C), ``weights`` (C,); returns (B,). Log the per-component means
    (``components.mean(0)``) next to the combined one. Deviations: none.
    """
    if weights.dim() != 1:
        raise DataError(f"combine_rewards: weights must be (C,), got shape {tuple(weights.shape)}")
    _check_components("combine_rewards", components, weights.shape[0], "weights")
    return components @ weights.to(components.dtype)


def lagrangian_rewards(components: Tensor, multipliers: Tensor, *, senses: tuple[Sense, ...] | None = None,
                       objective: Tensor | None = None) -> Tensor:
    """The mixed reward of constrained RLHF: the objective plus each constrained component times ±λ_c.

    Formula (the Lagrangian's reward, maximised by the policy):
        r_b = r^obj_b + Σ_c s_c·λ_c·r_{b,c},   s_c = +1 for "ge" and "eq", −1 for "le"

    References:
        Moskovitz et al. 2023, "Confronting Reward Model Overoptimization with Constrained RLHF", arXiv
        2310.04373, the Lagrangian relaxation (each component RM kept at its threshold, the
        multipliers as dynamic weights; equation number not checked). Altman 1999, "Constrained Markov
        Decision Processes".

    Shapes: ``components`` (B, C), ``multipliers`` (C,), ``objective`` (B,) or None (0: a pure
    constraint-satisfaction problem, e.g. with the KL penalty added per token as the objective); returns
    (B,). ``senses`` defaults to all "ge". Deviations: see ``lagrange_update``.
    """
    name = "lagrangian_rewards"
    if multipliers.dim() != 1:
        raise DataError(f"{name}: multipliers must be (C,), got shape {tuple(multipliers.shape)}")
    _check_components(name, components, multipliers.shape[0], "multipliers")
    signs = torch.tensor([_SIGN[s] for s in _senses(name, senses, multipliers.shape[0])],
                         dtype=components.dtype, device=components.device)  # (C,)
    mixed = components @ (signs * multipliers.to(components.dtype))  # (B,)
    if objective is None:
        return mixed
    if objective.shape != mixed.shape:
        raise DataError(f"{name}: objective has shape {tuple(objective.shape)}, expected {tuple(mixed.shape)}")
    return objective + mixed


def lagrange_update(multipliers: Tensor, component_means: Tensor, targets: Tensor, *, lr: float = 0.01,
                    senses: tuple[Sense, ...] | None = None, max_multiplier: float | None = None) -> Tensor:
    """One projected gradient step on the Lagrange multipliers of constrained RLHF.

    Formula (the dual step: descend the Lagrangian in λ, then project λ ≥ 0 for inequalities):
        "ge" (keep mean_c ≥ target_c): λ_c ← max(0, λ_c + η·(target_c − mean_c))
        "le" (keep mean_c ≤ target_c): λ_c ← max(0, λ_c + η·(mean_c − target_c))
        "eq" (keep mean_c = target_c): λ_c ←        λ_c + η·(target_c − mean_c)
        then λ_c ← min(λ_c, max_multiplier) when given

    A violated constraint grows its multiplier, so the mixed reward of ``lagrangian_rewards`` pushes that
    component harder (up for "ge", down for "le"); a satisfied one shrinks it back towards 0.

    References:
        Moskovitz et al. 2023, "Confronting Reward Model Overoptimization with Constrained RLHF", arXiv
        2310.04373, the Lagrangian method (multipliers learned by gradient steps on the Lagrangian,
        thresholds at each component RM's proxy point; equation number not checked).

    Shapes: ``multipliers``, ``component_means``, ``targets`` (C,); returns the new multipliers (C,).
    ``component_means`` are the batch means of each component under the current policy. Typical: η
    0.01–0.1 on rewards of unit scale. Deviations: the paper's variants (μ-PPO, All-PPO, ξ-PPO) choose
    which terms are constraints and parameterise the multipliers (e.g. through a sigmoid); this is the
    plain projected step that each of them reduces to, with an optional cap instead.
    """
    name = "lagrange_update"
    if multipliers.dim() != 1:
        raise DataError(f"{name}: multipliers must be (C,), got shape {tuple(multipliers.shape)}")
    for key, x in (("component_means", component_means), ("targets", targets)):
        if x.shape != multipliers.shape:
            raise DataError(f"{name}: {key} has shape {tuple(x.shape)}, expected {tuple(multipliers.shape)}")
    chosen = _senses(name, senses, multipliers.shape[0])
    signs = torch.tensor([_SIGN[s] for s in chosen], dtype=multipliers.dtype,
                         device=multipliers.device)  # (C,)
    step = multipliers + lr * signs * (targets - component_means).to(multipliers.dtype)  # (C,)
    inequality = torch.tensor([s != "eq" for s in chosen], device=multipliers.device)  # (C,)
    step = torch.where(inequality, step.clamp_min(0.0), step)
    return step if max_multiplier is None else step.clamp_max(max_multiplier)


def par_shaping(rewards: Tensor, reference_rewards: Tensor) -> Tensor:
    """Preference As Reward (PAR): the sigmoid of the reward centred on a reference response's reward.

    Formula (M reference responses y_ref^m of the same prompt):
        r_RL(x, y) = 1/M · Σ_m σ(r(x, y) − r(x, y_ref^m))

    σ(r − r_ref) is the reward model's own Bradley–Terry probability that y beats the reference, so r_RL is
    bounded in (0, 1), equals ½ at the reference, rises fastest there and saturates after. "Centred" is the
    paper's term for r − r_ref: the reward measured from the reference response's reward of the same
    prompt (typically a response of the SFT/reference policy), not from a batch mean.

    References:
        Fu et al. 2025, "Reward Shaping to Mitigate Reward Hacking in RLHF", arXiv 2502.18770, the
        PAR reward (equation number not checked; the principles: bounded, fast initial growth then
        convergence, a function of the centred reward). The paper finds one reference response enough.

    Shapes: ``rewards`` (B,); ``reference_rewards`` (B,) (one reference each) or (B, M); returns (B,).
    Sign convention: rewards higher = better. Deviations: none known.
    """
    if rewards.dim() != 1:
        raise DataError(f"par_shaping: rewards must be (B,), got shape {tuple(rewards.shape)}")
    refs = reference_rewards[:, None] if reference_rewards.dim() == 1 else reference_rewards  # (B, M)
    if refs.dim() != 2 or refs.shape[0] != rewards.shape[0] or refs.shape[1] < 1:
        raise DataError(f"par_shaping: reference_rewards must be ({rewards.shape[0]},) or "
                        f"({rewards.shape[0]}, M), got shape {tuple(reference_rewards.shape)}")
    return torch.sigmoid(rewards[:, None] - refs).mean(dim=1)


def clip_rewards(rewards: Tensor, low: float | None = None, high: float | None = None) -> Tensor:
    """Rewards clamped to [low, high] (None = unbounded on that side).

    Formula: clip(r, low, high) = min(max(r, low), high).

    References: Huang et al. 2024, "The N+ Implementation Details of RLHF with PPO", arXiv 2403.17031
    (reward normalisation and clipping in the RLHF PPO recipe). Shapes: any; returns ``rewards``' shape.
    """
    if low is not None and high is not None and low > high:
        raise ConfigError(f"clip_rewards: low={low} is above high={high}")
    return rewards.clamp(min=low, max=high)


def rsf_select(rewards: Tensor, k: int = 1) -> Tensor:
    """Rejection-sampling fine-tuning (RAFT) selection: the k best of G samples per prompt.

    Formula:
        S_b = top-k_{i ∈ 1..G} r_{b,i}   (the SFT set of the next round: (x_b, y_{b,i}) for i ∈ S_b)

    References:
        Dong et al. 2023, "RAFT: Reward rAnked FineTuning for Generative Foundation Model Alignment", arXiv
        2304.06767, Algorithm 1 (sample K per prompt, keep the best by the reward, fine-tune).

    Shapes: ``rewards`` (B, G), 1 ≤ k ≤ G; returns the selected indices (B, k), long, best first; ties go
    to the lower index (a stable sort). Deviations: RAFT's global ranking variant (top fraction of the
    whole batch) is ``rewards.flatten().topk``; this is its per-prompt (local) ranking.
    """
    if rewards.dim() != 2:
        raise DataError(f"rsf_select: rewards must be (B, G), got shape {tuple(rewards.shape)}")
    if not 1 <= k <= rewards.shape[1]:
        raise ConfigError(f"rsf_select: k={k} must be between 1 and G={rewards.shape[1]}")
    return torch.sort(rewards, dim=1, descending=True, stable=True).indices[:, :k]


def spo_rewards(preference_matrix: Tensor) -> Tensor:
    """Self-Play Preference Optimization (SPO) rewards: each sample's win share against the other G − 1.

    Formula (P_{b,i,j} = probability or indicator that sample i beats sample j for prompt b):
        r_{b,i} = 1/(G−1) · Σ_{j≠i} P_{b,i,j}

    References:
        Swamy et al. 2024, "A Minimaximalist Approach to Reinforcement Learning from Human Feedback", arXiv
        2401.04056, Algorithm 1 (the reward of a trajectory is the fraction of the other sampled
        trajectories the preference function prefers it to; then any RL algorithm).

    Shapes: ``preference_matrix`` (B, G, G), G ≥ 2, values in [0, 1] (ties ½); the diagonal is ignored.
    Returns (B, G) in [0, 1]; feed it to ``grpo_advantages`` / ``rloo_advantages``. A consistent judge has
    P_{i,j} + P_{j,i} = 1, then the rewards of a group average ½; that is not required. Deviations: none
    intended; a sample is never compared with itself (G − 1 opponents).
    """
    name = "spo_rewards"
    if preference_matrix.dim() != 3 or preference_matrix.shape[1] != preference_matrix.shape[2]:
        raise DataError(f"{name}: preference_matrix must be (B, G, G), got {tuple(preference_matrix.shape)}")
    group = preference_matrix.shape[1]
    if group < 2:
        raise DataError(f"{name}: needs G >= 2 samples per prompt, got G={group}")
    if not bool(((preference_matrix >= 0) & (preference_matrix <= 1)).all()):
        raise DataError(f"{name}: preference probabilities must be in [0, 1]")
    off_diagonal = 1.0 - torch.eye(group, dtype=preference_matrix.dtype, device=preference_matrix.device)
    return (preference_matrix * off_diagonal).sum(dim=2) / (group - 1)  # (B, G)


def maxmin_weights(group_means: Tensor, *, temperature: float = 0.0) -> Tensor:
    """The weights of the egalitarian (max-min) objective over K groups: the worst-off group's reward.

    Formula (m_k = the mean reward of group k's reward function over the current samples):
        objective:    max_π min_k E_{y~π}[r_k(x, y)]
        τ = 0:        α_k = 1/|argmin_j m_j| on the worst group(s), 0 elsewhere (ties share evenly)
        τ > 0:        α_k = softmax(−m/τ)_k   (the gradient of the soft minimum −τ·log Σ_k exp(−m_k/τ))
    then the policy is trained on the reward r_n = Σ_k α_k·r_{n,k} (``combine_rewards``).

    With τ = 0 each policy step ascends the reward of the group that is currently worst off, which is a
    (super)gradient step on min_k E[r_k]; as τ → ∞ the weights tend to uniform (the plain mean over
    groups, population weights left out). A small τ smooths the switching between nearly tied groups.

    References:
        Chakraborty et al. 2024, "MaxMin-RLHF: Alignment with Diverse Human Preferences", arXiv
        2402.08925 (ICML 2024): the egalitarian policy objective max_π min_u F_{r_u}(π) over the group reward models
        learned by EM, optimised by updating the policy with the reward of the group whose expected reward
        is lowest at each iteration (equation and algorithm numbers not checked).

    Shapes: ``group_means`` (K,), K ≥ 1, finite; returns (K,) non-negative weights summing to 1, of
    ``group_means``' floating dtype. Sign convention: rewards higher = better. Deviations: the soft
    minimum (τ > 0) is an option of ours, not in the paper.
    """
    name = "maxmin_weights"
    if group_means.dim() != 1 or group_means.shape[0] < 1:
        raise DataError(f"{name}: group_means must be (K,) with K >= 1, got shape {tuple(group_means.shape)}")
    if not bool(torch.isfinite(group_means).all()):
        raise DataError(f"{name}: group_means must be finite, got {group_means.tolist()}")
    if not (temperature >= 0.0 and temperature < float("inf")):
        raise ConfigError(f"{name}: temperature must be finite and >= 0; got {temperature}")
    means = group_means if group_means.is_floating_point() else group_means.double()
    if temperature > 0:
        return torch.softmax(-means / temperature, dim=0)
    worst = (means == means.min()).to(means.dtype)  # (K,) 1 on the worst group(s)
    return worst / worst.sum()


__all__ = ["combine_rewards", "lagrangian_rewards", "lagrange_update", "par_shaping", "clip_rewards",
           "rsf_select", "spo_rewards", "maxmin_weights"]
