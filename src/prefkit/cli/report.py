"""``prefkit report RUN_DIR``: a thin wrapper over ``prefkit.eval.report`` (one static HTML page per run)."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The HTML file to write (default RUN_DIR/report.html); an existing file is replaced only "
                   "when it is an earlier prefkit report.")
def report(run_dir: Path, out: Path | None) -> None:
    """Write one self-contained HTML page for a run folder: config, curves, evaluation, online rounds.

    RUN_DIR is the output.dir of `prefkit train`, `prefkit rm train`, `prefkit online` or `prefkit demo`
    (a folder of stages). The page has inline CSS and embedded PNG plots, no scripts and no links out:
    open it in any browser, offline, or attach it to a message.
    """
    from prefkit.eval.report import find_stages, write_report_page

    path = write_report_page(run_dir, out)
    stages = find_stages(run_dir)
    size = path.stat().st_size
    click.echo(f"wrote {path} ({size / 1024:.0f} KiB; {len(stages)} stage{'s' if len(stages) > 1 else ''}: "
               f"{', '.join(f'{s.name} ({s.kind})' for s in stages)})")


commands: dict[str, click.Command] = {"report": report}
