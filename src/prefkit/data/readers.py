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

import gc
import sys
import warnings
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from prefkit.data.layouts import (
    ALIASES,
    COMMON_FIELDS,
    FORMATS,
    KNOWN_FIELDS,
    QUIET_EXTRAS,
    _canonical,
    row_to_records,
)
from prefkit.data.records import Record, is_source
from prefkit.data.sources import MAX_DEPTH, CsvRow, Location, first_line, open_source
from prefkit.errors import ConfigError, DataError, did_you_mean

__all__ = ["ALIASES", "COMMON_FIELDS", "FORMATS", "KNOWN_FIELDS", "MAX_DEPTH", "QUIET_EXTRAS", "Records", "load",
           "read", "row_to_records"]
_ROW_FIELDS = frozenset(KNOWN_FIELDS) | frozenset(ALIASES)  # tells a one-row JSON document from a wrapper
_KNOWN = frozenset(KNOWN_FIELDS)


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
    name, items = open_source(source, _ROW_FIELDS)
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
        if type(row) is CsvRow and row.notice:
            out.warnings.append(f"{_where(name, loc)}: {row.notice}")
        try:
            if isinstance(row, DataError):
                raise row
            records = row_to_records(row, format=format, columns=mapping, from_text=type(row) is CsvRow)
        except DataError as err:
            problem = err
        except RecursionError:
            problem = DataError(f"is nested too deeply (lists/objects more than {MAX_DEPTH} levels inside each "
                                "other)", reason="too_deep")
        except (ArithmeticError, ValueError, TypeError, LookupError, AttributeError) as exc:
            problem = DataError(f"can't read this row ({type(exc).__name__}: {first_line(exc)})",
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


# ---------------------------------------------------------------------------------------------------
# locations


def _where(name: str, loc: Location) -> str:
    return f"{name} {loc[0]} {loc[1]}"


def _locate(err: DataError, name: str, loc: Location) -> DataError:
    if loc[0] == "line":
        return DataError(err.message, source=name, line=loc[1], field=err.field, reason=err.reason)
    return DataError(err.message, source=f"{name} row {loc[1]}", field=err.field, reason=err.reason)


# ---------------------------------------------------------------------------------------------------
# columns


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
