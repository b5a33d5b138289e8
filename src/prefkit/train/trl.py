"""TRL / transformers ``TrainingArguments`` key names in a run config, and ``--key value`` flags.

A TRL user's config (``DPOConfig`` fields, flat at the top level of the YAML, or ``--max_steps 5`` on the
command line) is accepted where the meaning is the same as a prefkit key: each TRL key is moved to its
prefkit key with one notice line on stderr (``note: TRL key 'learning_rate' is prefkit's 'train.lr'``).
Loss keys (``loss_type``, ``beta``, ``rpo_alpha``...) go through ``prefkit.losses.aliases``. Keys without a
prefkit equivalent are left alone, so they fail as unknown keys naming the nearest valid one. See
``docs/trl.md`` for the table.

- ``apply_trl_keys(data)``: a raw config dict with TRL keys rewritten (``load_config`` calls it).
- ``flags_to_overrides(tokens)``: ``--key value`` / ``--key=value`` command-line tokens as ``key=value``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from prefkit.errors import ConfigError
from prefkit.losses.aliases import TRL_LOSS_KEYS, notice, resolve_section, trl_loss_section

_SCHEDULERS = {"cosine": "cosine", "linear": "linear", "constant_with_warmup": "constant", "constant": "constant"}


def _scheduler(value: Any) -> Any:
    if value not in _SCHEDULERS:
        raise ConfigError(f"TRL lr_scheduler_type={value!r}: prefkit's train.scheduler is cosine, linear or "
                          "constant (TRL's cosine, linear, constant_with_warmup)")
    return _SCHEDULERS[value]


def _max_steps(value: Any) -> Any:
    return 0 if value == -1 else value  # TRL's -1 = "use num_train_epochs" = prefkit's 0


def _reference_mode(value: Any) -> Any:
    return "precomputed" if value is True else None


TRL_KEYS: dict[str, tuple[str, Callable[[Any], Any] | None]] = {
    "learning_rate": ("train.lr", None),
    "per_device_train_batch_size": ("train.batch_size", None),
    "gradient_accumulation_steps": ("train.grad_accum", None),
    "max_steps": ("train.max_steps", _max_steps),
    "num_train_epochs": ("train.epochs", None),
    "warmup_ratio": ("train.warmup_ratio", None),
    "warmup_steps": ("train.warmup_steps", None),
    "lr_scheduler_type": ("train.scheduler", _scheduler),
    "weight_decay": ("train.weight_decay", None),
    "max_grad_norm": ("train.max_grad_norm", None),
    "adam_epsilon": ("train.adam_eps", None),
    "seed": ("train.seed", None),
    "logging_steps": ("train.log_every", None),
    "save_steps": ("train.save_every", None),
    "eval_steps": ("train.eval_every", None),
    "save_total_limit": ("train.keep_last", None),
    "max_length": ("encode.max_length", None),
    "max_prompt_length": ("encode.max_prompt_length", None),
    "output_dir": ("output.dir", None),
    "model_name_or_path": ("model.path", None),
    "gradient_checkpointing": ("model.gradient_checkpointing", None),
    "precompute_ref_log_probs": ("reference.mode", _reference_mode),
    "precompute_ref_batch_size": ("reference.batch_size", None),
}
"""TRL / ``TrainingArguments`` key -> (prefkit dotted key, value conversion or None)."""

_PRECISION = {"bf16": "bf16", "fp16": "fp16"}


def _put(data: dict[str, Any], trl_key: str, dotted: str, value: Any) -> None:
    section, _, leaf = dotted.partition(".")
    node = data.get(section)
    node = dict(node) if isinstance(node, Mapping) else {}
    if leaf in node and node[leaf] != value:
        raise ConfigError(f"TRL {trl_key}={value!r} conflicts with {dotted}={node[leaf]!r}; keep one")
    node[leaf] = value
    data[section] = node


def apply_trl_keys(data: Mapping[str, Any]) -> dict[str, Any]:
    """``data`` (a raw config mapping) with the top-level TRL keys moved to their prefkit keys, one notice
    line each, and a TRL loss name in ``loss.name`` resolved; other keys are left for the usual checks."""
    out = dict(data)
    for trl_key, (dotted, convert) in TRL_KEYS.items():
        if trl_key not in out:
            continue
        raw = out.pop(trl_key)
        value = convert(raw) if convert else raw
        if value is None and convert is not None:  # e.g. precompute_ref_log_probs: false = prefkit's default
            notice(f"TRL key {trl_key!r}={raw!r} is prefkit's default; ignored")
            continue
        notice(f"TRL key {trl_key!r} is prefkit's {dotted!r}")
        _put(out, trl_key, dotted, value)
    for trl_key, precision in _PRECISION.items():
        if trl_key in out:
            on = out.pop(trl_key)
            notice(f"TRL key {trl_key!r} is prefkit's 'train.mixed_precision'")
            if on:
                _put(out, trl_key, "train.mixed_precision", precision)
    if "adam_beta1" in out or "adam_beta2" in out:
        betas = list((out.get("train") or {}).get("adam_betas", (0.9, 0.999)))
        for i, trl_key in enumerate(("adam_beta1", "adam_beta2")):
            if trl_key in out:
                betas[i] = out.pop(trl_key)
                notice(f"TRL key {trl_key!r} is prefkit's 'train.adam_betas[{i}]'")
        out["train"] = {**(out.get("train") or {}), "adam_betas": betas}
    loss_keys = {key: out.pop(key) for key in TRL_LOSS_KEYS if key in out}
    if loss_keys:
        section = out.get("loss")
        out["loss"] = trl_loss_section(loss_keys, section if isinstance(section, Mapping) else None)
    elif "loss" in out:
        out["loss"] = resolve_section(out["loss"])
    return out


def flags_to_overrides(tokens: Sequence[str]) -> list[str]:
    """Command-line ``tokens`` with ``--key value`` and ``--key=value`` written as ``key=value`` (a bare
    ``--key`` before another flag or at the end is ``key=true``); ``key=value`` tokens pass unchanged. A
    ``.yaml`` file given without ``--config`` and any other bare word raise a one-line ``ConfigError``
    saying what to write."""
    out: list[str] = []
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if token.startswith("--") and len(token) > 2:
            key, sep, value = token[2:].partition("=")
            if not sep:
                nxt = tokens[i + 1] if i + 1 < len(tokens) else None
                if nxt is None or (nxt.startswith("--") and len(nxt) > 2):
                    value = "true"
                else:
                    value, i = nxt, i + 1
            out.append(f"{key}={value}")
        elif "=" in token and not token.startswith("-"):
            out.append(token)
        elif Path(token).suffix in (".yaml", ".yml"):
            raise ConfigError(f"bad argument {token!r}: did you mean --config {token}?")
        else:
            raise ConfigError(f"bad argument {token!r}; overrides are key=value or --key value "
                              "(e.g. train.lr=1e-5 or --learning_rate 1e-5)")
        i += 1
    return out


__all__ = ["TRL_KEYS", "apply_trl_keys", "flags_to_overrides"]
