"""Inputs, outputs and registry entries shared by every loss.

Sign convention everywhere: log-probabilities are policy (or reference) log-likelihoods, higher means
more likely; every loss is minimised. Losses return one value per example (no reduction); the trainer
reduces.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from torch import Tensor


@dataclass(frozen=True)
class PairLogps:
    """Sequence log-probs of a batch of B preference pairs under one model.

    chosen_logps, rejected_logps: (B,) completion log-probs summed over completion tokens.
    chosen_tokens, rejected_tokens: (B,) completion token counts (float or int), >= 1.
    chosen_token_logps, rejected_token_logps: (B, T) per-token log-probs, 0 where the mask is 0;
        only filled when a loss's spec asks for ``token_logps``.
    chosen_mask, rejected_mask: (B, T) 1 on completion tokens, with the per-token log-probs.
    """

    chosen_logps: Tensor
    rejected_logps: Tensor
    chosen_tokens: Tensor
    rejected_tokens: Tensor
    chosen_token_logps: Tensor | None = None
    rejected_token_logps: Tensor | None = None
    chosen_mask: Tensor | None = None
    rejected_mask: Tensor | None = None

    def swapped(self) -> PairLogps:
        """The same pairs with chosen and rejected exchanged."""
        return PairLogps(self.rejected_logps, self.chosen_logps, self.rejected_tokens, self.chosen_tokens,
                         self.rejected_token_logps, self.chosen_token_logps, self.rejected_mask,
                         self.chosen_mask)


@dataclass(frozen=True)
class ListLogps:
    """Sequence log-probs of B lists of K responses each, item 0 the most preferred.

    logps: (B, K) summed completion log-probs, items in preference order (best first).
    tokens: (B, K) completion token counts.
    token_logps: (B, K, T) per-token log-probs, optional; mask: (B, K, T).
    """

    logps: Tensor
    tokens: Tensor
    token_logps: Tensor | None = None
    mask: Tensor | None = None


@dataclass(frozen=True)
class UnpairedLogps:
    """Sequence log-probs of B single completions with a desirable/undesirable label.

    logps: (B,) summed completion log-probs; tokens: (B,) counts.
    kl_logps: (B,) log-probs of mismatched (prompt_i, completion_j) pairs used by KTO's KL reference
        point, optional.
    """

    logps: Tensor
    tokens: Tensor
    kl_logps: Tensor | None = None


@dataclass(frozen=True)
class LossOutput:
    """What every loss returns; nothing is reduced.

    losses: (B,) per-example loss, differentiable.
    chosen_rewards, rejected_rewards: (B,) detached implicit rewards (pairwise / reward-model losses);
        for unpaired losses, the rewards of desirable / undesirable examples are given through
        ``rewards`` (B,) and the label.
    rewards: (B,) or (B, K) detached per-item rewards (listwise / unpaired), optional.
    metrics: extra detached scalars or (B,) tensors to log, keyed by TRL-style names.
    """

    losses: Tensor
    chosen_rewards: Tensor | None = None
    rejected_rewards: Tensor | None = None
    rewards: Tensor | None = None
    metrics: dict[str, Tensor] = field(default_factory=dict)


@dataclass(frozen=True)
class Param:
    """A loss keyword parameter: default, valid closed range [low, high] (None = unbounded), help."""

    default: Any
    low: float | None = None
    high: float | None = None
    doc: str = ""
    choices: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Paper:
    """Where a loss comes from: title, arXiv id, and the equation it implements."""

    title: str
    arxiv: str
    equation: str


# What a loss consumes:
#   pair     : PairLogps (policy, reference)
#   list     : ListLogps (policy, reference)
#   unpaired : UnpairedLogps (policy, reference) + labels (B,) bool
#   reward_pair / reward_list / reward_rating : reward-model scores (see prefkit.losses.reward)
LossKind = Literal["pair", "list", "unpaired", "reward_pair", "reward_list", "reward_rating"]

# Extra per-batch inputs a loss may need, passed as keyword arguments by the caller:
#   "token_logps": per-token log-probs in the *Logps objects
#   "strength"  : (B,) preference strength / margin / soft label
#   "labels"    : (B,) bool desirable flags (unpaired)
#   "scores"    : (B, K) graded relevance / ratings (listwise, regression)
#   "ties"      : (B,) bool tie flags
#   "sft"       : nothing extra; the loss adds an NLL term from policy log-probs
Need = Literal["token_logps", "strength", "labels", "scores", "ties"]


@dataclass(frozen=True)
class LossSpec:
    """One registry entry."""

    fn: Callable[..., LossOutput]
    kind: LossKind
    needs_reference: bool
    paper: Paper
    params: dict[str, Param] = field(default_factory=dict)
    needs: frozenset[str] = frozenset()
    summary: str = ""


def as_float(x: Tensor, like: Tensor) -> Tensor:
    """``x`` cast to ``like``'s dtype and device (token counts arrive as ints)."""
    return x.to(dtype=like.dtype, device=like.device)


__all__ = ["PairLogps", "ListLogps", "UnpairedLogps", "LossOutput", "Param", "Paper", "LossSpec",
           "LossKind", "Need", "as_float"]
