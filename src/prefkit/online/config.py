"""The online loop's settings: :class:`OnlineConfig` (the ``online:`` options)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from prefkit.errors import ConfigError, check_known_keys
from prefkit.online.sampler import SamplingSettings

PairBuilding = Literal["best_vs_worst", "all_pairs", "random_pair", "ranked_list"]
ReferenceRule = Literal["fixed", "refresh_every_k"]


@dataclass(frozen=True)
class OnlineConfig:
    """How the online loop runs; validated when built (a bad value is a one-line :class:`ConfigError`)."""

    algorithm: str | Mapping[str, Any] = "online_dpo"
    """The algorithm plug-in: a name (``online_dpo``, ``xpo``, ``sppo_selfplay``, ``nash_md``, ``egpo``; RL from rewards:
    ``grpo``, ``rloo``, ``rsf``, ``ppo``) or a mapping
    ``{name: ..., <its options>}``; see ``prefkit.online.algorithms``."""
    rounds: int = 1
    """Rounds of sample → judge → train (>= 1)."""
    prompts_per_round: int = 8
    """Prompts sampled per round (>= 1), taken from a seeded cyclic order over the prompt list."""
    samples_per_prompt: int = 4
    """G, completions sampled per prompt (>= 2: a prompt needs two samples to compare)."""
    pairs: PairBuilding = "best_vs_worst"
    """How records are built from a prompt's judged samples: ``best_vs_worst``, ``all_pairs``,
    ``random_pair`` (pair losses) or ``ranked_list`` (list losses); see ``prefkit.online.algorithms``."""
    sampling: SamplingSettings = field(default_factory=SamplingSettings)
    """Sampler settings (temperature, top-p, top-k, max_new_tokens, stop); the seed is set per round."""
    steps_per_round: int = 0
    """Optimizer steps per round (>= 0); 0: train ``epochs_per_round`` epochs over the round's records."""
    epochs_per_round: float = 1.0
    """Epochs over the round's records when ``steps_per_round`` is 0 (> 0)."""
    reference: ReferenceRule = "fixed"
    """``fixed``: the policy before round 0; ``refresh_every_k``: a frozen copy of the policy, renewed
    after every ``refresh_k`` rounds (iterative DPO)."""
    refresh_k: int = 1
    """Rounds between reference refreshes with ``reference="refresh_every_k"`` (>= 1)."""
    keep_optimizer: bool = True
    """Keep the AdamW state (moments) from round to round, as one optimizer over the whole run; False
    starts a fresh optimizer every round."""
    seed: int = 0
    """Seeds the prompt order, the sampler (per round), ``random_pair``, the trainer (``seed + round``) and
    the torch global RNG during each round (dropout), so that a round re-run after a resume is identical."""
    win_rate_vs_reference: bool = True
    """Per round, sample one completion per prompt from the reference and report
    ``objective/win_rate_vs_reference`` (costs those samples and their judge calls; only with a loss that
    has a reference)."""

    def __post_init__(self) -> None:
        if isinstance(self.sampling, Mapping):
            object.__setattr__(self, "sampling", SamplingSettings.from_dict(dict(self.sampling)))
        for name, low in (("rounds", 1), ("prompts_per_round", 1), ("samples_per_prompt", 2),
                          ("steps_per_round", 0), ("refresh_k", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ConfigError(f"online {name} must be an int >= {low}, got {v!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ConfigError(f"online seed must be an int, got {self.seed!r}")
        for name in ("keep_optimizer", "win_rate_vs_reference"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"online {name} must be true or false, got {getattr(self, name)!r}")
        e = self.epochs_per_round
        if isinstance(e, bool) or not isinstance(e, int | float) or not math.isfinite(e) or e <= 0:
            raise ConfigError(f"online epochs_per_round must be a finite number > 0, got {e!r}")
        for name, allowed in (("pairs", get_args(PairBuilding)), ("reference", get_args(ReferenceRule))):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"online {name} must be one of {list(allowed)}, got {getattr(self, name)!r}")
        if not isinstance(self.sampling, SamplingSettings):
            raise ConfigError(f"online sampling must be SamplingSettings or a mapping, got "
                              f"{type(self.sampling).__name__}")
        a = self.algorithm
        if not (isinstance(a, str) or (isinstance(a, Mapping) and isinstance(a.get("name"), str))):
            raise ConfigError(f"online algorithm must be a name or a mapping with a 'name' key, got {a!r}")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> OnlineConfig:
        """Build from a mapping (YAML); an unknown key is a ConfigError naming the nearest valid one."""
        check_known_keys(values, [f.name for f in dataclasses.fields(cls)], "online option")
        return cls(**values)

    @property
    def algorithm_name(self) -> str:
        """The algorithm's name."""
        return self.algorithm if isinstance(self.algorithm, str) else str(self.algorithm["name"])

    @property
    def algorithm_options(self) -> dict[str, Any]:
        """The algorithm's options (the mapping without ``name``; empty for a bare name)."""
        return {} if isinstance(self.algorithm, str) else {k: v for k, v in self.algorithm.items() if k != "name"}

    @property
    def record_kind(self) -> str:
        """The loss kind online DPO's records need: ``list`` for ``ranked_list``, else ``pair``."""
        return "list" if self.pairs == "ranked_list" else "pair"


__all__ = ["OnlineConfig", "PairBuilding", "ReferenceRule"]
