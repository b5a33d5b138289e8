"""The loss registry: one dict literal, name -> LossSpec.

Every loss is a pure function ``fn(policy, reference, **inputs, **params) -> LossOutput`` returning
per-example losses; see ``prefkit.losses.types`` for the input and output types. Names follow papers.
Docs (``docs/losses.md``), the CLI (``prefkit losses``) and the test matrix all read ``LOSSES``.
"""

from __future__ import annotations

from prefkit.losses.types import (
    ListLogps,
    LossOutput,
    LossSpec,
    PairLogps,
    Paper,
    Param,
    UnpairedLogps,
)

LOSSES: dict[str, LossSpec] = {
    # --- pairwise (prefkit.losses.pairwise) ---
    # --- end pairwise ---
    # --- listwise (prefkit.losses.listwise) ---
    # --- end listwise ---
    # --- unpaired (prefkit.losses.unpaired) ---
    # --- end unpaired ---
    # --- reward models (prefkit.losses.reward) ---
    # --- end reward models ---
}

__all__ = ["LOSSES", "LossSpec", "LossOutput", "PairLogps", "ListLogps", "UnpairedLogps", "Paper", "Param"]
