"""Sources -> rows: a path (JSONL, JSON, CSV, Parquet, gzip, a ``save_to_disk`` folder), a hub dataset id
(:func:`hub_dataset`), a list of dicts or a ``datasets.Dataset`` becomes ``(name, [(location, row dict | DataError)])``.

Only regular files are read (a FIFO, device or socket is refused without being opened); a ``datasets``
folder is checked before ``datasets`` opens anything in it, and file-backed feature columns (``Image``,
``Audio``...) are refused. JSON is decoded with duplicate keys, integers over Python's digit limit and
nesting too deep reported per row; bad UTF-8 bytes and lone surrogates are row errors naming the field.
``prefkit.data.readers`` documents the behaviour; ``prefkit.data.layouts`` turns rows into records.
"""

from __future__ import annotations

import csv
import errno
import gzip
import io
import json
import os
import re
import stat
import zlib
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from prefkit.data.records import _short, bad_unicode
from prefkit.errors import DataError

MAX_DEPTH = 100  # lists/objects inside each other, at most

Location = tuple[str, int]  # ("line", n) or ("row", i)


def open_source(source: Any, known: frozenset[str] = frozenset()) -> tuple[str, Iterable[tuple[Location, Any]]]:
    """(name, [(location, row dict | DataError)]) for a path, list of dicts or ``datasets.Dataset``.

    ``known``: the field names of a row, to tell one pretty-printed row object from a wrapper object.
    """
    if isinstance(source, str) and (hub := hub_dataset(source)) is not None:
        cache, missing = hub_dataset_missing(source)
        try:
            import datasets
            ds = None if missing else datasets.load_dataset(hub[0], split=hub[2], revision=hub[1], cache_dir=cache)
        except Exception as err:  # not found, no such split, no network: one line
            missing = f"can't load hub dataset {hub[0]!r} split {hub[2]!r} ({type(err).__name__}: {first_line(err)})"
        if missing:
            raise DataError(missing, source=source, reason="missing_file")
        return _open_dataset(ds, source)
    if isinstance(source, str | Path):
        return _open_path(Path(source), str(source), known)
    module = type(source).__module__ or ""
    if module.startswith("datasets"):
        return _open_dataset(source, f"<{type(source).__name__}>")
    if isinstance(source, list | tuple):
        return "<list>", [(("row", i), _list_row(r)) for i, r in enumerate(source)]
    raise DataError(f"can't read a {type(source).__name__}; pass a path, a list of dicts or a "
                    "datasets.Dataset", reason="wrong_type")


HUB_DATASET = re.compile(r"([A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*?)(?:@([\w./-]+?))?(?::([\w.-]+))?")


def hub_dataset(spec: str) -> tuple[str, str | None, str] | None:
    """(repo id, revision, split: ``train`` by default) for a hub dataset id ``org/name[@revision][:split]`` naming no
    local file or folder (a local one wins); else None. Read with ``datasets.load_dataset`` (offline: its cache)."""
    m = None if os.path.lexists(os.path.expanduser(spec)) else HUB_DATASET.fullmatch(spec)
    suffixes = (".jsonl", ".json", ".csv", ".parquet", ".gz", ".txt", ".md")  # a local file name, not a hub id
    return (m[1], m[2], m[3] or "train") if m and not m[1].lower().endswith(suffixes) else None


def hub_dataset_missing(spec: str) -> tuple[str, str | None]:
    """(``datasets``' cache folder, why hub dataset ``spec`` can't be read: offline and not cached, or None)."""
    env, repo = os.environ.get, (hub_dataset(spec) or (spec,))[0]
    cache = os.path.expanduser(env("HF_DATASETS_CACHE") or os.path.join(env("HF_HOME") or os.path.join(
        env("XDG_CACHE_HOME") or "~/.cache", "huggingface"), "datasets"))
    offline = (env("HF_HUB_OFFLINE") or env("HF_DATASETS_OFFLINE") or "").upper() in ("1", "ON", "YES", "TRUE")
    cached = any(p.is_dir() for p in Path(cache, repo.replace("/", "___")).glob("*/*/*"))
    return cache, None if cached or not offline else f"dataset {repo!r} is not in the local Hugging Face datasets cache ({cache}) and the hub is offline (HF_HUB_OFFLINE=1); download it first or pass a local file"


def _list_row(row: Any) -> Any:
    if not isinstance(row, Mapping):
        return DataError(f"expected a dict, got {type(row).__name__}", reason="wrong_type")
    bad = next((k for k in row if not isinstance(k, str)), None)
    if bad is not None:
        return DataError(f"column names must be text, got {type(bad).__name__} {_short(bad)}", reason="wrong_type")
    return row


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    line = text.splitlines()[0] if text else ""
    return line if len(line) <= 200 else line[:197] + "..."


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


def _open_path(path: Path, name: str, known: frozenset[str]) -> tuple[str, Iterable[tuple[Location, Any]]]:
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
    return name, _json_rows(text, name, bad_bytes, known, array_first=kind == "json")


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
        raise DataError(f"not a readable datasets folder ({type(err).__name__}: {first_line(err)})",
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
        detail = err.msg if isinstance(err, json.JSONDecodeError) else first_line(err) or type(err).__name__
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
        raise DataError(f"can't read the dataset's rows ({type(err).__name__}: {first_line(err)})",
                        source=name, reason="malformed_file") from None


def _parquet_rows(raw: bytes, name: str) -> list[tuple[Location, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(pa.BufferReader(raw))
        rows = table.to_pylist()
    except (pa.ArrowException, OSError, ValueError, OverflowError, TypeError) as err:
        raise DataError(f"not a readable Parquet file ({type(err).__name__}: {first_line(err)})", source=name,
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


def decode_json(text: str, pos: int) -> tuple[Any, int]:
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
    hit = find_in_row(value, lambda v: isinstance(v, _HugeInt))
    if hit is None:
        return DataError("holds a value Python can't read", reason="unreadable"), end
    top, path, huge = hit
    where = f" (at {path})" if path != top else ""
    return DataError(f"field {top!r} holds an integer with {huge.digits} digits{where}, too large to use as a "
                     "number", field=top, reason="out_of_range"), end


def find_in_row(value: Any, test: Any) -> tuple[str, str, Any] | None:
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
ESCAPED_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]")  # a \u escape JSON turns into a surrogate


def _bad_byte(char: str) -> str:
    """The byte a lone surrogate stands for after decoding with ``surrogateescape``."""
    code = ord(char)
    return f"byte 0x{code - 0xDC00:02X}" if 0xDC80 <= code <= 0xDCFF else "a bad byte sequence"


def has_bad_text(v: Any) -> bool:
    return isinstance(v, str) and bad_unicode(v) is not None


def _text_checked(value: Any, raw: str, bad_bytes: bool) -> Any:
    """``value`` (parsed from ``raw``), or a DataError when ``raw`` held bad bytes or lone surrogates."""
    if bad_bytes and not raw.isascii():
        m = _SURROGATES.search(raw)
        if m is not None:
            i, what = m.start(), _bad_byte(m.group())
            hit = None if isinstance(value, DataError) else find_in_row(value, has_bad_text)
            if hit:
                top, path, _ = hit
                where = f" at {path}" if path != top else ""
                return DataError(f"field {top!r} is not valid UTF-8 text ({what}{where}); save the file as UTF-8",
                                 field=top, reason="encoding")
            return DataError(f"not valid UTF-8 text ({what} at character {i + 1}); save the file as UTF-8",
                             reason="encoding")
    if isinstance(value, DataError):
        return value
    if ESCAPED_SURROGATE.search(raw):
        hit = find_in_row(value, has_bad_text)
        if hit:
            top, path, s = hit
            why = bad_unicode(s)
            where = f" (at {path})" if path != top else ""
            return DataError(f"field {top!r} holds invalid Unicode: {why}{where}; a \\u escape for a lone "
                             "surrogate is not text any tokenizer can encode", field=top, reason="encoding")
    if not isinstance(value, dict):
        return DataError(f"expected a JSON object per row, got {type(value).__name__}", reason="wrong_type")
    return value


def _json_rows(text: str, name: str, bad_bytes: bool, known: frozenset[str], *, array_first: bool) -> Iterable[tuple[Location, Any]]:
    """JSON Lines, or one JSON document (an array of rows, or one row object) spanning lines."""
    start = len(text) - len(text.lstrip())
    if start >= len(text):
        return []
    nl = text.find("\n", start)
    first = text[start: nl if nl >= 0 else len(text)].strip()
    if text[start] == "[" and (array_first or first == "["):
        return _json_array_rows(text, name, bad_bytes, start)
    if first in ("[", "{"):
        return _json_document_rows(text, name, bad_bytes, start, known)
    try:
        _DECODER.decode(first)
        return _jsonl_rows(text, bad_bytes)  # the first line is a JSON value of its own: JSON Lines
    except (ValueError, RecursionError):
        pass
    try:
        value, end = decode_json(text, start)
        if text[end:].strip():
            return _jsonl_rows(text, bad_bytes)
    except (json.JSONDecodeError, RecursionError):
        return _jsonl_rows(text, bad_bytes)  # malformed either way: report it line by line
    if text[start] == "[":
        return _json_array_rows(text, name, bad_bytes, start)
    return _json_document_rows(text, name, bad_bytes, start, known)


def _jsonl_rows(text: str, bad_bytes: bool) -> Iterator[tuple[Location, Any]]:
    for n, line in enumerate(text.split("\n"), start=1):  # not splitlines(): U+2028 may sit inside strings
        if not line or line.isspace():
            continue
        pos = 0 if line[0] not in " \t\r\f\v" else len(line) - len(line.lstrip())
        try:
            value, end = decode_json(line, pos)
            if end != len(line) and not line[end:].isspace():
                raise json.JSONDecodeError("Extra data", line, end)
        except json.JSONDecodeError as err:
            value = DataError(f"malformed JSON ({err.msg} at column {err.colno})", reason="malformed_json")
        yield ("line", n), _text_checked(value, line, bad_bytes)


def _json_document_rows(text: str, name: str, bad_bytes: bool, start: int, known: frozenset[str]) -> list[tuple[Location, Any]]:
    """One pretty-printed JSON object: one row (a wrapper such as ``{"data": [...]}`` is refused)."""
    line = text.count("\n", 0, start) + 1
    try:
        value, end = decode_json(text, start)
    except json.JSONDecodeError as err:
        raise DataError(f"malformed JSON ({err.msg} at line {err.lineno} column {err.colno}); the file holds one "
                        "JSON document spanning lines", source=name, line=err.lineno,
                        reason="malformed_json") from None
    if text[end:].strip():
        raise DataError("malformed JSON (extra data after the JSON object); expected a JSON array of row "
                        "objects, or JSON Lines (one object per line)", source=name,
                        line=text.count("\n", 0, end) + 1, reason="malformed_json")
    if isinstance(value, dict) and not value.keys() & known:
        wrapped = [k for k, v in value.items() if isinstance(v, list) and v and all(isinstance(x, dict) for x in v)]
        if wrapped:
            raise DataError(f"holds one JSON object whose {wrapped[0]!r} is a list of objects, not rows; save "
                            f"that list itself (a JSON array of row objects) or JSON Lines", source=name,
                            reason="wrong_type")
    return [(("line", line), _text_checked(value, text[start:end], bad_bytes))]


def _json_array_rows(text: str, name: str, bad_bytes: bool, start: int) -> list[tuple[Location, Any]]:
    rows: list[tuple[Location, Any]] = []
    check = bad_bytes or ESCAPED_SURROGATE.search(text)
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
            value, end = decode_json(text, pos)
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


class CsvRow(dict):
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
        row = CsvRow(zip(header, cells, strict=False))
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
