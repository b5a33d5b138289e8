"""Exact resume of the online loop (issue 12, item 4): a run killed at any point and resumed ends with the
same weights, ``rounds/*.jsonl`` and metrics as an uninterrupted run.

The run: a one-token world (``prefkit.testing.token_world``), 4 rounds of online DPO with 2 optimizer steps
each, the AdamW state carried between rounds and the reference refreshed after every 2 rounds, so a resume
has to restore the policy, the optimizer and the reference. One test kills a child process for real
(``SIGKILL`` inside round 2's training); the others stop the run in-process with an exception raised at
a chosen point (mid-judging, mid-checkpoint, between rounds), which leaves the folder as a kill would.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from prefkit.errors import ConfigError
from prefkit.online import FunctionJudge, OnlineConfig, SamplingSettings, run_online
from prefkit.online import loop as online_loop
from prefkit.testing import token_world
from prefkit.train.config import load_config

TIMING = ("seconds", "train/tokens/s")
REWARD = [0.0, 3.0, 1.0, 2.0, 0.5, 1.5]


class Stop(BaseException):
    """Stands for a kill: nothing in the loop catches it."""


def _setup(out: Path, rounds: int = 4, lr: float = 0.01):
    world = token_world(6, [0.3, 0.05, 0.25, 0.1, 0.2, 0.1])
    calls = {"judge": 0}

    def reward(prompt, completion):
        calls["judge"] += 1
        hook = calls.get("on_judge")
        if hook is not None:
            hook(calls["judge"])
        return REWARD[world.actions.index(completion)]

    judge = FunctionJudge(reward, name="hidden")
    cfg = load_config(overrides=["loss.name=dpo", "loss.beta=0.1", f"train.lr={lr}", "train.batch_size=4",
                                 "train.scheduler=constant", "encode.add_eos=false", "train.progress=false",
                                 f"output.dir={out / 'unused'}"], check_files=False)
    online = OnlineConfig(rounds=rounds, prompts_per_round=4, samples_per_prompt=4, steps_per_round=2,
                          sampling=SamplingSettings(max_new_tokens=1), reference="refresh_every_k", refresh_k=2,
                          pairs="all_pairs",
                          seed=5)
    return world, judge, cfg, online, calls


def _run(out: Path, *, resume: bool = False, rounds: int = 4, **hooks):
    """One (possibly resumed) run in this process, single-threaded like the child; returns weights, history."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        world, judge, cfg, online, calls = _setup(out.parent, rounds)
        calls.update(hooks)
        history = run_online(world.model, world.tokenizer, [world.prompt], judge, cfg, online, out, resume=resume)
    finally:
        torch.set_num_threads(threads)
    return {k: v.clone() for k, v in world.model.state_dict().items()}, history


def _child(out: str, kill_after_steps: int) -> None:
    """The killed run (``python -c``): SIGKILL itself after ``kill_after_steps`` optimizer steps."""
    torch.set_num_threads(1)
    steps = [0]

    def after_step(optimizer, args, kwargs):
        steps[0] += 1
        if steps[0] == kill_after_steps:
            os.kill(os.getpid(), signal.SIGKILL)

    register_optimizer_step_post_hook(after_step)
    world, judge, cfg, online, _ = _setup(Path(out).parent)
    run_online(world.model, world.tokenizer, [world.prompt], judge, cfg, online, out)


def _strip(rows):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def _files(out: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted((out / "rounds").glob("*.jsonl"))}


def _metrics(out: Path):
    return _strip([json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()])


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    out = tmp_path_factory.mktemp("straight") / "run"
    weights, history = _run(out)
    return out, weights, history


def _same_as_straight(straight, out: Path, weights, history) -> None:
    ref_out, ref_weights, ref_history = straight
    assert weights.keys() == ref_weights.keys()
    assert all(torch.equal(weights[k], ref_weights[k]) for k in weights)  # bitwise
    assert _files(out) == _files(ref_out) and len(_files(out)) == 4
    assert _metrics(out) == _metrics(ref_out) == _strip(ref_history) == _strip(history)


def test_sigkill_mid_training_then_resume_gives_the_same_run(straight, tmp_path):
    out = tmp_path / "run"
    here = Path(__file__).parent
    code = f"import sys; sys.path.insert(0, {str(here)!r}); import test_online_resume as t; t._child({str(out)!r}, 5)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    # killed in round 2 (steps 5-6) after the checkpoint of 2 finished rounds
    assert (out / "checkpoints" / "round-0002" / "state.json").is_file()
    assert not (out / "checkpoints" / "round-0003").exists()
    weights, history = _run(out, resume=True)
    _same_as_straight(straight, out, weights, history)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["round-0003", "round-0004"]


def _stop_at(n):
    def hook(count):
        if count == n:
            raise Stop
    return hook


@pytest.mark.parametrize("where", ["judging round 3", "inside the second checkpoint", "between rounds"])
def test_stopped_anywhere_then_resumed_gives_the_same_run(straight, tmp_path, monkeypatch, where):
    out = tmp_path / "run"
    saves = [0]
    original_save = torch.save

    def save(*args, **kwargs):  # torch.save writes optimizer.pt inside checkpoints/.tmp-round-NNNN
        saves[0] += 1
        if saves[0] == 2 and where == "inside the second checkpoint":
            raise Stop
        return original_save(*args, **kwargs)

    original_checkpoint = online_loop.save_checkpoint

    def checkpoint(*args, **kwargs):
        path = original_checkpoint(*args, **kwargs)
        if where == "between rounds" and path.name == "round-0001":
            raise Stop
        return path

    monkeypatch.setattr(torch, "save", save)
    monkeypatch.setattr(online_loop, "save_checkpoint", checkpoint)
    # 20 judge calls a round (16 policy samples, 4 reference samples for the win rate)
    hooks = {"on_judge": _stop_at(2 * 20 + 7)} if where == "judging round 3" else {}
    with pytest.raises(Stop):
        _run(out, **hooks)
    monkeypatch.undo()
    if where == "inside the second checkpoint":
        assert (out / "checkpoints" / ".tmp-round-0002").is_dir()
    weights, history = _run(out, resume=True)
    _same_as_straight(straight, out, weights, history)
    assert not list((out / "checkpoints").glob(".tmp-*"))


def test_a_finished_run_extends_and_a_changed_setting_is_refused(straight, tmp_path):
    out = tmp_path / "run"
    _run(out, rounds=2)
    weights, history = _run(out, resume=True)  # rounds=4: two more rounds
    _same_as_straight(straight, out, weights, history)
    with pytest.raises(ConfigError, match="not empty"):
        _run(out)
    with pytest.raises(ConfigError, match="already holds 4 finished rounds, more than online.rounds=3"):
        _run(out, rounds=3, resume=True)
    world, judge, cfg, online, _ = _setup(tmp_path, lr=0.02)
    with pytest.raises(ConfigError, match=r"^resume: run\.train\.lr differs .*\(0\.01 -> 0\.02\)"):
        run_online(world.model, world.tokenizer, [world.prompt], judge, cfg, online, out, resume=True)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not an online run folder"):
        _run(tmp_path / "other", resume=True)
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"
