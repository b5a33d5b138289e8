"""Corruption suite: one bad file per problem class; `prefkit data validate` names source, line, field.

Every case is written to a tmp dir by the test; each must exit 1 with its one-line message (no
traceback). File-level problems (missing, empty, unreadable) come through `main`'s `error: ...` line.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

from prefkit.cli.main import main

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
    ("bad_utf8", "bad.jsonl", jl(P).encode() + b'{"prompt": "\xff\xfe"}\n', "bad.jsonl line 2: not valid UTF-8", []),
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
