"""Encoding records into token ids (prefkit.data.encode) and collating them into a Batch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from prefkit.data.encode import EncodeConfig, EncodedExample, Encoder, TruncationReport, collate
from prefkit.data.records import Message, Pair, Ranking, Rating, Unpaired
from prefkit.errors import ConfigError, DataError
from prefkit.testing import (
    tiny_chat_pairs,
    tiny_pairs,
    tiny_rankings,
    tiny_tokenizer,
    tiny_unpaired,
)

# A template that writes neither BOS nor an end token (the encoder must add both).
BARE_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
# A ChatML-like template that closes assistant turns with "<eos>\n" (whitespace after the end token).
NEWLINE_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}"
    "{% if m['role'] == 'assistant' %}{{ eos_token }}\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
# Not prefix-consistent: the generation prompt differs from how the assistant turn starts.
BROKEN_TEMPLATE = (
    "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)

TOKENIZERS = {
    "bos+default": dict(bos=True),
    "nobos+default": dict(bos=False),
    "bos+bare": dict(bos=True, chat_template=BARE_TEMPLATE),
    "nobos+bare": dict(bos=False, chat_template=BARE_TEMPLATE),
    "bos+newline": dict(bos=True, chat_template=NEWLINE_TEMPLATE),
}


def _rows(batch, tok):
    """(prompt text, completion text) per row, decoded from the batch through the masks."""
    out = []
    for ids, am, cm in zip(batch.input_ids, batch.attention_mask, batch.completion_mask, strict=True):
        real = am.bool()
        out.append((tok.decode(ids[real & ~cm.bool()]), tok.decode(ids[cm.bool()])))
    return out


def test_completion_mask_covers_exactly_the_completion_text() -> None:
    tok = tiny_tokenizer()
    pairs = tiny_pairs(4, seed=1)
    enc = Encoder(tok)
    examples, report = enc.encode_all(pairs)
    batch = enc.collate(examples)
    rows = _rows(batch, tok)
    for b, pair in enumerate(pairs):
        assert rows[b] == ("<bos>" + pair.prompt, pair.chosen + "<eos>")
        assert rows[4 + b] == ("<bos>" + pair.prompt, pair.rejected + "<eos>")
        # Separate tokenization equals tokenizing the whole text (completion starts with a space).
        seq = examples[b].sequences[0]
        assert seq.prompt_ids + seq.completion_ids == tok(pair.prompt + pair.chosen + "<eos>").input_ids
    assert batch.prompt_lens.tolist() == [len(ex.sequences[g].prompt_ids) for g in range(2) for ex in examples]
    assert report.examples == 4 and report.truncated == 0 and not report.dropped


def test_chat_completion_is_the_template_difference() -> None:
    tok = tiny_tokenizer()
    pairs = tiny_chat_pairs(3, system=True)
    enc = Encoder(tok)
    batch = enc.collate(enc.encode_all(pairs)[0])
    rows = _rows(batch, tok)
    for b, pair in enumerate(pairs):
        prompt_text = f"<bos><|system|>Be helpful.<|user|>{pair.prompt[1].content}<|assistant|>"
        assert rows[b] == (prompt_text, pair.chosen[0].content + "<eos>")
        assert rows[3 + b] == (prompt_text, pair.rejected[0].content + "<eos>")


def test_multi_turn_prompt_and_completion() -> None:
    tok = tiny_tokenizer()
    pair = Pair(
        prompt=(Message("user", "hi"), Message("assistant", "hello"), Message("user", "sum?")),
        chosen=(Message("assistant", "four"),), rejected=(Message("assistant", "five"),),
    )
    seq = Encoder(tok).encode(pair).sequences[0]
    assert tok.decode(seq.prompt_ids) == "<bos><|user|>hi<|assistant|>hello<eos><|user|>sum?<|assistant|>"
    assert tok.decode(seq.completion_ids) == "four<eos>"


@pytest.mark.parametrize("name", sorted(TOKENIZERS))
@pytest.mark.parametrize("chat", [False, True], ids=["text", "chat"])
def test_bos_and_eos_exactly_once(name: str, chat: bool) -> None:
    tok = tiny_tokenizer(**TOKENIZERS[name])
    records = tiny_chat_pairs(3) if chat else tiny_pairs(3)
    examples, _ = Encoder(tok).encode_all(records)
    for ex in examples:
        for seq in ex.sequences:
            ids = seq.prompt_ids + seq.completion_ids
            if tok.bos_token_id is None:
                assert 1 not in ids  # "<bos>" exists in the vocab but is not this tokenizer's BOS
            else:
                assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
            assert seq.completion_ids[-1] == tok.eos_token_id and ids.count(tok.eos_token_id) == 1


def test_add_eos_and_add_bos_off() -> None:
    tok = tiny_tokenizer()
    seq = Encoder(tok, EncodeConfig(add_eos=False, add_bos=False)).encode(tiny_pairs(1)[0]).sequences[0]
    assert tok.bos_token_id not in seq.prompt_ids and tok.eos_token_id not in seq.completion_ids


def test_no_template_for_chat_records_and_broken_template_raise() -> None:
    with pytest.raises(ConfigError, match="chat template"):
        Encoder(tiny_tokenizer(chat_template=None)).encode(tiny_chat_pairs(1)[0])
    with pytest.raises(ConfigError, match="prefix-consistent"):
        Encoder(tiny_tokenizer(chat_template=BROKEN_TEMPLATE)).encode(tiny_chat_pairs(1)[0])
    # Text records never use the template.
    assert Encoder(tiny_tokenizer(chat_template=None)).encode(tiny_pairs(1)[0]) is not None


def _long_pair() -> Pair:
    return Pair(prompt="one two three four five six seven eight nine ten\nAnswer:",
                chosen=" Sure, here is a clear and helpful answer.", rejected=" No.", id="long")


def test_truncation_keeps_prompt_end_and_completion_start() -> None:
    """max_prompt_length=6: BOS + the prompt's last 5 tokens; max_length=12: completions keep their
    first 12 - 6 = 6 tokens (losing EOS); the short rejected completion is untouched."""
    tok = tiny_tokenizer()
    pair = _long_pair()
    full = Encoder(tok).encode(pair)
    enc = Encoder(tok, EncodeConfig(max_length=12, max_prompt_length=6))
    ex = enc.encode(pair)
    chosen, rejected = ex.sequences
    assert ex.truncated
    assert chosen.prompt_ids == [tok.bos_token_id] + full.sequences[0].prompt_ids[-5:]
    assert tok.decode(chosen.prompt_ids) == "<bos>" + tok.decode(full.sequences[0].prompt_ids[-5:])
    assert pair.prompt.endswith(tok.decode(chosen.prompt_ids[1:]))
    assert chosen.completion_ids == full.sequences[0].completion_ids[:6]
    assert rejected.prompt_ids == chosen.prompt_ids
    assert rejected.completion_ids == full.sequences[1].completion_ids
    assert max(len(s) for s in ex.sequences) <= 12
    r = enc.report
    removed = (len(full.sequences[0].prompt_ids) - 6) + (len(full.sequences[0].completion_ids) - 6)
    assert (r.examples, r.truncated, r.prompt_truncated, r.completion_truncated) == (1, 1, 1, 1)
    assert r.tokens_removed == removed and r.kept == 1
    assert "1 truncated" in str(r) and "0 dropped" in str(r)


def test_max_length_alone_cuts_prompt_only_as_needed() -> None:
    """No max_prompt_length: a prompt is cut from the left just enough for the longest completion,
    but keeps at least max_length // 2 tokens."""
    tok = tiny_tokenizer()
    pair = _long_pair()
    full = Encoder(tok).encode(pair)
    p, c = len(full.sequences[0].prompt_ids), len(full.sequences[0].completion_ids)
    # Room for the whole completion: the prompt gives up exactly the overflow.
    length = p + c - 3
    ex = Encoder(tok, EncodeConfig(max_length=length)).encode(pair)
    assert len(ex.sequences[0].prompt_ids) == p - 3 and ex.sequences[0].completion_ids == full.sequences[0].completion_ids
    # A tight window: the prompt keeps half, the completion the rest.
    ex = Encoder(tok, EncodeConfig(max_length=10)).encode(pair)
    assert [len(s.prompt_ids) for s in ex.sequences] == [5, 5]
    assert len(ex.sequences[0].completion_ids) == 5 and ex.sequences[0].prompt_ids[0] == tok.bos_token_id


def test_drop_and_raise_modes() -> None:
    tok = tiny_tokenizer()
    records = [_long_pair(), *tiny_pairs(2)]
    enc = Encoder(tok, EncodeConfig(max_prompt_length=30, truncation="drop"))
    examples, report = enc.encode_all(records)
    assert [ex.id for ex in examples] == ["pair-0", "pair-1"]
    assert report.dropped == {"prompt_too_long": 1} and report.kept == 2 and report.truncated == 0
    assert "1 prompt longer than max_prompt_length" in str(report)
    _, report = Encoder(tok, EncodeConfig(max_length=55, truncation="drop")).encode_all(records)
    assert report.dropped == {"too_long": 1}
    with pytest.raises(DataError, match="example 'long'.*max_length"):
        Encoder(tok, EncodeConfig(max_length=55, truncation="raise")).encode_all(records)


def test_report_accumulates_across_calls() -> None:
    enc = Encoder(tiny_tokenizer(), EncodeConfig(max_prompt_length=30, truncation="drop"))
    enc.encode_all([_long_pair()])
    enc.encode(tiny_pairs(1)[0])
    assert enc.report.examples == 2 and enc.report.dropped["prompt_too_long"] == 1
    total = TruncationReport()
    total.add(enc.report)
    assert total.kept == 1


def test_collate_pair_layout_and_padding() -> None:
    tok = tiny_tokenizer()
    enc = Encoder(tok)
    examples, _ = enc.encode_all(tiny_pairs(3))
    batch = collate(examples, pad_id=tok.pad_token_id, pad_to_multiple_of=8)
    assert batch.kind == "pair" and batch.group_size == 2 and batch.num_examples == 3
    assert batch.input_ids.shape[0] == 6 and batch.input_ids.shape[1] % 8 == 0
    for b, ex in enumerate(examples):
        for g, seq in enumerate(ex.sequences):  # row g * B + b, chosen rows first
            row = batch.input_ids[g * 3 + b]
            assert row[: len(seq)].tolist() == seq.prompt_ids + seq.completion_ids
            assert (row[len(seq):] == tok.pad_token_id).all()
    assert batch.seq_lens.tolist() == batch.attention_mask.sum(1).tolist()
    assert torch.equal(batch.group(batch.seq_lens)[:, 0], batch.seq_lens[:3])
    assert (batch.completion_mask <= batch.attention_mask).all()
    assert batch.ties.tolist() == [False] * 3 and batch.weight.tolist() == [1.0] * 3
    assert batch.strength[0] == 1.0 and batch.strength[1:].isnan().all()  # only pair-0 has a margin
    assert batch.example_ids == ["pair-0", "pair-1", "pair-2"]
    assert batch.labels is None and batch.scores is None


def test_packed_layout_matches_padded() -> None:
    tok = tiny_tokenizer()
    examples, _ = Encoder(tok).encode_all(tiny_pairs(3))
    padded = collate(examples, tok.pad_token_id)
    packed = collate(examples, tok.pad_token_id, layout="packed")
    assert packed.input_ids.shape == (1, padded.num_tokens()) and packed.num_sequences == 6
    real = padded.attention_mask.bool()
    assert torch.equal(packed.input_ids[0], padded.input_ids[real])
    assert torch.equal(packed.completion_mask[0], padded.completion_mask[real])
    starts = torch.cumsum(packed.seq_lens, 0) - packed.seq_lens
    assert (packed.position_ids[0, starts] == 0).all()


def test_rankings_of_four() -> None:
    tok = tiny_tokenizer()
    rankings = tiny_rankings(3, k=4)
    enc = Encoder(tok)
    batch = enc.collate(enc.encode_all(rankings)[0])
    assert batch.kind == "ranking" and batch.group_size == 4 and batch.input_ids.shape[0] == 12
    rows = _rows(batch, tok)
    for b, r in enumerate(rankings):
        for k in range(4):  # rows [kB:(k+1)B) are the k-th preferred responses
            assert rows[k * 3 + b][1] == r.responses[k] + "<eos>"
    assert batch.scores.shape == (3, 4) and batch.scores[0].tolist() == [4.0, 3.0, 2.0, 1.0]


def test_rankings_with_different_k_or_kinds_refuse_to_collate() -> None:
    enc = Encoder(tiny_tokenizer())
    ex3 = enc.encode_all(tiny_rankings(1, k=3))[0]
    ex4 = enc.encode_all(tiny_rankings(1, k=4))[0]
    with pytest.raises(DataError, match="different lengths"):
        enc.collate(ex3 + ex4)
    with pytest.raises(DataError, match="different feedback kinds"):
        enc.collate(ex3 + enc.encode_all(tiny_pairs(1))[0])


def test_unpaired_labels() -> None:
    tok = tiny_tokenizer()
    records = tiny_unpaired(4)
    enc = Encoder(tok)
    examples, _ = enc.encode_all(records)
    assert [ex.label for ex in examples] == [True, False, True, False]
    batch = enc.collate(examples)
    assert batch.kind == "unpaired" and batch.group_size == 1
    assert batch.labels.tolist() == [True, False, True, False] and batch.ties is None
    assert [c for _, c in _rows(batch, tok)] == [r.response + "<eos>" for r in records]


def test_ratings_scores_with_attributes() -> None:
    enc = Encoder(tiny_tokenizer())
    records = [Rating(prompt="Q:", response=" a", score=3.0, attributes={"safe": 1.0, "brief": 0.5}),
               Rating(prompt="Q:", response=" b", attributes={"safe": 0.0, "brief": 1.0})]
    batch = enc.collate(enc.encode_all(records)[0])
    assert batch.kind == "rating" and batch.score_names == ("score", "brief", "safe")
    assert batch.scores[0].tolist() == [3.0, 0.5, 1.0]
    assert batch.scores[1, 0].isnan() and batch.scores[1, 1:].tolist() == [1.0, 0.0]


def test_example_fields_carried() -> None:
    rec = Unpaired(prompt="Q:", response=" yes", desirable=True, id="u1", weight=2.5, user_id="alice",
                   strength=0.8)
    ex = Encoder(tiny_tokenizer()).encode(rec)
    assert isinstance(ex, EncodedExample)
    assert (ex.id, ex.weight, ex.user_id, ex.strength, ex.kind) == ("u1", 2.5, "alice", 0.8, "unpaired")
    rk = Ranking(prompt="Q:", responses=(" a", " b"))
    assert Encoder(tiny_tokenizer()).encode(rk).scores is None


def test_config_errors() -> None:
    with pytest.raises(ConfigError, match="did you mean 'keep_end'"):
        EncodeConfig(truncation="keep_ends")
    with pytest.raises(ConfigError, match="max_prompt_length"):
        EncodeConfig(max_length=10, max_prompt_length=10)
    with pytest.raises(ConfigError, match="max_length"):
        EncodeConfig(max_length=0)
    with pytest.raises(ConfigError, match="did you mean 'max_length'"):
        EncodeConfig.from_dict({"max_lenght": 5})
    assert EncodeConfig.from_dict({"max_length": 64}).max_length == 64


HH = Path(__file__).resolve().parent / "data" / "hh-rlhf-harmless-200.jsonl.gz"  # see tests/data/README.md


def test_real_hh_pairs_encode_with_exact_masks() -> None:
    """The 200 real HH-RLHF pairs of the excerpt (multi-turn chat, with HH's quirks: 4 empty final
    chosen turns, 1 chosen dialogue with an extra turn): every completion mask decodes to the assistant
    message(s) + EOS, BOS and EOS appear once, and truncation to 256 tokens is counted."""
    from prefkit.data.readers import load

    records = load(HH)
    assert len(records) == 200
    quirks = sorted(q for r in records for q in r.metadata.get("quirks", ()))
    assert quirks == ["hh_diverges_early"] + ["hh_empty_chosen"] * 4
    tok = tiny_tokenizer()
    enc = Encoder(tok, EncodeConfig(max_length=None))
    examples, report = enc.encode_all(records)
    assert len(examples) == 200 and report.truncated == 0
    empty_masks = 0
    for rec, ex in zip(records, examples, strict=True):
        for completion, seq in zip((rec.chosen, rec.rejected), ex.sequences, strict=True):
            text = tok.decode(seq.completion_ids)
            assert text.startswith(completion[0].content)
            for later in completion[1:]:  # the extra turns of a diverging dialogue are in the mask too
                assert later.content.strip() in text
            ids = seq.prompt_ids + seq.completion_ids
            assert ids.count(tok.bos_token_id) == 1 and ids[-1] == tok.eos_token_id
            if completion[0].content == "" and len(completion) == 1:
                empty_masks += 1
                assert seq.completion_ids == [tok.eos_token_id]  # an empty answer trains its EOS alone
    assert empty_masks == 4
    _, report = Encoder(tok, EncodeConfig(max_length=256)).encode_all(records)
    assert report.truncated > 0 and report.kept == 200 and report.longest > 256


def test_batches_feed_the_logprob_engine() -> None:
    """Encoder output → sequence_logps: the summed completion log-probs equal a hand computation
    from the model's logits (token t scored from position t-1), and the packed layout agrees."""
    from prefkit.models.logprobs import sequence_logps
    from prefkit.models.packing import pack_batch, packed_sequence_logps
    from prefkit.testing import tiny_llama

    tok = tiny_tokenizer()
    model = tiny_llama(len(tok))
    enc = Encoder(tok)
    examples, _ = enc.encode_all(tiny_chat_pairs(2))
    batch = enc.collate(examples)
    packed = enc.collate(examples, layout="packed")
    assert torch.equal(pack_batch(batch).input_ids, packed.input_ids)
    assert torch.equal(pack_batch(batch).position_ids, packed.position_ids)
    with torch.no_grad():
        got = sequence_logps(model, batch).logps  # (N,)
        got_packed = packed_sequence_logps(model, packed).logps  # (N,)
        for n, seq in enumerate(ex.sequences[g] for g in range(2) for ex in examples):
            ids = torch.tensor([seq.prompt_ids + seq.completion_ids])
            logp = model(ids).logits[0, :-1].log_softmax(-1).gather(1, ids[0, 1:, None])[:, 0]  # (T-1,)
            want = logp[len(seq.prompt_ids) - 1:].sum()
            torch.testing.assert_close(got[n], want, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(got_packed, got, atol=1e-4, rtol=1e-5)


def test_template_errors_are_one_line_data_errors() -> None:
    strict = ("{% for m in messages %}{% if m['role'] == 'system' %}"
              "{{ raise_exception('System role not supported') }}{% endif %}"
              "<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}"
              "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    enc = Encoder(tiny_tokenizer(chat_template=strict))
    records = tiny_chat_pairs(2, system=True)
    with pytest.raises(DataError, match="example 'chat-0': the chat template refused .*System role") as info:
        enc.encode_all(records)
    assert "\n" not in str(info.value)
    anonymous = Pair(prompt=records[0].prompt, chosen=records[0].chosen, rejected=records[0].rejected)
    with pytest.raises(DataError, match="^record 1: the chat template refused"):
        enc.encode_all([*tiny_chat_pairs(1), anonymous])


def test_ranking_tie_groups_in_extras() -> None:
    enc = Encoder(tiny_tokenizer())
    records = [Ranking(prompt="Q:", responses=(" a", " b", " c"), tie_groups=(0, 0, 1)),
               Ranking(prompt="Q:", responses=(" x", " y", " z"))]
    batch = enc.collate(enc.encode_all(records)[0])
    assert batch.extras["tie_groups"].tolist() == [[0, 0, 1], [0, 1, 2]]
    assert "tie_groups" not in enc.collate(enc.encode_all(records[1:])[0]).extras


def test_encoder_silences_the_tokenizers_too_long_notice():
    """prefkit cuts sequences itself and reports every cut, so transformers' one-time "Token indices
    sequence length is longer than the specified maximum" notice is switched off for the tokenizer."""
    import copy

    from prefkit.testing import tiny_tokenizer

    tok = copy.deepcopy(tiny_tokenizer())
    Encoder(tok, EncodeConfig())
    assert tok.deprecation_warnings["sequence-length-is-longer-than-the-specified-maximum"] is True
