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

A ``.json`` file holds a JSON array of row objects (or JSON Lines); a file whose first line is not a
JSON value on its own (a pretty-printed array, or one pretty-printed row object) is read as one JSON
document, whatever its extension.

CSV cells are text: message lists and other lists/objects are JSON strings in their cells, numbers and
booleans (``true``/``false``/``1``/``0``/``yes``/``no``) are parsed by field, an empty cell is absent
(an empty text field is an error). Quoting is parsed strictly: a quote that is never closed properly
is an error on the line where its row starts (the lines it would swallow are read as rows of their
own), and a cell spanning lines that look like CSV rows gives a warning.

Nothing is changed silently: a row that fits two layouts (e.g. ``chosen``/``rejected`` and
``responses``), a known field the layout does not use, two columns giving the same field with
different values (``prompt`` and ``instruction``), a metadata key also given as a column, duplicate
JSON keys and duplicate CSV header names are all errors; a message with keys other than
``role``/``content`` (``tool_calls``...) is an error (``prefkit.data.records``).

Hardening: only regular files are read (a FIFO, device or socket is refused without being opened); a
symlink loop is named as such; a ``datasets`` folder is checked before it is opened (its JSON files
parse, its data files are regular files inside it) and a column of a file-backed feature (``Image``,
``Audio``, ``Video``...) is refused, since decoding it would open the paths stored in the data. Text
must be valid Unicode: bad UTF-8 bytes, and lone surrogates such as ``"\\ud800"`` that no tokenizer can
encode, are errors naming the row and field. Integers too long to read (over Python's 4,300-digit
limit) or too large for a float, and values nested more than ``MAX_DEPTH`` levels deep, are row
errors.

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
``Records.problems`` / ``Records.skipped``. A missing, empty or unreadable file (corrupt compression,
not a regular file, a damaged ``datasets`` folder...) always raises. Nothing else escapes: an
unexpected exception while reading a row becomes a ``DataError`` for that row (reason
``unreadable``).
"""

from __future__ import annotations

import csv
import errno
import gc
import gzip
import io
import json
import numbers
import os
import re
import stat
import sys
import warnings
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from prefkit.data import hh
from prefkit.data.records import (
    Message,
    Pair,
    Ranking,
    Rating,
    Record,
    Unpaired,
    _number,
    _short,
    bad_unicode,
    is_source,
)
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
MAX_DEPTH = 100  # lists/objects inside each other, at most

_KNOWN = frozenset(KNOWN_FIELDS)
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
    gc_was_on = gc.isenabled()
    gc.disable()  # reading allocates millions of small objects and no cycles: the collector would double the time
    try:
        return _read(source, format, columns, collect)
    finally:
        if gc_was_on:
            gc.enable()


def _read(source: Any, format: str, columns: Mapping[str, str] | None, collect: bool) -> Records:
    name, items = _open(source)
    items = list(items)
    if not items:
        raise DataError("no rows (the source is empty)", source=name, reason="empty_file")
    mapping = _check_columns(columns, items, name)
    out = Records(source=name, rows=len(items))
    src_col = _column_for("source", mapping) if format != "ultrafeedback" else None
    completions_col = _column_for("completions", mapping)
    warned_source = False
    checked: set[str] = set()
    for loc, row in items:
        if type(row) is _CsvRow and row.notice:
            out.warnings.append(f"{_where(name, loc)}: {row.notice}")
        try:
            if isinstance(row, DataError):
                raise row
            records = row_to_records(row, format=format, columns=mapping, from_text=type(row) is _CsvRow)
        except DataError as err:
            problem = err
        except RecursionError:
            problem = DataError(f"is nested too deeply (lists/objects more than {MAX_DEPTH} levels inside each "
                                "other)", reason="too_deep")
        except (ArithmeticError, ValueError, TypeError, LookupError, AttributeError) as exc:
            problem = DataError(f"can't read this row ({type(exc).__name__}: {_first_line(exc)})",
                                reason="unreadable")
        else:
            if src_col is not None and not warned_source and (completions_col is None or completions_col not in row):
                src = row.get(src_col)
                if isinstance(src, str) and not is_source(src):
                    warned_source = True
                    out.warnings.append(f"{_where(name, loc)}: column 'source' holds {src!r}, not a feedback "
                                        "source (human, implicit, ai:MODEL, rm:MODEL); kept in "
                                        "metadata['dataset_source']")
            for col in row:
                if col in checked:
                    continue
                checked.add(col)
                key = _canonical(col, mapping)
                if key not in _KNOWN and key not in QUIET_EXTRAS:
                    out.warnings.append(f"{_where(name, loc)}: unknown column {key!r} kept in metadata"
                                        f"{did_you_mean(key, KNOWN_FIELDS)}")
            out.extend(records)
            continue
        located = _locate(problem, name, loc)
        if not collect:
            raise located from None
        out.problems.append(located)
        out.skipped[located.reason] += 1
    return out


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    line = text.splitlines()[0] if text else ""
    return line if len(line) <= 200 else line[:197] + "..."


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
        return "<list>", [(("row", i), _list_row(r)) for i, r in enumerate(source)]
    raise DataError(f"can't read a {type(source).__name__}; pass a path, a list of dicts or a "
                    "datasets.Dataset", reason="wrong_type")


def _list_row(row: Any) -> Any:
    if not isinstance(row, Mapping):
        return DataError(f"expected a dict, got {type(row).__name__}", reason="wrong_type")
    bad = next((k for k in row if not isinstance(k, str)), None)
    if bad is not None:
        return DataError(f"column names must be text, got {type(bad).__name__} {_short(bad)}", reason="wrong_type")
    return row


# ---- files and folders on disk ---------------------------------------------------------------------

_SPECIAL = ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISCHR, "a character device"),
            (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def _kind_of_file(mode: int) -> str:
    return next((what for test, what in _SPECIAL if test(mode)), "not a regular file")


def _os_error(err: OSError, name: str, what: str = "") -> DataError:
    """One line for an OSError while looking at or reading ``name`` (``what``: a file inside it)."""
    subject = f"{what} " if what else ""
    if err.errno == errno.ELOOP:
        msg = (f"{subject}is a symlink loop (a symbolic link that leads back to itself, directly or through "
               "other links); point the link at a real file")
    elif err.errno in (errno.EACCES, errno.EPERM):
        msg = f"{subject}can't be read: permission denied"
    elif err.errno in (errno.ENOENT, errno.ENOTDIR):
        msg = f"{what} does not exist" if what else "no such file or folder"
    elif err.errno == errno.ENAMETOOLONG:
        msg = f"{subject}has a path that is too long"
    elif err.errno == errno.EISDIR:
        msg = f"{subject}is a folder, not a file"
    else:
        msg = f"{subject}can't be read ({err.strerror or type(err).__name__})"
    missing = err.errno in (errno.ENOENT, errno.ENOTDIR)
    return DataError(msg, source=name, reason="missing_file" if missing else "unreadable_file")


def _stat(path: Path, name: str, what: str = "") -> os.stat_result:
    try:
        return os.stat(path)
    except OSError as err:
        if isinstance(err, FileNotFoundError) and os.path.islink(path):
            raise DataError(f"{what + ' ' if what else ''}is a broken symlink (what it points to does not "
                            "exist)", source=name, reason="missing_file") from None
        raise _os_error(err, name, what) from None


def _read_regular(path: Path, name: str, what: str = "") -> bytes:
    """The bytes of a regular file; anything else (FIFO, device, socket) is refused without opening it."""
    st = _stat(path, name, what)
    if not stat.S_ISREG(st.st_mode):
        if stat.S_ISDIR(st.st_mode):
            raise DataError(f"{what + ' ' if what else ''}is a folder, not a file", source=name,
                            reason="not_a_file")
        raise DataError(f"{what + ' ' if what else ''}is {_kind_of_file(st.st_mode)}, not a regular file; "
                        "prefkit reads data only from regular files", source=name, reason="not_a_file")
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(path, flags)  # non-blocking: a FIFO swapped in after the check can't hang us
    except OSError as err:
        raise _os_error(err, name, what) from None
    try:
        with open(fd, "rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            if not stat.S_ISREG(mode):
                raise DataError(f"{what + ' ' if what else ''}is {_kind_of_file(mode)}, not a regular file",
                                source=name, reason="not_a_file")
            return f.read()
    except OSError as err:
        raise _os_error(err, name, what) from None


def _open_path(path: Path, name: str) -> tuple[str, Iterable[tuple[Location, Any]]]:
    st = _stat(path, name)
    if stat.S_ISDIR(st.st_mode):
        return _open_folder(path, name)
    raw = _read_regular(path, name)
    if not raw or raw.isspace():
        raise DataError("file is empty", source=name, reason="empty_file")
    suffixes = [s.lower() for s in path.suffixes]
    if raw[:2] == b"\x1f\x8b" or suffixes[-1:] == [".gz"]:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:
            raise DataError(f"not a readable gzip file: {_gzip_problem(err)}", source=name,
                            reason="malformed_file") from None
        if suffixes[-1:] == [".gz"]:
            suffixes = suffixes[:-1]
        if not raw or raw.isspace():
            raise DataError("file is empty (after gzip decompression)", source=name, reason="empty_file")
    kind = suffixes[-1].lstrip(".") if suffixes else ""
    if kind not in ("jsonl", "json", "csv", "parquet"):
        kind = _sniff(raw)
    if kind == "parquet":
        return name, _parquet_rows(raw, name)
    text, bad_bytes = _decode_text(raw, name)
    if kind == "csv":
        return name, _csv_rows(text, name, bad_bytes)
    return name, _json_rows(text, name, bad_bytes, array_first=kind == "json")


def _gzip_problem(err: BaseException) -> str:
    if isinstance(err, EOFError):
        return "the compressed data is cut short (a truncated file?)"
    if isinstance(err, zlib.error):
        return f"the compressed data is corrupt ({err})"
    return str(err) or type(err).__name__


def _sniff(raw: bytes) -> str:
    if raw[:4] == b"PAR1":
        return "parquet"
    head = raw.lstrip().removeprefix(b"\xef\xbb\xbf").lstrip()[:1]
    return {b"[": "json", b"{": "jsonl"}.get(head, "csv")


def _decode_text(raw: bytes, name: str) -> tuple[str, bool]:
    """The text, and whether it had bytes that are not UTF-8 (kept as lone surrogates, flagged per row)."""
    if raw[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise DataError("is UTF-16 text; save it as UTF-8", source=name, reason="encoding")
    try:
        return raw.decode("utf-8-sig"), False
    except UnicodeDecodeError as err:
        if b"\x00" in raw:
            line = raw[: err.start].count(b"\n") + 1
            raise DataError(f"not UTF-8 text (byte 0x{raw[err.start]:02X} at byte {err.start}; a binary file?)",
                            source=name, line=line, reason="encoding") from None
    return raw.decode("utf-8-sig", errors="surrogateescape"), True


def _open_folder(path: Path, name: str) -> tuple[str, Iterable[tuple[Location, Any]]]:
    """A folder written by ``save_to_disk``, checked before ``datasets`` opens anything in it."""
    if os.path.lexists(path / "dataset_dict.json"):
        info = _folder_json(path, name, "dataset_dict.json")
        splits = info.get("splits") if isinstance(info, dict) else None
        splits = [s for s in splits if isinstance(s, str)] if isinstance(splits, list) else []
        raise DataError(f"a saved DatasetDict with splits {splits}; pass one split's folder, e.g. "
                        f"{path / (splits[0] if splits else 'train')}", source=name, reason="wrong_type")
    present = [f for f in ("dataset_info.json", "state.json") if os.path.lexists(path / f)]
    if not present:
        raise DataError("is a folder but not one written by datasets' save_to_disk", source=name,
                        reason="wrong_type")
    if len(present) < 2:
        missing = "state.json" if present == ["dataset_info.json"] else "dataset_info.json"
        raise DataError(f"is a datasets folder without {missing}; save it again with save_to_disk",
                        source=name, reason="malformed_file")
    state = _folder_json(path, name, "state.json")
    if not isinstance(state, dict) or not isinstance(files := state.get("_data_files"), list) or not files:
        raise DataError("state.json lists no data files ('_data_files'); save the folder again with "
                        "save_to_disk", source=name, reason="malformed_file")
    for entry in files:
        fname = entry.get("filename") if isinstance(entry, dict) else None
        if (not isinstance(fname, str) or not fname or fname in (".", "..") or "/" in fname
                or "\\" in fname or "\x00" in fname):
            raise DataError(f"state.json names a data file {fname!r} that is not a plain file name in the "
                            "folder; refusing to read it", source=name, reason="malformed_file")
        _check_regular(path / fname, name, f"data file {fname!r}")
    if not isinstance(_folder_json(path, name, "dataset_info.json"), dict):
        raise DataError("dataset_info.json is not a JSON object; save the folder again with save_to_disk",
                        source=name, reason="malformed_file")
    try:
        import datasets
    except ImportError:
        raise DataError("reading a save_to_disk folder needs the 'datasets' package (pip install datasets)",
                        source=name, reason="wrong_type") from None
    try:
        ds = datasets.load_from_disk(os.path.abspath(path))
    except Exception as err:  # any failure inside datasets/pyarrow is a damaged folder to the user
        raise DataError(f"not a readable datasets folder ({type(err).__name__}: {_first_line(err)})",
                        source=name, reason="malformed_file") from None
    return _open_dataset(ds, name)


def _check_regular(path: Path, name: str, what: str) -> None:
    st = _stat(path, name, what)
    if not stat.S_ISREG(st.st_mode):
        raise DataError(f"{what} is {_kind_of_file(st.st_mode) if not stat.S_ISDIR(st.st_mode) else 'a folder'}, "
                        "not a regular file; refusing to read it", source=name, reason="not_a_file")


def _folder_json(path: Path, name: str, fname: str) -> Any:
    raw = _read_regular(path / fname, name, fname)
    try:
        return _DECODER.decode(raw.decode("utf-8-sig"))
    except (ValueError, RecursionError) as err:
        detail = err.msg if isinstance(err, json.JSONDecodeError) else _first_line(err) or type(err).__name__
        line = f" at line {err.lineno}" if isinstance(err, json.JSONDecodeError) else ""
        raise DataError(f"{fname} is not valid JSON ({detail}{line}); the folder is damaged, save it again "
                        "with save_to_disk", source=name, reason="malformed_file") from None


_MEDIA = frozenset({"Image", "Audio", "Video", "Pdf", "Nifti", "Mesh", "BioSequence", "BioStructure"})


def _media_columns(features: Any) -> list[tuple[str, str]]:
    """(column, feature type) of every column holding a file-backed feature that decoding would open."""
    found: list[tuple[str, str]] = []

    def walk(f: Any, col: str, depth: int) -> None:
        if depth > MAX_DEPTH:
            return
        kind = type(f).__name__
        if kind in _MEDIA or (kind != "Json" and hasattr(f, "decode_example") and hasattr(f, "decode")):
            found.append((col, kind))
        elif isinstance(f, Mapping):
            for v in f.values():
                walk(v, col, depth + 1)
        elif isinstance(f, list | tuple):
            for v in f:
                walk(v, col, depth + 1)
        elif hasattr(f, "feature"):
            walk(f.feature, col, depth + 1)

    for col, f in dict(features or {}).items():
        walk(f, col, 0)
    return found


def _open_dataset(ds: Any, name: str) -> tuple[str, Iterable[tuple[Location, Any]]]:
    if not hasattr(ds, "column_names") or isinstance(ds.column_names, dict):
        splits = list(ds.keys()) if hasattr(ds, "keys") else []
        raise DataError(f"this is a DatasetDict with splits {splits}; pass one split, e.g. ds[{splits[0]!r}]"
                        if splits else f"can't read a {type(ds).__name__}", source=name, reason="wrong_type")
    media = _media_columns(getattr(ds, "features", None))
    if media:
        col, kind = media[0]
        cols = list(dict.fromkeys(c for c, _ in media))
        raise DataError(f"column {col!r} is a datasets {kind} feature: reading it would open the files its rows "
                        f"name, and prefkit reads text only; remove it first, e.g. ds.remove_columns({cols!r})",
                        source=name, field=col, reason="media_column")
    try:
        fmt = getattr(ds, "format", None)
        if isinstance(fmt, dict) and fmt.get("type") not in (None, "python", "custom"):
            # plain Python values, not the arrays or tensors a numpy/torch/... format would give
            ds = ds.with_format(None, columns=fmt.get("columns"), output_all_columns=fmt.get("output_all_columns",
                                                                                          False))
        return name, [(("row", i), row) for i, row in enumerate(ds)]
    except Exception as err:  # a damaged Arrow file shows up while reading rows
        raise DataError(f"can't read the dataset's rows ({type(err).__name__}: {_first_line(err)})",
                        source=name, reason="malformed_file") from None


def _parquet_rows(raw: bytes, name: str) -> list[tuple[Location, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(pa.BufferReader(raw))
        rows = table.to_pylist()
    except (pa.ArrowException, OSError, ValueError, OverflowError, TypeError) as err:
        raise DataError(f"not a readable Parquet file ({type(err).__name__}: {_first_line(err)})", source=name,
                        reason="malformed_file") from None
    return [(("row", i), row) for i, row in enumerate(rows)]


# ---- JSON ------------------------------------------------------------------------------------------


class _DuplicateKey(ValueError):
    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


class _HugeInt:
    """An integer literal over Python's int-from-text digit limit (only made while locating one)."""

    def __init__(self, text: str):
        self.digits = len(text.lstrip("-"))


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    d = dict(pairs)
    if len(d) != len(pairs):
        seen: set[str] = set()
        for k, _ in pairs:
            if k in seen:
                raise _DuplicateKey(k)
            seen.add(k)
    return d


def _int_or_huge(text: str) -> Any:
    try:
        return int(text)
    except ValueError:
        return _HugeInt(text)


_DECODER = json.JSONDecoder(object_pairs_hook=_no_duplicates)
_HUGE_DECODER = json.JSONDecoder(object_pairs_hook=_no_duplicates, parse_int=_int_or_huge)
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"(?:\s*:)?|[\[\]{}]')


def _scan(text: str, pos: int) -> tuple[int, str | None]:
    """End of the JSON value at ``pos``, and the top-level key under which it nests over MAX_DEPTH."""
    depth, key, deep = 0, None, None
    for m in _TOKEN.finditer(text, pos):
        tok = m.group()
        if tok[0] == '"':
            if depth == 0:
                return m.end(), None
            if depth == 1 and tok[-1] == ":":
                key = tok[1:tok.rindex('"')]
        elif tok in "[{":
            depth += 1
            if depth > MAX_DEPTH and deep is None:
                deep = key or ""
        else:
            depth -= 1
            if depth <= 0:
                return m.end(), deep
    return len(text), deep


def _deep_error(key: str | None) -> DataError:
    what = f"field {key!r} is" if key else "the row is"
    return DataError(f"{what} nested too deeply (lists/objects more than {MAX_DEPTH} levels inside each other)",
                     field=key or None, reason="too_deep")


def _dup_error(key: str) -> DataError:
    return DataError(f"duplicate key {key!r} in a JSON object (JSON would silently keep only the last value); "
                     "remove or rename one", field=key, reason="duplicate_key")


def _decode(text: str, pos: int) -> tuple[Any, int]:
    """The JSON value at ``pos`` (or a DataError for a row-level problem) and its end.

    Raises JSONDecodeError when the text is malformed.
    """
    try:
        return _DECODER.raw_decode(text, pos)
    except json.JSONDecodeError:
        raise
    except _DuplicateKey as err:
        return _dup_error(err.key), _scan(text, pos)[0]
    except RecursionError:
        end, key = _scan(text, pos)
        return _deep_error(key), end
    except ValueError:  # an integer over Python's int-from-text digit limit: find it
        pass
    try:
        value, end = _HUGE_DECODER.raw_decode(text, pos)
    except _DuplicateKey as err:
        return _dup_error(err.key), _scan(text, pos)[0]
    except RecursionError:
        end, key = _scan(text, pos)
        return _deep_error(key), end
    hit = _find(value, lambda v: isinstance(v, _HugeInt))
    if hit is None:
        return DataError("holds a value Python can't read", reason="unreadable"), end
    top, path, huge = hit
    where = f" (at {path})" if path != top else ""
    return DataError(f"field {top!r} holds an integer with {huge.digits} digits{where}, too large to use as a "
                     "number", field=top, reason="out_of_range"), end


def _find(value: Any, test: Any) -> tuple[str, str, Any] | None:
    """(top-level key, path, value) of the first value (or key) inside a row for which ``test`` holds."""
    stack: list[tuple[Any, str, str]] = [(value, "", "")]
    while stack:
        v, top, path = stack.pop()
        if test(v):
            return top or path, path, v
        if isinstance(v, dict):
            for k, x in reversed(v.items()):
                t = top or str(k)
                if test(k):
                    return t, f"{path}.{k}" if path else str(k), k
                stack.append((x, t, f"{path}.{k}" if path else str(k)))
        elif isinstance(v, list):
            stack.extend((x, top, f"{path}[{i}]") for i, x in reversed(list(enumerate(v))))
    return None


_SURROGATES = re.compile(r"[\ud800-\udfff]")
_ESCAPED_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]")  # a \u escape JSON turns into a surrogate


def _bad_byte(char: str) -> str:
    """The byte a lone surrogate stands for after decoding with ``surrogateescape``."""
    code = ord(char)
    return f"byte 0x{code - 0xDC00:02X}" if 0xDC80 <= code <= 0xDCFF else "a bad byte sequence"


def _surrogate(v: Any) -> bool:
    return isinstance(v, str) and bad_unicode(v) is not None


def _text_checked(value: Any, raw: str, bad_bytes: bool) -> Any:
    """``value`` (parsed from ``raw``), or a DataError when ``raw`` held bad bytes or lone surrogates."""
    if bad_bytes and not raw.isascii():
        m = _SURROGATES.search(raw)
        if m is not None:
            i, what = m.start(), _bad_byte(m.group())
            hit = None if isinstance(value, DataError) else _find(value, _surrogate)
            if hit:
                top, path, _ = hit
                where = f" at {path}" if path != top else ""
                return DataError(f"field {top!r} is not valid UTF-8 text ({what}{where}); save the file as UTF-8",
                                 field=top, reason="encoding")
            return DataError(f"not valid UTF-8 text ({what} at character {i + 1}); save the file as UTF-8",
                             reason="encoding")
    if isinstance(value, DataError):
        return value
    if _ESCAPED_SURROGATE.search(raw):
        hit = _find(value, _surrogate)
        if hit:
            top, path, s = hit
            why = bad_unicode(s)
            where = f" (at {path})" if path != top else ""
            return DataError(f"field {top!r} holds invalid Unicode: {why}{where}; a \\u escape for a lone "
                             "surrogate is not text any tokenizer can encode", field=top, reason="encoding")
    if not isinstance(value, dict):
        return DataError(f"expected a JSON object per row, got {type(value).__name__}", reason="wrong_type")
    return value


def _json_rows(text: str, name: str, bad_bytes: bool, *, array_first: bool) -> Iterable[tuple[Location, Any]]:
    """JSON Lines, or one JSON document (an array of rows, or one row object) spanning lines."""
    start = len(text) - len(text.lstrip())
    if start >= len(text):
        return []
    nl = text.find("\n", start)
    first = text[start: nl if nl >= 0 else len(text)].strip()
    if text[start] == "[" and (array_first or first == "["):
        return _json_array_rows(text, name, bad_bytes, start)
    if first in ("[", "{"):
        return _json_document_rows(text, name, bad_bytes, start)
    try:
        _DECODER.decode(first)
        return _jsonl_rows(text, bad_bytes)  # the first line is a JSON value of its own: JSON Lines
    except (ValueError, RecursionError):
        pass
    try:
        value, end = _decode(text, start)
        if text[end:].strip():
            return _jsonl_rows(text, bad_bytes)
    except (json.JSONDecodeError, RecursionError):
        return _jsonl_rows(text, bad_bytes)  # malformed either way: report it line by line
    if text[start] == "[":
        return _json_array_rows(text, name, bad_bytes, start)
    return _json_document_rows(text, name, bad_bytes, start)


def _jsonl_rows(text: str, bad_bytes: bool) -> Iterator[tuple[Location, Any]]:
    for n, line in enumerate(text.split("\n"), start=1):  # not splitlines(): U+2028 may sit inside strings
        if not line or line.isspace():
            continue
        pos = 0 if line[0] not in " \t\r\f\v" else len(line) - len(line.lstrip())
        try:
            value, end = _decode(line, pos)
            if end != len(line) and not line[end:].isspace():
                raise json.JSONDecodeError("Extra data", line, end)
        except json.JSONDecodeError as err:
            value = DataError(f"malformed JSON ({err.msg} at column {err.colno})", reason="malformed_json")
        yield ("line", n), _text_checked(value, line, bad_bytes)


def _json_document_rows(text: str, name: str, bad_bytes: bool, start: int) -> list[tuple[Location, Any]]:
    """One pretty-printed JSON object: one row (a wrapper such as ``{"data": [...]}`` is refused)."""
    line = text.count("\n", 0, start) + 1
    try:
        value, end = _decode(text, start)
    except json.JSONDecodeError as err:
        raise DataError(f"malformed JSON ({err.msg} at line {err.lineno} column {err.colno}); the file holds one "
                        "JSON document spanning lines", source=name, line=err.lineno,
                        reason="malformed_json") from None
    if text[end:].strip():
        raise DataError("malformed JSON (extra data after the JSON object); expected a JSON array of row "
                        "objects, or JSON Lines (one object per line)", source=name,
                        line=text.count("\n", 0, end) + 1, reason="malformed_json")
    if isinstance(value, dict) and not value.keys() & (_KNOWN | ALIASES.keys()):
        wrapped = [k for k, v in value.items() if isinstance(v, list) and v and all(isinstance(x, dict) for x in v)]
        if wrapped:
            raise DataError(f"holds one JSON object whose {wrapped[0]!r} is a list of objects, not rows; save "
                            f"that list itself (a JSON array of row objects) or JSON Lines", source=name,
                            reason="wrong_type")
    return [(("line", line), _text_checked(value, text[start:end], bad_bytes))]


def _json_array_rows(text: str, name: str, bad_bytes: bool, start: int) -> list[tuple[Location, Any]]:
    rows: list[tuple[Location, Any]] = []
    check = bad_bytes or _ESCAPED_SURROGATE.search(text)
    counted, line = 0, 1

    def line_at(p: int) -> int:  # positions only grow: count newlines once
        nonlocal counted, line
        line += text.count("\n", counted, p)
        counted = p
        return line

    def skip(p: int) -> int:
        while p < len(text) and text[p] in " \t\r\n":
            p += 1
        return p

    def fail(p: int, msg: str) -> DataError:
        return DataError(f"malformed JSON ({msg}); rows after it can't be read", source=name,
                         line=text.count("\n", 0, p) + 1, reason="malformed_json")

    pos = skip(start + 1)
    if pos < len(text) and text[pos] == "]":
        if skip(pos + 1) != len(text):
            raise fail(skip(pos + 1), "extra data after the array")
        return rows
    while True:
        pos = skip(pos)
        try:
            value, end = _decode(text, pos)
        except json.JSONDecodeError as err:
            raise fail(err.pos, err.msg) from None
        if check or not isinstance(value, dict):
            value = _text_checked(value, text[pos:end], bad_bytes)
        rows.append((("line", line_at(pos)), value))
        pos = skip(end)
        if pos < len(text) and text[pos] == ",":
            pos += 1
            continue
        if pos < len(text) and text[pos] == "]":
            if skip(pos + 1) != len(text):
                raise fail(skip(pos + 1), "extra data after the array")
            return rows
        raise fail(pos, "expected ',' or ']'")


# ---- CSV -------------------------------------------------------------------------------------------


class _CsvRow(dict):
    """A CSV row: its cells are text, parsed by field in ``row_to_records``."""

    notice: str | None = None  # a warning about this row (a cell that may have swallowed rows)


def _csv_rows(text: str, name: str, bad_bytes: bool) -> Iterator[tuple[Location, Any]]:
    csv.field_size_limit(2**31 - 1)
    src = io.StringIO(text, newline="")
    reader = csv.reader(src, strict=True)
    try:
        header = next(reader)
    except StopIteration:
        return
    except csv.Error as err:
        raise DataError(f"can't read the CSV header ({err})", source=name, line=1, reason="malformed_csv") from None
    first: dict[str, int] = {}
    for i, col in enumerate(header):
        if col in first:
            raise DataError(f"the header names column {col!r} twice (columns {first[col] + 1} and {i + 1}); "
                            "rename one", source=name, line=1, field=col, reason="duplicate_column")
        first[col] = i
    width = len(header)
    base, start, warned = 0, reader.line_num + 1, False
    while True:
        pos = src.tell()
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            reached = base + reader.line_num
            src.seek(pos)
            bad_line = src.readline()  # the rest is read again, from the next line on
            yield ("line", start), _bad_quote(bad_line, header, err, start, reached)
            base, reader = start, csv.reader(src, strict=True)
            start = base + 1
            continue
        loc, end = ("line", start), base + reader.line_num
        start = end + 1
        if not "".join(cells).strip():
            continue
        if len(cells) > width:
            yield loc, DataError(f"row has {len(cells)} cells but the header has {width}", reason="wrong_type")
            continue
        if bad_bytes:
            bad = next(((c, m) for c, v in zip(header, cells, strict=False) if (m := _SURROGATES.search(v))), None)
            if bad:
                col, m = bad
                yield loc, DataError(f"field {col!r} is not valid UTF-8 text ({_bad_byte(m.group())} at character "
                                     f"{m.start() + 1}); save the file as UTF-8", field=col, reason="encoding")
                continue
        row = _CsvRow(zip(header, cells, strict=False))
        if end > loc[1] and not warned:
            row.notice = _swallowed(row, width, end)
            warned = row.notice is not None
        yield loc, row


def _bad_quote(line: str, header: list[str], err: csv.Error, start: int, reached: int) -> DataError:
    cells = next(csv.reader([line.rstrip("\r\n")]), [])
    col = header[len(cells) - 1] if 0 < len(cells) <= len(header) else None
    cell = f" in column {col!r}" if col else ""
    runs = f", and it runs on to line {reached}" if reached > start else ""
    return DataError(f"unbalanced quote: the quoted cell{cell} that starts on this line is not closed properly "
                     f"({err}{runs}); the lines after it are read as rows of their own. Close the quote, and "
                     'write a quote inside a quoted cell as ""', field=col, reason="unbalanced_quote")


def _swallowed(row: Mapping[str, str], width: int, end: int) -> str | None:
    """A warning when a cell spanning lines holds lines that look like CSV rows of this file."""
    if width < 2:
        return None
    for col, cell in row.items():
        if "\n" not in cell:
            continue
        rest = [x for x in cell.replace("\r\n", "\n").split("\n")[1:] if x.strip()]
        if rest and all(x.count(",") == width - 1 for x in rest):
            return (f"the cell in column {col!r} spans lines up to line {end} and holds {len(rest)} line(s) that "
                    f"look like rows of this file ({width} cells each); if a quote was left open, they were "
                    "swallowed into this cell")
    return None


# ---------------------------------------------------------------------------------------------------
# columns


def _canonical(col: str, mapping: Mapping[str, str]) -> str:
    return mapping.get(col, ALIASES.get(col, col))


def _column_for(field: str, mapping: Mapping[str, str]) -> str | None:
    """The column of a row that gives ``field`` (``mapping``: theirs -> ours), or None."""
    theirs = [c for c, ours in mapping.items() if ours == field]
    if theirs:
        return theirs[0]
    return field if _canonical(field, mapping) == field else None


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


def _json_text(text: str, field: str) -> Any:
    """A value given as JSON text (a CSV cell, a Parquet metadata string); errors name ``field``."""
    try:
        value, end = _decode(text, len(text) - len(text.lstrip()))
        if text[end:].strip():
            raise json.JSONDecodeError("Extra data", text, end)
    except json.JSONDecodeError as err:
        raise _err(field, f"is not valid JSON ({err.msg})", "malformed_json") from None
    if isinstance(value, DataError):
        if value.reason == "too_deep":
            raise _err(field, f"is nested too deeply (lists/objects more than {MAX_DEPTH} levels inside each "
                              "other)", "too_deep")
        raise DataError(f"field {field!r} (JSON text): {value.message}", field=field, reason=value.reason)
    if _ESCAPED_SURROGATE.search(text):
        hit = _find(value, _surrogate)
        if hit:
            path = field + (hit[1] if hit[1].startswith("[") else f".{hit[1]}" if hit[1] else "")
            where = f" (at {path})" if path != field else ""
            raise _err(field, f"holds invalid Unicode: {bad_unicode(hit[2])}{where}", "encoding")
    return value


def _from_text(field: str, value: Any) -> Any:
    """Parse a CSV cell by field (text stays text unless it holds a JSON message list)."""
    if not isinstance(value, str):
        return value
    if field in _TEXT:
        if value.lstrip().startswith("["):
            try:
                parsed = _json_text(value, field)
            except DataError as err:
                if err.reason == "malformed_json":
                    return value  # plain text that happens to start with "["
                raise
            if isinstance(parsed, list) and parsed and all(isinstance(m, dict) and "role" in m for m in parsed):
                return parsed
        return value
    if value == "":
        return None
    if field in _JSON:
        return _json_text(value, field)
    if field in _NUMBER:
        try:
            number = float(value)
        except ValueError:
            raise _err(field, f"must be a number, got {_short(value)}", "wrong_type") from None
        if number - number != 0 and value.strip().lower().lstrip("+-") not in ("inf", "infinity", "nan"):
            raise _err(field, f"is too large to use as a number ({_short(value)}; the largest is about 1.8e308)",
                       "out_of_range")
        return number
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
        key = mapping.get(col, ALIASES.get(col, col))
        if from_text:
            value = _from_text(key, value)
        if value is None:
            nulls.add(key)
        elif key in _KNOWN:
            if key in fields and not _same(fields[key], value):
                other = next(c for c in row if c != col and _canonical(c, mapping) == key)
                raise DataError(f"columns {other!r} and {col!r} both give field {key!r}, with different values; "
                                "keep one (or map one elsewhere with columns=)", field=key, reason="duplicate_column")
            fields[key] = value
        else:
            extras[col] = value
    kind = _detect(fields, nulls, list(row)) if format == "auto" else format
    if format == "auto" and not fields.keys() <= _USES[kind]:
        _unused(kind, fields)
    if kind == "ultrafeedback" or (isinstance(fields.get("source"), str) and not is_source(fields["source"])):
        src = fields.pop("source", None)  # the origin data set, not who gave the feedback
        if src is not None:
            if "dataset_source" in extras and extras["dataset_source"] != src:
                raise _err("dataset_source", "is a column, but 'source' holds a data set name that would go "
                                             "there too; rename one", "duplicate_column")
            extras["dataset_source"] = src
    common = _common(fields, extras)
    if kind in ("pair", "hh"):
        out: list[Record] = [_pair(fields, nulls, common, hh_text=kind == "hh")]
    elif kind == "unpaired":
        out = [_unpaired(fields, nulls, common)]
    elif kind == "rating":
        out = [_rating(fields, nulls, common)]
    elif kind == "ultrafeedback":
        out = _ultrafeedback(fields, nulls, common)
    else:
        out = [_ranking(fields, nulls, common)]
    if format != "auto" and not fields.keys() <= _USES[kind]:
        _unused(kind, fields)
    return out


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except (ValueError, TypeError, ArithmeticError):  # numpy arrays, signaling NaNs...
        return False


_OPTIONAL = frozenset({"system", *COMMON_FIELDS})
_USES: dict[str, frozenset[str]] = {  # the fields each layout reads; any other known field is an error
    "pair": frozenset({"prompt", "chosen", "rejected", "tie"}) | _OPTIONAL,
    "hh": frozenset({"prompt", "chosen", "rejected", "tie"}) | _OPTIONAL,
    "unpaired": frozenset({"prompt", "completion", "response", "label", "desirable"}) | _OPTIONAL,
    "rating": frozenset({"prompt", "response", "completion", "score", "attributes", "scale"}) | _OPTIONAL,
    "ultrafeedback": frozenset({"prompt", "completions", "scale"}) | _OPTIONAL,
    "ranking": frozenset({"prompt", "responses", "ranks", "scores", "tie_groups"}) | _OPTIONAL,
}
_SIGNS: dict[str, tuple[str, ...]] = {  # the fields that mark a layout (as ``_detect`` reads them)
    "ultrafeedback": ("completions",),
    "ranking": ("responses", "ranks", "scores", "tie_groups"),
    "pair": ("chosen", "rejected"),
    "unpaired": ("label", "desirable"),
    "rating": ("score", "attributes"),
}


def _unused(kind: str, fields: Mapping[str, Any]) -> None:
    """Raise for the known fields a ``kind`` row does not read: nothing is dropped silently."""
    extra = [f for f in fields if f not in _USES[kind]]
    base = "pair" if kind == "hh" else kind
    others = [k for k, sign in _SIGNS.items() if k != base and any(f in sign for f in extra)]
    if others:
        def cols(k: str) -> str:
            return ", ".join(f for f in _SIGNS[k] if f in fields) or "/".join(_SIGNS[k])

        other = others[0]
        first = next(f for f in extra if f in _SIGNS[other])
        raise DataError(f"row fits two layouts: {kind} ({cols(base)}) and {other} ({cols(other)}); keep the "
                        f"columns of one (or rename the others to keep them in metadata)", field=first,
                        reason="two_layouts")
    raise _err(extra[0], f"has no place in a {kind} row (it is not read, so it would be lost); remove it, or "
                         "rename it to keep it in metadata", "unused_field")


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
            if isinstance(v, int) and not isinstance(v, bool):
                try:
                    v = str(v)
                except ValueError:  # over Python's int -> text digit limit
                    raise _err(key, "is an integer too long to use as an id", "out_of_range") from None
            out[key] = v
    for key in ("strength", "weight", "rationale", "source"):
        if key in fields:
            out[key] = fields[key]
    meta = fields.get("metadata", {})
    if isinstance(meta, str):  # Parquet files we write hold metadata as a JSON string
        try:
            meta = _json_text(meta, "metadata")
        except DataError as err:
            if err.reason != "malformed_json":
                raise
            raise _err("metadata", "is not a JSON object", "wrong_type") from None
    if not isinstance(meta, Mapping):
        raise _err("metadata", f"must be an object, got {type(meta).__name__}", "wrong_type")
    if meta:
        if _too_deep(meta):
            raise _err("metadata", f"is nested too deeply (lists/objects more than {MAX_DEPTH} levels inside each "
                                   "other)", "too_deep")
        if extras and not meta.keys().isdisjoint(extras):
            key = next(k for k in extras if k in meta)
            raise _err(key, f"is both a column and a key of 'metadata' (metadata[{key!r}]); rename one",
                       "duplicate_column")
    for col, v in extras.items():
        if isinstance(v, dict | list) and _too_deep(v):
            raise _err(col, f"is nested too deeply (lists/objects more than {MAX_DEPTH} levels inside each other)",
                       "too_deep")
    out["metadata"] = {**meta, **extras} if extras else dict(meta)
    return out


def _too_deep(value: Any, limit: int = MAX_DEPTH) -> bool:
    """True when lists/objects sit more than ``limit`` levels inside each other (no recursion)."""
    level, depth = [value], 0
    while level:
        depth += 1
        if depth > limit:
            return True
        nxt = []
        for v in level:
            items = v.values() if isinstance(v, Mapping) else v
            nxt.extend(x for x in items if isinstance(x, Mapping | list | tuple))
        level = nxt
    return False


def _chat_or_text(value: Any, field: str) -> None:
    """A list holding anything but chat messages is named as such (not as a later mismatch)."""
    for i, m in enumerate(value):
        if not isinstance(m, Mapping | Message):
            raise _err(field, f"must be text or a list of chat messages ({{'role', 'content'}} objects), but "
                              f"message {i} is {type(m).__name__} {_short(m, 40)}", "wrong_type")


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


def _hh_messages(text: str, field: str) -> tuple[Message, ...]:
    try:
        return hh.parse(text, field)
    except DataError as err:
        if err.field != "content":
            raise
        raise _err(field, err.message.removeprefix("content "), err.reason) from None


def _pair(fields: dict[str, Any], nulls: set[str], common: dict[str, Any], *, hh_text: bool) -> Pair:
    chosen = _need(fields, nulls, "chosen", "pair")
    rejected = _need(fields, nulls, "rejected", "pair")
    quirks: list[str] = []
    hh_original: tuple[str, str] | None = None
    if "prompt" not in fields and (hh_text or (hh.looks_like_hh(chosen) and hh.looks_like_hh(rejected))):
        hh_original = (chosen, rejected)
        if chosen == rejected:
            raise _err("rejected", "is identical to 'chosen'", "identical")
        a, b = _hh_messages(chosen, "chosen"), _hh_messages(rejected, "rejected")
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
            _chat_or_text(chosen, "chosen")
            _chat_or_text(rejected, "rejected")
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
            _chat_or_text(chosen, "chosen")
            _chat_or_text(rejected, "rejected")
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
    completions = _need(fields, nulls, "completions", "ultrafeedback")
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


def _integers(values: Any, field: str) -> list[int]:
    """Whole numbers (``2`` or ``2.0``); anything else is named (not reported as a bad permutation)."""
    out = []
    for v in values:
        if isinstance(v, numbers.Integral) and not isinstance(v, bool):
            out.append(int(v))
            continue
        if isinstance(v, numbers.Real | Decimal) and not isinstance(v, bool):
            try:
                whole = float(v).is_integer()
            except OverflowError:
                whole = False
            if whole:
                out.append(int(v))
                continue
            raise _err(field, f"must be integers (1 = best), got {_short(v)}", "wrong_type")
        raise _err(field, f"must be integers (1 = best), got {type(v).__name__} {_short(v)}", "wrong_type")
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
        scores = [_number(s, f"scores[{i}]") for i, s in enumerate(scores)]
    order = list(range(k))
    derived = False  # tie groups computed here from equal scores (already in sorted order)
    if ranks is not None:
        ranks = _integers(ranks, "ranks")
        if sorted(ranks) != list(range(1, k + 1)) and sorted(ranks) != list(range(k)):
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
