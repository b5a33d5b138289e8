"""Best-of-N: for each prompt with N candidate responses, keep the one a reward model scores highest.

Input rows (JSONL, JSON array, optionally gzip, or Parquet): ``prompt`` (text or a list of
``{"role", "content"}`` messages) and ``candidates`` (alias ``responses``, ``completions``): a list of
texts or of message lists; any other column (``id``...) is carried to the output. Output rows: the
input columns plus ``best`` (the chosen candidate), ``best_index``, ``scores`` (one per candidate) and
``worst_index``.

Scalar reward models score each candidate; a GPM model (no scalar score) gives each candidate its mean
win probability against the others (:meth:`prefkit.models.reward.RewardModel.best_of`). Ties go to the
first candidate.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefkit.data.records import Message
from prefkit.errors import DataError

if TYPE_CHECKING:
    from prefkit.models.reward import RewardModel

CANDIDATE_COLUMNS = ("candidates", "responses", "completions")


def _messages(value: Any, where: str) -> str | tuple[Message, ...]:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and all(isinstance(m, dict) for m in value):
        try:
            return tuple(Message(m["role"], m["content"]) for m in value)
        except KeyError as err:
            raise DataError(f"{where}: message without {err.args[0]!r}") from None
    raise DataError(f"{where}: expected text or a list of {{role, content}} messages, got {value!r:.60}")


class Row(dict):
    """One input row (a plain ``dict``) that knows where it came from: ``where`` reads like the data
    loader's locations, ``"data.jsonl line 3"`` (1-based physical line where the row starts, for JSONL
    and JSON) or ``"data.parquet row 0"`` (0-based, for Parquet)."""

    where: str = ""


def _row(value: Any, where: str) -> Row:
    if not isinstance(value, dict):
        raise DataError(f"{where}: every row must be a JSON object")
    row = Row(value)
    row.where = where
    return row


def _json_array(text: str, name: str) -> list[Row]:
    """The objects of a JSON array, each located at the line where it starts."""
    decoder = json.JSONDecoder()

    def skip(i: int) -> int:
        while i < len(text) and text[i] in " \t\r\n":
            i += 1
        return i

    def line(i: int) -> int:
        return text.count("\n", 0, i) + 1

    rows: list[Row] = []
    i = skip(text.index("[") + 1)
    if text[i:i + 1] == "]":
        return rows
    while True:
        try:
            value, end = decoder.raw_decode(text, i)
        except json.JSONDecodeError as err:
            raise DataError(f"{name} line {err.lineno}: not JSON ({err.msg})") from None
        rows.append(_row(value, f"{name} line {line(i)}"))
        i = skip(end)
        if text[i:i + 1] == "]":
            return rows
        if text[i:i + 1] != ",":
            raise DataError(f"{name} line {line(i)}: not JSON (expected ',' or ']' after a row)")
        i = skip(i + 1)


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """Raw rows of a JSONL / JSON / Parquet file (gzip allowed for the text ones), each a :class:`Row`
    that knows its location."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"no such file: {str(path)!r}")
    if p.suffix == ".parquet":
        import pyarrow.parquet as pq

        return [_row(r, f"{p.name} row {i}") for i, r in enumerate(pq.read_table(p).to_pylist())]
    raw = p.read_bytes()
    text = (gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw).decode("utf-8-sig")
    if text.lstrip().startswith("["):
        return _json_array(text, p.name)
    rows = []
    for n, line in enumerate(text.split("\n"), 1):  # physical lines, as the data loader counts them
        if line.strip():
            try:
                value = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{p.name} line {n}: not JSON ({err.msg})") from None
            rows.append(_row(value, f"{p.name} line {n}"))
    return rows


def parse_candidates(row: dict[str, Any], where: str) -> tuple[Any, list[Any]]:
    """(prompt, candidates) of one input row; errors name ``where``, or the row's own location when it
    is a :class:`Row` from :func:`read_rows` (the loader's 1-based line, not a 0-based index)."""
    where = getattr(row, "where", "") or where
    if "prompt" not in row:
        raise DataError(f"{where}: missing field 'prompt'")
    column = next((c for c in CANDIDATE_COLUMNS if c in row), None)
    if column is None:
        raise DataError(f"{where}: missing the candidate list; name it one of {list(CANDIDATE_COLUMNS)}")
    values = row[column]
    if not isinstance(values, list) or not values:
        raise DataError(f"{where}: field {column!r} must be a non-empty list of candidates")
    prompt = _messages(row["prompt"], f"{where} field 'prompt'")
    candidates = [_messages(v, f"{where} field {column!r}[{i}]") for i, v in enumerate(values)]
    if isinstance(prompt, str) != all(isinstance(c, str) for c in candidates):
        raise DataError(f"{where}: prompt and candidates must all be text or all be messages")
    return prompt, candidates


def best_of_n(model: RewardModel, rows: Sequence[dict[str, Any]], *, batch_size: int = 32,
              source: str = "data") -> list[dict[str, Any]]:
    """One output row per input row with ``best``, ``best_index``, ``scores``, ``worst_index``."""
    out = []
    for i, row in enumerate(rows):
        prompt, candidates = parse_candidates(row, f"{source} row {i}")  # a Row says its own line
        best, scores = model.best_of(prompt, candidates, batch_size=batch_size)
        column = next(c for c in CANDIDATE_COLUMNS if c in row)
        out.append({**row, "best": row[column][best], "best_index": best,
                    "scores": [float(s) for s in scores], "worst_index": int(scores.argmin())})
    return out


def write_rows(rows: Iterable[dict[str, Any]], path: str | Path) -> int:
    """Write rows as JSONL (``.jsonl``, ``.jsonl.gz``) or Parquet (``.parquet``); returns the count."""
    p = Path(path)
    rows = list(rows)
    p.parent.mkdir(parents=True, exist_ok=True)
    if p.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), p)
    elif str(p).endswith((".jsonl", ".jsonl.gz", ".json")):
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        p.write_bytes(gzip.compress(text.encode(), mtime=0) if p.suffix == ".gz" else text.encode())
    else:
        raise DataError(f"unsupported output type {p.name!r}; use .jsonl, .jsonl.gz or .parquet")
    return len(rows)


__all__ = ["best_of_n", "read_rows", "parse_candidates", "write_rows", "CANDIDATE_COLUMNS", "Row"]
