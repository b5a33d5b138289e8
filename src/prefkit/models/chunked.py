"""Chunked output layer: per-token target log-probs without materialising the full logits.

A causal LM's last step is ``logits = hidden @ weight.T (+ bias)`` followed by ``log_softmax``. For a
preference batch of N scored tokens and a vocabulary of V entries the fp32 logits alone take
``4 * N * V`` bytes (8 sequences x 700 tokens x 151,936 vocab = 3.4 GB), and autograd keeps them (and
their softmax) alive until backward. :func:`target_logps` computes only what the losses need, the
log-prob of each target token, in chunks of ``chunk_size`` rows:

- forward: per chunk, ``logits_c = (hidden_c @ weight.T).float()``; keep ``logsumexp`` (N,) and the
  target logit; the chunk's logits are freed before the next chunk.
- backward: recompute each chunk's logits; with ``p = softmax(logits_c)`` and the upstream gradient
  ``g`` (N,), ``d logp_t / d logits = onehot(t) - p``, so ``dlogits_c = g[:, None] * (onehot - p)``;
  then ``grad_hidden_c = dlogits_c @ weight`` and ``grad_weight += dlogits_c.T @ hidden_c`` (and
  ``grad_bias += dlogits_c.sum(0)``).

Peak extra memory is therefore O(chunk_size * V) instead of O(N * V), at the cost of one extra
``hidden @ weight.T`` matmul per chunk in backward (the same trade as Liger's fused linear
cross-entropy, without the fused kernel).

Precision: the matmuls run in the inputs' dtype (bf16 on GPU, as ``lm_head`` would); logits are upcast
to fp32 before ``logsumexp``; outputs are fp32. ``grad_weight`` and ``grad_bias`` are accumulated across
chunks in fp32 and cast to the parameter dtype at the end. In fp32 the result equals
``log_softmax(hidden @ weight.T)[targets]`` to ~1e-6; in bf16 it equals the naive computation done the
same way (bf16 matmul, fp32 log_softmax) to ~1e-5 in value, and the gradients agree to bf16 rounding
(relative ~1e-2, see ``tests/test_chunked.py``).

Targets below 0 (e.g. ``-100``) are ignored: their log-prob is 0 and they receive no gradient.
"""

from __future__ import annotations

import torch
import torch.utils.checkpoint
from torch import Tensor

IGNORE_INDEX = -100


def _chunk_logits(hidden_c: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """fp32 logits (C, V) of one chunk; the matmul runs in the inputs' dtype."""
    logits = hidden_c @ weight.T  # (C, V) in input dtype
    if bias is not None:
        logits = logits + bias
    return logits.float()


class _TargetLogps(torch.autograd.Function):
    """Autograd function behind :func:`target_logps` (see module docstring for the math)."""

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor,
                chunk_size: int) -> Tensor:
        n = hidden.shape[0]
        valid = targets >= 0  # (N,)
        safe_targets = torch.where(valid, targets, torch.zeros_like(targets))  # (N,)
        out = torch.empty(n, dtype=torch.float32, device=hidden.device)
        lse = torch.empty(n, dtype=torch.float32, device=hidden.device)
        with torch.no_grad():
            for start in range(0, n, chunk_size):
                stop = min(start + chunk_size, n)
                logits = _chunk_logits(hidden[start:stop], weight, bias)  # (C, V) fp32
                chunk_lse = torch.logsumexp(logits, dim=-1)  # (C,)
                target_logit = logits.gather(1, safe_targets[start:stop, None]).squeeze(1)  # (C,)
                lse[start:stop] = chunk_lse
                out[start:stop] = target_logit - chunk_lse
                del logits
        out = torch.where(valid, out, torch.zeros_like(out))
        ctx.save_for_backward(hidden, weight, bias, safe_targets, valid, lse)
        ctx.chunk_size = chunk_size
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        hidden, weight, bias, targets, valid, lse = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2]
        chunk_size = ctx.chunk_size
        n = hidden.shape[0]
        g = torch.where(valid, grad_out.float(), torch.zeros_like(grad_out, dtype=torch.float32))  # (N,)
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        grad_b = (torch.zeros(bias.shape, dtype=torch.float32, device=bias.device)
                  if need_b and bias is not None else None)
        for start in range(0, n, chunk_size):
            stop = min(start + chunk_size, n)
            h_c = hidden[start:stop]  # (C, H)
            g_c = g[start:stop]  # (C,)
            logits = _chunk_logits(h_c, weight, bias)  # (C, V) fp32
            # dlogits = g * (onehot(t) - softmax(logits)), computed in place on the logits buffer.
            dlogits = logits.sub_(lse[start:stop, None]).exp_().mul_(-g_c[:, None])  # (C, V)
            dlogits.scatter_add_(1, targets[start:stop, None], g_c[:, None])
            if grad_b is not None:
                grad_b += dlogits.sum(0)
            d_low = dlogits.to(hidden.dtype)  # (C, V) matmuls in the input dtype
            if grad_h is not None:
                grad_h[start:stop] = d_low @ weight
            if grad_w is not None:
                if weight.dtype == torch.float32 and hidden.dtype == torch.float32:
                    grad_w.addmm_(d_low.T, h_c)
                else:
                    grad_w += d_low.T @ h_c.to(d_low.dtype)
            del logits, dlogits, d_low
        if grad_w is not None:
            grad_w = grad_w.to(weight.dtype)
        if grad_b is not None:
            grad_b = grad_b.to(bias.dtype)
        return grad_h, grad_w, grad_b, None, None


def target_logps(hidden: Tensor, weight: Tensor, targets: Tensor, *, bias: Tensor | None = None,
                 chunk_size: int = 1024) -> Tensor:
    """Log-prob of each target under ``softmax(hidden @ weight.T + bias)``, chunk by chunk.

    Equivalent to ``log_softmax((hidden @ weight.T + bias).float(), -1).gather(1, targets[:, None])``
    in value and in gradients (wrt ``hidden``, ``weight`` and ``bias``), but never holds more than
    ``chunk_size`` rows of logits: backward recomputes each chunk.

    Args:
        hidden: (N, H) final hidden states (after the final norm), fp32 or bf16/fp16.
        weight: (V, H) output-layer weight (``lm_head.weight``), same dtype as ``hidden``.
        targets: (N,) int64 token ids; entries < 0 are ignored (log-prob 0, no gradient).
        bias: (V,) optional output-layer bias.
        chunk_size: rows of logits materialised at a time; memory is ~``chunk_size * V * 8`` bytes.

    Returns:
        (N,) float32 log-probs (<= 0), differentiable.
    """
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"target_logps: hidden must be (N, H) and weight (V, H); got "
                         f"{tuple(hidden.shape)} and {tuple(weight.shape)}")
    if targets.shape != hidden.shape[:1]:
        raise ValueError(f"target_logps: targets must be (N,) = ({hidden.shape[0]},); got "
                         f"{tuple(targets.shape)}")
    if chunk_size < 1:
        raise ValueError(f"target_logps: chunk_size must be >= 1; got {chunk_size}")
    if hidden.shape[0] == 0:
        return hidden.new_zeros(0, dtype=torch.float32) + 0.0 * hidden.sum() + 0.0 * weight.sum()
    if hidden.dtype != weight.dtype:  # e.g. fp32 hidden states with a bf16 head: match the head
        hidden = hidden.to(weight.dtype)
    if bias is not None and bias.dtype != weight.dtype:
        bias = bias.to(weight.dtype)
    return _TargetLogps.apply(hidden, weight, bias, targets.long(), int(chunk_size))


def head_logps(head: torch.nn.Module, hidden: Tensor, targets: Tensor, *, chunk_size: int = 1024) -> Tensor:
    """(N,) fp32 log-probs of ``targets`` under an output layer ``head`` applied to ``hidden`` (N, H).

    A plain ``nn.Linear`` head goes through :func:`target_logps`. A wrapped head (e.g. LoRA on
    ``lm_head``) is called ``chunk_size`` rows at a time under activation checkpointing, so backward
    recomputes each chunk's logits instead of keeping them all.
    """
    if type(head) is torch.nn.Linear:
        return target_logps(hidden, head.weight, targets, bias=head.bias, chunk_size=chunk_size)
    parts = []
    for start in range(0, hidden.shape[0], chunk_size):
        h, t = hidden[start:start + chunk_size], targets[start:start + chunk_size]

        def chunk(h: Tensor, t: Tensor) -> Tensor:
            logits = head(h).float()  # (C, V)
            return logits.gather(1, t[:, None]).squeeze(1) - logits.logsumexp(-1)  # (C,)

        parts.append(torch.utils.checkpoint.checkpoint(chunk, h, t, use_reentrant=False)
                     if torch.is_grad_enabled() else chunk(h, t))
    return torch.cat(parts) if parts else hidden.new_zeros(0, dtype=torch.float32)


__all__ = ["target_logps", "head_logps", "IGNORE_INDEX"]
