"""Objectives: how a batch becomes per-example losses, the one pluggable step of the trainer.

``objective(model, batch, reference) -> StepOutput``: per-example losses (B,) and detached metrics.

- :class:`PreferenceObjective`: policy losses (registry kinds pair, list, unpaired): sequence log-probs
  from the engine (``prefkit.models.logprobs``), then the registry loss;
- :class:`RewardObjective`: reward-model losses (kinds reward_*): a ``RewardModel`` forward, then the
  registry loss;
- :func:`make_objective`: the objective a run config asks for.

The :class:`Objective` protocol lists everything the trainer uses; the trainer never reads or writes
anything else on an objective. Loss facts (kind, reference, extra inputs, running reward mean, head
parameters) come from the loss's registry entry (``prefkit.losses.LOSSES``), never from loss names.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from prefkit.data.batch import Batch
from prefkit.data.encode import EncodedExample, EncodedSequence, TruncationReport
from prefkit.errors import ConfigError, DataError
from prefkit.losses.registry import get_loss
from prefkit.losses.reward import ListScores, PairScores, RatingScores
from prefkit.losses.transforms import ld_dpo, wpo_weights
from prefkit.losses.types import LossSpec
from prefkit.models.heads import PERSONAL_HEADS
from prefkit.models.logprobs import SequenceLogps, list_logps, pair_logps, sequence_logps, unpaired_logps
from prefkit.models.reward_inputs import RewardTokens
from prefkit.train.config import RunConfig, check_head_and_loss

# -- the protocol ----------------------------------------------------------------------------------------


@dataclass
class StepOutput:
    """What an objective returns for one batch of B examples.

    losses: (B,) per-example losses, differentiable; the loop weights, sums and normalises them.
    metrics: detached per-example values (B,) (NaN where a metric does not apply to an example) or
        scalars; the loop averages them over the examples of a logging step.
    """

    losses: Tensor
    metrics: dict[str, Tensor] = field(default_factory=dict)


class Objective(Protocol):
    """How a batch becomes per-example losses: the one pluggable step of the loop.

    These attributes and the two methods are all the trainer uses.
    """

    needs_reference: bool
    """Whether ``__call__`` wants reference log-probs (the loop then provides them)."""
    token_logps: bool
    """Whether the reference must provide per-token log-probs too."""
    kl_pairs: bool
    """Whether :meth:`prepare` adds mismatched (prompt_i, completion_j) sequences (KTO's KL reference
    point); the reference cache's fingerprint records it."""
    tracks_reward_mean: bool
    """Whether the loss takes the running mean of all rewards so far (``reward_mean`` of ``__call__``;
    BCO's δ). The trainer then keeps that mean, over steps and processes, from the ``rewards/chosen``
    and ``rewards/rejected`` metrics, and saves it in checkpoints."""

    def prepare(self, examples: list[EncodedExample], seed: int,
                report: TruncationReport) -> list[EncodedExample]:
        """Once, before training: check the examples and derive what the step needs (e.g. KTO's
        mismatched pairs, a reward model's own special tokens); any further truncation is counted into
        ``report``, which the trainer logs afterwards."""
        ...

    def __call__(self, model: nn.Module, batch: Batch, reference: SequenceLogps | None, *,
                 reward_mean: float | None = None) -> StepOutput:
        """Per-example losses and metrics for ``batch``; ``reward_mean`` is the running reward mean of
        the previous steps (None before the first step, or when ``tracks_reward_mean`` is False)."""
        ...

_INPUTS = {"strength": "strength", "labels": "labels", "scores": "scores", "ties": "ties"}


@dataclass
class PreferenceObjective:
    """Policy losses (kinds pair, list, unpaired): engine log-probs -> registry loss.

    Unpaired losses that use a reference get KTO's KL reference point: each example gets a second
    sequence, its prompt with the completion of another example (a fixed, seeded derangement of the
    dataset), so rows [B:2B) of a batch are mismatched pairs, scored in the same forward pass.

    Pair losses take two optional input transforms (``loss.wpo``, ``loss.ld_dpo_alpha``): LD-DPO rewrites
    the policy and reference :class:`PairLogps` before the loss; WPO multiplies the per-example losses
    by detached weights computed from the (untransformed) policy log-probs.
    """

    name: str
    spec: LossSpec
    params: dict[str, Any]
    chunk_size: int = 1024
    packing: bool = True
    share_prefix: bool = True
    wpo: bool = False
    """Weight each pair's loss by :func:`~prefkit.losses.transforms.wpo_weights` (pair losses)."""
    ld_dpo_alpha: float | None = None
    """Apply :func:`~prefkit.losses.transforms.ld_dpo` with this α to policy and reference (pair losses)."""

    @property
    def tracks_reward_mean(self) -> bool:
        """The registry's ``running_reward_mean``: the loss's ``delta`` is the running mean of the rewards
        (BCO, Jung et al. 2024)."""
        return self.spec.running_reward_mean

    def __post_init__(self) -> None:
        if (self.wpo or self.ld_dpo_alpha is not None) and self.spec.kind != "pair":
            raise ConfigError(f"WPO / LD-DPO apply to pair losses only; loss {self.name!r} is of kind "
                              f"{self.spec.kind!r}")

    @property
    def needs_reference(self) -> bool:
        return self.spec.needs_reference

    @property
    def token_logps(self) -> bool:
        return "token_logps" in self.spec.needs or self.ld_dpo_alpha is not None

    @property
    def kl_pairs(self) -> bool:
        return self.spec.kind == "unpaired" and self.spec.needs_reference

    def prepare(self, examples: list[EncodedExample], seed: int,
                report: TruncationReport | None = None) -> list[EncodedExample]:
        wanted = self.spec.record_kind
        kinds = Counter(ex.kind for ex in examples if ex.kind != wanted)
        if kinds:
            found = ", ".join(f"{n} {k}" for k, n in kinds.items())
            raise DataError(f"loss {self.name!r} trains on {wanted} records, but the data has {found} "
                            "records; convert them first (prefkit.data.convert) or pick a matching loss")
        sizes = sorted({ex.group_size for ex in examples})
        if len(sizes) > 1:
            raise DataError(f"rankings of different lengths (k = {sizes}) cannot share batches; keep one k "
                            "per dataset (e.g. convert to pairs)")
        if "strength" in self.spec.needs:  # NaN strengths (collated from missing ones) would give NaN losses
            missing = sum(ex.strength is None for ex in examples)
            if missing:
                raise DataError(f"loss {self.name!r} needs a strength on every pair, but {missing} of "
                                f"{len(examples)} records have none; give each record a 'strength' (or 'margin') "
                                "value or drop those records")
        if not self.kl_pairs or len(examples) < 2:
            return examples
        order = list(range(len(examples)))
        random.Random(seed).shuffle(order)
        partner = {order[j]: order[(j + 1) % len(order)] for j in range(len(order))}  # a derangement
        out = []
        for i, ex in enumerate(examples):
            own, other = ex.sequences[0], examples[partner[i]].sequences[0]
            kl = EncodedSequence(own.prompt_ids, other.completion_ids)
            out.append(EncodedExample(**{**ex.__dict__, "sequences": [own, kl]}))
        return out

    def _inputs(self, seq: SequenceLogps, batch: Batch) -> Any:
        if self.spec.kind == "pair":
            return pair_logps(seq, batch)
        if self.spec.kind == "list":
            return list_logps(seq, batch)
        return unpaired_logps(seq, batch, with_kl=batch.group_size == 2)

    def __call__(self, model: nn.Module, batch: Batch, reference: SequenceLogps | None, *,
                 reward_mean: float | None = None) -> StepOutput:
        seq = sequence_logps(model, batch, chunk_size=self.chunk_size, token_logps=self.token_logps,
                             packing=self.packing, share_prefix=self.share_prefix)
        policy = self._inputs(seq, batch)
        ref = self._inputs(reference, batch) if reference is not None and self.needs_reference else None
        inputs = {k: getattr(batch, _INPUTS[k]) for k in self.spec.needs if k in _INPUTS}
        params = self.params
        if self.tracks_reward_mean and reward_mean is not None:
            params = {**params, "delta": reward_mean}
        if self.ld_dpo_alpha is None:
            out = self.spec.fn(policy, ref, **inputs, **params)
        else:
            out = self.spec.fn(ld_dpo(policy, alpha=self.ld_dpo_alpha),
                               None if ref is None else ld_dpo(ref, alpha=self.ld_dpo_alpha), **inputs, **params)
        metrics = preference_metrics(self.spec.kind, out, policy, batch)
        losses = out.losses
        if self.wpo:
            weights = wpo_weights(policy)  # (B,) detached
            losses = losses * weights.to(losses)
            metrics["wpo/weights"] = weights.float()
        return StepOutput(losses, metrics)


def preference_metrics(kind: str, out: Any, policy: Any, batch: Batch) -> dict[str, Tensor]:
    """TRL-style metrics (B,) per example: rewards/{chosen,rejected,margins,accuracies}, logps/*."""
    m: dict[str, Tensor] = {}
    if kind == "pair":
        m["logps/chosen"], m["logps/rejected"] = policy.chosen_logps, policy.rejected_logps
    elif kind == "list":
        m["logps/chosen"], m["logps/rejected"] = policy.logps[:, 0], policy.logps[:, 1:].mean(1)
    else:  # unpaired: "chosen" = desirable examples, "rejected" = undesirable ones
        good = batch.labels.bool()
        nan = torch.full_like(policy.logps, math.nan)
        m["logps/chosen"] = torch.where(good, policy.logps, nan)
        m["logps/rejected"] = torch.where(good, nan, policy.logps)
        if out.rewards is not None:
            m["rewards/chosen"] = torch.where(good, out.rewards, nan)
            m["rewards/rejected"] = torch.where(good, nan, out.rewards)
    if kind == "list" and out.chosen_rewards is None and out.rewards is not None:
        out_c, out_r = out.rewards[:, 0], out.rewards[:, 1:].mean(1)
    else:
        out_c, out_r = out.chosen_rewards, out.rejected_rewards
    if out_c is not None and out_r is not None:
        m["rewards/chosen"], m["rewards/rejected"] = out_c, out_r
        m["rewards/margins"] = out_c - out_r
        m["rewards/accuracies"] = (out_c > out_r).float()
    m.update(out.metrics)
    return {k: v.detach().float() for k, v in m.items()}


@dataclass
class RewardObjective:
    """The trainer's pluggable step for reward models: ``RewardModel`` forward -> registry reward loss.

    ``prepare`` turns the trainer's encoded examples (``prefkit.data.encode``, no BOS/EOS) into reward
    model inputs (:meth:`RewardTokens.wrap`: truncation from ``truncation_side`` and the tokenizer's
    special tokens) and puts rating attributes in the head's order. ``__call__`` builds the loss input:

    - ``reward_pair``: ``PairScores(r_chosen, r_rejected)``; for a head whose pair log-odds are not a
      reward difference (``scalar_preference`` False: GPM's ``s = v_cᵀ R v_r``, the mixture's
      ``logit Σ_k π_k σ(r_k(c) − r_k(r))``) ``(s/2, −s/2)``, so the loss's ``r_c − r_r`` is ``s`` and
      Bradley–Terry's loss is exactly ``−log P(chosen ≻ rejected)``; for a loss whose registry entry
      names ``head_params``, the tie head passes its learned ``theta`` / ``nu``;
    - ``reward_list``: ``ListScores`` (B, K) rewards, best first;
    - ``reward_rating``: ``RatingScores`` of the attribute scores (B, A) (multi head) or rewards (B,).

    A personal head (``personal``: PAL, VPL, MaxMin) gets each row's user index, from ``batch.user_ids``
    through ``head.user_index`` (an unknown user is a DataError). A head output's ``penalty`` (N,) (VPL's
    ``β · KL``) is summed over each example's rows and added to its loss (metric ``rewards/penalty``).
    """

    loss_name: str
    spec: LossSpec
    params: dict[str, Any]
    tokens: RewardTokens
    attributes: tuple[str, ...] = ()
    needs_reference: bool = False
    token_logps: bool = False
    kl_pairs: bool = False
    tracks_reward_mean: bool = False
    packing: bool = True
    """The model's padding-free fast path (``model.packing``; causal decoder backbones only)."""
    share_prefix: bool = True
    """With ``packing`` and ``"last"`` pooling, each example's prompt once (``model.share_prefix``)."""
    personal: bool = False
    """The head conditions on the user (``prefkit.models.heads.PERSONAL_HEADS``): every record needs a
    ``user_id``."""

    def prepare(self, examples: list[EncodedExample], seed: int,
                report: TruncationReport | None = None) -> list[EncodedExample]:
        if self.personal:
            missing = sum(ex.user_id is None for ex in examples)
            if missing:
                raise DataError(f"a personal reward head learns per user, but {missing} of {len(examples)} records "
                                "have no user_id; give every record a user_id or use a user-blind head")
        out = []
        for ex in examples:
            prompt = ex.sequences[0].prompt_ids
            rows = self.tokens.wrap_example(prompt, [s.completion_ids for s in ex.sequences], report)
            seqs = [EncodedSequence([], row) for row in rows]
            scores = ex.scores
            if ex.kind == "rating" and ex.score_names is not None:
                named = dict(zip(ex.score_names, ex.scores or (), strict=False))
                wanted = self.attributes or ("score",)
                scores = tuple(float(named.get(a, math.nan)) for a in wanted)
            out.append(EncodedExample(**{**ex.__dict__, "sequences": seqs, "scores": scores,
                                         "score_names": tuple(self.attributes or ("score",))
                                         if ex.kind == "rating" else ex.score_names}))
        return out

    def __call__(self, model: nn.Module, batch: Batch, reference: Any = None, *,
                 reward_mean: float | None = None) -> StepOutput:
        head = model.head
        b, g = batch.num_examples, batch.group_size
        users = None
        if head.personal:  # (N,) one user index per row: example b's on rows g * B + b
            users = (head.user_index(batch.user_ids) if batch.user_ids is not None
                     else torch.full((b,), -1, dtype=torch.long)).to(batch.input_ids.device).repeat(g)
        out = model(batch.input_ids, batch.attention_mask, group_size=batch.group_size, packing=self.packing,
                    share_prefix=self.share_prefix, users=users)
        kind = self.spec.kind
        params = dict(self.params)
        metrics: dict[str, Tensor] = {}
        if kind == "reward_pair":
            first, second = out.select(slice(0, b)), out.select(slice(b, 2 * b))
            if not head.scalar_preference:
                s = head.preference_logits(first, second)  # (B,)
                pred = PairScores(s / 2, -s / 2)
            else:
                pred = PairScores(first.rewards, second.rewards)
            if self.spec.head_params:  # the tie head's learned θ / ν
                params.update(head.loss_params())
        elif kind == "reward_list":
            pred = ListScores(out.rewards.reshape(g, b).T)  # (B, K)
        else:
            pred = RatingScores(out.attributes if out.attributes is not None and self.attributes
                                else out.rewards)
        inputs = {k: getattr(batch, k) for k in ("strength", "ties", "scores") if k in self.spec.needs}
        loss = self.spec.fn(pred, None, **inputs, **params)
        if loss.chosen_rewards is not None and loss.rejected_rewards is not None:
            metrics["rewards/chosen"], metrics["rewards/rejected"] = loss.chosen_rewards, loss.rejected_rewards
            metrics["rewards/margins"] = loss.chosen_rewards - loss.rejected_rewards
            correct = (metrics["rewards/margins"] > 0).float()
            if batch.ties is not None:  # accuracy counts strict pairs only
                correct = torch.where(batch.ties.bool(), torch.full_like(correct, math.nan), correct)
            metrics["rewards/accuracies"] = correct
        metrics.update(loss.metrics)
        losses = loss.losses
        if out.penalty is not None:
            penalty = out.penalty.reshape(g, b).sum(0)  # (B,) each example's regulariser (VPL: β KL)
            losses = losses + penalty
            metrics["rewards/penalty"] = penalty
        return StepOutput(losses, {k: v.detach().float() for k, v in metrics.items()})


def make_objective(config: RunConfig, tokens: RewardTokens | None = None) -> Objective:
    """The objective for ``config``: :class:`PreferenceObjective` for a policy loss; with a ``reward``
    section, :class:`RewardObjective` (``tokens``: the reward model's :class:`RewardTokens`)."""
    spec = get_loss(config.loss.name)
    mc = config.model
    if config.reward is None:
        if spec.kind.startswith("reward_"):
            raise ConfigError(f"loss {config.loss.name!r} trains a reward model; use `prefkit rm train --config "
                              "...` (or add a reward: section to the config)")
        return PreferenceObjective(config.loss.name, spec, dict(config.loss.params), mc.chunk_size, mc.packing,
                                   mc.share_prefix, wpo=config.loss.wpo, ld_dpo_alpha=config.loss.ld_dpo_alpha)
    check_head_and_loss(config.reward.head, config.loss.name, spec, config.reward.tie_model)
    if tokens is None:
        raise ConfigError("a reward-model objective needs the model's RewardTokens (model.tokens())")
    return RewardObjective(config.loss.name, spec, dict(config.loss.params), tokens, tuple(config.reward.attributes),
                           packing=mc.packing, share_prefix=mc.share_prefix,
                           personal=config.reward.head in PERSONAL_HEADS)


__all__ = ["Objective", "StepOutput", "PreferenceObjective", "RewardObjective", "make_objective",
           "preference_metrics"]
