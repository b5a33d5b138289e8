"""``prefkit online --config FILE``: an online job from one YAML file, in-process, offline, on the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from prefkit.cli.main import main
from prefkit.cli.testing import write_tiny_model
from prefkit.data import Rating, load
from prefkit.online import FunctionJudge
from prefkit.online.jobs import JudgeConfig, PromptsConfig, build_judge, read_prompts

PROMPTS = ["Question one:", "Tell me a word:", "Say something:"]
JUDGE = "def score(prompt, completion):\n    return float(len(completion))\n"


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with the tiny model, a prompts file, a judge module and ``online.yaml`` (2 short rounds)."""
    root = tmp_path_factory.mktemp("online_job")
    write_tiny_model(root / "tiny", example=False)
    (root / "prompts.txt").write_text("\n".join([*PROMPTS, PROMPTS[0], ""]) + "\n")  # a duplicate, a blank line
    (root / "online_cli_judge.py").write_text(JUDGE)
    config = {
        "model": {"path": str(root / "tiny")},
        "loss": {"name": "dpo", "beta": 0.1},
        "train": {"lr": 1.0e-3, "batch_size": 4, "progress": False},
        "encode": {"max_length": 64},
        "output": {"dir": str(root / "unused")},
        "online": {"rounds": 2, "prompts_per_round": 2, "samples_per_prompt": 3, "steps_per_round": 1,
                   "sampling": {"max_new_tokens": 4}},
        "prompts": {"path": str(root / "prompts.txt")},
        "judge": {"function": "online_cli_judge:score"},
    }
    (root / "online.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return root / "online.yaml"


def _run(job: Path, out: Path, *args: str) -> int:
    return main(["online", "--config", str(job), f"output.dir={out}", *args])


def test_online_cli_runs_two_rounds(job: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert _run(job, out) == 0
    said = capsys.readouterr().out
    assert "last round 2/2: judge score" in said and f"done: 2 rounds; outputs in {out}" in said
    for r in range(2):  # every judged sample, as rating records scored by the judge module
        records = load(out / "rounds" / f"{r:04d}.jsonl")
        assert len(records) == 2 * 3 and all(isinstance(x, Rating) for x in records)
        assert all(x.prompt in PROMPTS and x.score == float(len(x.response)) for x in records)
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["round"] for m in metrics] == [0, 1] and all("objective/scores" in m for m in metrics)
    assert (out / "model" / "model.safetensors").is_file() and (out / "model" / "tokenizer.json").is_file()


def test_online_cli_resume_of_a_finished_run_trains_nothing_and_extends(job: Path, tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert _run(job, out) == 0
    rounds = {p.name: p.read_bytes() for p in (out / "rounds").iterdir()}
    metrics = (out / "metrics.jsonl").read_text()
    assert _run(job, out, "--resume") == 0  # nothing left to do: same files, same metrics
    assert {p.name: p.read_bytes() for p in (out / "rounds").iterdir()} == rounds
    assert (out / "metrics.jsonl").read_text() == metrics
    assert _run(job, out, "--resume", "--online.rounds", "3") == 0  # a finished run grows by one round
    assert sorted(p.name for p in (out / "rounds").iterdir()) == ["0000.jsonl", "0001.jsonl", "0002.jsonl"]
    assert (out / "metrics.jsonl").read_text().startswith(metrics)
    assert "last round 3/3" in capsys.readouterr().out
    assert _run(job, out, "--resume", "online.seed=4") == 1  # a setting that changes results: refused
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "online.seed" in err


def test_online_cli_refuses_a_used_folder_without_resume(job: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "used"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert _run(job, out) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not empty" in err and "--resume" in err
    assert (out / "notes.txt").read_text() == "mine" and len(list(out.iterdir())) == 1


@pytest.mark.parametrize(("override", "expected"), [
    ("online.roundz=3", "did you mean 'rounds'?"),
    ("online.sampling.max_new_tokenz=3", "max_new_tokens"),
    ("judg.function=x:y", "did you mean 'judge'?"),
    ("judge.functon=x:y", "did you mean 'function'?"),
    ("prompts.pth=x", "did you mean 'path'?"),
    ("prompts.format=jsonl", "prompts.format 'jsonl' is not one of"),
    ("train.lrr=1", "did you mean 'train.lr'?"),
    ("judge.function=online_cli_judge:scor", "did you mean 'score'?"),
    ("judge.function=no_such_module:score", "no module 'no_such_module'"),
    ("judge.regex=[a-", "judge: set exactly one of"),
    ("loss.name=pl_dpo", "needs a pair loss"),
    ("data.train=x.jsonl", "prompts: section"),
    ("prompts.path=missing.txt", "prompts.path 'missing.txt' is not a file"),
    ("model.path=no/such/dir", "model.path"),
])
def test_online_cli_mistakes_are_one_line_errors(job: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                 override: str, expected: str) -> None:
    assert _run(job, tmp_path / "run", override) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and expected in err, err
    assert not (tmp_path / "run" / "model").exists()


def test_prompts_come_from_any_layout_in_file_order(tmp_path: Path) -> None:
    pairs = tmp_path / "pairs.jsonl"
    rows = [{"prompt": p, "chosen": "yes", "rejected": "no"} for p in ["b", "a", "b", "c"]]
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert read_prompts(PromptsConfig(str(pairs))) == ["b", "a", "c"]
    assert read_prompts(PromptsConfig(str(pairs), limit=2)) == ["b", "a"]
    only = tmp_path / "questions.jsonl"  # rows with a prompt and no record layout, under another name
    only.write_text('{"question": "x?"}\n{"question": [{"role": "user", "content": "hi"}]}\n')
    got = read_prompts(PromptsConfig(str(only), columns={"prompt": "question"}))
    assert got[0] == "x?" and got[1][0].role == "user" and got[1][0].content == "hi"
    text = tmp_path / "prompts.txt"
    text.write_text("one\n\n two \none\n")
    assert read_prompts(PromptsConfig(str(text))) == ["one", "two"]


def test_config_judges_regex_and_exact_match(tmp_path: Path) -> None:
    rx = build_judge(JudgeConfig(regex=r"\d+", fullmatch=True), tmp_path)
    assert isinstance(rx, FunctionJudge) and rx.score(["p", "p"], ["42", "a42"]).tolist() == [1.0, 0.0]
    (tmp_path / "answers.yaml").write_text("'2+2=': ['4', 'four']\n")
    em = build_judge(JudgeConfig(exact_match=str(tmp_path / "answers.yaml")), tmp_path)
    assert em.score(["2+2=", "2+2="], [" four ", "5"]).tolist() == [1.0, 0.0]
