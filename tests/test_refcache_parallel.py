"""The reference cache computed by 2 processes (``accelerate launch``, gloo on CPU) is the file 1 process
writes, and a second 2-process run loads it without building a reference model.

Each process computes every other reference batch, the same padded batches one process runs, and the main
process writes the rows sorted by example index ("after sorting"): so the two files, names (fingerprints)
included, are equal byte for byte. Both runs use one thread per process, as the DDP test does.
"""

from __future__ import annotations

import copy
import json
from types import SimpleNamespace

import pytest
import torch

import prefkit.train.refcache as refcache
from launch import launch, needs_launcher
from prefkit.data.writers import write_jsonl
from prefkit.testing import tiny_llama, tiny_pairs, tiny_tokenizer

WORKER = '''
import json, sys
import prefkit.models.load as model_load
from prefkit.train.config import load_config
from prefkit.train.run import run

model_dir, data, cache, out = sys.argv[1:5]
cfg = load_config(overrides=[
    "train.progress=false", "output.tensorboard=false", "output.plots=false", "output.save_model=false",
    f"model.path={model_dir}", f"data.train={data}", "train.max_steps=1", "train.batch_size=2",
    "reference.mode=precomputed", "reference.batch_size=3", f"reference.cache_dir={cache}", f"output.dir={out}"])
run(cfg)
import torch.distributed as dist
rank = dist.get_rank() if dist.is_initialized() else 0
json.dump({"loads": model_load.load_count}, open(f"{out}.rank{rank}.json", "w"))
'''


class _Batch:
    """Stands in for a collated batch of ``n`` pairs: ``group`` turns (2n,) rows g*n+b into (n, 2)."""

    def __init__(self, n: int):
        self.n = n

    def to(self, device: str) -> _Batch:
        return self

    def group(self, values: torch.Tensor) -> torch.Tensor:
        return values.reshape(2, self.n).T


def test_shards_assemble_to_the_one_process_table(monkeypatch) -> None:
    """Strided shards for any world size (some ranks with no batch), gathered in any order, give
    compute_table's rows in dataset order."""
    monkeypatch.setattr(refcache, "collate", lambda chunk, pad_id: _Batch(len(chunk)))

    def source(batch: _Batch, idx: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(logps=torch.cat([idx.float(), -idx.float()]))  # (2B,)

    examples = list(range(10))  # 4 batches of 3, 3, 3, 1
    one = refcache.compute_table(source, examples, 0, batch_size=3)
    assert torch.equal(one, torch.stack([torch.arange(10.0), -torch.arange(10.0)], 1))
    for world in (2, 3, 5):
        shards = [refcache.compute_shard(source, examples, 0, batch_size=3, rank=r, world_size=world)
                  for r in range(world)]
        assert torch.equal(refcache.assemble_table(reversed(shards)), one)


@pytest.mark.slow
@needs_launcher
def test_two_process_cache_equals_one_process_cache(tmp_path) -> None:
    tok = copy.deepcopy(tiny_tokenizer())
    tiny_llama(len(tok)).save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    write_jsonl(tiny_pairs(10), tmp_path / "pairs.jsonl")  # 4 reference batches of 3, 3, 3, 1
    script = tmp_path / "worker.py"
    script.write_text(WORKER)

    def run(processes: int, cache: str, out: str) -> str:
        return launch([str(script), str(tmp_path / "model"), str(tmp_path / "pairs.jsonl"), str(tmp_path / cache),
                       str(tmp_path / out)], processes).stderr

    def loads(out: str, processes: int) -> list[int]:
        return [json.loads((tmp_path / f"{out}.rank{r}.json").read_text())["loads"] for r in range(processes)]

    assert "computing" in run(1, "cache1", "one")
    assert "computing" in run(2, "cache2", "two")
    assert loads("one", 1) == [2] and loads("two", 2) == [2, 2]  # policy + reference on every process
    (a,), (b,) = sorted((tmp_path / "cache1").glob("*")), sorted((tmp_path / "cache2").glob("*"))
    assert a.name == b.name  # the fingerprint does not depend on the number of processes
    assert a.read_bytes() == b.read_bytes()

    assert "cache hit" in run(2, "cache2", "again")
    assert loads("again", 2) == [1, 1]  # policy only: no reference model built on any process
