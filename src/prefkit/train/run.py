"""A whole job from a config: check the run directory, read data, load models, train, save.

``run(config, resume=False)`` is what ``prefkit train --config job.yaml`` calls. Everything a user can
get wrong in the config was already checked by ``load_config`` (before any model loads); this module
then checks the paths (data, run directory) before loading the model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefkit.errors import ConfigError
from prefkit.models import load as model_load
from prefkit.train import checkpoint as ckpt
from prefkit.train.config import RunConfig
from prefkit.train.trainer import Trainer, make_objective


def check_run_dir(config: RunConfig, resume: bool) -> None:
    """A fresh run needs an empty run directory (or ``output.overwrite``); a resumed one a checkpoint."""
    run_dir = Path(config.output.dir)
    if resume:
        if ckpt.latest_checkpoint(run_dir) is None:
            raise ConfigError(f"--resume: no checkpoint in {ckpt.checkpoint_dir(run_dir)}; start without --resume")
    elif (run_dir / "metrics.jsonl").exists() and not config.output.overwrite:
        raise ConfigError(f"run directory {str(run_dir)!r} already holds a run; pass --resume to continue it, "
                          "set output.overwrite=true, or choose another output.dir")


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
        return train, list(load(dc.eval, **options))
    n_eval = int(round(dc.eval_fraction * len(train)))
    return (train[:-n_eval], train[-n_eval:]) if n_eval else (train, [])


def load_policy(config: RunConfig) -> tuple[Any, Any]:
    """(model, tokenizer) per ``config.model`` and ``config.lora``."""
    from transformers import set_seed

    mc, lc = config.model, config.lora
    tokenizer = model_load.load_tokenizer(mc.tokenizer or mc.path)
    set_seed(config.train.seed)
    model = model_load.load_model(mc.path, dtype=mc.dtype)
    if lc.r > 0 or lc.adapter:
        model = model_load.add_lora(model, r=lc.r, alpha=lc.alpha, dropout=lc.dropout,
                                    target_modules=lc.target_modules, adapter=lc.adapter)
    return model, tokenizer


def run(config: RunConfig, *, resume: bool = False) -> dict[str, float]:
    """Train per ``config``; returns the final metrics. Writes everything under ``config.output.dir``.

    ``model.path: toy`` names the built-in toy world: the job is the demo (``prefkit.toy.run_config``).
    """
    from prefkit import toy

    if toy.is_toy_config(config):
        return toy.run_config(config, resume=resume)
    make_objective(config)  # reward-model losses fail here, before loading anything
    check_run_dir(config, resume)
    train, evaluation = read_data(config)
    model, tokenizer = load_policy(config)
    ref_path = config.reference.path or config.model.path

    def reference_model() -> Any:
        return model_load.frozen(model_load.load_model(ref_path, dtype=config.model.dtype))

    trainer = Trainer(config, model, tokenizer, train, evaluation, reference_model=reference_model,
                      reference_weights=ref_path)
    return trainer.train(resume=resume)


__all__ = ["run", "check_run_dir", "read_data", "load_policy"]
