"""``prefkit rm`` (train / eval / score a reward model) and ``prefkit bon`` (best-of-N).

Thin wrappers over ``prefkit.models.reward`` and ``prefkit.train.run.train_reward_model``,
``prefkit.eval.reward`` (the evaluation report) and ``prefkit.eval.best_of_n``.
"""

from __future__ import annotations

import os
from pathlib import Path

import click

from prefkit.errors import ConfigError, DataError


def _offline() -> None:
    """CLI-only process settings: no weight-loading progress bars, and ``transformers`` warnings off (its
    "sequence longer than the maximum" warning is wrong here: whole dialogues are tokenized first, then cut
    to ``reward.max_length``). The hub is left as the environment says: a hub id downloads when online and
    reads the local cache when ``HF_HUB_OFFLINE=1``."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def _load_model(path: str):
    from prefkit.models.reward import RewardModel

    return RewardModel.load(path)


def _load_data(path: str, limit: int | None):
    from prefkit.data.readers import load

    records = list(load(path))
    return records[:limit] if limit else records


@click.group(name="rm", context_settings={"help_option_names": ["-h", "--help"]})
def rm() -> None:
    """Reward models: train, evaluate, score data."""


@rm.command(name="train", context_settings={"ignore_unknown_options": True})
@click.option("--config", "config_path", type=click.Path(dir_okay=False), required=True,
              help="YAML job: model, reward, data, loss, train, output sections.")
@click.option("--resume", is_flag=True, help="Continue from the latest checkpoint in output.dir.")
@click.option("--no-eval", is_flag=True, help="Skip the evaluation report on the eval data after training.")
@click.argument("overrides", nargs=-1)
def train_cmd(config_path: str, resume: bool, no_eval: bool, overrides: tuple[str, ...]) -> None:
    """Train a reward model. OVERRIDES are key=value pairs, e.g. train.lr=3e-5 reward.max_length=256.

    The model is saved in OUTPUT_DIR/model; with eval data, the evaluation report (table, rm_eval.json,
    reliability.png, margins.png) goes to OUTPUT_DIR/eval.
    """
    import time

    from prefkit.eval.reward import evaluate_reward_model, print_report, write_report
    from prefkit.train.config import load_reward_config
    from prefkit.train.run import check_run_dir, read_data, train_reward_model
    from prefkit.train.trl import flags_to_overrides

    _offline()
    cfg = load_reward_config(config_path, flags_to_overrides(overrides))
    check_run_dir(cfg, resume)
    train, evaluation = read_data(cfg)
    start = time.perf_counter()
    # The trainer's own periodic evaluation (eval/* metrics) only when asked for with train.eval_every;
    # the full report below covers the end of training.
    periodic = evaluation if cfg.train.eval_every else None
    if cfg.reward is not None and cfg.reward.head == "maxmin":  # groups learned by EM, M-steps by the trainer
        from collections import Counter

        from prefkit.train.personal import fit_maxmin

        if resume:
            raise ConfigError("--resume: a maxmin head is fitted by EM (prefkit.train.personal.fit_maxmin), "
                              "which starts afresh; run without --resume")
        model, groups = fit_maxmin(cfg, train, eval_records=periodic, say=click.echo)
        sizes = Counter(groups.values())
        click.echo(f"MaxMin: {len(groups)} users in {len(sizes)} groups (sizes "
                   + ", ".join(f"{g}: {n}" for g, n in sorted(sizes.items())) + ")")
    else:
        model, _ = train_reward_model(cfg, resume=resume, train_records=train, eval_records=periodic)
    click.echo(f"trained in {time.perf_counter() - start:.0f} s; model saved to {Path(cfg.output.dir) / 'model'}")
    # Under `accelerate launch` every process holds the trained model: the main process alone reports.
    if evaluation and not no_eval and int(os.environ.get("RANK", "0")) == 0:
        report = evaluate_reward_model(model, evaluation, by=cfg.data.eval_by)
        print_report(report)
        paths = write_report(report, Path(cfg.output.dir) / "eval")
        click.echo("wrote " + ", ".join(str(p) for p in paths.values()))


@rm.command(name="eval")
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False))
@click.argument("data", type=click.Path(exists=True))
@click.option("--out", "out_dir", default="rm_eval", show_default=True, type=click.Path(file_okay=False),
              help="Folder for rm_eval.json, reliability.png and margins.png (a suite: judge_suite.json).")
@click.option("--by", default=None, help="Subset/category column for a per-value breakdown (a record "
              "field such as source, or a metadata key).")
@click.option("--limit", type=int, default=None, help="Evaluate only the first N records (a suite: per file).")
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--bins", type=int, default=10, show_default=True, help="Calibration bins.")
@click.option("--length-buckets", type=int, default=4, show_default=True)
@click.option("--no-plots", is_flag=True, help="Write only the JSON report.")
@click.option("--sections", "sections", default=None, type=click.Path(exists=True, dir_okay=False),
              help="A suite's sections YAML (section: [files]); default DATA/sections.yaml, else sub-folders.")
@click.option("--json", "as_json", is_flag=True, help="A suite: print the result as JSON instead of tables.")
@click.option("--shots", type=click.IntRange(min=1), default=None,
              help="Personalized model: adapt users it was not trained on from their first K pairs "
                   "(few-shot add_user) and score their other pairs.")
def eval_cmd(model_dir: str, data: str, out_dir: str, by: str | None, limit: int | None, batch_size: int,
             bins: int, length_buckets: int, no_plots: bool, sections: str | None, as_json: bool,
             shots: int | None) -> None:
    """Evaluate a reward model on the preference pairs in DATA: accuracy table (overall, per subset, per
    length bucket, beside the longer/shorter-wins baselines), calibration (ECE, reliability diagram),
    margin histogram, tie accuracy. Records with ``user_id``: also accuracy per user (count, mean, min,
    worst users) and per group (``metadata.group``); a personalized model (PAL, VPL, MaxMin) scores each
    pair for its user, and users it was not trained on need ``--shots K``.

    DATA a folder: a judge suite (RewardBench-style; ``prefkit.eval.judge_suite``): accuracy per file and
    per section with 95% intervals, position consistency and length bias. MODEL_DIR is then a reward
    model, or a causal LM folder used as a pairwise LM judge (both orders asked)."""
    _offline()
    if batch_size < 1 or bins < 1 or length_buckets < 1:
        raise ConfigError("--batch-size, --bins and --length-buckets must be >= 1")
    if Path(data).is_dir():
        if shots:
            raise ConfigError("--shots applies to a pairs file with user_id, not a suite folder")
        _eval_suite(model_dir, data, out_dir, limit, batch_size, sections, as_json)
        return
    if sections or as_json:
        raise ConfigError("--sections and --json apply to a suite folder; DATA is a file")
    from prefkit.eval.personal import adapt_unseen_users, known_users
    from prefkit.eval.reward import evaluate_reward_model, print_report, write_report

    model = _load_model(model_dir)
    records = _load_data(data, limit)
    records, adapted = adapt_unseen_users(model, records, shots)
    if adapted["unseen_users"]:
        click.echo(f"adapted {adapted['unseen_users']} unseen users from their first {shots} pairs "
                   f"({adapted['shot_pairs']} pairs, not scored; {adapted['users_without_pairs_left']} users "
                   "have no pair left to score)")
    elif shots and known_users(model) is None:
        click.echo("note: the model is user-blind (no personalized head); --shots has no effect")
    report = evaluate_reward_model(model, records, by=by, batch_size=batch_size, num_bins=bins,
                                   num_length_buckets=length_buckets)
    if adapted["unseen_users"] and "personal" in report.data:
        report.data["personal"]["adapted"] = adapted
    print_report(report)
    paths = write_report(report, out_dir, plots=not no_plots)
    click.echo("wrote " + ", ".join(str(p) for p in paths.values()))


def _load_judge(path: str, batch_size: int):
    """A reward-model folder (``reward_config.json``) or a causal LM folder (an ``LMJudge``)."""
    if (Path(path) / "reward_config.json").is_file():
        return _load_model(path)
    if not (Path(path) / "config.json").is_file():
        raise ConfigError(f"{path}: neither a reward model (reward_config.json) nor a model folder (config.json)")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from prefkit.online.judges import LMJudge

    lm = AutoModelForCausalLM.from_pretrained(path)
    return LMJudge(lm, AutoTokenizer.from_pretrained(path), batch_size=batch_size, name=f"LM judge ({Path(path).name})")


def _eval_suite(model_dir: str, data: str, out_dir: str, limit: int | None, batch_size: int,
                sections: str | None, as_json: bool) -> None:
    import json

    from prefkit.eval.judge_suite import evaluate_suite, format_suite

    result = evaluate_suite(_load_judge(model_dir, batch_size), data, sections=sections, limit=limit,
                            batch_size=batch_size)
    text = json.dumps(result.to_dict(), indent=2)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    (Path(out_dir) / "judge_suite.json").write_text(text + "\n")
    click.echo(text if as_json else format_suite(result) + f"\n\nwrote {Path(out_dir) / 'judge_suite.json'}")


@rm.command(name="score")
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False))
@click.argument("data", type=click.Path(exists=True))
@click.argument("out", type=click.Path(dir_okay=False))
@click.option("--key", default="rm_score", show_default=True, help="Metadata key prefix for the scores.")
@click.option("--limit", type=int, default=None, help="Score only the first N records.")
@click.option("--batch-size", type=int, default=32, show_default=True)
def score_cmd(model_dir: str, data: str, out: str, key: str, limit: int | None, batch_size: int) -> None:
    """Add reward-model scores to every record of DATA and write OUT (.jsonl, .jsonl.gz or .parquet).

    Ratings/unpaired: metadata.KEY; pairs: KEY_chosen, KEY_rejected, KEY_margin; rankings: KEYs."""
    from prefkit.data.writers import write
    from prefkit.models.reward import score_records

    _offline()
    if not out.endswith((".jsonl", ".jsonl.gz", ".parquet")):
        raise DataError(f"unsupported output type {out!r}; use .jsonl, .jsonl.gz or .parquet")
    model = _load_model(model_dir)
    records = _load_data(data, limit)
    n = write(score_records(model, records, batch_size=batch_size, key=key), out)
    click.echo(f"wrote {n} scored records to {out}")


@click.command(name="bon", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False))
@click.argument("data", type=click.Path(exists=True, dir_okay=False))
@click.argument("out", type=click.Path(dir_okay=False))
@click.option("--batch-size", type=int, default=32, show_default=True)
def bon(model_dir: str, data: str, out: str, batch_size: int) -> None:
    """Best-of-N: for each row of DATA (prompt + candidates list), keep the candidate the reward model
    scores highest. Writes OUT (.jsonl or .parquet) with best, best_index, scores, worst_index."""
    from prefkit.eval.best_of_n import best_of_n, parse_candidates, read_rows, write_rows

    _offline()
    rows = read_rows(data)
    for i, row in enumerate(rows):  # every row checked before the model loads
        parse_candidates(row, f"{Path(data).name} row {i}")
    model = _load_model(model_dir)
    n = write_rows(best_of_n(model, rows, batch_size=batch_size, source=Path(data).name), out)
    click.echo(f"wrote {n} best-of-N rows to {out}")


commands: dict[str, click.Command] = {"rm": rm, "bon": bon}
