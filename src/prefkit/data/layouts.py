"""One row -> records: the row layouts of ``prefkit.data.readers`` (detection, one builder per layout).

``row_to_records`` reads one row (a dict) without its location; ``readers.read`` adds the location to
every ``DataError``. Nothing is dropped silently: a known field the layout does not read, a row that fits
two layouts, or two columns giving one field with different values are errors.
"""

from __future__ import annotations

import json
import numbers
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

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
from prefkit.data.sources import ESCAPED_SURROGATE, MAX_DEPTH, decode_json, find_in_row, has_bad_text
from prefkit.errors import DataError

FORMATS = ("auto", "pair", "hh", "unpaired", "rating", "ultrafeedback", "ranking")
COMMON_FIELDS = ("id", "strength", "weight", "user_id", "annotator_id", "rationale", "source", "metadata")
KNOWN_FIELDS = (
    "prompt", "chosen", "rejected", "tie", "completion", "label", "response", "desirable", "responses",
    "ranks", "scores", "tie_groups", "score", "attributes", "scale", "completions", "system",
) + COMMON_FIELDS
ALIASES = {"instruction": "prompt", "margin": "strength", "user": "user_id", "annotator": "annotator_id"}
QUIET_EXTRAS = frozenset({"prompt_id", "messages", "score_chosen", "score_rejected", "models",
                          "correct_answers", "incorrect_answers", "custom_system_prompt"})

_KNOWN = frozenset(KNOWN_FIELDS)
_TEXT = frozenset({"prompt", "chosen", "rejected", "completion", "response", "system"})
_JSON = frozenset({"responses", "ranks", "scores", "tie_groups", "completions", "scale", "attributes",
                   "metadata"})
_NUMBER = frozenset({"score", "strength", "weight"})
_BOOL = frozenset({"tie", "label", "desirable"})
_TRUE, _FALSE = {"true", "1", "yes"}, {"false", "0", "no"}


def _canonical(col: str, mapping: Mapping[str, str]) -> str:
    return mapping.get(col, ALIASES.get(col, col))


def _err(field: str, message: str, reason: str) -> DataError:
    return DataError(f"field {field!r} {message}", field=field, reason=reason)


def _json_text(text: str, field: str) -> Any:
    """A value given as JSON text (a CSV cell, a Parquet metadata string); errors name ``field``."""
    try:
        value, end = decode_json(text, len(text) - len(text.lstrip()))
        if text[end:].strip():
            raise json.JSONDecodeError("Extra data", text, end)
    except json.JSONDecodeError as err:
        raise _err(field, f"is not valid JSON ({err.msg})", "malformed_json") from None
    if isinstance(value, DataError):
        if value.reason == "too_deep":
            raise _err(field, f"is nested too deeply (lists/objects more than {MAX_DEPTH} levels inside each "
                              "other)", "too_deep")
        raise DataError(f"field {field!r} (JSON text): {value.message}", field=field, reason=value.reason)
    if ESCAPED_SURROGATE.search(text):
        hit = find_in_row(value, has_bad_text)
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
