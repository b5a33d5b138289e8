"""Pairwise input transforms in the loop (``loss.wpo``, ``loss.ld_dpo_alpha``) and per-record inputs
(strength) checked before training."""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch

from prefkit.errors import ConfigError
from prefkit.testing import tiny_llama, tiny_pairs, tiny_tokenizer, tiny_unpaired
from prefkit.train.config import dump_config, load_config
from prefkit.train.metrics import read_metrics
from prefkit.train.trainer import Trainer

FAST = ["train.progress=false", "output.tensorboard=false", "output.plots=false", "output.save_model=false",
        "train.scheduler=constant", "train.max_grad_norm=null", "train.batch_size=8", "train.lr=3e-3"]


def train(tmp_path, name: str, *overrides: str, records=None) -> list[dict]:
    tok = copy.deepcopy(tiny_tokenizer())
    cfg = load_config(overrides=[*FAST, *overrides, f"output.dir={tmp_path / name}"])
    Trainer(cfg, tiny_llama(len(tok)), tok, records or tiny_pairs(8)).train()
    return [row for row in read_metrics(tmp_path / name) if "loss" in row]


def test_wpo_trains_and_weights_losses(tmp_path) -> None:
    plain = train(tmp_path, "plain", "loss.name=dpo", "train.max_steps=3")
    rows = train(tmp_path, "wpo", "loss.name=dpo", "loss.wpo=true", "train.max_steps=3")
    losses = [r["loss"] for r in rows]
    assert all(math.isfinite(x) for x in losses) and losses[-1] < losses[0], losses
    # weights exp(mean logp(chosen) + mean logp(rejected)) are in (0, 1]: the weighted loss is smaller
    assert all(0 < r["wpo/weights"] <= 1 for r in rows)
    assert rows[0]["loss"] < plain[0]["loss"]


def test_ld_dpo_trains_and_alpha_one_is_identity(tmp_path) -> None:
    plain = train(tmp_path, "plain", "loss.name=dpo", "train.max_steps=2")
    same = train(tmp_path, "one", "loss.name=dpo", "loss.ld_dpo_alpha=1", "train.max_steps=2")
    for a, b in zip(plain, same, strict=True):
        assert abs(a["loss"] - b["loss"]) < 1e-5
    rows = train(tmp_path, "half", "loss.name=simpo", "loss.ld_dpo_alpha=0.3", "train.max_steps=3")
    losses = [r["loss"] for r in rows]
    assert all(math.isfinite(x) for x in losses) and losses[-1] < losses[0], losses
    ld = train(tmp_path, "ld", "loss.name=dpo", "loss.ld_dpo_alpha=0.3", "train.max_steps=2")
    assert abs(ld[1]["loss"] - plain[1]["loss"]) > 1e-6  # α < 1 changes the loss once the policy moved


def test_input_switches_are_checked_at_parse_time() -> None:
    with pytest.raises(ConfigError, match=r"loss.ld_dpo_alpha must be in \[0, 1\]"):
        load_config(overrides=["loss.ld_dpo_alpha=1.5"])
    with pytest.raises(ConfigError, match="loss.wpo apply to pair losses only; loss 'kto' is of kind 'unpaired'"):
        load_config(overrides=["loss.name=kto", "loss.wpo=true"])
    with pytest.raises(ConfigError, match="ld_dpo_alpha needs per-token reference log-probs"):
        load_config(overrides=["loss.ld_dpo_alpha=0.5", "reference.mode=precomputed"])
    load_config(overrides=["loss.name=simpo", "loss.ld_dpo_alpha=0.5", "reference.mode=precomputed"])  # no reference
    with pytest.raises(ConfigError, match="loss.wpo: expected bool"):
        load_config(overrides=["loss.wpo=3"])
    cfg = load_config(overrides=["loss.wpo=true", "loss.ld_dpo_alpha=0.5", "loss.beta=0.2"])
    assert cfg.loss.wpo and cfg.loss.ld_dpo_alpha == 0.5 and cfg.loss.params["beta"] == 0.2
    assert "wpo: true" in dump_config(cfg) and "wpo" not in dump_config(load_config())


@pytest.mark.parametrize("name", ["odpo", "dpo_soft"])
def test_missing_strength_is_an_error_before_training(tmp_path, name: str) -> None:
    """The collator fills a missing strength with NaN when others have one; a loss that needs it (no
    documented fallback) would silently give NaN, so the trainer refuses such data up front."""
    from prefkit.errors import DataError

    pairs = [dataclasses.replace(p, strength=0.5 if i % 3 else None) for i, p in enumerate(tiny_pairs(8))]
    tok = copy.deepcopy(tiny_tokenizer())
    cfg = load_config(overrides=[*FAST, f"loss.name={name}", f"output.dir={tmp_path}"])
    with pytest.raises(DataError, match=f"loss '{name}' needs a strength on every pair, but 3 of 8 records have none"):
        Trainer(cfg, tiny_llama(len(tok)), tok, pairs)
    with pytest.raises(DataError, match="8 of 8 records have none"):
        Trainer(cfg, tiny_llama(len(tok)), tok, [dataclasses.replace(p, strength=None) for p in tiny_pairs(8)])
    Trainer(cfg, tiny_llama(len(tok)), tok, [dataclasses.replace(p, strength=0.5) for p in tiny_pairs(8)])


def test_bco_running_reward_mean_is_delta_and_resumes_exactly(tmp_path) -> None:
    """BCO's δ is the mean of all rewards of the previous steps (step 1: the configured δ = 0); it is
    saved in checkpoints, so a run resumed from step 2 ends with the same weights and δ."""
    from prefkit.train import checkpoint as ckpt

    overrides = ["loss.name=bco_pair", "train.max_steps=4", "train.save_every=1", "train.keep_last=4"]
    rows = train(tmp_path, "bco", *overrides)
    assert rows[0]["bco/delta"] == 0.0
    # one batch of 8 pairs per step: mean of the 16 rewards = (mean chosen + mean rejected) / 2
    assert abs(rows[1]["bco/delta"] - (rows[0]["rewards/chosen"] + rows[0]["rewards/rejected"]) / 2) < 1e-6
    assert rows[2]["bco/delta"] != 0.0
    assert abs(rows[2]["bco/delta"] - sum(r["rewards/chosen"] + r["rewards/rejected"] for r in rows[:2]) / 4) < 1e-6
    tok = copy.deepcopy(tiny_tokenizer())
    cfg = load_config(overrides=[*FAST, *overrides, f"output.dir={tmp_path / 'bco-full'}"])
    full = Trainer(cfg, tiny_llama(len(tok)), tok, tiny_pairs(8))
    full.train()
    step2 = [c for c in ckpt.list_checkpoints(tmp_path / "bco-full") if c.name.endswith("2")][0]
    resumed = Trainer(cfg, tiny_llama(len(tok)), tok, tiny_pairs(8))
    resumed.train(resume=step2)
    assert resumed._reward_mean() == full._reward_mean() and resumed.reward_mean == full.reward_mean
    for (name, p), q in zip(full.model.named_parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(p, q), name
    unpaired = train(tmp_path, "kto-data", "loss.name=bco", "train.max_steps=3", records=tiny_unpaired(8))
    # step 1: policy = reference, every reward is 0; from step 2 on the policy moved
    assert unpaired[0]["bco/delta"] == 0.0 and unpaired[2]["bco/delta"] != 0.0
