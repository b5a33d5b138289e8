"""CPU memory hygiene in the trainer: fused AdamW where torch has it, and ``train.trim_memory`` (glibc's
``malloc_trim`` after every micro-step), neither of which changes a training step."""

from __future__ import annotations

import copy
import platform
import sys

import pytest
import torch

from prefkit.testing import tiny_llama, tiny_pairs, tiny_tokenizer
from prefkit.train.config import load_config
from prefkit.train.heap import heap_trimmer
from prefkit.train.trainer import Trainer

BASE = ["train.progress=false", "output.tensorboard=false", "output.plots=false", "output.save_model=false",
        "train.max_steps=2", "train.lr=1e-2", "train.batch_size=2", "train.grad_accum=2"]
trainer_module = sys.modules[Trainer.__module__]


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_heap_trimmer_runs_on_glibc() -> None:
    trim = heap_trimmer()
    assert trim is not None
    trim()


def _train(tmp_path, name: str, *overrides: str) -> Trainer:
    tok = copy.deepcopy(tiny_tokenizer())
    cfg = load_config(overrides=[*BASE, *overrides, f"output.dir={tmp_path / name}"])
    trainer = Trainer(cfg, tiny_llama(len(tok)), tok, tiny_pairs(8))
    trainer.train()
    return trainer


def test_trim_memory_runs_after_every_micro_step_and_changes_nothing(tmp_path, monkeypatch) -> None:
    calls = []
    monkeypatch.setattr(trainer_module, "heap_trimmer", lambda: lambda: calls.append(1))
    trimmed = _train(tmp_path, "on")
    assert len(calls) == 4  # 2 steps x 2 micro-steps
    plain = _train(tmp_path, "off", "train.trim_memory=false")
    assert len(calls) == 4
    for p, q in zip(trimmed.model.parameters(), plain.model.parameters(), strict=True):
        assert torch.equal(p, q)


def test_adamw_is_fused_on_cpu(tmp_path) -> None:
    optimizer = _train(tmp_path, "fused").optimizer
    optimizer = getattr(optimizer, "optimizer", optimizer)  # accelerate's wrapper holds torch's AdamW
    assert optimizer.defaults["fused"]
