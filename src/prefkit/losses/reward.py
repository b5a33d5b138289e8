"""Reward-model losses: on reward scores r(x, y), not on log-probabilities.

The registry contract is the same as for policy losses: the first argument is the "policy-side"
input (here, the reward model's scores), the second the reference (always None; ignored):
``fn(pred: PairScores | ListScores | RatingScores, reference: None, *, strength=None, ties=None,
scores=None, **params) -> LossOutput``.

- kind "reward_pair": ``PairScores`` (chosen, rejected) (B,); ``chosen_rewards`` / ``rejected_rewards``
  are the detached scores.
- kind "reward_list": ``ListScores`` (B, K), items best first; ``rewards`` (B, K) detached,
  ``chosen_rewards`` = item 0, ``rejected_rewards`` = mean of the other items.
- kind "reward_rating": ``RatingScores`` pred (B,) or (B, A) against target ratings ``scores`` of the
  same shape; ``rewards`` = detached predictions.

Sign convention: a higher score means a better response; every loss is minimised.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from prefkit.errors import DataError
from prefkit.losses.listwise import plackett_luce_nll
from prefkit.losses.types import LossOutput, as_float


@dataclass(frozen=True)
class PairScores:
    """Reward-model scores of B preference pairs: chosen, rejected (B,)."""

    chosen: Tensor
    rejected: Tensor

    def swapped(self) -> PairScores:
        """The same pairs with chosen and rejected exchanged."""
        return PairScores(self.rejected, self.chosen)


@dataclass(frozen=True)
class ListScores:
    """Reward-model scores of B lists of K responses: scores (B, K), items best first."""

    scores: Tensor


@dataclass(frozen=True)
class RatingScores:
    """Reward-model predictions for B single responses: pred (B,), or (B, A) for A attributes."""

    pred: Tensor


def _pair_output(losses: Tensor, pred: PairScores, **metrics: Tensor) -> LossOutput:
    return LossOutput(losses=losses, chosen_rewards=pred.chosen.detach(),
                      rejected_rewards=pred.rejected.detach(),
                      metrics={k: v.detach() for k, v in metrics.items()})


def _tie_mask(ties: Tensor | None, like: Tensor) -> Tensor:
    if ties is None:
        return torch.zeros_like(like, dtype=torch.bool)
    return ties.to(device=like.device).bool()  # (B,)


def _as_param(value: float | Tensor, like: Tensor) -> Tensor:
    """A float or (learnable) tensor parameter, as a tensor with ``like``'s dtype and device."""
    if isinstance(value, Tensor):
        return value.to(dtype=like.dtype, device=like.device)
    return torch.tensor(value, dtype=like.dtype, device=like.device)


def bradley_terry(pred: PairScores, reference: None = None, *, strength: Tensor | None = None,
                  ties: Tensor | None = None, scores: Tensor | None = None, margin_scale: float = 0.0,
                  center_coef: float = 0.0) -> LossOutput:
    """Bradley–Terry reward-model loss, with an optional margin and reward centering.

    Formula:
        Δ = r(x, y_w) − r(x, y_l),   m = margin_scale · strength   (0 when strength is None)
        L = −log σ(Δ − m) + η · (r(x, y_w) + r(x, y_l))²

    References:
        Ouyang et al., "Training language models to follow instructions with human feedback",
        arXiv 2203.02155, Eq. 1 (pairwise reward-model loss). Margin: Touvron et al., "Llama 2",
        arXiv 2307.09288, Eq. 2. Centering term: Eisenstein et al., "Helping or Herding? Reward Model
        Ensembles Mitigate but do not Eliminate Reward Hacking", arXiv 2312.09244 (auxiliary loss
        η·(r_w + r_l)², as in TRL's ``center_rewards_coefficient``).

    Shapes: pred.chosen, pred.rejected (B,); ``strength`` (B,) margin per pair (e.g. a rating gap),
    optional; NaN (a pair without strength in a batch where others have one) means no margin.
    ``ties`` and ``scores`` are ignored: tie pairs are trained as chosen ≻ rejected (use
    ``soft_bradley_terry``, ``rao_kupper`` or ``davidson`` for ties).

    Sign convention: higher score = better; the loss is minimised. Typical η (center_coef): 0.01.

    Deviations from the paper: the centering term is per example (TRL averages it over the batch; the
    trainer's mean gives the same total).
    """
    margin = pred.chosen - pred.rejected  # (B,)
    if strength is not None and margin_scale != 0.0:
        margin = margin - margin_scale * torch.nan_to_num(as_float(strength, margin))  # NaN: no margin
    losses = F.softplus(-margin)  # −log σ(Δ − m)
    if center_coef != 0.0:
        losses = losses + center_coef * (pred.chosen + pred.rejected) ** 2
    return _pair_output(losses, pred)


def soft_bradley_terry(pred: PairScores, reference: None = None, *, strength: Tensor | None = None,
                       ties: Tensor | None = None, scores: Tensor | None = None) -> LossOutput:
    """Bradley–Terry with soft labels: cross-entropy against a preference probability p.

    Formula:
        Δ = r(x, y_w) − r(x, y_l)
        L = −[ p · log σ(Δ) + (1 − p) · log σ(−Δ) ]
        p = strength (the probability that "chosen" is preferred); 1 when strength is None;
        0.5 on tie pairs (when ``ties`` is given).

    References:
        Christiano et al., "Deep reinforcement learning from human preferences", arXiv 1706.03741,
        Sec. 2.2.3 (Eq. 1 and the cross-entropy loss with the label distribution μ; μ uniform for
        "equally preferable").

    Shapes: pred.chosen, pred.rejected (B,); ``strength`` (B,) p in [0, 1], NaN = no strength (p = 1);
    ``ties`` (B,) bool.

    Sign convention: higher score = better; the loss is minimised (its minimum is the entropy of p,
    not 0). With p = 1 this is ``bradley_terry`` without margin.

    Deviations from the paper: none (the paper's 10% uniform-noise mixing of σ is not applied).
    """
    margin = pred.chosen - pred.rejected  # (B,)
    p = torch.ones_like(margin) if strength is None else as_float(strength, margin)  # (B,)
    p = torch.where(torch.isnan(p), torch.ones_like(p), p)  # a pair without strength is a hard label
    p = torch.where(_tie_mask(ties, margin), torch.full_like(p, 0.5), p)
    losses = p * F.softplus(-margin) + (1 - p) * F.softplus(margin)
    return _pair_output(losses, pred)


def rao_kupper(pred: PairScores, reference: None = None, *, strength: Tensor | None = None,
               ties: Tensor | None = None, scores: Tensor | None = None,
               theta: float | Tensor = 1.5) -> LossOutput:
    """Rao–Kupper: Bradley–Terry extended with ties through a threshold θ ≥ 1.

    Formula:
        π = exp(r),   Δ = r_w − r_l,   η = log θ
        P(w ≻ l) = π_w / (π_w + θ π_l) = σ(Δ − η)
        P(tie)   = (θ² − 1) π_w π_l / ((π_w + θ π_l)(π_l + θ π_w))
                 = exp( log(θ² − 1) + Δ − logaddexp(Δ, η) − logaddexp(0, Δ + η) )
        L = −log P(w ≻ l) on strict pairs, −log P(tie) on tie pairs.

    References:
        Rao and Kupper, "Ties in Paired-Comparison Experiments: A Generalization of the Bradley-Terry
        Model", JASA 62(317), 1967 (no arXiv id): the model's win and tie probabilities.

    Shapes: pred.chosen, pred.rejected (B,); ``ties`` (B,) bool, optional (None = no ties).

    The tie parameter θ is fixed or learnable. Fixed: set ``theta`` in the config (θ ≥ 1; θ = 1 is
    Bradley–Terry, where P(tie) = 0 and tie pairs get an infinite loss). Learnable: own
    a tensor parameter (e.g. ``theta = 1 + softplus(raw)`` with ``raw`` an ``nn.Parameter`` next to the
    reward head) and pass it as ``theta=`` at call time; gradients flow into it (the registry lists
    ``theta`` in ``head_params``: a tie reward head supplies it).

    Sign convention: higher score = better; the loss is minimised. Typical θ: 1.2–3.

    Deviations from the paper: none.
    """
    margin = pred.chosen - pred.rejected  # (B,)
    eta = torch.log(_as_param(theta, margin))  # () log θ
    win = F.softplus(-(margin - eta))  # −log σ(Δ − η)
    log_tie = (torch.log(torch.expm1(2 * eta)) + margin - torch.logaddexp(margin, eta)
               - torch.logaddexp(torch.zeros_like(margin), margin + eta))  # (B,)
    losses = torch.where(_tie_mask(ties, margin), -log_tie, win)
    return _pair_output(losses, pred)


def davidson(pred: PairScores, reference: None = None, *, strength: Tensor | None = None,
             ties: Tensor | None = None, scores: Tensor | None = None,
             nu: float | Tensor = 0.5) -> LossOutput:
    """Davidson: Bradley–Terry extended with ties through ν ≥ 0 times the geometric mean.

    Formula:
        π = exp(r),   Δ = r_w − r_l
        P(w ≻ l) = π_w / (π_w + π_l + ν √(π_w π_l))
        P(tie)   = ν √(π_w π_l) / (π_w + π_l + ν √(π_w π_l))
        in log space, with D = logsumexp(Δ, 0, log ν + Δ/2):
        −log P(w ≻ l) = D − Δ,   −log P(tie) = D − log ν − Δ/2
        L = −log P(w ≻ l) on strict pairs, −log P(tie) on tie pairs.  ν = 0 is Bradley–Terry.

    References:
        Davidson, "On Extending the Bradley-Terry Model to Accommodate Ties in Paired Comparison
        Experiments", JASA 65(329), 1970 (no arXiv id): the model's win and tie probabilities.

    Shapes: pred.chosen, pred.rejected (B,); ``ties`` (B,) bool, optional (None = no ties).

    The tie parameter ν is fixed or learnable: fixed from the config, or pass a tensor at call time
    (e.g. ``nu = softplus(raw)`` with ``raw`` an ``nn.Parameter``; the registry lists ``nu`` in
    ``head_params``: a tie reward head supplies it); ν = 0 gives infinite loss on tie pairs.

    Sign convention: higher score = better; the loss is minimised. Typical ν: 0.5–1.

    Deviations from the paper: none.
    """
    margin = pred.chosen - pred.rejected  # (B,)
    log_nu = torch.log(_as_param(nu, margin)).expand_as(margin)  # (B,)
    denom = torch.logsumexp(torch.stack([margin, torch.zeros_like(margin), log_nu + margin / 2], -1), -1)
    losses = torch.where(_tie_mask(ties, margin), denom - log_nu - margin / 2, denom - margin)
    return _pair_output(losses, pred)


def plackett_luce(pred: ListScores, reference: None = None, *, strength: Tensor | None = None,
                  ties: Tensor | None = None, scores: Tensor | None = None) -> LossOutput:
    """Plackett–Luce reward-model loss over a full ranking of K responses.

    Formula:
        L = −Σ_{k=0}^{K−2} log( exp(r_k) / Σ_{j=k}^{K−1} exp(r_j) )
        With K = 2 this is Bradley–Terry: −log σ(r_0 − r_1).

    References:
        Zhu, Jordan and Jiao, "Principled Reinforcement Learning with Human Feedback from Pairwise or
        K-wise Comparisons", arXiv 2301.11270: maximum likelihood under the Plackett–Luce model for
        K-wise comparisons.

    Shapes: pred.scores (B, K), items best first. ``scores`` (graded labels) is ignored: only the order
    is used.

    Sign convention: higher score = better; the loss is minimised. ``rewards`` (B, K) detached;
    ``chosen_rewards`` = item 0, ``rejected_rewards`` = mean of the rest.

    Deviations from the paper: none.
    """
    r = pred.scores  # (B, K)
    detached = r.detach()
    return LossOutput(losses=plackett_luce_nll(r), chosen_rewards=detached[:, 0],
                      rejected_rewards=detached[:, 1:].mean(-1), rewards=detached)


def _targets(scores: Tensor | None, pred: Tensor, name: str) -> Tensor:
    if scores is None:
        raise ValueError(f"{name} needs scores= target ratings shaped like the predictions")
    target = as_float(scores, pred)
    if target.dim() == pred.dim() + 1 and target.shape[-1] == 1:
        target = target.squeeze(-1)  # (B, 1) ratings from a batch with G = 1
    return target


def rm_regression(pred: RatingScores, reference: None = None, *, strength: Tensor | None = None,
                  ties: Tensor | None = None, scores: Tensor | None = None) -> LossOutput:
    """Regression reward model: squared error between predicted and rated scores.

    Formula:
        L = (r(x, y) − s)²                 pred (B,)
        L = (1/A) Σ_a (r_a(x, y) − s_a)²   pred (B, A)

    References:
        Wang et al., "HelpSteer2-Preference: Complementing Ratings with Preferences",
        arXiv 2410.01257: regression reward models trained with MSE on Likert ratings.

    Shapes: pred.pred (B,) or (B, A); ``scores`` the targets, the same shape (a trailing 1 is squeezed).
    Every target must be present: a NaN raises ``DataError`` (use ``rm_multi_regression`` for missing
    attributes). The check reads the targets on the host (one device sync per call).

    Sign convention: higher score = better; the loss is minimised. ``rewards`` = detached predictions.

    Deviations from the paper: none (rescale ratings in the data if the paper's scale is wanted).
    """
    target = _targets(scores, pred.pred, "rm_regression")
    if torch.isnan(target).any():
        raise DataError("rm_regression: a rating is missing (NaN); drop unrated examples or use loss "
                        "rm_multi_regression, which skips missing attributes")
    sq = (pred.pred - target) ** 2
    losses = sq if sq.dim() == 1 else sq.mean(-1)  # (B,)
    return LossOutput(losses=losses, rewards=pred.pred.detach())


def rm_multi_regression(pred: RatingScores, reference: None = None, *, strength: Tensor | None = None,
                        ties: Tensor | None = None, scores: Tensor | None = None) -> LossOutput:
    """Multi-attribute regression reward model: MSE over the attributes each example was rated on.

    Formula:
        m_a = 1 if s_a is rated (not NaN) else 0
        L = Σ_a m_a (r_a(x, y) − s_a)² / max(1, Σ_a m_a)

    References:
        Wang et al., "HelpSteer2: Open-source dataset for training top-performing reward models",
        arXiv 2406.08673: multi-attribute regression reward model (one output per attribute, MSE
        against the attribute ratings).

    Shapes: pred.pred (B, A); ``scores`` (B, A) attribute ratings, NaN where an attribute is missing.
    A (B,) input is treated as A = 1.

    Sign convention: higher score = better; the loss is minimised. ``rewards`` = detached predictions
    (B, A). An example with no rated attribute has loss 0.

    Deviations from the paper: missing attributes (NaN) are masked out, per example.
    """
    p = pred.pred if pred.pred.dim() == 2 else pred.pred[:, None]  # (B, A)
    target = _targets(scores, pred.pred, "rm_multi_regression")
    target = target if target.dim() == 2 else target[:, None]  # (B, A)
    rated = ~torch.isnan(target)  # (B, A)
    # Zero the error where unrated before squaring, so NaN targets cannot leak into the gradient.
    err = torch.where(rated, p - torch.nan_to_num(target), torch.zeros_like(p))  # (B, A)
    losses = (err ** 2).sum(-1) / rated.sum(-1).clamp(min=1).to(p.dtype)
    return LossOutput(losses=losses, rewards=pred.pred.detach())


__all__ = ["PairScores", "ListScores", "RatingScores", "bradley_terry", "soft_bradley_terry", "rao_kupper",
           "davidson", "plackett_luce", "rm_regression", "rm_multi_regression"]
