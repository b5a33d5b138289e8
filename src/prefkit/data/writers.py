"""Writers: records -> JSONL (optionally gzip) or Parquet, one TRL-style row per record (``to_trl``).

``load`` reads both back to equal records. JSONL keeps every value as JSON. Parquet needs one type per
column, so ``metadata`` and ``attributes`` are stored as JSON strings (``load`` parses them back), and
text and chat records can't share a column: write them to separate files.

A record that can't be written (a value JSON can't hold, such as NaN or an object in ``metadata``; text
that is not valid Unicode; values nested too deeply) raises ``DataError`` naming the output file and
the record's index, never another exception. So does a record that would not load back: one with an
empty chat completion (HH's empty final Assistant turn) is written as its HH dialogue text when that
text reproduces it (JSONL only: Parquet can't put that text in a column of chat rows), and refused
otherwise; ``prefkit.data.convert.convert`` leaves such records out and counts them instead.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from prefkit.data.convert import empty_completion, loads_back, to_trl
from prefkit.data.records import Record
from prefkit.errors import DataError


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return value.tolist()
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    raise TypeError(f"can't write a {type(value).__name__} as JSON")


def _dumps(row: dict[str, Any]) -> str:
    return json.dumps(row, ensure_ascii=False, default=_json_default, allow_nan=False)


def _line(row: dict[str, Any], i: int, path: Path) -> str:
    """One JSON line for record ``i``; a value JSON can't hold is a DataError naming the record."""
    try:
        return _dumps(row)
    except RecursionError:
        problem = "values nested too deeply"
    except (TypeError, ValueError) as err:
        problem = str(err).splitlines()[0] if str(err) else type(err).__name__
    raise DataError(f"record {i} can't be written as JSON ({problem})", source=str(path), reason="wrong_type")


def _utf8(text: str, path: Path, first: int = 0) -> bytes:
    """``text`` (JSON lines, record ``first`` on) as UTF-8; a lone surrogate is named by its record."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as err:
        i = first + text.count("\n", 0, err.start)
        raise DataError(f"record {i} holds text that is not valid Unicode (a lone surrogate "
                        f"'\\u{ord(text[err.start]):04x}'), which can't be written as UTF-8", source=str(path),
                        reason="encoding") from None


def _loadable(record: Record, i: int, path: Path, *, hh_text: bool) -> Record:
    """``record``, or a DataError naming it when its written row would not load back."""
    if not loads_back(record, hh_text=hh_text):
        where = ("HH dialogue text that reproduces it, which Parquet can't hold beside chat rows "
                 "(write .jsonl)" if hh_text is False and loads_back(record) else "HH dialogue text")
        raise DataError(f"record {i} has an empty completion ({empty_completion(record)!r}), which loads "
                        f"back only as {where}; leave it out (prefkit.data.convert does, and counts it)",
                        source=str(path), field=empty_completion(record), reason="empty")
    return record


def write_jsonl(records: Iterable[Record], path: str | Path) -> int:
    """Write one JSON object per line (gzip when ``path`` ends in ``.gz``); returns the row count."""
    path = Path(path)
    lines = [_line(to_trl(_loadable(r, i, path, hh_text=True)), i, path) for i, r in enumerate(records)]
    data = _utf8("".join(line + "\n" for line in lines), path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(data, mtime=0))
    else:
        path.write_bytes(data)
    return len(lines)


def write_parquet(records: Iterable[Record], path: str | Path) -> int:
    """Write a Parquet table with one row per record; returns the row count."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    rows = [to_trl(_loadable(r, i, path, hh_text=False)) for i, r in enumerate(records)]
    for i, row in enumerate(rows):
        for key in ("metadata", "attributes"):
            if key in row:
                row[key] = _line(row[key], i, path)
        _utf8(_line(row, i, path), path, i)  # text a Parquet string column can't hold is named here
    columns = list(dict.fromkeys(k for row in rows for k in row))
    data = {c: [row.get(c) for row in rows] for c in columns}
    try:
        table = pa.table({c: pa.array(v) for c, v in data.items()})
    except (pa.ArrowException, TypeError, ValueError) as err:
        raise DataError(f"can't write these records as Parquet ({err}); text and chat records (or other "
                        "mixed value types) need separate files", source=str(path), reason="wrong_type") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return len(rows)


def write(records: Iterable[Record], path: str | Path) -> int:
    """``write_parquet`` for ``.parquet``, else ``write_jsonl`` (``.jsonl``, ``.jsonl.gz``, ``.json``...)."""
    if str(path).endswith(".parquet"):
        return write_parquet(records, path)
    if not str(path).endswith((".jsonl", ".jsonl.gz", ".json", ".json.gz")):
        raise DataError("unsupported output type; use .jsonl, .jsonl.gz or .parquet", source=str(path),
                        reason="wrong_type")
    return write_jsonl(records, path)


