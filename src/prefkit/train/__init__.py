"""prefkit.train: the one trainer, its objectives, config, jobs, checkpoints and the reference cache.

- ``load_config(path, overrides)`` -> ``RunConfig`` (dataclasses, one docstring per field);
  ``load_reward_config`` for a reward-model job (a ``reward`` section);
- ``Trainer(config, model, tokenizer, train_records, eval_records).train(resume=False)``;
- ``run(config, resume=False)``: the whole job from a config (what ``prefkit train`` calls);
  ``train_reward_model(config)`` (what ``prefkit rm train`` calls);
- ``Objective`` / ``StepOutput`` (``prefkit.train.objectives``): the pluggable "model forward ->
  per-example losses" step; ``PreferenceObjective`` and ``RewardObjective`` implement it.
"""

from prefkit.train.config import RunConfig, load_config, load_reward_config
from prefkit.train.objectives import (
           Objective,
           PreferenceObjective,
           RewardObjective,
           StepOutput,
           make_objective,
)
from prefkit.train.run import run, train_reward_model
from prefkit.train.trainer import Trainer

__all__ = ["RunConfig", "load_config", "load_reward_config", "run", "train_reward_model", "Trainer", "Objective",
           "StepOutput", "PreferenceObjective", "RewardObjective", "make_objective"]
