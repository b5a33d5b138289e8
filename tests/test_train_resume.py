"""Checkpoints and resume: a run killed with SIGKILL and resumed ends with the same weights as an
uninterrupted one (CPU, deterministic); half-written checkpoints are never picked up."""

from __future__ import annotations

import copy
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from prefkit.data.writers import write_jsonl
from prefkit.testing import tiny_llama, tiny_pairs, tiny_tokenizer
from prefkit.train import checkpoint as ckpt
from prefkit.train.config import load_config
from prefkit.train.run import run
from prefkit.train.trainer import Trainer

QUIET = ["train.progress=false", "output.tensorboard=false", "output.plots=false"]


@pytest.fixture
def job(tmp_path) -> Path:
    """A model directory, a data file and a YAML job (LoRA with dropout, so RNG state matters)."""
    tok = copy.deepcopy(tiny_tokenizer())
    tiny_llama(len(tok)).save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    write_jsonl(tiny_pairs(12), tmp_path / "pairs.jsonl")
    (tmp_path / "job.yaml").write_text(
        f"model: {{path: {tmp_path / 'model'}}}\n"
        f"data: {{train: {tmp_path / 'pairs.jsonl'}}}\n"
        "lora: {r: 4, alpha: 8, dropout: 0.1}\n"
        "loss: {name: dpo, beta: 0.5}\n"
        "train: {max_steps: 8, batch_size: 4, lr: 1.0e-2, save_every: 1, keep_last: 2, warmup_steps: 2}\n")
    return tmp_path


def _adapter(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "model" / "adapter_model.safetensors"))


def test_sigkill_then_resume_matches_uninterrupted(job: Path) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the subprocess runs with OMP_NUM_THREADS=1 too
    try:
        run(load_config(job / "job.yaml", [*QUIET, f"output.dir={job / 'full'}"]))
        killed = job / "killed"
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        proc = subprocess.Popen([sys.executable, "-m", "prefkit.cli.main", "train", "--config", str(job / "job.yaml"),
                                 *QUIET, f"output.dir={killed}"], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        kill_at = random.Random().randint(2, 6)
        deadline = time.time() + 400  # generous: CI machines can be busy
        while time.time() < deadline and proc.poll() is None:
            lines = (killed / "metrics.jsonl").read_text().splitlines() if (killed / "metrics.jsonl").exists() else []
            if lines and json.loads(lines[-1])["step"] >= kill_at:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the run finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert not (killed / "model").exists()
        latest = ckpt.latest_checkpoint(killed)
        assert latest is not None and int(latest.name.split("-")[1]) < 8
        run(load_config(job / "job.yaml", [*QUIET, f"output.dir={killed}"]), resume=True)
    finally:
        torch.set_num_threads(threads)
    full, resumed = _adapter(job / "full"), _adapter(killed)
    assert full.keys() == resumed.keys()
    for name in full:
        assert torch.equal(full[name], resumed[name]), name
    steps = [json.loads(x)["step"] for x in (killed / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 9))  # lines past the checkpoint were rewritten, not duplicated
    assert len(ckpt.list_checkpoints(killed)) == 2  # keep_last


def test_half_written_checkpoint_is_ignored(tmp_path) -> None:
    tok = copy.deepcopy(tiny_tokenizer())
    cfg = load_config(overrides=[*QUIET, "output.save_model=false", "train.max_steps=4", "train.batch_size=4",
                                 "train.lr=1e-2", "train.save_every=2", f"output.dir={tmp_path}"])
    full = Trainer(cfg, tiny_llama(len(tok)), tok, tiny_pairs(8))
    full.train()
    final = {n: p.detach().clone() for n, p in full.model.named_parameters()}
    root = ckpt.checkpoint_dir(tmp_path)
    # a killed writer's leftovers: a temporary directory (stamped first, as prefkit writes it) and a step
    # directory without its state file
    for bogus in (root / ".tmp-step-00000009", root / "step-00000007"):
        bogus.mkdir()
        (bogus / "model.safetensors").write_bytes(b"garbage")
    (root / ".tmp-step-00000009" / ckpt.STAMP).write_text('{"step": 9}')
    (root / "step-00000004").rename(root / "moved-away")  # resume from step 2
    assert ckpt.latest_checkpoint(tmp_path).name == "step-00000002"
    resumed = Trainer(cfg, tiny_llama(len(tok)), tok, tiny_pairs(8))
    resumed.train(resume=True)
    for name, p in resumed.model.named_parameters():
        assert torch.equal(p, final[name]), name
    assert not (root / ".tmp-step-00000009").exists()  # cleaned by the next save


def test_resume_without_checkpoint_is_an_error(tmp_path) -> None:
    from prefkit.errors import PrefkitError

    tok = copy.deepcopy(tiny_tokenizer())
    cfg = load_config(overrides=[*QUIET, "train.max_steps=1", "train.batch_size=4", f"output.dir={tmp_path}"])
    with pytest.raises(PrefkitError, match="no checkpoint"):
        Trainer(cfg, tiny_llama(len(tok)), tok, tiny_pairs(8)).train(resume=True)


def test_resume_with_changed_settings_is_an_error(tmp_path) -> None:
    from prefkit.errors import ConfigError

    tok = copy.deepcopy(tiny_tokenizer())
    base = [*QUIET, "output.save_model=false", "train.max_steps=2", "train.batch_size=4", "train.save_every=1",
            f"output.dir={tmp_path}"]
    Trainer(load_config(overrides=base), tiny_llama(len(tok)), tok, tiny_pairs(8)).train()
    changed = Trainer(load_config(overrides=[*base, "train.lr=1e-3", "train.log_every=2"]), tiny_llama(len(tok)),
                      tok, tiny_pairs(8))
    with pytest.raises(ConfigError, match=r"differs from the checkpoint's in train.lr \(5e-06 -> 0.001\)"):
        changed.train(resume=True)


class _Killed(Exception):
    """Stands in for SIGKILL between two optimizer steps."""


class _KilledAfter(Trainer):
    kill_after = 0

    def _forward(self, split, indices):
        if split == "train" and self.step >= self.kill_after:
            raise _Killed
        return super()._forward(split, indices)


def _lines(run_dir: Path) -> list[dict]:
    """metrics.jsonl without the timing key (tokens/s differs between any two runs)."""
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "tokens/s"} for r in rows]


def _tiny(cfg, cls=Trainer):
    tok = copy.deepcopy(tiny_tokenizer())
    return cls(cfg, tiny_llama(len(tok)), tok, tiny_pairs(8), tiny_pairs(4, seed=1))


RESUME = [*QUIET, "output.save_model=false", "train.max_steps=10", "train.batch_size=4", "train.lr=1e-2",
          "train.log_every=3", "train.save_every=2", "train.keep_last=2", "train.eval_every=4"]


def test_metrics_after_resume_equal_uninterrupted(tmp_path, capsys) -> None:
    """Killed after step 9 (checkpoint 8; lines for 3, 6, 9 and evals at 4, 8 written; a torn line left):
    the resumed run's metrics.jsonl equals the uninterrupted one's, line for line, value for value. The
    line at step 9 averages steps 7-9 (the sums of 7 and 8 come from the checkpoint)."""
    _tiny(load_config(overrides=[*RESUME, f"output.dir={tmp_path / 'full'}"])).train()
    killed_dir = tmp_path / "killed"
    cfg = load_config(overrides=[*RESUME, f"output.dir={killed_dir}"])
    killed = _tiny(cfg, _KilledAfter)
    killed.kill_after = 9
    with pytest.raises(_Killed):
        killed.train()
    assert ckpt.latest_checkpoint(killed_dir).name == "step-00000008"
    assert [r["step"] for r in _lines(killed_dir)] == [3, 4, 6, 8, 9]
    with (killed_dir / "metrics.jsonl").open("a") as fh:
        fh.write('{"step": 10, "loss": 0.69')  # the kill came mid-write
    capsys.readouterr()
    _tiny(cfg).train(resume=True)
    assert "dropped a half-written last line" in capsys.readouterr().err
    full, resumed = _lines(tmp_path / "full"), _lines(killed_dir)
    assert [r["step"] for r in resumed] == [3, 4, 6, 8, 9, 10, 10]  # 10: the last train line and the final eval
    assert resumed == full


def test_resume_from_the_final_checkpoint_adds_no_line(tmp_path) -> None:
    cfg = load_config(overrides=[*RESUME, "train.max_steps=4", f"output.dir={tmp_path}"])
    summary = _tiny(cfg).train()
    before = (tmp_path / "metrics.jsonl").read_text()
    assert ckpt.latest_checkpoint(tmp_path).name == "step-00000004"
    again = _tiny(cfg).train(resume=True)
    after = (tmp_path / "metrics.jsonl").read_text()
    assert [r["step"] for r in _lines(tmp_path)] == [3, 4, 4]
    assert _lines(tmp_path) == [{k: v for k, v in json.loads(x).items() if k != "tokens/s"}
                                for x in before.splitlines()]
    assert after.count("eval/loss") == 1
    assert {k: v for k, v in again.items() if k != "tokens/s"} == {k: v for k, v in summary.items() if k != "tokens/s"}
