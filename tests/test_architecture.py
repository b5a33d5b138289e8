"""The floors hold: import-linter's contracts (pyproject.toml) pass, and catch a deliberate violation;
no library module outside ``prefkit.losses`` names a loss; no source file is a grab bag."""

from __future__ import annotations

import ast
import copy
import io
import re
import tokenize
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "prefkit"

grimp = pytest.importorskip("grimp")
pytest.importorskip("importlinter")


def _contracts() -> list[dict]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]


def _check(graph, contract: dict) -> bool:
    """Whether ``contract`` (a pyproject entry) is kept on ``graph``."""
    from importlinter import configuration
    from importlinter.contracts.acyclic_siblings import AcyclicSiblingsContract
    from importlinter.contracts.layers import LayersContract

    configuration.configure()  # what the lint-imports command does first (timer, readers)

    cls = {"layers": LayersContract, "acyclic_siblings": AcyclicSiblingsContract}[contract["type"]]
    options = {k: v for k, v in contract.items() if k not in ("name", "type")}
    return cls(name=contract["name"], session_options={"root_packages": ["prefkit"]},
               contract_options=options).check(graph, verbose=False).kept


@pytest.fixture(scope="module")
def graph():
    return grimp.build_graph("prefkit")


def test_contracts_are_kept(graph):
    contracts = _contracts()
    assert {c["type"] for c in contracts} == {"layers", "acyclic_siblings"}
    for contract in contracts:
        assert _check(graph, contract), contract["name"]


@pytest.mark.parametrize("importer, imported, broken", [
    ("prefkit.models.reward", "prefkit.train.config", "layers"),  # models must not import train
    ("prefkit.losses.pairwise", "prefkit.data.records", "layers"),  # losses and data are independent
    ("prefkit.train.run", "prefkit.toy.demo", "layers"),  # train must not route to the toy world
    ("prefkit.models.packing", "prefkit.models.logprobs", "acyclic_siblings"),  # logprobs -> packing -> logprobs
])
def test_a_deliberate_violation_is_caught(graph, importer, imported, broken):
    bad = copy.deepcopy(graph)
    bad.add_import(importer=importer, imported=imported)
    results = {c["type"]: _check(bad, c) for c in _contracts()}
    assert results[broken] is False


def _loss_names() -> set[str]:
    from prefkit.losses import LOSSES

    return set(LOSSES)


def _string_literals(path: Path) -> list[tuple[int, str]]:
    """(line, text) of every string literal that is not a docstring."""
    source = path.read_text()
    docstrings = set()
    for node in ast.walk(ast.parse(source)):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) \
                and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
            docstrings.add(body[0].lineno)
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            docstrings.add(node.lineno)  # attribute docstrings
    out = []
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.STRING and tok.start[0] not in docstrings:
            out.append((tok.start[0], tok.string))
    return out


def test_no_loss_name_outside_the_registry():
    """Loss facts live in ``prefkit.losses``: no string in other library code names a loss."""
    names = _loss_names()
    pattern = re.compile(r"(?<![\w.-])(" + "|".join(sorted(map(re.escape, names), key=len, reverse=True))
                         + r")(?![\w-])")
    found = []
    for path in sorted(SRC.rglob("*.py")):
        if "losses" in path.relative_to(SRC).parts:
            continue
        for line, text in _string_literals(path):
            for match in pattern.finditer(text):
                found.append(f"{path.relative_to(ROOT)}:{line}: {match.group(1)!r} in {text[:60]}")
    assert not found, "\n".join(found)


def test_no_source_file_over_700_lines():
    long = {str(p.relative_to(ROOT)): n for p in SRC.rglob("*.py") if (n := len(p.read_text().splitlines())) > 700}
    assert not long, long


def test_cli_reports_a_broken_command_module_instead_of_no_such_command(monkeypatch, capsys):
    """An ImportError inside a command's module says so in one line (it used to read 'No such command')."""
    import sys

    from prefkit.cli import main as cli_main

    monkeypatch.setitem(cli_main.COMMANDS, "broken", "prefkit_no_such_module_for_test")
    monkeypatch.setitem(sys.modules, "prefkit_no_such_module_for_test", None)  # import raises ImportError
    assert cli_main.main(["broken"]) == 1
    err = capsys.readouterr().err
    assert "cannot load" in err and "No such command" not in err and "Traceback" not in err
