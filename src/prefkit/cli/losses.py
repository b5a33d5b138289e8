"""``prefkit losses``: list the loss registry, or show one loss's formula and parameters.

Everything printed here is read from ``prefkit.losses.LOSSES`` (the same source as ``docs/losses.md``).
"""

from __future__ import annotations

import click
from rich.console import Console
from rich.table import Table

from prefkit.losses import LOSSES, registry
from prefkit.losses.registry import formula_of, get_loss, paper_line, param_range, summary_of


def _list_table() -> Table:
    table = Table(title=f"{len(LOSSES)} losses (prefkit losses NAME for one)", title_justify="left")
    table.add_column("name", no_wrap=True, style="bold")
    table.add_column("kind", no_wrap=True)
    table.add_column("ref", no_wrap=True)
    table.add_column("paper (arXiv)")
    for name in sorted(LOSSES):
        spec = LOSSES[name]
        arxiv = f" ({spec.paper.arxiv})" if spec.paper.arxiv else ""
        table.add_row(name, spec.kind, "yes" if spec.needs_reference else "no", f"{spec.paper.title}{arxiv}")
    return table


def _show(console: Console, name: str) -> None:
    spec = get_loss(name)
    console.print(f"[bold]{name}[/bold]: {summary_of(spec)}", highlight=False, soft_wrap=True)
    console.print(f"kind: {spec.kind}   needs reference: {'yes' if spec.needs_reference else 'no'}   "
                  f"extra inputs: {', '.join(sorted(spec.needs)) or 'none'}", highlight=False)
    console.print(f"paper: {paper_line(spec)}", highlight=False, soft_wrap=True)
    console.print(f"function: {spec.fn.__module__}.{spec.fn.__qualname__}", highlight=False)
    console.print("\nformula:", style="bold")
    console.print(formula_of(spec), markup=False, highlight=False, soft_wrap=True)
    if not spec.params:
        console.print("\nno parameters")
        return
    console.print()
    table = Table(title="parameters", title_justify="left")
    table.add_column("name", no_wrap=True, style="bold")
    table.add_column("default", no_wrap=True)
    table.add_column("valid", no_wrap=True)
    table.add_column("description")
    for key, param in spec.params.items():
        table.add_row(key, repr(param.default), param_range(param), param.doc)
    console.print(table)


@click.command("losses")
@click.argument("name", required=False)
@click.option("--write-docs", "write_docs", metavar="PATH", default=None,
              help="Write the registry's Markdown reference to PATH (the repository's docs/losses.md).")
def losses(name: str | None, write_docs: str | None) -> None:
    """List the registered losses, or show NAME's formula, parameters and defaults."""
    if write_docs:
        click.echo(f"wrote {registry.write_docs(write_docs)}")
        return
    console = Console(soft_wrap=False)
    if name is None:
        console.print(_list_table())
    else:
        _show(console, name)


commands: dict[str, click.Command] = {"losses": losses}
