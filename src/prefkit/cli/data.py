"""``prefkit data``: inspect, validate and convert preference data (over ``prefkit.data``)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import click

from prefkit.data.convert import RANKING_STRATEGIES, RATING_STRATEGIES, SKIP_REASONS, convert
from prefkit.data.personas import MIXTURE_STANCES, NOISES, PROMPT, make_personas
from prefkit.data.readers import FORMATS, Records, read
from prefkit.data.records import Pair
from prefkit.data.summary import inspect_data
from prefkit.data.writers import write
from prefkit.errors import ConfigError, DataError, PrefkitError

SUPPORTED = (".jsonl", ".json", ".csv", ".parquet")
"""File types the CLI reads (each of the text ones also gzip-compressed, ``.gz``), besides a folder
written by ``datasets``' ``save_to_disk``."""

# The library names its column mapping ``columns=`` (Python); on the command line it is ``--column``.
_FLAG_WORDS = [
    (re.compile(r"^columns: ('[^']*') is not a record field(.*); map our field name to your column name, "
                r"e\.g\. \{'prompt': 'question'\}$"),
     r"--column: \1 is not a record field\2; write --column OURS=THEIRS (our field name, then your column "
     r"name), e.g. --column prompt=question"),
    (re.compile(r"^columns maps '([^']*)' to '([^']*)', but there is no column '[^']*'"),
     r"--column \1=\2: there is no column '\2'"),
    (re.compile(r"with columns=\)"), "with --column OURS=THEIRS)"),
]

_format = click.option("--format", "fmt", type=click.Choice(FORMATS), default="auto", show_default=True,
                       help="Row layout; 'auto' recognises each row by its columns.")
_columns = click.option("--column", "columns", multiple=True, metavar="OURS=THEIRS",
                        help="Map a record field to your column name, e.g. --column prompt=question.")


def _parse_pairs(items: tuple[str, ...] | list[str], what: str) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise ConfigError(f"{what} {item!r} must look like NAME=VALUE")
        out[key.strip()] = value.strip()
    return out


def _flag_words(message: str) -> str:
    """A library message in the words of the command line (``--column``, not ``columns=``)."""
    for pattern, repl in _FLAG_WORDS:
        message = pattern.sub(repl, message)
    return message


def _check_type(path: str) -> None:
    """Refuse a file whose extension the readers do not know (rather than guess it is CSV)."""
    p = Path(path)
    if p.is_dir() or not p.exists():
        return  # a save_to_disk folder, or a missing file (the reader says so)
    suffixes = [x.lower() for x in p.suffixes]
    if suffixes[-1:] == [".gz"]:
        suffixes = suffixes[:-1]
    if suffixes[-1:] and suffixes[-1] in SUPPORTED:
        return
    found = f"extension {suffixes[-1]!r}" if suffixes else "no extension"
    raise DataError(f"unsupported file type ({found}); prefkit data reads {', '.join(SUPPORTED)} (each also "
                    "as .gz) or a datasets save_to_disk folder", source=path, reason="wrong_type")


def _read(path: str, fmt: str, columns: tuple[str, ...], *, collect: bool = True) -> Records:
    _check_type(path)
    try:
        records = read(path, format=fmt, columns=_parse_pairs(columns, "--column") or None, collect=collect)
    except DataError as err:
        raise _cli_error(err) from None
    except ConfigError as err:
        if _flag_words(str(err)) == str(err):
            raise
        raise ConfigError(_flag_words(str(err))) from None
    records.problems[:] = [_cli_error(e) for e in records.problems]
    return records


def _cli_error(err: DataError) -> DataError:
    message = _flag_words(err.message)
    if message == err.message:
        return err
    return DataError(message, source=err.source, line=err.line, field=err.field, reason=err.reason)


@click.group("data")
def data() -> None:
    """Inspect, validate and convert preference data (JSONL, JSON, CSV, Parquet, .gz, save_to_disk)."""


def _load_tokenizer(directory: str) -> Any:
    if not Path(directory).is_dir():
        raise PrefkitError(f"--tokenizer {directory!r} is not a folder; pass a local tokenizer folder "
                           "(one written by save_pretrained)")
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(directory, local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError) as err:
        raise PrefkitError(f"can't load a tokenizer from {directory!r}: {str(err).splitlines()[0]}") from None


def _fmt_stats(name: str, s: dict[str, float]) -> str:
    return f"  {name:<10}{s['n']:>8}{s['mean']:>10.1f}{s['min']:>8}{s['median']:>9}{s['max']:>9}"


@data.command("inspect")
@click.argument("file")
@_format
@_columns
@click.option("--tokenizer", metavar="DIR", help="Local tokenizer folder for token lengths.")
@click.option("--json", "json_out", metavar="OUT", help="Also write the report as JSON to OUT.")
def inspect_cmd(file: str, fmt: str, columns: tuple[str, ...], tokenizer: str | None,
                json_out: str | None) -> None:
    """Counts, lengths, the chosen-longer share, duplicates and problems in FILE."""
    tok = _load_tokenizer(tokenizer) if tokenizer else None
    records = _read(file, fmt, columns)
    report = inspect_data(records, tokenizer=tok, problems=records.skipped)
    report = {"source": file, "rows": records.rows, **report}
    kinds = ", ".join(f"{n} {k if n == 1 or k == 'unpaired' else k + 's'}"
                      for k, n in report["by_kind"].items()) or "none"
    click.echo(f"{file}: {report['records']} records from {records.rows} rows ({kinds})")
    click.echo(f"users: {report['users']} ({report['records_with_user']} records with a user id); "
               f"ties: {report['ties']}; chat records: {report['chat_records']}")
    if report["records_per_user"]:
        u = report["records_per_user"]
        unit = "pairs" if all(isinstance(r, Pair) for r in records if r.user_id is not None) else "records"
        click.echo(f"{unit} per user: min {u['min']}, median {u['median']}, max {u['max']} (mean {u['mean']})")
    quirks = ", ".join(f"{k} {v}" for k, v in report["quirks"].items())
    click.echo(f"quirks kept and flagged: {quirks or 'none'}")
    for unit in ("chars", "tokens"):
        if unit in report:
            click.echo(f"{unit} per field:{'n':>9}{'mean':>10}{'min':>8}{'median':>9}{'max':>9}")
            for name, s in report[unit].items():
                click.echo(_fmt_stats(name, s))
    if report["pairs_compared"]:
        c = report["chosen_longer_chars"]
        click.echo(f"chosen longer than rejected (completion characters): {c['count']} of "
                   f"{report['pairs_compared']} pairs ({100 * c['share']:.1f}%); shorter {c['shorter']}, "
                   f"equal {c['equal']}")
        if "chosen_longer_tokens" in report:
            t = report["chosen_longer_tokens"]
            click.echo(f"chosen longer than rejected (tokens): {t['count']} of {report['pairs_compared']} "
                       f"pairs ({100 * t['share']:.1f}%)")
    click.echo(f"duplicate prompts: {report['duplicate_prompts']}; duplicate pairs: {report['duplicate_pairs']}")
    n_problems = sum(records.skipped.values())
    detail = ", ".join(f"{n} {r}" for r, n in records.skipped.most_common())
    click.echo(f"problems: {n_problems} rows skipped" + (f" ({detail})" if detail else "")
               + (f"; {len(records.warnings)} warnings" if records.warnings else ""))
    for err in records.problems[:10]:
        click.echo(f"  {err}")
    for w in records.warnings:
        click.echo(f"  warning: {w}")
    if json_out:
        report["warnings"] = records.warnings
        report["problem_lines"] = [str(e) for e in records.problems]
        Path(json_out).write_text(json.dumps(report, indent=2, default=str) + "\n")
        click.echo(f"wrote {json_out}")


@data.command("validate")
@click.argument("file")
@_format
@_columns
@click.option("--strict", is_flag=True, help="Count warnings (e.g. unknown columns) as problems.")
@click.option("--max-problems", default=50, show_default=True, help="List at most this many problems.")
def validate_cmd(file: str, fmt: str, columns: tuple[str, ...], strict: bool, max_problems: int) -> None:
    """Check FILE: exit 0 if every row is valid, else list the problems and exit 1."""
    records = _read(file, fmt, columns)
    lines = [str(e) for e in records.problems]
    warnings = [f"warning: {w}" for w in records.warnings]
    for line in (lines + warnings)[:max_problems]:
        click.echo(line)
    hidden = len(lines) + len(warnings) - max_problems
    if hidden > 0:
        click.echo(f"... and {hidden} more")
    n_bad = len(lines) + (len(warnings) if strict else 0)
    if n_bad:
        detail = ", ".join(f"{n} {r}" for r, n in records.skipped.most_common())
        # a PrefkitError: `prefkit.cli.main.main` prints this one line to stderr and returns 1
        raise PrefkitError(f"{file}: {n_bad} problems in {records.rows} rows" + (f" ({detail})" if detail else ""))
    quirks = sum(bool(r.metadata.get("quirks")) for r in records)
    click.echo(f"{file}: ok, {len(records)} records from {records.rows} rows"
               + (f" ({quirks} with known quirks kept and flagged)" if quirks else ""))


@data.command("convert")
@click.argument("src")
@click.argument("out")
@click.option("--to", "target", type=click.Choice(["pairs", "unpaired", "trl"]), required=True,
              help="pairs (from ratings/rankings), unpaired (KTO style), trl (rewrite as TRL-style rows).")
@click.option("--strategy", type=click.Choice(sorted({*RATING_STRATEGIES, *RANKING_STRATEGIES})),
              help="Ratings: best_vs_worst (default), best_vs_random, all; rankings: all (default), "
                   "adjacent, best_vs_rest.")
@click.option("--min-gap", default=0.0, show_default=True, help="Ratings: smallest score gap for a pair.")
@click.option("--seed", default=0, show_default=True, help="Ratings: seed for best_vs_random.")
@click.option("--weights", default=None, metavar="A=W,B=W",
              help="Ratings: score = sum of weight * attribute (default: the score, else the mean).")
@click.option("--on-error", type=click.Choice(["raise", "skip"]), default="raise", show_default=True)
@_format
@_columns
def convert_cmd(src: str, out: str, target: str, strategy: str | None, min_gap: float, seed: int,
                weights: str | None, on_error: str, fmt: str, columns: tuple[str, ...]) -> None:
    """Convert SRC to OUT (.jsonl, .jsonl.gz or .parquet)."""
    records = _read(src, fmt, columns, collect=on_error == "skip")
    parsed_weights = None
    if weights:
        try:
            parsed_weights = {k: float(v) for k, v in _parse_pairs(weights.split(","), "--weights").items()}
        except ValueError:
            raise ConfigError(f"--weights {weights!r}: each weight must be a number, e.g. helpfulness=0.5")
    # Parquet can't hold HH dialogue text beside chat rows, so there an empty completion is left out too
    result = convert(records, target, strategy, hh_text=not out.endswith(".parquet"), **(
        {"min_gap": min_gap, "seed": seed, "weights": parsed_weights} if target != "trl" else {}))
    n = write(result, out)
    skipped = records.skipped + result.skipped
    detail = ", ".join(f"{c} {r}" + (f" ({SKIP_REASONS[r]})" if r in SKIP_REASONS else "")
                       for r, c in skipped.most_common())
    click.echo(f"wrote {n} records to {out} (from {records.rows} rows)" + (f"; skipped: {detail}" if detail else ""))


def _share(share: float | None, ci: tuple[float, float] | None = None) -> str:
    if share is None:
        return "-"
    return f"{100 * share:.1f}%" + (f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci else "")


def _print_diagnosis(report: Any, ensemble: dict[str, Any] | None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(Console().width, 120))
    table = Table(title=f"{report.source}: {report.records} records from {report.rows} rows")
    for col in ("check", "count", "of", "fraction", "examples (location)"):
        table.add_column(col, justify="right" if col in ("count", "of", "fraction") else "left")
    for c in report.checks:
        detail = ", ".join(f"{n} {k}" for k, n in c.detail.items())
        table.add_row(c.title + (f" ({detail})" if detail and c.name != "empty_final_turn" else ""),
                      str(c.count), str(c.total), "-" if c.fraction is None else f"{100 * c.fraction:.2f}%",
                      ", ".join(c.examples) + (" ..." if c.count > len(c.examples) else ""))
    console.print(table)
    bias = Table(title="length bias (non-tie pairs; 95% Wilson intervals)")
    for col in ("unit", "pairs", "chosen longer", "chosen shorter", "equal", "biased"):
        bias.add_column(col, justify="left" if col == "unit" else "right")
    for b in report.length:
        bias.add_row(b.unit, str(b.pairs), f"{b.longer} ({_share(b.longer / (b.pairs or 1), b.longer_ci)})",
                     f"{b.shorter} ({_share(b.shorter / (b.pairs or 1), b.shorter_ci)})", str(b.equal),
                     "yes" if b.biased else "no")
    console.print(bias)
    if report.position is not None:
        p = report.position
        console.print(f"position bias (metadata[{p.key!r}]): chosen shown first in {p.first} of {p.pairs} pairs "
                      f"({_share(p.first / p.pairs, p.ci)}); biased: {'yes' if p.biased else 'no'}")
    if report.agreement is not None:
        a = report.agreement
        name = "Cohen's" if a.statistic == "cohen" else "Fleiss'"
        console.print(f"annotator agreement: {name} kappa {a.kappa:.3f} over {a.items} items ({a.annotators} "
                      f"annotators, {a.labels_per_item} labels per item)")
    if ensemble is not None:
        console.print(f"preference strength ({len(ensemble['models'])} reward models, {ensemble['pairs']} pairs): "
                      f"mean margin {ensemble['mean_margin']:.3f} (sd over pairs {ensemble['std_of_mean_margin']:.3f}), "
                      f"mean spread over models {ensemble['mean_spread']:.3f}")


@data.command("diagnose")
@click.argument("file")
@click.option("--rm", "models", multiple=True, metavar="MODEL",
              help="A prefkit reward-model folder (repeat for an ensemble): preference strength, mislabelled pairs.")
@click.option("--near", default=0.9, show_default=True, type=click.FloatRange(0, 1, min_open=True),
              help="Jaccard similarity (MinHash, word 3-grams) from which two records are near duplicates.")
@click.option("--min-margin", type=float, default=None, help="With --rm: drop pairs whose mean margin is below this.")
@click.option("--write", "clean_out", metavar="CLEAN", help="With --min-margin: write the kept records "
                                                             "(.jsonl, .jsonl.gz or .parquet).")
@click.option("--tokenizer", metavar="DIR", help="Local tokenizer folder: length bias in tokens too.")
@click.option("--batch-size", default=32, show_default=True, help="Reward-model batch size.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON instead of tables.")
@_format
def diagnose_cmd(file: str, models: tuple[str, ...], near: float, min_margin: float | None,
                 clean_out: str | None, tokenizer: str | None, batch_size: int, as_json: bool, fmt: str) -> None:
    """Duplicates, empty turns, early divergence, length/position bias, agreement; with --rm, strength."""
    from dataclasses import replace

    from prefkit.data.diagnose import diagnose, read_located

    if min_margin is not None and not models:
        raise ConfigError("--min-margin needs reward models: add --rm MODEL")
    if clean_out and min_margin is None:
        raise ConfigError("--write needs --min-margin X (the mean margin a pair must reach to be kept)")
    if clean_out and not clean_out.endswith((".jsonl", ".jsonl.gz", ".parquet")):
        raise ConfigError(f"--write {clean_out!r}: write .jsonl, .jsonl.gz or .parquet")
    for m in models:
        if not Path(m).is_dir():
            raise ConfigError(f"--rm {m!r} is not a folder; pass a prefkit reward-model folder")
    tok = _load_tokenizer(tokenizer) if tokenizer else None
    _check_type(file)
    located = read_located(file, format=fmt)
    report = diagnose(located, near=near, tokenizer=tok)
    ensemble = None
    if models:
        from transformers.utils import logging as hf_logging

        from prefkit.eval.data_quality import filter_by_margin, pairs_of, preference_strength, strength_checks
        from prefkit.models.reward import RewardModel

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
        idx = pairs_of(located.records)
        pairs = [located.records[i] for i in idx]
        strength = preference_strength(pairs, [RewardModel.load(m) for m in models], names=models,
                                       batch_size=batch_size)
        ensemble = strength.summary()
        report = replace(report, checks=report.checks + tuple(
            strength_checks(strength, [located.where[i] for i in idx], min_margin)))
        if clean_out:
            kept = filter_by_margin(located.records, strength, min_margin)
            ensemble["written"] = write(kept, clean_out)
            ensemble["written_to"] = clean_out
    if as_json:
        click.echo(json.dumps({**report.to_dict(), "ensemble": ensemble}, indent=2, default=str))
        return
    _print_diagnosis(report, ensemble)
    if clean_out:
        click.echo(f"wrote {ensemble['written']} records to {clean_out}")


def _count_or_fraction(value: str | None, flag: str) -> int | float | None:
    """``"12"`` -> 12 (a count), ``"0.5"`` -> 0.5 (a fraction), None -> None."""
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        pass
    try:
        return float(value)
    except ValueError:
        raise ConfigError(f"{flag} {value!r} must be a count (e.g. 12) or a fraction (e.g. 0.5)") from None


@data.command("personas")
@click.option("--statements", required=True, metavar="FILE",
              help="Persona statements (rows with trait, statement, expresses_trait, label_confidence).")
@click.option("--groups", default=4, show_default=True, help="K, the number of groups.")
@click.option("--users", default=100, show_default=True, help="Number of users.")
@click.option("--pairs-per-user", default=40, show_default=True, help="Pairs each user labels.")
@click.option("--seed", default=0, show_default=True, help="Random seed.")
@click.option("--out", required=True, metavar="FILE", help="Output (.jsonl, .jsonl.gz or .parquet).")
@click.option("--disagree", default=None, metavar="N|F",
              help="Traits the groups disagree on: a count (16) or a fraction (0.5). Default: all.")
@click.option("--traits", default=None, metavar="A,B,...", help="Use only these traits.")
@click.option("--group-shares", default=None, metavar="W,W,...", help="Relative group sizes, e.g. 0.8,0.2.")
@click.option("--mixture", type=float, default=None, metavar="ALPHA",
              help="Users mix the groups with Dirichlet(ALPHA) weights (PAL-style).")
@click.option("--mixture-stance", type=click.Choice(MIXTURE_STANCES), default="majority", show_default=True,
              help="A mixture user's stance: weighted majority, or drawn per pair.")
@click.option("--heldout", default="0", show_default=True, metavar="N|F",
              help="Held-out (unseen) users: a count or a fraction of --users.")
@click.option("--noise", type=click.Choice(NOISES), default="none", show_default=True,
              help="'confidence': label noise from the statements' label_confidence.")
@click.option("--flip", default=0.0, show_default=True, help="Also flip each answer with this probability.")
@click.option("--pairs-per-trait", type=int, default=None, help="Pool size per trait (pairs shared by users).")
@click.option("--prompt", default=PROMPT, show_default=True, help="The question every pair asks.")
@click.option("--summary", "summary_out", default=None, metavar="JSON", help="Also write the summary as JSON.")
def personas_cmd(statements: str, groups: int, users: int, pairs_per_user: int, seed: int, out: str,
                 disagree: str | None, traits: str | None, group_shares: str | None, mixture: float | None,
                 mixture_stance: str, heldout: str, noise: str, flip: float, pairs_per_trait: int | None,
                 prompt: str, summary_out: str | None) -> None:
    """Synthetic users with conflicting preferences from persona statements (prefkit.data.personas)."""
    shares = None
    if group_shares:
        try:
            shares = tuple(float(x) for x in group_shares.split(","))
        except ValueError:
            raise ConfigError(f"--group-shares {group_shares!r} must be numbers separated by commas, "
                              "e.g. 0.8,0.2") from None
    if not out.endswith((".jsonl", ".jsonl.gz", ".parquet")):
        raise ConfigError(f"--out {out!r}: write .jsonl, .jsonl.gz or .parquet")
    _check_type(statements)
    result = make_personas(
        statements, groups=groups, users=users, pairs_per_user=pairs_per_user, seed=seed,
        disagree_traits=_count_or_fraction(disagree, "--disagree"),
        traits=tuple(t.strip() for t in traits.split(",")) if traits else None, group_shares=shares,
        mixture=mixture, mixture_stance=mixture_stance, heldout=_count_or_fraction(heldout, "--heldout"),
        noise=noise, flip=flip, pairs_per_trait=pairs_per_trait, prompt=prompt)
    n = write(result.records, out)
    summary = result.summary()
    click.echo(result.table())
    click.echo(f"wrote {n} pairs for {summary['users']} users ({summary['heldout_users']} held out; group sizes "
               f"{summary['group_sizes']}) over {summary['traits']} traits ({summary['disagreeing_traits']} "
               f"disagreeing) to {out}; {summary['flipped']} answers flipped by noise")
    if summary_out:
        Path(summary_out).write_text(json.dumps(summary, indent=2) + "\n")
        click.echo(f"wrote {summary_out}")


commands: dict[str, click.Command] = {"data": data}
