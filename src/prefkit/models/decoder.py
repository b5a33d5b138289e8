"""What both paths of the log-prob engine share: the causal LM's parts and the per-sequence result.

The engine has two ways to run a batch, each in its own module, and neither imports the other:

- :mod:`prefkit.models.logprobs`: the dispatcher :func:`~prefkit.models.logprobs.sequence_logps`, the
  padded computation, and the loss-input helpers;
- :mod:`prefkit.models.packing`: planning a padding-free layout and running it.

Both import this module (and :mod:`prefkit.models.chunked`, the output layer, and
:mod:`prefkit.models.attention`, segment attention); this module imports nothing of prefkit's models.
The layering, with no import cycle::

    logprobs ──> packing ──> attention
        │           │
        └───────────┴──────> decoder, chunked
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class SequenceLogps:
    """Per-sequence results of the log-prob engine, in the batch's row order (``row g * B + b``).

    logps: (N,) fp32 completion log-probs summed over the scored (completion) tokens.
    tokens: (N,) fp32 scored-token counts.
    token_logps: (N, T) fp32 per-token log-probs, column t = log-prob of token t of the sequence (0 where
        not scored); only when asked for. T is the padded width for a padded batch, the longest sequence
        for a packed one.
    mask: (N, T) 1.0 on scored tokens, matching ``token_logps``; only when asked for.
    """

    logps: Tensor
    tokens: Tensor
    token_logps: Tensor | None = None
    mask: Tensor | None = None


def unwrap(model: nn.Module) -> nn.Module:
    """The transformers model under PEFT / DDP / ``torch.compile`` wrappers (LoRA layers stay injected
    in it and active)."""
    while True:
        if isinstance(getattr(model, "module", None), nn.Module):  # DDP / torch.compile
            model = model.module
        elif callable(getattr(model, "get_base_model", None)):  # peft.PeftModel
            model = model.get_base_model()
        else:
            return model


def decoder_and_head(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """The decoder (returns final, normed hidden states) and the output layer of a causal LM."""
    lm = unwrap(model)
    head = lm.get_output_embeddings()
    decoder = lm.get_decoder() if hasattr(lm, "get_decoder") else getattr(lm, "model", None)
    if head is None or decoder is None:
        raise TypeError(f"{type(lm).__name__} has no decoder/output layer; expected a *ForCausalLM model")
    return decoder, head


def per_sequence(token_lp: Tensor, seq_index: Tensor, col_index: Tensor, num_sequences: int, max_len: int, *,
                 token_logps: bool) -> SequenceLogps:
    """Scored-token log-probs (S,) -> :class:`SequenceLogps`: scored token s is token ``col_index[s]`` of
    sequence ``seq_index[s]``; sums per sequence in the order of ``token_lp``."""
    n = num_sequences
    logps = torch.zeros(n, dtype=torch.float32, device=token_lp.device).index_add(0, seq_index, token_lp)  # (N,)
    tokens = torch.bincount(seq_index, minlength=n).to(torch.float32)  # (N,)
    if not token_logps:
        return SequenceLogps(logps, tokens)
    per_token = torch.zeros(n, max_len, dtype=torch.float32, device=token_lp.device)  # (N, T)
    per_token = per_token.index_put((seq_index, col_index), token_lp)
    mask = torch.zeros_like(per_token).index_put((seq_index, col_index), torch.ones_like(token_lp.detach()))
    return SequenceLogps(logps, tokens, per_token, mask)


__all__ = ["SequenceLogps", "unwrap", "decoder_and_head", "per_sequence"]
