"""Segment attention: exact block-sparse attention for packed / prompt-shared rows, on plain SDPA.

A packed row holds several independent segments. A dense block-diagonal mask makes SDPA compute every
(query, key) pair of the row and loses the causal fast path; FlexAttention skips the empty blocks but
has no CPU backward (torch 2.13), and flash-attn's varlen kernels need CUDA and cannot express a
shared prompt. This module registers an attention function with transformers' ``AttentionInterface``
that runs one ``scaled_dot_product_attention`` call per segment instead:

- an unshared sequence or a shared prompt: its own queries and keys, ``is_causal=True``;
- completion g of a shared prompt: its queries against ``[prompt keys, its own keys]`` with a
  lower-right causal mask (every prompt key visible, causal inside the completion);
- a sequence of a bidirectional encoder (``Segments.bidirectional``): its queries against every key of
  the sequence but its last token, without a mask (see :class:`Segments`).

Nothing outside the segments is computed. Segments of the same shape (length, and shared-prompt
length) are batched into one call, so the cost is one kernel launch per distinct shape and layer: a
batch of equally long sequences costs one call per layer (two with prompt sharing), not one per
sequence.

Use :func:`segment_attention` as a context manager around the decoder call; it switches the model's
``config._attn_implementation`` to ``"prefkit_segments"`` and restores it on exit (so it cannot serve
activation checkpointing, whose recomputation runs after the exit; the packing module then uses dense
masks). The segments travel
to every attention layer through the forward kwargs (``prefkit_segments=...``).
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention.bias import causal_lower_right

NAME = "prefkit_segments"


SMALL_DOC_TOKENS = 64
"""A shared-prompt unit ``[prompt, completion_1..G]`` at most this long runs as one dense block (one
(L, L) mask shared by every unit of the same piece lengths) instead of one call per piece: for short
sequences the per-call overhead costs more than the extra (completion_i, completion_j) pairs."""


@dataclass
class Segments:
    """The segments of one packed row (batch size 1), covering positions [0, L) in order.

    Each entry is ``(start, stop, prompt)``: queries ``[start, stop)``; ``prompt`` is ``(p0, p1)`` when
    the segment is a completion that also sees a shared prompt at ``[p0, p1)``, else None.

    Segments of the same shape (query length, prompt length) run as one batched SDPA call: the row's
    queries are gathered into ``(n, H, C, D)`` blocks per shape (views when the segments lie end to
    end) and scattered back, so a batch of many equally long sequences costs one call per layer. A
    short shared-prompt unit (prompt followed by its completions, at most :data:`SMALL_DOC_TOKENS`)
    runs as one block with its (prompt, completion) mask, batched with the units of equal piece lengths.

    ``bidirectional`` (encoders; no shared prompts): a segment's queries see every key of the segment
    except its last token, which no returned state depends on, as in a causal model (the packed engine
    returns the state *before* each scored token; a reward model's pooling puts a placeholder token
    there). A one-token segment sees itself.
    """

    spans: list[tuple[int, int, tuple[int, int] | None]]
    bidirectional: bool = False
    _groups: list[_Group] | None = field(default=None, repr=False)
    _inverse: Tensor | None = field(default=None, repr=False)
    _perm: Tensor | None = field(default=None, repr=False)  # the row in group order: one gather, then views

    def groups(self, device: torch.device) -> tuple[list[_Group], Tensor | None]:
        """Batched groups and the inverse of their query order (None: the identity); built once."""
        if self._groups is None and GRID_UNIT_TOKENS:
            self._groups, self._inverse = _grid(self.spans, device, self.bidirectional)
        if self._groups is None:
            completions: dict[tuple[int, int], list[tuple[int, int]]] = {}
            for start, stop, prompt in self.spans:
                if prompt is not None:
                    completions.setdefault(prompt, []).append((start, stop))
            # key -> list of (query positions, key positions) blocks; key = ("seg", C, P) or ("doc", lengths)
            items: dict[tuple, list[tuple[list[tuple[int, int]], list[tuple[int, int]]]]] = {}
            for start, stop, prompt in self.spans:
                if prompt is not None:
                    continue
                comps = completions.get((start, stop), [])
                pieces = [(start, stop), *comps]
                if not comps or sum(b - a for a, b in pieces) <= SMALL_DOC_TOKENS:
                    items.setdefault(("doc", tuple(b - a for a, b in pieces)), []).append((pieces, pieces))
                    continue
                items.setdefault(("seg", stop - start, 0), []).append(([(start, stop)], [(start, stop)]))
                for a, b in comps:
                    items.setdefault(("seg", b - a, stop - start), []).append(([(a, b)], [(start, stop), (a, b)]))
            groups, order = [], []
            for key, blocks in items.items():
                q_idx = _ranges([qs for qs, _ in blocks])
                n = len(blocks)
                q_len = len(q_idx) // n
                if key[0] == "doc" or key[2] == 0:
                    k_idx, k_len = None, q_len
                    mask = None if len(key[1] if key[0] == "doc" else [0]) == 1 else _doc_mask(key[1])
                else:
                    k_idx = _ranges([ks for _, ks in blocks])
                    k_len = len(k_idx) // n
                    mask = causal_lower_right(q_len, k_len)
                q0 = int(q_idx[0])
                contiguous = bool((q_idx == torch.arange(q0, q0 + len(q_idx))).all())
                groups.append(_Group(n, q_len, k_len, q_idx.to(device), None if k_idx is None else k_idx.to(device),
                                     q0 if contiguous else None,
                                     mask.to(device) if isinstance(mask, Tensor) else mask))
                order.append(q_idx)
            perm = torch.cat(order)
            identity = bool((perm == torch.arange(len(perm))).all())
            if not identity and all(g.k_idx is None for g in groups):
                # No shared prompts: gather q, k, v into group order once per layer (every group then a
                # view) rather than once per group, whose backward adds n_groups full-row gradients.
                offsets = itertools.accumulate((g.n * g.q_len for g in groups), initial=0)
                groups = [replace(g, q0=o) for g, o in zip(groups, offsets, strict=False)]
                self._perm = perm.to(device)
            self._groups = groups
            self._inverse = None if identity else torch.empty_like(perm).scatter_(
                0, perm, torch.arange(len(perm))).to(device)
        return self._groups, self._inverse


GRID_UNIT_TOKENS = 64
"""When every packed unit (a sequence, or a shared prompt with its completions) is at most this long and
the units have more than one shape, all of them run as ONE masked SDPA call per layer on a padded
(units, longest unit) grid gathered from the row, instead of one call per shape. Short sequences of
varied lengths otherwise make many tiny calls whose fixed cost dominates (measured on CPU: 32 pairs of
6-22 tokens made about 25 groups per layer). Only the attention is padded; the projections and the MLP
still run on the packed tokens. 0 turns the grid off."""


def _grid(spans: list[tuple[int, int, tuple[int, int] | None]], device: torch.device, bidirectional: bool = False
          ) -> tuple[list[_Group] | None, Tensor | None]:
    """One group covering every unit on a padded grid, or (None, None) when the per-shape groups are
    cheaper (a long unit, or a single shape: then one call already, on views)."""
    units: list[list[tuple[int, int]]] = []
    unit_of_prompt: dict[tuple[int, int], int] = {}
    for start, stop, prompt in spans:
        if prompt is None:
            unit_of_prompt[(start, stop)] = len(units)
            units.append([(start, stop)])
        else:
            units[unit_of_prompt[prompt]].append((start, stop))
    shapes = {tuple(b - a for a, b in pieces) for pieces in units}
    longest = max(sum(b - a for a, b in pieces) for pieces in units)
    if len(shapes) == 1 or longest > GRID_UNIT_TOKENS:
        return None, None
    n = len(units)
    piece_src, piece_dest, piece_len, piece_seg = [], [], [], []
    for u, pieces in enumerate(units):
        col = 0
        for g, (a, b) in enumerate(pieces):
            piece_src.append(a)
            piece_dest.append(u * longest + col)
            piece_len.append(b - a)
            piece_seg.append(g)  # 0: the prompt or an unshared sequence, g: completion g
            col += b - a
    # index arithmetic in numpy: a few dozen ops on tiny arrays, where torch's per-op cost dominates
    lens = np.array(piece_len, dtype=np.int64)
    within = np.arange(int(lens.sum())) - np.repeat(np.cumsum(lens) - lens, lens)
    src = np.repeat(np.array(piece_src, dtype=np.int64), lens) + within  # (L,) row position
    dest = np.repeat(np.array(piece_dest, dtype=np.int64), lens) + within  # (L,) grid position
    q_idx = np.zeros(n * longest, dtype=np.int64)
    q_idx[dest] = src  # pads read position 0
    seg = np.zeros(n * longest, dtype=np.int64)
    seg[dest] = np.repeat(np.array(piece_seg, dtype=np.int64), lens)
    seg = seg.reshape(n, longest)
    valid = np.zeros(n * longest, dtype=bool)
    valid[dest] = True
    valid = valid.reshape(n, longest)
    if bidirectional:  # every key of the unit but its last token
        last = np.zeros(n * longest, dtype=bool)
        last[np.array(piece_dest, dtype=np.int64) + lens - 1] = True
        mask = np.repeat((valid & ~last.reshape(n, longest))[:, None, :], longest, axis=1)  # (n, Q, K)
    else:
        causal = np.tri(longest, dtype=bool)
        mask = causal & ((seg[:, None, :] == 0) | (seg[:, :, None] == seg[:, None, :])) & valid[:, None, :]
    mask |= np.eye(longest, dtype=bool)  # pad queries see themselves (finite; discarded)
    inverse = np.empty(len(src), dtype=np.int64)
    inverse[src] = dest  # row -> grid position
    group = _Group(n, longest, longest, torch.from_numpy(q_idx).to(device), None, None,
                   torch.from_numpy(mask[:, None]).to(device))
    return [group], torch.from_numpy(inverse).to(device)


def _ranges(blocks: list[list[tuple[int, int]]]) -> Tensor:
    """Concatenated ``arange(a, b)`` of every (a, b) of every block (blocks of equal total length)."""
    starts = torch.tensor([a for block in blocks for a, _ in block])
    lens = torch.tensor([b - a for block in blocks for a, b in block])
    offsets = torch.repeat_interleave(starts - (torch.cumsum(lens, 0) - lens), lens)
    return torch.arange(int(lens.sum())) + offsets


def _doc_mask(lengths: tuple[int, ...]) -> Tensor:
    """(L, L) bool for a unit ``[prompt, completion_1..G]``: causal, completions see the prompt and
    themselves only."""
    seg = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))  # (L,) 0 = prompt
    causal = torch.ones(len(seg), len(seg), dtype=torch.bool).tril()
    return causal & ((seg[None, :] == 0) | (seg[:, None] == seg[None, :]))


@dataclass
class _Group:
    n: int  # blocks in the group
    q_len: int  # queries per block
    k_len: int  # keys per block
    q_idx: Tensor  # (n * q_len,) row positions of the queries
    k_idx: Tensor | None  # (n * k_len,) row positions of the keys; None: the queries' positions
    q0: int | None  # first query position when the blocks lie end to end (queries are then a view)
    # None: causal (bidirectional segments: no mask); a (q_len, k_len) or grid (n, 1, q_len, k_len) bool
    # tensor, or a lower-right causal bias
    mask: object


def segment_attention_forward(module: nn.Module, query: Tensor, key: Tensor, value: Tensor,
                              attention_mask: Tensor | None, scaling: float | None = None,
                              dropout: float = 0.0, prefkit_segments: Segments | None = None,
                              **kwargs) -> tuple[Tensor, None]:
    """transformers attention function: query (1, H, L, D), key/value (1, Hkv, L, D) ->
    output (1, L, H, D)."""
    if prefkit_segments is None:
        raise RuntimeError("prefkit segment attention called without segments")
    if kwargs.get("sliding_window") or kwargs.get("s_aux") is not None or kwargs.get("softcap"):
        raise NotImplementedError("segment attention supports full attention only (no sliding window, "
                                  "sinks or soft-capping)")
    if query.shape[0] != 1:
        raise ValueError("segment attention expects one packed row")
    query, key, value = _common_dtype(query, key, value)
    n_rep = query.shape[1] // key.shape[1]
    if n_rep > 1:  # grouped-query attention: repeat key/value heads
        key = key.repeat_interleave(n_rep, dim=1)
        value = value.repeat_interleave(n_rep, dim=1)
    p_drop = dropout if module.training else 0.0
    groups, inverse = prefkit_segments.groups(query.device)
    bidirectional = prefkit_segments.bidirectional
    q_row, k_row, v_row = query[0], key[0], value[0]  # (H, L, D)
    if prefkit_segments._perm is not None:  # (H, L, D) in group order
        perm = prefkit_segments._perm
        q_row, k_row, v_row = q_row.index_select(1, perm), k_row.index_select(1, perm), v_row.index_select(1, perm)
    heads, dim = q_row.shape[0], q_row.shape[-1]
    sizes = [g.n * g.q_len for g in groups]
    # Groups that tile the row in order (their own keys): split it once. A split's backward is one
    # concatenation; a narrow per group would make a zero-filled full-row gradient for each group.
    tiled = (all(g.k_idx is None for g in groups) and sum(sizes) == q_row.shape[1]
             and [g.q0 for g in groups] == list(itertools.accumulate(sizes[:-1], initial=0)))
    pieces = ([x.split(sizes, dim=1) for x in (q_row, k_row, v_row)] if tiled and len(groups) > 1
              else None)

    def blocks(x: Tensor, idx: Tensor, n: int, length: int, q0: int | None = None) -> Tensor:
        if q0 is not None:  # adjacent blocks: a view of the row
            x = x.narrow(1, q0, n * length)
        else:
            x = x.index_select(1, idx)
        return x.view(x.shape[0], n, length, x.shape[-1]).transpose(0, 1)  # (n, H, len, D)

    outs = []
    for i, grp in enumerate(groups):
        if pieces is not None:  # (n, H, Q, D) views of this group's piece
            q, k, v = (x[i].view(heads, grp.n, grp.q_len, dim).transpose(0, 1) for x in pieces)
        elif grp.k_idx is None:
            q, k, v = (blocks(x, grp.q_idx, grp.n, grp.q_len, grp.q0) for x in (q_row, k_row, v_row))
        else:
            q = blocks(q_row, grp.q_idx, grp.n, grp.q_len, grp.q0)  # (n, H, Q, D)
            k = blocks(k_row, grp.k_idx, grp.n, grp.k_len)  # (n, H, K, D)
            v = blocks(v_row, grp.k_idx, grp.n, grp.k_len)
        if grp.mask is None and bidirectional:  # every key of the segment but its last token
            keys = max(grp.k_len - 1, 1)
            o = F.scaled_dot_product_attention(q, k[:, :, :keys], v[:, :, :keys], scale=scaling, dropout_p=p_drop)
        elif grp.mask is None:
            o = F.scaled_dot_product_attention(q, k, v, is_causal=grp.q_len > 1, scale=scaling, dropout_p=p_drop)
        else:
            # A unit's (prompt, completion) mask, or lower-right causal (every prompt key, causal inside
            # the completion), which SDPA runs in its fused kernels on CUDA without materialising it.
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=grp.mask, scale=scaling, dropout_p=p_drop)
        outs.append(o.transpose(0, 1).reshape(heads, grp.n * grp.q_len, dim))  # (H, n * Q, D) group order
    out = torch.cat(outs, dim=1) if len(outs) > 1 else outs[0]
    if inverse is not None:
        out = out.index_select(1, inverse)  # (H, L, D) row order
    return out.transpose(0, 1)[None].contiguous(), None


def _common_dtype(query: Tensor, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """q, k, v in the dtype SDPA would run them in, as transformers' ``sdpa`` path gets under autocast.

    Under autocast, RoPE returns fp32 q/k while v comes from a bf16 matmul. A plain SDPA call is cast by
    autocast itself (SDPA is on its lower-precision list), but the call with a ``causal_lower_right``
    bias is intercepted by the bias's ``__torch_function__`` before autocast sees it and fails on mixed
    dtypes. So cast all three to the autocast dtype when autocast is on (every segment alike), else to
    the widest of the three (they already agree outside autocast).
    """
    device_type = query.device.type
    if torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
    elif query.dtype == key.dtype == value.dtype:
        return query, key, value
    else:
        dtype = torch.promote_types(torch.promote_types(query.dtype, key.dtype), value.dtype)
    return query.to(dtype), key.to(dtype), value.to(dtype)


def _register() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(NAME, segment_attention_forward)


@contextlib.contextmanager
def segment_attention(config) -> Iterator[None]:
    """Within the block, ``config``'s model uses segment attention (pass ``prefkit_segments=``)."""
    _register()
    previous = config._attn_implementation
    config._attn_implementation = NAME
    try:
        yield
    finally:
        config._attn_implementation = previous


def supports_segment_attention(config) -> bool:
    """Whether every layer of ``config`` is full attention (no sliding windows or linear attention)."""
    layer_types = getattr(config, "layer_types", None)
    if layer_types and any(t != "full_attention" for t in layer_types):
        return False
    if getattr(config, "use_sliding_window", False) and getattr(config, "sliding_window", None):
        return False
    return not getattr(config, "attn_logit_softcapping", None)


__all__ = ["Segments", "segment_attention", "segment_attention_forward", "supports_segment_attention", "NAME"]
