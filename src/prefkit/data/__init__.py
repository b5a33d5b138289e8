"""prefkit.data: typed preference records (``records``); readers, converters and writers follow."""

from prefkit.data.records import (
    Completion,
    Message,
    Pair,
    Prompt,
    Ranking,
    Rating,
    Record,
    Role,
    Unpaired,
    is_chat,
    kind_of,
    num_chars,
    text_of,
)

__all__ = [
    "Completion", "Message", "Pair", "Prompt", "Ranking", "Rating", "Record", "Role", "Unpaired",
    "is_chat", "kind_of", "num_chars", "text_of",
]
