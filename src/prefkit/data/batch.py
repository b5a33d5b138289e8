"""The batch objects the encoder produces and the log-prob engine consumes.

Layout rule, the same for every feedback form: a batch of B examples with G sequences each
(pairs: G = 2, lists: G = K, unpaired and ratings: G = 1) holds N = G * B sequences, and **row
g * B + b is sequence g of example b**. For pairs rows [0:B) are chosen, [B:2B) rejected (TRL's order);
for lists rows [kB:(k+1)B) are the k-th preferred items (item 0 best).

``layout="padded"``: ``input_ids`` is (N, T), right-padded, ``attention_mask`` 1 on real tokens,
``completion_mask`` 1 on the tokens whose log-probs are summed (the completion, EOS included).
Position t's log-prob is that of ``input_ids[:, t]`` given tokens < t.

``layout="packed"`` (the padding-free fast path) keeps the same per-sequence meaning: ``input_ids`` is
(1, total_tokens) with sequences laid end to end in row order, ``position_ids`` restart at 0 per
sequence and ``seq_lens`` (N,) gives each sequence's length. Callers read per-sequence results from the
log-prob engine, which returns them in row order whatever the layout.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import torch
from torch import Tensor

from prefkit.kinds import RecordKind


@dataclass
class Batch:
    """A collated batch of G * B sequences (see module docstring for the layout)."""

    kind: RecordKind  # the record kind (prefkit.kinds)
    group_size: int  # G: sequences per example
    input_ids: Tensor  # padded: (N, T); packed: (1, total)
    attention_mask: Tensor  # same shape as input_ids
    completion_mask: Tensor  # same shape; 1 on completion tokens (scored positions)
    layout: Literal["padded", "packed"] = "padded"
    position_ids: Tensor | None = None  # packed: (1, total), restarting at 0 per sequence
    seq_lens: Tensor | None = None  # packed: (N,) tokens per sequence, row order
    prompt_lens: Tensor | None = None  # (N,) prompt tokens per sequence (before the completion)
    # Per-example fields (B,), None when absent:
    strength: Tensor | None = None  # margin or soft label p in [0, 1]
    weight: Tensor | None = None  # example weight (default 1)
    labels: Tensor | None = None  # unpaired: bool desirable
    ties: Tensor | None = None  # pairs: bool tie flag
    scores: Tensor | None = None  # lists / ratings: (B, G) or (B, A) scores, higher better
    user_ids: list[str | None] | None = None
    example_ids: list[str | None] | None = None  # record ids, for caching per-example results
    score_names: tuple[str, ...] | None = None  # ratings: what each column of `scores` is
    extras: dict[str, Tensor] = field(default_factory=dict)

    @property
    def num_sequences(self) -> int:
        """N = G * B."""
        if self.layout == "packed":
            assert self.seq_lens is not None
            return int(self.seq_lens.numel())
        return int(self.input_ids.shape[0])

    @property
    def num_examples(self) -> int:
        """B."""
        return self.num_sequences // self.group_size

    def num_tokens(self) -> int:
        """Real (non-pad) tokens in the batch."""
        return int(self.attention_mask.sum())

    def to(self, device: torch.device | str) -> Batch:
        """A copy with every tensor on ``device``."""
        moved = {k: (v.to(device) if isinstance(v, Tensor) else v) for k, v in self.__dict__.items()
                 if k != "extras"}
        return replace(self, **moved, extras={k: v.to(device) for k, v in self.extras.items()})

    def group(self, values: Tensor) -> Tensor:
        """Reshape per-sequence values (N, ...) in row order to (B, G, ...)."""
        g, b = self.group_size, self.num_examples
        return values.reshape(g, b, *values.shape[1:]).transpose(0, 1)


def right_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """Token id lists right-padded with ``pad_id``: (N, T) ids and the (N, T) attention mask (1 on real
    tokens), T the longest row."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, :len(r)] = 1
    return ids, mask
