"""``prefkit eval ranking`` and ``prefkit eval ches`` on the tiny model folder, and ``prefkit train`` with an
``eval:`` section."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from prefkit.cli.main import main
from prefkit.data import load


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("eval-cli") / "tiny"
    assert main(["testing", "tiny-model", str(out)]) == 0
    return out


def test_ranking_table_and_json(tiny: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    data = str(tiny / "pairs.jsonl")
    assert main(["eval", "ranking", "--model", str(tiny), "--data", data, "--reference", str(tiny), "--p", "0.9"]) == 0
    out = capsys.readouterr().out
    for key in ("ranking/accuracy", "ranking/idealized_accuracy", "ranking/alignment_gap", "displacement/chosen"):
        assert key in out
    assert main(["eval", "ranking", "--model", str(tiny), "--data", data, "--limit", "8", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows["pairs"] == 8 and 0 <= rows["ranking/accuracy"] <= 1 and "ranking/idealized_accuracy" not in rows


def test_ches_table_and_filter(tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    kept = tmp_path / "kept.jsonl"
    assert main(["eval", "ches", "--model", str(tiny), "--data", str(tiny / "pairs.jsonl"), "--top", "0.25",
                 "--write", str(kept)]) == 0
    out = capsys.readouterr().out
    assert "ches/mean" in out and f"wrote 24 pairs to {kept}" in out
    records = load(kept)
    assert len(records) == 24 and all("ches" in r.metadata for r in records)


@pytest.mark.parametrize(("args", "message"), [
    (["ranking", "--model", "{tmp}/nope", "--data", "{data}"], "--model"),
    (["ranking", "--model", "{tiny}", "--data", "{data}", "--p", "0"], "--p must be in (0, 1]"),
    (["ches", "--model", "{tiny}", "--data", "{data}", "--write", "{tmp}/kept.txt"], "--write"),
])
def test_mistakes_are_one_line_errors(tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                      args: list[str], message: str) -> None:
    capsys.readouterr()
    fill = {"tmp": tmp_path, "tiny": tiny, "data": tiny / "pairs.jsonl"}
    assert main(["eval", *(a.format(**fill) for a in args)]) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_train_with_eval_section(tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = tmp_path / "run"
    assert main(["train", "--config", str(tiny / "train.yaml"), "train.max_steps=4", "train.eval_every=0",
                 "eval.every=2", "eval.ranking=true", "eval.displacement=true", "train.progress=false",
                 "output.tensorboard=false", f"output.dir={run_dir}"]) == 0
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "eval/ranking/accuracy" in r] == [0, 2, 4]
    assert all("eval/displacement/margin" in r for r in rows if "eval/ranking/accuracy" in r)
    assert (run_dir / "plots" / "ranking.png").is_file() and (run_dir / "plots" / "displacement.png").is_file()
    capsys.readouterr()
    assert main(["train", "--config", str(tiny / "train.yaml"), "eval.ches=true", "data.eval_fraction=0",
                 "eval.ranking=true", f"output.dir={tmp_path / 'other'}"]) == 1
    err = capsys.readouterr().err
    assert "eval.ranking scores the evaluation pairs" in err and err.count("\n") == 1
