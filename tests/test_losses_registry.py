"""The registry machinery: get_loss, validate_loss_params, LossSpec built from the signature, Param bounds,
the one docstring format, spec properties, docs, the CLI."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from prefkit.cli.main import main
from prefkit.errors import ConfigError
from prefkit.losses import LOSSES, get_loss, validate_loss_params
from prefkit.losses.registry import (
    REGENERATE,
    docstring_section,
    formula_of,
    names_of,
    reference_free_pair_losses,
    references_of,
    render_docs,
    reward_losses,
)
from prefkit.losses.types import FROM_SIGNATURE, INPUT_KEYWORDS, LossSpec, Paper, Param

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
    """Kind and needs are known; the paper is cited; the params are exactly fn's keyword parameters (other
    than the input keywords), each default the signature's; every per-batch need (other than
    token_logps) is a keyword of fn; choice defaults are among the choices."""
    spec = LOSSES[name]
    assert isinstance(spec, LossSpec)
    assert spec.kind in KINDS
    assert set(spec.needs) <= NEEDS
    assert spec.paper.title and spec.paper.equation
    assert spec.paper.arxiv == "" or re.fullmatch(r"\d{4}\.\d{4,5}", spec.paper.arxiv)
    signature = inspect.signature(spec.fn)
    keywords = {k for k, p in signature.parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}
    assert keywords - INPUT_KEYWORDS == set(spec.params)
    for key, param in spec.params.items():
        assert signature.parameters[key].default == param.default, f"{name}.{key}: default differs"
        assert param.admits(param.default)
        if param.choices is not None:
            assert param.default in param.choices
    for need in set(spec.needs) - {"token_logps"}:
        assert need in signature.parameters, f"{name}: needs {need!r} but fn takes no such keyword"
    assert formula_of(spec).strip()
    assert spec.summary


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
    ({"beta": -1.0}, r"'beta'=-1.0 is out of range \(0, inf\)"),
    ({"beta": 0.0}, r"'beta'=0.0 is out of range \(0, inf\)"),
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
    docs = Path(__file__).resolve().parents[1] / "docs" / "losses.md"
    assert docs.read_text(encoding="utf-8") == render_docs(), f"{docs} is stale; run `{REGENERATE}`"


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


# --- LossSpec builds its params from the function's signature -----------------------------------------

PAPER = Paper("A paper", "", "Eq. 1")


def _toy(policy, reference, *, strength=None, beta: float = 0.1, mode: str = "a", delta: float = 0.0):
    """Toy loss for the builder tests."""
    raise AssertionError("never called")


def _no_default(policy, reference, *, beta: float):
    """Toy loss whose keyword has no default."""
    raise AssertionError("never called")


def _toy_params(**overrides: Param | None) -> dict[str, Param]:
    params = {"beta": Param(low=0, low_open=True), "mode": Param(choices=("a", "b")), "delta": Param()}
    params.update(overrides)
    return {k: v for k, v in params.items() if v is not None}


def test_loss_spec_fills_defaults_from_the_signature() -> None:
    shared = Param(low=0, low_open=True, doc="β")
    spec = LossSpec(fn=_toy, kind="pair", needs_reference=True, paper=PAPER, params=_toy_params(beta=shared),
                    needs=frozenset({"strength"}), running_reward_mean=True, head_params=("delta",))
    assert {k: p.default for k, p in spec.params.items()} == {"beta": 0.1, "mode": "a", "delta": 0.0}
    assert spec.params["beta"].doc == "β" and spec.params["beta"].low_open
    assert shared.default is FROM_SIGNATURE, "a Param shared between specs is copied, never filled in place"
    assert list(spec.params) == ["beta", "mode", "delta"]


@pytest.mark.parametrize("fn,params,extra,error,match", [
    (_toy, _toy_params(gamma=Param()), {}, TypeError, r"Param 'gamma' is not a keyword parameter of _toy"),
    (_toy, _toy_params(mode=None), {}, TypeError, r"keyword 'mode' of _toy has no Param"),
    (_no_default, {"beta": Param()}, {}, TypeError, r"keyword 'beta' has no default"),
    (_toy, _toy_params(beta=Param(low=1)), {}, ValueError, r"default beta=0.1 is outside"),
    (_toy, _toy_params(beta=Param(low=0.1, low_open=True)), {}, ValueError, r"default beta=0.1 is outside"),
    (_toy, _toy_params(mode=Param(choices=("b",))), {}, ValueError, r"default mode='a' is outside"),
    (_toy, _toy_params(), {"needs": frozenset({"ties"})}, TypeError, r"needs 'ties' but _toy takes no such"),
    (_toy, _toy_params(delta=None, mode=None), {}, TypeError, r"has no Param"),
    (_toy, _toy_params(), {"head_params": ("theta",)}, TypeError, r"head parameter 'theta' is not one of"),
], ids=["unknown-param", "missing-param", "no-default", "default-below-low", "default-at-open-low",
        "default-not-a-choice", "need-not-a-keyword", "two-missing", "head-param-unknown"])
def test_loss_spec_rejects_params_that_disagree_with_the_function(fn, params, extra, error, match) -> None:
    with pytest.raises(error, match=match):
        LossSpec(fn=fn, kind="pair", needs_reference=True, paper=PAPER, params=params, **extra)


def test_running_reward_mean_needs_a_delta_param() -> None:
    def no_delta(policy, reference, *, beta: float = 0.1):
        raise AssertionError("never called")

    with pytest.raises(TypeError, match="running_reward_mean needs a 'delta' parameter"):
        LossSpec(fn=no_delta, kind="pair", needs_reference=True, paper=PAPER,
                 params={"beta": Param()}, running_reward_mean=True)


def test_param_takes_no_default_and_checks_its_bounds() -> None:
    with pytest.raises(TypeError):
        Param(0.1, 0.0, None, "old positional form: (default, low, high, doc)")  # type: ignore[misc]
    with pytest.raises(TypeError):
        Param(default=0.1)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="above high"):
        Param(low=1, high=0)
    with pytest.raises(ValueError, match="choices or bounds"):
        Param(low=0, choices=("a",))


@pytest.mark.parametrize("param,text", [
    (Param(low=0, high=0.5, high_open=True), "[0, 0.5)"),
    (Param(low=0, low_open=True), "(0, inf)"),
    (Param(low=0, low_open=True, high=1), "(0, 1]"),
    (Param(low=0, low_open=True, high=0.5, high_open=True), "(0, 0.5)"),
    (Param(high=1e-3), "(-inf, 0.001]"),
    (Param(low=1), "[1, inf)"),
])
def test_param_interval_notation(param: Param, text: str) -> None:
    assert param.interval() == text


# --- bounds live only in Param, checked at config-parse time -------------------------------------------


@pytest.mark.parametrize("name,key,rejected,accepted", [
    ("robust_dpo", "label_smoothing", [0.5, 0.6, -0.1], [0.0, 0.4999]),
    ("dpo", "label_smoothing", [0.50001, -1e-9], [0.0, 0.5]),
    ("exo", "label_smoothing", [0.0, 0.5], [1e-9, 0.4999]),
    ("dpo", "beta", [0.0, -1e-9], [1e-12, 1e6]),
    ("fdpo", "alpha", [0.0, 1.0], [1e-9, 0.999999]),
    ("discopop", "tau", [0.0, 1.00001], [1e-9, 1.0]),
    ("pro", "temperature", [0.0], [1e-9]),
    ("rao_kupper", "theta", [0.999], [1.0, 3.0]),
    ("davidson", "nu", [-1e-9], [0.0]),
    ("slic", "delta", [-1e-9], [0.0]),
])
def test_validate_applies_open_and_closed_bounds(name: str, key: str, rejected: list[float],
                                                 accepted: list[float]) -> None:
    for value in rejected:
        with pytest.raises(ConfigError, match=rf"parameter '{key}'={value!r} is out of range"):
            validate_loss_params(name, {key: value})
    for value in accepted:
        assert validate_loss_params(name, {key: value})[key] == value


def _bounded() -> list[tuple[str, str]]:
    return [(name, key) for name in NAMES for key, p in LOSSES[name].params.items()
            if p.low is not None or p.high is not None]


@pytest.mark.parametrize("name,key", _bounded(), ids=lambda x: x)
def test_validate_rejects_every_out_of_range_value(name: str, key: str) -> None:
    """At each finite bound: the bound itself is accepted iff the bound is closed; past it, rejected."""
    param = LOSSES[name].params[key]
    for bound, is_open, outward in ((param.low, param.low_open, -1.0), (param.high, param.high_open, 1.0)):
        if bound is None:
            continue
        with pytest.raises(ConfigError, match="out of range"):
            validate_loss_params(name, {key: bound + outward * 1e-6})
        if is_open:
            with pytest.raises(ConfigError, match="out of range"):
                validate_loss_params(name, {key: float(bound)})
        else:
            assert validate_loss_params(name, {key: float(bound)})[key] == bound


def test_docs_show_open_bounds() -> None:
    text = render_docs()
    assert "| `label_smoothing` | `0.1` | [0, 0.5) | known label-flip rate ε |" in text
    assert "| `beta` | `0.1` | (0, inf) |" in text


# --- one docstring format --------------------------------------------------------------------------------


def _flat(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.parametrize("name", NAMES)
def test_docstring_has_the_one_format(name: str) -> None:
    """Summary line, then the ``Formula:`` and ``References:`` sections (indented blocks), then shapes,
    sign convention and deviations; the references cite the registry's paper and its equation."""
    spec = LOSSES[name]
    doc = inspect.getdoc(spec.fn) or ""
    lines = doc.splitlines()
    assert lines[0].strip() and lines[1] == "" and lines[2] == "Formula:", f"{name}: summary, then Formula:"
    assert "References:" in lines, f"{name}: no References: section"
    assert lines.index("References:") > 2
    formula, references = formula_of(spec), references_of(spec)
    assert formula and references
    assert not any(line.rstrip().endswith("::") for line in lines), f"{name}: old '::' formula dialect"
    for section in ("Shapes:", "Sign convention:", "Deviations from the paper:"):
        assert section in doc, f"{name}: no {section!r}"
    refs = _flat(references)
    title = _flat(spec.paper.title.split(" (")[0])
    assert title in refs, f"{name}: References do not name the paper {title!r}"
    if spec.paper.arxiv:
        assert f"arXiv {spec.paper.arxiv}" in refs
    for where in re.findall(r"(?:Eq\.|Sec\.|Appendix) [\w.]+", spec.paper.equation):
        assert where.rstrip(".,") in refs, f"{name}: References do not give {where!r}"


def test_docstring_section_reads_only_the_named_block() -> None:
    def fn(policy, reference):
        """Summary.

        Formula:
            a = 1

            b = 2
        References:
            Someone, arXiv 0000.00000.

        Shapes: (B,).
        """

    assert docstring_section(fn, "Formula") == "a = 1\n\nb = 2"
    assert docstring_section(fn, "References") == "Someone, arXiv 0000.00000."
    assert docstring_section(fn, "Deviations") == ""


# --- properties instead of name lists ----------------------------------------------------------------------


def test_record_kind_of_every_loss_kind() -> None:
    expected = {"pair": "pair", "list": "ranking", "unpaired": "unpaired", "reward_pair": "pair",
                "reward_list": "ranking", "reward_rating": "rating"}
    assert set(expected) == KINDS
    for spec in LOSSES.values():
        assert spec.record_kind == expected[spec.kind]


def test_spec_properties_and_name_helpers() -> None:
    assert names_of(lambda spec: spec.running_reward_mean) == ["bco", "bco_pair"]
    assert {name: LOSSES[name].head_params for name in names_of(lambda spec: spec.head_params)} == {
        "davidson": ("nu",), "rao_kupper": ("theta",)}
    assert reward_losses() == sorted(n for n in NAMES if LOSSES[n].kind.startswith("reward_"))
    assert {"bradley_terry", "plackett_luce", "rm_regression"} <= set(reward_losses())
    assert reference_free_pair_losses() == ["cpo", "orpo", "simpo", "slic"]
    for name in names_of(lambda spec: spec.running_reward_mean):
        assert "delta" in LOSSES[name].params
