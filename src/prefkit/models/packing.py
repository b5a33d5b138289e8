"""Padding-free packing and prompt sharing: the fast path of the log-prob engine.

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
   through the output layer, via :func:`prefkit.models.chunked.target_logps`, so the full
   ``(tokens, vocab)`` logits are never built.

Models with sliding-window, linear or soft-capped attention layers are refused
(:func:`fast_path_unsupported`); ``sequence_logps`` then runs them padded. Attention backends for the
rest (``attention="auto"`` picks from ``model.config._attn_implementation``):

- ``flash_attention_*`` (varlen kernels), no prefix sharing: one row, ``position_ids`` only;
  transformers derives ``cu_seqlens`` from the position-id restarts. Exactly no padding.
- ``flex_attention`` models on CUDA under activation checkpointing: a FlexAttention ``BlockMask`` built from a mask function (block-sparse: fully
  masked tiles are skipped). FlexAttention has no CPU backward in torch 2.13, so this path is not
  covered by the CPU tests.
- ``segments`` (the default, unless activation checkpointing is on: it recomputes the layers after
  the implementation switch has been undone): one row, and
  :mod:`prefkit.models.attention` runs one SDPA call per segment shape (causal per sequence; a
  completion against ``[prompt, itself]``; equally long segments batched into one call), so nothing
  outside the segments is computed, on CPU and GPU alike (short shared-prompt units run as one
  masked block; see :data:`prefkit.models.attention.SMALL_DOC_TOKENS`). The one-row plan is built with
  a few vectorised tensor ops (:func:`_plan_one_row`), units of equal piece lengths adjacent.
- ``dense`` (explicit, or activation checkpointing): a dense 4D mask per row, boolean for SDPA,
  additive float for eager. A dense mask costs attention over the whole row, so sequences are
  bin-packed (first-fit decreasing) into rows no longer than the longest packed unit
  (``max_row_tokens`` to override); rows carry a few padding tokens at their ends.

Every mask is the same rule, on per-token ``doc`` (packed unit: one sequence, or one example when its
prompt is shared) and ``seg`` (0 for the shared prompt or an unshared sequence, g + 1 for completion g)
ids: query q sees key k iff ``doc[q] == doc[k] and k <= q and (seg[k] == 0 or seg[k] == seg[q])``.

Results come back per sequence in the batch's row order (``row g * B + b``), whatever the layout.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import torch
from torch import Tensor, nn

from prefkit.data.batch import Batch
from prefkit.models.attention import Segments, segment_attention, supports_segment_attention
from prefkit.models.chunked import head_logps

AttentionKind = Literal["auto", "segments", "varlen", "flex", "dense"]


@dataclass(frozen=True)
class PackedLogps:
    """Per-sequence results of the fast path, in the batch's row order.

    logps: (N,) float32 completion log-probs summed over scored tokens.
    tokens: (N,) float32 scored-token counts.
    token_logps: (N, T) float32 per-token log-probs, column t = log-prob of token t of the sequence
        (0 where not scored); only when requested.
    mask: (N, T) 1.0 on scored tokens; with ``token_logps``.

    The fields match ``prefkit.models.logprobs.SequenceLogps``; T is the padded width for a padded
    batch, the longest sequence for a packed one.
    """

    logps: Tensor
    tokens: Tensor
    token_logps: Tensor | None = None
    mask: Tensor | None = None


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
# The row plan: where every token goes and which hidden state predicts each scored token
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Piece:
    seq: int  # sequence row n the tokens come from
    start: int  # first position taken from that sequence
    stop: int  # one past the last position
    seg: int  # 0 shared prompt / whole sequence, g + 1 completion g


@dataclass(frozen=True)
class _Plan:
    input_ids: Tensor  # (R, L)
    position_ids: Tensor  # (R, L)
    doc_ids: Tensor  # (R, L), -1 on row padding
    seg_ids: Tensor  # (R, L)
    pred_index: Tensor  # (S,) flat index into (R * L) of the hidden state predicting each scored token
    target_ids: Tensor  # (S,) the scored tokens
    seq_index: Tensor  # (S,) sequence row n of each scored token
    col_index: Tensor  # (S,) position t of each scored token in its sequence
    num_sequences: int
    max_len: int  # T: columns of token_logps (padded width, or longest sequence)
    num_real_tokens: int  # tokens the model runs on, excluding row padding
    spans: list[list[tuple[int, int, tuple[int, int] | None]]]  # per row: (start, stop, shared prompt)
    segments: Segments | None = None  # one-row plans: the spans with their batched attention groups


def _docs(seqs: list[tuple[Tensor, Tensor]], group_size: int, share_prefix: bool) -> list[list[_Piece]]:
    """Packed units: one per sequence, or one per example ``[prefix, completion_1..G]`` when shared."""
    n_seq = len(seqs)
    if not share_prefix or group_size < 2:
        return [[_Piece(n, 0, len(seqs[n][0]), 0)] for n in range(n_seq)]
    b_count = n_seq // group_size
    docs = []
    for b in range(b_count):
        rows = [g * b_count + b for g in range(group_size)]
        shared = _shared_prefix_len([seqs[n] for n in rows])
        if shared < 1:
            docs.extend([[_Piece(n, 0, len(seqs[n][0]), 0)] for n in rows])
            continue
        pieces = [_Piece(rows[0], 0, shared, 0)]
        pieces += [_Piece(n, shared, len(seqs[n][0]), g + 1) for g, n in enumerate(rows)
                   if len(seqs[n][0]) > shared]
        docs.append(pieces)
    return docs


def _shared_prefix_len(group: list[tuple[Tensor, Tensor]]) -> int:
    """Tokens the G sequences share before any of them has a scored token (longest common prefix,
    capped at each sequence's first scored position)."""
    cap = min(len(ids) for ids, _ in group)
    for _, cmask in group:
        scored = torch.nonzero(cmask[1:]).flatten()  # position 0 is never scored
        if scored.numel():
            cap = min(cap, int(scored[0]) + 1)
    first = group[0][0][:cap]
    for ids, _ in group[1:]:
        diff = torch.nonzero(ids[:cap] != first).flatten()
        if diff.numel():
            cap = int(diff[0])
    return cap


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


def _plan(batch: Batch, *, share_prefix: bool, one_row: bool, max_row_tokens: int | None,
          pad_id: int) -> _Plan:
    target_device = batch.input_ids.device
    # The plan is built on the CPU (many tiny ops and index look-ups) and moved once at the end.
    seqs = _sequences(Batch(kind=batch.kind, group_size=batch.group_size, input_ids=batch.input_ids.cpu(),
                            attention_mask=batch.attention_mask.cpu(),
                            completion_mask=batch.completion_mask.cpu(), layout=batch.layout,
                            seq_lens=None if batch.seq_lens is None else batch.seq_lens.cpu()))
    device = torch.device("cpu")
    docs = _docs(seqs, batch.group_size, share_prefix)
    doc_len = [sum(p.stop - p.start for p in d) for d in docs]
    if one_row:
        rows = [list(range(len(docs)))]
    else:
        capacity = max(max(doc_len), max_row_tokens or 0)
        rows = _bins(doc_len, capacity)
    width = max(sum(doc_len[i] for i in row) for row in rows)

    ids_rows, pos_rows, doc_rows, seg_rows, spans = [], [], [], [], []
    pred, target, seq_idx, col_idx = [], [], [], []
    for r, row in enumerate(rows):
        ids_parts, pos_parts, doc_parts, seg_parts = [], [], [], []
        offset = r * width  # flat index of this row's first token
        row_spans: list[tuple[int, int, tuple[int, int] | None]] = []
        spans.append(row_spans)
        for d in row:
            prefix_last = -1  # flat index of the shared prompt's last token
            prompt_span: tuple[int, int] | None = None
            for piece in docs[d]:
                ids, cmask = seqs[piece.seq]
                n_tok = piece.stop - piece.start
                ids_parts.append(ids[piece.start:piece.stop])
                pos_parts.append(torch.arange(piece.start, piece.stop, device=device))
                doc_parts.append(torch.full((n_tok,), d, dtype=torch.long, device=device))
                seg_parts.append(torch.full((n_tok,), piece.seg, dtype=torch.long, device=device))
                scored = torch.nonzero(cmask[piece.start:piece.stop].bool()).flatten() + piece.start
                scored = scored[scored >= 1]  # position 0 has no predecessor
                flat = offset + scored - piece.start  # flat index of each scored token
                pred_flat = flat - 1
                if piece.seg > 0:  # the completion's first token is predicted by the prompt's last
                    pred_flat = torch.where(scored == piece.start, torch.full_like(flat, prefix_last),
                                            pred_flat)
                pred.append(pred_flat)
                target.append(ids[scored])
                seq_idx.append(torch.full_like(scored, piece.seq))
                col_idx.append(scored)
                start_in_row = offset - r * width
                row_spans.append((start_in_row, start_in_row + n_tok, prompt_span if piece.seg > 0 else None))
                if piece.seg == 0:
                    prefix_last = offset + n_tok - 1
                    prompt_span = (start_in_row, start_in_row + n_tok)
                offset += n_tok
        used = sum(len(p) for p in ids_parts)
        pad = width - used
        ids_parts.append(torch.full((pad,), pad_id, dtype=seqs[0][0].dtype, device=device))
        pos_parts.append(torch.arange(pad, device=device))
        doc_parts.append(torch.full((pad,), -1, dtype=torch.long, device=device))
        seg_parts.append(torch.zeros(pad, dtype=torch.long, device=device))
        ids_rows.append(torch.cat(ids_parts))
        pos_rows.append(torch.cat(pos_parts))
        doc_rows.append(torch.cat(doc_parts))
        seg_rows.append(torch.cat(seg_parts))
    def move(t: Tensor) -> Tensor:
        return t.to(target_device, non_blocking=True)

    return _Plan(
        input_ids=move(torch.stack(ids_rows)), position_ids=move(torch.stack(pos_rows)),
        doc_ids=move(torch.stack(doc_rows)), seg_ids=move(torch.stack(seg_rows)),
        pred_index=move(torch.cat(pred)), target_ids=move(torch.cat(target).long()),
        seq_index=move(torch.cat(seq_idx)), col_index=move(torch.cat(col_idx)), num_sequences=len(seqs),
        max_len=(batch.input_ids.shape[1] if batch.layout == "padded" else max(len(ids) for ids, _ in seqs)),
        num_real_tokens=sum(doc_len), spans=spans,
    )


def _aligned(batch: Batch) -> tuple[Tensor, Tensor, Tensor]:
    """(N, T') token ids, completion mask and (N,) lengths, every sequence starting at column 0 (CPU)."""
    ids, cmask = batch.input_ids.cpu(), batch.completion_mask.cpu()
    if batch.layout == "padded":
        real = batch.attention_mask.cpu().bool()  # (N, T)
        lens = real.sum(1)  # (N,)
        if bool((real == (torch.arange(real.shape[1])[None] < lens[:, None])).all()):  # right-padded
            return ids, cmask * real, lens
    seqs = _sequences(Batch(kind=batch.kind, group_size=batch.group_size, input_ids=ids,
                            attention_mask=batch.attention_mask.cpu(), completion_mask=cmask,
                            layout=batch.layout, seq_lens=None if batch.seq_lens is None else batch.seq_lens.cpu()))
    lens = torch.tensor([len(x) for x, _ in seqs], dtype=torch.long)
    pad = torch.nn.utils.rnn.pad_sequence
    return (pad([x for x, _ in seqs], batch_first=True), pad([c for _, c in seqs], batch_first=True), lens)


def _plan_one_row(batch: Batch, *, share_prefix: bool) -> _Plan:
    """:func:`_plan` for one row, vectorised (no per-sequence Python work but the span list).

    Tokens are laid out on a (B, G + 1, T) grid, slot 0 the shared prompt of example b and slot g + 1
    its sequence g from the end of the shared prompt on (the whole sequence when nothing is shared);
    the row is the grid's included tokens in row-major order, examples sorted by their piece lengths so
    that equal units are adjacent (segment attention then batches them as views, without gathering).
    """
    ids, cmask, lens = _aligned(batch)  # (N, T), (N, T), (N,)
    n_seq, width = ids.shape
    g_size = batch.group_size
    b_size = n_seq // g_size
    cols = torch.arange(width)
    scored = (cmask != 0) & (cols[None] >= 1) & (cols[None] < lens[:, None])  # (N, T) position 0: no predecessor
    ids_g, scored_g, lens_g = ids.view(g_size, b_size, width), scored.view(g_size, b_size, width), lens.view(g_size, b_size)
    shared = torch.zeros(b_size, dtype=torch.long)  # (B,) shared prompt length, 0 when not shared
    if share_prefix and g_size >= 2:
        first_scored = torch.where(scored_g.any(-1), scored_g.float().argmax(-1), lens_g)  # (G, B)
        cap = torch.minimum(lens_g, first_scored).min(0).values  # (B,)
        differs = (ids_g != ids_g[:1]).any(0)  # (B, T)
        first_diff = torch.where(differs.any(-1), differs.float().argmax(-1), torch.full_like(cap, width))
        shared = torch.minimum(cap, first_diff)  # (B,)
    # Units ordered by their piece lengths (prompt, then each sequence) so that equal ones are adjacent.
    piece_len = torch.cat([shared[None], lens_g - shared[None]]).T  # (B, G + 1)
    _, signature = torch.unique(piece_len, dim=0, return_inverse=True)
    order = torch.argsort(signature, stable=True)  # (B,) examples in row order
    ids_g, scored_g, lens_g, shared = ids_g[:, order], scored_g[:, order], lens_g[:, order], shared[order]
    is_shared = shared >= 1  # (B,)
    # include[b, slot, t]: slot 0 = prompt t < shared[b] (from sequence 0), slot g + 1 = shared[b] <= t < len
    include = torch.zeros(b_size, g_size + 1, width, dtype=torch.bool)
    include[:, 0] = cols[None] < shared[:, None]
    include[:, 1:] = ((cols[None, None] >= shared[None, :, None]) & (cols[None, None] < lens_g[..., None])).transpose(0, 1)
    grid_ids = torch.cat([ids_g[:1], ids_g]).transpose(0, 1)  # (B, G + 1, T)
    grid_scored = torch.cat([torch.zeros_like(scored_g[:1]), scored_g]).transpose(0, 1)
    slot = torch.arange(g_size + 1)[None]  # (1, G + 1)
    grid_seq = torch.cat([order[None], torch.arange(g_size)[:, None] * b_size + order[None]]).T  # (B, G + 1) row n
    grid_seg = torch.where(is_shared[:, None], slot, 0)  # (B, G + 1)
    grid_doc = torch.arange(b_size)[:, None] * (g_size + 1) + torch.where(is_shared[:, None], 0, slot)

    flat_inc = include.flatten()
    dest = torch.cumsum(flat_inc, 0).view_as(include) - 1  # (B, G + 1, T) row index of each included token
    total = int(flat_inc.sum())
    input_ids = grid_ids.flatten()[flat_inc]
    position_ids = cols.expand(b_size, g_size + 1, width).flatten()[flat_inc]
    doc_ids = grid_doc[..., None].expand(-1, -1, width).flatten()[flat_inc]
    seg_ids = grid_seg[..., None].expand(-1, -1, width).flatten()[flat_inc]

    keep = (grid_scored & include).flatten()
    where = keep.nonzero().flatten()  # flat grid index of each scored token, in row order
    t_of = where % width
    b_of = where // ((g_size + 1) * width)
    pred = dest.flatten()[where] - 1
    prompt_last = dest[torch.arange(b_size), 0, (shared - 1).clamp(min=0)]  # (B,)
    first_of_completion = is_shared[b_of] & (t_of == shared[b_of])
    pred = torch.where(first_of_completion, prompt_last[b_of], pred)

    # Spans in row order: per example, its shared prompt and then its sequences (from the prompt's end on).
    piece_len = include.sum(-1)  # (B, G + 1)
    starts = (torch.cumsum(piece_len.flatten(), 0) - piece_len.flatten()).view_as(piece_len)
    spans: list[tuple[int, int, tuple[int, int] | None]] = []
    for lengths, begins in zip(piece_len.tolist(), starts.tolist(), strict=True):
        prompt = (begins[0], begins[0] + lengths[0]) if lengths[0] else None
        if prompt is not None:
            spans.append((prompt[0], prompt[1], None))
        spans += [(a, a + n, prompt) for a, n in zip(begins[1:], lengths[1:], strict=True) if n]
    device = batch.input_ids.device

    def move(t: Tensor) -> Tensor:
        return t.to(device, non_blocking=True)

    return _Plan(
        input_ids=move(input_ids[None]), position_ids=move(position_ids[None]), doc_ids=move(doc_ids[None]),
        seg_ids=move(seg_ids[None]), pred_index=move(pred), target_ids=move(grid_ids.flatten()[where].long()),
        seq_index=move(grid_seq[..., None].expand(-1, -1, width).flatten()[where]), col_index=move(t_of),
        num_sequences=n_seq, max_len=batch.input_ids.shape[1] if batch.layout == "padded" else int(lens.max()),
        num_real_tokens=total, spans=[spans], segments=Segments(spans),
    )


SHORT_SEQUENCE_TOKENS = 32
"""``attention="auto"``: a padded batch whose sequences are all at most this long, and which the fast
path would shrink by less than :data:`MIN_SAVING`, runs padded. At this length every layer is a few
small kernels whose fixed cost outweighs the few tokens saved (measured on CPU with a width-64 model:
8-token pairs with no padding and 3-token shared prompts, 19% fewer tokens, ran 7-16% slower per step
on the fast path; with 25% fewer tokens it broke even, and with more it wins)."""
MIN_SAVING = 0.2
"""Fraction of the padded batch's tokens the fast path must save to run on short sequences."""


def _padded_is_cheaper(batch: Batch, share_prefix: bool) -> bool:
    """Short padded batch where the fast path saves < MIN_SAVING of the tokens. Without building the
    plan: the shared prefixes are at most the prompts (``prompt_lens``) of sequences 1..G-1."""
    if batch.layout != "padded" or batch.input_ids.shape[1] > SHORT_SEQUENCE_TOKENS:
        return False
    run_tokens = int(batch.attention_mask.sum())
    if share_prefix and batch.group_size >= 2:
        if batch.prompt_lens is None:
            run_tokens = _cached_plan(batch, share_prefix).num_real_tokens
        else:
            run_tokens -= int(batch.prompt_lens[batch.num_sequences // batch.group_size:].sum())  # lower bound
    return run_tokens > (1 - MIN_SAVING) * batch.input_ids.numel()


_PLAN_CACHE: list[tuple[tuple, _Plan, tuple]] = []


def _cached_plan(batch: Batch, share_prefix: bool) -> _Plan:
    """:func:`_plan_one_row`, reused while the same batch tensors come back unmodified (the reference and
    the policy pass of a training step share one plan and its attention groups)."""
    tensors = (batch.input_ids, batch.attention_mask, batch.completion_mask, batch.seq_lens)
    key = (share_prefix, batch.group_size, batch.layout,
           *((id(t), t._version) if t is not None else None for t in tensors))
    if _PLAN_CACHE and _PLAN_CACHE[0][0] == key and all(a is b for a, b in zip(_PLAN_CACHE[0][2], tensors, strict=True)):
        return _PLAN_CACHE[0][1]
    plan = _plan_one_row(batch, share_prefix=share_prefix)
    _PLAN_CACHE[:] = [(key, plan, tensors)]  # strong references: the ids cannot be reused meanwhile
    return plan


def _dense_mask(doc: Tensor, seg: Tensor) -> Tensor:
    """(R, 1, L, L) bool: q sees k iff same doc, k <= q, and k is prompt or in q's own segment."""
    length = doc.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=doc.device).tril()  # (L, L)
    same_doc = doc[:, :, None] == doc[:, None, :]  # (R, L, L)
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


def _unwrap(model: nn.Module) -> nn.Module:
    """The transformers model under PEFT / DDP / compile wrappers (LoRA layers stay injected in it)."""
    while True:
        if isinstance(getattr(model, "module", None), nn.Module):  # DDP / torch.compile
            model = model.module
        elif callable(getattr(model, "get_base_model", None)):  # peft.PeftModel
            model = model.get_base_model()
        else:
            return model


def fast_path_unsupported(model: nn.Module) -> str | None:
    """Why the fast path cannot run ``model`` (None when it can): the reason, in one line."""
    peft_config = getattr(model, "active_peft_config", None)
    if peft_config is not None and getattr(peft_config, "is_prompt_learning", False):
        return "prompt-learning PEFT adapters add virtual tokens"
    inner = _unwrap(model)
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
    inner = _unwrap(model)
    impl = str(getattr(inner.config, "_attn_implementation", "eager") or "eager")
    if "flash" in impl and not share_prefix:
        return "varlen"
    # Segment attention switches the attention implementation for the duration of the forward only;
    # activation checkpointing recomputes layers later, in backward, so it takes a mask instead.
    flag = getattr(inner, "is_activation_checkpointing", None)  # transformers 5: no module walk
    checkpointing = inner.training and (bool(flag) if isinstance(flag, bool) else
                                        any(getattr(m, "gradient_checkpointing", False) for m in inner.modules()))
    if supports_segment_attention(inner.config) and not checkpointing:
        return "segments"
    if impl == "flex_attention" and device.type == "cuda":
        return "flex"
    return "dense"


def _run_decoder(decoder: nn.Module, config, plan: _Plan, kind: AttentionKind, dtype: torch.dtype) -> Tensor:
    """(R, L, H) last hidden states of the plan's rows, attention kept inside each packed unit."""
    kwargs: dict = {"input_ids": plan.input_ids, "position_ids": plan.position_ids, "use_cache": False}
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
        mask = _dense_mask(plan.doc_ids, plan.seg_ids)
        if config._attn_implementation == "eager":  # additive float mask; SDPA takes bool
            mask = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(
                ~mask, torch.finfo(dtype).min)
        kwargs["attention_mask"] = mask
    out = decoder(**kwargs)
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]  # (R, L, H)


def backbone_fast_path_unsupported(backbone: nn.Module) -> str | None:
    """Why :func:`packed_hidden` cannot run a bare (headless) backbone, e.g. a reward model's; None
    when it can. Packing keeps each sequence's attention causal inside its segment, so only causal
    decoders qualify: a bidirectional encoder (BERT, MiniLM) lets every token see the whole sequence,
    and packing or sharing a prompt would change its results."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    peft_config = getattr(backbone, "active_peft_config", None)
    if peft_config is not None and getattr(peft_config, "is_prompt_learning", False):
        return "prompt-learning PEFT adapters add virtual tokens"
    config = getattr(_unwrap(backbone), "config", None)
    model_type = getattr(config, "model_type", None)
    if config is None or getattr(config, "is_encoder_decoder", False):
        return "not a transformers decoder"
    if model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES or model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return f"{model_type!r} is not a causal decoder (bidirectional attention cannot be packed exactly)"
    if not supports_segment_attention(config):
        return "the model has sliding-window, linear or soft-capped attention layers"
    return None


def packed_hidden(model: nn.Module, batch: Batch, *, share_prefix: bool = False,
                  attention: AttentionKind = "auto", max_row_tokens: int | None = None) -> tuple[Tensor, _Plan]:
    """Hidden states of a causal ``model`` for the scored tokens of ``batch``, padding-free.

    ``model``: a ``*ForCausalLM`` (its decoder runs) or a headless causal backbone (a reward model's),
    optionally PEFT-wrapped. Returns ``(hidden, plan)``: ``hidden`` (S, H) holds, for scored token s
    (``plan.col_index[s]`` of sequence ``plan.seq_index[s]``), the last hidden state of the token before
    it, the state a causal LM predicts it from. :func:`packed_sequence_logps` puts the output layer on
    it; reward models pool it. No support check here: see :func:`fast_path_unsupported` /
    :func:`backbone_fast_path_unsupported`.
    """
    kind = _attention_kind(model, share_prefix, batch.input_ids.device) if attention == "auto" else attention
    if kind == "varlen" and share_prefix:
        raise ValueError("varlen attention cannot share prefixes; use segments, flex or dense")
    inner = _unwrap(model)
    if kind in ("segments", "varlen", "flex"):
        plan = _cached_plan(batch, share_prefix)
    else:
        pad_id = getattr(inner.config, "pad_token_id", None) or 0
        plan = _plan(batch, share_prefix=share_prefix, one_row=False, max_row_tokens=max_row_tokens, pad_id=pad_id)
    # a causal LM's decoder, or the headless backbone itself (its get_decoder() is itself); LoRA stays injected
    hidden = _run_decoder(inner.get_decoder(), inner.config, plan, kind, next(model.parameters()).dtype)  # (R, L, H)
    return hidden.reshape(-1, hidden.shape[-1])[plan.pred_index], plan


def packed_sequence_logps(model: nn.Module, batch: Batch, *, share_prefix: bool = False,
                          chunk_size: int = 1024, token_logps: bool = False,
                          max_row_tokens: int | None = None,
                          attention: AttentionKind = "auto") -> PackedLogps:
    """Completion log-probs of every sequence of ``batch`` (padded or packed), padding-free.

    Args:
        model: a transformers causal LM, optionally PEFT-wrapped (LoRA); see
            :func:`fast_path_unsupported` for what is refused.
        batch: any :class:`Batch`; scored tokens are those with ``completion_mask == 1``
            (position 0 is never scored: it has no predecessor).
        share_prefix: encode each example's common prompt once (see module docstring).
        chunk_size: rows of logits materialised at a time by the output layer.
        token_logps: also return (N, T) per-token log-probs and mask (column t = token t).
        max_row_tokens: dense-mask backends only; row capacity for bin packing (default: the longest
            packed unit, so attention never costs more than with padding).
        attention: force a backend; ``"auto"`` reads the model's attention implementation, and runs
            short padded batches that the fast path would barely shrink padded (see
            :data:`SHORT_SEQUENCE_TOKENS`).

    Returns:
        :class:`PackedLogps` in row order; differentiable wrt the model's parameters.
    """
    if attention == "auto" and _padded_is_cheaper(batch, share_prefix):  # checked first: it is the cheap case
        from prefkit.models.logprobs import sequence_logps  # the padded engine (it imports this module)

        out = sequence_logps(model, batch, chunk_size=chunk_size, token_logps=token_logps, packing=False)
        return PackedLogps(out.logps, out.tokens, out.token_logps, out.mask)
    reason = fast_path_unsupported(model)
    if reason is not None:
        raise ValueError(f"packed log-probs cannot run this model: {reason}")
    hidden, plan = packed_hidden(model, batch, share_prefix=share_prefix, attention=attention,
                                 max_row_tokens=max_row_tokens)  # (S, H)
    head = _unwrap(model).get_output_embeddings()
    logps = head_logps(head, hidden, plan.target_ids, chunk_size=chunk_size)  # (S,)
    n = plan.num_sequences
    seq_logps = torch.zeros(n, dtype=torch.float32, device=logps.device).index_add(0, plan.seq_index, logps)
    tokens = torch.bincount(plan.seq_index, minlength=n).to(torch.float32)  # (N,)
    if not token_logps:
        return PackedLogps(seq_logps, tokens)
    per_token = torch.zeros(n, plan.max_len, dtype=torch.float32, device=logps.device)  # (N, T)
    per_token = per_token.index_put((plan.seq_index, plan.col_index), logps)
    mask = torch.zeros_like(per_token).index_put((plan.seq_index, plan.col_index),
                                                 torch.ones_like(logps.detach()))
    return PackedLogps(seq_logps, tokens, per_token, mask)


def prefix_shared_sequence_logps(model: nn.Module, batch: Batch, **kwargs) -> PackedLogps:
    """:func:`packed_sequence_logps` with each example's prompt encoded once (``share_prefix=True``)."""
    return packed_sequence_logps(model, batch, share_prefix=True, **kwargs)


def packing_stats(batch: Batch, *, share_prefix: bool = False) -> dict[str, int]:
    """Token counts for logging/benchmarks: padded tokens, real tokens, and tokens the fast path runs."""
    seqs = _sequences(batch)
    longest = max(len(ids) for ids, _ in seqs)
    docs = _docs(seqs, batch.group_size, share_prefix)
    return {
        "padded_tokens": longest * len(seqs),
        "real_tokens": sum(len(ids) for ids, _ in seqs),
        "run_tokens": sum(p.stop - p.start for d in docs for p in d),
    }


__all__ = ["PackedLogps", "pack_batch", "packed_sequence_logps", "prefix_shared_sequence_logps",
           "fast_path_unsupported", "packing_stats", "packed_hidden", "backbone_fast_path_unsupported"]
