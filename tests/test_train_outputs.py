"""The run directory: resolved config, TRL-compatible metrics, TensorBoard events, plots, final model."""

from __future__ import annotations

import copy
import importlib.util
import json

import pytest

from prefkit.errors import PrefkitError
from prefkit.testing import tiny_llama, tiny_pairs, tiny_tokenizer
from prefkit.train.config import load_config
from prefkit.train.metrics import MetricsWriter, read_metrics
from prefkit.train.rundir import MARKER, read_marker
from prefkit.train.trainer import Trainer

TRL_KEYS = {"loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
            "logps/chosen", "logps/rejected", "grad_norm", "lr", "tokens/s"}


def test_run_directory(tmp_path) -> None:
    tok = copy.deepcopy(tiny_tokenizer())
    cfg = load_config(overrides=["train.progress=false", "train.max_steps=4", "train.batch_size=4", "train.eval_every=2",
                                 "train.save_every=2", "train.keep_last=1", f"output.dir={tmp_path}"])
    Trainer(cfg, tiny_llama(len(tok)), tok, tiny_pairs(8), tiny_pairs(4, seed=1)).train()
    assert load_config(tmp_path / "config.yaml") == cfg
    rows = read_metrics(tmp_path)
    train_rows = [r for r in rows if "loss" in r]
    assert [r["step"] for r in train_rows] == [1, 2, 3, 4] and all(TRL_KEYS <= r.keys() for r in train_rows)
    assert [r["step"] for r in rows if "eval/loss" in r] == [2, 4]
    assert {"eval/rewards/accuracies", "eval/logps/chosen"} <= next(r for r in rows if "eval/loss" in r).keys()
    if importlib.util.find_spec("tensorboard") is not None:  # events only when tensorboard is installed
        assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert {p.name for p in (tmp_path / "plots").glob("*.png")} >= {"loss.png", "rewards.png", "accuracy.png"}
    assert (tmp_path / "model" / "model.safetensors").is_file() and (tmp_path / "model" / "tokenizer.json").is_file()
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-00000004"]
    marker = read_marker(tmp_path)  # the folder is marked as prefkit's, listing what prefkit writes there
    assert (tmp_path / MARKER).is_file() and marker is not None
    assert {p.name for p in tmp_path.iterdir()} - {MARKER} <= set(marker["entries"])


def test_metrics_file_torn_and_corrupt_lines(tmp_path) -> None:
    """A half-written last line (a killed run) is left out by read_metrics and dropped, with a notice, by
    the resume's truncation; a bad line elsewhere is one error line naming it."""
    path = tmp_path / "metrics.jsonl"
    rows = [{"step": 1, "loss": 0.5}, {"step": 2, "loss": 0.4}, {"step": 2, "eval/loss": 0.6},
            {"step": 3, "loss": 0.3}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 4, "lo')
    assert read_metrics(tmp_path) == rows
    writer = MetricsWriter(tmp_path, tensorboard=False)
    notice = writer.truncate_after(3)
    assert notice is not None and "half-written last line" in notice and "\n" not in notice
    assert read_metrics(tmp_path) == rows and path.read_text().endswith("\n")
    assert writer.truncate_after(2) is None and read_metrics(tmp_path) == rows[:3]
    writer.truncate_after(2, final=True)  # resuming from the final checkpoint: its eval line is redone
    assert read_metrics(tmp_path) == rows[:2]
    path.write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(PrefkitError, match=r"metrics.jsonl line 2: not a metrics line"):
        read_metrics(tmp_path)
