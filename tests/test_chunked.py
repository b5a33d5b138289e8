"""Chunked output layer: values and gradients equal the naive full-logits computation."""

from __future__ import annotations

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from prefkit.models.chunked import target_logps


def _naive(hidden, weight, targets, bias=None):
    logits = hidden @ weight.T  # (N, V)
    if bias is not None:
        logits = logits + bias
    logps = torch.log_softmax(logits.float(), dim=-1)  # (N, V)
    valid = targets >= 0
    picked = logps.gather(1, targets.clamp(min=0)[:, None]).squeeze(1)
    return torch.where(valid, picked, torch.zeros_like(picked))


def _inputs(n=37, h=16, v=50, dtype=torch.float32, bias=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=g).to(dtype).requires_grad_()
    weight = (torch.randn(v, h, generator=g) * 0.5).to(dtype).requires_grad_()
    b = (torch.randn(v, generator=g) * 0.1).to(dtype).requires_grad_() if bias else None
    targets = torch.randint(0, v, (n,), generator=g)
    return hidden, weight, b, targets


def _grads(fn, hidden, weight, bias, targets, upstream):
    out = fn(hidden, weight, targets, bias)
    (out * upstream).sum().backward()
    grads = [hidden.grad.clone(), weight.grad.clone()] + ([bias.grad.clone()] if bias is not None else [])
    for t in (hidden, weight, bias):
        if t is not None:
            t.grad = None
    return out.detach(), grads


@pytest.mark.parametrize("chunk_size", [1, 5, 37, 1024])
@pytest.mark.parametrize("bias", [False, True])
def test_fp32_matches_naive(chunk_size, bias):
    hidden, weight, b, targets = _inputs(bias=bias)
    upstream = torch.randn(hidden.shape[0], generator=torch.Generator().manual_seed(1))
    ref, ref_grads = _grads(_naive, hidden, weight, b, targets, upstream)
    got, got_grads = _grads(lambda h, w, t, bb: target_logps(h, w, t, bias=bb, chunk_size=chunk_size),
                            hidden, weight, b, targets, upstream)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    for g_got, g_ref in zip(got_grads, ref_grads, strict=True):
        torch.testing.assert_close(g_got, g_ref, atol=1e-5, rtol=1e-5)


def test_bf16_matches_naive_within_tolerance():
    """bf16: values to 1e-5 (same bf16 matmul, fp32 softmax); grads to bf16 rounding (2e-2 rel)."""
    hidden, weight, b, targets = _inputs(n=64, h=32, v=80, dtype=torch.bfloat16, bias=True)
    upstream = torch.randn(64, generator=torch.Generator().manual_seed(2))
    ref, ref_grads = _grads(_naive, hidden, weight, b, targets, upstream)
    got, got_grads = _grads(lambda h, w, t, bb: target_logps(h, w, t, bias=bb, chunk_size=16),
                            hidden, weight, b, targets, upstream)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    for g_got, g_ref in zip(got_grads, ref_grads, strict=True):
        assert g_got.dtype == torch.bfloat16
        torch.testing.assert_close(g_got.float(), g_ref.float(), atol=2e-2, rtol=2e-2)


def test_ignored_targets_give_zero_and_no_grad():
    hidden, weight, _, targets = _inputs(n=10)
    targets[[2, 7]] = -100
    out = target_logps(hidden, weight, targets, chunk_size=3)
    assert out[2] == 0 and out[7] == 0
    out.sum().backward()
    assert torch.all(hidden.grad[[2, 7]] == 0)
    assert torch.all(hidden.grad[[0, 1, 3]] != 0)
    ref = _naive(hidden.detach(), weight.detach(), targets)
    torch.testing.assert_close(out.detach(), ref, atol=1e-5, rtol=1e-5)


def test_frozen_weight_and_mixed_dtype():
    """A frozen head (LoRA) gets no grad; fp32 hidden with a bf16 head is cast to the head's dtype."""
    hidden, weight, _, targets = _inputs(n=12)
    weight = weight.detach()
    out = target_logps(hidden, weight, targets, chunk_size=4)
    out.sum().backward()
    assert hidden.grad is not None and weight.grad is None
    out16 = target_logps(hidden.detach(), weight.bfloat16(), targets)
    assert out16.dtype == torch.float32 and torch.isfinite(out16).all()


def test_empty_and_shape_errors():
    hidden, weight, _, targets = _inputs(n=4)
    empty = target_logps(hidden[:0], weight, targets[:0])
    assert empty.shape == (0,)
    with pytest.raises(ValueError, match="targets must be"):
        target_logps(hidden, weight, targets[:3])
    with pytest.raises(ValueError, match="chunk_size"):
        target_logps(hidden, weight, targets, chunk_size=0)


def _largest_allocation(fn) -> int:
    """The largest single CPU allocation (bytes) made by any op while running ``fn``."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    return max(e.cpu_memory_usage for e in prof.events())


def test_never_materialises_full_logits():
    """Full logits (N, V) fp32 are N*V*4 bytes; the chunked path never allocates a tensor that big."""
    n, h, v, chunk = 512, 32, 2000, 64
    hidden, weight, _, targets = _inputs(n=n, h=h, v=v)
    full_bytes = n * v * 4

    def naive_step():
        _naive(hidden, weight, targets).sum().backward()

    def chunked_step():
        target_logps(hidden, weight, targets, chunk_size=chunk).sum().backward()

    assert _largest_allocation(naive_step) >= full_bytes
    largest = _largest_allocation(chunked_step)
    assert largest <= max(chunk * v * 4, v * h * 4) * 1.01, largest
