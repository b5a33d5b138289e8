"""The log-prob engine equals the naive full-logits computation, in value and in gradient.

Naive reference: ``log_softmax(model(input_ids).logits.float())`` gathered at the next token and summed
over completion positions (position t scores token t, predicted by the logits at t - 1).
"""

from __future__ import annotations

import copy

import pytest
import torch

from prefkit.data.encode import Encoder
from prefkit.models.load import add_lora
from prefkit.models.logprobs import list_logps, pair_logps, sequence_logps
from prefkit.testing import tiny_llama, tiny_pairs, tiny_rankings, tiny_tokenizer


def naive(model, batch) -> tuple[torch.Tensor, torch.Tensor]:
    logp = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits.float().log_softmax(-1)
    token = logp[:, :-1].gather(2, batch.input_ids[:, 1:, None]).squeeze(2)  # (N, T-1)
    mask = batch.completion_mask[:, 1:].float()
    return (token * mask).sum(1), token * mask


@pytest.fixture
def setup():
    tok = copy.deepcopy(tiny_tokenizer())
    enc = Encoder(tok)
    return tok, enc


@pytest.mark.parametrize("packing", [False, True], ids=["padded", "packed"])
def test_matches_naive_value_and_gradient(setup, packing) -> None:
    tok, enc = setup
    batch = enc.collate(enc.encode_all(tiny_pairs(4))[0])
    a, b = tiny_llama(len(tok)), tiny_llama(len(tok))
    seq = sequence_logps(a, batch, chunk_size=7, token_logps=True, packing=packing)
    ref_sum, ref_tok = naive(b, batch)
    torch.testing.assert_close(seq.logps, ref_sum, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(seq.token_logps[:, 1:], ref_tok, atol=1e-5, rtol=1e-5)
    assert torch.equal(seq.tokens, batch.completion_mask[:, 1:].sum(1).float())
    assert seq.logps.dtype == torch.float32 and seq.logps.shape == (8,)
    # gradients through the chunked output layer equal the naive ones
    w = torch.linspace(-1, 1, 8)
    (seq.logps * w).sum().backward()
    (ref_sum * w).sum().backward()
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-5, rtol=1e-4, msg=name)


def test_lora_on_output_layer_uses_wrapped_head(setup) -> None:
    tok, enc = setup
    batch = enc.collate(enc.encode_all(tiny_pairs(2))[0])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = add_lora(tiny_llama(len(tok)), r=2, alpha=4, target_modules=["q_proj", "lm_head"])
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.5)
    seq = sequence_logps(model, batch, chunk_size=3, packing=False)
    torch.testing.assert_close(seq.logps, naive(model, batch)[0], atol=1e-4, rtol=1e-5)


def test_layouts_pairs_and_lists(setup) -> None:
    tok, enc = setup
    model = tiny_llama(len(tok))
    pairs = enc.collate(enc.encode_all(tiny_pairs(3))[0])
    p = pair_logps(sequence_logps(model, pairs), pairs)
    single = [enc.collate(enc.encode_all([r])[0]) for r in tiny_pairs(3)]
    for i, one in enumerate(single):  # padding and batch position do not change a sequence's log-prob
        s = sequence_logps(model, one).logps
        torch.testing.assert_close(torch.stack([p.chosen_logps[i], p.rejected_logps[i]]), s, atol=1e-4, rtol=1e-5)
    lists = enc.collate(enc.encode_all(tiny_rankings(2, k=3))[0])
    seq = sequence_logps(model, lists)
    grouped = list_logps(seq, lists)
    assert grouped.logps.shape == (2, 3)
    assert grouped.logps[1, 2] == seq.logps[2 * 2 + 1]  # row g*B+b -> [b, g]


@pytest.mark.parametrize("packing", [False, True], ids=["padded", "packed"])
def test_no_full_vocab_logits(setup, monkeypatch, packing) -> None:
    """The engine never calls the model's full forward (which would build (N, T, V) logits)."""
    tok, enc = setup
    model = tiny_llama(len(tok))
    batch = enc.collate(enc.encode_all(tiny_pairs(2))[0])
    monkeypatch.setattr(type(model), "forward", lambda *a, **k: pytest.fail("full forward called"))
    sequence_logps(model, batch, packing=packing)


def test_ddp_wrapper_refused_with_gradients(setup, tmp_path) -> None:
    """The engine calls the decoder directly, so a DDP wrapper's gradient sync would be skipped: with
    gradients on it refuses one (the trainer wraps ``PolicyStep`` instead); under no_grad it unwraps."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    tok, enc = setup
    batch = enc.collate(enc.encode_all(tiny_pairs(2))[0])
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        model = tiny_llama(len(tok))
        wrapped = DistributedDataParallel(model)
        with pytest.raises(TypeError, match="gradient sync would be skipped"):
            sequence_logps(wrapped, batch)
        with torch.no_grad():
            torch.testing.assert_close(sequence_logps(wrapped, batch).logps, sequence_logps(model, batch).logps)
    finally:
        dist.destroy_process_group()


def test_engine_modules_import_downward_only() -> None:
    """The engine's layering, with no import cycle (function-local imports included): logprobs ->
    packing -> attention, and both -> chunked, decoder; packing never imports logprobs."""
    import ast
    import importlib.util

    allowed = {"logprobs": {"packing", "chunked", "decoder"}, "packing": {"attention", "chunked", "decoder"},
               "attention": set(), "chunked": set(), "decoder": set()}
    for name, deps in allowed.items():
        with open(importlib.util.find_spec(f"prefkit.models.{name}").origin, encoding="utf-8") as f:
            tree = ast.parse(f.read())
        imported = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "prefkit.models":
                imported |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("prefkit.models."):
                imported.add(node.module.split(".")[2])
            elif isinstance(node, ast.Import):
                imported |= {a.name.split(".")[2] for a in node.names if a.name.startswith("prefkit.models.")}
        assert imported <= deps, (name, imported - deps)
