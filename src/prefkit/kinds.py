"""The record kinds: the one vocabulary for feedback records, encoded examples, batches and the
record kind each loss trains on. Floor 0 (beside ``prefkit.errors``), so that ``prefkit.data`` and
``prefkit.losses``, which must not import each other, share it.
"""

from __future__ import annotations

from typing import Literal, get_args

RecordKind = Literal["pair", "ranking", "rating", "unpaired"]
"""``pair`` (chosen vs rejected), ``ranking`` (k responses best first), ``rating`` (scores of one
response), ``unpaired`` (one response with a desirable/undesirable label)."""

RECORD_KINDS: tuple[RecordKind, ...] = get_args(RecordKind)

__all__ = ["RecordKind", "RECORD_KINDS"]
