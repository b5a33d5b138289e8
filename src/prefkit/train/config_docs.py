"""The config reference in ``docs/training.md``: Markdown tables of every key, default and docstring,
generated from the config dataclasses (``python -m prefkit.train.config_docs --write-docs docs/training.md``;
a test checks the file is current)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import yaml

from prefkit.train.config import LossConfig, RunConfig, _hints, _section_type, field_docs


def config_reference() -> str:
    """Markdown tables of every config key, default and docstring (``docs/training.md`` embeds this)."""
    lines = []
    for section in dataclasses.fields(RunConfig):
        cls = _section_type(_hints(RunConfig)[section.name])
        lines += [f"### `{section.name}`", "", field_docs(RunConfig).get(section.name, ""), "",
                  "| key | default | meaning |", "|---|---|---|"]
        default = cls()
        docs = field_docs(cls)
        for f in dataclasses.fields(cls):
            if cls is LossConfig and f.name == "params":
                lines.append("| `loss.<param>` | per loss | the loss's parameters (`prefkit losses` lists them) |")
                continue
            value = getattr(default, f.name)
            shown = yaml.safe_dump(list(value) if isinstance(value, tuple) else value,
                                   default_flow_style=True).strip().removesuffix("...").strip()
            doc = docs.get(f.name, "").replace("|", "\\|")
            lines.append(f"| `{section.name}.{f.name}` | `{shown}` | {doc} |")
        lines.append("")
    return "\n".join(lines)



DOCS_START, DOCS_END = "<!-- config-reference:start -->", "<!-- config-reference:end -->"


def docs_with_reference(text: str) -> str:
    """``text`` with the block between the config-reference markers replaced by :func:`config_reference`."""
    head, _, rest = text.partition(DOCS_START)
    _, _, tail = rest.partition(DOCS_END)
    return f"{head}{DOCS_START}\n\n{config_reference()}\n{DOCS_END}{tail}"


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m prefkit.train.config_docs [--write-docs PATH]``: print the config reference, or refresh the
    block between the markers in the Markdown file ``PATH`` (the repository's ``docs/training.md``)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m prefkit.train.config_docs")
    parser.add_argument("--write-docs", metavar="PATH", help="Markdown file whose config-reference block to refresh")
    args = parser.parse_args(argv)
    if args.write_docs is None:
        print(config_reference())
        return 0
    path = Path(args.write_docs)
    text = path.read_text(encoding="utf-8")
    if DOCS_START not in text or DOCS_END not in text:
        raise SystemExit(f"{path}: no {DOCS_START} ... {DOCS_END} block to refresh")
    path.write_text(docs_with_reference(text), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = ["config_reference", "docs_with_reference", "DOCS_START", "DOCS_END", "main"]
