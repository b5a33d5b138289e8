"""HH-RLHF dialogue text <-> chat messages, exactly reversible.

HH-RLHF stores each side of a pair as one string, ``"\\n\\nHuman: ...\\n\\nAssistant: ..."``. ``parse``
splits it at every ``"\\n\\nHuman:"`` / ``"\\n\\nAssistant:"`` marker into ``user`` / ``assistant``
messages, dropping the single space after the colon; ``render`` writes them back. For every text that
``parse`` accepts, ``render(parse(text)) == text`` (``parse`` refuses the rest, e.g. a turn with no space
after its colon, rather than return messages that would not reconstruct the text).

Quirks seen in the real data, kept as they are: a ``"Human:"`` without the two newlines stays inside the
message content (HH has ~70 such rows); a final turn ``"\\n\\nAssistant: "`` parses to an empty assistant
message.
"""

from __future__ import annotations

import re

from prefkit.data.records import Message
from prefkit.errors import DataError

HH_START = "\n\nHuman:"
_MARKER = re.compile(r"\n\n(Human|Assistant):")
_ROLE = {"Human": "user", "Assistant": "assistant"}
_NAME = {"user": "Human", "assistant": "Assistant"}


def looks_like_hh(text: object) -> bool:
    """True when ``text`` is a string in HH dialogue form (starts with ``"\\n\\nHuman:"``)."""
    return isinstance(text, str) and text.startswith(HH_START)


def parse(text: str, field: str = "text") -> tuple[Message, ...]:
    """Split HH dialogue text into chat messages; raises DataError (reason ``hh_format``) if it can't."""
    if not looks_like_hh(text):
        raise DataError(f"field {field!r} is not HH dialogue text (must start with '\\n\\nHuman:')",
                        field=field, reason="hh_format")
    parts = _MARKER.split(text)  # ['', role, segment, role, segment, ...]
    messages = []
    for i in range(1, len(parts), 2):
        segment = parts[i + 1]
        if not segment.startswith(" "):
            raise DataError(f"field {field!r}: turn {i // 2} ({parts[i]}) has no space after its colon, "
                            "so it can't be parsed reversibly", field=field, reason="hh_format")
        messages.append(Message(_ROLE[parts[i]], segment[1:]))
    return tuple(messages)


def render(messages: tuple[Message, ...] | list[Message]) -> str:
    """HH dialogue text for user/assistant messages (the inverse of ``parse``)."""
    out = []
    for m in messages:
        if m.role not in _NAME:
            raise DataError(f"HH text has only Human/Assistant turns, got role {m.role!r}", field="role",
                            reason="bad_role")
        out.append(f"\n\n{_NAME[m.role]}: {m.content}")
    return "".join(out)
