"""Gradient accumulation: one optimizer step on a batch of 8 equals 4 micro-steps of 2 (within 1e-5).

AdamW's first step is ~lr·sign(g), which would hide a wrong gradient scale; a large ``adam_eps`` makes
the update ~lr·g/eps, proportional to the gradient, so a mis-normalised accumulation (e.g. a mean per
micro-batch without dividing by the number of micro-steps, giving 4x the gradient) fails the check.
"""

from __future__ import annotations

import copy

import torch

from prefkit.testing import tiny_llama, tiny_pairs, tiny_tokenizer
from prefkit.train.config import load_config
from prefkit.train.trainer import Trainer

BASE = ["train.progress=false", "output.tensorboard=false", "output.plots=false", "output.save_model=false",
        "train.max_steps=1", "train.lr=1e-2", "train.adam_eps=1.0", "train.max_grad_norm=null",
        "train.scheduler=constant", "loss.beta=0.5"]


def one_step(tmp_path, name: str, batch_size: int, grad_accum: int) -> tuple[Trainer, dict[str, float]]:
    tok = copy.deepcopy(tiny_tokenizer())
    cfg = load_config(overrides=[*BASE, f"train.batch_size={batch_size}", f"train.grad_accum={grad_accum}",
                                 f"output.dir={tmp_path / name}"])
    trainer = Trainer(cfg, tiny_llama(len(tok)), tok, tiny_pairs(8))
    return trainer, trainer.train()


def test_accumulation_equals_big_batch(tmp_path) -> None:
    big, big_log = one_step(tmp_path, "big", 8, 1)
    small, small_log = one_step(tmp_path, "small", 2, 4)
    start = tiny_llama(len(tiny_tokenizer())).state_dict()
    moved = 0.0
    for (name, p), q in zip(big.model.named_parameters(), small.model.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-5, rtol=0), name
        moved = max(moved, float((p - start[name]).abs().max()))
    assert moved > 1e-4  # the step did change the weights
    assert abs(big_log["loss"] - small_log["loss"]) < 1e-5
    assert abs(big_log["grad_norm"] - small_log["grad_norm"]) < 1e-4


def test_gradient_checkpointing_gives_the_same_step(tmp_path) -> None:
    """``model.gradient_checkpointing`` turns on activation checkpointing and changes nothing else."""
    tok = copy.deepcopy(tiny_tokenizer())
    runs = []
    for gc in (False, True):
        cfg = load_config(overrides=[*BASE, "train.batch_size=8", f"model.gradient_checkpointing={gc}",
                                     f"output.dir={tmp_path / str(gc)}"])
        trainer = Trainer(cfg, tiny_llama(len(tok)), tok, tiny_pairs(8))
        runs.append((trainer, trainer.train()))
    (plain, plain_log), (checkpointed, gc_log) = runs
    assert checkpointed.model.is_activation_checkpointing and not plain.model.is_activation_checkpointing
    assert abs(plain_log["loss"] - gc_log["loss"]) < 1e-6
    for p, q in zip(plain.model.parameters(), checkpointed.model.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-6, rtol=0)
