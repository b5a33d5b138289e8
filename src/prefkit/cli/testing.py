"""``prefkit testing``: write the tiny offline builders of ``prefkit.testing`` to disk, to try the CLI.

``prefkit testing tiny-model DIR`` writes a randomly initialised tiny Llama and its byte-level BPE
tokenizer as a ``transformers`` folder (``config.json``, ``model.safetensors``, tokenizer files), plus a
small pairs file and a ready job (the default loss) beside them, so that ``prefkit train --config DIR/train.yaml`` runs
offline in seconds. The model is random: it is for trying commands and configs, not for results.
"""

from __future__ import annotations

import copy
from pathlib import Path

import click

from prefkit.errors import ConfigError

_KINDS = ("pair", "chat", "ranking", "unpaired")


def _records(kind: str, n: int, seed: int) -> list:
    from prefkit import testing

    if kind == "pair":
        return testing.tiny_pairs(n, seed)
    if kind == "chat":
        return testing.tiny_chat_pairs(n, seed)
    if kind == "ranking":
        return testing.tiny_rankings(n, seed=seed)
    return testing.tiny_unpaired(n, seed)


def write_tiny_model(out: Path, *, seed: int = 0, hidden: int = 32, layers: int = 2,
                     max_positions: int = 1024, example: bool = True) -> list[Path]:
    """Write the tiny model and tokenizer to ``out`` (and, with ``example``, ``pairs.jsonl`` and
    ``train.yaml`` beside them); return the paths written, the folder first."""
    import yaml

    from prefkit.data.writers import write_jsonl
    from prefkit.testing import tiny_llama, tiny_tokenizer

    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{out} exists and is not an empty folder; choose a new folder")
    if hidden % 4 or hidden < 4:
        raise ConfigError(f"--hidden must be a positive multiple of 4 (4 attention heads), got {hidden}")
    tok = copy.deepcopy(tiny_tokenizer())  # the builder's tokenizer is cached: never touch the original
    model = tiny_llama(len(tok), hidden=hidden, layers=layers, seed=seed, max_positions=max_positions)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    written = [out]
    if example:
        data = out / "pairs.jsonl"
        write_jsonl(_records("pair", 32, seed), data)
        job = {
            "model": {"path": str(out.resolve())},
            "data": {"train": str(data.resolve()), "eval_fraction": 0.25},
            "encode": {"max_length": 128},
            "train": {"max_steps": 10, "batch_size": 4, "lr": 1.0e-3, "log_every": 1, "eval_every": 5,
                      "seed": seed},
            "output": {"dir": "runs/tiny"},
        }
        config = out / "train.yaml"
        config.write_text("# A job on the tiny random model written by `prefkit testing tiny-model`.\n"
                          + yaml.safe_dump(job, sort_keys=False))
        written += [data, config]
    return written


@click.group()
def group() -> None:
    """Tiny offline models, tokenizers and data (prefkit.testing) for trying prefkit without downloads."""


@group.command("tiny-model")
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--seed", default=0, show_default=True, help="Seed of the random weights and the example pairs.")
@click.option("--hidden", default=32, show_default=True, help="Hidden size (a multiple of 4).")
@click.option("--layers", default=2, show_default=True, help="Number of decoder layers.")
@click.option("--max-positions", default=1024, show_default=True, help="max_position_embeddings.")
@click.option("--example/--no-example", default=True, show_default=True,
              help="Also write pairs.jsonl and train.yaml beside the model.")
def tiny_model(out_dir: Path, seed: int, hidden: int, layers: int, max_positions: int, example: bool) -> None:
    """Write a tiny random Llama + tokenizer to OUT_DIR (a new or empty folder), offline.

    Use OUT_DIR as model.path anywhere (train, rm, bon); with the example files, try
    `prefkit train --config OUT_DIR/train.yaml`.
    """
    written = write_tiny_model(out_dir, seed=seed, hidden=hidden, layers=layers, max_positions=max_positions,
                               example=example)
    click.echo(f"wrote a tiny random Llama (hidden {hidden}, {layers} layers) and its tokenizer to {out_dir}")
    if example:
        click.echo(f"wrote {written[1]} (32 pairs) and {written[2]}; try:")
        click.echo(f"  prefkit train --config {written[2]}")


@group.command("tiny-data")
@click.argument("out_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--kind", type=click.Choice(_KINDS), default="pair", show_default=True,
              help="pair: plain-text pairs; chat: conversational pairs; ranking; unpaired.")
@click.option("-n", "count", default=32, show_default=True, help="Number of records.")
@click.option("--seed", default=0, show_default=True)
def tiny_data(out_file: Path, kind: str, count: int, seed: int) -> None:
    """Write COUNT small synthetic records of one kind to OUT_FILE (.jsonl or .parquet)."""
    from prefkit.data.writers import write

    if count < 1:
        raise ConfigError(f"-n must be at least 1, got {count}")
    n = write(_records(kind, count, seed), out_file)
    click.echo(f"wrote {n} {kind} records to {out_file}")


commands: dict[str, click.Command] = {"testing": group}
