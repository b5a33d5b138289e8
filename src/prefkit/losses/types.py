"""Inputs, outputs and registry entries shared by every loss.

Sign convention everywhere: log-probabilities are policy (or reference) log-likelihoods, higher means
more likely; every loss is minimised. Losses return one value per example (no reduction); the trainer
reduces.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from torch import Tensor

from prefkit.kinds import RecordKind


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


class _FromSignature:
    """The default of a ``Param`` before its ``LossSpec`` fills it from the loss function's signature."""

    def __repr__(self) -> str:
        return "<from signature>"


FROM_SIGNATURE: Any = _FromSignature()


@dataclass(frozen=True, kw_only=True)
class Param:
    """A loss keyword parameter: its valid values and help. The default is not given here.

    ``default`` is filled by :class:`LossSpec` from the keyword's default in the loss function's
    signature, so it cannot drift from the function (before that it is ``FROM_SIGNATURE``).

    Valid values: one of ``choices`` when given; otherwise between ``low`` and ``high`` (None =
    unbounded), each bound excluded when ``low_open`` / ``high_open`` is set, e.g. ``low=0,
    low_open=True`` is "> 0" and ``low=0, high=0.5, high_open=True`` is [0, 0.5). These bounds are the
    only range check: ``validate_loss_params`` applies them when a config is parsed, and loss bodies
    do not repeat them.
    """

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple[str, ...] | None = None
    doc: str = ""
    default: Any = field(default=FROM_SIGNATURE, init=False)

    def __post_init__(self) -> None:
        if self.low is not None and self.high is not None and not self.low <= self.high:
            raise ValueError(f"Param: low={self.low!r} is above high={self.high!r}")
        if self.choices is not None and (self.low is not None or self.high is not None):
            raise ValueError("Param: give choices or bounds, not both")

    def admits(self, value: Any) -> bool:
        """Whether ``value`` is one of the choices / inside the bounds (its type is not checked)."""
        if self.choices is not None:
            return value in self.choices
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        return not (self.high is not None and (value > self.high or (self.high_open and value == self.high)))

    def interval(self) -> str:
        """The bounds in interval notation: ``[0, 0.5)``, ``(0, inf)``; infinite ends are open."""
        low = "(-inf" if self.low is None else f"{'(' if self.low_open else '['}{self.low:g}"
        high = "inf)" if self.high is None else f"{self.high:g}{')' if self.high_open else ']'}"
        return f"{low}, {high}"

    def with_default(self, default: Any) -> Param:
        """A copy of this Param with ``default`` set (what ``LossSpec`` stores)."""
        filled = replace(self)
        object.__setattr__(filled, "default", default)
        return filled


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

# The record kind each loss kind trains on (``prefkit.kinds``, the vocabulary ``prefkit.data`` uses too).

RECORD_KIND: dict[LossKind, RecordKind] = {
    "pair": "pair", "list": "ranking", "unpaired": "unpaired",
    "reward_pair": "pair", "reward_list": "ranking", "reward_rating": "rating",
}
"""The record kind each loss kind trains on (``LossSpec.record_kind``)."""

# Extra per-batch inputs a loss may need, passed as keyword arguments by the caller:
#   "token_logps": per-token log-probs in the *Logps objects
#   "strength"  : (B,) preference strength / margin / soft label
#   "labels"    : (B,) bool desirable flags (unpaired)
#   "scores"    : (B, K) graded relevance / ratings (listwise, regression)
#   "ties"      : (B,) bool tie flags
Need = Literal["token_logps", "strength", "labels", "scores", "ties"]

INPUT_KEYWORDS = frozenset({"strength", "ties", "labels", "scores"})
"""Keywords of a loss function that carry per-batch inputs (not parameters); they need no ``Param``."""


@dataclass(frozen=True)
class LossSpec:
    """One registry entry: the loss function and every fact about it that callers need.

    ``params`` has one :class:`Param` per keyword parameter of ``fn`` (every keyword after
    ``policy, reference`` except the input keywords ``strength``, ``ties``, ``labels``, ``scores``);
    construction fills each ``Param.default`` from ``fn``'s signature and raises ``TypeError`` when a
    Param names no keyword of ``fn`` or a keyword has no Param or no default, and ``ValueError`` when a
    default is outside its own Param's range.

    Properties callers branch on, so no code outside the registry lists loss names:

    - ``running_reward_mean``: the trainer passes the running mean of all rewards seen so far as the
      loss's ``delta`` parameter each step (BCO's reward shift); the loss must have a ``delta`` Param.
    - ``head_params``: parameters a reward model's tie head supplies as (learnable) tensors at call
      time, overriding the configured value (e.g. Rao–Kupper's ``theta``); each must be in ``params``.
    - ``record_kind`` (derived from ``kind``): the data record kind the loss trains on.
    """

    fn: Callable[..., LossOutput]
    kind: LossKind
    needs_reference: bool
    paper: Paper
    params: dict[str, Param] = field(default_factory=dict)
    needs: frozenset[str] = frozenset()
    summary: str = ""
    running_reward_mean: bool = False
    head_params: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        name = getattr(self.fn, "__qualname__", repr(self.fn))
        signature = inspect.signature(self.fn)
        parameters = list(signature.parameters.values())
        inputs = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)][:2]
        keywords = {p.name: p for p in parameters if p not in inputs and p.name not in INPUT_KEYWORDS
                    and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}  # policy, reference: inputs
        for key in self.params:
            if key not in keywords:
                raise TypeError(f"LossSpec for {name}: Param {key!r} is not a keyword parameter of {name}; "
                                f"its keywords: {sorted(keywords)}")
        for key, keyword in keywords.items():
            if key not in self.params:
                raise TypeError(f"LossSpec for {name}: keyword {key!r} of {name} has no Param; add "
                                f"params={{{key!r}: Param(...)}} with its valid range")
            if keyword.default is inspect.Parameter.empty:
                raise TypeError(f"LossSpec for {name}: keyword {key!r} has no default in {name}'s signature; "
                                "the registry takes every parameter default from there")
        filled = {key: param.with_default(keywords[key].default) for key, param in self.params.items()}
        for key, param in filled.items():
            if not param.admits(param.default):
                raise ValueError(f"LossSpec for {name}: the default {key}={param.default!r} is outside its "
                                 f"Param's range")
        object.__setattr__(self, "params", filled)
        for need in set(self.needs) - {"token_logps"}:
            if need not in signature.parameters:
                raise TypeError(f"LossSpec for {name}: needs {need!r} but {name} takes no such keyword")
        if self.running_reward_mean and "delta" not in filled:
            raise TypeError(f"LossSpec for {name}: running_reward_mean needs a 'delta' parameter")
        for key in self.head_params:
            if key not in filled:
                raise TypeError(f"LossSpec for {name}: head parameter {key!r} is not one of its params")

    @property
    def record_kind(self) -> RecordKind:
        """The kind of data record this loss trains on: "pair", "ranking", "rating" or "unpaired"."""
        return RECORD_KIND[self.kind]


def as_float(x: Tensor, like: Tensor) -> Tensor:
    """``x`` cast to ``like``'s dtype and device (token counts arrive as ints)."""
    return x.to(dtype=like.dtype, device=like.device)


__all__ = ["PairLogps", "ListLogps", "UnpairedLogps", "LossOutput", "Param", "Paper", "LossSpec",
           "LossKind", "RecordKind", "RECORD_KIND", "Need", "INPUT_KEYWORDS", "FROM_SIGNATURE", "as_float"]
