"""prefkit writes only into a folder that is absent, empty or its own (marked ``.prefkit-run.json``).

Each case checks that the user's files are byte-identical afterwards: a user folder (with and without
``output.overwrite``) for every job that writes a run folder, a symlinked ``checkpoints/``, and an old
prefkit run under ``overwrite`` (whose checkpoints must not survive into, or be counted by, the new run,
which then resumes after a kill).
"""

from __future__ import annotations

import copy
import importlib
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from prefkit.data.writers import write_jsonl
from prefkit.errors import ConfigError
from prefkit.testing import tiny_llama, tiny_pairs, tiny_tokenizer
from prefkit.train import checkpoint as ckpt
from prefkit.train import rundir
from prefkit.train.config import load_config, load_reward_config
from prefkit.train.metrics import read_metrics
from prefkit.train.trainer import Trainer

QUIET = ["train.progress=false", "output.tensorboard=false", "output.plots=false"]
FAST = [*QUIET, "output.save_model=false", "train.batch_size=4", "train.lr=1e-2"]


class Killed(Exception):
    """Stands in for SIGKILL: raised before a step runs, after everything of the previous steps is written."""


class KilledAfter(Trainer):
    """A Trainer whose process "dies" after ``kill_after`` optimizer steps."""

    kill_after = 0

    def _forward(self, split, indices):
        if split == "train" and self.step >= self.kill_after:
            raise Killed
        return super()._forward(split, indices)


def user_folder(root: Path) -> Path:
    """A folder of the user's own that happens to use run-folder names."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.yaml").write_text("my: own config\n")
    (root / "model").mkdir()
    (root / "model" / "x").write_bytes(b"\x00my weights")
    (root / "plots").mkdir()
    (root / "plots" / "y.png").write_bytes(b"\x89PNG mine")
    (root / "checkpoints" / ".tmp-mywork").mkdir(parents=True)
    (root / "checkpoints" / ".tmp-mywork" / "draft.txt").write_text("work in progress")
    (root / "checkpoints" / "step-00000001").mkdir()
    (root / "checkpoints" / "step-00000001" / "notes.txt").write_text("my step 1")
    (root / "checkpoints" / "step-00000001" / "trainer_state.json").write_text('{"mine": true}')
    return root


def snapshot(root: Path) -> dict[str, object]:
    """Every path under ``root`` (links not followed) -> its bytes, ``dir`` or ``link -> target``."""
    out: dict[str, object] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            if path.is_symlink():
                out[rel] = f"link -> {os.readlink(path)}"
            elif path.is_dir():
                out[rel] = "dir"
            else:
                out[rel] = path.read_bytes()
    return out


def tiny_trainer(cfg, cls=Trainer, n: int = 8) -> Trainer:
    tok = copy.deepcopy(tiny_tokenizer())
    return cls(cfg, tiny_llama(len(tok)), tok, tiny_pairs(n))


@pytest.fixture
def job(tmp_path) -> Path:
    """A saved tiny model, a data file and a YAML policy job, outside the folders under test."""
    src = tmp_path / "src"
    tok = copy.deepcopy(tiny_tokenizer())
    tiny_llama(len(tok)).save_pretrained(src / "model")
    tok.save_pretrained(src / "model")
    write_jsonl(tiny_pairs(12), src / "pairs.jsonl")
    (src / "job.yaml").write_text(
        f"model: {{path: {src / 'model'}}}\ndata: {{train: {src / 'pairs.jsonl'}}}\nloss: {{name: dpo}}\n"
        "train: {max_steps: 2, batch_size: 4, progress: false}\n"
        "output: {tensorboard: false, plots: false, save_model: false}\n")
    return src


# -- a folder with the user's files ---------------------------------------------------------------------


@pytest.mark.parametrize("overwrite", [False, True])
def test_user_folder_is_refused_by_every_job(job, tmp_path, overwrite, monkeypatch, capsys) -> None:
    from prefkit.cli.main import main
    from prefkit.toy import run_demo

    run_module = importlib.import_module("prefkit.train.run")  # the package attribute is the function

    mine = user_folder(tmp_path / "mine")
    before = snapshot(mine)
    flag = f"output.overwrite={str(overwrite).lower()}"

    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded before the run folder was checked")

    monkeypatch.setattr(run_module, "load_policy", no_model)
    monkeypatch.setattr(run_module.RewardModel, "from_backbone", no_model)
    # prefkit train (library and command line)
    with pytest.raises(ConfigError, match="not a prefkit run folder"):
        run_module.run(load_config(job / "job.yaml", [flag, f"output.dir={mine}"]))
    assert main(["train", "--config", str(job / "job.yaml"), flag, f"output.dir={mine}"]) == 1
    err = capsys.readouterr().err.strip()
    assert "not a prefkit run folder" in err and len(err.splitlines()) == 1, err
    # the Trainer used from Python
    cfg = load_config(overrides=[*FAST, "train.max_steps=1", flag, f"output.dir={mine}"])
    with pytest.raises(ConfigError, match="not a prefkit run folder"):
        tiny_trainer(cfg).train()
    with pytest.raises(ConfigError, match="not a prefkit run folder"):
        tiny_trainer(cfg).train(resume=True)
    # reward-model jobs: the library entry and prefkit rm train
    rm_cfg = load_reward_config(None, [f"model.path={job / 'model'}", f"data.train={job / 'pairs.jsonl'}",
                                       *QUIET, flag, f"output.dir={mine}"])
    with pytest.raises(ConfigError, match="not a prefkit run folder"):
        run_module.train_reward_model(rm_cfg)
    (job / "rm.yaml").write_text(f"model: {{path: {job / 'model'}}}\ndata: {{train: {job / 'pairs.jsonl'}}}\n"
                                 f"reward: {{head: scalar}}\noutput: {{dir: {mine}}}\n")
    assert main(["rm", "train", "--config", str(job / "rm.yaml"), flag]) == 1
    assert "not a prefkit run folder" in capsys.readouterr().err
    # the toy demo
    demo_cfg = load_config(overrides=["model.path=toy", "data.train=toy", flag, f"output.dir={mine}"])
    with pytest.raises(ConfigError, match="not a prefkit run folder"):
        run_demo(config=demo_cfg, show=False)
    assert snapshot(mine) == before
    assert not (mine / rundir.MARKER).exists()


def test_file_as_output_dir_is_one_line(tmp_path) -> None:
    target = tmp_path / "afile"
    target.write_text("mine")
    with pytest.raises(ConfigError, match="not a folder"):
        tiny_trainer(load_config(overrides=[*FAST, "train.max_steps=1", f"output.dir={target}"])).train()
    assert target.read_text() == "mine"


# -- symlinks --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("overwrite", [False, True])
def test_symlinked_checkpoints_in_a_new_folder_is_refused(tmp_path, overwrite) -> None:
    elsewhere = user_folder(tmp_path / "elsewhere")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "checkpoints").symlink_to(elsewhere / "checkpoints", target_is_directory=True)
    before = snapshot(elsewhere)
    cfg = load_config(overrides=[*FAST, "train.max_steps=2", "train.save_every=1", "train.keep_last=1",
                                 f"output.overwrite={str(overwrite).lower()}", f"output.dir={run_dir}"])
    with pytest.raises(ConfigError, match="not a prefkit run folder"):
        tiny_trainer(cfg).train()
    assert snapshot(elsewhere) == before and (run_dir / "checkpoints").is_symlink()


def test_symlinks_inside_a_prefkit_run_are_never_followed(tmp_path) -> None:
    """A run folder whose checkpoints/ and model/ were replaced by links: resuming or a new run is refused;
    under overwrite only the links are removed, never what they point to."""
    elsewhere = user_folder(tmp_path / "elsewhere")
    run_dir = tmp_path / "run"
    base = [*FAST, "train.max_steps=2", "train.save_every=1", "train.keep_last=1", f"output.dir={run_dir}"]
    tiny_trainer(load_config(overrides=base)).train()
    shutil.rmtree(run_dir / "checkpoints")
    for name in ("checkpoints", "model"):
        (run_dir / name).symlink_to(elsewhere / name, target_is_directory=True)
    before = snapshot(elsewhere)
    with pytest.raises(ConfigError, match="is a link"):
        tiny_trainer(load_config(overrides=base)).train(resume=True)
    with pytest.raises(ConfigError, match="is a link"):
        tiny_trainer(load_config(overrides=base)).train()
    assert snapshot(elsewhere) == before
    tiny_trainer(load_config(overrides=[*base, "output.overwrite=true", "output.save_model=true"])).train()
    assert snapshot(elsewhere) == before
    assert not (run_dir / "checkpoints").is_symlink() and not (run_dir / "model").is_symlink()
    assert [p.name for p in ckpt.list_checkpoints(run_dir)] == ["step-00000002"]
    assert (run_dir / "model" / "model.safetensors").is_file()


def test_checkpoints_dir_link_refused_at_save(tmp_path) -> None:
    """Defence in depth: the checkpoint writer itself refuses a linked checkpoints/."""
    from prefkit.errors import PrefkitError

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoints").symlink_to(elsewhere, target_is_directory=True)
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(PrefkitError, match="is a link"):
        ckpt.save_checkpoint(tmp_path / "run", 1, model=model, optimizer=opt,
                             scheduler=torch.optim.lr_scheduler.StepLR(opt, 1), state={}, keep_last=1)
    assert list(elsewhere.iterdir()) == []


# -- user files inside a prefkit run's checkpoints/ ----------------------------------------------------------


def test_cleanup_deletes_only_prefkits_own_checkpoints(tmp_path) -> None:
    """keep_last and the stale-temporary cleanup skip folders prefkit did not write, even inside its own
    checkpoints/ (a user's .tmp-mywork/ and step-00000001/ with a trainer_state.json of its own)."""
    cfg = load_config(overrides=[*FAST, "train.max_steps=5", "train.save_every=1", "train.keep_last=1",
                                 f"output.dir={tmp_path}"])
    first = tiny_trainer(cfg, KilledAfter)
    first.kill_after = 2
    with pytest.raises(Killed):
        first.train()
    root = ckpt.checkpoint_dir(tmp_path)
    (root / "step-00000001").mkdir()
    (root / "step-00000001" / "notes.txt").write_text("mine")
    (root / "step-00000001" / "trainer_state.json").write_text('{"step": 1}')
    (root / ".tmp-mywork").mkdir()
    (root / ".tmp-mywork" / "draft.txt").write_text("mine")
    (root / ".tmp-step-00000007").mkdir()  # a user's folder that merely looks like a temporary one
    mine = {p: snapshot(root / p) for p in ("step-00000001", ".tmp-mywork", ".tmp-step-00000007")}
    tiny_trainer(cfg).train(resume=True)
    assert {p: snapshot(root / p) for p in mine} == mine
    assert sorted(p.name for p in root.iterdir()) == [".tmp-mywork", ".tmp-step-00000007", "step-00000001",
                                                      "step-00000005"]


# -- an old prefkit run under overwrite -------------------------------------------------------------------------


def _fake_old_steps(run_dir: Path, renames: dict[int, int]) -> None:
    """Rename an old run's checkpoints to other step numbers (as if it had run 40 steps)."""
    root = ckpt.checkpoint_dir(run_dir)
    for old, new in renames.items():
        path = root / f"step-{old:08d}"
        for name in (ckpt.STAMP, "trainer_state.json"):
            data = json.loads((path / name).read_text())
            (path / name).write_text(json.dumps({**data, "step": new}))
        path.rename(root / f"step-{new:08d}")


def test_overwrite_old_run_starts_a_clean_series_and_resumes(tmp_path) -> None:
    run_dir = tmp_path / "run"
    old = [*FAST, "train.max_steps=4", "train.save_every=2", "train.keep_last=2", "train.lr=3e-3",
           "output.save_model=true", f"output.dir={run_dir}"]
    tiny_trainer(load_config(overrides=old)).train()
    _fake_old_steps(run_dir, {2: 39, 4: 40})
    (run_dir / "notes.txt").write_text("my notes on the old run")  # not prefkit's: survives overwrite
    new = [*FAST, "train.max_steps=6", "train.save_every=2", "train.keep_last=2", "output.overwrite=true",
           f"output.dir={run_dir}"]
    killed = tiny_trainer(load_config(overrides=new), KilledAfter)
    killed.kill_after = 5
    with pytest.raises(Killed):
        killed.train()
    assert [p.name for p in ckpt.list_checkpoints(run_dir)] == ["step-00000002", "step-00000004"]
    assert not (run_dir / "model").exists()  # the old run's final model went with it
    resumed = tiny_trainer(load_config(overrides=new))
    resumed.train(resume=True)
    assert [p.name for p in ckpt.list_checkpoints(run_dir)] == ["step-00000004", "step-00000006"]
    assert (run_dir / "notes.txt").read_text() == "my notes on the old run"
    # the same as an uninterrupted new run
    full = tiny_trainer(load_config(overrides=[*new[:-1], f"output.dir={tmp_path / 'full'}"]))
    full.train()
    for name, p in full.model.named_parameters():
        assert torch.equal(p, dict(resumed.model.named_parameters())[name]), name
    def drop(rows):
        return [{k: v for k, v in r.items() if k != "tokens/s"} for r in rows]
    assert drop(read_metrics(run_dir)) == drop(read_metrics(tmp_path / "full"))


def test_new_run_into_a_finished_run_needs_overwrite(tmp_path) -> None:
    cfg = [*FAST, "train.max_steps=1", f"output.dir={tmp_path}"]
    tiny_trainer(load_config(overrides=cfg)).train()
    with pytest.raises(ConfigError, match="already holds a run"):
        tiny_trainer(load_config(overrides=cfg)).train()


def test_marker_lists_what_prefkit_writes(tmp_path) -> None:
    tiny_trainer(load_config(overrides=[*FAST, "train.max_steps=1", f"output.dir={tmp_path}"])).train()
    marker = rundir.read_marker(tmp_path)
    assert marker is not None and marker["kind"] == "train"
    assert {"config.yaml", "metrics.jsonl", "checkpoints", "model", "plots", "tensorboard"} <= set(marker["entries"])
    # a foreign entry under a prefkit marker (not listed) is not written over
    rundir.claim_run_dir(tmp_path / "demo", kind="demo", entries=("sft", "results.json"))
    (tmp_path / "demo" / "config.yaml").write_text("mine")
    with pytest.raises(ConfigError, match="was not written by prefkit"):
        rundir.check_run_dir(tmp_path / "demo", overwrite=True)
    # a tampered marker never reaches outside the folder
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / rundir.MARKER).write_text(json.dumps({"prefkit": "run folder", "entries": ["../demo"]}))
    with pytest.raises(ConfigError, match="unreadable"):
        rundir.claim_run_dir(tmp_path / "t", overwrite=True)
    assert (tmp_path / "demo" / "config.yaml").read_text() == "mine"


# -- the demo ------------------------------------------------------------------------------------------------------


def test_demo_reruns_in_its_own_folder(tmp_path) -> None:
    """A second demo run into its (marked) folder works and replaces only what the demo wrote."""
    from prefkit.toy import ToySettings, run_demo
    from prefkit.toy.demo import demo_config_path

    settings = ToySettings(hidden_size=16, num_layers=1, sft_steps=2, sft_batch_size=8, train_pairs=16,
                           eval_pairs=8, eval_prompts=4)
    cfg = load_config(demo_config_path(), ["train.max_steps=2", "train.eval_every=0", "train.batch_size=8",
                                           "train.progress=false", "output.plots=false", "output.save_model=false"])
    out = tmp_path / "demo"
    run_demo(out, config=cfg, settings=settings, show=False)
    (out / "notes.txt").write_text("mine")
    run_demo(out, config=cfg, settings=settings, show=False)
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / "results.json").is_file() and (out / "preference" / "metrics.jsonl").is_file()
    rows = read_metrics(out / "preference")
    assert [r["step"] for r in rows if "loss" in r] == [2] and [r["step"] for r in rows if "eval/loss" in r] == [2]
    assert rundir.read_marker(out)["kind"] == "demo" and rundir.read_marker(out / "sft")["kind"] == "train"
