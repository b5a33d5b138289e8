"""``prefkit online``: a thin wrapper over ``prefkit.online.jobs`` (load the job, run the loop, summarise)."""

from __future__ import annotations

from pathlib import Path

import click

_SHOWN = (("objective/scores", "judge score", "{:.3f}"), ("objective/scores_std", "std", "{:.3f}"),
          ("objective/kl", "kl", "{:.4f}"), ("objective/win_rate_vs_reference", "win rate vs ref", "{:.3f}"),
          ("completions/mean_length", "mean length", "{:.1f}"), ("completions/clipped_ratio", "clipped", "{:.2f}"),
          ("records", "records", "{:d}"), ("train/loss", "loss", "{:.4f}"))


def summary_line(metrics: dict, rounds: int) -> str:
    """``last round 2/2: judge score 0.542, std 0.501, kl 0.0123, ...`` from one round's metrics."""
    parts = []
    for key, label, fmt in _SHOWN:
        value = metrics.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool) and value == value:  # NaN left out
            parts.append(f"{label} {fmt.format(int(value) if fmt == '{:d}' else float(value))}")
    return f"last round {int(metrics.get('round', -1)) + 1}/{rounds}: {', '.join(parts) or 'no metrics'}"


@click.command(context_settings={"ignore_unknown_options": True})
@click.option("--config", "config_path", type=click.Path(dir_okay=False), required=True,
              help="YAML job: model, lora, loss, train, encode, output sections plus online, prompts, judge.")
@click.option("--resume", is_flag=True, help="Continue a killed run in output.dir.")
@click.argument("overrides", nargs=-1)
def online(config_path: str, resume: bool, overrides: tuple[str, ...]) -> None:
    """Online preference learning: sample, judge, train, for online.rounds rounds.

    OVERRIDES are key=value pairs for any section (--key value works too), e.g. online.rounds=3
    online.sampling.max_new_tokens=32 judge.function=my_judge:score train.lr=1e-5 output.dir=runs/o1.
    Every judged sample goes to OUTPUT_DIR/rounds/NNNN.jsonl, the per-round metrics to
    OUTPUT_DIR/metrics.jsonl, the final policy to OUTPUT_DIR/model (output.save_model).
    """
    from transformers.utils import logging as hf_logging

    from prefkit.online.jobs import load_job, run_job
    from prefkit.online.sampler import Processes
    from prefkit.train.trl import flags_to_overrides

    job = load_job(config_path, flags_to_overrides(overrides))  # config errors surface here, before models load
    hf_logging.disable_progress_bar()  # CLI-only process settings, as in ``prefkit rm``: no weight-loading
    hf_logging.set_verbosity_error()  # bars, transformers warnings off
    out = Path(job.run.output.dir)
    history = run_job(job, resume=resume)  # the loop prints one progress line per round (train.progress)
    if not Processes.current().main:  # several processes (accelerate launch): the main one reports
        return
    if history:
        click.echo(summary_line(history[-1], job.online.rounds))
    files = ["rounds/", "metrics.jsonl"] + (["model/"] if job.run.output.save_model else [])
    click.echo(f"done: {len(history)} rounds; outputs in {out} ({', '.join(files)})")


commands: dict[str, click.Command] = {"online": online}
