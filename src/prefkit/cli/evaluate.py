"""``prefkit eval``: policy diagnostics of a saved model on a pairs file.

- ``prefkit eval ranking --model M --data PAIRS [--reference R] [--beta B] [--p P]``: ranking accuracy
  (:mod:`prefkit.eval.ranking`); with a reference, the idealized ranking accuracy of the exact DPO optimum,
  the alignment gap and the likelihood displacement (:mod:`prefkit.eval.displacement`);
- ``prefkit eval ches --model M --data PAIRS [--top 0.1 --write KEPT.jsonl]``: CHES scores of the pairs,
  and the pairs without the most similar fraction written to a file.

Thin wrappers over the library functions; ``--json`` prints the numbers as JSON instead of a table.
"""

from __future__ import annotations

import json
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from prefkit.errors import ConfigError, DataError


def _load(model: str, data: str, limit: int | None) -> tuple[Any, Any, list[Any]]:
    """(model, tokenizer, pairs): the model folder's tokenizer, only the pair records of ``data``."""
    from prefkit.data import Pair, load
    from prefkit.models import load as model_load

    model_load.check_model_path(model, "--model")
    model_load.check_tokenizer_path(model, "--model")
    pairs = [r for r in load(data) if isinstance(r, Pair)]
    if not pairs:
        raise DataError(f"{data}: no preference pairs to score")
    return model_load.load_model(model), model_load.load_tokenizer(model), pairs[:limit] if limit else pairs


def _show(title: str, rows: dict[str, float], notes: str, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table = Table(title=title, title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in rows.items():
        table.add_row(key, f"{int(value)}" if key in _COUNTS else f"{value:.4f}")
    Console().print(table)
    click.echo(notes)


_COUNTS = ("pairs", "ches/pairs", "top/removed")
_MODEL = click.option("--model", required=True, help="Policy model folder (or .gguf / hub id).")
_DATA = click.option("--data", required=True, type=click.Path(exists=True), help="Pairs file (any prefkit format).")
_LIMIT = click.option("--limit", type=click.IntRange(min=1), default=None, help="Score only the first N pairs.")
_BATCH = click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True,
                      help="Pairs per forward pass.")
_JSON = click.option("--json", "as_json", is_flag=True, help="Print the numbers as JSON instead of a table.")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@_MODEL
@_DATA
@click.option("--reference", default=None, help="Reference model folder: adds the idealized ranking accuracy, "
                                                "the alignment gap and the likelihood displacement.")
@click.option("--beta", type=float, default=0.1, show_default=True, help="β of the DPO optimum (with --reference).")
@click.option("--p", "true_pref_prob", type=float, default=1.0, show_default=True,
              help="True preference probability in (0, 1] of every pair (1: deterministic labels).")
@_LIMIT
@_BATCH
@_JSON
def ranking(model: str, data: str, reference: str | None, beta: float, true_pref_prob: float, limit: int | None,
            batch_size: int, as_json: bool) -> None:
    """Ranking accuracy P[log π(y_w|x) > log π(y_l|x)] of MODEL on the pairs of DATA."""
    from prefkit.eval.displacement import Displacement
    from prefkit.eval.ranking import (
        idealized_ranking_accuracy,
        policy_pair_logps,
        ranking_accuracy_from_logps,
    )
    from prefkit.models import load as model_load

    if not beta > 0:
        raise ConfigError(f"--beta must be > 0; got {beta}")
    if not 0 < true_pref_prob <= 1:
        raise ConfigError(f"--p must be in (0, 1]; got {true_pref_prob}")
    if reference is not None:
        model_load.check_model_path(reference, "--reference")
    policy, tokenizer, pairs = _load(model, data, limit)
    logps = policy_pair_logps(policy, tokenizer, pairs, batch_size=batch_size)
    achieved = ranking_accuracy_from_logps(logps)
    rows = {"pairs": float(len(pairs)), "ranking/accuracy": achieved.accuracy,
            "ranking/normalized_accuracy": achieved.normalized_accuracy}
    notes = "accuracy: summed log-probs of the completion (EOS included), ties wrong; normalized: per token"
    if reference is not None:
        ref = policy_pair_logps(model_load.load_model(reference), tokenizer, pairs, batch_size=batch_size)
        ideal = idealized_ranking_accuracy(ref.chosen_logps, ref.rejected_logps, beta, true_pref_prob)
        rows.update({"ranking/reference_accuracy": ideal.reference_accuracy,
                     "ranking/idealized_accuracy": ideal.accuracy,
                     "ranking/alignment_gap": ideal.accuracy - achieved.accuracy,
                     "ranking/mean_difficulty": float(ideal.difficulty.mean())})
        rows.update(Displacement(logps.chosen_logps - ref.chosen_logps,
                                 logps.rejected_logps - ref.rejected_logps).summary())
        notes += (f"; idealized: the exact DPO optimum at β = {beta:g}, p = {true_pref_prob:g} (Chen et al. 2024); "
                  "displacement: log π(y|x) − log π_ref(y|x)")
    _show(f"Ranking accuracy: {model}", rows, notes, as_json)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@_MODEL
@_DATA
@click.option("--top", type=click.FloatRange(0, 1), default=0.1, show_default=True,
              help="With --write: the fraction of pairs with the highest CHES left out.")
@click.option("--write", "out", default=None, type=click.Path(dir_okay=False),
              help="Write the kept pairs, each with metadata.ches (.jsonl, .jsonl.gz or .parquet).")
@click.option("--length-normalize", is_flag=True, help="Length-normalised CHES (Razin et al. 2024, Sec. 5).")
@_LIMIT
@_BATCH
@_JSON
def ches(model: str, data: str, top: float, out: str | None, length_normalize: bool, limit: int | None,
         batch_size: int, as_json: bool) -> None:
    """CHES scores (Razin et al. 2024) of the pairs of DATA under MODEL; high: the completions look alike."""
    from prefkit.data.writers import write
    from prefkit.eval.displacement import add_ches, ches_scores, filter_top_ches
    from prefkit.eval.during_training import ches_summary

    if out is not None and not out.endswith((".jsonl", ".jsonl.gz", ".parquet")):
        raise ConfigError(f"--write {out!r}: write .jsonl, .jsonl.gz or .parquet")
    policy, tokenizer, pairs = _load(model, data, limit)
    scores = ches_scores(policy, tokenizer, pairs, length_normalize=length_normalize, batch_size=batch_size)
    rows = ches_summary(scores)
    kept, removed = filter_top_ches(add_ches(pairs, scores), top)
    rows.update({"top/removed": float(len(removed)), "top/threshold": min(
        (float(p.metadata["ches"]) for p in removed), default=float("nan"))})
    notes = "CHES = ⟨S+, S−⟩ − ‖S+‖² over the last hidden states" + (", length-normalised" if length_normalize else "")
    if out is not None:
        write(kept, out)
        notes += f"; wrote {len(kept)} pairs to {out} (left out the top {top:g})"
    _show(f"CHES: {model}", rows, notes, as_json)


@click.group(name="eval", context_settings={"help_option_names": ["-h", "--help"]})
def evaluate() -> None:
    """Policy diagnostics: ranking accuracy, alignment gap, likelihood displacement, CHES."""


evaluate.add_command(ranking)
evaluate.add_command(ches)

commands: dict[str, click.Command] = {"eval": evaluate}
