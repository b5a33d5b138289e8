"""Reference modes and the on-disk reference cache.

- frozen copy, adapters disabled and precomputed log-probs give the same per-example losses on the
  same batch (LoRA B matrices perturbed so the policy differs from the reference);
- a second run with the same fingerprint loads no reference model (``load_count``);
- a changed part of the fingerprint recomputes and says which part changed.
"""

from __future__ import annotations

import copy

import pytest
import torch

import prefkit.models.load as model_load
from prefkit.data.writers import write_jsonl
from prefkit.testing import tiny_llama, tiny_pairs, tiny_tokenizer, tiny_unpaired
from prefkit.train.config import load_config
from prefkit.train.run import run
from prefkit.train.trainer import Trainer

QUIET = ["train.progress=false", "output.tensorboard=false", "output.plots=false", "output.save_model=false"]


@pytest.fixture
def model_dir(tmp_path):
    tok = copy.deepcopy(tiny_tokenizer())
    tiny_llama(len(tok)).save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    return tmp_path / "model"


def lora_policy(model_dir):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # LoRA A matrices are drawn from the global RNG
        policy = model_load.add_lora(model_load.load_model(model_dir), r=4, alpha=8)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    return policy


@pytest.mark.parametrize("loss, data", [("dpo", tiny_pairs(8)), ("kto", tiny_unpaired(8))])
def test_three_reference_modes_agree(tmp_path, model_dir, loss, data) -> None:
    tok = model_load.load_tokenizer(model_dir)
    losses = {}
    for mode in ("frozen", "adapters_off", "precomputed"):
        cfg = load_config(overrides=[*QUIET, f"loss.name={loss}", f"reference.mode={mode}", "lora.r=4",
                                     f"reference.cache_dir={tmp_path / 'cache'}", "train.batch_size=8",
                                     f"output.dir={tmp_path / mode}"])
        trainer = Trainer(cfg, lora_policy(model_dir), tok, data,
                          reference_model=lambda: model_load.frozen(model_load.load_model(model_dir)),
                          reference_weights=model_dir)
        out, _ = trainer._forward("train", torch.arange(8))
        losses[mode] = out.losses.detach()
    assert losses["frozen"].std() > 0
    torch.testing.assert_close(losses["adapters_off"], losses["frozen"], atol=1e-5, rtol=0)
    torch.testing.assert_close(losses["precomputed"], losses["frozen"], atol=1e-5, rtol=0)


def test_cache_hit_loads_no_reference_model(tmp_path, model_dir, capsys) -> None:
    write_jsonl(tiny_pairs(8), tmp_path / "pairs.jsonl")
    base = [*QUIET, f"model.path={model_dir}", f"data.train={tmp_path / 'pairs.jsonl'}", "train.max_steps=1",
            "train.batch_size=4", "reference.mode=precomputed", f"reference.cache_dir={tmp_path / 'cache'}"]

    def loads(extra: list[str], name: str) -> int:
        before = model_load.load_count
        run(load_config(overrides=[*base, *extra, f"output.dir={tmp_path / name}"]))
        return model_load.load_count - before

    assert loads([], "first") == 2  # policy + reference (to fill the cache)
    assert "no cached reference log-probs yet" in capsys.readouterr().err
    assert loads([], "second") == 1  # policy only
    assert "cache hit" in capsys.readouterr().err
    assert loads(["data.limit=6"], "third") == 2
    assert "cached reference log-probs are for different data" in capsys.readouterr().err
    assert loads(["encode.max_length=24"], "fourth") == 2
    assert "cached reference log-probs are for different encoding" in capsys.readouterr().err


def test_explain_miss_names_changed_parts(tmp_path) -> None:
    from prefkit.train.refcache import ReferenceCache

    cache = ReferenceCache(tmp_path)
    parts = {"weights": "w1", "tokenizer": "t1", "data": "d1", "encoding": "e1"}
    cache.store(parts, torch.zeros(3, 2))
    assert cache.load(parts).shape == (3, 2)
    assert cache.explain_miss({**parts, "weights": "w2"}).endswith("different weights")
    assert cache.explain_miss({**parts, "tokenizer": "t2", "encoding": "e2"}).endswith("different tokenizer, encoding")
    assert not list(tmp_path.glob(".tmp-*"))  # written atomically
