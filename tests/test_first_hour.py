"""A new user's first hour (issue 14, items 3 and 5): a sane ``encode.max_length`` default checked
against the model before training, and one-line errors in the user's own words."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from prefkit.cli.main import main
from prefkit.data.encode import EncodeConfig
from prefkit.errors import ConfigError
from prefkit.eval.best_of_n import parse_candidates, read_rows
from prefkit.testing import tiny_llama, tiny_pairs, tiny_tokenizer
from prefkit.train.config import load_config, load_reward_config
from prefkit.train.trainer import Trainer

BASE = ["train.progress=false", "output.tensorboard=false", "output.plots=false", "output.save_model=false",
        "train.max_steps=1", "train.batch_size=2"]
PAIR = {"question": "Hi?", "good": " Hello.", "bad": " Go away."}


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    out, err = capsys.readouterr()
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in out + err, (out, err)
    return err


# -- item 3: encode.max_length ---------------------------------------------------------------------------


def test_max_length_defaults_to_trls_1024() -> None:
    assert EncodeConfig().max_length == 1024
    assert load_config().encode.max_length == 1024


def test_reward_job_still_truncates_with_reward_max_length() -> None:
    cfg = load_reward_config(overrides=["model.path=x", "data.train=x"], check_files=False)
    assert cfg.encode.max_length is None


def _trainer(tmp_path: Path, model, *overrides: str) -> Trainer:
    tok = copy.deepcopy(tiny_tokenizer())
    cfg = load_config(overrides=[*BASE, f"output.dir={tmp_path / 'run'}", *overrides])
    return Trainer(cfg, model, tok, tiny_pairs(4))


def test_max_length_above_the_models_positions_is_refused_before_encoding(tmp_path: Path) -> None:
    model = tiny_llama(len(tiny_tokenizer()), max_positions=64)
    with pytest.raises(ConfigError) as err:
        _trainer(tmp_path, model)
    assert str(err.value) == ("encode.max_length=1024 exceeds the model's position limit "
                              "(max_position_embeddings=64); set encode.max_length=64 or lower")
    assert not (tmp_path / "run").exists()  # refused before anything is written


def test_position_limit_is_read_through_peft(tmp_path: Path) -> None:
    from prefkit.models.load import add_lora, is_peft

    model = add_lora(tiny_llama(len(tiny_tokenizer()), max_positions=64), r=2, alpha=4)
    assert is_peft(model)
    with pytest.raises(ConfigError, match=r"max_position_embeddings=64\); set encode.max_length=64"):
        _trainer(tmp_path, model, "encode.max_length=100")


def test_n_positions_is_a_limit_too_and_a_fitting_length_trains(tmp_path: Path) -> None:
    from types import SimpleNamespace

    model = tiny_llama(len(tiny_tokenizer()), max_positions=64)
    model.config = SimpleNamespace(n_positions=48)  # GPT-2's name for the limit
    with pytest.raises(ConfigError, match=r"\(n_positions=48\); set encode.max_length=48 or lower$"):
        _trainer(tmp_path, model, "encode.max_length=49")
    assert _trainer(tmp_path, model, "encode.max_length=48").examples["train"]


def test_no_limit_when_the_model_names_none(tmp_path: Path) -> None:
    model = tiny_llama(len(tiny_tokenizer()), max_positions=64)
    model.config = type("NoLimit", (), {})()  # a config with neither max_position_embeddings nor n_positions
    trainer = _trainer(tmp_path, model, "encode.max_length=100")
    assert trainer.examples["train"]


# -- item 5: one-line errors -----------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["inspect", "validate"])
def test_data_refuses_an_unknown_extension(command: str, tmp_path: Path, capsys) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("# Title\n\nSome text, with a comma.\n\n| a | b |\n")
    assert main(["data", command, str(readme)]) == 1
    err = _one_line_error(capsys)
    assert "unsupported file type (extension '.md')" in err
    assert ".jsonl, .json, .csv, .parquet" in err and "records" not in err


def test_data_convert_refuses_an_unknown_input_extension(tmp_path: Path, capsys) -> None:
    src = tmp_path / "pairs.txt"
    src.write_text(json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"}) + "\n")
    assert main(["data", "convert", str(src), str(tmp_path / "o.jsonl"), "--to", "trl"]) == 1
    assert "unsupported file type (extension '.txt')" in _one_line_error(capsys)


def test_data_reads_gzip_and_known_extensions(tmp_path: Path, capsys) -> None:
    src = tmp_path / "pairs.JSONL"
    src.write_text(json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"}) + "\n")
    assert main(["data", "validate", str(src)]) == 0


def _mapped(tmp_path: Path) -> Path:
    path = tmp_path / "mine.jsonl"
    path.write_text(json.dumps(PAIR) + "\n")
    return path


def test_unknown_field_names_the_column_flag(tmp_path: Path, capsys) -> None:
    assert main(["data", "validate", str(_mapped(tmp_path)), "--column", "prmpt=question"]) == 1
    err = _one_line_error(capsys)
    assert err.startswith("error: --column: 'prmpt' is not a record field (did you mean 'prompt'?)")
    assert "--column prompt=question" in err and "columns" not in err


def test_missing_column_names_the_column_flag(tmp_path: Path, capsys) -> None:
    assert main(["data", "inspect", str(_mapped(tmp_path)), "--column", "prompt=qestion"]) == 1
    err = _one_line_error(capsys)
    assert "--column prompt=qestion: there is no column 'qestion' (did you mean 'question'?)" in err
    assert "columns" not in err


def test_unrecognised_layout_hint_names_the_column_flag(tmp_path: Path, capsys) -> None:
    assert main(["data", "validate", str(_mapped(tmp_path))]) == 1
    out = capsys.readouterr().out
    assert "(map yours with --column OURS=THEIRS)" in out and "columns=" not in out


def test_convert_column_errors_name_the_flag_too(tmp_path: Path, capsys) -> None:
    assert main(["data", "convert", str(_mapped(tmp_path)), str(tmp_path / "o.jsonl"), "--to", "trl",
                 "--column", "prompt=qestion"]) == 1
    assert "--column prompt=qestion" in _one_line_error(capsys)


def test_mapped_columns_still_load(tmp_path: Path, capsys) -> None:
    assert main(["data", "validate", str(_mapped(tmp_path)), "--column", "prompt=question", "--column",
                 "chosen=good", "--column", "rejected=bad"]) == 0


def test_bon_rows_are_located_by_the_loaders_1_based_line(tmp_path: Path, capsys) -> None:
    data = tmp_path / "bad.jsonl"
    data.write_text("\n" + json.dumps({"prompt": "hi", "candidates": ["a"]}) + "\n"
                    + json.dumps({"prompt": "hi", "answers": ["a"]}) + "\n")
    rows = read_rows(data)
    assert [r.where for r in rows] == ["bad.jsonl line 2", "bad.jsonl line 3"]
    with pytest.raises(Exception, match=r"^bad\.jsonl line 3: missing the candidate list"):
        parse_candidates(rows[1], "bad.jsonl row 1")
    model_dir = tmp_path / "rm"
    model_dir.mkdir()
    assert main(["bon", str(model_dir), str(data), str(tmp_path / "o.jsonl")]) == 1
    err = _one_line_error(capsys)
    assert "bad.jsonl line 3: missing the candidate list" in err and "row" not in err


def test_bon_json_array_rows_use_their_start_line(tmp_path: Path) -> None:
    data = tmp_path / "rows.json"
    data.write_text('[\n  {"prompt": "a", "candidates": ["x"]},\n  {\n    "prompt": "b",\n'
                    '    "candidates": ["y"]\n  }\n]\n')
    assert [r.where for r in read_rows(data)] == ["rows.json line 2", "rows.json line 3"]
    assert read_rows(data)[1] == {"prompt": "b", "candidates": ["y"]}


def test_bon_parquet_rows_keep_0_based_row_indices(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([{"prompt": "a", "candidates": ["x"]}]), tmp_path / "r.parquet")
    assert [r.where for r in read_rows(tmp_path / "r.parquet")] == ["r.parquet row 0"]
