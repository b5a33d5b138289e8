"""Records: frozen, typed, validated when built; helpers; no torch at import."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import pytest

from prefkit.cli.main import main
from prefkit.data import Message, Pair, Ranking, Rating, Unpaired, is_chat, kind_of, num_chars, text_of
from prefkit.errors import DataError

U, A = (lambda c: Message("user", c)), (lambda c: Message("assistant", c))


def test_frozen_hashable_and_normalised() -> None:
    p = Pair([{"role": "user", "content": "hi"}], [{"role": "assistant", "content": "a"}], [A("b")],
             metadata={"x": 1})
    assert p.prompt == (U("hi"),) and p.chosen == (A("a"),)
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.tie = True  # type: ignore[misc]
    assert hash(p) == hash(Pair((U("hi"),), (A("a"),), (A("b"),)))
    assert len({p, Pair((U("hi"),), (A("a"),), (A("b"),), metadata={"x": 1})}) == 1
    assert p.weight == 1.0 and p.metadata == {"x": 1} and kind_of(p) == "pair"


def test_common_fields_are_keyword_only() -> None:
    with pytest.raises(TypeError):
        Pair("p", "a", "b", False, "id")  # type: ignore[misc]
    r = Rating("p", "r", score=1, id="7", strength=0.5, weight=0, user_id="u", annotator_id="a", rationale="x",
               source="rm:tiny")
    assert (r.score, r.weight, r.strength) == (1.0, 0.0, 0.5)


@pytest.mark.parametrize("build, message", [
    (lambda: Pair("p", "a", "a"), "field 'rejected' is identical to 'chosen'"),
    (lambda: Pair("p", "", "a"), "field 'chosen' is empty"),
    (lambda: Pair(" \n", "a", "b"), "field 'prompt' is empty"),
    (lambda: Pair([], [A("a")], [A("b")]), "field 'prompt' is an empty message list"),
    (lambda: Pair([U(" ")], [A("a")], [A("b")]), "field 'prompt' is empty"),
    (lambda: Pair("p", "a", [A("b")]), "field 'rejected' is chat messages but 'prompt' is text"),
    (lambda: Pair([U("q")], [U("a")], [A("b")]), "field 'chosen' message 0 has role 'user'"),
    (lambda: Pair("p", "a", "b", tie=1), "field 'tie' must be true or false"),
    (lambda: Pair("p", "a", "b", weight=math.inf), "field 'weight' must be finite"),
    (lambda: Pair("p", "a", "b", strength="1"), "field 'strength' must be a number"),
    (lambda: Pair("p", "a", "b", source="gpt-4"), "field 'source' is 'gpt-4'"),
    (lambda: Pair("p", "a", "b", source="ai:"), "field 'source' is 'ai:'"),
    (lambda: Pair("p", "a", "b", id=3), "field 'id' must be a string"),
    (lambda: Pair("p", "a", "b", metadata=[1]), "field 'metadata' must be a mapping"),
    (lambda: Message("bot", "x"), "bad message role 'bot'"),
    (lambda: Message("user", 3), "message content must be a string"),
    (lambda: Ranking("p", ["a"]), "needs at least 2 responses"),
    (lambda: Ranking("p", ["a", "b", "a"]), "field 'responses' 0 and 2 are identical"),
    (lambda: Ranking("p", ["a", "b"], scores=[1, 2]), "must be non-increasing"),
    (lambda: Ranking("p", ["a", "b"], scores=[1]), "field 'scores' must be a list of 2 numbers"),
    (lambda: Ranking("p", ["a", "b", "c"], tie_groups=[0, 2, 2]), "field 'tie_groups' must start at 0"),
    (lambda: Rating("p", "r"), "field 'score' is missing"),
    (lambda: Rating("p", "r", score=math.nan), "field 'score' must be finite"),
    (lambda: Rating("p", "r", score=1, scale=(5, 1)), "field 'scale' must have low < high"),
    (lambda: Rating("p", "r", attributes={"h": "high"}), "field 'attributes.h' must be a number"),
    (lambda: Unpaired("p", "r", 1), "field 'desirable' must be true or false"),
    # invalid Unicode: no tokenizer can encode a lone surrogate
    (lambda: Pair("p\ud800", "a", "b"), "field 'prompt' holds invalid Unicode: a lone surrogate"),
    (lambda: Pair("p", "a", "b", rationale="\udfff"), "field 'rationale' holds invalid Unicode"),
    (lambda: Pair("p", "a", "b", source="ai:m\ud800"), "field 'source' holds invalid Unicode"),
    (lambda: Pair([U("q")], [{"role": "assistant", "content": "a\udc80"}], [A("b")]),
     "field 'chosen' message 0: content holds invalid Unicode"),
    (lambda: Message("user", "x\ud83d"), "content holds invalid Unicode: a lone surrogate"),
    # message keys prefkit can't keep are refused, never dropped
    (lambda: Pair([U("q")], [{"role": "assistant", "content": "", "tool_calls": [{"id": "1"}]}], [A("b")]),
     "field 'chosen' message 0 has key 'tool_calls', which prefkit can't keep"),
    (lambda: Pair([{"role": "user", "content": "q", "name": "bob"}], [A("a")], [A("b")]),
     "field 'prompt' message 0 has key 'name'"),
    (lambda: Pair("p", [1, 2], "b"), "field 'chosen' must be text or a list of chat messages"),
    # numbers: too large for a float is named as such
    (lambda: Pair("p", "a", "b", weight=10**400), "field 'weight' is too large to use as a number (a 401-digit "
                                                  "integer"),
    (lambda: Pair("p", "a", "b", strength=Decimal("-1E+400")), "field 'strength' is too large to use as a number"),
    (lambda: Pair("p", "a", "b", strength=Decimal("sNaN")), "field 'strength' must be finite, got nan"),
    (lambda: Rating("p", "r", score=1, scale=(0, Decimal("Infinity"))), "field 'scale' must be finite"),
])
def test_validation_names_the_field(build, message) -> None:
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")) as info:
        build()
    assert "\n" not in str(info.value)


def test_any_real_number_is_a_number() -> None:
    np = pytest.importorskip("numpy")
    for value, expected in ((Decimal("0.25"), 0.25), (Fraction(1, 4), 0.25), (np.float32(0.25), 0.25),
                            (np.int64(2), 2.0), (10**300, 1e300)):
        p = Pair("p", "a", "b", weight=value)
        assert p.weight == expected and type(p.weight) is float


def test_null_or_empty_message_extras_carry_nothing_and_are_accepted() -> None:
    """Arrow gives every message every key seen in the column, null where absent: that loses nothing."""
    m = {"role": "assistant", "content": "a", "tool_calls": None, "name": "", "function_call": {}}
    assert Pair([U("q")], [m], [A("b")]).chosen == (A("a"),)


def test_empty_assistant_message_is_representable() -> None:
    """HH has blank final assistant turns; the record allows them (readers decide, see readers.py)."""
    assert Pair([U("q")], [A("")], [A("b")]).chosen == (A(""),)


def test_helpers() -> None:
    chat = (Message("system", "s"), U("hi"))
    assert is_chat(chat) and not is_chat("hi")
    assert text_of("x") == "x" and text_of(chat) == "system: s\n\nuser: hi"
    assert num_chars("abc") == 3 and num_chars(chat) == 3


def test_data_package_does_not_import_torch() -> None:
    code = "import sys, prefkit.data, prefkit.data.records; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr


def test_cli_inspect_with_tokenizer_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from prefkit.testing import tiny_tokenizer

    tok_dir = tmp_path / "tok"
    tiny_tokenizer().save_pretrained(str(tok_dir))
    data = tmp_path / "d.jsonl"
    rows = [{"prompt": "Question: hi", "chosen": "Sure, here is a clear and helpful answer.", "rejected": "No.",
             "user_id": "u1"},
            {"prompt": "Question: hi", "chosen": "Yes.", "rejected": "That is wrong and rude.", "user_id": "u2",
             "tie": True},
            {"prompt": "Question: hi", "chosen": "Yes.", "rejected": "That is wrong and rude.", "user_id": "u2"},
            {"prompt": "Q", "chosen": "", "rejected": "x"}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out_json = tmp_path / "r.json"
    assert main(["data", "inspect", str(data), "--tokenizer", str(tok_dir), "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    assert "3 records from 4 rows (3 pairs)" in out
    assert "users: 2 (3 records with a user id); ties: 1" in out
    assert "tokens per field" in out
    assert "chosen longer than rejected (completion characters): 1 of 2 pairs (50.0%)" in out
    assert "duplicate prompts: 2; duplicate pairs: 1" in out
    assert "problems: 1 rows skipped (1 empty)" in out and "line 4: field 'chosen' is empty" in out
    report = json.loads(out_json.read_text())
    assert report["chosen_longer_tokens"]["count"] == 1 and report["tokens"]["chosen"]["n"] == 3
    assert report["problems"] == {"empty": 1}


def test_cli_inspect_bad_tokenizer_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"}) + "\n")
    assert main(["data", "inspect", str(data), "--tokenizer", str(tmp_path / "nope")]) == 1
    err = capsys.readouterr().err
    assert "is not a folder; pass a local tokenizer folder" in err and err.count("\n") == 1
    assert main(["data", "inspect", str(data), "--tokenizer", str(tmp_path)]) == 1
    assert "can't load a tokenizer from" in capsys.readouterr().err


def test_records_pickle_and_copy() -> None:
    import copy
    import pickle

    from prefkit.data import load

    records = load([{"prompt": [{"role": "user", "content": "q"}], "chosen": [{"role": "assistant", "content": "a"}],
                     "rejected": [{"role": "assistant", "content": "b"}], "metadata": {"x": [1]}}])
    again = pickle.loads(pickle.dumps(records))
    assert again == records and again.rows == 1 and copy.deepcopy(records[0]) == records[0]
