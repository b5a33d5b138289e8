"""Listwise losses: a prompt with K ranked responses, item 0 the most preferred.

Every function here has the signature
``fn(policy: ListLogps, reference: ListLogps | None, *, scores: Tensor | None = None, **params)``
and returns a ``LossOutput`` with

- ``losses`` (B,): one value per list, not reduced;
- ``rewards`` (B, K): the detached per-item score the loss ranks by (β·log-ratio, or PRO's
  length-normalised log-prob), items in the input order;
- ``chosen_rewards`` (B,): ``rewards[:, 0]`` (the best item);
- ``rejected_rewards`` (B,): the mean of ``rewards[:, 1:]`` (all the other items), so that
  ``rewards/margins`` means "best item against the average of the rest".

``scores`` (B, K) are graded labels ψ (higher = better, e.g. ratings the ranking came from). Losses that
use them fall back to rank labels ψ_k = K − 1 − k when they are None (documented per loss).

Sign convention: log-probs are log-likelihoods, higher = more likely; every loss is minimised.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from prefkit.losses.types import ListLogps, LossOutput, as_float


def plackett_luce_nll(s: Tensor) -> Tensor:
    """−log P_PL(order 0 ≻ 1 ≻ … ≻ K−1 | scores s), per row; s is (B, K), returns (B,).

    ``Σ_k [logsumexp(s_k, …, s_{K−1}) − s_k]``; the last term (k = K−1) is exactly 0.
    """
    tail_lse = torch.logcumsumexp(s.flip(-1), dim=-1).flip(-1)  # (B, K) logsumexp over items >= k
    return (tail_lse - s).sum(-1)


def rank_labels(logps: Tensor) -> Tensor:
    """Graded labels from positions: ψ_k = K − 1 − k, shaped and typed like ``logps`` (B, K)."""
    k = logps.shape[-1]
    psi = torch.arange(k - 1, -1, -1, device=logps.device, dtype=logps.dtype)  # (K,)
    return psi.expand_as(logps)


def graded_labels(scores: Tensor | None, like: Tensor) -> Tensor:
    """Graded labels ψ (B, K) typed like ``like``: ``scores``, with rank labels for rows without scores.

    A row is "without scores" when ``scores`` is None or the row holds a NaN (the collator fills lists
    that have no scores with NaN when other lists in the batch have them).
    """
    ranks = rank_labels(like)
    if scores is None:
        return ranks
    psi = as_float(scores, like)  # (B, K)
    missing = torch.isnan(psi).any(-1, keepdim=True)  # (B, 1)
    return torch.where(missing, ranks, psi)


def _list_output(losses: Tensor, rewards: Tensor, **metrics: Tensor) -> LossOutput:
    rewards = rewards.detach()  # (B, K)
    return LossOutput(losses=losses, chosen_rewards=rewards[:, 0], rejected_rewards=rewards[:, 1:].mean(-1),
                      rewards=rewards, metrics={k: v.detach() for k, v in metrics.items()})


def _logratios(policy: ListLogps, reference: ListLogps | None) -> Tensor:
    if reference is None:
        raise ValueError("this listwise loss needs reference log-probs (spec.needs_reference is True)")
    return policy.logps - reference.logps  # (B, K)


def pl_dpo(policy: ListLogps, reference: ListLogps | None, *, scores: Tensor | None = None,
           beta: float = 0.1) -> LossOutput:
    """Plackett–Luce DPO: DPO's objective generalised from pairs to full rankings.

    Formula:
        s_k = β · (log πθ(y_k|x) − log π_ref(y_k|x))
        L = −Σ_{k=0}^{K−2} log( exp(s_k) / Σ_{j=k}^{K−1} exp(s_j) )
        With K = 2 this is DPO: L = −log σ(s_0 − s_1).

    References:
        Rafailov et al., "Direct Preference Optimization: Your Language Model is Secretly a Reward
        Model", arXiv 2305.18290, Appendix A.3 (the DPO objective under the Plackett–Luce model).

    Shapes: policy.logps, reference.logps (B, K), items best first. ``scores`` is accepted and ignored
    (the loss only uses the order).

    Sign convention: log-probs are log-likelihoods; the loss is minimised; rewards are s_k (detached).
    Typical β: 0.1–0.5, as for DPO.

    Deviations from the paper: none (the paper's sum over the ranking, per example, not averaged).
    """
    s = beta * _logratios(policy, reference)  # (B, K)
    return _list_output(plackett_luce_nll(s), s)


def lipo(policy: ListLogps, reference: ListLogps | None, *, scores: Tensor | None = None,
         beta: float = 0.1, form: str = "logistic", weighting: str = "lambda",
         delta: float = 1.0) -> LossOutput:
    """LiPO: listwise preference optimisation as learning-to-rank over β-scaled log-ratios.

    Formula:
        s_i = β · (log πθ(y_i|x) − log π_ref(y_i|x)),   ψ_i = graded label of item i
        ℓ(s_i − s_j) = log(1 + exp(−(s_i − s_j)))        form="logistic"
                     = max(0, δ − (s_i − s_j))             form="hinge"
        L = Σ_{i,j: ψ_i > ψ_j} Δ_ij · ℓ(s_i − s_j)
        Δ_ij = |G_i − G_j| · |1/D(τ_i) − 1/D(τ_j)|        weighting="lambda" (LiPO-λ)
             = 1                                          weighting="none"
        G_i = 2^ψ_i − 1,  D(τ) = log2(1 + τ),  τ_i = rank of item i under the current s (1 = top)

        With K = 2 and weighting="none": logistic = DPO, hinge = max(0, δ − β·h) = β·SLiC(δ/β) on the
        log-ratio margin h (SLiC with a reference; see the tests).

    References:
        Liu et al., "LiPO: Listwise Preference Optimization through Learning-to-Rank",
        arXiv 2402.01878 (pairwise logistic / hinge losses and LiPO-λ with Lambda weights Δ_ij, from
        LambdaLoss).

    Shapes: policy.logps, reference.logps (B, K), items best first; ``scores`` (B, K) graded labels ψ,
    higher = better. When ``scores`` is None (or a row holds NaN), ψ_k = K − 1 − k (the ranking alone;
    all pairs ordered). Pairs with equal labels contribute nothing.

    Sign convention: log-probs are log-likelihoods; the loss is minimised; rewards are s_i (detached).
    Typical β: 0.05–0.5; δ (hinge margin, in units of s): 1.

    Deviations from the paper: the per-example loss is the sum over ordered pairs (no normalisation by
    the number of pairs); the ranks τ_i come from the detached current scores, ties broken by position.
    """
    s = beta * _logratios(policy, reference)  # (B, K)
    psi = graded_labels(scores, s)  # (B, K)
    diff = s[:, :, None] - s[:, None, :]  # (B, K, K) s_i − s_j
    ordered = psi[:, :, None] > psi[:, None, :]  # (B, K, K) ψ_i > ψ_j
    if form == "hinge":
        pair_losses = torch.relu(delta - diff)  # (B, K, K)
    else:  # "logistic"
        pair_losses = F.softplus(-diff)  # (B, K, K)
    if weighting == "lambda":
        with torch.no_grad():
            gains = torch.exp2(psi) - 1  # (B, K)
            order = torch.argsort(s, dim=-1, descending=True, stable=True)  # (B, K)
            ranks = torch.empty_like(order)
            ranks.scatter_(-1, order, torch.arange(1, s.shape[-1] + 1, device=s.device).expand_as(order))
            discounts = 1 / torch.log2(1 + ranks.to(s.dtype))  # (B, K) 1/D(τ_i)
            weights = ((gains[:, :, None] - gains[:, None, :]).abs()
                       * (discounts[:, :, None] - discounts[:, None, :]).abs())  # (B, K, K)
            weights = torch.where(ordered, weights, torch.zeros_like(weights))
        pair_losses = weights * pair_losses
    losses = torch.where(ordered, pair_losses, torch.zeros_like(pair_losses)).sum((-2, -1))  # (B,)
    return _list_output(losses, s)


def pro(policy: ListLogps, reference: ListLogps | None = None, *, scores: Tensor | None = None,
        sft_weight: float = 0.05, temperature: float = 1.0,
        dynamic_temperature: bool = True) -> LossOutput:
    """PRO: Preference Ranking Optimization, an iterated softmax over the ranking plus SFT on the best.

    Formula:
        r_i = log πθ(y_i|x) / |y_i|                       (length-normalised, reference-free)
        L = −Σ_{k=0}^{K−2} log( exp(r_k / T_k^k) / Σ_{i=k}^{K−1} exp(r_i / T_k^i) ) + w · (−r_0)
        dynamic temperature (needs scores ψ, the reward-model scores the ranking came from):
            1 / T_k^i = ψ_k − ψ_i  (i > k),   1 / T_k^k = max_{i>k} (ψ_k − ψ_i)
        otherwise T_k^i = T (the ``temperature`` param) for all i, k.

    References:
        Song et al., "Preference Ranking Optimization for Human Alignment", arXiv 2306.17492,
        the L_PRO objective with the dynamic temperature T_k^i, plus β·L_SFT (our w is the paper's β).

    Shapes: policy.logps, policy.tokens (B, K), items best first; ``scores`` (B, K) reward scores ψ,
    higher = better, used only with ``dynamic_temperature=True`` (rows holding NaN use the constant
    temperature). ``reference`` is ignored.

    Sign convention: log-probs are log-likelihoods; the loss is minimised; rewards are r_i (detached).
    Typical values: w (sft_weight) 0.05, T 1.

    Deviations from the paper: score gaps ψ_k − ψ_i are clamped at 0 (a tie or an out-of-order score
    gives a zero logit instead of an infinite or negative temperature); the SFT term is the
    length-normalised NLL of item 0 (the same r_0 the ranking term uses).
    """
    r = policy.logps / as_float(policy.tokens, policy.logps)  # (B, K)
    k = r.shape[-1]
    idx = torch.arange(k, device=r.device)
    later = idx[None, :] > idx[:, None]  # (K, K) [k, i]: i > k
    logits = (r / temperature)[:, None, :].expand(-1, k, -1)  # (B, K, K) constant temperature
    if scores is not None and dynamic_temperature:
        psi = as_float(scores, r)  # (B, K)
        scored = ~torch.isnan(psi).any(-1)  # (B,) rows without scores keep the constant temperature
        psi = torch.nan_to_num(psi)
        gaps = (psi[:, :, None] - psi[:, None, :]).clamp(min=0)  # (B, K, K) [k, i]: ψ_k − ψ_i
        gaps = torch.where(later, gaps, torch.zeros_like(gaps))
        self_inv_t = gaps.max(dim=-1).values  # (B, K) 1/T_k^k
        inv_t = torch.where(idx[None, :] == idx[:, None], self_inv_t[:, :, None], gaps)  # (B, K, K)
        dynamic = r[:, None, :] * inv_t  # (B, K, K) [k, i]: r_i / T_k^i
        logits = torch.where(scored[:, None, None], dynamic, logits)
    considered = idx[None, :] >= idx[:, None]  # (K, K) [k, i]: i >= k
    logits = torch.where(considered, logits, torch.full_like(logits, float("-inf")))
    own = torch.diagonal(logits, dim1=-2, dim2=-1)  # (B, K) r_k / T_k^k
    rank_losses = (torch.logsumexp(logits, dim=-1) - own)[:, :-1].sum(-1)  # (B,) last step is 0
    sft = -r[:, 0]  # (B,) length-normalised NLL of the best item
    losses = rank_losses + sft_weight * sft
    return _list_output(losses, r, **{"pro/sft": sft, "pro/rank": rank_losses})


def listnet(policy: ListLogps, reference: ListLogps | None, *, scores: Tensor | None = None,
            beta: float = 0.1, label_temperature: float = 1.0) -> LossOutput:
    """ListNet: cross-entropy between the label distribution and the top-one distribution of s.

    Formula:
        s_i = β · (log πθ(y_i|x) − log π_ref(y_i|x))
        P_ψ(i) = softmax(ψ / t)_i,   P_s(i) = softmax(s)_i
        L = −Σ_i P_ψ(i) · log P_s(i)

    References:
        Cao et al., "Learning to Rank: From Pairwise Approach to Listwise Approach", ICML 2007 (no arXiv
        id): the top-one probability and the cross-entropy listwise loss; applied to β-scaled log-ratios
        as in LiPO's learning-to-rank framing (arXiv 2402.01878).

    Shapes: policy.logps, reference.logps (B, K), items best first; ``scores`` (B, K) graded labels ψ,
    higher = better; when None (or a row holds NaN), ψ_k = K − 1 − k.

    Sign convention: log-probs are log-likelihoods; the loss is minimised (its minimum is the entropy of
    P_ψ, not 0); rewards are s_i (detached). Typical β: 0.1; t (label_temperature): 1.

    Deviations from the paper: the scores are DPO-style β·log-ratios instead of a ranking model's
    outputs; the label temperature t is our addition (t = 1 is the paper).
    """
    s = beta * _logratios(policy, reference)  # (B, K)
    psi = graded_labels(scores, s)  # (B, K)
    target = torch.softmax(psi / label_temperature, dim=-1)  # (B, K)
    losses = -(target * torch.log_softmax(s, dim=-1)).sum(-1)
    return _list_output(losses, s)


__all__ = ["pl_dpo", "lipo", "pro", "listnet", "plackett_luce_nll", "rank_labels", "graded_labels"]
