"""Ranking accuracy of a policy, and the idealized ranking accuracy at the exact DPO optimum.

Chen et al. (2024) ask whether preference tuning teaches a policy to *rank* the preferred completion
above the dispreferred one, ``log π(y_w|x) > log π(y_l|x)``, and find that it mostly does not: the
achieved ranking accuracy stays far below the one the exact DPO/RLHF optimum would reach (the
*alignment gap*), because DPO can rarely overturn a ranking the reference model gets wrong.

- :func:`ranking_accuracy` (a model) and :func:`ranking_accuracy_from_logps` (log-probs): the fraction
  of pairs the policy ranks correctly, summed and per-token (length-normalised), with the per-pair
  margins;
- :func:`idealized_ranking_accuracy`: the same fraction for the exact optimum, from reference log-probs,
  β and the true preference probability, with each pair's difficulty;
- :func:`alignment_gap`: both for one policy and its reference, and idealized − achieved;
- :func:`bradley_terry_prob`: a true preference probability from known rewards (a documented choice when
  the data only hold hard labels).

Conventions: log-probs are summed over the completion tokens (EOS included), as the log-prob engine
(:func:`prefkit.models.logprobs.sequence_logps`) returns them; "correct" is strict (a tie is wrong), as in
the paper's definition.

References:
    A. Chen, S. Malladi, L. H. Zhang, X. Chen, Q. Zhang, R. Ranganath, K. Cho. "Preference Learning
    Algorithms Do Not Learn Preference Rankings." NeurIPS 2024, arXiv:2405.19534. Sec. 2 (ranking
    accuracy), Sec. 3 (idealized ranking accuracy of the exact DPO/RLHF optimum; the theorem there,
    Theorem 3.1 in our reading: not re-checked against the PDF here), Sec. 4 (why DPO rarely flips a
    reference ranking: the loss a pair must reach, :attr:`IdealizedRanking.flip_loss`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from prefkit.data.encode import Encoder
from prefkit.data.records import Pair
from prefkit.losses.types import PairLogps
from prefkit.models.logprobs import pair_logps, sequence_logps


@dataclass(frozen=True)
class RankingResult:
    """Ranking accuracy of one model over P pairs.

    accuracy: fraction of pairs with ``log π(y_w|x) > log π(y_l|x)`` (strict; summed log-probs).
    normalized_accuracy: the same with per-token log-probs, ``log π(y|x) / |y|``.
    margins: (P,) ``log π(y_w|x) − log π(y_l|x)``.
    normalized_margins: (P,) ``log π(y_w|x)/|y_w| − log π(y_l|x)/|y_l|``.
    logps: the (P,) summed log-probs and token counts behind them.
    """

    accuracy: float
    normalized_accuracy: float
    margins: Tensor
    normalized_margins: Tensor
    logps: PairLogps


@dataclass(frozen=True)
class IdealizedRanking:
    """The exact DPO optimum's ranking of P pairs (see :func:`idealized_ranking_accuracy`).

    accuracy: fraction of pairs the optimum ranks correctly (``margins > 0``).
    reference_accuracy: fraction the reference itself ranks correctly.
    margins: (P,) ``log π*(y_w|x) − log π*(y_l|x) = m_ref + logit(p)/β``.
    difficulty: (P,) ``d = log π_ref(y_l|x) − log π_ref(y_w|x)``, the reference margin a policy must
        overturn: the policy ranks the pair correctly iff its log-ratio margin ``h`` exceeds ``d``
        (``d < 0``: the reference already ranks it correctly, with ``−d`` to spare).
    flip_loss: (P,) ``−log σ(β·d)``, the DPO loss below which the pair is ranked correctly
        (``ℓ = −log σ(β·h) < −log σ(β·d)`` iff ``h > d``); large ``d`` means a tiny target loss.
    """

    accuracy: float
    reference_accuracy: float
    margins: Tensor
    difficulty: Tensor
    flip_loss: Tensor


@dataclass(frozen=True)
class AlignmentGap:
    """Achieved vs idealized ranking accuracy of a policy (see :func:`alignment_gap`).

    gap: ``idealized.accuracy − achieved.accuracy`` (summed log-probs; the idealized ranking has no
        length-normalised form, so neither has the gap).
    """

    achieved: RankingResult
    idealized: IdealizedRanking
    gap: float

    def summary(self) -> dict[str, float]:
        """The scalar numbers, under stable names (``ranking/*``)."""
        return {"ranking/accuracy": self.achieved.accuracy,
                "ranking/normalized_accuracy": self.achieved.normalized_accuracy,
                "ranking/idealized_accuracy": self.idealized.accuracy,
                "ranking/reference_accuracy": self.idealized.reference_accuracy,
                "ranking/alignment_gap": self.gap,
                "ranking/mean_difficulty": float(self.idealized.difficulty.mean())}


@torch.no_grad()
def policy_pair_logps(model: nn.Module, tokenizer: Any, pairs: Sequence[Pair], *, batch_size: int = 64,
                      packing: bool = True, share_prefix: bool = True) -> PairLogps:
    """(P,) summed completion log-probs and token counts of every pair's chosen and rejected completion.

    The pairs are encoded with :class:`~prefkit.data.encode.Encoder` (the trainer's rendering, BOS/EOS and
    truncation) and scored with :func:`~prefkit.models.logprobs.sequence_logps` in eval mode; a pair the
    encoder drops raises ``ValueError`` (results must line up with ``pairs``).
    """
    encoder = Encoder(tokenizer)
    examples, report = encoder.encode_all(list(pairs))
    if len(examples) != len(pairs):
        raise ValueError(f"{len(pairs) - len(examples)} of {len(pairs)} pairs could not be encoded ({report})")
    was_training = model.training
    model.eval()
    parts: list[PairLogps] = []
    try:
        for s in range(0, len(examples), batch_size):
            batch = encoder.collate(examples[s:s + batch_size])
            parts.append(pair_logps(sequence_logps(model, batch, packing=packing, share_prefix=share_prefix),
                                    batch))
    finally:
        model.train(was_training)
    return PairLogps(torch.cat([p.chosen_logps for p in parts]), torch.cat([p.rejected_logps for p in parts]),
                     torch.cat([p.chosen_tokens for p in parts]), torch.cat([p.rejected_tokens for p in parts]))


def ranking_accuracy_from_logps(logps: PairLogps) -> RankingResult:
    """Ranking accuracy from (P,) summed log-probs and token counts.

    Formula:
        acc = (1/P) Σ_i 1[log π(y_w,i|x_i) > log π(y_l,i|x_i)]
        acc_norm = (1/P) Σ_i 1[log π(y_w,i|x_i)/|y_w,i| > log π(y_l,i|x_i)/|y_l,i|]

    Ties count as wrong (strict inequality). References: Chen et al. 2024, Sec. 2 (module docstring).
    """
    if logps.chosen_logps.numel() == 0:
        raise ValueError("ranking accuracy needs at least one pair")
    margins = (logps.chosen_logps - logps.rejected_logps).float()  # (P,)
    norm = (logps.chosen_logps / logps.chosen_tokens - logps.rejected_logps / logps.rejected_tokens).float()  # (P,)
    return RankingResult(accuracy=float((margins > 0).float().mean()),
                         normalized_accuracy=float((norm > 0).float().mean()),
                         margins=margins, normalized_margins=norm, logps=logps)


def ranking_accuracy(policy: nn.Module, tokenizer: Any, pairs: Sequence[Pair], *, batch_size: int = 64,
                     packing: bool = True, share_prefix: bool = True) -> RankingResult:
    """Ranking accuracy of ``policy`` on ``pairs``: :func:`ranking_accuracy_from_logps` over
    :func:`policy_pair_logps` (same arguments)."""
    return ranking_accuracy_from_logps(policy_pair_logps(policy, tokenizer, pairs, batch_size=batch_size,
                                                         packing=packing, share_prefix=share_prefix))


def idealized_ranking_accuracy(reference_chosen_logps: Tensor, reference_rejected_logps: Tensor, beta: float,
                               true_pref_prob: float | Tensor) -> IdealizedRanking:
    """Ranking accuracy of the exact DPO (equivalently, KL-regularised RLHF) optimum.

    With a Bradley–Terry true preference ``p = P(y_w ≻ y_l | x) = σ(r*(x,y_w) − r*(x,y_l))`` the optimum
    is ``π*(y|x) ∝ π_ref(y|x)·exp(r*(x,y)/β)``, so the partition function cancels in the margin:

    Formula:
        log π*(y_w|x) − log π*(y_l|x) = [log π_ref(y_w|x) − log π_ref(y_l|x)] + logit(p)/β
        idealized acc = (1/P) Σ_i 1[that margin > 0]

    Args:
        reference_chosen_logps, reference_rejected_logps: (P,) summed reference log-probs.
        beta: the β of the loss (> 0); the smaller β, the more the true preference outweighs the
            reference.
        true_pref_prob: p in (0, 1], a float for every pair or (P,). p = 1 (a deterministic label)
            gives logit(p) = +∞: the optimum ranks every such pair correctly. With hard labels and no
            vote shares, pass a modelled p (e.g. :func:`bradley_terry_prob` of known rewards, or one
            constant) and report the choice.

    Returns:
        :class:`IdealizedRanking`, with each pair's difficulty ``d = −m_ref`` and the DPO loss
        ``−log σ(β·d)`` a policy must get below to rank it correctly.

    References: Chen et al. 2024, Sec. 3 (idealized ranking accuracy) and Sec. 4 (difficulty); the
    optimum's closed form is Rafailov et al. 2023 (DPO), eq. 4.
    """
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    ref_c, ref_r = reference_chosen_logps.double(), reference_rejected_logps.double()  # (P,)
    if ref_c.shape != ref_r.shape or ref_c.dim() != 1 or ref_c.numel() == 0:
        raise ValueError(f"need two equal (P,) tensors with P >= 1, got {tuple(ref_c.shape)} and {tuple(ref_r.shape)}")
    p = torch.as_tensor(true_pref_prob, dtype=torch.float64).expand_as(ref_c)  # (P,)
    if bool(((p <= 0) | (p > 1) | p.isnan()).any()):
        raise ValueError("true_pref_prob must lie in (0, 1]")
    ref_margin = ref_c - ref_r  # (P,) m_ref
    logit = torch.where(p >= 1, torch.full_like(p, math.inf), torch.log(p) - torch.log1p(-p))  # (P,) logit(p)
    margins = ref_margin + logit / beta  # (P,) optimum's margin; +inf where p = 1
    difficulty = -ref_margin  # (P,) d: the reference margin the policy must overturn
    flip_loss = torch.nn.functional.softplus(-beta * difficulty)  # (P,) −log σ(β·d)
    return IdealizedRanking(accuracy=float((margins > 0).double().mean()),
                            reference_accuracy=float((ref_margin > 0).double().mean()),
                            margins=margins.float(), difficulty=difficulty.float(), flip_loss=flip_loss.float())


def alignment_gap(policy: nn.Module, reference: nn.Module, tokenizer: Any, pairs: Sequence[Pair], *,
                  beta: float, true_pref_prob: float | Tensor, batch_size: int = 64, packing: bool = True,
                  share_prefix: bool = True) -> AlignmentGap:
    """The policy's ranking accuracy, the idealized one from ``reference``'s log-probs, and their gap.

    ``gap = idealized − achieved`` (Chen et al. 2024's alignment gap). ``beta`` and ``true_pref_prob`` as
    in :func:`idealized_ranking_accuracy`; the other arguments as in :func:`policy_pair_logps`.
    """
    engine = {"batch_size": batch_size, "packing": packing, "share_prefix": share_prefix}
    achieved = ranking_accuracy_from_logps(policy_pair_logps(policy, tokenizer, pairs, **engine))
    ref = policy_pair_logps(reference, tokenizer, pairs, **engine)
    idealized = idealized_ranking_accuracy(ref.chosen_logps, ref.rejected_logps, beta, true_pref_prob)
    return AlignmentGap(achieved, idealized, idealized.accuracy - achieved.accuracy)


def bradley_terry_prob(chosen_rewards: Tensor, rejected_rewards: Tensor, temperature: float = 1.0) -> Tensor:
    """(P,) ``p = σ((r_w − r_l) / temperature)``: a true preference probability from known rewards.

    For data labelled by a deterministic rule (p = 1 for every pair, which makes the idealized accuracy
    trivially 1), this models annotators who follow the rule with Bradley–Terry noise at ``temperature``.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return torch.sigmoid((chosen_rewards.double() - rejected_rewards.double()) / temperature)


__all__ = ["RankingResult", "IdealizedRanking", "AlignmentGap", "policy_pair_logps", "ranking_accuracy",
           "ranking_accuracy_from_logps", "idealized_ranking_accuracy", "alignment_gap", "bradley_terry_prob"]
