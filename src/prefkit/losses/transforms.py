"""Input transforms usable with any pairwise loss: WPO pair weights and LD-DPO length desensitisation.

These are not losses. ``wpo_weights`` gives per-pair weights (B,) that the trainer multiplies into the
per-example losses of any pairwise loss; ``ld_dpo`` rewrites the sequence log-probs of a
:class:`PairLogps` (apply it to the policy *and* the reference) before any pairwise loss sees them.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor

from prefkit.errors import ConfigError
from prefkit.losses.types import PairLogps, as_float


def wpo_weights(policy: PairLogps) -> Tensor:
    """Weighted Preference Optimization (WPO) pair weights, (B,), detached, in (0, 1].

    Zhou et al. 2024, "WPO: Enhancing RLHF with Weighted Preference Optimization", arXiv 2406.11827:
    off-policy pairs are re-weighted by how likely the current policy is to generate them::

        w(x, y)        = exp(log π(y|x) / |y|)        (length-normalised sequence probability)
        w(x, y_w, y_l) = w(x, y_w) · w(x, y_l)
        loss_i ← w_i · loss_i                         (any pairwise loss; the trainer multiplies)

    Variant: the length-normalised one, from summed log-probs and token counts. The paper's
    preferred "sampled alignment" variant divides each token probability by Σ_v π(v|·)², which needs
    the full next-token distribution; it is not computed here. Weights are detached (no gradient
    flows through them, as in the paper). Mean log-probs are clamped to ≤ 0 so the weight stays
    ≤ 1 even on malformed inputs.

    Shapes: ``policy`` tensors (B,); returns (B,) with the dtype of ``policy.chosen_logps``.
    """
    with torch.no_grad():
        chosen_tokens = as_float(policy.chosen_tokens, policy.chosen_logps).clamp_min(1.0)
        rejected_tokens = as_float(policy.rejected_tokens, policy.rejected_logps).clamp_min(1.0)
        chosen_mean = (policy.chosen_logps / chosen_tokens).clamp(max=0.0)  # (B,)
        rejected_mean = (policy.rejected_logps / rejected_tokens).clamp(max=0.0)  # (B,)
        return torch.exp(chosen_mean + rejected_mean).detach()


def _desensitised(token_logps: Tensor, mask: Tensor, public_len: Tensor, alpha: float) -> Tensor:
    """Per-token log-probs (B, T) with tokens past ``public_len`` (B,) completion tokens scaled by α."""
    mask = as_float(mask, token_logps)  # (B, T)
    position = torch.cumsum(mask, dim=1)  # (B, T) 1-based index among completion tokens
    scale = torch.where(position <= public_len[:, None], torch.ones_like(mask), torch.full_like(mask, alpha))
    return token_logps * mask * scale  # (B, T)


def ld_dpo(logps: PairLogps, *, alpha: float) -> PairLogps:
    """Length-Desensitised DPO (LD-DPO): down-weight the tokens past the shorter response's length.

    Liu et al. 2024, "Length Desensitization in Direct Preference Optimization", arXiv 2409.06411:
    with l_p = min(|y_w|, |y_l|) (the "public length") the sequence log-likelihood becomes::

        log π̂(y|x) = Σ_{t ≤ l_p} log π(y_t|x, y_<t) + α·Σ_{t > l_p} log π(y_t|x, y_<t)

    so only the longer response of each pair changes. α = 1 is the identity; α ∈ [0, 1] (paper:
    model-dependent, e.g. 0.2–0.8). Apply to the policy and to the reference log-probs (the masks are
    the same, so l_p is too), then call any pairwise loss.

    Needs per-token log-probs: ``chosen_token_logps``/``rejected_token_logps`` (B, T) and the masks
    (spec ``needs`` must include ``"token_logps"``). Returns a new ``PairLogps`` whose summed and
    per-token log-probs are the desensitised ones; token counts are unchanged.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"ld_dpo: alpha={alpha!r} is outside [0, 1]; pick a value in that range")
    if logps.chosen_token_logps is None or logps.rejected_token_logps is None \
            or logps.chosen_mask is None or logps.rejected_mask is None:
        raise ConfigError("ld_dpo needs per-token log-probs and masks; request 'token_logps' "
                          "from the trainer when LD-DPO is on")
    chosen_len = logps.chosen_mask.sum(dim=1)  # (B,)
    rejected_len = logps.rejected_mask.sum(dim=1)  # (B,)
    public_len = as_float(torch.minimum(chosen_len, rejected_len), logps.chosen_token_logps)  # (B,)
    chosen_token_logps = _desensitised(logps.chosen_token_logps, logps.chosen_mask, public_len, alpha)
    rejected_token_logps = _desensitised(logps.rejected_token_logps, logps.rejected_mask, public_len, alpha)
    return replace(logps, chosen_logps=chosen_token_logps.sum(dim=1),
                   rejected_logps=rejected_token_logps.sum(dim=1),
                   chosen_token_logps=chosen_token_logps, rejected_token_logps=rejected_token_logps)


__all__ = ["wpo_weights", "ld_dpo"]
