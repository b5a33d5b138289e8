"""Typed, frozen preference records, validated when built.

Four feedback forms, one shape each (see ``docs/data.md``):

- ``Pair``: a prompt, a ``chosen`` and a ``rejected`` completion; ``tie=True`` marks "equally good".
- ``Ranking``: a prompt and k >= 2 ``responses`` in preference order (**best first**), with optional
  ``scores`` (non-increasing, one per response) and ``tie_groups`` (0-based rank group per response,
  non-decreasing and consecutive, e.g. ``(0, 0, 1)`` = the first two are tied for best).
- ``Rating``: a prompt, one ``response``, a scalar ``score`` and/or named ``attributes`` scores, and
  optional ``scale`` bounds ``(low, high)`` that ``score`` must lie in (attribute scales may differ, so
  ``scale`` bounds ``score`` only).
- ``Unpaired``: a prompt, one ``response`` and ``desirable: bool`` (KTO-style).

A prompt is text or a tuple of chat ``Message``s (an optional leading system message, then
user/assistant/tool turns); a completion is text or a tuple of assistant (or tool) messages starting
with an assistant message. Prompt and completions of one record are either all text or all chat.
Lists and ``{"role", "content"}`` dicts are accepted and converted to tuples of ``Message``.

Validation in ``__post_init__`` raises ``prefkit.errors.DataError`` naming the field; readers add the
source and line. What is checked here: types, roles, empty or whitespace-only text (prompt, text
completions, an all-empty chat prompt), text that is not valid Unicode (a lone surrogate such as
``"\\ud800"``, which no tokenizer can encode), messages with keys other than ``role`` and ``content``
(``tool_calls``, ``name``...: refused, never dropped; a null or empty value counts as absent), numbers
(any real number, ``decimal.Decimal`` included; non-finite or too large for a float is an error), value
ranges, identical alternatives, ranks and tie groups. An assistant *message* may have empty content (HH-RLHF has rows whose final assistant
turn is blank); readers decide whether that is an error (see ``prefkit.data.readers``).

Every record takes the same keyword-only optional fields: ``id``, ``strength`` (a margin, or a soft
label p in [0, 1]; the loss decides which it reads), ``weight`` (>= 0, default 1), ``user_id``,
``annotator_id``, ``rationale``, ``source`` (``"human"``, ``"implicit"``, ``"ai:MODEL"``,
``"rm:MODEL"``) and free ``metadata``. Records are hashable (``metadata`` and ``attributes`` are left
out of the hash, not out of equality). This module imports no torch.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal, get_args

from prefkit.errors import DataError, did_you_mean
from prefkit.kinds import RecordKind

Role = Literal["system", "user", "assistant", "tool"]
ROLES: tuple[str, ...] = get_args(Role)
SOURCES: tuple[str, ...] = ("human", "implicit", "ai:MODEL", "rm:MODEL")
MESSAGE_KEYS = ("role", "content")

def bad_unicode(text: str) -> str | None:
    """Why ``text`` is not valid Unicode (``"a lone surrogate '\\ud800' at character 3"``), or None."""
    if text.isascii():
        return None
    try:
        text.encode("utf-8")  # fails exactly on lone surrogates; faster than a regex search
    except UnicodeEncodeError as err:
        return f"a lone surrogate '\\u{ord(text[err.start]):04x}' at character {err.start + 1}"
    return None


def _check_unicode(text: str, fld: str) -> None:
    why = bad_unicode(text)
    if why:
        raise DataError(f"field {fld!r} holds invalid Unicode: {why} (text must be valid UTF-8; a bad "
                        "\\u escape or bad bytes in the file give this)", field=fld, reason="encoding")


@dataclass(frozen=True)
class Message:
    """One chat turn."""

    role: Role
    content: str

    def __post_init__(self) -> None:
        if not isinstance(self.role, str):
            raise DataError(f"message role must be a string, got {type(self.role).__name__}",
                            field="role", reason="wrong_type")
        if self.role not in ROLES:
            raise DataError(f"bad message role {self.role!r}; use one of {list(ROLES)}"
                            f"{did_you_mean(self.role, ROLES)}", field="role", reason="bad_role")
        if not isinstance(self.content, str):
            raise DataError(f"message content must be a string, got {type(self.content).__name__}",
                            field="content", reason="wrong_type")
        if not self.content.isascii():
            why = bad_unicode(self.content)
            if why:
                raise DataError(f"content holds invalid Unicode: {why} (text must be valid UTF-8)",
                                field="content", reason="encoding")


Prompt = str | tuple[Message, ...]
Completion = str | tuple[Message, ...]


def is_chat(x: Any) -> bool:
    """True when ``x`` is a (non-string) sequence of chat messages."""
    return isinstance(x, tuple | list) and all(isinstance(m, Message | Mapping) for m in x)


def text_of(x: Prompt | Completion) -> str:
    """Plain-text rendering: text as is; messages as ``"role: content"`` joined by blank lines."""
    if isinstance(x, str):
        return x
    return "\n\n".join(f"{m.role}: {m.content}" for m in x)


def num_chars(x: Prompt | Completion) -> int:
    """Characters of content: the text's length, or the summed message contents (roles not counted)."""
    return len(x) if isinstance(x, str) else sum(len(m.content) for m in x)


# ---------------------------------------------------------------------------------------------------
# field checks (each raises DataError naming the field)


def _err(fld: str, message: str, reason: str) -> DataError:
    return DataError(f"field {fld!r} {message}", field=fld, reason=reason)


def _empty(value: Any) -> bool:
    return value is None or (isinstance(value, str | list | tuple | Mapping) and not value)


def _messages(value: Sequence[Any], fld: str) -> tuple[Message, ...]:
    out = []
    for i, m in enumerate(value):
        if isinstance(m, Message):
            out.append(m)
            continue
        if not isinstance(m, Mapping):
            raise _err(fld, f"must be text or a list of chat messages ({{'role', 'content'}} objects), but "
                            f"message {i} is {type(m).__name__} {_short(m, 40)}", "wrong_type")
        if "role" not in m or "content" not in m:
            raise _err(fld, f"message {i} has no {'role' if 'role' not in m else 'content'!r}", "missing_field")
        if len(m) != 2:
            extra = [k for k in m if k not in MESSAGE_KEYS and not _empty(m[k])]
            if extra:
                raise _err(fld, f"message {i} has key {extra[0]!r}, which prefkit can't keep (a message holds "
                                "only 'role' and 'content'); remove it or put what it says into 'content'",
                           "unknown_key")
        try:
            out.append(Message(m["role"], m["content"]))
        except DataError as err:
            raise _err(fld, f"message {i}: {err.message}", err.reason) from None
    return tuple(out)


def _text_or_messages(value: Any, fld: str) -> str | tuple[Message, ...]:
    """Check and normalise a prompt or completion (lists -> tuples, dicts -> Message)."""
    if isinstance(value, str):
        if not value.strip():
            raise _err(fld, "is empty", "empty")
        if not value.isascii():
            _check_unicode(value, fld)
        return value
    if isinstance(value, tuple | list):
        if not value:
            raise _err(fld, "is an empty message list", "empty")
        return _messages(value, fld)
    raise _err(fld, f"must be text or a list of chat messages, got {type(value).__name__}", "wrong_type")


def _prompt(value: Any) -> Prompt:
    p = _text_or_messages(value, "prompt")
    if isinstance(p, tuple):
        for i, m in enumerate(p):
            if m.role == "system" and i > 0:
                raise _err("prompt", f"message {i}: a system message may only come first", "bad_role")
        if not any(m.content.strip() for m in p):
            raise _err("prompt", "is empty (every message has empty content)", "empty")
    return p


def _completion(value: Any, fld: str) -> Completion:
    c = _text_or_messages(value, fld)
    if isinstance(c, tuple):
        for i, m in enumerate(c):
            if m.role not in ("assistant", "tool") or (i == 0 and m.role != "assistant"):
                raise _err(fld, f"message {i} has role {m.role!r}; a completion holds assistant messages"
                                " (tool results may follow the first)", "bad_role")
    return c


def _same_kind(prompt: Prompt, completions: Sequence[Completion], names: Sequence[str]) -> None:
    chat = isinstance(prompt, tuple)
    for c, name in zip(completions, names, strict=True):
        if isinstance(c, tuple) != chat:
            raise _err(name, f"is {'chat messages' if isinstance(c, tuple) else 'text'} but 'prompt' is "
                             f"{'chat messages' if chat else 'text'}; use one form for the whole record",
                       "wrong_type")


def _number(value: Any, fld: str) -> float:
    """``value`` as a finite float: any real number (int, float, numpy scalar, ``Decimal``...)."""
    if type(value) is float:
        if math.isfinite(value):
            return value
        raise _err(fld, f"must be finite, got {value}", "non_finite")
    if isinstance(value, bool) or not isinstance(value, numbers.Real | Decimal):  # numpy scalars are Real
        raise _err(fld, f"must be a number, got {type(value).__name__} {_short(value)}", "wrong_type")
    if isinstance(value, Decimal) and value.is_nan():
        raise _err(fld, "must be finite, got nan", "non_finite")
    try:
        v = float(value)
    except OverflowError:
        raise _err(fld, f"is too large to use as a number ({_magnitude(value)})", "out_of_range") from None
    if not math.isfinite(v):
        if isinstance(value, Decimal) and value.is_finite():
            raise _err(fld, f"is too large to use as a number ({_magnitude(value)})", "out_of_range")
        raise _err(fld, f"must be finite, got {v}", "non_finite")
    return v


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _magnitude(value: Any) -> str:
    """``"a 400-digit integer"`` or ``"1E+400"``: a huge number described without printing it all."""
    if isinstance(value, numbers.Integral):
        try:
            digits = len(str(abs(int(value))))
        except ValueError:  # over the int -> str digit limit
            return "an integer with thousands of digits; the largest number is about 1.8e308"
        return f"a {digits}-digit integer; the largest number is about 1.8e308"
    return f"{_short(value)}; the largest number is about 1.8e308"


def _opt_str(value: Any, fld: str) -> str | None:
    if value is not None:
        if not isinstance(value, str):
            raise _err(fld, f"must be a string, got {type(value).__name__}", "wrong_type")
        if not value.isascii():
            _check_unicode(value, fld)
    return value


def _bool(value: Any, fld: str) -> bool:
    if not isinstance(value, bool):
        raise _err(fld, f"must be true or false, got {type(value).__name__} {value!r}", "wrong_type")
    return value


def is_source(value: Any) -> bool:
    """True for a valid ``source``: ``"human"``, ``"implicit"``, ``"ai:MODEL"`` or ``"rm:MODEL"``."""
    if not isinstance(value, str):
        return False
    kind, _, model = value.partition(":")
    return value in ("human", "implicit") or (kind in ("ai", "rm") and bool(model.strip()))


def _check_source(value: Any) -> None:
    if value is None:
        return
    if is_source(value):
        if not value.isascii():
            _check_unicode(value, "source")
        return
    if not isinstance(value, str):
        raise _err("source", f"must be a string, got {type(value).__name__}", "wrong_type")
    raise _err("source", f"is {value!r}; use one of {list(SOURCES)} (MODEL names the model)", "bad_value")


@dataclass(frozen=True, kw_only=True)
class _Common:
    """Optional fields shared by every record (keyword-only)."""

    id: str | None = None
    strength: float | None = None  # margin, or soft label p in [0, 1]
    weight: float = 1.0
    user_id: str | None = None
    annotator_id: str | None = None
    rationale: str | None = None
    source: str | None = None  # "human" | "implicit" | "ai:MODEL" | "rm:MODEL"
    metadata: Mapping[str, Any] = field(default_factory=dict, hash=False)

    def _check_common(self) -> None:
        for name in ("id", "user_id", "annotator_id", "rationale"):
            _opt_str(getattr(self, name), name)
        if self.strength is not None:
            object.__setattr__(self, "strength", _number(self.strength, "strength"))
        w = _number(self.weight, "weight")
        if w < 0:
            raise _err("weight", f"must be >= 0, got {w}", "out_of_range")
        object.__setattr__(self, "weight", w)
        _check_source(self.source)
        if not isinstance(self.metadata, Mapping):
            raise _err("metadata", f"must be a mapping, got {type(self.metadata).__name__}", "wrong_type")
        object.__setattr__(self, "metadata", dict(self.metadata))


@dataclass(frozen=True)
class Pair(_Common):
    """A pairwise preference: ``chosen`` is preferred to ``rejected`` (or equal, when ``tie``)."""

    prompt: Prompt
    chosen: Completion
    rejected: Completion
    tie: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "prompt", _prompt(self.prompt))
        object.__setattr__(self, "chosen", _completion(self.chosen, "chosen"))
        object.__setattr__(self, "rejected", _completion(self.rejected, "rejected"))
        _same_kind(self.prompt, (self.chosen, self.rejected), ("chosen", "rejected"))
        if self.chosen == self.rejected:
            raise _err("rejected", "is identical to 'chosen'", "identical")
        _bool(self.tie, "tie")
        self._check_common()


@dataclass(frozen=True)
class Ranking(_Common):
    """k >= 2 responses in preference order, best first."""

    prompt: Prompt
    responses: tuple[Completion, ...]
    scores: tuple[float, ...] | None = None
    tie_groups: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "prompt", _prompt(self.prompt))
        if not isinstance(self.responses, tuple | list):
            raise _err("responses", f"must be a list, got {type(self.responses).__name__}", "wrong_type")
        if len(self.responses) < 2:
            raise _err("responses", f"needs at least 2 responses, got {len(self.responses)}", "too_few")
        responses = tuple(_completion(r, f"responses[{i}]") for i, r in enumerate(self.responses))
        _same_kind(self.prompt, responses, [f"responses[{i}]" for i in range(len(responses))])
        seen: dict[Completion, int] = {}
        for i, r in enumerate(responses):
            if r in seen:
                raise _err("responses", f"{seen[r]} and {i} are identical", "identical")
            seen[r] = i
        object.__setattr__(self, "responses", responses)
        k = len(responses)
        if self.scores is not None:
            if not isinstance(self.scores, tuple | list) or len(self.scores) != k:
                raise _err("scores", f"must be a list of {k} numbers (one per response)", "wrong_type")
            scores = tuple(_number(s, f"scores[{i}]") for i, s in enumerate(self.scores))
            for i in range(1, k):
                if scores[i] > scores[i - 1]:
                    raise _err("scores", f"must be non-increasing (responses are best first), but "
                                         f"scores[{i}]={scores[i]} > scores[{i - 1}]={scores[i - 1]}",
                               "bad_ranks")
            object.__setattr__(self, "scores", scores)
        if self.tie_groups is not None:
            tg = self.tie_groups
            if not isinstance(tg, tuple | list) or len(tg) != k or not all(
                    isinstance(g, int) and not isinstance(g, bool) for g in tg):
                raise _err("tie_groups", f"must be a list of {k} integers (one per response)", "wrong_type")
            tg = tuple(tg)
            if tg[0] != 0 or any(b - a not in (0, 1) for a, b in zip(tg, tg[1:], strict=False)):
                raise _err("tie_groups", f"must start at 0 and rise by 0 or 1 (best first), got {list(tg)}",
                           "bad_ranks")
            object.__setattr__(self, "tie_groups", tg)
        self._check_common()


@dataclass(frozen=True)
class Rating(_Common):
    """One response with a scalar ``score`` and/or named ``attributes`` scores (higher is better)."""

    prompt: Prompt
    response: Completion
    score: float | None = None
    attributes: Mapping[str, float] | None = field(default=None, hash=False)
    scale: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "prompt", _prompt(self.prompt))
        object.__setattr__(self, "response", _completion(self.response, "response"))
        _same_kind(self.prompt, (self.response,), ("response",))
        if self.score is None and not self.attributes:
            raise _err("score", "is missing (a rating needs a score or attribute scores)", "missing_field")
        if self.score is not None:
            object.__setattr__(self, "score", _number(self.score, "score"))
        if self.attributes is not None:
            if not isinstance(self.attributes, Mapping):
                raise _err("attributes", f"must be a mapping of name -> score, got "
                                         f"{type(self.attributes).__name__}", "wrong_type")
            attrs = {}
            for name, v in self.attributes.items():
                if not isinstance(name, str):
                    raise _err("attributes", f"has a non-string name {name!r}", "wrong_type")
                attrs[name] = _number(v, f"attributes.{name}")
            object.__setattr__(self, "attributes", attrs)
        if self.scale is not None:
            if not isinstance(self.scale, tuple | list) or len(self.scale) != 2:
                raise _err("scale", "must be (low, high)", "wrong_type")
            lo, hi = _number(self.scale[0], "scale"), _number(self.scale[1], "scale")
            if not lo < hi:
                raise _err("scale", f"must have low < high, got ({lo}, {hi})", "out_of_range")
            object.__setattr__(self, "scale", (lo, hi))
            if self.score is not None and not lo <= self.score <= hi:
                raise _err("score", f"{self.score} is outside the scale [{lo}, {hi}]", "out_of_range")
        self._check_common()


@dataclass(frozen=True)
class Unpaired(_Common):
    """One response labelled desirable or undesirable (KTO-style)."""

    prompt: Prompt
    response: Completion
    desirable: bool

    def __post_init__(self) -> None:
        object.__setattr__(self, "prompt", _prompt(self.prompt))
        object.__setattr__(self, "response", _completion(self.response, "response"))
        _same_kind(self.prompt, (self.response,), ("response",))
        _bool(self.desirable, "desirable")
        self._check_common()


Record = Pair | Ranking | Rating | Unpaired

KINDS: dict[type, RecordKind] = {Pair: "pair", Ranking: "ranking", Rating: "rating", Unpaired: "unpaired"}
"""Record class -> its kind (``prefkit.kinds.RecordKind``, the one vocabulary)."""


def kind_of(record: Record) -> RecordKind:
    """``"pair"``, ``"ranking"``, ``"rating"`` or ``"unpaired"``."""
    return KINDS[type(record)]
