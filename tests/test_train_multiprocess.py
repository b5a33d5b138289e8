"""Two processes (``accelerate launch``, gloo on CPU) at the same global batch as one process give the
same first-step loss, gradient norm and second-step loss.

On a machine without GPUs, ``accelerate launch --multi_gpu --num_processes 2`` is the torchrun launcher
(plain ``--num_processes 2`` on CPU needs ``mpirun``); prefkit then picks CPU + gloo by itself.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from launch import launch, needs_launcher
from prefkit.data.writers import write_jsonl
from prefkit.testing import tiny_llama, tiny_pairs, tiny_tokenizer

pytestmark = pytest.mark.slow


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


@needs_launcher
def test_two_processes_match_one(tmp_path) -> None:
    tok = copy.deepcopy(tiny_tokenizer())
    tiny_llama(len(tok)).save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    write_jsonl(tiny_pairs(8), tmp_path / "pairs.jsonl")
    job = tmp_path / "job.yaml"
    job.write_text(f"model: {{path: {tmp_path / 'model'}}}\ndata: {{train: {tmp_path / 'pairs.jsonl'}}}\n"
                   "loss: {name: simpo}\ntrain: {max_steps: 2, lr: 1.0e-2, progress: false}\n"
                   "output: {tensorboard: false, plots: false, save_model: false}\n")
    train = ["-m", "prefkit.cli.main", "train", "--config", str(job)]
    launch([*train, "train.batch_size=4", f"output.dir={tmp_path / 'one'}"], 1)
    launch([*train, "train.batch_size=2", f"output.dir={tmp_path / 'two'}"], 2)
    a, b = metrics(tmp_path / "one"), metrics(tmp_path / "two")
    assert len(a) == len(b) == 2  # one writer in the two-process run
    assert abs(a[0]["loss"] - b[0]["loss"]) < 1e-6 and a[0]["loss"] > 0
    assert abs(a[0]["grad_norm"] - b[0]["grad_norm"]) < 1e-5
    assert abs(a[1]["loss"] - b[1]["loss"]) < 1e-5


WORKER = '''
import copy, json, sys
from prefkit.testing import tiny_llama, tiny_pairs, tiny_tokenizer
from prefkit.train.config import load_config
from prefkit.train.trainer import Trainer

out, kind, batch_size, grad_accum = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
tok = copy.deepcopy(tiny_tokenizer())
quiet = ["train.progress=false", "output.tensorboard=false", "output.plots=false", "output.save_model=false",
         "train.max_steps=1", "train.lr=1e-2", "train.scheduler=constant", "train.max_grad_norm=null",
         f"train.batch_size={batch_size}", f"train.grad_accum={grad_accum}", f"output.dir={out}"]
if kind == "rm":
    from prefkit.models.reward import RewardModel, RewardModelConfig, as_text_record
    from prefkit.train.config import load_reward_config
    from prefkit.train.objectives import make_objective
    import torch
    torch.manual_seed(0)  # the head's initialisation
    model = RewardModel.from_backbone(tiny_llama(len(tok)), RewardModelConfig(), tok)
    cfg = load_reward_config(overrides=quiet)
    objective = make_objective(cfg, model.tokens())
    records = [as_text_record(r, tok) for r in tiny_pairs(8)]
    trainer = Trainer(cfg, model, tok, records, objective=objective)
else:
    model = tiny_llama(len(tok))
    loss = ["loss.name=bco_pair", "train.max_steps=2"] if kind == "bco" else ["loss.name=dpo", "loss.beta=0.5"]
    trainer = Trainer(load_config(overrides=[*quiet, *loss]), model, tok, tiny_pairs(8))
log = trainer.train()
wrapper = type(trainer.step_module).__name__
if trainer.accelerator.is_main_process:
    change = sum(float((p.detach() ** 2).sum()) for p in model.parameters())
    json.dump({"loss": log["loss"], "grad_norm": log["grad_norm"], "wrapper": wrapper, "weights": change,
               "reward_mean": trainer.reward_mean},
              open(out + ".json", "w"))
'''


@needs_launcher
@pytest.mark.parametrize("kind", ["policy", "rm", "bco"])
def test_ddp_wrapper_with_accumulation_matches_one_process(tmp_path, kind: str) -> None:
    """The training forward goes through DDP (PolicyStep wrapped), micro-steps before the last skip the
    sync, and 2 processes x batch 2 x 2 micro-steps give one process's batch-8 step (policy and reward
    model: loss, gradient norm and updated weights; BCO: the running reward mean over all processes)."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    launch([str(script), str(tmp_path / "one"), kind, "8", "1"], 1)
    launch([str(script), str(tmp_path / "two"), kind, "2", "2"], 2)
    a, b = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    assert a["wrapper"] == "PolicyStep" and b["wrapper"] == "DistributedDataParallel"
    assert abs(a["loss"] - b["loss"]) < 1e-6 and a["loss"] > 0
    assert abs(a["grad_norm"] - b["grad_norm"]) < 1e-5 * max(1.0, a["grad_norm"])
    assert abs(a["weights"] - b["weights"]) < 1e-5 * max(1.0, a["weights"])
    if kind == "bco":
        assert a["reward_mean"][1] == b["reward_mean"][1] == 32  # 2 steps x 8 pairs x 2 rewards; sums agree to float error
        assert abs(a["reward_mean"][0] - b["reward_mean"][0]) < 1e-4 and a["reward_mean"][0] != 0
