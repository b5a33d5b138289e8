"""The log-prob engine: summed completion log-probs of every sequence of a batch in one forward pass.

``sequence_logps(model, batch)`` is the single entry point. It runs the model's decoder once over all
N = G * B rows of a :class:`~prefkit.data.batch.Batch` (chosen and rejected together, or all K items of
a list), keeps only the hidden states at positions that predict a completion token, and gets each
target token's log-prob from the output layer chunk by chunk with
:func:`prefkit.models.chunked.target_logps` — no (N, T, V) logits and no full-vocabulary fp32
log-softmax over the whole batch.

Position convention (``Batch``): ``completion_mask[:, t] = 1`` means token ``input_ids[:, t]`` is scored;
it is predicted by the hidden state at ``t - 1``. Results come back in row order, fp32.

Helpers turn the (N,) results into the loss inputs of ``prefkit.losses.types``: :func:`pair_logps`,
:func:`list_logps`, :func:`unpaired_logps`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from prefkit.data.batch import Batch
from prefkit.losses.types import ListLogps, PairLogps, UnpairedLogps
from prefkit.models.chunked import head_logps
from prefkit.models.packing import fast_path_unsupported, packed_sequence_logps


@dataclass(frozen=True)
class SequenceLogps:
    """Per-sequence results in batch row order.

    logps: (N,) fp32 completion log-probs summed over completion tokens.
    tokens: (N,) fp32 completion token counts.
    token_logps: (N, T) fp32 per-token log-probs (0 off the completion), when asked for.
    mask: (N, T) completion mask matching ``token_logps``, when asked for.
    """

    logps: Tensor
    tokens: Tensor
    token_logps: Tensor | None = None
    mask: Tensor | None = None


def _unwrap(model: nn.Module) -> nn.Module:
    """The underlying ``*ForCausalLM`` of a PEFT or DDP wrapper (LoRA layers stay active)."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):  # DDP / compile
            model = model.module
        elif hasattr(model, "get_base_model"):  # peft.PeftModel
            model = model.get_base_model()
        else:
            return model


def _check_not_distributed(model: nn.Module) -> None:
    """Refuse a DDP/FSDP wrapper when gradients are on: the engine would bypass its ``forward``."""
    if not torch.is_grad_enabled():
        return
    from torch.nn.parallel import DistributedDataParallel

    wrappers: tuple[type, ...] = (DistributedDataParallel,)
    try:
        from torch.distributed.fsdp import FullyShardedDataParallel

        wrappers += (FullyShardedDataParallel,)
    except ImportError:  # torch built without distributed support
        pass
    if isinstance(model, wrappers):
        raise TypeError(f"sequence_logps got a {type(model).__name__}-wrapped model with gradients on; the engine "
                        "calls the decoder directly, so the wrapper's gradient sync would be skipped. Wrap a "
                        "module whose forward calls sequence_logps instead (prefkit.train.trainer.PolicyStep)")


def decoder_and_head(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """The decoder (returns final, normed hidden states) and the output layer of a causal LM."""
    lm = _unwrap(model)
    head = lm.get_output_embeddings()
    decoder = lm.get_decoder() if hasattr(lm, "get_decoder") else getattr(lm, "model", None)
    if head is None or decoder is None:
        raise TypeError(f"{type(lm).__name__} has no decoder/output layer; expected a *ForCausalLM model")
    return decoder, head


def sequence_logps(model: nn.Module, batch: Batch, *, chunk_size: int = 1024,
                   token_logps: bool = False, packing: bool = True,
                   share_prefix: bool = True) -> SequenceLogps:
    """Summed completion log-probs and token counts of every sequence in ``batch``, in one forward.

    Args:
        model: a causal LM (``*ForCausalLM``), optionally wrapped by PEFT; LoRA adapters are active
            unless the caller disabled them.
        batch: padded layout, N rows (see ``prefkit.data.batch``).
        chunk_size: scored tokens per output-layer chunk; peak extra memory ~ ``chunk_size * V * 8`` B.
        token_logps: also return (N, T) per-token log-probs and the mask.
        packing: run the padding-free fast path (:mod:`prefkit.models.packing`): sequences packed
            end to end, attention never crossing a sequence; falls back to the padded rows for models
            it cannot run (:func:`~prefkit.models.packing.fast_path_unsupported`). Same results.
        share_prefix: with ``packing``, encode each example's common prompt once for all its
            completions (exact; examples whose sequences share no prefix are run unshared).

    Returns:
        :class:`SequenceLogps` with (N,) fp32 ``logps`` and ``tokens``.

    Deviation: models whose logits are post-processed after the output layer (final logit
    soft-capping, e.g. Gemma 2) are not supported by the chunked path and raise ``ValueError``.
    With gradients on, a DDP/FSDP-wrapped ``model`` raises ``TypeError``: the engine runs the decoder
    and the output layer itself, bypassing the wrapper's ``forward`` and so its gradient sync; call
    ``sequence_logps`` on the bare model inside the wrapped module's ``forward`` (as the trainer does).
    """
    _check_not_distributed(model)
    if packing and fast_path_unsupported(model) is None:  # the padding-free fast path
        out = packed_sequence_logps(model, batch, share_prefix=share_prefix, chunk_size=chunk_size,
                                    token_logps=token_logps)
        return SequenceLogps(out.logps, out.tokens, out.token_logps, out.mask)
    if batch.layout != "padded":
        raise NotImplementedError("sequence_logps: layout='packed' needs packing=True and a supported model")
    config = getattr(_unwrap(model), "config", None)
    if getattr(config, "final_logit_softcapping", None):
        raise ValueError("sequence_logps: models with final_logit_softcapping are not supported")
    decoder, head = decoder_and_head(model)
    out = decoder(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
    hidden = out.last_hidden_state  # (N, T, H)
    scored = batch.completion_mask[:, 1:].bool()  # (N, T-1): token t+1 is scored
    targets = batch.input_ids[:, 1:][scored]  # (M,)
    token_lp = head_logps(head, hidden[:, :-1][scored], targets, chunk_size=chunk_size)  # (M,) fp32
    n, t = batch.input_ids.shape
    rows = torch.arange(n, device=token_lp.device)[:, None].expand(n, t - 1)[scored]  # (M,)
    logps = torch.zeros(n, dtype=torch.float32, device=token_lp.device).index_add(0, rows, token_lp)
    tokens = scored.sum(1).float()  # (N,)
    if not token_logps:
        return SequenceLogps(logps, tokens)
    per_token = torch.zeros(n, t, dtype=torch.float32, device=token_lp.device)  # (N, T)
    mask = torch.zeros(n, t, dtype=torch.bool, device=token_lp.device)
    mask[:, 1:] = scored
    per_token = per_token.masked_scatter(mask, token_lp)
    return SequenceLogps(logps, tokens, per_token, mask.float())


def pair_logps(seq: SequenceLogps, batch: Batch) -> PairLogps:
    """Rows [0:B) chosen, [B:2B) rejected -> :class:`PairLogps`."""
    b = batch.num_examples
    tl, m = seq.token_logps, seq.mask
    return PairLogps(seq.logps[:b], seq.logps[b:2 * b], seq.tokens[:b], seq.tokens[b:2 * b],
                     None if tl is None else tl[:b], None if tl is None else tl[b:2 * b],
                     None if m is None else m[:b], None if m is None else m[b:2 * b])


def list_logps(seq: SequenceLogps, batch: Batch) -> ListLogps:
    """Rows g*B+b -> :class:`ListLogps` with (B, K) entries (item 0 best)."""
    return ListLogps(batch.group(seq.logps), batch.group(seq.tokens),
                     None if seq.token_logps is None else batch.group(seq.token_logps),
                     None if seq.mask is None else batch.group(seq.mask))


def unpaired_logps(seq: SequenceLogps, batch: Batch, *, with_kl: bool = False) -> UnpairedLogps:
    """Rows [0:B) the completions; with ``with_kl``, rows [B:2B) the mismatched KL pairs (KTO)."""
    if not with_kl:
        return UnpairedLogps(seq.logps, seq.tokens)
    b = seq.logps.shape[0] // 2
    return UnpairedLogps(seq.logps[:b], seq.tokens[:b], kl_logps=seq.logps[b:])


__all__ = ["SequenceLogps", "sequence_logps", "decoder_and_head", "pair_logps", "list_logps",
           "unpaired_logps"]
