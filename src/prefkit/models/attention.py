"""Segment attention: exact block-sparse attention for packed / prompt-shared rows, on plain SDPA.

A packed row holds several independent segments. A dense block-diagonal mask makes SDPA compute every
(query, key) pair of the row and loses the causal fast path; FlexAttention skips the empty blocks but
has no CPU backward (torch 2.13), and flash-attn's varlen kernels need CUDA and cannot express a
shared prompt. This module registers an attention function with transformers' ``AttentionInterface``
that runs one ``scaled_dot_product_attention`` call per segment instead:

- an unshared sequence or a shared prompt: its own queries and keys, ``is_causal=True``;
- completion g of a shared prompt: its queries against ``[prompt keys, its own keys]`` with a
  lower-right causal mask (every prompt key visible, causal inside the completion).

Nothing outside the segments is computed. The per-call cost is one small kernel launch per segment
and layer (B * (G + 1) calls per layer with prompt sharing).

Use :func:`segment_attention` as a context manager around the decoder call; it switches the model's
``config._attn_implementation`` to ``"prefkit_segments"`` and restores it on exit (so it cannot serve
activation checkpointing, whose recomputation runs after the exit; the packing module then uses dense
masks). The segments travel
to every attention layer through the forward kwargs (``prefkit_segments=...``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention.bias import causal_lower_right

NAME = "prefkit_segments"


@dataclass
class Segments:
    """The segments of one packed row (batch size 1), covering positions [0, L) in order.

    Each entry is ``(start, stop, prompt)``: queries ``[start, stop)``; ``prompt`` is ``(p0, p1)`` when
    the segment is a completion that also sees a shared prompt at ``[p0, p1)``, else None.
    """

    spans: list[tuple[int, int, tuple[int, int] | None]]


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
    outs = []
    for start, stop, prompt in prefkit_segments.spans:
        q = query[:, :, start:stop]  # (1, H, C, D)
        if prompt is None:
            k, v = key[:, :, start:stop], value[:, :, start:stop]
            outs.append(F.scaled_dot_product_attention(q, k, v, is_causal=stop - start > 1, scale=scaling,
                                                       dropout_p=p_drop))
            continue
        p0, p1 = prompt
        k = torch.cat([key[:, :, p0:p1], key[:, :, start:stop]], dim=2)  # (1, H, P + C, D)
        v = torch.cat([value[:, :, p0:p1], value[:, :, start:stop]], dim=2)
        # Lower-right causal: every prompt key, causal inside the completion. SDPA dispatches this bias to
        # its fused kernels on CUDA (no materialised mask); elsewhere it is materialised per call.
        mask = causal_lower_right(stop - start, (p1 - p0) + (stop - start))
        outs.append(F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scaling, dropout_p=p_drop))
    out = torch.cat(outs, dim=2)  # (1, H, L, D)
    return out.transpose(1, 2).contiguous(), None


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
