"""Two processes (``accelerate launch``, gloo on CPU) at the same global batch as one process give the
same first-step loss, gradient norm and second-step loss.

On a machine without GPUs, ``accelerate launch --multi_gpu --num_processes 2`` is the torchrun launcher
(plain ``--num_processes 2`` on CPU needs ``mpirun``); prefkit then picks CPU + gloo by itself.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from prefkit.data.writers import write_jsonl
from prefkit.testing import tiny_llama, tiny_pairs, tiny_tokenizer

pytestmark = pytest.mark.slow


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.skipif(shutil.which("accelerate") is None and not Path(sys.executable).with_name("accelerate").exists(),
                    reason="accelerate CLI not installed")
def test_two_processes_match_one(tmp_path) -> None:
    tok = copy.deepcopy(tiny_tokenizer())
    tiny_llama(len(tok)).save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    write_jsonl(tiny_pairs(8), tmp_path / "pairs.jsonl")
    job = tmp_path / "job.yaml"
    job.write_text(f"model: {{path: {tmp_path / 'model'}}}\ndata: {{train: {tmp_path / 'pairs.jsonl'}}}\n"
                   "loss: {name: simpo}\ntrain: {max_steps: 2, lr: 1.0e-2, progress: false}\n"
                   "output: {tensorboard: false, plots: false, save_model: false}\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = [sys.executable, "-m", "prefkit.cli.main", "train", "--config", str(job), "train.batch_size=4",
           f"output.dir={tmp_path / 'one'}"]
    two = [str(Path(sys.executable).with_name("accelerate")), "launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29533",
           "-m", "prefkit.cli.main", "train", "--config", str(job), "train.batch_size=2",
           f"output.dir={tmp_path / 'two'}"]
    for cmd in (one, two):
        subprocess.run(cmd, env=env, check=True, timeout=300, capture_output=True)
    a, b = metrics(tmp_path / "one"), metrics(tmp_path / "two")
    assert len(a) == len(b) == 2  # one writer in the two-process run
    assert abs(a[0]["loss"] - b[0]["loss"]) < 1e-6 and a[0]["loss"] > 0
    assert abs(a[0]["grad_norm"] - b[0]["grad_norm"]) < 1e-5
    assert abs(a[1]["loss"] - b[1]["loss"]) < 1e-5
