"""The offline test builders in ``prefkit.testing`` behave as documented."""

from __future__ import annotations

import string

import torch

from prefkit.data.records import Pair, Ranking, Unpaired
from prefkit.testing import (
    tiny_chat_pairs,
    tiny_llama,
    tiny_pairs,
    tiny_rankings,
    tiny_tokenizer,
    tiny_unpaired,
)


def test_tokenizer_special_tokens_and_bos() -> None:
    tok = tiny_tokenizer()
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    assert 256 <= len(tok) <= 512
    assert tok("hello").input_ids[0] == tok.bos_token_id  # Llama-like: BOS prepended
    assert tok.eos_token_id not in tok("hello").input_ids  # never appends EOS
    no_bos = tiny_tokenizer(bos=False)
    assert no_bos.bos_token_id is None
    assert no_bos("hello").input_ids == tok("hello", add_special_tokens=False).input_ids


def test_tokenizer_roundtrips_any_text_without_unknowns() -> None:
    tok = tiny_tokenizer()
    text = string.printable + " naïve café 東京 😀"
    ids = tok(text, add_special_tokens=False).input_ids
    assert tok.decode(ids) == text
    assert tok.unk_token_id is None or tok.unk_token_id not in ids


def test_tokenizer_is_cached_and_chat_templates() -> None:
    assert tiny_tokenizer() is tiny_tokenizer()
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    assert tiny_tokenizer().apply_chat_template(msgs, tokenize=False) == "<bos><|user|>hi<|assistant|>yo<eos>"
    assert tiny_tokenizer(bos=False).apply_chat_template(
        msgs[:1], tokenize=False, add_generation_prompt=True) == "<|user|>hi<|assistant|>"
    assert tiny_tokenizer(chat_template=None).chat_template is None


def test_tiny_llama_is_deterministic_and_leaves_rng_alone() -> None:
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = tiny_llama(300, seed=1)
    after = torch.rand(1)
    assert torch.equal(before, after)  # global RNG untouched
    b = tiny_llama(300, seed=1)
    c = tiny_llama(300, seed=2)
    ids = torch.tensor([[1, 5, 9, 3]])
    with torch.no_grad():
        la, lb, lc = a(ids).logits, b(ids).logits, c(ids).logits
    assert la.shape == (1, 4, 300) and la.dtype == torch.float32
    assert torch.equal(la, lb) and not torch.equal(la, lc)
    assert tiny_llama(300, tie_embeddings=True).lm_head.weight is not None


def test_record_builders() -> None:
    pairs = tiny_pairs(5, seed=3)
    assert len(pairs) == 5 and all(isinstance(p, Pair) for p in pairs)
    assert pairs == tiny_pairs(5, seed=3)
    chats = tiny_chat_pairs(3, system=True)
    assert chats[0].prompt[0].role == "system" and chats[0].chosen[0].role == "assistant"
    ranks = tiny_rankings(2, k=4)
    assert all(isinstance(r, Ranking) and len(r.responses) == 4 for r in ranks)
    unp = tiny_unpaired(4)
    assert all(isinstance(u, Unpaired) for u in unp) and [u.desirable for u in unp] == [True, False] * 2
