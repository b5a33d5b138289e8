"""Every registry loss trains through the one loop: 5 steps on a tiny Llama, finite, loss going down.

The batch is fixed (batch size = dataset size, one batch per epoch, so every step sees the same
examples); "learning happened" means the logged loss of step 5 is below that of step 1.
"""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest

from prefkit.losses import LOSSES
from prefkit.testing import tiny_llama, tiny_pairs, tiny_rankings, tiny_tokenizer, tiny_unpaired
from prefkit.train.config import load_config
from prefkit.train.metrics import read_metrics
from prefkit.train.trainer import Trainer

FAST = ["train.progress=false", "output.tensorboard=false", "output.plots=false", "output.save_model=false",
        "train.scheduler=constant", "train.max_grad_norm=null"]


def records_for(kind: str) -> list:
    if kind == "pair":  # every pair with a strength valid both as a margin and as a probability
        return [dataclasses.replace(p, strength=0.9) for p in tiny_pairs(8)]
    if kind == "list":
        return tiny_rankings(4, k=3)
    return tiny_unpaired(8)


# Reward-model losses train a scalar head; tests/test_reward_models.py trains each of them.
POLICY_LOSSES = sorted(n for n, spec in LOSSES.items() if not spec.kind.startswith("reward_"))


@pytest.mark.parametrize("name", POLICY_LOSSES)
def test_every_loss_trains(name: str, tmp_path) -> None:
    spec = LOSSES[name]
    data = records_for(spec.kind)
    cfg = load_config(overrides=[*FAST, f"loss.name={name}", "train.max_steps=5", f"train.batch_size={len(data)}",
                                 "train.lr=3e-3", f"output.dir={tmp_path}"])
    tok = copy.deepcopy(tiny_tokenizer())
    Trainer(cfg, tiny_llama(len(tok)), tok, data).train()
    losses = [row["loss"] for row in read_metrics(tmp_path) if "loss" in row]
    assert len(losses) == 5 and all(math.isfinite(x) for x in losses), losses
    assert losses[-1] < losses[0], f"{name}: loss did not go down: {losses}"


def test_loss_kind_must_match_data(tmp_path) -> None:
    from prefkit.errors import DataError

    tok = copy.deepcopy(tiny_tokenizer())
    cfg = load_config(overrides=[*FAST, "loss.name=dpo", "train.batch_size=2", f"output.dir={tmp_path}"])
    with pytest.raises(DataError, match="trains on pair records, but the data has 4 ranking records"):
        Trainer(cfg, tiny_llama(len(tok)), tok, tiny_rankings(4, k=3))
