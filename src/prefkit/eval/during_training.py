"""Policy diagnostics during training: the ``eval:`` config section turned into the trainer's evaluators.

``prefkit.train`` (floor 3) cannot import ``prefkit.eval`` (floor 5), so the trainer takes plain callables
(``Trainer(evaluators=...)``, :data:`prefkit.train.trainer.Evaluator`: ``fn(model, step) -> {key: value}``,
logged as ``eval/<key>``) and this module builds them; ``prefkit train`` passes
:func:`evaluator_factory` to :func:`prefkit.train.run.run`. From Python::

    hooks = make_evaluators(cfg, model, tokenizer, train_records, eval_records)   # before training
    Trainer(cfg, model, tokenizer, train_records, eval_records, evaluators=hooks).train()

What each switch logs (keys as in :mod:`prefkit.eval.ranking` and :mod:`prefkit.eval.displacement`):

- ``eval.ranking``: ``ranking/accuracy`` and ``ranking/normalized_accuracy`` on the evaluation pairs; with
  ``eval.true_pref_prob`` also ``ranking/reference_accuracy``, ``ranking/idealized_accuracy``,
  ``ranking/alignment_gap`` and ``ranking/mean_difficulty`` (β: ``loss.beta``);
- ``eval.displacement``: ``displacement/chosen``, ``/rejected``, ``/margin``, ``/displaced_fraction``;
- ``eval.ches``: ``ches/mean``, ``/median``, ``/p90``, ``/max``, ``/pairs`` of the training pairs, at step 0.

Choices: the pairs are a seeded subsample (``eval.max_pairs``, seed ``train.seed``), fixed for the run;
they are encoded with the run's ``encode`` settings (a pair the encoder drops is left out) and scored with
the run's ``model.packing`` / ``model.share_prefix``. The reference log-probs and the CHES scores are
computed once, when the evaluators are built, on the device the models are on then (the CPU for
``prefkit train``, before the trainer moves the policy); the reference is ``reference.path`` or else the
policy before training. On a resumed run they are computed again but only the evaluations after the
checkpoint are logged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from prefkit.data.encode import EncodedExample, Encoder
from prefkit.data.records import Pair, Record
from prefkit.errors import ConfigError, DataError
from prefkit.eval.displacement import Displacement, ches_scores
from prefkit.eval.ranking import IdealizedRanking, idealized_ranking_accuracy, ranking_accuracy_from_logps
from prefkit.losses.types import PairLogps
from prefkit.models import load as model_load
from prefkit.models.logprobs import pair_logps, sequence_logps
from prefkit.train.config import RunConfig
from prefkit.train.run import EvaluatorFactory
from prefkit.train.trainer import Evaluator


def subsample(pairs: Sequence[Pair], max_pairs: int | None, seed: int) -> list[Pair]:
    """At most ``max_pairs`` of ``pairs`` (a seeded random subset, in input order); all when None."""
    if max_pairs is None or len(pairs) <= max_pairs:
        return list(pairs)
    keep = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(seed))[:max_pairs]
    return [pairs[i] for i in sorted(keep.tolist())]


@torch.no_grad()
def examples_logps(model: nn.Module, encoder: Encoder, examples: Sequence[EncodedExample], *, batch_size: int,
                   packing: bool = True, share_prefix: bool = True) -> PairLogps:
    """(P,) summed log-probs and token counts of encoded pairs, batches moved to ``model``'s device, eval mode."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    parts: list[PairLogps] = []
    try:
        for s in range(0, len(examples), batch_size):
            batch = encoder.collate(examples[s:s + batch_size]).to(device)
            logps = sequence_logps(model, batch, packing=packing, share_prefix=share_prefix)
            pl = pair_logps(logps, batch)
            parts.append(PairLogps(*(getattr(pl, f).float().cpu() for f in _FIELDS)))
    finally:
        model.train(was_training)
    return PairLogps(*(torch.cat([getattr(p, f) for p in parts]) for f in _FIELDS))


_FIELDS = ("chosen_logps", "rejected_logps", "chosen_tokens", "rejected_tokens")


class PolicyDiagnostics:
    """Ranking accuracy and/or likelihood displacement of the policy on fixed evaluation pairs.

    One forward pass over the pairs per call serves both. ``reference`` (needed for displacement and the
    idealized ranking) is scored once, here.
    """

    def __init__(self, tokenizer: Any, pairs: Sequence[Pair], *, config: RunConfig,
                 reference: nn.Module | None):
        ec, mc = config.eval, config.model
        self.ranking, self.displacement = ec.ranking, ec.displacement
        self.encoder = Encoder(tokenizer, config.encode)
        self.examples, _ = self.encoder.encode_all(list(pairs))
        if not self.examples:
            raise DataError("eval: none of the evaluation pairs survived encoding; check encode.max_length")
        self.engine = {"batch_size": ec.batch_size, "packing": mc.packing, "share_prefix": mc.share_prefix}
        self.reference_logps = (examples_logps(reference, self.encoder, self.examples, **self.engine)
                                if reference is not None else None)
        self.idealized: IdealizedRanking | None = None
        if self.ranking and ec.true_pref_prob is not None and self.reference_logps is not None:
            ref = self.reference_logps
            self.idealized = idealized_ranking_accuracy(ref.chosen_logps, ref.rejected_logps,
                                                        float(config.loss.params["beta"]), ec.true_pref_prob)

    def __call__(self, model: nn.Module, step: int) -> dict[str, float]:
        policy = examples_logps(model, self.encoder, self.examples, **self.engine)
        out: dict[str, float] = {}
        if self.ranking:
            achieved = ranking_accuracy_from_logps(policy)
            out.update({"ranking/accuracy": achieved.accuracy,
                        "ranking/normalized_accuracy": achieved.normalized_accuracy})
            if self.idealized is not None:
                out.update({"ranking/reference_accuracy": self.idealized.reference_accuracy,
                            "ranking/idealized_accuracy": self.idealized.accuracy,
                            "ranking/alignment_gap": self.idealized.accuracy - achieved.accuracy,
                            "ranking/mean_difficulty": float(self.idealized.difficulty.mean())})
        if self.displacement and self.reference_logps is not None:
            ref = self.reference_logps
            out.update(Displacement(policy.chosen_logps - ref.chosen_logps,
                                    policy.rejected_logps - ref.rejected_logps).summary())
        return out


def ches_summary(scores: torch.Tensor) -> dict[str, float]:
    """``ches/mean``, ``/median``, ``/p90`` (the top decile's threshold), ``/max`` and ``/pairs`` of (P,) scores."""
    s = scores.double()
    return {"ches/mean": float(s.mean()), "ches/median": float(s.median()),
            "ches/p90": float(torch.quantile(s, 0.9)), "ches/max": float(s.max()), "ches/pairs": float(s.numel())}


def _once_at_start(metrics: dict[str, float]) -> Evaluator:
    def evaluator(model: nn.Module, step: int) -> dict[str, float]:
        return dict(metrics) if step == 0 else {}

    return evaluator


def check_eval_section(config: RunConfig) -> None:
    """ConfigError (one line naming the key) when the ``eval:`` section cannot run with ``config``; before
    any model loads."""
    ec = config.eval
    if not ec.enabled:
        return
    if config.reward is not None:
        raise ConfigError("eval.ranking / eval.displacement / eval.ches diagnose a policy; unset them for a "
                          "reward model")
    if ec.true_pref_prob is not None and "beta" not in config.loss.params:
        raise ConfigError(f"eval.true_pref_prob needs the loss's β, and loss {config.loss.name!r} has no "
                          "loss.beta")


def make_evaluators(config: RunConfig, model: nn.Module, tokenizer: Any, train_records: Sequence[Record],
                    eval_records: Sequence[Record], *, reference: nn.Module | None = None) -> list[Evaluator]:
    """The evaluators of ``config.eval`` for a policy ``model`` that has not started training yet.

    ``reference``: the reference model for displacement and the idealized ranking (default: loaded from
    ``reference.path`` when set, else ``model`` itself as it is now). Only :class:`Pair` records are scored.
    """
    check_eval_section(config)
    ec, seed = config.eval, config.train.seed
    hooks: list[Evaluator] = []
    if ec.ranking or ec.displacement:
        pairs = subsample([r for r in eval_records if isinstance(r, Pair)], ec.max_pairs, seed)
        if not pairs:
            raise DataError("eval.ranking / eval.displacement: the evaluation split holds no pairs")
        needs_reference = ec.displacement or ec.true_pref_prob is not None
        if needs_reference and reference is None:
            path = config.reference.path
            reference = model_load.frozen(model_load.load_model(path, dtype=config.model.dtype)) if path else model
        hooks.append(PolicyDiagnostics(tokenizer, pairs, config=config,
                                       reference=reference if needs_reference else None))
    if ec.ches:
        pairs = subsample([r for r in train_records if isinstance(r, Pair)], ec.max_pairs, seed)
        if not pairs:
            raise DataError("eval.ches: the training data holds no pairs")
        hooks.append(_once_at_start(ches_summary(ches_scores(model, tokenizer, pairs, batch_size=ec.batch_size))))
    return hooks


def evaluator_factory(config: RunConfig) -> EvaluatorFactory | None:
    """What ``prefkit train`` passes to :func:`prefkit.train.run.run`: None without diagnostics, else a
    factory calling :func:`make_evaluators`; the section is checked now, before any model loads."""
    check_eval_section(config)
    ec = config.eval
    if (ec.ranking or ec.displacement) and not (config.data.eval or config.data.eval_fraction):
        key = "eval.ranking" if ec.ranking else "eval.displacement"
        raise ConfigError(f"{key} scores the evaluation pairs; set data.eval or data.eval_fraction")
    if not ec.enabled:
        return None

    def factory(model: Any, tokenizer: Any, train: list[Any], evaluation: list[Any]) -> list[Evaluator]:
        return make_evaluators(config, model, tokenizer, train, evaluation)

    return factory


__all__ = ["subsample", "examples_logps", "PolicyDiagnostics", "ches_summary", "check_eval_section",
           "make_evaluators", "evaluator_factory"]
