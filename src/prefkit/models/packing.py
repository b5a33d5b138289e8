"""Padding-free packing and prompt sharing: planning and running the fast path of the log-prob engine.

This module plans a padding-free layout of a batch and runs a model on it; it does not choose between
the padded and the packed computation. :func:`prefkit.models.logprobs.sequence_logps` (the dispatcher)
does, up front: it runs the packed path for models :func:`fast_path_unsupported` accepts, unless
:func:`padded_is_cheaper` says the padded rows cost less. :func:`packed_sequence_logps` always runs
packed. Nothing here imports :mod:`prefkit.models.logprobs` (see :mod:`prefkit.models.decoder` for the
layering).

Three ideas, each exact (the log-probs equal the padded computation up to float rounding):

1. **Packing.** The G * B sequences of a batch are laid end to end, with position ids restarting at 0
   per sequence and an attention mask that never crosses a sequence boundary, so no compute is spent
   on padding. :func:`pack_batch` turns a padded :class:`~prefkit.data.batch.Batch` into the packed
   layout described in ``prefkit/data/batch.py``.
2. **Prefix sharing.** The G sequences of one example start with the same prompt. Laid out as
   ``[prompt, completion_1, ..., completion_G]``, the prompt is encoded once; completion g keeps the
   position ids it would have had after the prompt (``P, P+1, ...``) and attends to the prompt and to
   itself, never to another completion. The first token of each completion is predicted from the
   prompt's last hidden state (shared by all G completions).
3. **Chunked output layer.** Only the hidden states that predict a scored (completion) token go
   through the output layer, via :func:`prefkit.models.chunked.head_logps`, so the full
   ``(tokens, vocab)`` logits are never built.

**The plan** (:class:`Plan`, built by :func:`plan_for`, the one plan builder) says where every token
goes and which hidden state predicts each scored token. It is built with a few vectorised (numpy) ops
on the CPU: tokens are laid out on a (B, G + 1, T) grid (slot 0 the shared prompt of example b, slot
g + 1 its sequence g from the end of the shared prompt on) and the grid's tokens go to

- one row (``one_row=True``, the default): examples sorted by their piece lengths, so that equal units
  are adjacent (segment attention then batches them as views, without gathering); or
- bin-packed rows (``one_row=False``): packed units (a sequence, or an example whose prompt is shared)
  placed first-fit decreasing into rows no longer than the longest unit (``max_row_tokens`` to
  override), each row padded at its end with ``pad_id``.

A plan is computed per call unless the caller passes one: the passes of one training step over the
same batch (reference and policy) can share ``plan_for(batch, share_prefix=...)`` through the ``plan``
argument of :func:`~prefkit.models.logprobs.sequence_logps` / :func:`packed_sequence_logps` /
:func:`packed_hidden`. There is no global plan cache.

Models with sliding-window, linear or soft-capped attention layers are refused
(:func:`fast_path_unsupported`); ``sequence_logps`` then runs them padded. Attention backends for the
rest (``attention="auto"`` picks from ``model.config._attn_implementation``):

- ``flash_attention_*`` (varlen kernels), no prefix sharing: one row, ``position_ids`` only;
  transformers derives ``cu_seqlens`` from the position-id restarts. Exactly no padding.
- ``flex_attention`` models on CUDA under activation checkpointing: a FlexAttention ``BlockMask`` built
  from a mask function (block-sparse: fully masked tiles are skipped). FlexAttention has no CPU backward
  in torch 2.13, so this path is not covered by the CPU tests.
- ``segments`` (the default, unless activation checkpointing is on: it recomputes the layers after
  the implementation switch has been undone): one row, and
  :mod:`prefkit.models.attention` runs one SDPA call per segment shape (causal per sequence; a
  completion against ``[prompt, itself]``; equally long segments batched into one call), so nothing
  outside the segments is computed, on CPU and GPU alike (short shared-prompt units run as one
  masked block; see :data:`prefkit.models.attention.SMALL_DOC_TOKENS`).
- ``dense`` (explicit, or activation checkpointing): a dense 4D mask per row, boolean for SDPA,
  additive float for eager. A dense mask costs attention over the whole row, so it runs on the
  bin-packed rows; rows carry a few padding tokens at their ends.

Every mask is the same rule, on per-token ``doc`` (packed unit: one sequence, or one example when its
prompt is shared) and ``seg`` (0 for the shared prompt or an unshared sequence, g + 1 for completion g)
ids: query q sees key k iff ``doc[q] == doc[k] and k <= q and (seg[k] == 0 or seg[k] == seg[q])``.

Results come back per sequence in the batch's row order (``row g * B + b``), whatever the layout.

**Bidirectional encoders** (the BERT family, :data:`PACKABLE_ENCODERS`; a reward model's backbone) pack
too, without prompt sharing (a prompt token sees the completion): a plan with ``bidirectional=True``
lets every token see the whole of its own sequence but the sequence's last token, the rule
``doc[q] == doc[k] and (k is not the last token of its doc or k == q)``. The packed engine returns the
state *before* each scored token, so no returned state ever depends on a sequence's last token, causal or
not; a reward model's pooling (:func:`prefkit.models.reward_inputs.pooling_batch`) puts a placeholder
there. Position ids restart at 0 per sequence and token type ids are 0, as in the padded rows.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn

from prefkit.data.batch import Batch
from prefkit.models.attention import Segments, segment_attention, supports_segment_attention
from prefkit.models.chunked import head_logps
from prefkit.models.decoder import SequenceLogps, per_sequence, unwrap

AttentionKind = Literal["auto", "segments", "varlen", "flex", "dense"]


# --------------------------------------------------------------------------------------------------
# Packing a padded batch
# --------------------------------------------------------------------------------------------------


def _sequences(batch: Batch) -> list[tuple[Tensor, Tensor]]:
    """(token ids (L,), completion mask (L,)) per sequence, row order, padding removed."""
    if batch.layout == "packed":
        assert batch.seq_lens is not None, "packed batch needs seq_lens"
        lens = [int(x) for x in batch.seq_lens]
        ids = torch.split(batch.input_ids[0], lens)
        cmask = torch.split(batch.completion_mask[0], lens)
        return list(zip(ids, cmask, strict=True))
    real = batch.attention_mask.bool()  # (N, T)
    return [(batch.input_ids[n][real[n]], batch.completion_mask[n][real[n]])
            for n in range(batch.input_ids.shape[0])]


def pack_batch(batch: Batch) -> Batch:
    """The same batch in the padding-free ``layout="packed"``: (1, total) tokens, restarting positions.

    Per-example fields (strength, weight, labels, ...) are kept as they are. A packed batch is returned
    unchanged.
    """
    if batch.layout == "packed":
        return batch
    seqs = _sequences(batch)
    lens = torch.tensor([len(ids) for ids, _ in seqs], dtype=torch.long)
    input_ids = torch.cat([ids for ids, _ in seqs])[None]  # (1, total)
    completion_mask = torch.cat([c for _, c in seqs])[None]  # (1, total)
    position_ids = torch.cat([torch.arange(int(n)) for n in lens])[None].to(input_ids.device)
    return replace(
        batch, layout="packed", input_ids=input_ids, completion_mask=completion_mask,
        attention_mask=torch.ones_like(input_ids), position_ids=position_ids,
        seq_lens=lens.to(input_ids.device),
    )


# --------------------------------------------------------------------------------------------------
# The plan: where every token goes and which hidden state predicts each scored token
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """A padding-free layout of one batch (see the module docstring); built by :func:`plan_for`."""

    input_ids: Tensor  # (R, L)
    position_ids: Tensor  # (R, L)
    doc_ids: Tensor  # (R, L) packed unit of each token, -1 on row padding
    seg_ids: Tensor  # (R, L) 0 shared prompt / unshared sequence / padding, g + 1 completion g
    pred_index: Tensor  # (S,) flat index into (R * L) of the hidden state predicting each scored token
    target_ids: Tensor  # (S,) the scored tokens
    seq_index: Tensor  # (S,) sequence row n of each scored token
    col_index: Tensor  # (S,) position t of each scored token in its sequence
    num_sequences: int
    max_len: int  # T: columns of token_logps (padded width, or longest sequence)
    num_real_tokens: int  # tokens the model runs on, excluding row padding
    share_prefix: bool  # each example's shared prompt laid out once
    one_row: bool  # R = 1 without padding; else bin-packed rows
    segments: Segments | None = None  # one-row plans: the row's spans with their batched attention groups
    bidirectional: bool = False  # encoder attention: a sequence's tokens see it all but its last token


def _aligned(batch: Batch) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N, T') token ids, scored-candidate mask (completion and real) and (N,) lengths, every sequence
    starting at column 0; numpy on the CPU (planning is many tiny index ops: numpy's are cheaper)."""
    ids, cmask = batch.input_ids.cpu(), batch.completion_mask.cpu() != 0
    if batch.layout == "padded":
        real = batch.attention_mask.cpu() != 0  # (N, T)
        lens = real.sum(1)  # (N,)
        if bool((real == (torch.arange(real.shape[1])[None] < lens[:, None])).all()):  # right-padded
            return ids.numpy(), (cmask & real).numpy(), lens.numpy()
    seqs = _sequences(Batch(kind=batch.kind, group_size=batch.group_size, input_ids=ids,
                            attention_mask=batch.attention_mask.cpu(), completion_mask=cmask,
                            layout=batch.layout, seq_lens=None if batch.seq_lens is None else batch.seq_lens.cpu()))
    lens = np.array([len(x) for x, _ in seqs], dtype=np.int64)
    pad = torch.nn.utils.rnn.pad_sequence
    return (pad([x for x, _ in seqs], batch_first=True).numpy(), pad([c for _, c in seqs], batch_first=True).numpy(),
            lens)


def _layout(batch: Batch, share_prefix: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(N, T') aligned token ids and scored-token mask, (N,) lengths and (B,) shared prompt lengths.

    The shared prompt of example b is the longest common prefix of its G sequences, capped at each
    one's first scored position; 0 (nothing shared) without ``share_prefix`` or with G < 2.
    """
    ids, cmask, lens = _aligned(batch)  # (N, T), (N, T), (N,)
    n_seq, width = ids.shape
    g_size = batch.group_size
    b_size = n_seq // g_size
    cols = np.arange(width)
    scored = cmask & (cols[None] >= 1) & (cols[None] < lens[:, None])  # (N, T) position 0: no predecessor
    shared = np.zeros(b_size, dtype=np.int64)  # (B,)
    if share_prefix and g_size >= 2 and b_size:
        ids_g, scored_g, lens_g = (ids.reshape(g_size, b_size, width), scored.reshape(g_size, b_size, width),
                                   lens.reshape(g_size, b_size))
        first_scored = np.where(scored_g.any(-1), scored_g.argmax(-1), lens_g)  # (G, B)
        cap = np.minimum(lens_g, first_scored).min(0)  # (B,)
        differs = (ids_g != ids_g[:1]).any(0)  # (B, T)
        first_diff = np.where(differs.any(-1), differs.argmax(-1), width)
        shared = np.minimum(cap, first_diff).astype(np.int64)  # (B,)
    return ids, scored, lens.astype(np.int64), shared


def _bins(lengths: list[int], capacity: int) -> list[list[int]]:
    """First-fit decreasing: unit indices per row, each row's total length <= capacity."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    rows: list[list[int]] = []
    room: list[int] = []
    for i in order:
        for r, free in enumerate(room):
            if lengths[i] <= free:
                rows[r].append(i)
                room[r] -= lengths[i]
                break
        else:
            rows.append([i])
            room.append(capacity - lengths[i])
    return rows


def plan_for(batch: Batch, *, share_prefix: bool, one_row: bool = True, max_row_tokens: int | None = None,
             pad_id: int = 0, bidirectional: bool = False) -> Plan:
    """The padding-free layout of ``batch`` (padded or packed); built on the CPU, moved to its device.

    Args:
        batch: any :class:`Batch`; scored tokens are those with ``completion_mask == 1`` (position 0
            is never scored: it has no predecessor).
        share_prefix: lay each example's shared prompt out once (examples sharing no prefix unshared).
        one_row: all tokens in one row, without padding (the ``segments``, ``varlen`` and ``flex``
            backends); else bin-packed rows for dense masks (the ``dense`` backend).
        max_row_tokens: with ``one_row=False``, the row capacity (default: the longest packed unit).
        pad_id: with ``one_row=False``, the token id of the row padding.
        bidirectional: for an encoder (see the module docstring); needs ``share_prefix=False``.

    The grid (B, G + 1, T): slot 0 holds the shared prompt of example b (from sequence 0), slot g + 1
    its sequence g from the end of the shared prompt on (the whole sequence when nothing is shared).
    Without ``share_prefix`` every sequence is an example of its own (G = 1), so the one-row order sorts
    all N sequences by length and equally long ones are adjacent (segment attention's views).
    Its included tokens in row-major order are the one-row layout; bin-packed rows move each packed
    unit (contiguous in that order) to its row and offset. Index arithmetic in numpy (its per-op cost
    is a fraction of torch's on these tiny arrays), then one tensor per field.
    """
    if bidirectional and share_prefix:
        raise ValueError("a bidirectional plan cannot share prefixes (prompt tokens would see completions)")
    ids, scored, lens, shared = _layout(batch, share_prefix)  # (N, T), (N, T), (N,), (B,)
    n_seq, width = ids.shape
    if not share_prefix:  # every sequence its own example: the one-row order then sorts all N by length
        shared = np.zeros(n_seq, dtype=np.int64)
    g_size = batch.group_size if share_prefix else 1
    b_size = n_seq // g_size
    cols = np.arange(width)
    ids_g, scored_g, lens_g = ids.reshape(g_size, b_size, width), scored.reshape(g_size, b_size, width), lens.reshape(g_size, b_size)
    if one_row:  # units ordered by their piece lengths (prompt, then each sequence): equal ones adjacent
        piece_len = np.concatenate([shared[None], lens_g - shared[None]]).T  # (B, G + 1)
        order = np.lexsort(piece_len.T[::-1])  # (B,) examples in row order: lexicographic, stable
        ids_g, scored_g, lens_g, shared = ids_g[:, order], scored_g[:, order], lens_g[:, order], shared[order]
    else:
        order = np.arange(b_size)
    is_shared = shared >= 1  # (B,)
    # include[b, slot, t]: slot 0 = prompt t < shared[b] (from sequence 0), slot g + 1 = shared[b] <= t < len
    include = np.empty((b_size, g_size + 1, width), dtype=bool)
    include[:, 0] = cols[None] < shared[:, None]
    include[:, 1:] = ((cols[None, None] >= shared[None, :, None]) & (cols[None, None] < lens_g[..., None])).transpose(1, 0, 2)
    grid_ids = np.concatenate([ids_g[:1], ids_g]).transpose(1, 0, 2)  # (B, G + 1, T)
    grid_scored = np.concatenate([np.zeros_like(scored_g[:1]), scored_g]).transpose(1, 0, 2)
    slot = np.arange(g_size + 1)[None]  # (1, G + 1)
    grid_seq = np.concatenate([order[None], np.arange(g_size)[:, None] * b_size + order[None]]).T  # (B, G + 1) row n
    grid_seg = np.where(is_shared[:, None], slot, 0)  # (B, G + 1)
    grid_doc = np.arange(b_size)[:, None] * (g_size + 1) + np.where(is_shared[:, None], 0, slot)  # packed unit

    flat_inc = include.ravel()
    dest = (np.cumsum(flat_inc) - 1).reshape(include.shape)  # (B, G + 1, T) one-row position of each included token
    total = int(flat_inc.sum())
    piece_len = include.sum(-1)  # (B, G + 1)
    starts = (np.cumsum(piece_len.ravel()) - piece_len.ravel()).reshape(piece_len.shape)  # one-row starts
    if one_row:
        n_rows, length = 1, total
    else:  # bin-pack the units (in the batch's order: examples when sharing, else sequences) into rows
        if share_prefix and g_size >= 2:  # per example: itself, or its G sequences
            docs = grid_doc[:, 1:].ravel()
            units = docs[np.concatenate([[True], docs[1:] != docs[:-1]])] if len(docs) else docs
        else:
            units = (np.arange(b_size)[None] * (g_size + 1) + np.arange(1, g_size + 1)[:, None]).ravel()  # row n
        unit_len = np.bincount(grid_doc.ravel(), weights=piece_len.ravel(), minlength=b_size * (g_size + 1))
        unit_ids, lengths = units.tolist(), unit_len[units].astype(np.int64).tolist()
        rows = _bins(lengths, max(max(lengths), max_row_tokens or 0))
        length = max(sum(lengths[i] for i in row) for row in rows)
        n_rows = len(rows)
        base = np.zeros(b_size * (g_size + 1), dtype=np.int64)  # unit id -> flat index of its first token
        used = []
        for r, row in enumerate(rows):
            offset = r * length
            for i in row:
                base[unit_ids[i]] = offset
                offset += lengths[i]
            used.append(offset - r * length)
        unit_first = np.where(is_shared[:, None], starts[:, :1], starts)  # (B, G + 1) one-row start of the unit
        dest = dest + (base[grid_doc] - unit_first)[..., None]  # (B, G + 1, T)
    dest_inc = dest.ravel()[flat_inc]  # (total,) flat position of each included token

    def place(values: np.ndarray, fill: np.ndarray | int) -> Tensor:
        """(R, L): the included tokens' ``values`` at their positions, ``fill`` on the row padding."""
        if one_row:
            return torch.from_numpy(values[None])
        out = fill.copy() if isinstance(fill, np.ndarray) else np.full(n_rows * length, fill, dtype=values.dtype)
        out[dest_inc] = values
        return torch.from_numpy(out.reshape(n_rows, length))

    def per_token(grid: np.ndarray) -> np.ndarray:  # (B, G + 1) -> (total,) value of each included token
        return np.broadcast_to(grid[..., None], include.shape).ravel()[flat_inc]

    input_ids = place(grid_ids.ravel()[flat_inc], pad_id)
    pad_pos = None if one_row else (np.arange(length)[None] - np.array(used)[:, None]).ravel()
    position_ids = place(np.broadcast_to(cols, include.shape).ravel()[flat_inc], pad_pos)
    doc_ids = place(per_token(grid_doc), -1)
    seg_ids = place(per_token(grid_seg), 0)

    where = np.flatnonzero(grid_scored & include)  # flat grid index of each scored token
    pred = dest.ravel()[where]  # position of each scored token
    if not one_row:  # in row order, as the rows hold them
        by_position = np.argsort(pred, kind="stable")
        where, pred = where[by_position], pred[by_position]
    t_of = where % width
    b_of = where // ((g_size + 1) * width)
    prompt_last = dest[np.arange(b_size), 0, np.maximum(shared - 1, 0)]  # (B,)
    first_of_completion = is_shared[b_of] & (t_of == shared[b_of])
    pred = np.where(first_of_completion, prompt_last[b_of], pred - 1)

    segments = None
    if one_row:  # spans in row order: per example, its shared prompt and then its sequences
        spans: list[tuple[int, int, tuple[int, int] | None]] = []
        for lengths_b, begins in zip(piece_len.tolist(), starts.tolist(), strict=True):
            prompt = (begins[0], begins[0] + lengths_b[0]) if lengths_b[0] else None
            if prompt is not None:
                spans.append((prompt[0], prompt[1], None))
            spans += [(a, a + n, prompt) for a, n in zip(begins[1:], lengths_b[1:], strict=True) if n]
        segments = Segments(spans, bidirectional=bidirectional)
    device = batch.input_ids.device

    def move(t: Tensor | np.ndarray) -> Tensor:
        t = torch.from_numpy(np.ascontiguousarray(t)) if isinstance(t, np.ndarray) else t
        return t.to(device, non_blocking=True)

    return Plan(
        input_ids=move(input_ids), position_ids=move(position_ids), doc_ids=move(doc_ids), seg_ids=move(seg_ids),
        pred_index=move(pred), target_ids=move(grid_ids.ravel()[where].astype(np.int64)),
        seq_index=move(np.broadcast_to(grid_seq[..., None], include.shape).ravel()[where]), col_index=move(t_of),
        num_sequences=n_seq, max_len=batch.input_ids.shape[1] if batch.layout == "padded" else int(lens.max()),
        num_real_tokens=total, share_prefix=share_prefix, one_row=one_row, segments=segments,
        bidirectional=bidirectional,
    )


SHORT_SEQUENCE_TOKENS = 32
"""A padded batch whose sequences are all at most this long, and which the fast path would shrink by
less than :data:`MIN_SAVING`, runs padded (:func:`padded_is_cheaper`, asked by the dispatcher
``sequence_logps`` and by reward models). At this length every layer is a few small kernels whose fixed
cost outweighs the few tokens saved (measured on CPU with a width-64 model: 8-token pairs with no
padding and 3-token shared prompts, 19% fewer tokens, ran 7-16% slower per step on the fast path; with
25% fewer tokens it broke even, and with more it wins)."""
MIN_SAVING = 0.2
"""Fraction of the padded batch's tokens the fast path must save to run on short sequences."""


def padded_is_cheaper(batch: Batch, share_prefix: bool) -> bool:
    """Whether a padded ``batch`` should run padded although the fast path could run it: short sequences
    (:data:`SHORT_SEQUENCE_TOKENS`) where the fast path saves < :data:`MIN_SAVING` of the tokens. Without
    building a plan: the shared prefixes are at most the prompts (``prompt_lens``) of sequences 1..G-1,
    or, without ``prompt_lens``, computed exactly."""
    if batch.layout != "padded" or batch.input_ids.shape[1] > SHORT_SEQUENCE_TOKENS:
        return False
    run_tokens = int(batch.attention_mask.sum())
    if share_prefix and batch.group_size >= 2:
        if batch.prompt_lens is None:
            run_tokens -= (batch.group_size - 1) * int(_layout(batch, share_prefix)[3].sum())  # exact
        else:
            run_tokens -= int(batch.prompt_lens[batch.num_sequences // batch.group_size:].sum())  # lower bound
    return run_tokens > (1 - MIN_SAVING) * batch.input_ids.numel()



def _dense_mask(doc: Tensor, seg: Tensor, bidirectional: bool = False) -> Tensor:
    """(R, 1, L, L) bool: q sees k iff same doc, k <= q, and k is prompt or in q's own segment;
    ``bidirectional``: iff same doc and k is not the doc's last token (or k == q)."""
    length = doc.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=doc.device).tril()  # (L, L)
    same_doc = doc[:, :, None] == doc[:, None, :]  # (R, L, L)
    if bidirectional:  # docs are contiguous: a token is its doc's last where the next token's doc differs
        last = doc != torch.nn.functional.pad(doc[:, 1:], (0, 1), value=-2)  # (R, L)
        eye = torch.eye(length, dtype=torch.bool, device=doc.device)  # (L, L)
        return (same_doc & (~last[:, None, :] | eye))[:, None]
    visible_seg = (seg[:, None, :] == 0) | (seg[:, :, None] == seg[:, None, :])  # (R, L, L)
    return (same_doc & visible_seg & causal)[:, None]


def _flex_mask(doc: Tensor, seg: Tensor):
    from torch.nn.attention.flex_attention import create_block_mask

    def mask_mod(b, h, q, k):
        same_doc = doc[b, q] == doc[b, k]
        visible = (seg[b, k] == 0) | (seg[b, k] == seg[b, q])
        return same_doc & visible & (k <= q)

    rows, length = doc.shape
    return create_block_mask(mask_mod, rows, None, length, length, device=doc.device)


# --------------------------------------------------------------------------------------------------
# Running the model
# --------------------------------------------------------------------------------------------------


def fast_path_unsupported(model: nn.Module) -> str | None:
    """Why the fast path cannot run ``model`` (None when it can): the reason, in one line."""
    peft_config = getattr(model, "active_peft_config", None)
    if peft_config is not None and getattr(peft_config, "is_prompt_learning", False):
        return "prompt-learning PEFT adapters add virtual tokens"
    inner = unwrap(model)
    config = getattr(inner, "config", None)
    if config is None or not hasattr(inner, "get_output_embeddings"):
        return "not a transformers causal LM"
    if getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", None):
        return "the model rescales its logits (softcapping / logit_scale)"
    if not supports_segment_attention(config):
        return "the model has sliding-window, linear or soft-capped attention layers"
    head = inner.get_output_embeddings()
    if head is None:
        return "the model has no output embeddings"
    decoder = inner.get_decoder()
    if decoder is inner:
        return "cannot find the decoder under the LM head"
    return None


def _attention_kind(model: nn.Module, share_prefix: bool, device: torch.device) -> AttentionKind:
    inner = unwrap(model)
    impl = str(getattr(inner.config, "_attn_implementation", "eager") or "eager")
    encoder = is_bidirectional(inner.config)  # varlen and flex masks are causal: segments or dense
    if "flash" in impl and not share_prefix and not encoder:
        return "varlen"
    # Segment attention switches the attention implementation for the duration of the forward only;
    # activation checkpointing recomputes layers later, in backward, so it takes a mask instead.
    flag = getattr(inner, "is_activation_checkpointing", None)  # transformers 5: no module walk
    checkpointing = inner.training and (bool(flag) if isinstance(flag, bool) else
                                        any(getattr(m, "gradient_checkpointing", False) for m in inner.modules()))
    if supports_segment_attention(inner.config) and not checkpointing:
        return "segments"
    if encoder:
        return "dense"
    if impl == "flex_attention" and device.type == "cuda":
        return "flex"
    return "dense"


def _run_decoder(decoder: nn.Module, config, plan: Plan, kind: AttentionKind, dtype: torch.dtype) -> Tensor:
    """(R, L, H) last hidden states of the plan's rows, attention kept inside each packed unit."""
    kwargs: dict = {"input_ids": plan.input_ids, "position_ids": plan.position_ids, "use_cache": False}
    if plan.bidirectional and getattr(config, "type_vocab_size", 0):  # segment A, as the padded rows get
        kwargs["token_type_ids"] = torch.zeros_like(plan.input_ids)
    if kind == "segments":
        kwargs["prefkit_segments"] = plan.segments
        with segment_attention(config):
            out = decoder(**kwargs)
        return out.last_hidden_state
    if kind == "varlen":
        kwargs["attention_mask"] = None
    elif kind == "flex":
        kwargs["attention_mask"] = _flex_mask(plan.doc_ids, plan.seg_ids)
    else:
        mask = _dense_mask(plan.doc_ids, plan.seg_ids, plan.bidirectional)
        if config._attn_implementation == "eager":  # additive float mask; SDPA takes bool
            mask = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(
                ~mask, torch.finfo(dtype).min)
        kwargs["attention_mask"] = mask
    out = decoder(**kwargs)
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]  # (R, L, H)


PACKABLE_ENCODERS = frozenset({"bert"})
"""Bidirectional encoder model types the packed engine runs (exact against padded rows; no prompt
sharing): their position embeddings read the ``position_ids`` given (restarting at 0 per sequence) and
their attention layers call transformers' attention interface. RoBERTa-style models (positions from
``padding_idx + 1``) and others run padded."""


def is_bidirectional(config) -> bool:
    """Whether ``config`` is one of the :data:`PACKABLE_ENCODERS` (not configured as a decoder)."""
    return getattr(config, "model_type", None) in PACKABLE_ENCODERS and not getattr(config, "is_decoder", False)


def backbone_fast_path_unsupported(backbone: nn.Module) -> str | None:
    """Why :func:`packed_hidden` cannot run a bare (headless) backbone, e.g. a reward model's; None
    when it can: causal decoders (with prompt sharing) and the encoders of :data:`PACKABLE_ENCODERS`
    (each sequence's attention bidirectional inside its segment, no prompt sharing)."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    peft_config = getattr(backbone, "active_peft_config", None)
    if peft_config is not None and getattr(peft_config, "is_prompt_learning", False):
        return "prompt-learning PEFT adapters add virtual tokens"
    config = getattr(unwrap(backbone), "config", None)
    model_type = getattr(config, "model_type", None)
    if config is None or getattr(config, "is_encoder_decoder", False):
        return "not a transformers decoder"
    encoder = is_bidirectional(config)
    if not encoder and (model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES
                        or model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES):
        return (f"{model_type!r} is neither a causal decoder nor a packable encoder "
                f"({', '.join(sorted(PACKABLE_ENCODERS))})")
    if not supports_segment_attention(config):
        return "the model has sliding-window, linear or soft-capped attention layers"
    return None


def packed_hidden(model: nn.Module, batch: Batch, *, share_prefix: bool = False,
                  attention: AttentionKind = "auto", max_row_tokens: int | None = None,
                  plan: Plan | None = None) -> tuple[Tensor, Plan]:
    """Hidden states of a causal ``model`` for the scored tokens of ``batch``, padding-free.

    ``model``: a ``*ForCausalLM`` (its decoder runs) or a headless causal backbone (a reward model's),
    optionally PEFT-wrapped. Returns ``(hidden, plan)``: ``hidden`` (S, H) holds, for scored token s
    (``plan.col_index[s]`` of sequence ``plan.seq_index[s]``), the last hidden state of the token before
    it, the state a causal LM predicts it from. A bidirectional encoder (:data:`PACKABLE_ENCODERS`) runs
    each sequence but its last token, unmasked (module docstring); ``share_prefix`` is ignored for it. :func:`packed_sequence_logps` puts the output layer on
    it; reward models pool it. No support check here: see :func:`fast_path_unsupported` /
    :func:`backbone_fast_path_unsupported`.

    ``plan``: :func:`plan_for` of this very batch with the same ``share_prefix``, computed once and
    shared by several passes over the batch (a training step's reference and policy forwards); None
    plans here. A one-row plan serves the segments / varlen / flex backends; the dense backend
    (activation checkpointing, or ``attention="dense"``) needs bin-packed rows and plans its own when
    given a one-row plan.
    """
    inner = unwrap(model)
    encoder = is_bidirectional(inner.config)
    share_prefix = share_prefix and not encoder
    kind = _attention_kind(model, share_prefix, batch.input_ids.device) if attention == "auto" else attention
    if kind == "varlen" and share_prefix:
        raise ValueError("varlen attention cannot share prefixes; use segments, flex or dense")
    if encoder and kind in ("varlen", "flex"):
        raise ValueError(f"{kind} attention is causal; a bidirectional encoder runs with segments or dense")
    one_row = kind in ("segments", "varlen", "flex")
    if plan is not None and (plan.share_prefix != share_prefix or plan.num_sequences != batch.num_sequences
                             or plan.bidirectional != encoder):
        raise ValueError(f"packed_hidden: the plan is for another batch or share_prefix, or model (plan: "
                         f"{plan.num_sequences} sequences, share_prefix={plan.share_prefix}, bidirectional="
                         f"{plan.bidirectional}; call: {batch.num_sequences}, share_prefix={share_prefix}, "
                         f"bidirectional={encoder})")
    if plan is None or plan.one_row != one_row:
        pad_id = getattr(inner.config, "pad_token_id", None) or 0
        plan = plan_for(batch, share_prefix=share_prefix, one_row=one_row, max_row_tokens=max_row_tokens,
                        pad_id=pad_id, bidirectional=encoder)
    # a causal LM's decoder, or the headless backbone itself (its get_decoder() is itself); LoRA stays injected
    hidden = _run_decoder(inner.get_decoder(), inner.config, plan, kind, next(model.parameters()).dtype)  # (R, L, H)
    return hidden.reshape(-1, hidden.shape[-1])[plan.pred_index], plan


def packed_sequence_logps(model: nn.Module, batch: Batch, *, share_prefix: bool = False,
                          chunk_size: int = 1024, token_logps: bool = False,
                          max_row_tokens: int | None = None, attention: AttentionKind = "auto",
                          plan: Plan | None = None) -> SequenceLogps:
    """Completion log-probs of every sequence of ``batch`` (padded or packed), always padding-free.

    :func:`prefkit.models.logprobs.sequence_logps` is the entry point that also runs short batches and
    unsupported models padded; this function runs the packed path only.

    Args:
        model: a transformers causal LM, optionally PEFT-wrapped (LoRA); see
            :func:`fast_path_unsupported` for what is refused (``ValueError``).
        batch: any :class:`Batch`; scored tokens are those with ``completion_mask == 1``
            (position 0 is never scored: it has no predecessor).
        share_prefix: encode each example's common prompt once (see module docstring).
        chunk_size: rows of logits materialised at a time by the output layer.
        token_logps: also return (N, T) per-token log-probs and mask (column t = token t).
        max_row_tokens: dense-mask backend only; row capacity for bin packing (default: the longest
            packed unit, so attention never costs more than with padding).
        attention: force a backend; ``"auto"`` reads the model's attention implementation.
        plan: a precomputed :func:`plan_for` of this batch (see :func:`packed_hidden`).

    Returns:
        :class:`~prefkit.models.decoder.SequenceLogps` in row order; differentiable wrt the model's
        parameters.
    """
    reason = fast_path_unsupported(model)
    if reason is not None:
        raise ValueError(f"packed log-probs cannot run this model: {reason}")
    hidden, plan = packed_hidden(model, batch, share_prefix=share_prefix, attention=attention,
                                 max_row_tokens=max_row_tokens, plan=plan)  # (S, H)
    head = unwrap(model).get_output_embeddings()
    logps = head_logps(head, hidden, plan.target_ids, chunk_size=chunk_size)  # (S,)
    return per_sequence(logps, plan.seq_index, plan.col_index, plan.num_sequences, plan.max_len,
                        token_logps=token_logps)


def prefix_shared_sequence_logps(model: nn.Module, batch: Batch, **kwargs) -> SequenceLogps:
    """:func:`packed_sequence_logps` with each example's prompt encoded once (``share_prefix=True``)."""
    return packed_sequence_logps(model, batch, share_prefix=True, **kwargs)


def packing_stats(batch: Batch, *, share_prefix: bool = False) -> dict[str, int]:
    """Token counts for logging/benchmarks: padded tokens, real tokens, and tokens the fast path runs."""
    _, _, lens, shared = _layout(batch, share_prefix)
    real = int(lens.sum())
    return {
        "padded_tokens": int(lens.max()) * len(lens),
        "real_tokens": real,
        "run_tokens": real - (batch.group_size - 1) * int(shared.sum()),
    }


__all__ = ["Plan", "plan_for", "pack_batch", "packed_sequence_logps", "prefix_shared_sequence_logps",
           "fast_path_unsupported", "backbone_fast_path_unsupported", "padded_is_cheaper", "packing_stats",
           "packed_hidden", "SHORT_SEQUENCE_TOKENS", "MIN_SAVING", "PACKABLE_ENCODERS", "is_bidirectional"]
