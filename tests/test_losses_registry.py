"""The registry machinery: get_loss, validate_loss_params, spec/signature agreement, docs, the CLI."""

from __future__ import annotations

import inspect
import re

import pytest

from prefkit.cli.main import main
from prefkit.errors import ConfigError
from prefkit.losses import LOSSES, get_loss, validate_loss_params
from prefkit.losses.registry import DOCS_PATH, REGENERATE, formula_of, render_docs
from prefkit.losses.types import LossSpec

NAMES = sorted(LOSSES)
KINDS = {"pair", "list", "unpaired", "reward_pair", "reward_list", "reward_rating"}
NEEDS = {"token_logps", "strength", "labels", "scores", "ties"}


def test_get_loss_unknown_name_lists_choices_and_nearest() -> None:
    with pytest.raises(ConfigError) as err:
        get_loss("lipoo")
    message = str(err.value)
    assert "did you mean 'lipo'" in message and "'kto'" in message and "\n" not in message


def test_get_loss_dotted_path(tmp_path, monkeypatch) -> None:
    """A user's LossSpec at 'pkg.module:attr' is imported explicitly; anything else is a ConfigError."""
    (tmp_path / "my_losses.py").write_text(
        "from prefkit.losses import LOSSES\nMINE = LOSSES['dpo']\nNOT_A_SPEC = 3\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert get_loss("my_losses:MINE") is LOSSES["dpo"]
    with pytest.raises(ConfigError, match="must be a prefkit.losses.LossSpec"):
        get_loss("my_losses:NOT_A_SPEC")
    with pytest.raises(ConfigError, match="cannot import"):
        get_loss("no_such_module_xyz:MINE")


@pytest.mark.parametrize("name", NAMES)
def test_spec_is_complete_and_matches_the_function(name: str) -> None:
    """Kind and needs are known; the paper is cited; every param is a keyword of fn with the same default;
    every per-batch need (other than token_logps) is a keyword of fn."""
    spec = LOSSES[name]
    assert isinstance(spec, LossSpec)
    assert spec.kind in KINDS
    assert set(spec.needs) <= NEEDS
    assert spec.paper.title and spec.paper.equation
    assert spec.paper.arxiv == "" or re.fullmatch(r"\d{4}\.\d{4,5}", spec.paper.arxiv)
    signature = inspect.signature(spec.fn)
    for key, param in spec.params.items():
        assert key in signature.parameters, f"{name}: param {key!r} is not a keyword of {spec.fn.__name__}"
        assert signature.parameters[key].default == param.default, f"{name}.{key}: default differs"
    for need in set(spec.needs) - {"token_logps"}:
        assert need in signature.parameters, f"{name}: needs {need!r} but fn takes no such keyword"
    assert formula_of(spec).strip()


@pytest.mark.parametrize("name", NAMES)
def test_defaults_validate(name: str) -> None:
    spec = LOSSES[name]
    defaults = {key: param.default for key, param in spec.params.items()}
    assert validate_loss_params(name, {}) == defaults
    assert validate_loss_params(name, defaults) == defaults


def test_validate_fills_defaults_and_converts_ints() -> None:
    assert validate_loss_params("lipo", {"beta": 1, "form": "hinge"}) == {
        "beta": 1.0, "form": "hinge", "weighting": "lambda", "delta": 1.0}
    assert isinstance(validate_loss_params("lipo", {"beta": 1})["beta"], float)


@pytest.mark.parametrize("params,match", [
    ({"bta": 0.2}, r"unknown parameter 'bta' \(did you mean 'beta'\?\)"),
    ({"beta": -1.0}, r"'beta'=-1.0 is out of range \[1e-06, inf\]"),
    ({"beta": "0.1"}, r"'beta' must be a number, got '0.1' \(write it as a number"),
    ({"beta": True}, r"'beta' must be a number"),
    ({"beta": float("nan")}, r"must be finite"),
    ({"form": "hinj"}, r"must be one of \['logistic', 'hinge'\], got 'hinj' \(did you mean 'hinge'\?\)"),
])
def test_validate_rejects_bad_params(params: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as err:
        validate_loss_params("lipo", params)
    assert "\n" not in str(err.value) and str(err.value).startswith("loss 'lipo':")


def test_validate_rejects_wrong_bool_and_params_of_parameterless_loss() -> None:
    with pytest.raises(ConfigError, match="must be true or false"):
        validate_loss_params("pro", {"dynamic_temperature": "yes"})
    with pytest.raises(ConfigError, match="it takes no parameters"):
        validate_loss_params("plackett_luce", {"beta": 0.1})
    with pytest.raises(ConfigError, match="unknown loss"):
        validate_loss_params("nope", {})


def test_docs_are_up_to_date() -> None:
    """docs/losses.md is generated from the registry; regenerate it when this fails."""
    current = DOCS_PATH.read_text(encoding="utf-8") if DOCS_PATH.exists() else ""
    assert current == render_docs(), f"{DOCS_PATH} is stale; run `{REGENERATE}`"


def test_docs_cover_every_loss() -> None:
    text = render_docs()
    for name in NAMES:
        assert f"\n## {name}\n" in text


def test_cli_lists_the_registry(capsys) -> None:
    assert main(["losses"]) == 0
    out = capsys.readouterr().out
    for name in NAMES:
        assert name in out
    assert f"{len(LOSSES)} losses" in out


def test_cli_shows_one_loss(capsys) -> None:
    assert main(["losses", "lipo"]) == 0
    out = capsys.readouterr().out
    assert "formula:" in out and "Δ_ij = |G_i − G_j|" in out
    assert "weighting" in out and "'lambda'" in out and "2402.01878" in out


def test_cli_unknown_loss_is_one_line_error(capsys) -> None:
    assert main(["losses", "kto2"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "did you mean 'kto'" in err
