"""Converters, TRL-style dicts both ways, writers (JSONL, gzip, Parquet) and `prefkit data convert`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from prefkit.cli.main import main
from prefkit.data import (
    Message,
    Pair,
    Ranking,
    Rating,
    Unpaired,
    attributes_to_score,
    from_trl,
    load,
    pairs_to_unpaired,
    ranking_to_pairs,
    ratings_to_pairs,
    to_trl,
    write,
    write_jsonl,
    write_parquet,
)
from prefkit.errors import ConfigError, DataError

U, A = (lambda c: Message("user", c)), (lambda c: Message("assistant", c))
RATINGS = [Rating("p", "a", score=9.0, id="a"), Rating("p", "b", score=5.0, id="b"),
           Rating("p", "c", score=4.0, id="c"), Rating("q", "x", score=3.0), Rating("q", "y", score=3.0),
           Rating("solo", "z", score=1.0)]


def test_ratings_best_vs_worst() -> None:
    """Prompt p: best a (9) vs worst c (4): gap 5. Prompt q: 3 == 3, no pair. 'solo': one response."""
    out = ratings_to_pairs(RATINGS)
    assert out == [Pair("p", "a", "c", id="a>c", strength=5.0,
                        metadata={"score_chosen": 9.0, "score_rejected": 4.0})]
    assert dict(out.skipped) == {"all_scores_equal": 1, "single_response": 1}


def test_ratings_all_pairs_with_min_gap() -> None:
    """Gaps on p: a-b 4, a-c 5, b-c 1; min_gap 2 keeps a>b and a>c; q's 0 gap is counted, not kept."""
    out = ratings_to_pairs(RATINGS, "all", min_gap=2.0)
    assert [(p.chosen, p.rejected, p.strength) for p in out] == [("a", "b", 4.0), ("a", "c", 5.0)]
    assert out.skipped["gap_below_min_gap"] == 1 and out.skipped["equal_scores"] == 1


def test_ratings_best_vs_random_is_seeded() -> None:
    ratings = [Rating("p", str(i), score=float(i)) for i in range(10)]
    picks = {ratings_to_pairs(ratings, "best_vs_random", seed=s)[0].rejected for s in range(8)}
    assert len(picks) > 1 and "9" not in picks
    assert ratings_to_pairs(ratings, "best_vs_random", seed=3) == ratings_to_pairs(ratings, "best_vs_random", seed=3)


def test_ratings_grouped_by_user() -> None:
    ratings = [Rating("p", "a", score=2.0, user_id="u1"), Rating("p", "b", score=1.0, user_id="u2")]
    assert ratings_to_pairs(ratings) == [] and ratings_to_pairs(ratings).skipped["single_response"] == 2


def test_attributes_to_score_mean_and_weights() -> None:
    """mean(4, 2) = 3; weights h=0.75, s=0.25: 0.75*4 + 0.25*2 = 3.5."""
    r = Rating("p", "a", score=8.0, attributes={"h": 4.0, "s": 2.0}, scale=(1, 10))
    assert attributes_to_score([r])[0].score == 3.0
    w = attributes_to_score([r], {"h": 0.75, "s": 0.25})[0]
    assert (w.score, w.scale, w.metadata["original_score"]) == (3.5, None, 8.0)
    with pytest.raises(DataError, match="no attribute 'x'"):
        attributes_to_score([r], {"x": 1.0})
    attr_only = [Rating("p", "a", attributes={"h": 5.0}), Rating("p", "b", attributes={"h": 1.0})]
    assert ratings_to_pairs(attr_only)[0].strength == 4.0


def test_ranking_to_pairs_strategies_and_ties() -> None:
    r = Ranking("p", ("a", "b", "c", "d"), scores=(4.0, 3.0, 3.0, 1.0), tie_groups=(0, 1, 1, 2), id="r")
    all_ = ranking_to_pairs([r], "all")
    assert [(p.chosen, p.rejected) for p in all_] == [("a", "b"), ("a", "c"), ("a", "d"), ("b", "d"), ("c", "d")]
    assert all_.skipped["tied"] == 1 and all_[0].strength == 1.0 and all_[0].id == "r:0>1"
    assert [(p.chosen, p.rejected) for p in ranking_to_pairs([r], "adjacent")] == [("a", "b"), ("c", "d")]
    assert [(p.chosen, p.rejected) for p in ranking_to_pairs([r], "best_vs_rest")] == [("a", "b"), ("a", "c"),
                                                                                      ("a", "d")]
    with pytest.raises(ConfigError, match="unknown strategy"):
        ranking_to_pairs([r], "best_vs_worst")  # type: ignore[arg-type]


def test_pairs_to_unpaired() -> None:
    pairs = [Pair("p", "a", "b", id="1", weight=2.0), Pair("q", "c", "d", tie=True)]
    out = pairs_to_unpaired(pairs)
    assert out == [Unpaired("p", "a", True, id="1:chosen", weight=2.0),
                   Unpaired("p", "b", False, id="1:rejected", weight=2.0)]
    assert out.skipped["tie"] == 1


ALL_KINDS = [
    Pair("p", "a", "b", tie=True, id="1", strength=0.7, weight=2.0, user_id="u", annotator_id="x",
         rationale="why", source="ai:gpt", metadata={"k": [1, 2]}),
    Pair((Message("system", "s"), U("hi")), (A("yo"),), (A("no"), Message("tool", "t"))),
    Ranking("p", ("a", "b", "c"), scores=(3.0, 2.0, 2.0), tie_groups=(0, 1, 1), source="rm:tiny"),
    Rating("p", "r", score=4.0, attributes={"h": 5.0}, scale=(1.0, 5.0)),
    Rating((U("q"),), (A("r"),), attributes={"h": 2.0}),
    Unpaired("p", "r", False, user_id="u"),
]


@pytest.mark.parametrize("record", ALL_KINDS, ids=lambda r: type(r).__name__)
def test_trl_round_trip(record) -> None:
    assert from_trl(to_trl(record)) == record
    assert from_trl(json.loads(json.dumps(to_trl(record)))) == record


def test_trl_names() -> None:
    assert to_trl(Pair("p", "a", "b")) == {"prompt": "p", "chosen": "a", "rejected": "b"}
    assert to_trl(Unpaired("p", "a", True)) == {"prompt": "p", "completion": "a", "label": True}
    assert to_trl(ALL_KINDS[1])["prompt"] == [{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}]


@pytest.mark.parametrize("name", ["out.jsonl", "out.jsonl.gz"])
def test_jsonl_round_trip(tmp_path: Path, name: str) -> None:
    assert write_jsonl(ALL_KINDS, tmp_path / name) == len(ALL_KINDS)
    assert load(tmp_path / name) == ALL_KINDS


def test_parquet_round_trip(tmp_path: Path) -> None:
    text = [ALL_KINDS[0], ALL_KINDS[2], ALL_KINDS[3], ALL_KINDS[5], Pair("p2", "a", "b")]
    write_parquet(text, tmp_path / "t.parquet")
    assert load(tmp_path / "t.parquet") == text
    chat = [ALL_KINDS[1], ALL_KINDS[4]]
    write(chat, tmp_path / "c.parquet")
    assert load(tmp_path / "c.parquet") == chat
    with pytest.raises(DataError, match="separate files"):
        write_parquet(text + chat, tmp_path / "mixed.parquet")


def test_write_refuses_unknown_suffix(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="unsupported output type"):
        write(ALL_KINDS, tmp_path / "x.txt")


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_cli_convert_ratings_to_pairs_and_unpaired(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = _jsonl(tmp_path / "uf.jsonl", [{"prompt": "Write.", "completions": [
        {"response": "Good.", "annotations": {"h": {"Rating": "5"}, "s": {"Rating": "3"}}},
        {"response": "Bad.", "annotations": {"h": {"Rating": "1"}, "s": {"Rating": "5"}}}]}])
    out = tmp_path / "pairs.jsonl"
    assert main(["data", "convert", str(src), str(out), "--to", "pairs", "--weights", "h=1,s=0"]) == 0
    assert "wrote 1 records" in capsys.readouterr().out
    (pair,) = load(out)
    assert (pair.chosen, pair.rejected, pair.strength) == ("Good.", "Bad.", 4.0)
    assert main(["data", "convert", str(src), str(out), "--to", "pairs", "--weights", "h=0,s=1"]) == 0
    assert load(out)[0].chosen == "Bad."
    assert main(["data", "convert", str(src), str(tmp_path / "u.parquet"), "--to", "unpaired"]) == 0
    assert [u.desirable for u in load(tmp_path / "u.parquet")] == [True, False]
    assert main(["data", "convert", str(src), str(out), "--to", "pairs", "--weights", "h=x"]) == 1
    assert "each weight must be a number" in capsys.readouterr().err


def test_cli_convert_rankings_and_trl(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = _jsonl(tmp_path / "r.jsonl", [{"prompt": "p", "responses": ["a", "b", "c"], "ranks": [1, 2, 3]}])
    out = tmp_path / "p.jsonl"
    assert main(["data", "convert", str(src), str(out), "--to", "pairs", "--strategy", "adjacent"]) == 0
    assert [(p.chosen, p.rejected) for p in load(out)] == [("a", "b"), ("b", "c")]
    hh = _jsonl(tmp_path / "hh.jsonl", [{"chosen": "\n\nHuman: Hi\n\nAssistant: Yes.",
                                         "rejected": "\n\nHuman: Hi\n\nAssistant: No."}])
    assert main(["data", "convert", str(hh), str(out), "--to", "trl"]) == 0
    row = json.loads(out.read_text())
    assert row["prompt"] == [{"role": "user", "content": "Hi"}]
    assert row["chosen"] == [{"role": "assistant", "content": "Yes."}]
    capsys.readouterr()
    assert main(["data", "convert", str(src), str(out), "--to", "pairs", "--strategy", "best_vs_worst"]) == 1
    assert "unknown strategy 'best_vs_worst' for rankings" in capsys.readouterr().err


def test_cli_convert_skip_counts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = _jsonl(tmp_path / "d.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b"},
                                        {"prompt": "p", "chosen": "a", "rejected": ""}])
    assert main(["data", "convert", str(src), str(tmp_path / "o.jsonl"), "--to", "unpaired"]) == 1
    assert "line 2: field 'rejected' is empty" in capsys.readouterr().err
    assert main(["data", "convert", str(src), str(tmp_path / "o.jsonl"), "--to", "unpaired", "--on-error",
                 "skip"]) == 0
    assert "wrote 2 records" in capsys.readouterr().out


def test_jsonl_keeps_unicode_line_separators(tmp_path: Path) -> None:
    records = [Pair("p\u2028q", "a\u2029b\x85", "c\r\nd"), Pair("p", "é", "ü")]
    write_jsonl(records, tmp_path / "u.jsonl")
    (tmp_path / "crlf.jsonl").write_bytes((tmp_path / "u.jsonl").read_bytes().replace(b"\n", b"\r\n"))
    assert load(tmp_path / "u.jsonl") == records == load(tmp_path / "crlf.jsonl")
