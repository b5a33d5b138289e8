"""Helpers over the registry ``prefkit.losses.LOSSES``: look-up, parameter checks, generated docs.

The registry itself is the dict literal in ``prefkit/losses/__init__.py``; nothing here adds to it.

- ``get_loss(name)``: the ``LossSpec`` for a registry name, or for ``"pkg.module:attr"`` naming a
  user's ``LossSpec`` (imported explicitly, at config-parse time). Unknown names raise ``ConfigError``
  listing the valid names and the nearest one.
- ``validate_loss_params(name, params)``: called when a config is parsed; fills defaults, rejects
  unknown keys (naming the nearest), wrong types and out-of-range values, each with a one-line
  ``ConfigError``.
- ``formula_of(spec)`` / ``references_of(spec)``: the ``Formula:`` / ``References:`` section of the
  loss function's docstring.
- ``names_of(predicate)``, ``reward_losses()``, ``reference_free_pair_losses()``: sorted registry names
  selected by their spec, for messages and checks that would otherwise list loss names by hand.
- ``render_docs()``: the text of ``docs/losses.md``; regenerate it with ``prefkit losses --write-docs docs/losses.md``
  or ``python -m prefkit.losses.registry --write-docs PATH`` (``--check`` exits 1 when it is stale; runpy
  warns that the module was already imported by its package, which is harmless).

How a loss is called (the trainer's side of the contract): ``spec.fn(policy, reference, **inputs,
**params)`` where ``inputs`` holds one keyword per name in ``spec.needs`` other than
``"token_logps"`` (``strength``, ``ties``, ``labels``, ``scores``), and ``reference`` is None when
``spec.needs_reference`` is False.

Docstring format of every loss function (the CLI and docs read the first two sections)::

    One-line summary.

    Formula:
        <the loss, as an indented block>

    References:
        <authors, "title", arXiv id, equation>

    Prose; then Shapes:, Sign convention:, typical values, and Deviations from the paper:.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib
import inspect
import math
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prefkit.errors import ConfigError, did_you_mean
from prefkit.losses.types import LossSpec, Param

REGENERATE = "prefkit losses --write-docs docs/losses.md"
"""The command that regenerates the repository's ``docs/losses.md`` (run from the repository root)."""


def _registry() -> dict[str, LossSpec]:
    # Imported at call time: this module is imported by prefkit.losses itself.
    from prefkit.losses import LOSSES

    return LOSSES


def get_loss(name: str) -> LossSpec:
    """The registry entry for ``name``, or the user ``LossSpec`` at ``"pkg.module:attr"``."""
    losses = _registry()
    if name in losses:
        return losses[name]
    from prefkit.losses.aliases import TRL_ALIASES, resolve

    if name in TRL_ALIASES:  # TRL's name: the same loss under prefkit's name (one notice line on stderr)
        target, fixed = resolve(name)
        spec = losses[target]
        if not fixed:
            return spec
        fn = functools.partial(spec.fn, **fixed)  # the fixed parameters become the defaults
        fn.__doc__ = spec.fn.__doc__  # type: ignore[misc]  # formula_of / references_of read it
        return dataclasses.replace(spec, fn=fn)
    resolve(name)  # a TRL name prefkit does not support: one line saying why
    if ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:
            raise ConfigError(f"loss {name!r}: cannot import module {module_name!r} ({err})") from None
        spec = getattr(module, attr, None)
        if not isinstance(spec, LossSpec):
            raise ConfigError(f"loss {name!r}: {module_name}.{attr} must be a prefkit.losses.LossSpec, "
                              f"got {type(spec).__name__}")
        return spec
    near = did_you_mean(name, [*losses, *TRL_ALIASES])
    raise ConfigError(f"unknown loss {name!r}{near}; choose from {sorted(losses)} (or a TRL loss_type, see docs/trl.md) "
                      "or give 'pkg.module:attr' naming a LossSpec")


def _bad_type(loss: str, key: str, value: Any, expected: str) -> ConfigError:
    hint = ""
    if isinstance(value, str):
        try:
            float(value)
            hint = " (write it as a number, e.g. 1.0e-3: YAML reads 1e-3 as a string)"
        except ValueError:
            pass
    return ConfigError(f"loss {loss!r}: parameter {key!r} must be {expected}, got {value!r}{hint}")


def _check_value(loss: str, key: str, param: Param, value: Any) -> Any:
    """``value`` converted to the parameter's type, or a ConfigError."""
    default = param.default
    if param.choices is not None:
        if not isinstance(value, str) or value not in param.choices:
            near = did_you_mean(value, param.choices) if isinstance(value, str) else ""
            raise ConfigError(f"loss {loss!r}: parameter {key!r} must be one of {list(param.choices)}, "
                              f"got {value!r}{near}")
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise _bad_type(loss, key, value, "true or false")
        return value
    if isinstance(default, str):
        if not isinstance(value, str):
            raise _bad_type(loss, key, value, "a string")
        return value
    if value is None and default is None:
        return None
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise _bad_type(loss, key, value, "an integer")
    elif isinstance(default, float) or default is None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _bad_type(loss, key, value, "a number")
        value = float(value)
        if not math.isfinite(value):
            raise ConfigError(f"loss {loss!r}: parameter {key!r} must be finite, got {value!r}")
    if not param.admits(value):
        raise ConfigError(f"loss {loss!r}: parameter {key!r}={value!r} is out of range "
                          f"{_range(param)}")
    return value


def validate_loss_params(name: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every parameter of loss ``name``: the given ones checked and converted, the rest defaulted."""
    spec = get_loss(name)
    params = dict(params or {})
    for key in params:
        if key not in spec.params:
            valid = sorted(spec.params)
            what = f"valid parameters: {', '.join(valid)}" if valid else "it takes no parameters"
            raise ConfigError(f"loss {name!r}: unknown parameter {key!r}{did_you_mean(key, valid)}; {what}")
    return {key: _check_value(name, key, param, params[key]) if key in params else param.default
            for key, param in spec.params.items()}


def _range(param: Param) -> str:
    if param.choices is not None:
        return " | ".join(param.choices)
    if isinstance(param.default, bool):
        return "true | false"
    if param.low is None and param.high is None:
        return "any"
    return param.interval()


def param_range(param: Param) -> str:
    """The valid values of ``param`` in words: ``[0, 0.5)``, ``(0, inf)``, ``a | b`` or ``any``."""
    return _range(param)


def summary_of(spec: LossSpec) -> str:
    """The one-line summary: ``spec.summary`` or the docstring's first line."""
    if spec.summary:
        return spec.summary
    doc = inspect.getdoc(spec.fn) or ""
    return doc.splitlines()[0].strip() if doc else ""


def docstring_section(fn: Callable[..., object], title: str) -> str:
    """The dedented block indented under the line ``{title}:`` of ``fn``'s docstring, or ``""``."""
    lines = (inspect.getdoc(fn) or "").splitlines()
    if f"{title}:" not in lines:
        return ""
    block = []
    for line in lines[lines.index(f"{title}:") + 1:]:
        if line.strip() and not line.startswith((" ", "\t")):
            break
        block.append(line)
    return textwrap.dedent("\n".join(block)).strip("\n")


def formula_of(spec: LossSpec) -> str:
    """The ``Formula:`` section of the loss function's docstring (``""`` when it has none)."""
    return docstring_section(spec.fn, "Formula")


def references_of(spec: LossSpec) -> str:
    """The ``References:`` section of the loss function's docstring (``""`` when it has none)."""
    return docstring_section(spec.fn, "References")


def names_of(predicate: Callable[[LossSpec], object]) -> list[str]:
    """Sorted names of the registered losses whose spec satisfies ``predicate``."""
    return sorted(name for name, spec in _registry().items() if predicate(spec))


def reward_losses() -> list[str]:
    """Sorted names of the reward-model losses (kinds ``reward_pair``, ``reward_list``, ``reward_rating``)."""
    return names_of(lambda spec: spec.kind.startswith("reward_"))


def reference_free_pair_losses() -> list[str]:
    """Sorted names of the pairwise policy losses that need no reference model."""
    return names_of(lambda spec: spec.kind == "pair" and not spec.needs_reference)


def paper_line(spec: LossSpec) -> str:
    """``title (arXiv id), equation`` on one line."""
    paper = spec.paper
    where = f" (arXiv {paper.arxiv})" if paper.arxiv else ""
    return f"{paper.title}{where}, {paper.equation}" if paper.equation else f"{paper.title}{where}"


def _md_paper(spec: LossSpec) -> str:
    paper = spec.paper
    if paper.arxiv:
        return f"{paper.title} ([arXiv {paper.arxiv}](https://arxiv.org/abs/{paper.arxiv}))"
    return paper.title


def _md(text: str) -> str:
    return text.replace("|", "\\|")


def render_docs() -> str:
    """The Markdown of ``docs/losses.md``, generated from ``LOSSES``."""
    losses = _registry()
    out = [
        "# Losses",
        "",
        f"<!-- Generated from prefkit.losses.LOSSES by `{REGENERATE}`; do not edit by hand. -->",
        "",
        f"{len(losses)} registered losses. Each is a pure function returning per-example losses (B,) and",
        "detached rewards; the trainer reduces. Log-probs are log-likelihoods (higher = more likely) and",
        "every loss is minimised. `prefkit losses NAME` prints the same entry in a terminal.",
        "",
        "Parameter defaults are the loss function's keyword defaults. The `valid` ranges are checked when a",
        "config is parsed, and only there; a parenthesis excludes its bound, e.g. `[0, 0.5)`.",
        "",
        "| name | kind | reference | extra inputs | summary | paper |",
        "|---|---|---|---|---|---|",
    ]
    for name in sorted(losses):
        spec = losses[name]
        needs = ", ".join(sorted(spec.needs)) or "—"
        out.append(f"| [`{name}`](#{name}) | {spec.kind} | {'yes' if spec.needs_reference else 'no'} | "
                   f"{needs} | {_md(summary_of(spec))} | {_md(_md_paper(spec))} |")
    for name in sorted(losses):
        spec = losses[name]
        needs = ", ".join(sorted(spec.needs)) or "none"
        out += ["", f"## {name}", "", _md(summary_of(spec)), "",
                f"- kind: `{spec.kind}` (trains on `{spec.record_kind}` records); needs reference: "
                f"{'yes' if spec.needs_reference else 'no'}; extra inputs: {needs}",
                f"- paper: {_md_paper(spec)}{', ' + spec.paper.equation if spec.paper.equation else ''}",
                f"- function: `{spec.fn.__module__}.{spec.fn.__qualname__}`"]
        if spec.running_reward_mean:
            out.append("- the trainer passes the running mean of all rewards so far as `delta` each step")
        if spec.head_params:
            supplied = ", ".join(f"`{key}`" for key in spec.head_params)
            out.append(f"- with a tie reward head, the head supplies {supplied} (a learned tensor)")
        out += ["", "```text", formula_of(spec), "```", ""]
        if spec.params:
            out += ["| parameter | default | valid | description |", "|---|---|---|---|"]
            for key, param in spec.params.items():
                out.append(f"| `{key}` | `{param.default!r}` | {_md(_range(param))} | {_md(param.doc)} |")
        else:
            out.append("No parameters.")
    return "\n".join(out) + "\n"


def write_docs(path: str | Path) -> Path:
    """Write ``render_docs()`` to ``path`` (the repository's ``docs/losses.md``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_docs(), encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> int:
    """``python -m prefkit.losses.registry --write-docs PATH | --check PATH``."""
    parser = argparse.ArgumentParser(prog="python -m prefkit.losses.registry", description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--write-docs", metavar="PATH", help="write the generated Markdown to PATH")
    group.add_argument("--check", metavar="PATH", help="exit 1 if PATH differs from the generated Markdown")
    args = parser.parse_args(argv)
    if args.write_docs:
        print(f"wrote {write_docs(args.write_docs)}")
        return 0
    path = Path(args.check)
    if not path.exists() or path.read_text(encoding="utf-8") != render_docs():
        print(f"{path} is stale; run `{REGENERATE}`", file=sys.stderr)
        return 1
    print(f"{path} is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
