"""Every converter output loads back to equal records (issue 14, item 4): over every test data generator,
every ``--to`` target and every output type, and over the HH excerpt and the shared HH file, whose empty
final Assistant turns are either written as HH dialogue text (which loads them) or left out and counted."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from prefkit.cli.main import main
from prefkit.data import Message, Pair, Rating, Record, Unpaired, load, write
from prefkit.data.convert import SKIP_REASONS, convert, empty_completion, to_trl
from prefkit.errors import DataError
from prefkit.testing import tiny_chat_pairs, tiny_pairs, tiny_rankings, tiny_unpaired

REPO = Path(__file__).resolve().parents[1]
HH_EXCERPT = REPO / "tests" / "data" / "hh-rlhf-harmless-200.jsonl.gz"
HH_SHARED = REPO.parent / "shared" / "data" / "hh-rlhf-harmless-1600.jsonl.gz"
TARGETS = ("trl", "pairs", "unpaired")
U, A, S = (lambda c: Message("user", c)), (lambda c: Message("assistant", c)), (lambda c: Message("system", c))


def _ratings(n: int, seed: int) -> list[Record]:
    """Ratings of a few responses per prompt, some with attributes, some tied (made no pair)."""
    out: list[Record] = []
    for i in range(n):
        for j in range(3):
            score = float((i * 7 + j * (seed + 3)) % 5)
            out.append(Rating(f"Prompt {i}?", f" answer {j} of {i}", score=score, id=f"r{i}-{j}",
                              attributes={"h": score, "s": float(j)} if j % 2 else None))
    return out


def _edge_cases(n: int, seed: int) -> list[Record]:
    """Chat pairs with an empty completion that HH text can't hold (a system prompt; no quirk flag)."""
    del n, seed
    return [
        Pair((S("Be brief."), U("Hi?")), (A(""),), (A("Hello."),), id="system-empty"),
        Pair((U("Hi?"),), (A(""),), (A("Hello."),), id="unflagged-empty"),
        Pair((U("Hi?"),), (A("Hey."),), (A("Hello."),), id="fine"),
    ]


GENERATORS: dict[str, Callable[[int, int], list[Record]]] = {
    "tiny_pairs": lambda n, seed: list(tiny_pairs(n, seed)),
    "tiny_chat_pairs": lambda n, seed: list(tiny_chat_pairs(n, seed)),
    "tiny_chat_pairs_system": lambda n, seed: list(tiny_chat_pairs(n, seed, system=True)),
    "tiny_rankings": lambda n, seed: list(tiny_rankings(n, 4, seed)),
    "tiny_unpaired": lambda n, seed: list(tiny_unpaired(n, seed)),
    "ratings": _ratings,
    "edge_cases": _edge_cases,
}


def _check_round_trip(records: list[Record], target: str, path: Path) -> None:
    """convert -> write -> load gives equal records; whatever is missing is counted as skipped."""
    out = convert(records, target, hh_text=not str(path).endswith(".parquet"))
    assert all(empty_completion(r) is None or "quirks" in r.metadata for r in out)
    if target == "trl":
        assert len(out) + out.skipped["empty_completion"] == len(records)
    if not out:
        return
    assert write(out, path) == len(out)
    back = load(path)
    assert list(back) == list(out)
    assert back.rows == len(out) and not back.problems


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz", ".parquet"])
@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name", list(GENERATORS))
def test_generated_records_round_trip(name: str, target: str, suffix: str, seed: int, tmp_path: Path) -> None:
    _check_round_trip(GENERATORS[name](6, seed), target, tmp_path / f"out{suffix}")


def test_edge_cases_are_counted_not_written() -> None:
    """An empty completion HH text can't hold is left out with its reason; the writer refuses it."""
    out = convert(_edge_cases(0, 0), "trl")
    assert [r.id for r in out] == ["fine"] and dict(out.skipped) == {"empty_completion": 2}
    assert "empty_completion" in SKIP_REASONS
    with pytest.raises(DataError, match=r"record 0 has an empty completion \('chosen'\)"):
        write(_edge_cases(0, 0)[:1], "/tmp/never-written.jsonl")


def _hh_cases() -> list:
    # The full shared file is read only by the opt-in slow run (`pytest -m slow`); a fresh clone has the excerpt.
    shared = [pytest.mark.slow,
              pytest.mark.skipif(not HH_SHARED.exists(), reason=f"{HH_SHARED} is absent (a fresh clone)")]
    return [pytest.param(HH_EXCERPT, id="hh-excerpt-200"), pytest.param(HH_SHARED, id="hh-shared-1600",
                                                                         marks=shared)]


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("hh_file", _hh_cases())
def test_hh_round_trip(hh_file: Path, target: str, suffix: str, tmp_path: Path) -> None:
    """HH's empty final turns: JSONL keeps those pairs (as HH text); Parquet and KTO rows leave them out."""
    records = load(hh_file)
    empty = [r for r in records if empty_completion(r)]
    assert empty and all(r.metadata["quirks"] for r in empty)
    _check_round_trip(list(records), target, tmp_path / f"out{suffix}")
    out = convert(records, target, hh_text=suffix != ".parquet")
    expected = len(empty) if suffix == ".parquet" or target == "unpaired" else 0
    assert out.skipped["empty_completion"] == expected
    if suffix == ".jsonl" and target != "unpaired":
        assert to_trl(empty[0]).keys() >= {"chosen", "rejected"} and "prompt" not in to_trl(empty[0])


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("hh_file", _hh_cases())
def test_cli_convert_then_validate(hh_file: Path, target: str, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    """`prefkit data convert` then `prefkit data validate`: both exit 0, and a skip is printed with why."""
    out = tmp_path / "out.jsonl"
    assert main(["data", "convert", str(hh_file), str(out), "--to", target]) == 0
    said = capsys.readouterr().out
    if target == "unpaired":
        assert "skipped: 4 empty_completion (a completion with no text" in said
    else:
        assert "skipped" not in said
    assert main(["data", "validate", str(out)]) == 0, capsys.readouterr()
    assert list(load(out)) == list(convert(load(hh_file), target))


def test_unpaired_from_hh_keeps_the_non_empty_side(tmp_path: Path) -> None:
    records = load(HH_EXCERPT)
    out = convert(records, "unpaired")
    assert len(out) == 2 * len(records) - out.skipped["empty_completion"]
    assert all(isinstance(r, Unpaired) for r in out)
