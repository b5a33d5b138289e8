"""Corruption suite: one bad file per problem class; `prefkit data validate` names source, line, field.

Every case is written to a tmp dir by the test (no binary fixtures); each must exit 1 with its one-line
message (no traceback). File-level problems (missing, empty, unreadable) come through `main`'s
`error: ...` line.

The second half (``ROW_CASES``, ``FILE_CASES``, ``KEPT_CASES``) goes through ``prefkit.data.load``:
every bad row raises one ``DataError`` line naming the file, the line or row and the field, and with
``on_error="skip"`` exactly that row is skipped and counted while the 3 good rows around it are kept
unchanged; a file-level problem is one ``DataError`` line in both modes; nothing else ever escapes.
"""

from __future__ import annotations

import gzip
import json
import os
import socket
import subprocess
import sys
import warnings
import zlib
from decimal import Decimal
from pathlib import Path

import pytest

from prefkit.cli.main import main
from prefkit.data import Pair, Ranking, Rating, load, write_jsonl, write_parquet
from prefkit.errors import DataError, PrefkitError

P = {"prompt": "What is 2+2?", "chosen": "Four.", "rejected": "Five."}


def jl(*rows: object) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)


def chat(role: str, content: str) -> dict:
    return {"role": role, "content": content}


HH_A = "\n\nHuman: Hi there\n\nAssistant: Hello!"
HH_B = "\n\nHuman: Bye now\n\nAssistant: Goodbye!"

# (case id, file name, content, expected text in the output, extra CLI args)
CASES = [
    ("malformed_json", "bad.jsonl", jl(P, '{"prompt": "p", "chosen": "a"'),
     "bad.jsonl line 2: malformed JSON", []),
    ("not_an_object", "bad.jsonl", jl(P, "[1, 2]"),
     "bad.jsonl line 2: expected a JSON object per row, got list", []),
    ("missing_column", "bad.jsonl", jl({"prompt": "p", "chosen": "a"}),
     "bad.jsonl line 1: missing column 'rejected' for a pair", []),
    ("null_field", "bad.jsonl", jl(P, {**P, "rejected": None}),
     "bad.jsonl line 2: field 'rejected' is null for a pair", []),
    ("unknown_column", "bad.jsonl", jl(P, {**P, "wieght": 2.0}),
     "bad.jsonl line 2: unknown column 'wieght' kept in metadata (did you mean 'weight'?)", ["--strict"]),
    ("empty_text", "bad.jsonl", jl(P, P, {**P, "rejected": ""}),
     "bad.jsonl line 3: field 'rejected' is empty", []),
    ("whitespace_text", "bad.jsonl", jl({**P, "chosen": "  \n\t "}),
     "bad.jsonl line 1: field 'chosen' is empty", []),
    ("empty_prompt", "bad.jsonl", jl({**P, "prompt": " "}),
     "bad.jsonl line 1: field 'prompt' is empty", []),
    ("identical", "bad.jsonl", jl(P, {**P, "rejected": "Four."}),
     "bad.jsonl line 2: field 'rejected' is identical to 'chosen'", []),
    ("wrong_type_text", "bad.jsonl", jl({**P, "chosen": 5}),
     "bad.jsonl line 1: field 'chosen' must be text or a list of chat messages, got int", []),
    ("wrong_type_score", "bad.jsonl", jl({"prompt": "p", "response": "r", "score": "high"}),
     "bad.jsonl line 1: field 'score' must be a number, got str 'high'", []),
    ("wrong_type_label", "bad.jsonl", jl({"prompt": "p", "completion": "r", "label": "yes"}),
     "bad.jsonl line 1: field 'label' must be true or false, got str 'yes'", []),
    ("nan_score", "bad.jsonl", jl({"prompt": "p", "response": "r", "score": 1.0}, '{"prompt": "p", '
                                  '"response": "r", "score": NaN}'),
     "bad.jsonl line 2: field 'score' must be finite, got nan", []),
    ("inf_strength", "bad.jsonl", jl('{"prompt": "p", "chosen": "a", "rejected": "b", "strength": Infinity}'),
     "bad.jsonl line 1: field 'strength' must be finite, got inf", []),
    ("score_out_of_scale", "bad.jsonl", jl({"prompt": "p", "response": "r", "score": 7, "scale": [1, 5]}),
     "bad.jsonl line 1: field 'score' 7.0 is outside the scale [1.0, 5.0]", []),
    ("negative_weight", "bad.jsonl", jl({**P, "weight": -1}),
     "bad.jsonl line 1: field 'weight' must be >= 0, got -1.0", []),
    ("ranks_not_permutation", "bad.jsonl",
     jl({"prompt": "p", "responses": ["a", "b", "c"], "ranks": [1, 1, 3]}),
     "bad.jsonl line 1: field 'ranks' [1, 1, 3] is not a permutation of 1..3", []),
    ("ranks_wrong_length", "bad.jsonl", jl({"prompt": "p", "responses": ["a", "b", "c"], "ranks": [1, 2]}),
     "bad.jsonl line 1: field 'ranks' must be a list of 3 values (one per response)", []),
    ("ranking_one_response", "bad.jsonl", jl({"prompt": "p", "responses": ["a"]}),
     "bad.jsonl line 1: field 'responses' needs at least 2 responses, got 1", []),
    ("bad_role", "bad.jsonl",
     jl({"prompt": [chat("usr", "hi")], "chosen": [chat("assistant", "a")], "rejected": [chat("assistant", "b")]}),
     "bad.jsonl line 1: field 'prompt' message 0: bad message role 'usr'", []),
    ("system_not_first", "bad.jsonl",
     jl({"prompt": [chat("user", "hi"), chat("system", "be nice")], "chosen": [chat("assistant", "a")],
         "rejected": [chat("assistant", "b")]}),
     "bad.jsonl line 1: field 'prompt' message 1: a system message may only come first", []),
    ("completion_role", "bad.jsonl",
     jl({"prompt": [chat("user", "hi")], "chosen": [chat("assistant", "a")], "rejected": [chat("tool", "b")]}),
     "bad.jsonl line 1: field 'rejected' message 0 has role 'tool'", []),
    ("message_missing_content", "bad.jsonl",
     jl({"prompt": [{"role": "user"}], "chosen": [chat("assistant", "a")], "rejected": [chat("assistant", "b")]}),
     "bad.jsonl line 1: field 'prompt' message 0 has no 'content'", []),
    ("empty_chat_completion", "bad.jsonl",
     jl({"prompt": [chat("user", "hi")], "chosen": [chat("assistant", " ")], "rejected": [chat("assistant", "b")]}),
     "bad.jsonl line 1: field 'chosen' is empty", []),
    ("mixed_text_and_chat", "bad.jsonl", jl({"prompt": "hi", "chosen": "a", "rejected": [chat("assistant", "b")]}),
     "bad.jsonl line 1: field 'rejected' is chat messages but 'prompt' is text", []),
    ("implicit_no_common_prefix", "bad.jsonl", jl({"chosen": "Hello there.", "rejected": "Goodbye."}),
     "bad.jsonl line 1: 'chosen' and 'rejected' share no common prefix", []),
    ("hh_no_common_turn", "bad.jsonl", jl({"chosen": HH_A, "rejected": HH_A}, {"chosen": HH_A, "rejected": HH_B}),
     "bad.jsonl line 2: 'chosen' and 'rejected' dialogues share no first turn", []),
    ("empty_file", "empty.jsonl", "", "empty.jsonl: file is empty", []),
    ("whitespace_file", "blank.jsonl", "\n\n  \n", "blank.jsonl: file is empty", []),
    ("empty_json_array", "empty.json", "[]\n", "empty.json: no rows", []),
    ("json_array_malformed", "bad.json", '[\n  {"prompt": "p", "chosen": "a", "rejected": "b"},\n  {"prompt": }\n]',
     "bad.json line 3: malformed JSON", []),
    ("csv_missing_column", "bad.csv", "prompt,chosen\np,a\n", "bad.csv line 2: missing column 'rejected'", []),
    ("csv_bad_number", "bad.csv", "prompt,response,score\np,r,4\np,r2,abc\n",
     "bad.csv line 3: field 'score' must be a number, got 'abc'", []),
    ("csv_bad_role", "bad.csv",
     'prompt,chosen,rejected\n"[{""role"": ""robot"", ""content"": ""hi""}]","[{""role"": ""assistant"", '
     '""content"": ""a""}]","[{""role"": ""assistant"", ""content"": ""b""}]"\n',
     "bad.csv line 2: field 'prompt' message 0: bad message role 'robot'", []),
    ("csv_extra_cells", "bad.csv", "prompt,chosen,rejected\np,a,b\np,a,b,c\n",
     "bad.csv line 3: row has 4 cells but the header has 3", []),
    ("bad_gzip", "bad.jsonl.gz", b"\x1f\x8bnot really gzip", "bad.jsonl.gz: not a readable gzip file", []),
    ("bad_utf8", "bad.jsonl", jl(P).encode() + b'{"prompt": "\xff\xfe"}\n',
     "bad.jsonl line 2: field 'prompt' is not valid UTF-8 text (byte 0xFF)", []),
    ("bad_parquet", "bad.parquet", b"PAR1 this is not parquet", "bad.parquet: not a readable Parquet file", []),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_validate_reports_problem(case, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, name, content, expected, args = case
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    rc = main(["data", "validate", str(path), *args])
    out, err = capsys.readouterr()
    text = (out + err).replace(str(tmp_path) + "/", "")
    assert rc == 1, text
    assert expected in text, text
    assert "Traceback" not in text
    line = next(x for x in text.splitlines() if expected in x)
    assert line.strip().startswith((name, "error: ", "warning: ")), line


def test_suite_covers_enough_classes() -> None:
    assert len(CASES) >= 20


def test_missing_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "validate", "no/such/file.jsonl"]) == 1
    assert "no/such/file.jsonl: no such file or folder" in capsys.readouterr().err


def test_good_file_exits_zero(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "good.jsonl"
    path.write_text(jl(P, {**P, "prompt": "Say hi"}))
    assert main(["data", "validate", str(path)]) == 0
    assert "ok, 2 records from 2 rows" in capsys.readouterr().out


def test_unknown_column_is_only_a_warning_without_strict(tmp_path: Path, capsys) -> None:
    path = tmp_path / "extra.jsonl"
    path.write_text(jl({**P, "wieght": 2.0}))
    assert main(["data", "validate", str(path)]) == 0
    assert "did you mean 'weight'?" in capsys.readouterr().out


def test_all_problems_listed_with_counts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "many.jsonl"
    path.write_text(jl(P, {**P, "rejected": ""}, "{oops", {**P, "chosen": " "}, P))
    assert main(["data", "validate", str(path)]) == 1
    out, err = capsys.readouterr()
    assert [line.split(":")[0] for line in out.splitlines()] == [f"{path} line {n}" for n in (2, 3, 4)]
    assert "3 problems in 5 rows (2 empty, 1 malformed_json)" in err


def test_gzip_file_is_checked_too(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.jsonl.gz"
    path.write_bytes(gzip.compress(jl(P, {**P, "rejected": " "}).encode()))
    assert main(["data", "validate", str(path)]) == 1
    assert f"{path} line 2: field 'rejected' is empty" in capsys.readouterr().out


def test_subprocess_no_traceback(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(jl(P, {**P, "rejected": ""}))
    proc = subprocess.run([sys.executable, "-m", "prefkit.cli.main", "data", "validate", str(path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert f"{path} line 2: field 'rejected' is empty" in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr
    proc = subprocess.run([sys.executable, "-m", "prefkit.cli.main", "data", "validate", str(tmp_path / "x.jsonl")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip().count("\n") == 0 and "no such file" in proc.stderr


# ===================================================================================================
# load(): a bad row is one DataError line (file, line/row, field) and, with on_error="skip", is skipped
# and counted alone; the good rows around it are kept unchanged. Nothing but DataError escapes.

GOOD = [{"prompt": f"Question {i}?", "chosen": f"Answer {i}.", "rejected": f"Wrong {i}."} for i in range(3)]
GOOD_PAIRS = [Pair(r["prompt"], r["chosen"], r["rejected"]) for r in GOOD]
G = {"prompt": "p", "chosen": "a", "rejected": "b"}
BIG = 10**400  # an integer JSON can hold and float() can't
HUGE = "7" * 5000  # over Python's 4,300-digit int-from-text limit


def around(bad: object) -> str:
    """JSON Lines: three good rows with ``bad`` on line 3."""
    return jl(GOOD[0], GOOD[1], bad, GOOD[2])


def around_bytes(bad: bytes) -> bytes:
    return jl(GOOD[0], GOOD[1]).encode() + bad + b"\n" + jl(GOOD[2]).encode()


def csv_around(bad_line: str, extra: str = "") -> str:
    """CSV: header, two good rows, ``bad_line`` on line 4, a good row on line 5 (``extra``: more columns)."""
    good = [f"{r['prompt']},{r['chosen']},{r['rejected']}" + "," * extra.count(",") + "\n" for r in GOOD]
    return f"prompt,chosen,rejected{extra}\n" + good[0] + good[1] + bad_line + good[2]


def json_array_around(bad: str) -> str:
    """A pretty-printed JSON array: good rows, ``bad`` (JSON text) as the third element, on line 12."""
    items = [json.dumps(GOOD[0], indent=2), json.dumps(GOOD[1], indent=2), bad, json.dumps(GOOD[2], indent=2)]
    return "[\n" + ",\n".join(items) + "\n]\n"


def nested(n: int) -> str:
    return "[" * n + "]" * n


def deep_list(n: int) -> list:
    value: list = []
    for _ in range(n - 1):
        value = [value]
    return value


def raw_row(**extra: str) -> str:
    """A pair row as JSON text with ``extra`` fields given as raw JSON."""
    return '{"prompt": "p", "chosen": "a", "rejected": "b"' + "".join(f', "{k}": {v}' for k, v in extra.items()) + "}"


def chat_row(**message_extra: object) -> dict:
    return {"prompt": [chat("user", "hi")], "chosen": [{**chat("assistant", "a"), **message_extra}],
            "rejected": [chat("assistant", "b")]}


# (case id, file name, content, parts of the message, field, reason); the bad row is on line 3 (JSONL),
# line 4 (CSV) or line 12 (JSON array)
ROW_CASES = [
    # numbers out of range (OverflowError before)
    ("weight_over_1e308", "d.jsonl", around({**G, "weight": BIG}),
     ["line 3: field 'weight' is too large to use as a number (a 401-digit integer"], "weight", "out_of_range"),
    ("strength_over_1e308", "d.jsonl", around({**G, "strength": -BIG}), ["field 'strength' is too large"],
     "strength", "out_of_range"),
    ("score_over_1e308", "d.jsonl", around({"prompt": "p", "response": "r", "score": BIG}),
     ["field 'score' is too large"], "score", "out_of_range"),
    ("scale_over_1e308", "d.jsonl", around({"prompt": "p", "response": "r", "score": 3, "scale": [1, BIG]}),
     ["field 'scale' is too large"], "scale", "out_of_range"),
    ("ranking_scores_over_1e308", "d.jsonl", around({"prompt": "p", "responses": ["a", "b"], "scores": [BIG, 1]}),
     ["field 'scores[0]' is too large"], "scores[0]", "out_of_range"),
    ("attribute_over_1e308", "d.jsonl", around({"prompt": "p", "response": "r", "attributes": {"help": BIG}}),
     ["field 'attributes.help' is too large"], "attributes.help", "out_of_range"),
    ("csv_weight_1e400", "d.csv", csv_around("p,a,b,1e400\n", extra=",weight"),
     ["line 4: field 'weight' is too large to use as a number ('1e400'"], "weight", "out_of_range"),
    # integers over Python's digit limit (ValueError before, aborting the whole file even when skipping)
    ("weight_5000_digits", "d.jsonl", around(raw_row(weight=HUGE)),
     ["line 3: field 'weight' holds an integer with 5000 digits, too large"], "weight", "out_of_range"),
    ("metadata_5000_digits", "d.jsonl", around(raw_row(metadata='{"n": [1, ' + HUGE + "]}")),
     ["field 'metadata' holds an integer with 5000 digits (at metadata.n[1])"], "metadata", "out_of_range"),
    ("id_5000_digits", "d.jsonl", around(raw_row(id=HUGE)), ["field 'id' holds an integer with 5000 digits"],
     "id", "out_of_range"),
    ("json_array_5000_digits", "d.json", json_array_around(raw_row(weight="-" + HUGE)),
     ["line 12: field 'weight' holds an integer with 5000 digits"], "weight", "out_of_range"),
    ("csv_json_cell_5000_digits", "d.csv", csv_around(f'p,a,b,"{{""n"": {HUGE}}}"\n', extra=",metadata"),
     ["line 4: field 'metadata' (JSON text): field 'n' holds an integer with 5000 digits"], "metadata",
     "out_of_range"),
    # nesting (RecursionError before)
    ("metadata_nested_100k", "d.jsonl", around(raw_row(metadata='{"x": ' + nested(100_000) + "}")),
     ["line 3: field 'metadata' is nested too deeply"], "metadata", "too_deep"),
    ("metadata_nested_300", "d.jsonl", around(raw_row(metadata='{"x": ' + nested(300) + "}")),
     ["line 3: field 'metadata' is nested too deeply"], "metadata", "too_deep"),
    ("column_nested_300", "d.jsonl", around(raw_row(notes=nested(300))),
     ["line 3: field 'notes' is nested too deeply"], "notes", "too_deep"),
    ("json_array_nested_100k", "d.json", json_array_around(raw_row(metadata=nested(100_000))),
     ["line 12: field 'metadata' is nested too deeply"], "metadata", "too_deep"),
    ("csv_json_cell_nested_100k", "d.csv", csv_around(f'p,a,b,"{nested(100_000)}"\n', extra=",metadata"),
     ["line 4: field 'metadata' is nested too deeply"], "metadata", "too_deep"),
    # invalid Unicode: bad UTF-8 bytes and lone surrogates (validate said ok; the tokenizer crashed)
    ("bad_utf8_in_prompt", "d.jsonl", around_bytes(b'{"prompt": "caf\xe9", "chosen": "a", "rejected": "b"}'),
     ["line 3: field 'prompt' is not valid UTF-8 text (byte 0xE9)"], "prompt", "encoding"),
    ("bad_utf8_in_message", "d.jsonl", around_bytes(
        b'{"prompt": [{"role": "user", "content": "hi"}], "chosen": [{"role": "assistant", "content": "\xff"}], '
        b'"rejected": [{"role": "assistant", "content": "b"}]}'),
     ["line 3: field 'chosen' is not valid UTF-8 text (byte 0xFF at chosen[0].content)"], "chosen", "encoding"),
    ("bad_utf8_cut_character", "d.jsonl", around_bytes(b'{"prompt": "p", "chosen": "\xe2\x82", "rejected": "b"}'),
     ["line 3: field 'chosen' is not valid UTF-8 text (byte 0xE2)"], "chosen", "encoding"),
    ("bad_utf8_outside_text", "d.jsonl", around_bytes(b'{"prompt": "p", "chosen": "a", "rejected": "b"}\xff'),
     ["line 3: not valid UTF-8 text (byte 0xFF at character 48)"], None, "encoding"),
    ("bad_utf8_csv", "d.csv", csv_around("p,a,b\udcff\n").encode("utf-8", "surrogateescape"),  # byte 0xFF
     ["line 4: field 'rejected' is not valid UTF-8 text (byte 0xFF at character 2)"], "rejected", "encoding"),
    ("lone_surrogate_prompt", "d.jsonl", around('{"prompt": "p\\ud800", "chosen": "a", "rejected": "b"}'),
     ["line 3: field 'prompt' holds invalid Unicode: a lone surrogate '\\ud800' at character 2"], "prompt",
     "encoding"),
    ("lone_surrogate_message", "d.jsonl", around(json.dumps(chat_row()).replace('"a"', '"\\udc00"')),
     ["line 3: field 'chosen' holds invalid Unicode: a lone surrogate '\\udc00' at character 1 "
      "(at chosen[0].content)"], "chosen", "encoding"),
    ("reversed_surrogate_pair", "d.jsonl", around('{"prompt": "\\ude00\\ud83d", "chosen": "a", "rejected": "b"}'),
     ["field 'prompt' holds invalid Unicode: a lone surrogate '\\ude00'"], "prompt", "encoding"),
    ("lone_surrogate_metadata", "d.jsonl", around(raw_row(metadata='{"note": "x\\uDBFF"}')),
     ["line 3: field 'metadata' holds invalid Unicode", "(at metadata.note)"], "metadata", "encoding"),
    ("lone_surrogate_json_array", "d.json", json_array_around('{"prompt": "p", "chosen": "\\ud800", "rejected": "b"}'),
     ["line 12: field 'chosen' holds invalid Unicode"], "chosen", "encoding"),
    ("lone_surrogate_csv_message_cell", "d.csv", csv_around(
        'p,"[{""role"": ""assistant"", ""content"": ""\\ud800""}]","[{""role"": ""assistant"", '
        '""content"": ""b""}]"\n'), ["line 4: field 'chosen' holds invalid Unicode", "(at chosen[0].content)"], "chosen", "encoding"),
    # silent changes: now errors
    ("message_tool_calls", "d.jsonl", around(chat_row(tool_calls=[{"id": "1", "function": {"name": "f"}}])),
     ["line 3: field 'chosen' message 0 has key 'tool_calls', which prefkit can't keep"], "chosen", "unknown_key"),
    ("message_name", "d.jsonl", around({**chat_row(), "prompt": [{**chat("user", "hi"), "name": "bob"}]}),
     ["line 3: field 'prompt' message 0 has key 'name'"], "prompt", "unknown_key"),
    ("message_function_call", "d.jsonl", around(chat_row(function_call={"name": "f", "arguments": "{}"})),
     ["field 'chosen' message 0 has key 'function_call'"], "chosen", "unknown_key"),
    ("duplicate_key", "d.jsonl", around('{"prompt": "p", "chosen": "a", "chosen": "c", "rejected": "b"}'),
     ["line 3: duplicate key 'chosen' in a JSON object"], "chosen", "duplicate_key"),
    ("duplicate_key_in_message", "d.jsonl",
     around(json.dumps(chat_row()).replace('"content": "a"', '"content": "a", "content": "z"')),
     ["line 3: duplicate key 'content'"], "content", "duplicate_key"),
    ("duplicate_key_json_array", "d.json", json_array_around('{"prompt": "p", "prompt": "q", "chosen": "a", '
                                                            '"rejected": "b"}'),
     ["line 12: duplicate key 'prompt'"], "prompt", "duplicate_key"),
    ("pair_and_ranking", "d.jsonl", around({**G, "responses": ["x", "y"]}),
     ["line 3: row fits two layouts: ranking (responses) and pair (chosen, rejected)"], "chosen", "two_layouts"),
    ("pair_and_unpaired", "d.jsonl", around({**G, "label": True}),
     ["row fits two layouts: pair (chosen, rejected) and unpaired (label)"], "label", "two_layouts"),
    ("pair_and_rating", "d.jsonl", around({**G, "score": 3}),
     ["row fits two layouts: pair (chosen, rejected) and rating (score)"], "score", "two_layouts"),
    ("unpaired_and_rating", "d.jsonl", around({"prompt": "p", "response": "r", "label": True, "score": 2}),
     ["row fits two layouts: unpaired (label) and rating (score)"], "score", "two_layouts"),
    ("ultrafeedback_and_ranking", "d.jsonl",
     around({"prompt": "p", "completions": [{"response": "r", "score": 1}], "responses": ["x", "y"]}),
     ["row fits two layouts: ultrafeedback (completions) and ranking (responses)"], "responses", "two_layouts"),
    ("pair_with_scale", "d.jsonl", around({**G, "scale": [1, 5]}),
     ["line 3: field 'scale' has no place in a pair row"], "scale", "unused_field"),
    ("prompt_and_instruction_differ", "d.jsonl", around({**G, "instruction": "q"}),
     ["line 3: columns 'prompt' and 'instruction' both give field 'prompt', with different values"], "prompt",
     "duplicate_column"),
    ("metadata_key_and_column", "d.jsonl", around({**G, "metadata": {"topic": "x"}, "topic": "y"}),
     ["line 3: field 'topic' is both a column and a key of 'metadata'"], "topic", "duplicate_column"),
    ("csv_unbalanced_quote_to_end", "d.csv", csv_around('Question x?,Answer x.,"Wrong x.\n'),
     ["line 4: unbalanced quote: the quoted cell in column 'rejected' that starts on this line",
      "runs on to line 5"], "rejected", "unbalanced_quote"),
    ("csv_unbalanced_quote_closed_by_next", "d.csv",
     csv_around('Question x?,"Answer x.,Wrong x.\n').replace("Question 2?,", '"Question 2?",'),
     ["line 4: unbalanced quote: the quoted cell in column 'chosen'"], "chosen", "unbalanced_quote"),
    # misleading messages: now name the real problem
    ("chosen_list_of_numbers", "d.jsonl", around({"prompt": "p", "chosen": [1, 2], "rejected": [3, 4]}),
     ["line 3: field 'chosen' must be text or a list of chat messages", "message 0 is int 1"], "chosen",
     "wrong_type"),
    ("chosen_list_of_numbers_text_rejected", "d.jsonl", around({"prompt": "p", "chosen": [1, 2], "rejected": "b"}),
     ["line 3: field 'chosen' must be text or a list of chat messages"], "chosen", "wrong_type"),
    ("implicit_chosen_list_of_numbers", "d.jsonl", around({"chosen": [1, 2], "rejected": [1, 3]}),
     ["line 3: field 'chosen' must be text or a list of chat messages"], "chosen", "wrong_type"),
    ("ranks_not_whole", "d.jsonl", around({"prompt": "p", "responses": ["a", "b"], "ranks": [1.5, 2]}),
     ["line 3: field 'ranks' must be integers (1 = best), got 1.5"], "ranks", "wrong_type"),
    ("ranks_text", "d.jsonl", around({"prompt": "p", "responses": ["a", "b"], "ranks": ["1", "2"]}),
     ["field 'ranks' must be integers (1 = best), got str '1'"], "ranks", "wrong_type"),
]


def _write(path: Path, content: str | bytes) -> Path:
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def _quiet_load(source: object, **kwargs: object):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load(source, **kwargs)


def _one_line(err: BaseException, start: str | tuple[str, ...]) -> str:
    assert type(err) is DataError, repr(err)
    text = str(err)
    assert "\n" not in text and text.startswith(start), text
    return text


@pytest.mark.parametrize("case", ROW_CASES, ids=[c[0] for c in ROW_CASES])
def test_bad_row_is_one_line_and_skipped_alone(case, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, name, content, parts, field, reason = case
    path = _write(tmp_path / name, content)
    with pytest.raises(PrefkitError) as info:
        _quiet_load(path)
    text = _one_line(info.value, f"{path} line ")
    for part in parts:
        assert part in text, text
    assert (info.value.field, info.value.reason) == (field, reason)
    got = _quiet_load(path, on_error="skip")
    assert list(got) == GOOD_PAIRS and got.rows == 4  # the good rows, unchanged, and nothing else
    assert dict(got.skipped) == {reason: 1} and [str(e) for e in got.problems] == [text]
    assert f"3 records from 4 rows; skipped 1 rows (1 {reason})" in capsys.readouterr().err


def test_suite_has_enough_cases() -> None:
    assert len(CASES) + len(ROW_CASES) + len(LIST_CASES) + len(FILE_CASES) + len(KEPT_CASES) >= 60


# ---- in-memory rows (a list of dicts): the same checks, located as "<list> row N" ----------------

LIST_CASES = [
    ("decimal_too_large", {**G, "weight": Decimal("1E+400")}, "field 'weight' is too large to use as a number",
     "weight", "out_of_range"),
    ("decimal_nan", {**G, "strength": Decimal("NaN")}, "field 'strength' must be finite, got nan", "strength",
     "non_finite"),
    ("int_over_1e308", {**G, "weight": BIG}, "field 'weight' is too large", "weight", "out_of_range"),
    ("id_over_digit_limit", {**G, "id": 10**5000}, "field 'id' is an integer too long to use as an id", "id",
     "out_of_range"),
    ("lone_surrogate", {**G, "rejected": "b\ud800"}, "field 'rejected' holds invalid Unicode", "rejected",
     "encoding"),
    ("lone_surrogate_rationale", {**G, "rationale": "\udfff"}, "field 'rationale' holds invalid Unicode",
     "rationale", "encoding"),
    ("deep_metadata", {**G, "metadata": {"x": deep_list(500)}}, "field 'metadata' is nested too deeply",
     "metadata", "too_deep"),
    ("tool_calls", chat_row(tool_calls=[{"id": "1"}]), "field 'chosen' message 0 has key 'tool_calls'", "chosen",
     "unknown_key"),
    ("ranks_floats_not_whole", {"prompt": "p", "responses": ["a", "b"], "ranks": [0.5, 1]},
     "field 'ranks' must be integers", "ranks", "wrong_type"),
    ("weight_text", {**G, "weight": "heavy"}, "field 'weight' must be a number, got str 'heavy'", "weight",
     "wrong_type"),
]


@pytest.mark.parametrize("case", LIST_CASES, ids=[c[0] for c in LIST_CASES])
def test_bad_list_row_is_one_line_and_skipped_alone(case, capsys: pytest.CaptureFixture[str]) -> None:
    _, bad, part, field, reason = case
    rows = [GOOD[0], GOOD[1], bad, GOOD[2]]
    with pytest.raises(PrefkitError) as info:
        _quiet_load(rows)
    text = _one_line(info.value, "<list> row 2: ")
    assert part in text and (info.value.field, info.value.reason) == (field, reason), text
    got = _quiet_load(rows, on_error="skip")
    assert list(got) == GOOD_PAIRS and dict(got.skipped) == {reason: 1}


# ---- file-level problems: one DataError line naming the file, in both modes, never a hang -------------


def _gzip(tmp: Path, name: str, corrupt: object) -> Path:
    data = bytearray(gzip.compress(around(G).encode() * 20, mtime=0))
    return _write(tmp / name, bytes(corrupt(data)))


def _flip_middle(data: bytearray) -> bytearray:
    for i in range(20, 40):
        data[i] ^= 0xFF
    return data


def _bad_crc(data: bytearray) -> bytearray:
    data[-8] ^= 0xFF
    return data


def _fifo(tmp: Path) -> Path:
    os.mkfifo(tmp / "pipe.jsonl")
    return tmp / "pipe.jsonl"


def _socket(tmp: Path) -> Path:
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp / "s.jsonl"))
    sock.close()
    return tmp / "s.jsonl"


def _symlink(tmp: Path, links: dict[str, str]) -> Path:
    for name, target in links.items():
        os.symlink(target, tmp / name)
    return tmp / next(iter(links))


def _saved(tmp: Path, edit: object = None, features: object = None, rows: object = None) -> Path:
    datasets = pytest.importorskip("datasets")
    folder = tmp / "saved"
    ds = datasets.Dataset.from_list(rows or GOOD) if features is None else \
        datasets.Dataset.from_list(rows, features=datasets.Features(features(datasets)))
    ds.save_to_disk(str(folder))
    if edit is not None:
        edit(folder)
    return folder


def _arrow_file(folder: Path) -> Path:
    return next(folder.glob("*.arrow"))


def _set_state_file(name: str):
    def edit(folder: Path) -> None:
        state = json.loads((folder / "state.json").read_text())
        state["_data_files"] = [{"filename": name}]
        (folder / "state.json").write_text(json.dumps(state))
    return edit


def _fifo_data_file(folder: Path) -> None:
    arrow = _arrow_file(folder)
    arrow.unlink()
    os.mkfifo(arrow)


def _image_rows() -> list[dict]:
    return [{**r, "image": {"bytes": b"not an image", "path": None}} for r in GOOD]


def _image_features(datasets) -> dict:
    return {"prompt": datasets.Value("string"), "chosen": datasets.Value("string"),
            "rejected": datasets.Value("string"), "image": datasets.Image()}


# (case id, builder(tmp_path) -> path, parts of the message)
FILE_CASES = [
    ("gzip_corrupt_deflate", lambda t: _gzip(t, "d.jsonl.gz", _flip_middle),
     ["not a readable gzip file: the compressed data is corrupt"]),
    ("gzip_truncated", lambda t: _gzip(t, "d.jsonl.gz", lambda d: d[: len(d) // 2]),
     ["not a readable gzip file: the compressed data is cut short"]),
    ("gzip_bad_crc", lambda t: _gzip(t, "d.jsonl.gz", _bad_crc), ["not a readable gzip file: CRC check failed"]),
    ("gzip_bad_header", lambda t: _write(t / "d.jsonl.gz", b"\x1f\x8b\x08\xff" + b"\x00" * 30),
     ["not a readable gzip file"]),
    ("gz_name_plain_text", lambda t: _write(t / "d.jsonl.gz", around(G)), ["not a readable gzip file"]),
    ("raw_deflate_named_gz", lambda t: _write(t / "d.csv.gz", zlib.compress(b"prompt,chosen\n")),
     ["not a readable gzip file"]),
    ("fifo", _fifo, ["is a named pipe (FIFO), not a regular file"]),
    ("socket", _socket, ["is a socket, not a regular file"]),
    ("char_device", lambda t: Path("/dev/null"), ["is a character device, not a regular file"]),
    ("symlink_loop", lambda t: _symlink(t, {"loop.jsonl": "loop.jsonl"}), ["is a symlink loop"]),
    ("symlink_loop_of_two", lambda t: _symlink(t, {"a.jsonl": "b.jsonl", "b.jsonl": "a.jsonl"}),
     ["is a symlink loop"]),
    ("broken_symlink", lambda t: _symlink(t, {"gone.jsonl": "nowhere.jsonl"}), ["is a broken symlink"]),
    ("symlink_to_fifo", lambda t: _symlink(t, {"l.jsonl": str(_fifo(t))}), ["is a named pipe (FIFO)"]),
    ("utf16", lambda t: _write(t / "d.jsonl", around(G).encode("utf-16")), ["is UTF-16 text; save it as UTF-8"]),
    ("binary", lambda t: _write(t / "d.jsonl", b"\x00\x01\xff\xfe" * 50), ["not UTF-8 text (byte 0xFF"]),
    ("csv_duplicate_header", lambda t: _write(t / "d.csv", "prompt,chosen,rejected,chosen\np,a,b,c\n"),
     ["line 1: the header names column 'chosen' twice (columns 2 and 4)"]),
    ("pretty_json_malformed", lambda t: _write(t / "d.json", json.dumps(G, indent=2).replace('"a"', "a")),
     ["line 3: malformed JSON", "one JSON document spanning lines"]),
    ("json_wrapper_object", lambda t: _write(t / "d.json", json.dumps({"data": GOOD, "version": 1}, indent=2)),
     ["holds one JSON object whose 'data' is a list of objects, not rows"]),
    ("bad_dataset_dict_json", lambda t: _write((t / "dd").mkdir() or t / "dd" / "dataset_dict.json",
                                               '{"splits": ["train",') and t / "dd",
     ["dataset_dict.json is not valid JSON"]),
    ("bad_state_json", lambda t: _saved(t, lambda f: (f / "state.json").write_text("{nope")),
     ["state.json is not valid JSON"]),
    ("bad_dataset_info_json", lambda t: _saved(t, lambda f: (f / "dataset_info.json").write_text("[1, 2")),
     ["dataset_info.json is not valid JSON"]),
    ("missing_state_json", lambda t: _saved(t, lambda f: (f / "state.json").unlink()),
     ["is a datasets folder without state.json"]),
    ("state_names_outside_file", lambda t: _saved(t, _set_state_file("../../etc/passwd")),
     ["state.json names a data file '../../etc/passwd' that is not a plain file name"]),
    ("state_names_absolute_file", lambda t: _saved(t, _set_state_file("/etc/passwd")),
     ["that is not a plain file name"]),
    ("data_file_is_fifo", lambda t: _saved(t, _fifo_data_file), ["is a named pipe (FIFO), not a regular file"]),
    ("data_file_missing", lambda t: _saved(t, lambda f: _arrow_file(f).unlink()), ["data file 'data-00000-of-00001.arrow' does not exist"]),
    ("data_file_corrupt", lambda t: _saved(t, lambda f: _arrow_file(f).write_bytes(b"garbage" * 10)),
     ["not a readable datasets folder"]),
    ("image_column_folder", lambda t: _saved(t, rows=_image_rows(), features=_image_features),
     ["column 'image' is a datasets Image feature: reading it would open the files its rows name",
      "ds.remove_columns(['image'])"]),
]


@pytest.mark.timeout(60)  # a FIFO that got opened would hang here
@pytest.mark.parametrize("case", FILE_CASES, ids=[c[0] for c in FILE_CASES])
def test_file_level_problem_is_one_line(case, tmp_path: Path) -> None:
    _, build, parts = case
    path = build(tmp_path)
    for mode in ("raise", "skip"):
        with pytest.raises(PrefkitError) as info:
            _quiet_load(path, on_error=mode)
        text = _one_line(info.value, (f"{path}: ", f"{path} line "))
        for part in parts:
            assert part in text, text


@pytest.mark.timeout(60)
def test_image_column_in_memory_is_refused_without_opening_its_paths(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    fifo = _fifo(tmp_path)  # decoding the column would open (and block on) this path
    rows = [{**r, "media": {"frames": [{"bytes": None, "path": str(fifo)}]}} for r in GOOD]
    features = {**_image_features(datasets), "media": {"frames": datasets.List(datasets.Image())}}
    del features["image"]
    ds = datasets.Dataset.from_list(rows, features=datasets.Features(features))
    with pytest.raises(DataError, match=r"^<Dataset>: column 'media' is a datasets Image feature") as info:
        load(ds)
    assert info.value.field == "media" and info.value.reason == "media_column"
    assert load(ds.remove_columns(["media"])) == GOOD_PAIRS


# ---- what used to be misread is now read right, and nothing is lost ---------------------------------

KEPT_CASES = [
    ("pretty_json_array", "d.json", json.dumps(GOOD, indent=2), GOOD_PAIRS),
    ("pretty_json_array_named_jsonl", "d.jsonl", json.dumps(GOOD, indent=4), GOOD_PAIRS),
    ("pretty_json_object", "d.json", json.dumps(GOOD[0], indent=2), GOOD_PAIRS[:1]),
    ("pretty_json_object_unknown_extension", "d.txt", json.dumps(GOOD[1], indent=2), GOOD_PAIRS[1:2]),
    ("json_object_spanning_lines", "d.jsonl", '{"prompt": "Question 0?",\n "chosen": "Answer 0.",\n'
                                             ' "rejected": "Wrong 0."}\n', GOOD_PAIRS[:1]),
    ("ranks_integral_floats", "d.jsonl", jl({"prompt": "p", "responses": ["b", "a"], "ranks": [2.0, 1.0]}),
     [Ranking("p", ("a", "b"))]),
    ("escaped_surrogate_pair", "d.jsonl", jl({**G, "chosen": "ok \U0001F600"}),  # json.dumps escapes it as a pair
     [Pair("p", "ok \U0001F600", "b")]),
    ("null_and_empty_message_extras", "d.jsonl", jl(chat_row(tool_calls=None, name="", function_call={})),
     [Pair((chat("user", "hi"),), (chat("assistant", "a"),), (chat("assistant", "b"),))]),
    ("same_prompt_twice", "d.jsonl", jl({**G, "instruction": "p"}), [Pair("p", "a", "b")]),
    ("null_instruction", "d.jsonl", jl({**G, "instruction": None}), [Pair("p", "a", "b")]),
    ("csv_multiline_quoted_cell", "d.csv", 'prompt,chosen,rejected\n"Line one,\nline two",a,b\n',
     [Pair("Line one,\nline two", "a", "b")]),
    ("csv_quote_inside_unquoted_cell", "d.csv", 'prompt,chosen,rejected\nsay "hi",a,b\n',
     [Pair('say "hi"', "a", "b")]),
    ("non_ascii_text", "d.jsonl", jl({**G, "prompt": "Grüße, 你好"}), [Pair("Grüße, 你好", "a", "b")]),
]


@pytest.mark.parametrize("case", KEPT_CASES, ids=[c[0] for c in KEPT_CASES])
def test_read_as_meant(case, tmp_path: Path) -> None:
    _, name, content, expected = case
    path = _write(tmp_path / name, content)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and no warning either
        got = load(path)
    assert list(got) == expected and not got.skipped and got.rows == len(expected)


def test_decimal_values_are_numbers(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{**G, "weight": Decimal("0.5"), "strength": Decimal("2")}]
    assert load(rows)[0].weight == 0.5
    table = pa.table({"prompt": ["p"], "chosen": ["a"], "rejected": ["b"],
                      "weight": pa.array([Decimal("0.25")], pa.decimal128(5, 2))})
    pq.write_table(table, tmp_path / "d.parquet")
    (p,) = load(tmp_path / "d.parquet")
    assert p.weight == 0.25 and p.metadata == {}


def test_csv_cell_that_looks_like_swallowed_rows_warns(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path / "d.csv", csv_around('Question x?,Answer x.,"Wrong x.\n').replace(
        "Wrong 2.\n", 'Wrong 2."\n'))  # the stray quote is closed at a line end: parses cleanly
    with pytest.warns(UserWarning, match=r"d\.csv line 4: the cell in column 'rejected' spans lines up to line 5 "
                                         r"and holds 1 line\(s\) that look like rows of this file"):
        got = load(path)
    assert len(got) == 3
    assert main(["data", "validate", str(path), "--strict"]) == 1
    assert "look like rows of this file" in capsys.readouterr().out


# ---- writers: a record JSON or UTF-8 can't hold is a DataError naming it --------------------------

@pytest.mark.parametrize("bad", [{"note": "\ud800"}, {"x": float("nan")}, {"x": object()},
                                 {"x": deep_list(50_000)}],
                         ids=["surrogate", "nan", "object", "deep"])
def test_writers_raise_data_error(bad: dict, tmp_path: Path) -> None:
    records = [GOOD_PAIRS[0], Pair("p", "a", "b", metadata=bad)]
    with pytest.raises(DataError, match=r"record 1 "):
        write_jsonl(records, tmp_path / "out.jsonl")
    with pytest.raises(DataError, match=r"record 1 "):
        write_parquet(records, tmp_path / "out.parquet")
    assert not (tmp_path / "out.jsonl").exists()


def test_rating_score_and_scale_accept_decimals() -> None:
    (r,) = load([{"prompt": "p", "response": "r", "score": Decimal("4"), "scale": [Decimal("1"), 5]}])
    assert r == Rating("p", "r", score=4.0, scale=(1.0, 5.0))


# ---- through the CLI: exit 1, one line on stderr, no traceback, never a hang ------------------------

CLI_CASES = [
    ("fifo", _fifo, "is a named pipe (FIFO)"),
    ("symlink_loop", lambda t: _symlink(t, {"loop.jsonl": "loop.jsonl"}), "is a symlink loop"),
    ("gzip_corrupt_deflate", lambda t: _gzip(t, "d.jsonl.gz", _flip_middle), "the compressed data is corrupt"),
    ("bad_dataset_dict_json", lambda t: _write((t / "dd").mkdir() or t / "dd" / "dataset_dict.json", "{")
     and t / "dd", "dataset_dict.json is not valid JSON"),
    ("weight_5000_digits", lambda t: _write(t / "d.jsonl", around(raw_row(weight=HUGE))),
     "line 3: field 'weight' holds an integer with 5000 digits"),
    ("metadata_nested_100k", lambda t: _write(t / "d.jsonl", around(raw_row(metadata=nested(100_000)))),
     "line 3: field 'metadata' is nested too deeply"),
    ("lone_surrogate", lambda t: _write(t / "d.jsonl", around('{"prompt": "\\ud800", "chosen": "a", '
                                                            '"rejected": "b"}')),
     "line 3: field 'prompt' holds invalid Unicode"),
    ("unbalanced_quote", lambda t: _write(t / "d.csv", csv_around('Q,A,"W\n')), "line 4: unbalanced quote"),
]


@pytest.mark.parametrize("case", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_cli_validate_one_line_no_traceback(case, tmp_path: Path) -> None:
    _, build, part = case
    path = build(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "prefkit.cli.main", "data", "validate", str(path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert proc.stderr.strip().count("\n") == 0, proc.stderr
    assert part in proc.stdout + proc.stderr, proc.stdout + proc.stderr
