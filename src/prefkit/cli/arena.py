"""``prefkit arena BATTLES``: Bradley–Terry ratings with bootstrap intervals, as a table and a PNG.

A thin wrapper over :func:`prefkit.eval.arena.fit_bradley_terry` and :func:`prefkit.eval.arena.plot_ratings`.
"""

from __future__ import annotations

import click
from rich.console import Console
from rich.table import Table

from prefkit.eval.arena import HALF, TIE_MODELS, Arena, fit_bradley_terry, plot_ratings


def _table(arena: Arena) -> Table:
    table = Table(title="Arena: Bradley–Terry ratings, Elo scale", title_justify="left")
    for col in ("rank", "model", "rating", "95% CI", "battles", "win rate"):
        table.add_column(col, justify="left" if col == "model" else "right", no_wrap=col != "model")
    for rank, r in enumerate(arena.ratings, 1):
        table.add_row(str(rank), r.model, f"{r.rating:.1f}", f"[{r.low:.1f}, {r.high:.1f}]", str(r.battles),
                      f"{r.win_rate:.3f}")
    return table


def _notes(arena: Arena) -> str:
    """One line under the table: what was fitted (not wrapped, so it can be grepped)."""
    anchor = f"{arena.anchor} = 1000" if arena.anchor else "mean rating = 1000"
    ties = "ties count ½" if arena.ties == HALF else f"ties: {arena.ties}"
    if arena.tie_param is not None:
        ties += f" (fitted parameter {arena.tie_param:.3g})"
    return (f"{len(arena.ratings)} models, {arena.n_battles} battles; anchor: {anchor}; {ties}; "
            f"95% CI from {arena.bootstrap} bootstrap resamples of the battles")


@click.command(name="arena", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("battles", type=click.Path(exists=True))
@click.option("--anchor", default=None, help="Model rated exactly 1000 (default: the mean rating is 1000).")
@click.option("--bootstrap", type=click.IntRange(min=0), default=1000, show_default=True,
              help="Bootstrap resamples of the battles for the 95% intervals (0: none).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the bootstrap.")
@click.option("--ties", type=click.Choice([HALF, *TIE_MODELS]), default=HALF, show_default=True,
              help="How ties count: half a win each, or a tie model of the loss registry (its tie "
                   "parameter is fitted).")
@click.option("--out", default="arena.png", show_default=True, type=click.Path(dir_okay=False),
              help="PNG of the ratings with their intervals.")
def arena(battles: str, anchor: str | None, bootstrap: int, seed: int, ties: str, out: str) -> None:
    """Rate models from BATTLES (JSONL/CSV/Parquet rows: model_a, model_b, winner = model_a | model_b | tie)."""
    result = fit_bradley_terry(battles, anchor=anchor, bootstrap=bootstrap, seed=seed, ties=ties)
    Console().print(_table(result))
    click.echo(_notes(result))
    click.echo(f"wrote {plot_ratings(result, out)}")


commands: dict[str, click.Command] = {"arena": arena}
