"""prefkit.train: the one trainer, its config, checkpoints and the reference log-prob cache.

- ``load_config(path, overrides)`` -> ``RunConfig`` (dataclasses, one docstring per field);
- ``Trainer(config, model, tokenizer, train_records, eval_records).train(resume=False)``;
- ``run(config, resume=False)``: the whole job from a config (what ``prefkit train`` calls);
- ``Objective`` / ``StepOutput``: the pluggable "model forward -> per-example losses" step.
"""

from prefkit.train.config import RunConfig, load_config
from prefkit.train.run import run
from prefkit.train.trainer import Objective, PreferenceObjective, StepOutput, Trainer, make_objective

__all__ = ["RunConfig", "load_config", "run", "Trainer", "Objective", "StepOutput", "PreferenceObjective",
           "make_objective"]
