"""``inspect_data``: what is in a preference data set (the numbers ``prefkit data inspect`` prints).

Lengths are counted on content: a text's characters, or a chat completion's summed message contents
(role names and templates not counted; ``records.num_chars``). "Chosen is longer" compares the two
*completions* of each non-tie pair (the prompt is shared, so comparing whole dialogues agrees except
where HH dialogues diverge early); pairs of equal length count as neither longer nor shorter. Token
lengths use ``tokenizer(content, add_special_tokens=False)``, summed over messages.

Duplicates: ``duplicate_prompts`` counts records whose prompt already appeared in an earlier record of
the same kind; ``duplicate_pairs`` counts pairs equal in (prompt, chosen, rejected) to an earlier one.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from prefkit.data.records import Completion, Pair, Ranking, Rating, Record, Unpaired, kind_of, num_chars


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
