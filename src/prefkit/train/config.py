"""Run configuration: dataclasses with one docstring per field, read from YAML plus ``key=value`` overrides.

A run config has sections (``model``, ``lora``, ``reference``, ``data``, ``encode``, ``loss``,
``train``, ``output``, ``eval``, and ``reward`` for a reward-model job); each is a dataclass below whose
attribute docstrings are the only help text (``docs/training.md`` embeds them:
``python -m prefkit.train.config_docs --write-docs docs/training.md``). On the command line, dotted
keys address nested fields: ``train.lr=1e-5 loss.beta=0.2``. Values are parsed as YAML scalars.

Rules:
- unknown keys are errors naming the nearest valid key;
- the ``loss`` section holds ``name`` and the loss's own parameters (``loss.beta``), validated against
  the registry (``prefkit.losses``) by :func:`load_config`, before any model loads;
- every value is checked when parsed (finite, in range, cross-field rules), and so are the files and folders
  it names (:func:`check_paths`), before any model loads: each problem one ConfigError line naming the key.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import math
import os
import textwrap
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Literal

import yaml

from prefkit.data.condition import UserConditioning
from prefkit.data.encode import EncodeConfig
from prefkit.errors import ConfigError, did_you_mean
from prefkit.losses import DEFAULT_LOSS, DEFAULT_REWARD_LOSS
from prefkit.models.heads import DEFAULT_TIE_MODEL, TIE_MODELS, RewardModelConfig
from prefkit.train.distributed import DistributedConfig, check_config
from prefkit.train.eval_config import EvalConfig
from prefkit.train.trl import apply_trl_keys

POLICY_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
"""``lora.target_modules`` of a policy when unset; a reward model's default is ``"all-linear"``."""

TOY = "toy"
"""``model.path`` naming the built-in toy world (``prefkit.toy.TOY_MARKER``): no files to check."""

RULES: dict[str, Any] = {"> 0": lambda v: v > 0, ">= 0": lambda v: v >= 0, "[0, 1)": lambda v: 0 <= v < 1,
                         "[0, 1]": lambda v: 0 <= v <= 1}


def check_number(key: str, value: float | None, rule: str) -> None:
    """ConfigError naming ``key`` unless ``value`` (None passes) is a finite number meeting ``rule`` (in RULES)."""
    if value is not None and not (math.isfinite(value) and RULES[rule](value)):
        raise ConfigError(f"{key} must be {'in' if rule[0] == '[' else 'finite and'} {rule}; got {value!r}")


@dataclass
class ModelConfig:
    """The policy model."""

    path: str = ""
    """Local Hugging Face model directory, a ``.gguf`` file (needs the ``gguf`` package), or a hub id ``org/name[@revision]`` (also
    ``model.tokenizer``, ``reference.path``, ``lora.adapter``; a local folder of that name wins), downloaded when online, read from the local hub cache when ``HF_HUB_OFFLINE=1``. For a reward-model job, the backbone."""
    tokenizer: str | None = None
    """Tokenizer directory; defaults to ``model.path`` (for a ``.gguf`` file, the tokenizer inside it)."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Dtype the weights are loaded in; compute precision is ``train.mixed_precision``."""
    gradient_checkpointing: bool = False
    """Recompute activations in backward (less memory, ~30% more compute)."""
    chunk_size: int = 1024
    """Scored tokens per output-layer chunk in the log-prob engine (memory ~ chunk_size x vocab x 8 B)."""
    packing: bool = True
    """Padding-free fast path (sequences packed end to end; same results) for the policy's log-probs and
    for reward models on causal decoder and BERT-family encoder backbones; falls back to padded rows for
    models it cannot run (other encoders, sliding-window attention)."""
    share_prefix: bool = True
    """With ``model.packing``, encode each example's prompt once for all its completions (exact)."""
    dropout: bool = False
    """Keep the model's own dropout layers during training (policy, reward-model backbone, online policy).
    Off by default, as TRL's ``disable_dropout``: dropout adds noise to log-ratios and reward margins and
    slows training. ``lora.dropout`` and ``reward.dropout`` apply either way."""

    def __post_init__(self) -> None:
        if self.chunk_size < 1:
            raise ConfigError(f"model.chunk_size must be >= 1; got {self.chunk_size}")


@dataclass
class LoraConfig:
    """Optional LoRA adapter on the policy (peft)."""

    r: int = 0
    """LoRA rank; 0 trains all weights (no adapter)."""
    alpha: float = 16.0
    """LoRA scaling numerator (the update is scaled by alpha / r)."""
    dropout: float = 0.0
    """Dropout on the LoRA input (0 keeps training deterministic)."""
    target_modules: list[str] | None = None
    """Names of the linear modules that get adapters, or ``[all-linear]``; null: the policy's attention
    projections (``q_proj``, ``k_proj``, ``v_proj``, ``o_proj``), a reward model's every linear layer."""
    adapter: str | None = None
    """Existing adapter directory to start from (trained further), instead of a fresh one."""

    def __post_init__(self) -> None:
        if self.r < 0:
            raise ConfigError(f"lora.r must be >= 0 (0 disables LoRA); got {self.r}")
        check_number("lora.alpha", self.alpha, "> 0")
        check_number("lora.dropout", self.dropout, "[0, 1)")


@dataclass
class ReferenceConfig:
    """Where reference log-probs come from (only for losses that need a reference)."""

    mode: Literal["auto", "frozen", "adapters_off", "precomputed"] = "auto"
    """``frozen``: a second, frozen copy of the model; ``adapters_off``: the policy with its LoRA adapters
    disabled (no second copy; needs ``lora.r > 0``); ``precomputed``: log-probs computed once and cached
    on disk (see ``reference.cache_dir``); ``auto``: ``adapters_off`` with LoRA, else ``frozen``."""
    path: str | None = None
    """Reference model directory or ``.gguf`` file; defaults to ``model.path``."""
    cache_dir: str = "~/.cache/prefkit/reference"
    """Directory of the precomputed reference log-prob cache (keyed by a fingerprint of weights,
    tokenizer, data and encoding settings)."""
    batch_size: int = 8
    """Examples per forward pass when precomputing reference log-probs."""

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"reference.batch_size must be >= 1; got {self.batch_size}")


@dataclass
class DataConfig:
    """Training and evaluation data (read with ``prefkit.data.load``)."""

    train: str = ""
    """Training data file (``.jsonl``, ``.json``, ``.parquet``, ``.csv``, optionally ``.gz``), or a hub dataset ``org/name[@revision][:split]`` (split: ``train`` by default)."""
    eval: str | None = None
    """Evaluation data file; without it, ``data.eval_fraction`` of ``data.train`` is held out."""
    format: str = "auto"
    """Input format for ``prefkit.data.load`` (``auto`` detects it)."""
    columns: dict[str, str] = field(default_factory=dict)
    """Column renames for ``prefkit.data.load``: our field name -> your column name (``{prompt: question}``)."""
    on_error: Literal["raise", "skip"] = "raise"
    """Bad rows: ``raise`` stops at the first one, ``skip`` leaves them out (counted per reason)."""
    eval_fraction: float = 0.0
    """Fraction of the training records held out for evaluation when ``data.eval`` is unset."""
    limit: int | None = None
    """Use only the first ``limit`` training records."""
    eval_by: str | None = None
    """Reward models: a column (record field or metadata key, e.g. ``subset``) to break the evaluation
    report's accuracy down by."""
    condition_on_users: UserConditioning | None = None
    """User-conditioned policy (P-RLHF, user tokens): options of ``prefkit.data.condition.UserConditioning``
    (``{by: group}``; ``{}`` for the defaults) put a marker naming each record's user (or group) into its
    prompt; evaluation users not in the training data get the generic marker. null: prompts as read."""

    def __post_init__(self) -> None:
        check_number("data.eval_fraction", self.eval_fraction, "[0, 1)")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"data.limit must be >= 1; got {self.limit}")


@dataclass
class LossConfig:
    """The loss: a registry name plus its parameters (``loss.beta=0.2``); see ``prefkit losses``."""

    name: str = DEFAULT_LOSS
    """Registry name of the loss (``prefkit losses`` lists them)."""
    params: dict[str, Any] = field(default_factory=dict)
    """The loss's keyword parameters; written flat in the section (``loss: {name: dpo, beta: 0.2}``)."""
    wpo: bool = False
    """WPO (arXiv 2406.11827): multiply each pair's loss by the detached weight exp(mean token log-prob
    of chosen + of rejected) under the current policy (``prefkit.losses.transforms.wpo_weights``); pair
    losses only."""
    ld_dpo_alpha: float | None = None
    """LD-DPO (arXiv 2409.06411): scale the log-probs of tokens past the shorter response's length by this
    α in [0, 1], for the policy and the reference, before the loss (``prefkit.losses.transforms.ld_dpo``);
    unset = off, 1 = no change; pair losses only; needs per-token reference log-probs (not the cache)."""

    def __post_init__(self) -> None:
        check_number("loss.ld_dpo_alpha", self.ld_dpo_alpha, "[0, 1]")


@dataclass
class TrainConfig:
    """Optimisation and the loop."""

    seed: int = 0
    """Seed for data order, adapter init and dropout (0 to 2^32 - 1)."""
    batch_size: int = 8
    """Examples per process per micro-step (a pair counts once)."""
    grad_accum: int = 1
    """Micro-steps per optimizer step; the global batch is batch_size x grad_accum x processes."""
    max_steps: int = 0
    """Optimizer steps; 0 runs ``train.epochs`` epochs."""
    epochs: float = 1.0
    """Passes over the training data when ``train.max_steps`` is 0 (> 0 then)."""
    lr: float = 5e-6
    """Peak learning rate (AdamW; > 0)."""
    weight_decay: float = 0.0
    """AdamW decoupled weight decay (>= 0)."""
    adam_betas: tuple[float, float] = (0.9, 0.999)
    """AdamW (beta1, beta2), each in [0, 1)."""
    adam_eps: float = 1e-8
    """AdamW epsilon (> 0)."""
    scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    """Learning-rate decay after warmup (to 0 at the last step; ``constant`` keeps the peak)."""
    warmup_steps: int = 0
    """Linear warmup steps (exclusive with ``train.warmup_ratio``)."""
    warmup_ratio: float = 0.0
    """Linear warmup as a fraction of all steps (exclusive with ``train.warmup_steps``)."""
    max_grad_norm: float | None = 1.0
    """Clip the global gradient norm to this value (> 0); null disables clipping."""
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    """Autocast precision (accelerate); weights stay in ``model.dtype``."""
    eval_every: int = 0
    """Evaluate every N optimizer steps (and at the end); 0 evaluates only at the end."""
    eval_batches: int = 0
    """Evaluation batches per evaluation; 0 uses all evaluation data."""
    log_every: int = 1
    """Write a metrics line every N optimizer steps."""
    save_every: int = 0
    """Write a checkpoint every N optimizer steps; 0 writes none (the final model is always saved)."""
    keep_last: int = 2
    """Checkpoints kept on disk (older ones are deleted)."""
    progress: bool = True
    """Show a rich progress bar (loss, accuracy, tokens/s)."""
    trim_memory: bool = True
    """On CPU under glibc, hand the memory freed by each micro-step back to the operating system
    (``malloc_trim``). Packed batches vary in length, so without it freed blocks of one step rarely fit
    the next and the resident set ratchets up (MiniLM-L6 reward model, 80 steps: peak 1.9 GB, 1.2 GB
    with it, for about 5% more time). No effect on GPU memory or without glibc."""

    def __post_init__(self) -> None:
        for key in ("batch_size", "grad_accum", "log_every", "keep_last"):
            if getattr(self, key) < 1:
                raise ConfigError(f"train.{key} must be >= 1; got {getattr(self, key)}")
        for key in ("max_steps", "warmup_steps", "eval_every", "eval_batches", "save_every"):
            if getattr(self, key) < 0:
                raise ConfigError(f"train.{key} must be >= 0; got {getattr(self, key)}")
        if not 0 <= self.seed < 2**32:
            raise ConfigError(f"train.seed must be in [0, 2^32 - 1]; got {self.seed}")
        for key, rule in (("lr", "> 0"), ("epochs", ">= 0"), ("weight_decay", ">= 0"), ("adam_eps", "> 0"),
                          ("warmup_ratio", "[0, 1)")):
            check_number(f"train.{key}", getattr(self, key), rule)
        for i, beta in enumerate(self.adam_betas):
            check_number(f"train.adam_betas[{i}]", beta, "[0, 1)")
        if self.max_steps == 0 and self.epochs <= 0:
            raise ConfigError("train.epochs must be > 0 when train.max_steps is 0")
        if self.warmup_steps and self.warmup_ratio:
            raise ConfigError("set only one of train.warmup_steps and train.warmup_ratio")
        if self.max_grad_norm == 0:
            raise ConfigError("train.max_grad_norm must be > 0; use null to disable clipping")
        check_number("train.max_grad_norm", self.max_grad_norm, "> 0")


@dataclass
class OutputConfig:
    """The run directory and what goes in it."""

    dir: str = "runs/prefkit"
    """Run directory: config.yaml, metrics.jsonl, checkpoints/, plots, final model."""
    overwrite: bool = False
    """Start a new run in a prefkit run folder that holds one: clears only what prefkit wrote there (listed
    in its ``.prefkit-run.json``); a folder prefkit did not create is refused either way."""
    tensorboard: bool = True
    """Write TensorBoard events (when ``tensorboard`` is installed)."""
    plots: bool = True
    """Write PNG plots of the main curves at the end."""
    save_model: bool = True
    """Save the final model (and adapter) with ``save_pretrained`` in ``<dir>/model``."""


@dataclass
class RunConfig:
    """A whole training job."""

    model: ModelConfig = field(default_factory=ModelConfig)
    """The policy model."""
    lora: LoraConfig = field(default_factory=LoraConfig)
    """Optional LoRA adapter."""
    reference: ReferenceConfig = field(default_factory=ReferenceConfig)
    """Reference model / cache."""
    data: DataConfig = field(default_factory=DataConfig)
    """Training and evaluation data."""
    encode: EncodeConfig = field(default_factory=EncodeConfig)
    """Tokenisation and truncation (``prefkit.data.encode.EncodeConfig``)."""
    loss: LossConfig = field(default_factory=LossConfig)
    """Loss name and parameters."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Optimisation and the loop."""
    output: OutputConfig = field(default_factory=OutputConfig)
    """Outputs."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Policy diagnostics during training (``prefkit.train.eval_config.EvalConfig``)."""
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    """Several processes: DDP or FSDP (``prefkit.train.distributed``, docs/distributed.md)."""
    reward: RewardModelConfig | None = None
    """A reward-model job (``prefkit rm train``): head, pooling, input length and truncation of the reward
    model on the ``model.path`` backbone (``prefkit.models.heads.RewardModelConfig``); null for a policy."""

    def __post_init__(self) -> None:
        check_config(self.distributed.strategy, self.train.mixed_precision)
        if self.reference.mode == "adapters_off" and self.lora.r == 0:
            raise ConfigError("reference.mode=adapters_off needs a LoRA adapter (set lora.r > 0)")
        rm = self.reward
        if rm is not None:
            if self.lora.adapter:
                raise ConfigError("lora.adapter: a reward model starts from a fresh adapter; unset it")
            check_number("reward.dropout", rm.dropout, "[0, 1)")
            for i, weight in enumerate(rm.weights or ()):
                check_number(f"reward.weights[{i}]", weight, ">= 0")
            if rm.gpm_dim < 2 or rm.gpm_dim % 2:
                raise ConfigError(f"reward.gpm_dim must be an even number >= 2; got {rm.gpm_dim}")


# ---------------------------------------------------------------------------------------------
# Attribute docstrings, dict <-> dataclass, overrides.


@cache
def field_docs(cls: type) -> dict[str, str]:
    """``{field: docstring}`` from the attribute docstrings in ``cls``'s source."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):
        return {}
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    docs = {}
    for node, nxt in zip(body, body[1:], strict=False):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _section_type(tp: Any) -> Any:
    """The dataclass of a section annotation (``X`` or ``X | None``), else None."""
    if dataclasses.is_dataclass(tp):
        return tp
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and len(args) == 1 and dataclasses.is_dataclass(args[0]):
        return args[0]
    return None


def all_keys(cls: type = RunConfig, prefix: str = "") -> list[str]:
    """Every dotted key of a config class (sections expanded)."""
    keys = []
    for f in dataclasses.fields(cls):
        tp = _section_type(_hints(cls)[f.name])
        if tp is not None:
            keys += all_keys(tp, f"{prefix}{f.name}.")
        elif not (cls is LossConfig and f.name == "params"):
            keys.append(prefix + f.name)
    return keys


def _unknown(key: str) -> ConfigError:
    """'unknown config key' naming the nearest valid key: same section first, then the same field name
    in another section ('lr' -> 'train.lr'), then anything close."""
    keys = all_keys()
    section, _, leaf = key.rpartition(".")
    same_section = [k for k in keys if k.rpartition(".")[0] == section] if section else []
    same_leaf = [k for k in keys if k.rpartition(".")[2] == leaf]
    hint = (did_you_mean(key, same_section) if same_section else "") or (
        f" (did you mean {same_leaf[0]!r}?)" if same_leaf else did_you_mean(key, keys))
    return ConfigError(f"unknown config key {key!r}{hint}")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """``value`` checked against (and lightly converted to) the annotation ``tp``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    bad = ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        section = _section_type(tp)
        if section is not None and isinstance(value, Mapping):  # an optional section: its own errors
            return from_dict(section, value, key + ".")
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                pass
        raise bad
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not one of {list(args)}{did_you_mean(str(value), args)}")
        return value
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise bad
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads '1e-5' as a string
            try:
                return float(value)
            except ValueError:
                raise bad from None
        raise bad
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise bad
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise bad
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise bad
            return tuple(_coerce(v, a, key) for v, a in zip(value, args, strict=True))
        item = args[0] if args else Any
        return origin(_coerce(v, item, key) for v in value)
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise bad
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise bad
        return from_dict(tp, value, key + ".")
    return value


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) is not None:  # tuple[float, float], not 'tuple'
        return str(tp).replace("typing.", "")
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def from_dict(cls: type, data: Mapping[str, Any], prefix: str = "") -> Any:
    """Build config dataclass ``cls`` from a (nested) mapping; unknown keys raise ``ConfigError``."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {data!r}")
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    kwargs: dict[str, Any] = {}
    if cls is LossConfig:  # flat section: name, the input switches and the loss's parameters
        own = [f.name for f in dataclasses.fields(LossConfig) if f.name != "params"]
        params = dict(data.get("params") or {})
        params.update({k: v for k, v in data.items() if k not in (*own, "params")})
        for key in own:
            if key in data:
                kwargs[key] = _coerce(data[key], hints[key], prefix + key)
        return LossConfig(**kwargs, params=params)
    for key, value in data.items():
        if key not in names:
            if cls is RewardModelConfig and key in ("lora_r", "lora_alpha"):
                RewardModelConfig.from_dict({key: value})  # raises the one-line "now lora.r" hint
            if isinstance(value, Mapping) and value:  # an unknown section: hint from its first key
                raise _unknown(f"{prefix}{key}.{next(iter(value))}")
            raise _unknown(prefix + str(key))
        kwargs[key] = _coerce(value, hints[key], prefix + key)
    try:
        return cls(**kwargs)
    except ConfigError as err:  # a section's own message (EncodeConfig, RewardModelConfig) gets its name
        if prefix and prefix.rstrip(".") not in str(err):
            raise ConfigError(f"{prefix.rstrip('.')}: {err}") from None
        raise


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict of a config (tuples as lists, the loss section flat), ready for YAML."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if isinstance(value, LossConfig):  # switches only when on (older configs and checkpoints lack them)
            switches = {k: getattr(value, k) for k in ("wpo", "ld_dpo_alpha")
                        if getattr(value, k) != getattr(LossConfig, k)}
            out[f.name] = {"name": value.name, **switches, **value.params}
        elif dataclasses.is_dataclass(value):
            out[f.name] = to_dict(value)
        elif isinstance(value, tuple):
            out[f.name] = list(value)
        else:
            out[f.name] = value
    return out


def parse_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """``["train.lr=1e-5", "loss.beta=0.2"]`` -> nested dict; values parsed as YAML scalars."""
    tree: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"bad override {pair!r}; write key=value, e.g. train.lr=1e-5")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        node = tree
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {pair!r} conflicts with another override of {part!r}")
        node[parts[-1]] = value
    return tree


def merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; ``over`` wins."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML mapping from ``path`` (ConfigError if missing or not a mapping)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: invalid YAML ({' '.join(str(err).split())})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config sections at the top level")
    return data


def check_loss(cfg: RunConfig) -> None:
    """Validate the loss name and parameters against the registry (fills in defaults)."""
    from prefkit.losses.registry import get_loss, validate_loss_params

    spec = get_loss(cfg.loss.name)
    cfg.loss.params = dict(validate_loss_params(cfg.loss.name, cfg.loss.params))
    if cfg.reference.mode == "precomputed" and spec.needs_reference and "token_logps" in spec.needs:
        raise ConfigError(f"loss {cfg.loss.name!r} needs per-token reference log-probs, which the cache "
                          "does not hold; use reference.mode=frozen or adapters_off")
    switches = [k for k, on in (("loss.wpo", cfg.loss.wpo), ("loss.ld_dpo_alpha", cfg.loss.ld_dpo_alpha is not None))
                if on]
    if switches and spec.kind != "pair":
        raise ConfigError(f"{' and '.join(switches)} apply to pair losses only; loss {cfg.loss.name!r} is of kind "
                          f"{spec.kind!r}")
    if cfg.loss.ld_dpo_alpha is not None and cfg.reference.mode == "precomputed" and spec.needs_reference:
        raise ConfigError("loss.ld_dpo_alpha needs per-token reference log-probs, which the cache does not hold; "
                          "use reference.mode=frozen or adapters_off")


def check_paths(cfg: RunConfig) -> None:
    """ConfigError (one line naming the key) unless the paths of ``cfg`` hold what they should (models:
    ``prefkit.models.load.check_model_files``), ``data.*`` exist, and ``output.dir`` and
    ``reference.cache_dir`` are no files. An empty ``model.path`` (a model passed in Python) names no model, ``model.path: toy`` no files."""
    from prefkit.data import sources
    from prefkit.models import load as model_load

    if cfg.model.path != TOY:
        model_load.check_model_files(cfg.model.path, cfg.model.tokenizer, cfg.reference.path, cfg.lora.adapter,
                                     backbone=cfg.reward is not None)
        for key, data in (("data.train", cfg.data.train), ("data.eval", cfg.data.eval)):
            problem = sources.hub_dataset_missing(data)[1] if data and sources.hub_dataset(data) else (
                None if not data or os.path.lexists(data) else f"{data!r} does not exist")  # hub id: cached if offline
            if problem:
                raise ConfigError(f"{key} {problem}")
            if data and os.path.isdir(data) and not any(
                    os.path.lexists(Path(data, f)) for f in ("dataset_info.json", "state.json", "dataset_dict.json")):
                raise ConfigError(f"{key} {data!r} is a folder but not a datasets folder (save_to_disk); "
                                  "name a data file")
    for key, folder in (("output.dir", Path(cfg.output.dir)), ("reference.cache_dir",
                                                               Path(cfg.reference.cache_dir).expanduser())):
        existing = next((p for p in (folder, *folder.parents) if os.path.lexists(p)), None)
        if existing is not None and not existing.is_dir():
            where = "" if existing == folder else f": {str(existing)!r}"
            raise ConfigError(f"{key} {str(folder)!r}{where} exists and is not a folder; choose another {key}")


def load_config(path: str | Path | None = None, overrides: Sequence[str] = (),
                base: Mapping[str, Any] | None = None, *, check_files: bool = True) -> RunConfig:
    """Defaults <- ``base`` <- YAML file <- ``key=value`` overrides, validated (loss included), and with
    ``check_files`` (the default) its paths too (:func:`check_paths`), before any model loads."""
    data = dict(base or {})
    if path is not None:
        data = merge(data, apply_trl_keys(read_yaml(path)))  # TRL names (learning_rate...) -> prefkit keys
    data = merge(data, apply_trl_keys(parse_overrides(overrides)))
    cfg = from_dict(RunConfig, data)
    check_loss(cfg)
    if check_files:
        check_paths(cfg)
    return cfg


def check_head_and_loss(head: str, loss_name: str, spec: Any, tie_model: str | None = None) -> None:
    """Raise ConfigError when registry loss ``spec`` cannot train a reward head (before any model loads)."""
    from prefkit.losses.registry import get_loss, reward_losses

    if not spec.kind.startswith("reward_"):
        raise ConfigError(f"loss {loss_name!r} is a policy loss; a reward model needs a reward loss "
                          f"({', '.join(reward_losses())})")
    if head == "gpm" and spec.kind != "reward_pair":
        raise ConfigError(f"a GPM head learns from pairs only; loss {loss_name!r} is {spec.kind!r}")
    if head == "tie":
        tie_losses = [n for n in reward_losses() if get_loss(n).head_params]
        if not spec.head_params:
            raise ConfigError(f"head 'tie' learns its tie parameter from a tie loss ({', '.join(tie_losses)}), "
                              f"not {loss_name!r}")
        needed = TIE_MODELS[tie_model or DEFAULT_TIE_MODEL]
        if needed not in spec.head_params:
            raise ConfigError(f"reward.tie_model={tie_model!r} learns {needed!r}, but loss {loss_name!r} takes "
                              f"{list(spec.head_params)}; pick the tie loss of that model")


REWARD_BASE: dict[str, Any] = {"reward": {}, "loss": {"name": DEFAULT_REWARD_LOSS}, "output": {"dir": "runs/rm"},
                               "encode": {"add_bos": False, "add_eos": False, "max_length": None}}
"""What a reward-model job changes in the defaults: a ``reward`` section, the ``bradley_terry`` loss,
``runs/rm``, and encoding without BOS/EOS (the reward model adds its tokenizer's own special tokens and
truncates to ``reward.max_length``)."""


def load_reward_config(path: str | Path | None = None, overrides: Sequence[str] = (), *,
                       check_files: bool = True) -> RunConfig:
    """A reward-model job (``prefkit rm train``): :func:`load_config` over :data:`REWARD_BASE`, checked
    (loss against head) before any model loads."""
    from prefkit.losses.registry import get_loss

    cfg = load_config(path, overrides, base=REWARD_BASE, check_files=check_files)
    if cfg.reward is None:
        cfg.reward = RewardModelConfig()
    if cfg.encode.max_length is not None or cfg.encode.max_prompt_length is not None:
        raise ConfigError("a reward model truncates its inputs to reward.max_length (keeping "
                          "reward.truncation_side's other end); unset encode.max_length / encode.max_prompt_length")
    check_head_and_loss(cfg.reward.head, cfg.loss.name, get_loss(cfg.loss.name), cfg.reward.tie_model)
    return cfg


def dump_config(cfg: RunConfig) -> str:
    """The resolved config as YAML."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


__all__ = ["RunConfig", "ModelConfig", "LoraConfig", "ReferenceConfig", "DataConfig", "LossConfig",
           "TrainConfig", "OutputConfig", "EvalConfig", "EncodeConfig", "RewardModelConfig", "load_config", "load_reward_config", "from_dict", "to_dict",
           "dump_config", "check_head_and_loss", "parse_overrides", "field_docs", "all_keys", "check_loss",
           "check_paths", "check_number"]
