"""Converters between feedback forms, and to/from TRL-style dicts.

- ``ratings_to_pairs``: group ratings by (prompt, user_id); ``"best_vs_worst"``, ``"best_vs_random"``
  (best against one strictly lower-scored response, drawn with ``random.Random(seed)``) or ``"all"``
  (every pair whose score gap is at least ``min_gap``). Only pairs with a gap > 0 and >= ``min_gap``
  are made; the gap becomes ``strength``, the two scores go to metadata. Ratings with attributes and
  no score are scored with ``attributes_to_score`` first (mean, or ``weights``).
- ``ranking_to_pairs``: ``"all"`` (every i < j), ``"adjacent"`` (i, i+1), ``"best_vs_rest"`` (0, j);
  responses in the same tie group make no pair; with scores the gap becomes ``strength``.
- ``pairs_to_unpaired``: KTO style, chosen -> desirable, rejected -> undesirable (ties are skipped).
- ``attributes_to_score``: per-aspect scores -> one scalar: the mean, or ``sum(w[a] * x[a])`` with
  the given weights (every weighted aspect must be present).
- ``to_trl`` / ``from_trl``: a record <-> one dict with TRL's column names (pairs: ``prompt``,
  ``chosen``, ``rejected``; unpaired: ``prompt``, ``completion``, ``label``; chat as lists of
  ``{"role", "content"}``), plus ours for the rest (``response``/``score``/``attributes``/``scale``,
  ``responses``/``scores``/``tie_groups``) and the optional fields that are set. ``from_trl(to_trl(r))
  == r``. A pair whose chat completion has only empty content (HH rows that end with an empty
  ``"\n\nAssistant: "`` turn, kept and flagged by the loader) is written back as the HH dialogue text
  it came from, the one layout that loads an empty completion.

Every converter returns a ``Records`` list whose ``skipped`` counts what made no output, by reason.
``convert`` also leaves out, as ``empty_completion``, a record that no written form would load back
(an empty completion that HH text can't hold: a KTO row made from an HH pair's empty side, a system
prompt...; with ``hh_text=False``, for Parquet, every record with an empty completion), so that what
it returns can be written and read back to equal records.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any, Literal

from prefkit.data import hh
from prefkit.data.readers import Records, row_to_records
from prefkit.data.records import Completion, Pair, Ranking, Rating, Record, Unpaired
from prefkit.errors import ConfigError, DataError

RATING_STRATEGIES = ("best_vs_worst", "best_vs_random", "all")
RANKING_STRATEGIES = ("all", "adjacent", "best_vs_rest")
SKIP_REASONS = {
    "empty_completion": "a completion with no text, e.g. HH's empty final Assistant turn: only HH dialogue "
                        "text loads it back, and this record or output type can't be written as that",
}
"""Why ``convert`` leaves a record out, for reasons that need saying (printed by ``prefkit data convert``)."""


def _common(r: Record, **changes: Any) -> dict[str, Any]:
    out = {k: getattr(r, k) for k in ("id", "strength", "weight", "user_id", "annotator_id", "rationale",
                                      "source")}
    out["metadata"] = dict(r.metadata)
    out.update(changes)
    return out


def attributes_to_score(ratings: Iterable[Rating], weights: Mapping[str, float] | None = None) -> Records:
    """Ratings whose ``score`` is the mean of their attributes, or ``sum(weights[a] * attributes[a])``.

    The old score (if any) moves to ``metadata["original_score"]``; ``scale`` is dropped (it bounded the
    old score). Ratings without attributes are skipped and counted.
    """
    out = Records(source="attributes_to_score")
    for r in ratings:
        out.rows += 1
        if not r.attributes:
            out.skipped["no_attributes"] += 1
            continue
        if weights is None:
            score = sum(r.attributes.values()) / len(r.attributes)
        else:
            missing = [a for a in weights if a not in r.attributes]
            if missing:
                raise DataError(f"rating {r.id or out.rows - 1} has no attribute {missing[0]!r} "
                                f"(it has {sorted(r.attributes)})", field="attributes", reason="missing_column")
            score = sum(w * r.attributes[a] for a, w in weights.items())
        meta = dict(r.metadata)
        if r.score is not None:
            meta["original_score"] = r.score
        out.append(replace(r, score=score, scale=None, metadata=meta))
    return out


def _scored(ratings: Iterable[Rating], weights: Mapping[str, float] | None) -> list[Rating]:
    out = []
    for r in ratings:
        if r.score is None or weights is not None:
            r = attributes_to_score([r], weights)[0]
        out.append(r)
    return out


def _pair_from(chosen: Rating, rejected: Rating, common: dict[str, Any]) -> Pair:
    gap = chosen.score - rejected.score  # type: ignore[operator]
    meta = {**common.pop("metadata"), "score_chosen": chosen.score, "score_rejected": rejected.score}
    pid = f"{chosen.id}>{rejected.id}" if chosen.id and rejected.id else None
    return Pair(chosen.prompt, chosen.response, rejected.response, **{**common, "id": pid, "strength": gap,
                                                                       "metadata": meta})


def ratings_to_pairs(ratings: Iterable[Rating], strategy: Literal["best_vs_worst", "best_vs_random", "all"]
                     = "best_vs_worst", *, min_gap: float = 0.0, seed: int = 0,
                     weights: Mapping[str, float] | None = None) -> Records:
    """Pairs from ratings of the same prompt (and user); see the module docstring."""
    if strategy not in RATING_STRATEGIES:
        raise ConfigError(f"unknown strategy {strategy!r} for ratings; choose from {list(RATING_STRATEGIES)}")
    rng = random.Random(seed)
    groups: dict[tuple[Any, Any], list[Rating]] = defaultdict(list)
    ratings = list(ratings)
    for r in _scored(ratings, weights):
        groups[(r.prompt, r.user_id)].append(r)
    out = Records(source="ratings_to_pairs", rows=len(ratings))
    for group in groups.values():
        ranked = sorted(group, key=lambda r: -r.score)  # type: ignore[operator]
        if len(ranked) < 2:
            out.skipped["single_response"] += 1
            continue
        if strategy == "all":
            candidates = [(a, b) for i, a in enumerate(ranked) for b in ranked[i + 1:]]
        else:
            best = ranked[0]
            lower = [r for r in ranked if r.score < best.score]  # type: ignore[operator]
            if not lower:
                out.skipped["all_scores_equal"] += 1
                continue
            candidates = [(best, ranked[-1] if strategy == "best_vs_worst" else rng.choice(lower))]
        for a, b in candidates:
            gap = a.score - b.score  # type: ignore[operator]
            if gap <= 0 or gap < min_gap:
                out.skipped["equal_scores" if gap <= 0 else "gap_below_min_gap"] += 1
                continue
            try:
                out.append(_pair_from(a, b, _common(a)))
            except DataError as err:  # e.g. two ratings of the same response text
                out.skipped[err.reason] += 1
    return out


def ranking_to_pairs(rankings: Iterable[Ranking], strategy: Literal["all", "adjacent", "best_vs_rest"]
                     = "all") -> Records:
    """Pairs from each ranking (best first); tied responses make no pair."""
    if strategy not in RANKING_STRATEGIES:
        raise ConfigError(f"unknown strategy {strategy!r} for rankings; choose from {list(RANKING_STRATEGIES)}")
    out = Records(source="ranking_to_pairs")
    for r in rankings:
        out.rows += 1
        k = len(r.responses)
        if strategy == "all":
            idx = [(i, j) for i in range(k) for j in range(i + 1, k)]
        elif strategy == "adjacent":
            idx = [(i, i + 1) for i in range(k - 1)]
        else:
            idx = [(0, j) for j in range(1, k)]
        for i, j in idx:
            if r.tie_groups is not None and r.tie_groups[i] == r.tie_groups[j]:
                out.skipped["tied"] += 1
                continue
            meta = {**r.metadata, "ranks": [i, j]}
            strength = r.strength
            if r.scores is not None:
                meta.update(score_chosen=r.scores[i], score_rejected=r.scores[j])
                strength = r.scores[i] - r.scores[j]
            pid = f"{r.id}:{i}>{j}" if r.id else None
            out.append(Pair(r.prompt, r.responses[i], r.responses[j],
                            **_common(r, id=pid, strength=strength, metadata=meta)))
    return out


def pairs_to_unpaired(pairs: Iterable[Pair]) -> Records:
    """KTO-style examples: each non-tie pair gives (prompt, chosen, True) and (prompt, rejected, False)."""
    out = Records(source="pairs_to_unpaired")
    for p in pairs:
        out.rows += 1
        if p.tie:
            out.skipped["tie"] += 1
            continue
        for response, good in ((p.chosen, True), (p.rejected, False)):
            uid = f"{p.id}:{'chosen' if good else 'rejected'}" if p.id else None
            out.append(Unpaired(p.prompt, response, good, **_common(p, id=uid, strength=None)))
    return out


def to_pairs(records: Iterable[Record], strategy: str | None = None, *, min_gap: float = 0.0, seed: int = 0,
             weights: Mapping[str, float] | None = None) -> Records:
    """Any mix of records -> pairs (pairs pass through; unpaired records can't become pairs: skipped)."""
    records = list(records)
    out = Records(source="to_pairs", rows=len(records))
    ratings = [r for r in records if isinstance(r, Rating)]
    rankings = [r for r in records if isinstance(r, Ranking)]
    if ratings:
        sub = ratings_to_pairs(ratings, strategy or "best_vs_worst", min_gap=min_gap, seed=seed,
                               weights=weights)
        out.extend(sub)
        out.skipped.update(sub.skipped)
    if rankings:
        sub = ranking_to_pairs(rankings, strategy or "all")
        out.extend(sub)
        out.skipped.update(sub.skipped)
    out.extend(r for r in records if isinstance(r, Pair))
    unpaired = sum(isinstance(r, Unpaired) for r in records)
    if unpaired:
        out.skipped["unpaired_cannot_pair"] += unpaired
    return out


# ---------------------------------------------------------------------------------------------------
# TRL-style dicts


def _plain(x: Completion) -> Any:
    return x if isinstance(x, str) else [{"role": m.role, "content": m.content} for m in x]


def _completions(record: Record) -> list[tuple[str, Completion]]:
    if isinstance(record, Pair):
        return [("chosen", record.chosen), ("rejected", record.rejected)]
    if isinstance(record, Ranking):
        return [(f"responses[{i}]", x) for i, x in enumerate(record.responses)]
    return [("completion" if isinstance(record, Unpaired) else "response", record.response)]


def empty_completion(record: Record) -> str | None:
    """The field of ``record`` whose chat completion has only empty content (which only HH dialogue text
    loads back), or None."""
    return next((name for name, c in _completions(record)
                 if not isinstance(c, str) and not any(m.content.strip() for m in c)), None)


def _hh_row(record: Record) -> dict[str, Any] | None:
    """``record`` as an HH dialogue-text row when that row loads back to an equal record, else None."""
    if not isinstance(record, Pair) or isinstance(record.prompt, str):
        return None
    try:
        row: dict[str, Any] = {"chosen": hh.render(record.prompt + record.chosen),
                               "rejected": hh.render(record.prompt + record.rejected)}
    except DataError:  # a role HH text has no name for (system, tool)
        return None
    row.update((k, v) for k, v in _trl_row(record).items() if k not in ("prompt", "chosen", "rejected"))
    try:
        back = row_to_records(row, format="hh")
    except DataError:
        return None
    return row if back == [record] else None


def loads_back(record: Record, *, hh_text: bool = True) -> bool:
    """Whether ``to_trl(record)``, written and read back, gives ``record`` again as far as the record's
    content goes: False only for an empty completion that (with ``hh_text``) HH text can't hold."""
    if empty_completion(record) is None:
        return True
    return hh_text and _hh_row(record) is not None


def to_trl(record: Record) -> dict[str, Any]:
    """One dict with TRL's column names (see the module docstring); optional fields only when set.

    A pair with an empty chat completion that HH text can hold becomes that HH dialogue text (``chosen``
    and ``rejected`` as whole dialogues, no ``prompt``), which loads back to the equal record."""
    if empty_completion(record) is not None:
        row = _hh_row(record)
        if row is not None:
            return row
    return _trl_row(record)


def _trl_row(record: Record) -> dict[str, Any]:
    out: dict[str, Any] = {"prompt": _plain(record.prompt)}
    if isinstance(record, Pair):
        out.update(chosen=_plain(record.chosen), rejected=_plain(record.rejected))
        if record.tie:
            out["tie"] = True
    elif isinstance(record, Unpaired):
        out.update(completion=_plain(record.response), label=record.desirable)
    elif isinstance(record, Rating):
        out["response"] = _plain(record.response)
        if record.score is not None:
            out["score"] = record.score
        if record.attributes is not None:
            out["attributes"] = dict(record.attributes)
        if record.scale is not None:
            out["scale"] = list(record.scale)
    else:
        out["responses"] = [_plain(x) for x in record.responses]
        if record.scores is not None:
            out["scores"] = list(record.scores)
        if record.tie_groups is not None:
            out["tie_groups"] = list(record.tie_groups)
    for key in ("id", "strength", "user_id", "annotator_id", "rationale", "source"):
        if getattr(record, key) is not None:
            out[key] = getattr(record, key)
    if record.weight != 1.0:
        out["weight"] = record.weight
    if record.metadata:
        out["metadata"] = dict(record.metadata)
    return out


def from_trl(row: Mapping[str, Any], format: str = "auto") -> Record:
    """The record for one TRL-style dict (the inverse of ``to_trl``; any layout ``load`` reads)."""
    records = row_to_records(row, format=format)
    if len(records) != 1:
        raise DataError(f"this row holds {len(records)} records, not one; use prefkit.data.load",
                        reason="wrong_type")
    return records[0]


def convert(records: Iterable[Record], to: Literal["pairs", "unpaired", "trl"], strategy: str | None = None,
            *, hh_text: bool = True, **kwargs: Any) -> Records:
    """``to="pairs"`` (``to_pairs``), ``"unpaired"`` (pairs first, then ``pairs_to_unpaired``) or
    ``"trl"`` (records unchanged; writers emit TRL-style rows).

    What no written form would load back is left out and counted as ``empty_completion`` (see the
    module docstring); ``hh_text=False`` (Parquet, where HH text can't share a column with chat rows)
    leaves out every record with an empty completion."""
    records = list(records)
    if to == "trl":
        out = Records(records, source="convert", rows=len(records))
    elif to == "pairs":
        out = to_pairs(records, strategy, **kwargs)
    elif to == "unpaired":
        pairs = to_pairs([r for r in records if not isinstance(r, Unpaired)], strategy, **kwargs)
        out = pairs_to_unpaired(pairs)
        out.extend(r for r in records if isinstance(r, Unpaired))
        out.rows = len(records)
        out.skipped.update(pairs.skipped)
    else:
        raise ConfigError(f"unknown target {to!r}; choose from ['pairs', 'unpaired', 'trl']")
    kept = [r for r in out if loads_back(r, hh_text=hh_text)]
    if len(kept) < len(out):
        out.skipped["empty_completion"] += len(out) - len(kept)
        out[:] = kept
    return out


__all__ = ["RANKING_STRATEGIES", "RATING_STRATEGIES", "SKIP_REASONS", "attributes_to_score", "convert",
           "empty_completion", "from_trl", "loads_back", "pairs_to_unpaired", "ranking_to_pairs",
           "ratings_to_pairs", "to_pairs", "to_trl"]
