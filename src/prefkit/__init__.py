"""prefkit: learning from preference feedback.

The public API, by area (each name also lives in the module shown; see the docs under ``docs/``):

- data: ``load``, the records ``Pair`` / ``Ranking`` / ``Rating`` / ``Unpaired`` / ``Message``,
  converters, writers, ``inspect_data``, ``check_users``; synthetic persona users ``make_personas``;
  user-conditioned prompts ``condition_on_users`` / ``UserConditioning``;
  encoding with ``Encoder`` / ``EncodeConfig`` / ``collate``;
- losses: the registry ``LOSSES``, ``get_loss``, ``validate_loss_params``, the input types and the
  pairwise input transforms ``wpo_weights`` / ``ld_dpo``;
- models: ``load_model`` / ``load_tokenizer`` / ``add_lora``, the log-prob engine ``sequence_logps``, the
  fast path (``pack_batch``, ``packed_sequence_logps``, ``target_logps``), reward models;
- training: ``load_config``, ``RunConfig``, ``Trainer``, ``run``;
- online and RL: ``run_online``, ``OnlineConfig``, ``SamplingSettings``, ``TorchSampler``, the judges,
  ``RewardMix``, ``ALGORITHMS``;
- evaluation: ``evaluate_reward_model`` and friends, ``ranking_accuracy`` / ``alignment_gap``, ``ches_scores``,
  ``win_rate``, ``fit_bradley_terry``, ``evaluate_suite``, ``diagnose``, ``build_report``; the built-in demo
  ``run_demo``.

Names are resolved on first use (``prefkit.Trainer`` imports ``prefkit.train``), so ``import prefkit``
and ``prefkit --version`` stay fast; the table below is the single list.
"""

from __future__ import annotations

import importlib
from typing import Any

from prefkit.errors import ConfigError, DataError, PrefkitError

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    # data
    "load": "prefkit.data", "Pair": "prefkit.data", "Ranking": "prefkit.data", "Rating": "prefkit.data",
    "Unpaired": "prefkit.data", "Message": "prefkit.data", "Record": "prefkit.data", "Records": "prefkit.data",
    "inspect_data": "prefkit.data", "to_trl": "prefkit.data", "from_trl": "prefkit.data",
    "convert": "prefkit.data", "ratings_to_pairs": "prefkit.data", "ranking_to_pairs": "prefkit.data",
    "pairs_to_unpaired": "prefkit.data", "attributes_to_score": "prefkit.data", "write": "prefkit.data",
    "write_jsonl": "prefkit.data", "write_parquet": "prefkit.data",
    "make_personas": "prefkit.data", "PersonaConfig": "prefkit.data", "Personas": "prefkit.data",
    "read_statements": "prefkit.data", "check_users": "prefkit.data",
    "condition_on_users": "prefkit.data", "UserConditioning": "prefkit.data",
    "Encoder": "prefkit.data.encode", "EncodeConfig": "prefkit.data.encode", "collate": "prefkit.data.encode",
    "Batch": "prefkit.data.batch",
    # losses
    "LOSSES": "prefkit.losses", "LossSpec": "prefkit.losses", "LossOutput": "prefkit.losses",
    "PairLogps": "prefkit.losses", "ListLogps": "prefkit.losses", "UnpairedLogps": "prefkit.losses",
    "get_loss": "prefkit.losses.registry", "validate_loss_params": "prefkit.losses.registry",
    "wpo_weights": "prefkit.losses.transforms", "ld_dpo": "prefkit.losses.transforms",
    # models
    "load_model": "prefkit.models", "load_tokenizer": "prefkit.models", "add_lora": "prefkit.models",
    "sequence_logps": "prefkit.models", "SequenceLogps": "prefkit.models",
    "target_logps": "prefkit.models.chunked", "head_logps": "prefkit.models.chunked",
    "pack_batch": "prefkit.models.packing", "packed_sequence_logps": "prefkit.models.packing",
    "prefix_shared_sequence_logps": "prefkit.models.packing",
    "load_gguf_cached": "prefkit.models.gguf",
    "RewardModel": "prefkit.models.reward", "RewardModelConfig": "prefkit.models.heads",
    "score_records": "prefkit.models.reward",
    "ScalarHead": "prefkit.models.heads", "MultiObjectiveHead": "prefkit.models.heads",
    "TieHead": "prefkit.models.heads", "GPMHead": "prefkit.models.heads",
    # training
    "RunConfig": "prefkit.train", "load_config": "prefkit.train", "Trainer": "prefkit.train",
    "run": "prefkit.train", "Objective": "prefkit.train", "StepOutput": "prefkit.train",
    "RewardObjective": "prefkit.train", "load_reward_config": "prefkit.train",
    "train_reward_model": "prefkit.train",
    # evaluation and demo
    "evaluate_reward_model": "prefkit.eval", "RewardEvalReport": "prefkit.eval",
    "expected_calibration_error": "prefkit.eval", "pairwise_accuracy": "prefkit.eval",
    "evaluate_margins": "prefkit.eval", "print_report": "prefkit.eval", "write_report": "prefkit.eval",
    "ranking_accuracy": "prefkit.eval.ranking", "idealized_ranking_accuracy": "prefkit.eval.ranking",
    "alignment_gap": "prefkit.eval.ranking", "likelihood_displacement": "prefkit.eval.displacement",
    "ches_scores": "prefkit.eval.displacement", "win_rate": "prefkit.eval.winrate",
    "fit_bradley_terry": "prefkit.eval.arena", "kendall_tau": "prefkit.eval.arena",
    "evaluate_suite": "prefkit.eval.judge_suite", "build_report": "prefkit.eval.report",
    "diagnose": "prefkit.data.diagnose",
    "run_demo": "prefkit.toy", "DemoResult": "prefkit.toy",
    # online loop and RL
    "run_online": "prefkit.online", "OnlineConfig": "prefkit.online", "SamplingSettings": "prefkit.online",
    "TorchSampler": "prefkit.online", "FunctionJudge": "prefkit.online", "RewardModelJudge": "prefkit.online",
    "LMJudge": "prefkit.online", "RewardMix": "prefkit.online", "ALGORITHMS": "prefkit.online",
}

__all__ = ["__version__", "PrefkitError", "DataError", "ConfigError", *sorted(_EXPORTS)]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'prefkit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
