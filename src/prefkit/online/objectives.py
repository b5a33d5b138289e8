"""Objectives of the online algorithms: how their records become per-example losses in the one Trainer.

Both implement the trainer's :class:`~prefkit.train.objectives.Objective` protocol and nothing else:

- :class:`ExplorationObjective` (XPO): any registry pair loss (the run config's
  :class:`~prefkit.train.objectives.PreferenceObjective`) plus α·log π(ỹ|x) for a reference sample ỹ of
  the pair's prompt (:func:`prefkit.losses.online.xpo_bonus`). ``prepare`` appends ỹ as a third sequence
  of each pair example (as KTO's KL pairs are appended), so batch rows ``[0:B)`` are chosen,
  ``[B:2B)`` rejected, ``[2B:3B)`` ỹ.
- :class:`SampleObjective` (SPPO, Nash-MD): ``Rating`` records, one sampled completion y and its judged
  number each (a win probability), through a pure loss of :mod:`prefkit.losses.online` on the sequence
  log-probs of y under the policy and the trainer's reference.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from prefkit.data.batch import Batch
from prefkit.data.encode import EncodedExample, EncodedSequence, TruncationReport
from prefkit.errors import DataError
from prefkit.losses.online import xpo_bonus
from prefkit.losses.types import LossOutput
from prefkit.models.logprobs import SequenceLogps, sequence_logps, unpaired_logps
from prefkit.train.objectives import PreferenceObjective, StepOutput


def batch_rows(batch: Batch, start: int, stop: int, group_size: int) -> Batch:
    """Rows ``[start, stop)`` of a padded ``batch`` as a batch of ``group_size`` sequences per example
    (the per-example fields are kept: the rows must be whole groups ``g*B .. (g+k)*B``)."""
    if batch.layout != "padded":
        raise NotImplementedError("batch_rows needs a padded batch")
    cut = {k: getattr(batch, k)[start:stop] for k in ("input_ids", "attention_mask", "completion_mask")}
    prompt_lens = None if batch.prompt_lens is None else batch.prompt_lens[start:stop]
    return dataclasses.replace(batch, group_size=group_size, prompt_lens=prompt_lens, **cut)


def _rows(seq: SequenceLogps, start: int, stop: int) -> SequenceLogps:
    """Rows ``[start, stop)`` of engine results."""
    return SequenceLogps(seq.logps[start:stop], seq.tokens[start:stop],
                         None if seq.token_logps is None else seq.token_logps[start:stop],
                         None if seq.mask is None else seq.mask[start:stop])


@dataclass
class ExplorationObjective:
    """XPO's step: ``inner`` (a pair-loss :class:`PreferenceObjective`) on rows [0:2B), plus
    α·log π(ỹ|x) (:func:`~prefkit.losses.online.xpo_bonus`) on rows [2B:3B).

    ``explore`` maps a prompt's token ids (as the encoder rendered them) to the encoded reference samples
    ỹ of that prompt; ``prepare`` gives the n-th pair example of a prompt the (n mod m)-th of its m samples.
    A pair whose prompt has no ỹ is a one-line DataError. The reference pass of the trainer also scores
    the ỹ rows (unused: the term has no reference).
    """

    inner: PreferenceObjective
    alpha: float
    explore: dict[tuple[int, ...], list[EncodedSequence]] = field(default_factory=dict)
    kl_pairs: bool = False
    tracks_reward_mean: bool = False

    @property
    def needs_reference(self) -> bool:
        return self.inner.needs_reference

    @property
    def token_logps(self) -> bool:
        return self.inner.token_logps

    def prepare(self, examples: list[EncodedExample], seed: int,
                report: TruncationReport | None = None) -> list[EncodedExample]:
        examples = self.inner.prepare(examples, seed, report)
        used: Counter[tuple[int, ...]] = Counter()
        out = []
        for ex in examples:
            key = tuple(ex.sequences[0].prompt_ids)
            samples = self.explore.get(key)
            if not samples:
                raise DataError("XPO: a pair's prompt has no reference sample ỹ (was the prompt truncated "
                                "differently for the pair and for ỹ? raise encode.max_length)")
            y = samples[used[key] % len(samples)]
            used[key] += 1
            out.append(dataclasses.replace(ex, sequences=[*ex.sequences, EncodedSequence(ex.sequences[0].prompt_ids,
                                                                                         y.completion_ids)]))
        return out

    def __call__(self, model: nn.Module, batch: Batch, reference: SequenceLogps | None, *,
                 reward_mean: float | None = None) -> StepOutput:
        b = batch.num_examples
        pairs = batch_rows(batch, 0, 2 * b, 2)
        out = self.inner(model, pairs, None if reference is None else _rows(reference, 0, 2 * b),
                         reward_mean=reward_mean)
        explore = sequence_logps(model, batch_rows(batch, 2 * b, 3 * b, 1), chunk_size=self.inner.chunk_size,
                                 packing=self.inner.packing, share_prefix=self.inner.share_prefix).logps  # (B,)
        bonus = xpo_bonus(explore, alpha=self.alpha)  # (B,)
        return StepOutput(out.losses + bonus.to(out.losses),
                          {**out.metrics, "xpo/explore_logps": explore.detach().float(),
                           "xpo/bonus": bonus.detach().float()})


@dataclass
class SampleObjective:
    """One sampled completion per example (``Rating`` records: the response and its judged number in
    ``score``) through ``loss(policy, reference, scores=..., **params)`` of :mod:`prefkit.losses.online`,
    with policy and reference as :class:`~prefkit.losses.types.UnpairedLogps`."""

    loss: Callable[..., LossOutput]
    params: dict[str, Any]
    chunk_size: int = 1024
    packing: bool = True
    share_prefix: bool = True
    needs_reference: bool = True
    token_logps: bool = False
    kl_pairs: bool = False
    tracks_reward_mean: bool = False

    def prepare(self, examples: list[EncodedExample], seed: int,
                report: TruncationReport | None = None) -> list[EncodedExample]:
        bad = sum(ex.kind != "rating" or not ex.scores for ex in examples)
        if bad:
            raise DataError(f"{bad} of {len(examples)} examples are not rating records with a score; the online "
                            "sample objective trains on one judged sample per record")
        return examples

    def __call__(self, model: nn.Module, batch: Batch, reference: SequenceLogps | None, *,
                 reward_mean: float | None = None) -> StepOutput:
        if reference is None:
            raise DataError("the online sample objective needs reference log-probs")
        seq = sequence_logps(model, batch, chunk_size=self.chunk_size, packing=self.packing,
                             share_prefix=self.share_prefix)
        policy, ref = unpaired_logps(seq, batch), unpaired_logps(reference, batch)
        scores: Tensor = batch.scores[:, 0]  # (B,) the judged number of each sample
        out = self.loss(policy, ref, scores=scores, **self.params)
        metrics = {"logps/policy": policy.logps.detach().float(), "scores": scores.detach().float(),
                   "logratios": (policy.logps - ref.logps).detach().float()}
        metrics.update({k: v.detach().float() for k, v in out.metrics.items()})
        return StepOutput(out.losses, metrics)


__all__ = ["ExplorationObjective", "SampleObjective", "batch_rows"]
