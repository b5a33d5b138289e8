"""``inspect_data``: what is in a preference data set (the numbers ``prefkit data inspect`` prints).

Lengths are counted on content: a text's characters, or a chat completion's summed message contents
(role names and templates not counted; ``records.num_chars``). "Chosen is longer" compares the two
*completions* of each non-tie pair (the prompt is shared, so comparing whole dialogues agrees except
where HH dialogues diverge early); pairs of equal length count as neither longer nor shorter. Token
lengths use ``tokenizer(content, add_special_tokens=False)``, summed over messages.

Duplicates: ``duplicate_prompts`` counts records whose prompt already appeared in an earlier record of
the same kind; ``duplicate_pairs`` counts pairs equal in (prompt, chosen, rejected) to an earlier one.

Users: ``users`` counts distinct ``user_id``s, ``records_per_user`` gives n/mean/min/median/max of the
records per user. ``check_users`` validates user ids for personalized training and evaluation.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from prefkit.data.records import Completion, Pair, Ranking, Rating, Record, Unpaired, kind_of, num_chars
from prefkit.errors import DataError


def _stats(values: Sequence[int]) -> dict[str, float]:
    if not values:
        return {}
    return {"n": len(values), "mean": round(statistics.fmean(values), 2), "min": min(values),
            "median": statistics.median(values), "max": max(values)}


def _fields(r: Record) -> list[tuple[str, Completion]]:
    out: list[tuple[str, Completion]] = [("prompt", r.prompt)]
    if isinstance(r, Pair):
        out += [("chosen", r.chosen), ("rejected", r.rejected)]
    elif isinstance(r, Ranking):
        out += [("response", x) for x in r.responses]
    else:
        out.append(("response", r.response))
    return out


def _token_counter(tokenizer: Any) -> Callable[[Completion], int]:
    def count(x: Completion) -> int:
        texts = [x] if isinstance(x, str) else [m.content for m in x]
        return sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts if t)

    return count


def _share(n: int, total: int) -> float | None:
    return round(n / total, 4) if total else None


def inspect_data(records: Iterable[Record], tokenizer: Any = None,
                 problems: Counter[str] | None = None) -> dict[str, Any]:
    """Counts (by kind, users, ties, quirks), length statistics, the chosen-longer share and duplicates.

    ``tokenizer`` (a ``transformers`` tokenizer) adds token lengths; ``problems`` (reason -> count, e.g.
    ``Records.skipped``) is copied into the report.
    """
    records = list(records)
    kinds = Counter(kind_of(r) for r in records)
    users = {r.user_id for r in records if r.user_id is not None}
    quirks = Counter(q for r in records for q in r.metadata.get("quirks", ()))
    pairs = [r for r in records if isinstance(r, Pair)]
    ties = sum(p.tie for p in pairs)
    chars: dict[str, list[int]] = {}
    tokens: dict[str, list[int]] = {}
    count_tokens = _token_counter(tokenizer) if tokenizer is not None else None
    for r in records:
        for name, x in _fields(r):
            chars.setdefault(name, []).append(num_chars(x))
            if count_tokens is not None:
                tokens.setdefault(name, []).append(count_tokens(x))
    report: dict[str, Any] = {
        "records": len(records),
        "by_kind": dict(sorted(kinds.items())),
        "users": len(users),
        "records_with_user": sum(r.user_id is not None for r in records),
        "records_per_user": _stats(list(Counter(r.user_id for r in records if r.user_id is not None).values())),
        "ties": ties,
        "chat_records": sum(not isinstance(r.prompt, str) for r in records),
        "quirks": dict(sorted(quirks.items())),
        "chars": {k: _stats(v) for k, v in chars.items()},
    }
    strict = [p for p in pairs if not p.tie]
    longer = sum(num_chars(p.chosen) > num_chars(p.rejected) for p in strict)
    shorter = sum(num_chars(p.chosen) < num_chars(p.rejected) for p in strict)
    report["pairs_compared"] = len(strict)
    report["chosen_longer_chars"] = {"count": longer, "share": _share(longer, len(strict)),
                                     "shorter": shorter, "equal": len(strict) - longer - shorter}
    if count_tokens is not None:
        report["tokens"] = {k: _stats(v) for k, v in tokens.items()}
        n = sum(count_tokens(p.chosen) > count_tokens(p.rejected) for p in strict)
        report["chosen_longer_tokens"] = {"count": n, "share": _share(n, len(strict))}
    prompts: Counter[tuple[str, Any]] = Counter((kind_of(r), r.prompt) for r in records)
    report["duplicate_prompts"] = sum(c - 1 for c in prompts.values())
    triples = Counter((p.prompt, p.chosen, p.rejected) for p in pairs)
    report["duplicate_pairs"] = sum(c - 1 for c in triples.values())
    report["unpaired_desirable"] = sum(r.desirable for r in records if isinstance(r, Unpaired))
    report["ratings_with_attributes"] = sum(bool(r.attributes) for r in records if isinstance(r, Rating))
    report["problems"] = dict(sorted((problems or {}).items()))
    return report


def _names(ids: Iterable[str], most: int = 3) -> str:
    ids = sorted(ids)
    return ", ".join(repr(x) for x in ids[:most]) + (f" and {len(ids) - most} more" if len(ids) > most else "")


def check_users(records: Iterable[Record], known_users: Iterable[str] | None = None, *,
                required_users: Iterable[str] | None = None, what: str = "the records") -> Counter[str]:
    """Check the user ids of a personalized job; returns records per user id.

    Raises ``DataError`` (one line) when a record has no ``user_id``; when ``known_users`` (the users a
    model was trained on) is given and a record's user is not among them (an unseen user at eval
    time); when ``required_users`` is given and one of them has no record in ``records`` (e.g. a
    training user with no pairs in this split). ``what`` names the records in messages ("the eval
    split").
    """
    records = list(records)
    missing = [i for i, r in enumerate(records) if r.user_id is None]
    if missing:
        raise DataError(f"{len(missing)} of {len(records)} records in {what} have no user_id (first: record "
                        f"{missing[0]}); a personalized model needs a user id on every record (field 'user_id', "
                        "alias 'user')", field="user_id", reason="missing_field")
    per_user: Counter[str] = Counter(r.user_id for r in records if r.user_id is not None)
    if known_users is not None:
        known = set(known_users)
        unknown = [u for u in per_user if u not in known]
        if unknown:
            raise DataError(f"{len(unknown)} user(s) in {what} are unknown to the model ({_names(unknown)}; "
                            f"it knows {len(known)} users); add each with model.add_user(user_id, shots) or "
                            "train with their pairs", field="user_id", reason="unknown_user")
    if required_users is not None:
        empty = [u for u in dict.fromkeys(required_users) if not per_user[u]]
        if empty:
            raise DataError(f"{len(empty)} user(s) have no pairs in {what} ({_names(empty)}); give every user "
                            "at least one pair there, or leave them out", field="user_id", reason="no_pairs")
    return per_user
