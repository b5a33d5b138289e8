"""Config: YAML + dotted overrides, unknown keys name the nearest key, loss params checked early."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

import prefkit.models.load as model_load
from prefkit.cli.main import main
from prefkit.errors import ConfigError
from prefkit.train.config import RewardModelConfig, RunConfig, all_keys, dump_config, field_docs, load_config


def write(tmp_path, text: str):
    path = tmp_path / "job.yaml"
    path.write_text(text)
    return path


def test_yaml_and_overrides(tmp_path) -> None:
    path = write(tmp_path, "loss: {name: ipo, beta: 0.3}\ntrain: {lr: 1.0e-5, batch_size: 4}\n")
    cfg = load_config(path, ["train.lr=2e-5", "loss.beta=0.2", "lora.target_modules=q_proj,v_proj",
                             "train.adam_betas=[0.9, 0.95]", "encode.max_length=64"])
    assert cfg.loss.name == "ipo" and cfg.loss.params["beta"] == 0.2
    assert cfg.train.lr == 2e-5 and cfg.train.batch_size == 4  # '2e-5' (a YAML string) read as a float
    assert cfg.lora.target_modules == ["q_proj", "v_proj"] and cfg.train.adam_betas == (0.9, 0.95)
    assert cfg.encode.max_length == 64
    # the dump round-trips
    again = write(tmp_path, dump_config(cfg))
    assert load_config(again) == cfg


def test_every_field_has_a_docstring() -> None:
    def check(cls: type) -> None:
        docs = field_docs(cls)
        for f in dataclasses.fields(cls):
            assert docs.get(f.name), f"{cls.__name__}.{f.name} has no docstring"
            if dataclasses.is_dataclass(f.type if isinstance(f.type, type) else None):
                check(f.type)

    check(RunConfig)
    for section in dataclasses.fields(RunConfig):
        value = getattr(RunConfig(), section.name)
        check(value.__class__ if value is not None else RewardModelConfig)


@pytest.mark.parametrize("args, expected", [
    (["train.lrr=1"], "unknown config key 'train.lrr' (did you mean 'train.lr'?)"),
    (["lr=1e-4"], "did you mean 'train.lr'?"),
    (["trian.lr=1"], "did you mean 'train.lr'?"),
    (["loss.name=dpoo"], "unknown loss 'dpoo' (did you mean 'dpo'?)"),
    (["loss.bta=0.1"], "'beta'"),
    (["loss.label_smoothing=0.9"], "out of range"),
    (["train.batch_size=0"], "train.batch_size must be >= 1"),
    (["train.mixed_precision=bf15"], "did you mean 'bf16'?"),
    (["reference.mode=adapters_off"], "lora.r > 0"),
    (["train.lr=.nan"], "train.lr must be finite and > 0; got nan"),
    (["train.adam_betas=[1.5, 0.999]"], "train.adam_betas[0] must be in [0, 1); got 1.5"),
    (["train.max_grad_norm=0"], "train.max_grad_norm must be > 0; use null to disable clipping"),
    (["encode.max_length=8", "encode.max_prompt_length=8"], "encode: max_prompt_length (8) must be below"),
])
def test_config_errors(args, expected) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(overrides=args)
    assert expected in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("override", ["train.lrr=1", "loss.name=nope", "loss.beta=-1"])
def test_cli_config_error_one_line_exit_1_before_model_load(tmp_path, capsys, monkeypatch, override) -> None:
    def no_load(*args, **kwargs):
        raise AssertionError("a model was loaded before the config was checked")

    monkeypatch.setattr(model_load, "load_model", no_load)
    path = write(tmp_path, "model: {path: /nonexistent}\ndata: {train: /nonexistent.jsonl}\n")
    assert main(["train", "--config", str(path), override]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err


def test_max_grad_norm_null_disables_clipping_and_round_trips(tmp_path) -> None:
    cfg = load_config(overrides=["train.max_grad_norm=null"])
    assert cfg.train.max_grad_norm is None
    assert load_config(write(tmp_path, dump_config(cfg))) == cfg


def test_cli_missing_config_file(tmp_path, capsys) -> None:
    assert main(["train", "--config", str(tmp_path / "nope.yaml")]) == 1
    assert "not found" in capsys.readouterr().err


def test_all_keys_lists_sections() -> None:
    keys = all_keys()
    assert {"train.lr", "loss.name", "model.path", "reference.mode", "encode.max_length"} <= set(keys)


def test_docs_config_reference_is_current() -> None:
    from prefkit.train.config_docs import docs_with_reference

    docs = Path(__file__).resolve().parents[1] / "docs" / "training.md"
    text = docs.read_text()
    assert docs_with_reference(text) == text, \
        "regenerate: python -m prefkit.train.config_docs --write-docs docs/training.md"
