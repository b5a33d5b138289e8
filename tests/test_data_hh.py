"""Real HH-RLHF data: loads, reconstructs, inspects.

By default on the 200-row excerpt in ``tests/data/`` (see ``tests/data/README.md``), which keeps every
quirk of the shared sample. The same checks on the full 1,600-row sample
``../shared/data/hh-rlhf-harmless-1600.jsonl.gz`` are opt-in (``python -m pytest -m slow``).
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from prefkit.cli.main import main
from prefkit.data import Pair, hh, inspect_data, load

ROOT = Path(__file__).resolve().parents[1]
EXCERPT = ROOT / "tests" / "data" / "hh-rlhf-harmless-200.jsonl.gz"
SHARED = ROOT.parent / "shared" / "data" / "hh-rlhf-harmless-1600.jsonl.gz"


@dataclass(frozen=True)
class Expected:
    """What the file holds, counted once from it (see tests/data/README.md for the excerpt)."""

    path: Path
    rows: int
    chosen_longer: int  # pairs whose chosen dialogue has more characters than the rejected one
    chosen_shorter: int
    equal: int
    share: float  # chosen_longer / rows, rounded to 4 places
    percent: str  # the same share as the CLI prints it


CASES = [
    pytest.param(Expected(EXCERPT, 200, 90, 105, 5, 0.45, "45.0%"), id="excerpt"),
    pytest.param(Expected(SHARED, 1600, 710, 880, 10, 0.4437, "44.4%"), id="shared",
                 marks=[pytest.mark.slow,
                        pytest.mark.skipif(not SHARED.exists(), reason=f"{SHARED} missing")]),
]


@pytest.fixture(scope="module", params=CASES)
def case(request) -> Expected:
    return request.param


@pytest.fixture(scope="module")
def raw(case) -> list[dict]:
    with gzip.open(case.path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def pairs(case) -> list[Pair]:
    return load(case.path)


def test_excerpt_is_in_the_repository() -> None:
    assert EXCERPT.is_file(), "tests/data/ must ship the HH excerpt; a fresh clone has no ../shared"
    assert (EXCERPT.parent / "README.md").read_text().count("MIT (Anthropic, 2022)") == 1


def test_loads_as_conversational_pairs(pairs, case) -> None:
    assert len(pairs) == case.rows
    assert all(isinstance(p, Pair) and isinstance(p.prompt, tuple) for p in pairs)
    assert all(p.prompt[-1].role == "user" for p in pairs if "hh_diverges_early" not in p.metadata.get("quirks", ()))


def test_every_row_reconstructs_exactly(pairs, raw) -> None:
    for p, row in zip(pairs, raw, strict=True):
        assert hh.render(p.prompt + p.chosen) == row["chosen"]
        assert hh.render(p.prompt + p.rejected) == row["rejected"]


def test_quirks_are_kept_and_flagged(pairs, raw) -> None:
    flagged = {i: p.metadata["quirks"] for i, p in enumerate(pairs) if p.metadata.get("quirks")}
    assert sorted(q for qs in flagged.values() for q in qs) == ["hh_diverges_early"] + ["hh_empty_chosen"] * 4
    (early,) = [i for i, qs in flagged.items() if "hh_diverges_early" in qs]
    assert len(pairs[early].chosen) == 2 and len(pairs[early].rejected) == 1  # an embedded "Human:" quirk
    assert "  Human: " in raw[early]["chosen"]
    empty = [i for i, qs in flagged.items() if "hh_empty_chosen" in qs]
    assert len(empty) == 4 and 86 in empty  # line 87, the row the converters must not lose
    for i in empty:
        assert pairs[i].chosen[0].content == "" and pairs[i].rejected[0].content.strip()
        assert raw[i]["chosen"].rstrip().endswith("Assistant:")  # nothing after the last "Assistant:"


def test_inspect_numbers(pairs, case) -> None:
    report = inspect_data(pairs)
    assert report["by_kind"] == {"pair": case.rows}
    assert report["chosen_longer_chars"] == {"count": case.chosen_longer, "share": case.share,
                                             "shorter": case.chosen_shorter, "equal": case.equal}
    assert case.chosen_longer + case.chosen_shorter + case.equal == case.rows
    assert report["quirks"] == {"hh_diverges_early": 1, "hh_empty_chosen": 4}


def test_inspect_counts_match_the_raw_rows(raw, case) -> None:
    """The expected numbers above, recomputed from the raw text (HH: a shared prefix, so comparing the
    whole dialogues compares the final answers)."""
    longer = sum(len(r["chosen"]) > len(r["rejected"]) for r in raw)
    equal = sum(len(r["chosen"]) == len(r["rejected"]) for r in raw)
    assert (longer, equal, len(raw) - longer - equal) == (case.chosen_longer, case.equal, case.chosen_shorter)


def test_cli_inspect_and_validate(tmp_path: Path, capsys: pytest.CaptureFixture[str], case) -> None:
    n = case.rows
    out_json = tmp_path / "report.json"
    assert main(["data", "inspect", str(case.path), "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    assert f"{n} records from {n} rows ({n} pairs)" in out
    assert f"{case.chosen_longer} of {n} pairs ({case.percent})" in out
    assert "hh_diverges_early 1, hh_empty_chosen 4" in out
    report = json.loads(out_json.read_text())
    assert report["records"] == n and report["chosen_longer_chars"]["share"] == case.share
    assert main(["data", "validate", str(case.path)]) == 0
    assert f"ok, {n} records from {n} rows (5 with known quirks kept and flagged)" in capsys.readouterr().out
