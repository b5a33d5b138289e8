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


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """Raw rows of a JSONL / JSON / Parquet file (gzip allowed for the text ones)."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"no such file: {str(path)!r}")
    if p.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(p).to_pylist()
    raw = p.read_bytes()
    text = (gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw).decode("utf-8")
    stripped = text.lstrip()
    if stripped.startswith("["):
        rows = json.loads(stripped)
    else:
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise DataError(f"{p.name} line {n}: not JSON ({err.msg})") from None
    if not all(isinstance(r, dict) for r in rows):
        raise DataError(f"{p.name}: every row must be a JSON object")
    return rows


def parse_candidates(row: dict[str, Any], where: str) -> tuple[Any, list[Any]]:
    """(prompt, candidates) of one input row."""
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
        prompt, candidates = parse_candidates(row, f"{source} row {i}")
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


__all__ = ["best_of_n", "read_rows", "parse_candidates", "write_rows", "CANDIDATE_COLUMNS"]
