"""The online loop on 2 processes (``accelerate launch``, DDP over gloo on CPU) against 1 process.

Shown: the same ``rounds/`` files byte for byte (sampling splits the prompts between the processes with
one process's random draws; the judge answers on the main process), final weights close at the
same global batch (1 process x batch 2B = 2 processes x batch B; only float summation order differs:
1e-4 for the token world's ``lm_head``, 1e-5 for the tiny Llama),
the run folder written once (one line per round in ``metrics.jsonl``), a resumed 2-process run equal to
an uninterrupted one, and ``distributed.strategy: fsdp`` refused with one line. These are opt-in slow tests (``-m slow``); the
fast ones check the split of the prompts and the refusal without launching.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from launch import launch, needs_launcher

WORKER = '''
import os, sys
import torch
from prefkit.online import FunctionJudge, OnlineConfig, SamplingSettings, run_online
from prefkit.testing import token_world
from prefkit.train.config import load_config

out, batch_size = sys.argv[1], int(sys.argv[2])
world = token_world(10)
reward = {a: i / 9 for i, a in enumerate(world.actions)}
judge = FunctionJudge(lambda prompt, completion: reward[completion], name="index")
cfg = load_config(overrides=["loss.name=dpo", "loss.beta=0.1", "train.lr=1e-2", f"train.batch_size={batch_size}",
                             "train.scheduler=constant", "train.max_grad_norm=null", "encode.add_eos=false",
                             "train.progress=false", f"output.dir={out}/unused"], check_files=False)
online = OnlineConfig(rounds=3, prompts_per_round=16, samples_per_prompt=4, pairs="all_pairs",
                      sampling=SamplingSettings(max_new_tokens=1), steps_per_round=2, seed=1)
history = run_online(world.model, world.tokenizer, [world.prompt], judge, cfg, online, out + "/run")
assert len(history) == 3
torch.save(world.model.lm_head.weight.detach().cpu(), f"{out}/weights-{os.environ.get('RANK', '0')}.pt")
'''


def _rounds(run: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((run / "rounds").iterdir())}


def _metrics(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


EXACT = ("round", "records", "ties_skipped", "objective/scores", "objective/win_rate_vs_reference", "completions/",
         "val/")
"""Metrics of the samples and their verdicts only: equal, as the rounds files are."""


def _same_metrics(a: list[dict], b: list[dict]) -> None:
    """Sample metrics exactly equal; those that read the weights (the trainer's, entropy, KL) to 1e-3
    relative or 1e-5 absolute (float summation order: a batch of 4 vs 8 rows in the same matmul gives
    log-probs 1e-6 apart); timings left out."""
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert set(x) == set(y)
        for key in x:
            if key in ("seconds", "train/tokens/s"):
                continue
            if key.startswith(EXACT):
                assert x[key] == y[key], key
            else:
                assert x[key] == pytest.approx(y[key], rel=1e-3, abs=1e-5), key


@pytest.mark.slow
@needs_launcher
def test_two_ddp_processes_run_the_online_loop_like_one(tmp_path: Path) -> None:
    """Token world (10 actions, only ``lm_head`` trains), online DPO, 3 rounds x 16 prompts x G = 4,
    ``all_pairs``, 2 steps per round: 1 process x batch 8 vs 2 processes x batch 4."""
    import torch

    from prefkit.testing import token_world

    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    launch([str(worker), str(tmp_path / "one"), "8"], 1)
    launch([str(worker), str(tmp_path / "two"), "4"], 2)
    one, two = tmp_path / "one" / "run", tmp_path / "two" / "run"
    assert _rounds(one) == _rounds(two) and len(_rounds(one)) == 3
    _same_metrics(_metrics(one), _metrics(two))  # one line per round: one writer
    w1 = torch.load(tmp_path / "one" / "weights-0.pt")
    w2a, w2b = (torch.load(tmp_path / "two" / f"weights-{r}.pt") for r in (0, 1))
    assert torch.equal(w2a, w2b)  # DDP keeps the replicas identical
    # 1e-4 (weights ~0.2): Adam divides tiny gradients (actions rarely sampled) by their own small RMS, so
    # float-summation differences of 1e-7 in the gradient become update differences of ~5e-5 in 6 steps
    assert (w1 - w2a).abs().max() < 1e-4
    assert (w1 - token_world(10).model.lm_head.weight.detach()).abs().max() > 1e-3  # it did train
    assert sorted(p.name for p in (two / "checkpoints").iterdir()) == ["round-0002", "round-0003"]


PROMPTS = ["Question one:", "Tell me a word:", "Say something:", "A much longer prompt, with several words:"]
JUDGE = "def score(prompt, completion):\n    return float(len(completion))\n"


@pytest.fixture
def job(tmp_path: Path) -> Path:
    """The tiny Llama (multi-token completions, prompts of different lengths), a length judge, online DPO."""
    from prefkit.cli.testing import write_tiny_model

    write_tiny_model(tmp_path / "tiny", example=False)
    (tmp_path / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    (tmp_path / "ddp_online_judge.py").write_text(JUDGE)
    config = {
        "model": {"path": str(tmp_path / "tiny")},
        "loss": {"name": "dpo", "beta": 0.1},
        "train": {"lr": 1.0e-3, "batch_size": 4, "progress": False, "max_grad_norm": None},
        "encode": {"max_length": 64},
        "output": {"dir": str(tmp_path / "unused")},
        "online": {"rounds": 2, "prompts_per_round": 3, "samples_per_prompt": 4, "steps_per_round": 1,
                   "pairs": "all_pairs", "sampling": {"max_new_tokens": 6}},
        "prompts": {"path": str(tmp_path / "prompts.txt")},
        "judge": {"function": "ddp_online_judge:score"},
    }
    (tmp_path / "online.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return tmp_path / "online.yaml"


def _online(job: Path, out: Path, *args: str) -> list[str]:
    return ["-m", "prefkit.cli.main", "online", "--config", str(job), f"output.dir={out}", *args]


@pytest.mark.slow
@needs_launcher
def test_two_processes_resume_and_match_one_on_the_cli(job: Path, tmp_path: Path) -> None:
    """``prefkit online`` with free-text samples of up to 6 tokens (rows finish at different steps; 3
    prompts split 2 + 1): 1 process x batch 4, 2 rounds, vs 2 processes x batch 2, 1 round then
    ``--resume`` to 2 rounds. Same rounds files, same metrics, the same saved model up to 1e-5."""
    from safetensors.torch import load_file

    one, two = tmp_path / "one", tmp_path / "two"
    launch(_online(job, one), 1)
    launch(_online(job, two, "train.batch_size=2", "online.rounds=1"), 2)
    assert len(_metrics(two)) == 1 and len(_rounds(two)) == 1
    said = launch(_online(job, two, "train.batch_size=2", "--resume"), 2).stdout
    assert said.count("done: 2 rounds") == 1  # the summary comes from the main process only
    assert _rounds(one) == _rounds(two)
    _same_metrics(_metrics(one), _metrics(two))
    a, b = load_file(str(one / "model" / "model.safetensors")), load_file(str(two / "model" / "model.safetensors"))
    assert set(a) == set(b) and max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5


@pytest.mark.slow
@needs_launcher
def test_fsdp_online_is_one_line_error(job: Path, tmp_path: Path) -> None:
    proc = launch(_online(job, tmp_path / "run", "distributed.strategy=fsdp"), 2, ok=False)
    assert proc.returncode != 0
    # one line per process, no traceback of prefkit's (the launcher prints its own on a failed child)
    assert proc.stderr.count("error: distributed.strategy=fsdp: the online loop runs on several processes "
                             "with ddp only") == 2
    assert not re.search(r'File ".*prefkit/', proc.stderr), proc.stderr[-3000:]
    assert not (tmp_path / "run").exists()


def test_shares_cover_the_prompts_once_in_order() -> None:
    from prefkit.online.sampler import Processes

    for n in range(0, 9):
        for world in (1, 2, 3, 5):
            shares = [Processes(rank, world).share(n) for rank in range(world)]
            assert [i for lo, hi in shares for i in range(lo, hi)] == list(range(n))
            assert max(hi - lo for lo, hi in shares) - min(hi - lo for lo, hi in shares) <= 1
    one = Processes()
    assert one.main and one.gather("x") == ["x"] and one.broadcast(3) == 3 and one.counts(4, None) == [4]


def test_fsdp_with_several_processes_is_refused_before_anything_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    from prefkit.errors import ConfigError
    from prefkit.online.loop import check_strategy
    from prefkit.train.config import load_config

    fsdp = load_config(overrides=["distributed.strategy=fsdp", "output.dir=unused"], check_files=False)
    check_strategy(fsdp)  # one process ignores the distributed section
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="online loop runs on several processes with ddp only"):
        check_strategy(fsdp)
    check_strategy(load_config(overrides=["output.dir=unused"], check_files=False))  # ddp
