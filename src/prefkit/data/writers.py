"""Writers: records -> JSONL (optionally gzip) or Parquet, one TRL-style row per record (``to_trl``).

``load`` reads both back to equal records. JSONL keeps every value as JSON. Parquet needs one type per
column, so ``metadata`` and ``attributes`` are stored as JSON strings (``load`` parses them back), and
text and chat records can't share a column: write them to separate files.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from prefkit.data.convert import to_trl
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


def write_jsonl(records: Iterable[Record], path: str | Path) -> int:
    """Write one JSON object per line (gzip when ``path`` ends in ``.gz``); returns the row count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [_dumps(to_trl(r)) for r in records]
    text = "".join(line + "\n" for line in lines)
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(text.encode("utf-8"), mtime=0))
    else:
        path.write_text(text, encoding="utf-8")
    return len(lines)


def write_parquet(records: Iterable[Record], path: str | Path) -> int:
    """Write a Parquet table with one row per record; returns the row count."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [to_trl(r) for r in records]
    for row in rows:
        for key in ("metadata", "attributes"):
            if key in row:
                row[key] = _dumps(row[key])
    columns = list(dict.fromkeys(k for row in rows for k in row))
    data = {c: [row.get(c) for row in rows] for c in columns}
    try:
        table = pa.table({c: pa.array(v) for c, v in data.items()})
    except (pa.ArrowException, TypeError, ValueError) as err:
        raise DataError(f"can't write these records as Parquet ({err}); text and chat records (or other "
                        "mixed value types) need separate files", source=str(path), reason="wrong_type") from None
    path = Path(path)
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


