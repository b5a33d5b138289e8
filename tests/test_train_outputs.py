"""The run directory: resolved config, TRL-compatible metrics, TensorBoard events, plots, final model."""

from __future__ import annotations

import copy
import importlib.util

from prefkit.testing import tiny_llama, tiny_pairs, tiny_tokenizer
from prefkit.train.config import load_config
from prefkit.train.metrics import read_metrics
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
