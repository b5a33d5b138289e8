"""Every reader format and row layout behind `prefkit.data.load`."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from prefkit.data import Message, Pair, Ranking, Rating, Unpaired, hh, load
from prefkit.errors import ConfigError, DataError


def U(c: str) -> Message:
    return Message("user", c)


def A(c: str) -> Message:
    return Message("assistant", c)
ROWS = [
    {"prompt": "What is 2+2?", "chosen": "Four.", "rejected": "Five."},
    {"prompt": "Capital of France?", "chosen": "Paris.", "rejected": "Lyon.", "tie": False},
]
EXPECTED = [Pair("What is 2+2?", "Four.", "Five."), Pair("Capital of France?", "Paris.", "Lyon.")]
CHAT_ROW = {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}],
            "chosen": [{"role": "assistant", "content": "Hello."}],
            "rejected": [{"role": "assistant", "content": "Go away."}]}
CHAT_PAIR = Pair((Message("system", "Be brief."), U("Hi?")), (A("Hello."),), (A("Go away."),))


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ---- file types ----------------------------------------------------------------------------------

def test_jsonl(tmp_path: Path) -> None:
    assert load(write_jsonl(tmp_path / "d.jsonl", ROWS)) == EXPECTED


def test_jsonl_gzip_and_str_path(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl.gz"
    path.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in ROWS).encode()))
    assert load(str(path)) == EXPECTED


def test_json_array_with_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    path.write_text("[\n" + ",\n".join(json.dumps(r) for r in [*ROWS, {**ROWS[0], "rejected": " "}]) + "\n]\n")
    with pytest.raises(DataError, match=r"d\.json line 4: field 'rejected' is empty"):
        load(path)
    path.write_text(json.dumps(ROWS, indent=2))
    assert load(path) == EXPECTED


def test_json_extension_holding_json_lines(tmp_path: Path) -> None:
    assert load(write_jsonl(tmp_path / "d.json", ROWS)) == EXPECTED


def test_csv_with_message_lists_as_json_cells(tmp_path: Path) -> None:
    import csv

    path = tmp_path / "d.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["prompt", "chosen", "rejected", "weight", "tie", "user_id"])
        w.writerow([json.dumps(CHAT_ROW["prompt"]), json.dumps(CHAT_ROW["chosen"]),
                    json.dumps(CHAT_ROW["rejected"]), "0.5", "false", "7"])
        w.writerow(["[not json] still text", "multi\nline, answer", "b", "", "", ""])
    got = load(path)
    assert got[0] == Pair(CHAT_PAIR.prompt, CHAT_PAIR.chosen, CHAT_PAIR.rejected, weight=0.5, user_id="7")
    assert got[1] == Pair("[not json] still text", "multi\nline, answer", "b")


def test_csv_gzip_line_numbers_count_the_header(tmp_path: Path) -> None:
    path = tmp_path / "d.csv.gz"
    path.write_bytes(gzip.compress(b'prompt,chosen,rejected\np,"a\nb",c\np,x,\n'))
    with pytest.raises(DataError, match=r"d\.csv\.gz line 4: field 'rejected' is empty"):
        load(path)


def test_parquet(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist([CHAT_ROW, CHAT_ROW | {"prompt": [{"role": "user", "content": "Yo"}]}]),
                   path)
    got = load(path)
    assert got[0] == CHAT_PAIR and got[1].prompt == (U("Yo"),)


def test_unknown_extension_is_sniffed(tmp_path: Path) -> None:
    assert load(write_jsonl(tmp_path / "d.data", ROWS)) == EXPECTED


def test_list_of_dicts_rows_are_zero_based() -> None:
    assert load(ROWS) == EXPECTED
    with pytest.raises(DataError, match=r"^<list> row 1: field 'chosen' is empty$"):
        load([ROWS[0], {**ROWS[0], "chosen": ""}])


def test_datasets_in_memory_and_saved(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_list([CHAT_ROW, CHAT_ROW])
    assert load(ds) == [CHAT_PAIR, CHAT_PAIR]
    ds.save_to_disk(str(tmp_path / "saved"))
    assert load(tmp_path / "saved") == [CHAT_PAIR, CHAT_PAIR]
    dd = datasets.DatasetDict({"train": ds})
    with pytest.raises(DataError, match="DatasetDict with splits \\['train'\\]"):
        load(dd)
    dd.save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(DataError, match="saved DatasetDict"):
        load(tmp_path / "dd")


def test_plain_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not one written by datasets' save_to_disk"):
        load(tmp_path)


# ---- row layouts ----------------------------------------------------------------------------------

def test_trl_implicit_prompt_text_follows_trl_rule() -> None:
    (p,) = load([{"chosen": "The sky is blue.", "rejected": "The sky is green."}])
    assert (p.prompt, p.chosen, p.rejected) == ("The sky is", " blue.", " green.")


def test_trl_conversational_implicit_prompt() -> None:
    row = {"chosen": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}],
           "rejected": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "No."}]}
    assert load([row]) == [Pair((U("Hi?"),), (A("Hello."),), (A("No."),))]


def test_ultrafeedback_binarized_style_text_prompt_with_full_conversations() -> None:
    row = {"prompt": "Hi?", "prompt_id": "abc", "score_chosen": 8.0, "score_rejected": 3.0,
           "chosen": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}],
           "rejected": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "No."}]}
    (p,) = load([row])
    assert p.prompt == (U("Hi?"),) and p.chosen == (A("Hello."),)
    assert p.metadata == {"prompt_id": "abc", "score_chosen": 8.0, "score_rejected": 3.0}


def test_conversational_explicit_with_system_column() -> None:
    row = {k: v for k, v in CHAT_ROW.items()}
    row["prompt"] = row["prompt"][1:]
    assert load([row | {"system": "Be brief."}]) == [CHAT_PAIR]


def test_trl_unpaired_and_ours() -> None:
    rows = [{"prompt": "p", "completion": "good", "label": True},
            {"prompt": "p", "response": "bad", "desirable": False}]
    assert load(rows) == [Unpaired("p", "good", True), Unpaired("p", "bad", False)]


def test_hh_dialogue_parsed_and_reconstructed() -> None:
    chosen = "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: How are you?\n\nAssistant: Fine, thanks."
    rejected = "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: How are you?\n\nAssistant: Go away."
    (p,) = load([{"chosen": chosen, "rejected": rejected}])
    assert p.prompt == (U("Hi"), A("Hello!"), U("How are you?"))
    assert p.chosen == (A("Fine, thanks."),) and p.rejected == (A("Go away."),)
    assert hh.render(p.prompt + p.chosen) == chosen and hh.render(p.prompt + p.rejected) == rejected
    assert p.metadata == {}


def test_hh_quirks_kept_and_flagged() -> None:
    base = "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Tell me"
    rows = [{"chosen": base + "\n\nAssistant: ", "rejected": base + "\n\nAssistant: No."},
            {"chosen": base + "\n\nAssistant: A.  Human: more\n\nAssistant:  B", "rejected": base + "\n\nAssistant: C"}]
    empty, early = load(rows)
    assert empty.chosen == (A(""),) and empty.metadata["quirks"] == ["hh_empty_chosen"]
    assert early.chosen == (A("A.  Human: more"), A(" B")) and early.metadata["quirks"] == ["hh_diverges_early"]
    assert hh.render(early.prompt + early.chosen) == rows[1]["chosen"]


def test_hh_parse_refuses_irreversible_text() -> None:
    with pytest.raises(DataError, match="no space after its colon"):
        hh.parse("\n\nHuman:Hi\n\nAssistant: x")


def test_ratings_flat_and_ultrafeedback_like() -> None:
    flat = {"prompt": "p", "response": "r", "score": 4, "scale": [1, 5], "attributes": {"honesty": 5}}
    uf = {"instruction": "Write a poem.", "source": "evol_instruct", "completions": [
        {"model": "m1", "response": "Roses.", "overall_score": 7.5,
         "annotations": {"helpfulness": {"Rating": "4", "Rationale": "ok"}, "honesty": {"Rating": "N/A"}}},
        {"model": "m2", "text": "Violets.", "score": 3, "ratings": {"helpfulness": 2}}]}
    got = load([flat, uf])
    assert got[0] == Rating("p", "r", score=4.0, scale=(1.0, 5.0), attributes={"honesty": 5.0})
    assert got[1].prompt == "Write a poem." and got[1].attributes == {"helpfulness": 4.0}
    assert got[1].metadata == {"dataset_source": "evol_instruct", "completion_index": 0, "model": "m1"}
    assert (got[2].response, got[2].score, got[2].attributes) == ("Violets.", 3.0, {"helpfulness": 2.0})


def test_rankings_by_ranks_scores_or_order() -> None:
    rows = [{"prompt": "p", "responses": ["b", "a", "c"], "ranks": [2, 1, 3]},
            {"prompt": "p", "responses": ["b", "a", "c"], "ranks": [1, 0, 2]},
            {"prompt": "p", "responses": ["c", "a", "b"], "scores": [1.0, 9.0, 5.0]},
            {"prompt": "p", "responses": ["a", "b", "c"], "scores": [9, 9, 1]},
            {"prompt": "p", "responses": ["a", "b"]}]
    got = load(rows)
    assert got[0] == got[1] == Ranking("p", ("a", "b", "c"))
    assert got[2] == Ranking("p", ("a", "b", "c"), scores=(9.0, 5.0, 1.0))
    assert got[3].tie_groups == (0, 0, 1)
    assert got[4] == Ranking("p", ("a", "b"))


def test_user_column_and_int_ids() -> None:
    (p,) = load([{**ROWS[0], "user": 12, "id": 3, "annotator": "ann", "margin": 0.5, "source": "human"}])
    assert (p.user_id, p.id, p.annotator_id, p.strength, p.source) == ("12", "3", "ann", 0.5, "human")


def test_columns_mapping() -> None:
    rows = [{"question": "q", "good": "a", "bad": "b"}]
    assert load(rows, columns={"prompt": "question", "chosen": "good", "rejected": "bad"}) == [Pair("q", "a", "b")]
    with pytest.raises(DataError, match="no column 'qestion' \\(did you mean 'question'\\?\\)"):
        load(rows, columns={"prompt": "qestion"})
    with pytest.raises(ConfigError, match="'promt' is not a record field \\(did you mean 'prompt'\\?\\)"):
        load(rows, columns={"promt": "question"})


def test_forced_format() -> None:
    with pytest.raises(DataError, match="missing column 'responses' for a ranking"):
        load(ROWS, format="ranking")
    with pytest.raises(ConfigError, match="unknown format 'pairs'.*did you mean 'pair'"):
        load(ROWS, format="pairs")


def test_unknown_columns_warn_and_stay_in_metadata() -> None:
    with pytest.warns(UserWarning, match="unknown column 'wieght' kept in metadata \\(did you mean 'weight'\\?\\)"):
        (p,) = load([{**ROWS[0], "wieght": 2}])
    assert p.metadata == {"wieght": 2} and p.weight == 1.0


def test_undetectable_row() -> None:
    with pytest.raises(DataError, match="can't tell the record type from columns \\['a', 'b'\\]"):
        load([{"a": 1, "b": 2}])


def test_skip_mode_counts_every_dropped_row(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "d.jsonl"
    lines = [json.dumps(ROWS[0]), "{broken", json.dumps({**ROWS[0], "rejected": ""}),
             json.dumps({**ROWS[0], "chosen": "Five."}), json.dumps(ROWS[1])]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match="line 2: malformed JSON"):
        load(path)
    got = load(path, on_error="skip")
    assert got == EXPECTED and got.rows == 5
    assert dict(got.skipped) == {"malformed_json": 1, "empty": 1, "identical": 1}
    assert len(got) + sum(got.skipped.values()) == got.rows
    assert [str(e).split(":")[0] for e in got.problems] == [f"{path} line {n}" for n in (2, 3, 4)]
    assert "skipped 3 rows (" in capsys.readouterr().err
    with pytest.raises(ConfigError):
        load(path, on_error="ignore")  # type: ignore[arg-type]


def test_file_level_problems_raise_even_when_skipping(tmp_path: Path) -> None:
    (tmp_path / "e.jsonl").write_text("")
    with pytest.raises(DataError, match="file is empty"):
        load(tmp_path / "e.jsonl", on_error="skip")
    with pytest.raises(DataError, match="no such file"):
        load(tmp_path / "missing.jsonl", on_error="skip")


def test_dataset_name_in_source_column_goes_to_metadata() -> None:
    with pytest.warns(UserWarning, match="column 'source' holds 'evol_instruct', not a feedback source"):
        got = load([{**ROWS[0], "source": "evol_instruct"}, {**ROWS[1], "source": "ai:gpt-4"}])
    assert got[0].source is None and got[0].metadata == {"dataset_source": "evol_instruct"}
    assert got[1].source == "ai:gpt-4"


# ---- nothing silently changed or lost -------------------------------------------------------------

def test_forced_format_refuses_fields_it_would_drop() -> None:
    with pytest.raises(DataError, match=r"row fits two layouts: pair \(chosen, rejected\) and ranking \(responses\)"):
        load([{**ROWS[0], "responses": ["x", "y"]}], format="pair")
    with pytest.raises(DataError, match="field 'completion' has no place in a pair row"):
        load([{**ROWS[0], "completion": "x"}])


def test_two_columns_for_one_field_must_agree() -> None:
    rows = [{"question": "q", "prompt": "other", "chosen": "a", "rejected": "b"}]
    with pytest.raises(DataError, match="columns 'question' and 'prompt' both give field 'prompt'"):
        load(rows, columns={"prompt": "question"})
    same = [{"prompt": "q", "instruction": "q", "chosen": "a", "rejected": "b"}]
    assert load(same) == [Pair("q", "a", "b")]


def test_pretty_printed_json_and_json_lines_named_json(tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    path.write_text(json.dumps(ROWS[0], indent=2))
    assert load(path) == EXPECTED[:1]
    path.write_text(json.dumps(ROWS, indent=2))
    assert load(path) == EXPECTED
    (tmp_path / "d.jsonl").write_text(json.dumps(ROWS, indent=2))
    assert load(tmp_path / "d.jsonl") == EXPECTED


def test_integral_float_ranks_are_ranks() -> None:
    (r,) = load([{"prompt": "p", "responses": ["b", "a", "c"], "ranks": [2.0, 1, 3.0]}])
    assert r == Ranking("p", ("a", "b", "c"))


def test_csv_unbalanced_quote_skips_only_its_own_line(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text('prompt,chosen,rejected\np1,a,b\np2,"a,b\np3,a,b\np4,a,b\n')
    with pytest.raises(DataError, match=r"d\.csv line 3: unbalanced quote: the quoted cell in column 'chosen'"):
        load(path)
    got = load(path, on_error="skip")
    assert [r.prompt for r in got] == ["p1", "p3", "p4"] and dict(got.skipped) == {"unbalanced_quote": 1}
    assert got.rows == 4 and len(got) + sum(got.skipped.values()) == got.rows


def test_reading_restores_the_garbage_collector() -> None:
    import gc

    assert gc.isenabled()
    load(ROWS)
    assert gc.isenabled()
    with pytest.raises(DataError):
        load([{**ROWS[0], "chosen": ""}])
    assert gc.isenabled()
    gc.disable()
    try:
        load(ROWS)
        assert not gc.isenabled()  # a caller's choice is kept
    finally:
        gc.enable()


def test_datasets_format_does_not_change_values() -> None:
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_list([{**ROWS[0], "weight": 0.5}]).with_format("numpy")
    (p,) = load(ds)
    assert p == Pair("What is 2+2?", "Four.", "Five.", weight=0.5) and type(p.weight) is float
