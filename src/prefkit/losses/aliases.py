"""TRL's DPO ``loss_type`` names and loss keys, resolved to prefkit registry names and parameters.

TRL (``trl.DPOTrainer`` / ``trl.DPOConfig``, read at TRL 1.16.0, ``trl/trainer/dpo_trainer.py``
``_compute_loss`` and ``trl/trainer/dpo_config.py``) names its losses differently. Each TRL name either
resolves to a prefkit loss with the *same* per-example values (``tests/test_trl_compat.py`` checks each
against TRL's formula), printing one notice line on stderr, or raises a one-line ``ConfigError`` saying why
prefkit has no loss with TRL's formula. A TRL name is never silently a different loss.

- ``TRL_ALIASES``: TRL name -> ``(prefkit name, fixed parameters)``.
- ``TRL_UNSUPPORTED``: TRL name -> why no prefkit loss matches it.
- ``TRL_SAME_NAME``: TRL names that are also prefkit names, with how the two compare.
- ``resolve(name)``: ``(prefkit name, fixed parameters)`` for a prefkit name or a TRL alias (notice).
- ``resolve_section(section)``: a config ``loss`` section with a TRL name rewritten.
- ``trl_loss_section(keys, section)``: TRL's flat loss keys (``loss_type``, ``beta``, ``rpo_alpha``...)
  turned into a prefkit ``loss`` section, one notice per key.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

from prefkit.errors import ConfigError

TRL_ALIASES: dict[str, tuple[str, dict[str, Any]]] = {
    "sigmoid": ("dpo", {}),
    "hinge": ("rso_hinge", {}),
    "exo_pair": ("exo", {}),
    "nca_pair": ("nca", {}),
    "robust": ("robust_dpo", {}),
    "sppo_hard": ("sppo", {}),
    "sigmoid_norm": ("ln_dpo", {}),
    "aot_unpaired": ("aot", {"variant": "unpaired"}),
    # TRL < 1.0 spelled aot_unpaired "aot_pair": it sorts chosen and rejected log-ratios separately, which
    # is prefkit's variant 'unpaired' (prefkit's 'paired' is TRL's plain "aot"); the names are swapped.
    "aot_pair": ("aot", {"variant": "unpaired"}),
}
"""TRL ``loss_type`` -> (prefkit registry name, parameters fixed by the TRL name)."""

TRL_UNSUPPORTED: dict[str, str] = {
    "sft": "TRL's 'sft' is the chosen responses' token-mean NLL over the whole batch, alone or added to "
           "another loss_type through loss_weights; prefkit has no such pair loss (for DPO + NLL use loss "
           "'rpo', whose alpha weighs a per-example token-mean NLL)",
    "ipo": "TRL's 'ipo' divides each log-ratio by its completion's token count before the squared error; "
           "prefkit's 'ipo' uses summed log-probs (the paper's Eq. 17), so the values differ; write "
           "loss.name=ipo for the paper's form",
}
"""TRL ``loss_type`` names (given as TRL's ``loss_type``) with no prefkit loss of the same formula."""

TRL_SAME_NAME: dict[str, str] = {
    "ipo": "different: TRL averages log-probs per token, prefkit sums them (the paper's Eq. 17)",
    "bco_pair": "same formula with δ = 0; prefkit's trainer passes the running reward mean as δ (the BCO "
                "paper, TRL < 1.0), TRL 1.x uses no shift",
    "aot": "same (variant 'paired', the default)",
    "apo_zero": "same up to the constant 1 TRL adds (prefkit's values are 1 lower; same gradients)",
    "apo_down": "same up to the constant 1 TRL adds (prefkit's values are 1 lower; same gradients)",
    "discopop": "same; TRL's tau is discopop_tau, and prefkit's default β is the paper's 0.05 (TRL: 0.1)",
}
"""TRL ``loss_type`` names that are prefkit registry names too, and how the two losses compare."""

TRL_LOSS_TYPES = ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
                  "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm")
"""Every ``loss_type`` of TRL 1.x's DPOTrainer (``dpo_config.py``, ``loss_type`` help)."""

F_DIVERGENCES = {"forward_kl": "forward_kl", "js_divergence": "js", "alpha_divergence": "alpha"}
"""TRL ``f_divergence_type`` -> prefkit ``fdpo`` ``divergence`` (``reverse_kl`` is plain DPO)."""


def notice(message: str) -> None:
    """One ``note:`` line on stderr."""
    print(f"note: {message}", file=sys.stderr)


def _fixed(params: Mapping[str, Any]) -> str:
    return "".join(f" with {key}={value!r}" for key, value in params.items())


def resolve(name: str) -> tuple[str, dict[str, Any]]:
    """``(prefkit name, fixed parameters)`` for ``name``: itself when not a TRL alias; for a TRL alias the
    registry name (one notice line on stderr); a ``ConfigError`` for a TRL-only name prefkit lacks."""
    from prefkit.losses import LOSSES

    if name in LOSSES or name not in TRL_ALIASES:
        if name not in LOSSES and name in TRL_UNSUPPORTED:
            raise ConfigError(f"loss {name!r} (TRL) is not supported: {TRL_UNSUPPORTED[name]}")
        return name, {}
    target, fixed = TRL_ALIASES[name]
    notice(f"loss {name!r} is TRL's name for prefkit's {target!r}{_fixed(fixed)}")
    return target, dict(fixed)


def resolve_section(section: Any) -> Any:
    """A config ``loss`` section whose ``name`` is a TRL alias, rewritten to the prefkit name and its fixed
    parameters (a ``ConfigError`` when the section sets one of those to something else)."""
    if not isinstance(section, Mapping) or not isinstance(section.get("name"), str):
        return section
    name, fixed = resolve(section["name"])
    out = {**section, "name": name}
    for key, value in fixed.items():
        if key in out and out[key] != value:
            raise ConfigError(f"loss {section['name']!r} means {name!r} with {key}={value!r}; "
                              f"drop loss.{key}={out[key]!r} or write loss.name={name}")
        out[key] = value
    return out


_PLAIN = {"beta": "beta", "label_smoothing": "label_smoothing", "discopop_tau": "tau", "ld_alpha": "ld_dpo_alpha"}


def _plain_loss_keys(keys: dict[str, Any], out: dict[str, Any]) -> dict[str, Any]:
    """TRL loss keys for a section without a loss name: renamed only; the registry checks them later."""
    for key, value in keys.items():
        if key not in _PLAIN:
            raise ConfigError(f"TRL {key}={value!r} depends on the loss; give loss_type (or loss.name) with it")
        if _PLAIN[key] in out and out[_PLAIN[key]] != value:
            raise ConfigError(f"TRL {key}={value!r} conflicts with loss.{_PLAIN[key]}={out[_PLAIN[key]]!r}; keep one")
        notice(f"TRL key {key!r} is prefkit's 'loss.{_PLAIN[key]}'")
        out[_PLAIN[key]] = value
    return out


TRL_LOSS_KEYS = ("loss_type", "beta", "label_smoothing", "rpo_alpha", "discopop_tau", "f_divergence_type",
                 "f_alpha_divergence_coef", "ld_alpha", "loss_weights", "use_weighting")
"""TRL config keys about the loss, read by :func:`trl_loss_section`."""


def _single_loss_type(value: Any, weights: Any) -> str:
    types = [value] if isinstance(value, str) else list(value or [])
    if len(types) != 1 or not isinstance(types[0], str):
        raise ConfigError(f"TRL loss_type {value!r}: prefkit trains one loss; give one name (combinations "
                          "with loss_weights, e.g. MPO, are not supported)")
    if weights is not None and list(weights) != [1.0]:
        raise ConfigError(f"TRL loss_weights {weights!r}: prefkit has no loss weight; drop it (scale "
                          "train.lr instead)")
    return types[0]


def trl_loss_section(keys: Mapping[str, Any], section: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The prefkit ``loss`` section for TRL's flat loss keys ``keys`` (a subset of ``TRL_LOSS_KEYS``)
    merged into ``section``; one notice line per TRL key. Raises ``ConfigError`` where TRL's meaning has no
    prefkit equivalent or the keys contradict ``section``."""
    from prefkit.losses import LOSSES

    out: dict[str, Any] = dict(section or {})
    keys = dict(keys)
    weights = keys.pop("loss_weights", None)
    if "loss_type" in keys:
        trl_name = _single_loss_type(keys.pop("loss_type"), weights)
        if trl_name in TRL_UNSUPPORTED:
            raise ConfigError(f"TRL loss_type {trl_name!r} is not supported: {TRL_UNSUPPORTED[trl_name]}")
        if trl_name not in TRL_LOSS_TYPES and trl_name != "aot_pair":
            raise ConfigError(f"TRL loss_type {trl_name!r} is not one of TRL's: {', '.join(TRL_LOSS_TYPES)}")
        if out.get("name", trl_name) != trl_name:
            raise ConfigError(f"TRL loss_type={trl_name!r} conflicts with loss.name={out['name']!r}; keep one")
        notice(f"TRL key 'loss_type' is prefkit's 'loss.name' ({trl_name!r})")
        if trl_name in TRL_SAME_NAME:
            notice(f"loss {trl_name!r}: prefkit vs TRL: {TRL_SAME_NAME[trl_name]}")
        out["name"] = trl_name
    elif weights is not None:
        _single_loss_type(["?"], weights)
    if "name" not in out:  # e.g. `--beta 0.2` on the command line: the loss is named elsewhere (or the default)
        return _plain_loss_keys(keys, out)
    out = resolve_section(out)
    name = out["name"]
    if keys.pop("use_weighting", False):
        raise ConfigError("TRL use_weighting=true is not supported: TRL's WPO weight uses the 'aligned' "
                          "normalisation by Σ_v π(v)²; prefkit's loss.wpo=true is the length-normalised WPO "
                          "variant; write loss.wpo=true for that")
    ld_alpha = keys.pop("ld_alpha", None)
    if ld_alpha is not None:
        notice("TRL key 'ld_alpha' is prefkit's 'loss.ld_dpo_alpha'")
        out["ld_dpo_alpha"] = ld_alpha
    divergence = keys.pop("f_divergence_type", "reverse_kl")
    coef = keys.pop("f_alpha_divergence_coef", 0.5)
    if divergence == "alpha_divergence" and abs(float(coef) - 1.0) < 1e-6:
        divergence = "reverse_kl"  # TRL's own fallback: α = 1 is the reverse KL
    if divergence != "reverse_kl":
        if divergence not in F_DIVERGENCES or name != "dpo":
            raise ConfigError(f"TRL f_divergence_type={divergence!r} is supported only with loss_type 'sigmoid' "
                              f"(prefkit's 'fdpo'; divergences {', '.join(F_DIVERGENCES)}); got loss {name!r}")
        name = out["name"] = "fdpo"
        out["divergence"] = F_DIVERGENCES[divergence]
        notice(f"TRL key 'f_divergence_type' ({divergence!r}) is prefkit's loss 'fdpo' with "
               f"divergence={out['divergence']!r}")
        if divergence == "alpha_divergence":  # TRL's f'(t) = t^(c−1)/(c−1), prefkit's (1 − t^(−α))/α: α = 1 − c
            out["alpha"] = 1.0 - float(coef)
            notice(f"TRL key 'f_alpha_divergence_coef' ({coef!r}) is prefkit's loss.alpha = 1 − coef "
                   f"({out['alpha']!r})")
    rpo_alpha = keys.pop("rpo_alpha", None)
    if rpo_alpha is not None:
        if name != "dpo" or out.get("label_smoothing", 0.0) != 0.0:
            raise ConfigError(f"TRL rpo_alpha is supported only with loss_type 'sigmoid' (prefkit's 'rpo'); "
                              f"got loss {name!r}")
        name = out["name"] = "rpo"
        out["alpha"] = rpo_alpha
        notice(f"TRL key 'rpo_alpha' is prefkit's loss 'rpo' with alpha={rpo_alpha!r} (DPO + alpha·chosen NLL "
               "per token)")
    params = LOSSES[name].params
    for key, target in (("beta", "beta"), ("label_smoothing", "label_smoothing"), ("discopop_tau", "tau")):
        if key not in keys:
            continue
        value = keys.pop(key)
        if key == "label_smoothing" and name in ("dpo", "rpo", "fdpo") and value not in (0, 0.0):
            raise ConfigError(f"TRL label_smoothing={value!r}: TRL 1.x ignores it for loss_type 'sigmoid'; for "
                              f"conservative DPO (TRL < 1.0) write loss.label_smoothing={value!r}, or drop it")
        if target in params:
            if target in out and out[target] != value:
                raise ConfigError(f"TRL {key}={value!r} conflicts with loss.{target}={out[target]!r}; keep one")
            notice(f"TRL key {key!r} is prefkit's 'loss.{target}'")
            out[target] = value
        elif value in (0, 0.0, None) or key == "discopop_tau":
            notice(f"TRL key {key!r} ignored: loss {name!r} does not use it (nor does TRL for this loss)")
        else:
            raise ConfigError(f"TRL {key}={value!r}: loss {name!r} takes no {target!r} (TRL ignores it for "
                              "this loss type); drop it")
    if keys:
        raise ConfigError(f"unknown TRL loss key {next(iter(keys))!r}")
    return out


__all__ = ["TRL_ALIASES", "TRL_UNSUPPORTED", "TRL_SAME_NAME", "TRL_LOSS_TYPES", "TRL_LOSS_KEYS", "F_DIVERGENCES",
           "notice", "resolve", "resolve_section", "trl_loss_section"]
