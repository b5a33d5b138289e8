"""The log-prob engine: summed completion log-probs of every sequence of a batch in one forward pass.

``sequence_logps(model, batch)`` is the single entry point and the one dispatcher: it decides up front
whether a batch runs padded or packed, and runs it. It runs the model's decoder once over all
N = G * B rows of a :class:`~prefkit.data.batch.Batch` (chosen and rejected together, or all K items of
a list), keeps only the hidden states at positions that predict a completion token, and gets each
target token's log-prob from the output layer chunk by chunk with
:func:`prefkit.models.chunked.head_logps` — no (N, T, V) logits and no full-vocabulary fp32
log-softmax over the whole batch.

The engine's modules, each importing only the ones below it (no import cycle)::

    logprobs   the dispatcher sequence_logps (and sequence_plan, its plan to share between passes),
               the padded path (padded_sequence_logps), and the loss-input helpers pair_logps /
               list_logps / unpaired_logps
    packing    planning a padding-free layout (plan_for) and running it (packed_sequence_logps,
               packed_hidden); never calls back here
    attention  segment attention (exact block-sparse SDPA for packed rows)
    chunked    the output layer, chunked (target log-probs without the full logits)
    decoder    what both paths share: SequenceLogps, unwrap, decoder_and_head, per_sequence

Dispatch (:func:`sequence_logps`): the packed path (:mod:`prefkit.models.packing`) when ``packing`` is
on, the model is supported (:func:`~prefkit.models.packing.fast_path_unsupported`) and the batch is not
a short one the fast path would barely shrink (:func:`~prefkit.models.packing.padded_is_cheaper`);
else the padded rows (a packed-layout batch has no padded rows: it needs the packed path). Both give
the same results up to float rounding.

Position convention (``Batch``): ``completion_mask[:, t] = 1`` means token ``input_ids[:, t]`` is scored;
it is predicted by the hidden state at ``t - 1``. Results come back in row order, fp32.

Helpers turn the (N,) results into the loss inputs of ``prefkit.losses.types``: :func:`pair_logps`,
:func:`list_logps`, :func:`unpaired_logps`.
"""

from __future__ import annotations

import torch
from torch import nn

from prefkit.data.batch import Batch
from prefkit.losses.types import ListLogps, PairLogps, UnpairedLogps
from prefkit.models.chunked import head_logps
from prefkit.models.decoder import SequenceLogps, decoder_and_head, per_sequence, unwrap
from prefkit.models.packing import (
    Plan,
    fast_path_unsupported,
    packed_sequence_logps,
    padded_is_cheaper,
    plan_for,
)


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


def sequence_logps(model: nn.Module, batch: Batch, *, chunk_size: int = 1024,
                   token_logps: bool = False, packing: bool = True,
                   share_prefix: bool = True, plan: Plan | None = None) -> SequenceLogps:
    """Summed completion log-probs and token counts of every sequence in ``batch``, in one forward.

    Args:
        model: a causal LM (``*ForCausalLM``), optionally wrapped by PEFT; LoRA adapters are active
            unless the caller disabled them.
        batch: padded layout, N rows (see ``prefkit.data.batch``); a packed-layout batch runs on the
            fast path only.
        chunk_size: scored tokens per output-layer chunk; peak extra memory ~ ``chunk_size * V * 8`` B.
        token_logps: also return (N, T) per-token log-probs and the mask.
        packing: run the padding-free fast path (:mod:`prefkit.models.packing`): sequences packed
            end to end, attention never crossing a sequence; the padded rows run instead for models
            it cannot run (:func:`~prefkit.models.packing.fast_path_unsupported`) and for short
            batches it would barely shrink (:func:`~prefkit.models.packing.padded_is_cheaper`).
            Same results.
        share_prefix: with ``packing``, encode each example's common prompt once for all its
            completions (exact; examples whose sequences share no prefix are run unshared).
        plan: a precomputed plan of this batch (:func:`sequence_plan`, or
            :func:`prefkit.models.packing.plan_for` with the same ``share_prefix``), to plan a batch once
            for several passes over it (a training step's reference and policy forwards); None plans
            here; unused when the batch runs padded.

    Returns:
        :class:`SequenceLogps` with (N,) fp32 ``logps`` and ``tokens``.

    Deviation: models whose logits are post-processed after the output layer (final logit
    soft-capping, e.g. Gemma 2) are not supported by the chunked path and raise ``ValueError``.
    With gradients on, a DDP/FSDP-wrapped ``model`` raises ``TypeError``: the engine runs the decoder
    and the output layer itself, bypassing the wrapper's ``forward`` and so its gradient sync; call
    ``sequence_logps`` on the bare model inside the wrapped module's ``forward`` (as the trainer does).
    """
    _check_not_distributed(model)
    if _runs_packed(model, batch, packing, share_prefix):
        return packed_sequence_logps(model, batch, share_prefix=share_prefix, chunk_size=chunk_size,
                                     token_logps=token_logps, plan=plan)
    return padded_sequence_logps(model, batch, chunk_size=chunk_size, token_logps=token_logps)


def _runs_packed(model: nn.Module, batch: Batch, packing: bool, share_prefix: bool) -> bool:
    """The dispatch: the packed path for a supported model unless the padded rows are cheaper."""
    return packing and fast_path_unsupported(model) is None and not padded_is_cheaper(batch, share_prefix)


def sequence_plan(model: nn.Module, batch: Batch, *, packing: bool = True, share_prefix: bool = True) -> Plan | None:
    """The plan :func:`sequence_logps` would build for ``batch``, or None when it would run it padded.

    Compute it once and pass it as ``plan=`` to every ``sequence_logps`` call over the same batch with
    the same ``packing`` / ``share_prefix`` (a training step's reference and policy passes), so that the
    batch is planned once. The plan holds only index tensors on the batch's device (no gradients);
    models sharing it need not be the same (a policy and its frozen reference).
    """
    return plan_for(batch, share_prefix=share_prefix) if _runs_packed(model, batch, packing, share_prefix) else None


def padded_sequence_logps(model: nn.Module, batch: Batch, *, chunk_size: int = 1024,
                          token_logps: bool = False) -> SequenceLogps:
    """:func:`sequence_logps` on the padded rows: the decoder over the (N, T) batch with its attention
    mask, then the output layer on the hidden states that predict a scored token."""
    if batch.layout != "padded":
        raise NotImplementedError("sequence_logps: layout='packed' needs packing=True and a supported model")
    config = getattr(unwrap(model), "config", None)
    if getattr(config, "final_logit_softcapping", None):
        raise ValueError("sequence_logps: models with final_logit_softcapping are not supported")
    decoder, head = decoder_and_head(model)
    out = decoder(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
    hidden = out.last_hidden_state  # (N, T, H)
    scored = batch.completion_mask[:, 1:].bool()  # (N, T-1): token t+1 is scored
    targets = batch.input_ids[:, 1:][scored]  # (M,)
    token_lp = head_logps(head, hidden[:, :-1][scored], targets, chunk_size=chunk_size)  # (M,) fp32
    n, t = batch.input_ids.shape
    rows, cols = scored.nonzero(as_tuple=True)  # (M,) row-major: each row's tokens in column order
    return per_sequence(token_lp, rows.to(token_lp.device), cols.to(token_lp.device) + 1, n, t,
                        token_logps=token_logps)


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


__all__ = ["SequenceLogps", "sequence_logps", "sequence_plan", "padded_sequence_logps", "decoder_and_head", "pair_logps",
           "list_logps", "unpaired_logps"]
