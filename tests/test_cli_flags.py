"""``prefkit train`` / ``prefkit rm train``: --key value flags, the job.yaml hint, the final line."""

from __future__ import annotations

import pytest

from prefkit.cli.main import main
from prefkit.cli.train import done_line
from prefkit.errors import ConfigError
from prefkit.train.trl import flags_to_overrides


def test_flags_become_key_value():
    assert flags_to_overrides(["--max_steps", "5", "--train.lr=1e-5", "loss.beta=0.2", "--bf16"]) == [
        "max_steps=5", "train.lr=1e-5", "loss.beta=0.2", "bf16=true"]
    assert flags_to_overrides(["--max_steps", "-1"]) == ["max_steps=-1"]


def test_yaml_positional_hints_config():
    with pytest.raises(ConfigError, match=r"did you mean --config job.yaml\?"):
        flags_to_overrides(["job.yaml"])
    with pytest.raises(ConfigError, match="key=value or --key value"):
        flags_to_overrides(["oops"])


def test_cli_train_job_yaml_hint(capsys):
    assert main(["train", "job.yaml"]) == 1
    assert capsys.readouterr().err.strip() == "error: bad argument 'job.yaml': did you mean --config job.yaml?"


def test_cli_train_accepts_trl_flags_up_to_config_checks(tmp_path, capsys):
    job = tmp_path / "job.yaml"
    job.write_text("model: {path: %s}\ndata: {train: %s}\n" % (tmp_path / "nomodel", tmp_path / "nodata.jsonl"))
    assert main(["train", "--config", str(job), "--max_steps", "5", "--learning_rate=1e-5",
                 "--loss_type", "sigmoid"]) == 1
    err = capsys.readouterr().err
    assert "note: TRL key 'max_steps' is prefkit's 'train.max_steps'" in err
    assert "note: loss 'sigmoid' is TRL's name for prefkit's 'dpo'" in err
    assert "No such option" not in err and err.splitlines()[-1].startswith("error: ")  # a path error, one line


def test_cli_rm_train_accepts_flags(tmp_path, capsys):
    job = tmp_path / "rm.yaml"
    job.write_text("model: {path: %s}\ndata: {train: %s}\n" % (tmp_path / "nomodel", tmp_path / "nodata.jsonl"))
    assert main(["rm", "train", "--config", str(job), "--train.max_steps", "3", "--lerning_rate", "1"]) == 1
    err = capsys.readouterr().err
    assert "No such option" not in err and "unknown config key 'lerning_rate'" in err


def test_done_line_is_readable():
    line = done_line({"step": 3, "loss": 0.69284, "rewards/accuracies": 1.0, "lr": 1e-5}, "runs/dpo")
    assert line == "done: step 3, loss 0.6928, accuracy 1.000; outputs in runs/dpo"
    line = done_line({"step": 3.0, "loss": 0.5, "rewards/accuracies": float("nan"), "eval/loss": 0.61234,
                      "eval/rewards/accuracies": 0.75}, "runs/x")
    assert line == "done: step 3, loss 0.5000, eval loss 0.6123, eval accuracy 0.750; outputs in runs/x"
