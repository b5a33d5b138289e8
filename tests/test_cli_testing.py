"""``prefkit testing``: the tiny random model it writes loads and trains through ``prefkit train --config``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from prefkit.cli.main import main
from prefkit.data import Pair, Unpaired, load


def test_tiny_model_folder_trains_two_steps(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "tiny"
    assert main(["testing", "tiny-model", str(out)]) == 0
    said = capsys.readouterr().out
    assert f"prefkit train --config {out / 'train.yaml'}" in said
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "pairs.jsonl", "train.yaml"):
        assert (out / name).is_file(), name
    job = yaml.safe_load((out / "train.yaml").read_text())
    assert job["model"]["path"] == str(out.resolve()) and len(load(out / "pairs.jsonl")) == 32

    monkeypatch.chdir(tmp_path)  # the job's output.dir (runs/tiny) is relative to the working directory
    run_dir = tmp_path / "run"
    assert main(["train", "--config", str(out / "train.yaml"), "train.max_steps=2", "train.eval_every=0",
                 "train.progress=false", "output.plots=false", "output.tensorboard=false",
                 f"output.dir={run_dir}"]) == 0
    assert "done:" in capsys.readouterr().out
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows if "loss" in r and "step" in r]
    assert steps and max(steps) == 2
    assert all(r["loss"] == r["loss"] for r in rows if "loss" in r)  # finite, not NaN
    assert (run_dir / "model" / "model.safetensors").is_file()  # the trained model, loadable as model.path


def test_tiny_model_is_deterministic_and_refuses_a_used_folder(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["testing", "tiny-model", str(a), "--no-example", "--seed", "3"]) == 0
    assert main(["testing", "tiny-model", str(b), "--no-example", "--seed", "3"]) == 0
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    assert not (a / "train.yaml").exists()
    capsys.readouterr()
    assert main(["testing", "tiny-model", str(a)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not an empty folder" in err


@pytest.mark.parametrize(("kind", "cls"), [("pair", Pair), ("chat", Pair), ("unpaired", Unpaired)])
def test_tiny_data_writes_loadable_records(tmp_path: Path, kind: str, cls: type) -> None:
    path = tmp_path / f"{kind}.jsonl"
    assert main(["testing", "tiny-data", str(path), "--kind", kind, "-n", "6"]) == 0
    records = load(path)
    assert len(records) == 6 and all(isinstance(r, cls) for r in records)
