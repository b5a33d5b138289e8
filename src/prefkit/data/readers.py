"""Readers behind one entry point: ``load(source, format="auto", columns=None, on_error="raise")``.

Sources: a path to a JSONL, JSON (an array of objects), CSV or Parquet file, any of the text ones
gzip-compressed (``.gz``, or recognised by its magic bytes); a folder written by
``datasets.Dataset.save_to_disk``; an in-memory ``datasets.Dataset``; a list of dicts. The file type
comes from the extension, or from the content when the extension is unknown.

Row layouts, recognised per row from its columns (``format="auto"``) or forced with ``format=``
(``docs/data.md`` has examples):

- ``"pair"``: TRL standard ``prompt``/``chosen``/``rejected`` (text), TRL conversational (message
  lists), TRL implicit prompt (``chosen``/``rejected`` only: the prompt is their common prefix, cut like
  TRL's ``extract_prompt`` so that a shared trailing space goes to the completions; message lists share
  a prefix of whole messages). Optional ``tie``.
- ``"hh"``: HH-RLHF dialogue text in ``chosen``/``rejected`` with no ``prompt`` (auto-detected when both
  start with ``"\\n\\nHuman:"``), parsed into chat messages (``prefkit.data.hh``): the common message
  prefix is the prompt, the remaining (assistant) messages are the completions, and
  ``hh.render(prompt + chosen)`` reproduces the original text exactly (checked for every row).
- ``"unpaired"``: TRL unpaired ``prompt``/``completion``/``label`` (or ``response``/``desirable``).
- ``"rating"``: one ``prompt``/``response`` (or ``completion``) with ``score`` and/or ``attributes``.
- ``"ultrafeedback"``: a ``prompt`` (or ``instruction``) with ``completions``, a list of objects each
  with ``response`` (or ``text``/``completion``), ``overall_score`` (or ``score``) and/or per-aspect
  ``annotations`` (or ``ratings``: aspect -> number, or aspect -> ``{"Rating": "4", ...}`` as in
  UltraFeedback; ``"N/A"`` aspects are left out). One ``Rating`` per completion.
- ``"ranking"``: a ``prompt`` with ``responses`` and ``ranks`` (a permutation of 1..k or 0..k-1,
  lower = better) or ``scores`` (higher = better; equal scores become tie groups) or neither (the list
  is already best first).

Every layout also reads the record's optional fields: ``id``, ``strength`` (alias ``margin``),
``weight``, ``user_id`` (alias ``user``), ``annotator_id`` (alias ``annotator``), ``rationale``,
``source``, ``metadata``, and ``system`` (a system message put before a chat prompt). Integer ids are
turned into strings. A ``source`` that is not a feedback source (``human``, ``implicit``, ``ai:MODEL``,
``rm:MODEL``), e.g. UltraFeedback's origin data set names, goes to ``metadata["dataset_source"]``
with a warning. ``columns={"prompt": "question", ...}`` maps our field names to yours. A null
value counts as absent. Other columns are kept in ``metadata``; unknown ones also give a warning that
suggests the nearest known name (a few common extras such as ``prompt_id``, ``messages``,
``score_chosen`` are kept quietly).

CSV cells are text: message lists and other lists/objects are JSON strings in their cells, numbers and
booleans (``true``/``false``/``1``/``0``/``yes``/``no``) are parsed by field, an empty cell is absent
(an empty text field is an error).

HH-RLHF quirks (all rows are kept, so the 1,600-row sample loads as 1,600 pairs):

1. *Diverging early*: the two dialogues part before the chosen one's final assistant turn (in the
   sample, a ``"Human:"`` missing its newlines makes two assistant turns in a row). The prompt is the
   common message prefix and the completion holds several assistant messages;
   ``metadata["quirks"]`` gets ``"hh_diverges_early"``.
2. *Empty final turn*: the dialogue ends with ``"\\n\\nAssistant: "``. The completion is one assistant
   message with empty content; ``metadata["quirks"]`` gets ``"hh_empty_chosen"`` or
   ``"hh_empty_rejected"``. Outside HH text an empty completion is an error.

Errors: every problem is a ``DataError`` whose message names the source, the line (text files: the
1-based physical line where the row starts; CSV counts the header as line 1) or row (Parquet,
``datasets``, lists: 0-based index, written ``row N``) and the field, e.g.
``data.jsonl line 17: field 'rejected' is empty``. ``on_error="raise"`` raises the first one;
``"skip"`` drops bad rows, prints one line with the count per reason to stderr, and returns them in
``Records.problems`` / ``Records.skipped``. A missing, empty or unreadable file always raises.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import math
import sys
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

from prefkit.data import hh
from prefkit.data.records import Message, Pair, Ranking, Rating, Record, Unpaired, is_source
from prefkit.errors import ConfigError, DataError, did_you_mean

FORMATS = ("auto", "pair", "hh", "unpaired", "rating", "ultrafeedback", "ranking")
COMMON_FIELDS = ("id", "strength", "weight", "user_id", "annotator_id", "rationale", "source", "metadata")
KNOWN_FIELDS = (
    "prompt", "chosen", "rejected", "tie", "completion", "label", "response", "desirable", "responses",
    "ranks", "scores", "tie_groups", "score", "attributes", "scale", "completions", "system",
) + COMMON_FIELDS
ALIASES = {"instruction": "prompt", "margin": "strength", "user": "user_id", "annotator": "annotator_id"}
QUIET_EXTRAS = frozenset({"prompt_id", "messages", "score_chosen", "score_rejected", "models",
                          "correct_answers", "incorrect_answers", "custom_system_prompt"})

_TEXT = frozenset({"prompt", "chosen", "rejected", "completion", "response", "system"})
_JSON = frozenset({"responses", "ranks", "scores", "tie_groups", "completions", "scale", "attributes",
                   "metadata"})
_NUMBER = frozenset({"score", "strength", "weight"})
_BOOL = frozenset({"tie", "label", "desirable"})
_TRUE, _FALSE = {"true", "1", "yes"}, {"false", "0", "no"}

Location = tuple[str, int]  # ("line", n) or ("row", i)


class Records(list):
    """A list of records, plus what loading (or converting) left out.

    ``problems``: the DataErrors of skipped rows; ``skipped``: count per reason; ``warnings``: one line
    each (unknown columns...); ``rows``: rows read; ``source``: the source's name.
    """

    def __init__(self, items: Iterable[Record] = (), *, source: str = "", rows: int = 0,
                 problems: Iterable[DataError] = (), skipped: Mapping[str, int] | None = None,
                 warnings: Iterable[str] = ()):
        super().__init__(items)
        self.source = source
        self.rows = rows
        self.problems: list[DataError] = list(problems)
        self.skipped: Counter[str] = Counter(skipped or {})
        self.warnings: list[str] = list(warnings)

    def summary(self) -> str:
        """One line: ``name: kept N of M rows; skipped K (2 empty, 1 malformed_json)``."""
        total = sum(self.skipped.values())
        reasons = ", ".join(f"{n} {r}" for r, n in self.skipped.most_common())
        return (f"{self.source}: {len(self)} records from {self.rows} rows; skipped {total} rows"
                + (f" ({reasons})" if reasons else ""))


def load(source: Any, format: str = "auto", columns: Mapping[str, str] | None = None,
         on_error: Literal["raise", "skip"] = "raise") -> Records:
    """Read preference records from a file, folder, ``datasets.Dataset`` or list of dicts.

    Args:
        source: path (str or Path), list of dicts, or ``datasets.Dataset``.
        format: row layout, one of ``FORMATS`` ("auto" recognises each row by its columns).
        columns: our field name -> your column name, e.g. ``{"prompt": "question"}``.
        on_error: "raise" the first problem, or "skip" bad rows (counted per reason, printed to stderr).
    """
    if on_error not in ("raise", "skip"):
        raise ConfigError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    result = read(source, format=format, columns=columns, collect=on_error == "skip")
    for w in result.warnings:
        warnings.warn(w, stacklevel=2)
    if on_error == "skip" and result.skipped:
        print(result.summary(), file=sys.stderr)
    return result


def read(source: Any, *, format: str = "auto", columns: Mapping[str, str] | None = None,
         collect: bool = True) -> Records:
    """``load`` without printing or warning: with ``collect`` every row problem goes to ``problems``."""
    if format not in FORMATS:
        raise ConfigError(f"unknown format {format!r}; choose from {list(FORMATS)}{did_you_mean(format, FORMATS)}")
    name, items = _open(source)
    items = list(items)
    if not items:
        raise DataError("no rows (the source is empty)", source=name, reason="empty_file")
    mapping = _check_columns(columns, items, name)
    out = Records(source=name, rows=len(items))
    seen_unknown: set[str] = set()
    for loc, row in items:
        try:
            if isinstance(row, DataError):
                raise row
            records = row_to_records(row, format=format, columns=mapping,
                                     from_text=isinstance(row, _CsvRow))
            cols = {_canonical(c, mapping): v for c, v in row.items()}
            src = cols.get("source") if format != "ultrafeedback" and "completions" not in cols else None
            if isinstance(src, str) and not is_source(src) and "source" not in seen_unknown:
                seen_unknown.add("source")
                out.warnings.append(f"{_where(name, loc)}: column 'source' holds {src!r}, not a feedback "
                                    "source (human, implicit, ai:MODEL, rm:MODEL); kept in "
                                    "metadata['dataset_source']")
            for col in row:
                col = _canonical(col, mapping)
                if col not in KNOWN_FIELDS and col not in QUIET_EXTRAS and col not in seen_unknown:
                    seen_unknown.add(col)
                    out.warnings.append(f"{_where(name, loc)}: unknown column {col!r} kept in metadata"
                                        f"{did_you_mean(col, KNOWN_FIELDS)}")
        except DataError as err:
            located = _locate(err, name, loc)
            if not collect:
                raise located from None
            out.problems.append(located)
            out.skipped[located.reason] += 1
            continue
        out.extend(records)
    return out


# ---------------------------------------------------------------------------------------------------
# locations


def _where(name: str, loc: Location) -> str:
    return f"{name} {loc[0]} {loc[1]}"


def _locate(err: DataError, name: str, loc: Location) -> DataError:
    if loc[0] == "line":
        return DataError(err.message, source=name, line=loc[1], field=err.field, reason=err.reason)
    return DataError(err.message, source=f"{name} row {loc[1]}", field=err.field, reason=err.reason)


# ---------------------------------------------------------------------------------------------------
# sources -> (location, dict | DataError)


def _open(source: Any) -> tuple[str, Iterable[tuple[Location, Any]]]:
    if isinstance(source, str | Path):
        return _open_path(Path(source), str(source))
    module = type(source).__module__ or ""
    if module.startswith("datasets"):
        return _open_dataset(source, f"<{type(source).__name__}>")
    if isinstance(source, list | tuple):
        return "<list>", [(("row", i), r if isinstance(r, Mapping) else DataError(
            f"expected a dict, got {type(r).__name__}", reason="wrong_type")) for i, r in enumerate(source)]
    raise DataError(f"can't read a {type(source).__name__}; pass a path, a list of dicts or a "
                    "datasets.Dataset", reason="wrong_type")


def _open_dataset(ds: Any, name: str) -> tuple[str, Iterable[tuple[Location, Any]]]:
    if not hasattr(ds, "column_names") or isinstance(ds.column_names, dict):
        splits = list(ds.keys()) if hasattr(ds, "keys") else []
        raise DataError(f"this is a DatasetDict with splits {splits}; pass one split, e.g. ds[{splits[0]!r}]"
                        if splits else f"can't read a {type(ds).__name__}", source=name, reason="wrong_type")
    return name, [(("row", i), row) for i, row in enumerate(ds)]


def _open_path(path: Path, name: str) -> tuple[str, Iterable[tuple[Location, Any]]]:
    if not path.exists():
        raise DataError("no such file or folder", source=name, reason="missing_file")
    if path.is_dir():
        if (path / "dataset_dict.json").exists():
            splits = json.loads((path / "dataset_dict.json").read_text()).get("splits", [])
            raise DataError(f"a saved DatasetDict with splits {splits}; pass one split's folder, e.g. "
                            f"{path / (splits[0] if splits else 'train')}", source=name, reason="wrong_type")
        if not (path / "dataset_info.json").exists() and not (path / "state.json").exists():
            raise DataError("is a folder but not one written by datasets' save_to_disk", source=name,
                            reason="wrong_type")
        import datasets

        return _open_dataset(datasets.load_from_disk(str(path)), name)
    raw = path.read_bytes()
    if not raw.strip():
        raise DataError("file is empty", source=name, reason="empty_file")
    suffixes = [s.lower() for s in path.suffixes]
    if raw[:2] == b"\x1f\x8b" or suffixes[-1:] == [".gz"]:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as err:
            raise DataError(f"not a readable gzip file ({err})", source=name, reason="malformed_file") from None
        if suffixes[-1:] == [".gz"]:
            suffixes = suffixes[:-1]
        if not raw.strip():
            raise DataError("file is empty (after gzip decompression)", source=name, reason="empty_file")
    kind = suffixes[-1].lstrip(".") if suffixes else ""
    if kind not in ("jsonl", "json", "csv", "parquet"):
        kind = _sniff(raw)
    if kind == "parquet":
        return name, _parquet_rows(raw, name)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise DataError(f"not valid UTF-8 text (byte {err.start})", source=name, line=line,
                        reason="encoding") from None
    if kind == "csv":
        return name, _csv_rows(text)
    if kind == "json":
        stripped = text.lstrip()
        if not stripped.startswith("["):
            return name, _jsonl_rows(text)  # JSON Lines named .json
        return name, _json_array_rows(text, name)
    return name, _jsonl_rows(text)


def _sniff(raw: bytes) -> str:
    if raw[:4] == b"PAR1":
        return "parquet"
    head = raw.lstrip()[:1]
    return {b"[": "json", b"{": "jsonl"}.get(head, "csv")


def _as_object(value: Any) -> Any:
    if isinstance(value, dict):
        return value
    return DataError(f"expected a JSON object per row, got {type(value).__name__}", reason="wrong_type")


def _jsonl_rows(text: str) -> Iterator[tuple[Location, Any]]:
    for n, line in enumerate(text.split("\n"), start=1):  # not splitlines(): U+2028 may sit inside strings
        if not line.strip():
            continue
        try:
            yield ("line", n), _as_object(json.loads(line))
        except json.JSONDecodeError as err:
            yield ("line", n), DataError(f"malformed JSON ({err.msg} at column {err.colno})",
                                         reason="malformed_json")


def _json_array_rows(text: str, name: str) -> list[tuple[Location, Any]]:
    decoder = json.JSONDecoder()
    rows: list[tuple[Location, Any]] = []
    pos = text.index("[") + 1

    def skip(p: int) -> int:
        while p < len(text) and text[p] in " \t\r\n":
            p += 1
        return p

    def fail(p: int, msg: str) -> DataError:
        return DataError(f"malformed JSON ({msg}); rows after it can't be read", source=name,
                         line=text.count("\n", 0, p) + 1, reason="malformed_json")

    pos = skip(pos)
    if pos < len(text) and text[pos] == "]":
        return rows
    while True:
        pos = skip(pos)
        line = text.count("\n", 0, pos) + 1
        try:
            value, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as err:
            raise fail(err.pos, err.msg) from None
        rows.append((("line", line), _as_object(value)))
        pos = skip(pos)
        if pos < len(text) and text[pos] == ",":
            pos += 1
            continue
        if pos < len(text) and text[pos] == "]":
            if skip(pos + 1) != len(text):
                raise fail(skip(pos + 1), "extra data after the array")
            return rows
        raise fail(pos, "expected ',' or ']'")


class _CsvRow(dict):
    """A CSV row: its cells are text, parsed by field in ``row_to_records``."""


def _csv_rows(text: str) -> Iterator[tuple[Location, Any]]:
    csv.field_size_limit(2**31 - 1)
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        return
    start = reader.line_num + 1
    for cells in reader:
        loc = ("line", start)
        start = reader.line_num + 1
        if not any(c.strip() for c in cells):
            continue
        if len(cells) > len(header):
            yield loc, DataError(f"row has {len(cells)} cells but the header has {len(header)}",
                                 reason="wrong_type")
            continue
        yield loc, _CsvRow(zip(header, cells, strict=False))


def _parquet_rows(raw: bytes, name: str) -> list[tuple[Location, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(pa.BufferReader(raw))
    except (pa.ArrowException, OSError) as err:
        raise DataError(f"not a readable Parquet file ({err})", source=name, reason="malformed_file") from None
    return [(("row", i), row) for i, row in enumerate(table.to_pylist())]


# ---------------------------------------------------------------------------------------------------
# columns


def _canonical(col: str, mapping: Mapping[str, str]) -> str:
    return mapping.get(col, ALIASES.get(col, col))


def _check_columns(columns: Mapping[str, str] | None, items: list[tuple[Location, Any]],
                   name: str) -> dict[str, str]:
    """Check ``columns`` (ours -> theirs) and return its inverse (theirs -> ours)."""
    if not columns:
        return {}
    present: set[str] = set()
    for _, row in items:
        if isinstance(row, Mapping):
            present.update(row)
    inverse = {}
    for ours, theirs in columns.items():
        if ours not in KNOWN_FIELDS:
            raise ConfigError(f"columns: {ours!r} is not a record field{did_you_mean(ours, KNOWN_FIELDS)}; "
                              "map our field name to your column name, e.g. {'prompt': 'question'}")
        if theirs not in present:
            raise DataError(f"columns maps {ours!r} to {theirs!r}, but there is no column {theirs!r}"
                            f"{did_you_mean(theirs, present)}", source=name, reason="missing_column")
        inverse[theirs] = ours
    return inverse


# ---------------------------------------------------------------------------------------------------
# one row -> records


def _err(field: str, message: str, reason: str) -> DataError:
    return DataError(f"field {field!r} {message}", field=field, reason=reason)


def _from_text(field: str, value: Any) -> Any:
    """Parse a CSV cell by field (text stays text unless it holds a JSON message list)."""
    if not isinstance(value, str):
        return value
    if field in _TEXT:
        if value.lstrip().startswith("["):
            try:
                parsed = json.loads(value)
            except json.JSONDecodeError:
                return value
            if isinstance(parsed, list) and parsed and all(isinstance(m, dict) and "role" in m for m in parsed):
                return parsed
        return value
    if value == "":
        return None
    if field in _JSON:
        try:
            return json.loads(value)
        except json.JSONDecodeError as err:
            raise _err(field, f"is not valid JSON ({err.msg})", "malformed_json") from None
    if field in _NUMBER:
        try:
            return float(value)
        except ValueError:
            raise _err(field, f"must be a number, got {value!r}", "wrong_type") from None
    if field in _BOOL:
        low = value.strip().lower()
        if low in _TRUE or low in _FALSE:
            return low in _TRUE
        raise _err(field, f"must be true or false, got {value!r}", "wrong_type")
    return value


def row_to_records(row: Mapping[str, Any], *, format: str = "auto", columns: Mapping[str, str] | None = None,
                   from_text: bool = False) -> list[Record]:
    """Records from one row (without location; ``read`` adds it). ``columns`` maps theirs -> ours."""
    mapping = columns or {}
    fields: dict[str, Any] = {}
    extras: dict[str, Any] = {}
    nulls: set[str] = set()
    for col, value in row.items():
        key = _canonical(col, mapping)
        if from_text:
            value = _from_text(key, value)
        if value is None:
            nulls.add(key)
        elif key in KNOWN_FIELDS:
            fields[key] = value
        else:
            extras[col] = value
    kind = _detect(fields, nulls, list(row)) if format == "auto" else format
    if kind == "ultrafeedback" or (isinstance(fields.get("source"), str) and not is_source(fields["source"])):
        src = fields.pop("source", None)  # the origin data set, not who gave the feedback
        if src is not None:
            extras["dataset_source"] = src
    common = _common(fields, extras)
    if kind in ("pair", "hh"):
        return [_pair(fields, nulls, common, hh_text=kind == "hh")]
    if kind == "unpaired":
        return [_unpaired(fields, nulls, common)]
    if kind == "rating":
        return [_rating(fields, nulls, common)]
    if kind == "ultrafeedback":
        return _ultrafeedback(fields, nulls, common)
    return [_ranking(fields, nulls, common)]


_LAYOUTS: dict[str, tuple[str, ...]] = {
    "pair": ("prompt", "chosen", "rejected"),
    "unpaired": ("prompt", "completion", "label"),
    "rating": ("prompt", "response", "score"),
    "ranking": ("prompt", "responses"),
}


def _detect(fields: Mapping[str, Any], nulls: set[str], found: list[str]) -> str:
    keys = set(fields)
    if "completions" in keys:
        return "ultrafeedback"
    if "responses" in keys:
        return "ranking"
    if keys & {"chosen", "rejected"}:
        return "pair"
    if keys & {"label", "desirable"}:
        return "unpaired"
    if keys & {"response", "completion"} and keys & {"score", "attributes"}:
        return "rating"
    present = keys | nulls
    best = max(_LAYOUTS, key=lambda k: len(present & set(_LAYOUTS[k])))
    missing = [c for c in _LAYOUTS[best] if c not in keys]
    if not present & set().union(*_LAYOUTS.values()):
        raise DataError(f"can't tell the record type from columns {sorted(found)}; expected e.g. "
                        "prompt/chosen/rejected (map yours with columns=)", reason="missing_column")
    return _missing(missing[0], nulls, best)


def _missing(field: str, nulls: set[str], kind: str = "") -> Any:
    what = f" for a {kind}" if kind else ""
    if field in nulls:
        raise _err(field, f"is null{what}", "missing_column")
    raise DataError(f"missing column {field!r}{what}", field=field, reason="missing_column")


def _need(fields: Mapping[str, Any], nulls: set[str], field: str, kind: str) -> Any:
    if field not in fields:
        _missing(field, nulls, kind)
    return fields[field]


def _common(fields: dict[str, Any], extras: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in ("id", "user_id", "annotator_id"):
        if key in fields:
            v = fields[key]
            out[key] = str(v) if isinstance(v, int) and not isinstance(v, bool) else v
    for key in ("strength", "weight", "rationale", "source"):
        if key in fields:
            out[key] = fields[key]
    meta = fields.get("metadata", {})
    if isinstance(meta, str):  # Parquet files we write hold metadata as a JSON string
        try:
            meta = json.loads(meta)
        except json.JSONDecodeError:
            raise _err("metadata", "is not a JSON object", "wrong_type") from None
    if not isinstance(meta, Mapping):
        raise _err("metadata", f"must be an object, got {type(meta).__name__}", "wrong_type")
    out["metadata"] = {**meta, **extras}
    return out


def _with_system(prompt: Any, fields: Mapping[str, Any]) -> Any:
    if "system" not in fields:
        return prompt
    system = fields["system"]
    if not isinstance(system, str):
        raise _err("system", f"must be text, got {type(system).__name__}", "wrong_type")
    if not isinstance(prompt, list | tuple):
        raise _err("system", "needs a chat-message prompt (the prompt is plain text)", "wrong_type")
    return [{"role": "system", "content": system}, *prompt]


def _role(m: Any) -> Any:
    return m.role if isinstance(m, Message) else m.get("role") if isinstance(m, Mapping) else None


def _message_prefix(a: list[Any], b: list[Any]) -> int:
    n = 0
    while n < min(len(a), len(b)) and _as_message(a[n]) == _as_message(b[n]):
        n += 1
    return n


def _as_message(m: Any) -> Any:
    if isinstance(m, Mapping):
        return (m.get("role"), m.get("content"))
    if isinstance(m, Message):
        return (m.role, m.content)
    return m


def _text_prefix(a: str, b: str) -> str:
    """TRL's extract_prompt rule: the common prefix, minus a trailing space that then starts both answers."""
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    if 0 < n < min(len(a), len(b)) and a[n - 1] == " ":
        n -= 1
    return a[:n]


def _check_chat_not_empty(value: Any, field: str) -> None:
    if isinstance(value, tuple) and not any(m.content.strip() for m in value):
        raise _err(field, "is empty", "empty")


def _pair(fields: dict[str, Any], nulls: set[str], common: dict[str, Any], *, hh_text: bool) -> Pair:
    chosen = _need(fields, nulls, "chosen", "pair")
    rejected = _need(fields, nulls, "rejected", "pair")
    quirks: list[str] = []
    hh_original: tuple[str, str] | None = None
    if "prompt" not in fields and (hh_text or (hh.looks_like_hh(chosen) and hh.looks_like_hh(rejected))):
        hh_original = (chosen, rejected)
        if chosen == rejected:
            raise _err("rejected", "is identical to 'chosen'", "identical")
        a, b = hh.parse(chosen, "chosen"), hh.parse(rejected, "rejected")
        n = _message_prefix(list(a), list(b))
        if n == 0:
            raise DataError("'chosen' and 'rejected' dialogues share no first turn (no implicit prompt)",
                            field="chosen", reason="no_common_prefix")
        prompt, chosen, rejected = a[:n], a[n:], b[n:]
        for name, c in (("chosen", chosen), ("rejected", rejected)):
            if not c:
                raise _err(name, "dialogue ends where the other goes on (no completion of its own)", "empty")
            if c[0].role != "assistant":
                raise _err(name, "dialogues diverge at a Human turn; the completion must start with the "
                                 "Assistant", "bad_role")
            if not any(m.content.strip() for m in c):
                quirks.append(f"hh_empty_{name}")
        if len(chosen) > 1 or len(rejected) > 1 or any(m.role == "assistant" for m in prompt[-1:]):
            quirks.append("hh_diverges_early")
    elif "prompt" not in fields:
        if isinstance(chosen, str) and isinstance(rejected, str):
            prompt = _text_prefix(chosen, rejected)
            if not prompt.strip():
                raise DataError("'chosen' and 'rejected' share no common prefix, so there is no implicit "
                                "prompt; add a 'prompt' column", field="prompt", reason="no_common_prefix")
            chosen, rejected = chosen[len(prompt):], rejected[len(prompt):]
        elif isinstance(chosen, list | tuple) and isinstance(rejected, list | tuple):
            n = _message_prefix(list(chosen), list(rejected))
            if n == 0:
                raise DataError("'chosen' and 'rejected' message lists share no first message, so there is "
                                "no implicit prompt; add a 'prompt' column", field="prompt",
                                reason="no_common_prefix")
            prompt, chosen, rejected = list(chosen[:n]), list(chosen[n:]), list(rejected[n:])
        else:
            raise _err("rejected", "must be the same kind as 'chosen' (both text or both message lists)",
                       "wrong_type")
    else:
        prompt = fields["prompt"]
        if (isinstance(chosen, list) and isinstance(rejected, list) and chosen and rejected
                and _role(chosen[0]) != "assistant" and _role(rejected[0]) != "assistant"):
            # UltraFeedback-binarized style: text prompt + whole conversations as chosen/rejected
            n = _message_prefix(chosen, rejected)
            if n == 0:
                raise DataError("'chosen' and 'rejected' conversations share no first message",
                                field="chosen", reason="no_common_prefix")
            if isinstance(prompt, str):
                last_user = [m for m in chosen[:n] if _role(m) == "user"][-1:]
                if not last_user or _as_message(last_user[0])[1] != prompt:
                    raise _err("prompt", "does not match the last user message shared by 'chosen' and "
                                         "'rejected'", "bad_value")
            prompt, chosen, rejected = chosen[:n], chosen[n:], rejected[n:]
    prompt = _with_system(prompt, fields)
    if quirks:
        common["metadata"] = {**common["metadata"], "quirks": quirks}
    pair = Pair(prompt, chosen, rejected, tie=fields.get("tie", False), **common)
    if hh_original is None:
        _check_chat_not_empty(pair.chosen, "chosen")
        _check_chat_not_empty(pair.rejected, "rejected")
    elif (hh.render(pair.prompt + pair.chosen), hh.render(pair.prompt + pair.rejected)) != hh_original:
        raise _err("chosen", "does not reconstruct from its parsed messages", "hh_format")  # parse guarantees it
    return pair


def _response(fields: dict[str, Any], nulls: set[str], kind: str) -> Any:
    if "response" in fields:
        return fields["response"]
    if "completion" in fields:
        return fields["completion"]
    return _missing("completion" if kind == "unpaired" else "response", nulls, kind)


def _unpaired(fields: dict[str, Any], nulls: set[str], common: dict[str, Any]) -> Unpaired:
    prompt = _with_system(_need(fields, nulls, "prompt", "unpaired"), fields)
    response = _response(fields, nulls, "unpaired")
    if "label" in fields:
        label = fields["label"]
        label_field = "label"
    else:
        label, label_field = _need(fields, nulls, "desirable", "unpaired"), "desirable"
    if not isinstance(label, bool):
        raise _err(label_field, f"must be true or false, got {type(label).__name__} {label!r}", "wrong_type")
    u = Unpaired(prompt, response, label, **common)
    _check_chat_not_empty(u.response, "completion")
    return u


def _rating(fields: dict[str, Any], nulls: set[str], common: dict[str, Any]) -> Rating:
    prompt = _with_system(_need(fields, nulls, "prompt", "rating"), fields)
    response = _response(fields, nulls, "rating")
    attributes = fields.get("attributes")
    if isinstance(attributes, str):
        try:
            attributes = json.loads(attributes)
        except json.JSONDecodeError:
            raise _err("attributes", "is not a JSON object", "wrong_type") from None
    if "score" not in fields and not attributes:
        _missing("score", nulls, "rating")
    r = Rating(prompt, response, score=fields.get("score"), attributes=attributes,
               scale=fields.get("scale"), **common)
    _check_chat_not_empty(r.response, "response")
    return r


def _aspect_value(name: str, value: Any) -> float | None:
    if isinstance(value, Mapping):
        for key in ("Rating", "rating", "score"):
            if key in value:
                return _aspect_value(name, value[key])
        raise _err(f"annotations.{name}", "has no 'Rating'", "missing_column")
    if isinstance(value, str):
        if value.strip().upper() in ("N/A", "NA", ""):
            return None
        try:
            return float(value)
        except ValueError:
            raise _err(f"annotations.{name}", f"must be a number, got {value!r}", "wrong_type") from None
    return value


def _ultrafeedback(fields: dict[str, Any], nulls: set[str], common: dict[str, Any]) -> list[Rating]:
    prompt = _with_system(_need(fields, nulls, "prompt", "rating"), fields)
    completions = fields["completions"]
    if not isinstance(completions, list) or not completions:
        raise _err("completions", "must be a non-empty list of objects", "wrong_type")
    out = []
    for j, c in enumerate(completions):
        where = f"completions[{j}]"
        if not isinstance(c, Mapping):
            raise _err(where, f"must be an object, got {type(c).__name__}", "wrong_type")
        response = next((c[k] for k in ("response", "text", "completion") if c.get(k) is not None), None)
        if response is None:
            raise _err(f"{where}.response", "is missing", "missing_column")
        score = next((c[k] for k in ("overall_score", "score") if c.get(k) is not None), None)
        aspects = next((c[k] for k in ("annotations", "ratings") if c.get(k) is not None), None)
        attributes = None
        if aspects is not None:
            if not isinstance(aspects, Mapping):
                raise _err(f"{where}.annotations", "must be an object of aspect -> rating", "wrong_type")
            attributes = {k: v for k, v in ((k, _aspect_value(k, v)) for k, v in aspects.items())
                          if v is not None}
        if score is None and not attributes:
            raise _err(f"{where}.overall_score", "is missing (need a score or aspect ratings)", "missing_column")
        meta = dict(common["metadata"], completion_index=j)
        if c.get("model") is not None:
            meta["model"] = c["model"]
        rid = f"{common['id']}:{j}" if common.get("id") else None
        try:
            r = Rating(prompt, response, score=score, attributes=attributes or None, scale=fields.get("scale"),
                       **{**common, "id": rid, "metadata": meta})
            _check_chat_not_empty(r.response, "response")
        except DataError as err:
            raise DataError(f"{where}: {err.message}", field=err.field, reason=err.reason) from None
        out.append(r)
    return out


def _ranking(fields: dict[str, Any], nulls: set[str], common: dict[str, Any]) -> Ranking:
    prompt = _with_system(_need(fields, nulls, "prompt", "ranking"), fields)
    responses = _need(fields, nulls, "responses", "ranking")
    if not isinstance(responses, list | tuple):
        raise _err("responses", f"must be a list, got {type(responses).__name__}", "wrong_type")
    k = len(responses)
    ranks, scores, tie_groups = fields.get("ranks"), fields.get("scores"), fields.get("tie_groups")
    for name, values in (("ranks", ranks), ("scores", scores), ("tie_groups", tie_groups)):
        if values is not None and (not isinstance(values, list | tuple) or len(values) != k):
            raise _err(name, f"must be a list of {k} values (one per response)", "wrong_type")
    if scores is not None:
        for i, s in enumerate(scores):
            if isinstance(s, bool) or not isinstance(s, int | float):
                raise _err(f"scores[{i}]", f"must be a number, got {type(s).__name__} {s!r}", "wrong_type")
            if not math.isfinite(s):
                raise _err(f"scores[{i}]", f"must be finite, got {s}", "non_finite")
    order = list(range(k))
    derived = False  # tie groups computed here from equal scores (already in sorted order)
    if ranks is not None:
        if not all(isinstance(r, int) and not isinstance(r, bool) for r in ranks) or (
                sorted(ranks) != list(range(1, k + 1)) and sorted(ranks) != list(range(k))):
            raise _err("ranks", f"{list(ranks)} is not a permutation of 1..{k} (or 0..{k - 1}); mark ties "
                                "with tie_groups or use scores", "bad_ranks")
        order = sorted(range(k), key=lambda i: ranks[i])
    elif scores is not None:
        order = sorted(range(k), key=lambda i: -scores[i])
        if tie_groups is None:
            groups, g = [0], 0
            for prev, i in zip(order, order[1:], strict=False):
                g += scores[i] != scores[prev]
                groups.append(g)
            tie_groups, derived = (groups if g < k - 1 else None), True
    if tie_groups is not None and not derived:
        tie_groups = [tie_groups[i] for i in order]
    r = Ranking(prompt, [responses[i] for i in order],
                scores=None if scores is None else [scores[i] for i in order],
                tie_groups=tie_groups, **common)
    for i, resp in enumerate(r.responses):
        _check_chat_not_empty(resp, f"responses[{i}]")
    return r
