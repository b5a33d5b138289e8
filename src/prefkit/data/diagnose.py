"""``diagnose``: what is wrong with a preference data set (the checks ``prefkit data diagnose`` prints).

Each check returns a :class:`Check` (count, share of the records it looked at, the locations of the
first examples); the biases and the annotator agreement have typed results of their own. All of them
are collected in a :class:`Report`. Locations are those of the file (``line N`` for text files, ``row
N`` otherwise) when the records come from :func:`read_located`, else ``record N`` (0-based).

The checks:

- ``refused``: rows the reader refused, by ``DataError.reason`` (e.g. ``identical``: chosen equals
  rejected, which no record may hold; ``empty``: an empty text completion);
- ``identical``: the refused rows whose alternatives are identical (reason ``identical``);
- ``exact_duplicates``: records equal to an earlier one in kind, prompt, completions, ``tie``, user and
  annotator (the same item labelled by two annotators is agreement data, not a duplicate);
- ``near_duplicates``: records whose text (prompt and completions) has an estimated Jaccard similarity
  of word 3-gram shingles >= ``near`` with an earlier record, exact duplicates not counted again
  (MinHash with LSH from ``datasketch``, Broder 1997; each LSH candidate is confirmed on its MinHash
  estimate, so the count is deterministic for a given ``seed``);
- ``empty_final_turn``: chat completions whose last message is blank (HH's ``"Assistant: "`` endings);
- ``empty_history_message``: chat prompts holding a blank message;
- ``diverges_early``: chat pairs whose two dialogues part before the last turn: a completion of several
  messages, or a prompt that ends with an assistant message (the HH layout's ``hh_diverges_early``
  rule, ``prefkit.data.layouts``).

Length bias (:class:`LengthBias`): over non-tie pairs, the share where the chosen completion is longer
and shorter (content characters, ``records.num_chars``; tokens too with a tokenizer), each with a
Wilson 95% interval; the data is length-biased when an interval excludes 1/2 of the unequal pairs.
Position bias (:class:`PositionBias`): only when pairs carry ``metadata["position"]`` or
``metadata["chosen_position"]`` (where the chosen answer was shown: ``0``/``1``, ``1``/``2``,
``"a"``/``"b"`` or ``"first"``/``"second"``); the share shown first, with its Wilson interval.
Agreement (:class:`Agreement`): items labelled by two or more annotators (``annotator_id``), Cohen's
kappa for exactly two annotators, Fleiss' kappa for more.
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from prefkit.data.layouts import ALIASES, KNOWN_FIELDS, row_to_records
from prefkit.data.records import (
    Completion,
    Pair,
    Ranking,
    Rating,
    Record,
    Unpaired,
    kind_of,
    num_chars,
    text_of,
)
from prefkit.data.sources import MAX_DEPTH, CsvRow, open_source
from prefkit.errors import ConfigError, DataError

MAX_EXAMPLES = 10
"""Locations kept per check."""
POSITION_KEYS = ("position", "chosen_position")
"""Metadata keys that say where the chosen answer was shown."""
Z95 = 1.959963984540054  # the standard normal's 97.5% quantile


@dataclass(frozen=True)
class Check:
    """One check's result: ``count`` of the ``total`` records it looked at, and where the first ones are."""

    name: str
    title: str
    count: int
    total: int
    examples: tuple[str, ...] = ()
    detail: Mapping[str, int] = field(default_factory=dict)  # e.g. the count per reason or per side

    @property
    def fraction(self) -> float | None:
        return self.count / self.total if self.total else None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "title": self.title, "count": self.count, "total": self.total,
                "fraction": self.fraction, "examples": list(self.examples), "detail": dict(self.detail)}


@dataclass(frozen=True)
class LengthBias:
    """How often the chosen completion is longer or shorter than the rejected one (non-tie pairs)."""

    unit: str  # "chars" or "tokens"
    pairs: int
    longer: int
    shorter: int
    equal: int
    longer_ci: tuple[float, float]  # Wilson 95% interval of longer / pairs
    shorter_ci: tuple[float, float]

    @property
    def biased(self) -> bool:
        """True when the chosen-longer share of the unequal pairs is not 1/2 (Wilson 95% interval)."""
        lo, hi = wilson(self.longer, self.longer + self.shorter)
        return not lo <= 0.5 <= hi

    def to_dict(self) -> dict[str, Any]:
        n = self.pairs or 1
        return {"unit": self.unit, "pairs": self.pairs, "longer": self.longer, "shorter": self.shorter,
                "equal": self.equal, "longer_share": self.longer / n, "shorter_share": self.shorter / n,
                "longer_ci": list(self.longer_ci), "shorter_ci": list(self.shorter_ci), "biased": self.biased}


@dataclass(frozen=True)
class PositionBias:
    """How often the chosen answer was the one shown first."""

    key: str
    pairs: int
    first: int
    ci: tuple[float, float]  # Wilson 95% interval of first / pairs

    @property
    def biased(self) -> bool:
        return not self.ci[0] <= 0.5 <= self.ci[1]

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "pairs": self.pairs, "first": self.first, "first_share": self.first / self.pairs,
                "ci": list(self.ci), "biased": self.biased}


@dataclass(frozen=True)
class Agreement:
    """Chance-corrected agreement between annotators on the items several of them labelled."""

    statistic: str  # "cohen" or "fleiss"
    kappa: float
    items: int  # items used
    annotators: int
    labels_per_item: int

    def to_dict(self) -> dict[str, Any]:
        return {"statistic": self.statistic, "kappa": self.kappa, "items": self.items,
                "annotators": self.annotators, "labels_per_item": self.labels_per_item}


@dataclass(frozen=True)
class Report:
    """Everything :func:`diagnose` found."""

    source: str
    rows: int
    records: int
    checks: tuple[Check, ...]
    length: tuple[LengthBias, ...] = ()
    position: PositionBias | None = None
    agreement: Agreement | None = None

    def __getitem__(self, name: str) -> Check:
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(f"no check {name!r}; checks: {[c.name for c in self.checks]}")

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "rows": self.rows, "records": self.records,
                "checks": [c.to_dict() for c in self.checks], "length_bias": [b.to_dict() for b in self.length],
                "position_bias": self.position.to_dict() if self.position else None,
                "agreement": self.agreement.to_dict() if self.agreement else None}


@dataclass
class Located:
    """Records with the location of each (``line 17`` / ``row 3``) and the rows the reader refused."""

    source: str
    rows: int
    records: list[Record]
    where: list[str]
    problems: list[DataError]


# ---------------------------------------------------------------------------------------------------
# reading with locations


def read_located(source: Any, *, format: str = "auto") -> Located:
    """Read like ``prefkit.data.read(source, collect=True)``, keeping where each record came from."""
    name, items = open_source(source, frozenset(KNOWN_FIELDS) | frozenset(ALIASES))
    items = list(items)
    if not items:
        raise DataError("no rows (the source is empty)", source=name, reason="empty_file")
    out = Located(name, len(items), [], [], [])
    for (unit, n), row in items:
        try:
            if isinstance(row, DataError):
                raise row
            records = row_to_records(row, format=format, from_text=type(row) is CsvRow)
        except DataError as err:
            problem = err
        except RecursionError:
            problem = DataError(f"is nested too deeply (more than {MAX_DEPTH} levels)", reason="too_deep")
        except (ArithmeticError, ValueError, TypeError, LookupError, AttributeError) as exc:
            problem = DataError(f"can't read this row ({type(exc).__name__})", reason="unreadable")
        else:
            out.records += records
            out.where += [f"{unit} {n}"] * len(records)
            continue
        line = n if unit == "line" else None
        src = name if unit == "line" else f"{name} row {n}"
        out.problems.append(DataError(problem.message, source=src, line=line, field=problem.field,
                                      reason=problem.reason))
    return out


def _location(err: DataError) -> str:
    if err.line is not None:
        return f"line {err.line}"
    source = err.source or ""
    return f"row {source.rsplit(' row ', 1)[1]}" if " row " in source else source or "?"


# ---------------------------------------------------------------------------------------------------
# statistics


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial share ``k / n`` (Wilson 1927, JASA 22:209); (0, 1) when n = 0."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (max(0.0, center - half), min(1.0, center + half))


def cohen_kappa(a: Sequence[Any], b: Sequence[Any]) -> float:
    """Cohen's kappa of two annotators' labels on the same items (Cohen 1960, Educ. Psychol. Meas. 20:37).

    ``kappa = (p_o - p_e) / (1 - p_e)``: ``p_o`` the observed agreement, ``p_e`` the agreement expected
    from each annotator's own label frequencies. NaN when ``p_e == 1`` (both always give one label).
    """
    if len(a) != len(b) or not a:
        raise ValueError("cohen_kappa needs two equally long, non-empty label lists")
    cats = sorted({*a, *b}, key=repr)
    ia = np.array([cats.index(x) for x in a])
    ib = np.array([cats.index(x) for x in b])
    p_o = float(np.mean(ia == ib))
    p_e = float(np.bincount(ia, minlength=len(cats)) @ np.bincount(ib, minlength=len(cats))) / len(a) ** 2
    return (p_o - p_e) / (1 - p_e) if p_e < 1 else math.nan


def fleiss_kappa(counts: Any) -> float:
    """Fleiss' kappa from an (items, categories) matrix of label counts, m labels per item (m >= 2).

    Fleiss 1971, Psychol. Bull. 76:378: ``P_i = (sum_j n_ij^2 - m) / (m (m - 1))``, ``P = mean_i P_i``,
    ``p_j = sum_i n_ij / (N m)``, ``P_e = sum_j p_j^2``, ``kappa = (P - P_e) / (1 - P_e)``. NaN when
    ``P_e == 1``.
    """
    n = np.asarray(counts, dtype=float)  # (N, k)
    m = n.sum(1)
    if n.ndim != 2 or not len(n) or np.any(m != m[0]) or m[0] < 2:
        raise ValueError("fleiss_kappa needs an (items, categories) count matrix with the same m >= 2 per row")
    m0 = m[0]
    p_i = ((n * n).sum(1) - m0) / (m0 * (m0 - 1))  # (N,)
    p_j = n.sum(0) / n.sum()  # (k,)
    p_e = float(p_j @ p_j)
    return (float(p_i.mean()) - p_e) / (1 - p_e) if p_e < 1 else math.nan


# ---------------------------------------------------------------------------------------------------
# checks


def _completions(r: Record) -> list[tuple[str, Completion]]:
    if isinstance(r, Pair):
        return [("chosen", r.chosen), ("rejected", r.rejected)]
    if isinstance(r, Ranking):
        return [(f"response {i}", x) for i, x in enumerate(r.responses)]
    return [("response", r.response)]


def _key(r: Record) -> tuple[Any, ...]:
    label = r.tie if isinstance(r, Pair) else r.desirable if isinstance(r, Unpaired) else (
        (r.score, tuple(sorted(r.attributes.items()))) if isinstance(r, Rating) else r.tie_groups)
    return (kind_of(r), r.prompt, *(c for _, c in _completions(r)), label, r.user_id, r.annotator_id)


def _check(name: str, title: str, hits: Sequence[str], total: int, detail: Mapping[str, int] | None = None
           ) -> Check:
    return Check(name, title, len(hits), total, tuple(hits[:MAX_EXAMPLES]), dict(detail or {}))


def refused(problems: Sequence[DataError], rows: int) -> list[Check]:
    """The rows the reader refused (by reason), and those of them whose alternatives are identical."""
    reasons = Counter(p.reason for p in problems)
    same = [_location(p) for p in problems if p.reason == "identical"]
    return [_check("refused", "rows refused by the reader", [_location(p) for p in problems], rows,
                   dict(reasons.most_common())),
            _check("identical", "chosen identical to rejected (refused)", same, rows)]


def exact_duplicates(records: Sequence[Record], where: Sequence[str]) -> Check:
    """Records equal to an earlier one (examples: ``line 9 = line 4``)."""
    first: dict[tuple[Any, ...], int] = {}
    hits = []
    for i, r in enumerate(records):
        j = first.setdefault(_key(r), i)
        if j != i:
            hits.append(f"{where[i]} = {where[j]}")
    return _check("exact_duplicates", "exact duplicates", hits, len(records))


_WORD = re.compile(r"\w+")


def _shingles(text: str, n: int = 3) -> set[bytes]:
    words = _WORD.findall(text.lower())
    if len(words) < n:
        return {" ".join(words).encode()}
    return {" ".join(words[i:i + n]).encode() for i in range(len(words) - n + 1)}


def near_duplicates(records: Sequence[Record], where: Sequence[str], *, threshold: float = 0.9,
                    num_perm: int = 128, seed: int = 1) -> Check:
    """Records whose estimated Jaccard similarity (word 3-grams) with an earlier one is >= ``threshold``."""
    from datasketch import MinHash, MinHashLSH

    if not 0 < threshold <= 1:
        raise ConfigError(f"near-duplicate threshold must be in (0, 1], got {threshold}")
    # above ~0.9 datasketch finds no band layout (b < 2); a lower LSH threshold only adds candidates,
    # and every candidate is confirmed on its estimate below
    lsh = MinHashLSH(threshold=min(threshold, 0.9), num_perm=num_perm)
    hashes: list[Any] = []
    seen: dict[tuple[Any, ...], int] = {}
    hits = []
    for i, r in enumerate(records):
        m = MinHash(num_perm=num_perm, seed=seed)
        text = "\n".join(text_of(x) for x in (r.prompt, *(c for _, c in _completions(r))))
        m.update_batch(list(_shingles(text)))
        hashes.append(m)
        exact = seen.setdefault(_key(r), i) != i
        if not exact:
            near = [j for j in lsh.query(m) if m.jaccard(hashes[j]) >= threshold]
            if near:
                j = min(near)
                hits.append(f"{where[i]} ~ {where[j]} ({m.jaccard(hashes[j]):.2f})")
        lsh.insert(i, m)
    return _check("near_duplicates", f"near duplicates (Jaccard >= {threshold:g})", hits, len(records))


def empty_turns(records: Sequence[Record], where: Sequence[str]) -> list[Check]:
    """Chat completions whose final message is blank, and chat prompts holding a blank message."""
    final, history = [], []
    sides: Counter[str] = Counter()
    chat = 0
    for i, r in enumerate(records):
        if isinstance(r.prompt, str):
            continue
        chat += 1
        blank = [name for name, c in _completions(r) if not isinstance(c, str) and not c[-1].content.strip()]
        if blank:
            final.append(f"{where[i]} ({', '.join(blank)})")
            sides.update(blank)
        if any(not m.content.strip() for m in r.prompt):
            history.append(where[i])
    return [_check("empty_final_turn", "empty final assistant turn", final, chat, dict(sides.most_common())),
            _check("empty_history_message", "empty message in the history", history, chat)]


def diverges_early(records: Sequence[Record], where: Sequence[str]) -> Check:
    """Chat pairs whose dialogues part before the last turn (earlier messages differ)."""
    pairs = [(i, r) for i, r in enumerate(records) if isinstance(r, Pair) and not isinstance(r.prompt, str)]
    hits = [where[i] for i, r in pairs
            if len(r.chosen) > 1 or len(r.rejected) > 1 or (r.prompt and r.prompt[-1].role == "assistant")]
    return _check("diverges_early", "histories diverge before the last turn", hits, len(pairs))


def length_bias(records: Iterable[Record], count: Callable[[Completion], int] = num_chars,
                unit: str = "chars") -> LengthBias:
    """Chosen longer / shorter / equal over non-tie pairs, with Wilson 95% intervals."""
    pairs = [r for r in records if isinstance(r, Pair) and not r.tie]
    diffs = [count(p.chosen) - count(p.rejected) for p in pairs]
    longer, shorter = sum(d > 0 for d in diffs), sum(d < 0 for d in diffs)
    n = len(pairs)
    return LengthBias(unit, n, longer, shorter, n - longer - shorter, wilson(longer, n), wilson(shorter, n))


_FIRST = {0: True, 1: True, 2: False, "a": True, "b": False, "first": True, "second": False}


def position_bias(records: Iterable[Record]) -> PositionBias | None:
    """Share of pairs whose chosen answer was shown first; None when no pair has a position field."""
    pairs = [r for r in records if isinstance(r, Pair) and not r.tie]
    key = next((k for k in POSITION_KEYS if any(k in p.metadata for p in pairs)), None)
    if key is None:
        return None
    values = [p.metadata[key] for p in pairs if key in p.metadata]
    zero_based = any(v == 0 and not isinstance(v, bool) for v in values)
    first = 0
    for v in values:
        v = v.lower() if isinstance(v, str) else v
        if isinstance(v, bool) or v not in _FIRST:
            raise DataError(f"metadata[{key!r}] must be 0/1, 1/2, 'a'/'b' or 'first'/'second', got {v!r}",
                            field=key, reason="bad_value")
        first += (v == 0) if zero_based and isinstance(v, int) else _FIRST[v]
    return PositionBias(key, len(values), first, wilson(first, len(values)))


def _label(r: Record) -> tuple[tuple[Any, ...], Any] | None:
    """(item key, label) of an annotated record: a pair's item is its prompt and the two answers in a fixed
    order, its label which of them was chosen (or ``"tie"``)."""
    if isinstance(r, Pair):
        a, b = sorted((r.chosen, r.rejected), key=text_of)
        return ("pair", r.prompt, a, b), "tie" if r.tie else ("first" if r.chosen == a else "second")
    if isinstance(r, Unpaired):
        return ("unpaired", r.prompt, r.response), r.desirable
    if isinstance(r, Rating) and r.score is not None:
        return ("rating", r.prompt, r.response), r.score
    return None


def agreement(records: Iterable[Record]) -> Agreement | None:
    """Cohen's kappa (two annotators) or Fleiss' kappa (more) on items labelled by several annotators.

    Fleiss' kappa uses the items with the most common number of labels (each annotator counted once
    per item). None when no item has labels from two annotators.
    """
    items: dict[tuple[Any, ...], dict[str, Any]] = defaultdict(dict)
    for r in records:
        got = _label(r) if r.annotator_id is not None else None
        if got is not None:
            items[got[0]].setdefault(r.annotator_id, got[1])
    multi = [labels for labels in items.values() if len(labels) >= 2]
    if not multi:
        return None
    annotators = {a for labels in multi for a in labels}
    if len(annotators) == 2:
        x, y = sorted(annotators)
        a = [labels[x] for labels in multi]
        b = [labels[y] for labels in multi]
        return Agreement("cohen", cohen_kappa(a, b), len(multi), 2, 2)
    m = Counter(len(labels) for labels in multi).most_common(1)[0][0]
    used = [labels for labels in multi if len(labels) == m]
    cats = sorted({v for labels in used for v in labels.values()}, key=repr)
    counts = [[list(labels.values()).count(c) for c in cats] for labels in used]
    return Agreement("fleiss", fleiss_kappa(counts), len(used), len({a for lb in used for a in lb}), m)


def _token_counter(tokenizer: Any) -> Callable[[Completion], int]:
    def count(x: Completion) -> int:
        texts = [x] if isinstance(x, str) else [m.content for m in x]
        return sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts if t)

    return count


def diagnose(records: Sequence[Record] | Located, *, where: Sequence[str] | None = None, near: float = 0.9,
             tokenizer: Any = None, problems: Sequence[DataError] = (), rows: int | None = None,
             source: str = "") -> Report:
    """Run every check on ``records`` (a :class:`Located` from :func:`read_located` brings its locations,
    refused rows, row count and source name). ``tokenizer`` adds the length bias in tokens."""
    if isinstance(records, Located):
        where, problems, rows, source = records.where, records.problems, records.rows, records.source
        records = records.records
    records = list(records)
    where = list(where) if where is not None else [f"record {i}" for i in range(len(records))]
    if len(where) != len(records):
        raise ValueError(f"where has {len(where)} locations for {len(records)} records")
    rows = len(records) + len(problems) if rows is None else rows
    checks = [*refused(problems, rows), exact_duplicates(records, where),
              near_duplicates(records, where, threshold=near), *empty_turns(records, where),
              diverges_early(records, where)]
    length = [length_bias(records)]
    if tokenizer is not None:
        length.append(length_bias(records, _token_counter(tokenizer), "tokens"))
    return Report(source, rows, len(records), tuple(checks), tuple(length), position_bias(records),
                  agreement(records))


__all__ = ["Agreement", "Check", "LengthBias", "Located", "POSITION_KEYS", "PositionBias", "Report",
           "agreement", "cohen_kappa", "diagnose", "diverges_early", "empty_turns", "exact_duplicates",
           "fleiss_kappa", "length_bias", "near_duplicates", "position_bias", "read_located", "refused",
           "wilson"]
