"""The real HH-RLHF sample (1,600 harmless-base test pairs): loads, reconstructs, inspects.

Skipped when ``../shared/data/hh-rlhf-harmless-1600.jsonl.gz`` is missing.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from prefkit.cli.main import main
from prefkit.data import Pair, hh, inspect_data, load

HH_FILE = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "hh-rlhf-harmless-1600.jsonl.gz"
pytestmark = pytest.mark.skipif(not HH_FILE.exists(), reason="shared HH-RLHF sample not available")


@pytest.fixture(scope="module")
def raw() -> list[dict]:
    with gzip.open(HH_FILE, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def pairs() -> list[Pair]:
    return load(HH_FILE)


def test_loads_as_1600_conversational_pairs(pairs) -> None:
    assert len(pairs) == 1600
    assert all(isinstance(p, Pair) and isinstance(p.prompt, tuple) for p in pairs)
    assert all(p.prompt[-1].role == "user" for p in pairs if "hh_diverges_early" not in p.metadata.get("quirks", ()))


def test_every_row_reconstructs_exactly(pairs, raw) -> None:
    for p, row in zip(pairs, raw, strict=True):
        assert hh.render(p.prompt + p.chosen) == row["chosen"]
        assert hh.render(p.prompt + p.rejected) == row["rejected"]


def test_quirks_are_kept_and_flagged(pairs) -> None:
    flagged = {i: p.metadata["quirks"] for i, p in enumerate(pairs) if p.metadata.get("quirks")}
    assert sorted(q for qs in flagged.values() for q in qs) == ["hh_diverges_early"] + ["hh_empty_chosen"] * 4
    (early,) = [i for i, qs in flagged.items() if "hh_diverges_early" in qs]
    assert len(pairs[early].chosen) == 2 and len(pairs[early].rejected) == 1  # an embedded "Human:" quirk
    for i, qs in flagged.items():
        if "hh_empty_chosen" in qs:
            assert pairs[i].chosen[0].content == "" and pairs[i].rejected[0].content.strip()


def test_inspect_numbers(pairs) -> None:
    report = inspect_data(pairs)
    assert report["by_kind"] == {"pair": 1600}
    assert report["chosen_longer_chars"] == {"count": 710, "share": 0.4437, "shorter": 880, "equal": 10}
    assert report["quirks"] == {"hh_diverges_early": 1, "hh_empty_chosen": 4}


def test_cli_inspect_and_validate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_json = tmp_path / "report.json"
    assert main(["data", "inspect", str(HH_FILE), "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    assert "1600 records from 1600 rows (1600 pairs)" in out
    assert "710 of 1600 pairs (44.4%)" in out
    assert "hh_diverges_early 1, hh_empty_chosen 4" in out
    report = json.loads(out_json.read_text())
    assert report["records"] == 1600 and report["chosen_longer_chars"]["share"] == 0.4437
    assert main(["data", "validate", str(HH_FILE)]) == 0
    assert "ok, 1600 records from 1600 rows (5 with known quirks kept and flagged)" in capsys.readouterr().out
