"""A whole job from a config: check the run directory, read data, load models, train, save.

``run(config, resume=False)`` is what ``prefkit train --config job.yaml`` calls;
``train_reward_model(config)`` what ``prefkit rm train --config job.yaml`` calls (a config with a
``reward`` section). Everything a user can
get wrong in the config was already checked by ``load_config`` (before any model loads); this module
then checks the paths (data, run directory) before loading the model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from prefkit.data.condition import condition_train_eval
from prefkit.data.records import Record, kind_of
from prefkit.errors import ConfigError, DataError
from prefkit.losses.registry import get_loss, reward_losses
from prefkit.models import load as model_load
from prefkit.models.heads import PERSONAL_HEADS
from prefkit.models.personal import VPLHead
from prefkit.models.reward import RewardModel
from prefkit.models.reward_inputs import as_text_record
from prefkit.train import checkpoint as ckpt
from prefkit.train import rundir
from prefkit.train.config import POLICY_LORA_TARGETS, RunConfig, check_head_and_loss
from prefkit.train.objectives import make_objective
from prefkit.train.trainer import Evaluator, Trainer

EvaluatorFactory = Callable[[Any, Any, list[Any], list[Any]], Sequence[Evaluator]]
"""``(model, tokenizer, train_records, eval_records) -> evaluators``, called after the policy loads and
before training (``prefkit.eval.during_training.evaluator_factory`` makes one from the ``eval:`` section)."""


def check_run_dir(config: RunConfig, resume: bool | str | Path) -> None:
    """Before any model loads: ``output.dir`` must be a folder prefkit may write into (absent, empty, or
    a prefkit run folder: :mod:`prefkit.train.rundir`); a fresh run needs it free of an earlier run (or
    ``output.overwrite``), one resumed with ``resume=True`` needs a checkpoint there. Reads only: the
    Trainer claims the folder (with ``output.overwrite``, clears what earlier runs wrote) when it starts."""
    run_dir = Path(config.output.dir)
    rundir.check_run_dir(run_dir, resume=bool(resume), overwrite=config.output.overwrite)
    if resume is True and ckpt.latest_checkpoint(run_dir) is None:
        raise ConfigError(f"--resume: no checkpoint in {ckpt.checkpoint_dir(run_dir)}; start without --resume")


def read_data(config: RunConfig) -> tuple[list[Any], list[Any]]:
    """(train, eval) records from ``config.data``."""
    from prefkit.data.readers import load

    if not config.data.train:
        raise ConfigError("no training data; set data.train to a data file")
    dc = config.data
    options = {"format": dc.format, "columns": dc.columns or None, "on_error": dc.on_error}
    train = list(load(dc.train, **options))
    if dc.limit is not None:
        train = train[:dc.limit]
    if dc.eval:
        evaluation = list(load(dc.eval, **options))
    else:
        n_eval = int(round(dc.eval_fraction * len(train)))
        train, evaluation = (train[:-n_eval], train[-n_eval:]) if n_eval else (train, [])
    if dc.condition_on_users is not None:  # user-conditioned prompts (P-RLHF): prefkit.data.condition
        return condition_train_eval(train, evaluation, dc.condition_on_users)
    return train, evaluation


def load_policy(config: RunConfig) -> tuple[Any, Any]:
    """(model, tokenizer) per ``config.model`` and ``config.lora``."""
    from transformers import set_seed

    mc, lc = config.model, config.lora
    tokenizer = model_load.load_tokenizer(mc.tokenizer or mc.path)
    set_seed(config.train.seed)
    model = model_load.load_model(mc.path, dtype=mc.dtype)
    if lc.r > 0 or lc.adapter:
        model = model_load.add_lora(model, r=lc.r, alpha=lc.alpha, dropout=lc.dropout,
                                    target_modules=lc.target_modules or POLICY_LORA_TARGETS, adapter=lc.adapter)
    return model, tokenizer


def _weights_path(path: str) -> str | Path:
    """What the reference cache fingerprints: a hub id's snapshot folder (it hashes files on disk)."""
    return model_load.local_dir(path, "reference.path") if model_load.hub_id(path) is not None else path


def run(config: RunConfig, *, resume: bool = False,
        evaluators: EvaluatorFactory | None = None) -> dict[str, float]:
    """Train a policy per ``config``; returns the final metrics. Writes everything under
    ``config.output.dir``; ``evaluators`` builds the trainer's diagnostics (:data:`EvaluatorFactory`).
    (``model.path: toy``, the built-in toy world, is routed to ``prefkit.toy`` by
    the CLI.) A config with a ``reward`` section is a reward-model job: :func:`train_reward_model`."""
    if config.reward is not None:
        return train_reward_model(config, resume=resume)[1]
    make_objective(config)  # reward-model losses fail here, before loading anything
    check_run_dir(config, resume)
    train, evaluation = read_data(config)
    model, tokenizer = load_policy(config)
    ref_path = config.reference.path or config.model.path

    def reference_model() -> Any:
        return model_load.frozen(model_load.load_model(ref_path, dtype=config.model.dtype))

    hooks = evaluators(model, tokenizer, train, evaluation) if evaluators is not None else ()
    trainer = Trainer(config, model, tokenizer, train, evaluation, reference_model=reference_model,
                      reference_weights=_weights_path(ref_path), evaluators=hooks)
    return trainer.train(resume=resume)


PAIR_HEADS = ("pal", "vpl", "mixture", "maxmin")
"""Heads that learn from pairs only (a reward_pair loss)."""


def with_users(config: RunConfig, train_records: Sequence[Record]) -> RunConfig:
    """``config`` with ``reward.users`` filled from the training records (sorted ids) when a personal head
    has none listed; unchanged otherwise."""
    reward = config.reward
    if reward is None or reward.head not in PERSONAL_HEADS or reward.users:
        return config
    users = tuple(sorted({r.user_id for r in train_records if r.user_id is not None}))
    if not users:
        raise DataError(f"head {reward.head!r} learns per user, but no training record has a user_id")
    return dataclasses.replace(config, reward=dataclasses.replace(reward, users=users))


def build_reward_model(config: RunConfig) -> RewardModel:
    """A new reward model on the ``model.path`` backbone per ``config.reward`` (LoRA per ``config.lora``;
    frozen-backbone mode per ``reward.frozen_backbone``)."""
    reward = config.reward
    assert reward is not None
    if not config.model.path:
        raise ConfigError("no backbone; set model.path to a local Hugging Face model directory")
    from transformers import set_seed

    set_seed(config.train.seed)
    lc = config.lora
    model = RewardModel.from_backbone(
        model_load.local_dir(config.model.path, "backbone"), reward, dtype=model_load.DTYPES[config.model.dtype],
        lora_r=lc.r, lora_alpha=lc.alpha, lora_dropout=lc.dropout,
        lora_target_modules=lc.target_modules or "all-linear")
    if config.model.tokenizer:
        model.tokenizer = model_load.load_tokenizer(model_load.local_dir(config.model.tokenizer, "tokenizer"))
    return model


def fill_feature_cache(model: RewardModel, records: Sequence[Record]) -> None:
    """Frozen-backbone mode: compute every sequence of ``records`` not yet cached (length-sorted batches of
    ``reward.feature_batch_size``) and write the cache file (when the model has a cache folder)."""
    cache = model.feature_cache
    if cache is None:
        return
    tokens = model.tokens()
    cache.lookup([row for r in records for row in tokens.record_ids(r)])
    cache.flush()


def set_vpl_contexts(model: RewardModel, records: Sequence[Record]) -> None:
    """Give a VPL head its training users' contexts: each pair record's cached (chosen, rejected)
    features, by user (``VPLHead.set_contexts``)."""
    head, cache = model.head, model.feature_cache
    if not isinstance(head, VPLHead):
        return
    if cache is None:
        raise ConfigError("head 'vpl' needs frozen-backbone mode: set reward.frozen_backbone=true")
    tokens = model.tokens()
    rows = [tokens.record_ids(r) for r in records]
    at = cache.rows_of([row[0] for row in rows] + [row[1] for row in rows])  # (2P,)
    pairs = at.reshape(2, len(rows)).T  # (P, 2) cache rows of (chosen, rejected)
    head.set_contexts(cache.table(), pairs, head.user_index([r.user_id for r in records]))


def train_reward_model(config: RunConfig, *, resume: bool = False,
                       train_records: Sequence[Record] | None = None,
                       eval_records: Sequence[Record] | None = None,
                       model: RewardModel | None = None) -> tuple[RewardModel, dict[str, float]]:
    """Train a reward model with the :class:`Trainer` and a ``RewardObjective``.

    ``config`` has a ``reward`` section (``load_reward_config``). Reads ``config.data`` unless records
    are given; builds the model on the ``model.path`` backbone (LoRA per the ``lora`` section) unless one
    is given. Saves the model in ``<output.dir>/model`` (``RewardModel.save``). Returns the trained model
    and the trainer's final metrics.

    Pluralistic heads (``prefkit.models.personal``) train on pairs. Personal heads (pal, vpl, maxmin)
    get their user list from the training records (``reward.users``, when empty). With
    ``reward.frozen_backbone`` every sequence's pooled feature is computed once, before training; a
    VPL head then gets each training user's context table from those features. A ``maxmin`` head needs a
    ``model`` (this is one M-step with its current user → group assignment): its groups are learned by
    ``prefkit.train.personal.fit_maxmin``.
    """
    reward = config.reward
    if reward is None:
        raise ConfigError("a reward-model job needs a reward: section (load it with load_reward_config)")
    spec = get_loss(config.loss.name)
    check_head_and_loss(reward.head, config.loss.name, spec, reward.tie_model)
    if reward.head in PAIR_HEADS and (spec.kind != "reward_pair" or spec.head_params):
        pair_losses = [n for n in reward_losses() if get_loss(n).kind == "reward_pair"]
        raise ConfigError(f"head {reward.head!r} learns from pairs; loss {config.loss.name!r} is {spec.kind!r} "
                          f"(use one of {', '.join(pair_losses)})")
    if reward.frozen_backbone and config.lora.r > 0:
        raise ConfigError("reward.frozen_backbone trains only the head; set lora.r=0 (or frozen_backbone=false)")
    if reward.head == "maxmin" and model is None:
        raise ConfigError("head 'maxmin' learns its user groups by EM: train it with "
                          "prefkit.train.personal.fit_maxmin(config, records)")
    check_run_dir(config, resume)  # also when records are given: refused before a backbone loads
    if train_records is None:
        train_records, eval_records = read_data(config)
    config = with_users(config, train_records)
    if model is None:
        model = build_reward_model(config)
    elif reward.frozen_backbone and model.feature_cache is None:
        model.freeze_backbone(reward.feature_cache_dir)
    tokens = model.tokens()
    train_records = [as_text_record(r, tokens.tokenizer) for r in train_records if kind_of(r) == spec.record_kind]
    eval_records = [as_text_record(r, tokens.tokenizer) for r in (eval_records or [])
                    if kind_of(r) == spec.record_kind]
    if not train_records:
        raise DataError(f"no {spec.record_kind} records in the training data for loss {config.loss.name!r}")
    fill_feature_cache(model, train_records + eval_records)
    set_vpl_contexts(model, train_records)
    objective = make_objective(config, tokens)
    trainer = Trainer(config, model, tokens.tokenizer, train_records, eval_records, objective=objective)
    summary = trainer.train(resume=resume)
    if model.feature_cache is not None:
        model.feature_cache.flush()
    model.head.finalize()
    return model, summary


__all__ = ["EvaluatorFactory", "run", "train_reward_model", "check_run_dir", "read_data", "load_policy",
           "build_reward_model", "with_users", "fill_feature_cache", "set_vpl_contexts", "PAIR_HEADS"]
