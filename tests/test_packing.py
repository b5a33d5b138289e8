"""Packed and prefix-shared log-probs equal the padded naive computation, values and gradients."""

from __future__ import annotations

import pytest
import torch

from prefkit.data.batch import Batch
from prefkit.models.packing import (
    _bins,
    fast_path_unsupported,
    pack_batch,
    packed_sequence_logps,
    packing_stats,
    plan_for,
    prefix_shared_sequence_logps,
)
from prefkit.testing import tiny_llama

VOCAB = 97


def _batch(prompt_lens: list[int], completion_lens: list[list[int]], *, seed: int = 0,
           kind: str = "pair") -> Batch:
    """A right-padded batch of B examples x G completions of random tokens sharing each prompt.

    ``completion_lens[b][g]`` is the length of completion g of example b; rows are g * B + b.
    """
    g_size = len(completion_lens[0])
    b_size = len(prompt_lens)
    gen = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(3, VOCAB, (p,), generator=gen) for p in prompt_lens]
    seqs, prompt_n = [], []
    for g in range(g_size):
        for b in range(b_size):
            comp = torch.randint(3, VOCAB, (completion_lens[b][g],), generator=gen)
            seqs.append((prompts[b], comp))
            prompt_n.append(len(prompts[b]))
    width = max(len(p) + len(c) for p, c in seqs)
    n = len(seqs)
    ids = torch.zeros(n, width, dtype=torch.long)
    attn = torch.zeros(n, width, dtype=torch.long)
    cmask = torch.zeros(n, width, dtype=torch.long)
    for i, (p, c) in enumerate(seqs):
        ids[i, :len(p) + len(c)] = torch.cat([p, c])
        attn[i, :len(p) + len(c)] = 1
        cmask[i, len(p):len(p) + len(c)] = 1
    return Batch(kind=kind, group_size=g_size, input_ids=ids, attention_mask=attn, completion_mask=cmask,
                 prompt_lens=torch.tensor(prompt_n))


def _naive(model, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Padded reference: full logits, log_softmax, shift by one; (N,) sums and (N, T) per token."""
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits.float()
    logps = torch.log_softmax(logits[:, :-1], dim=-1)  # (N, T-1, V)
    token = logps.gather(2, batch.input_ids[:, 1:, None]).squeeze(2)  # (N, T-1)
    mask = batch.completion_mask[:, 1:].float()
    token = torch.cat([torch.zeros_like(token[:, :1]), token * mask], dim=1)  # (N, T), column = token
    return token.sum(1), token


def _grads(model, loss):
    model.zero_grad()
    loss.backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def _model(attn: str = "sdpa", dtype=torch.float32, seed: int = 0):
    model = tiny_llama(VOCAB, hidden=32, layers=2, heads=4, seed=seed)
    model.set_attn_implementation(attn)
    return model.to(dtype)


UNEVEN = ([5, 1, 9], [[4, 1], [1, 7], [12, 3]])  # one-token prompt, one-token completions
LISTS = ([3, 6], [[2, 5, 1, 8], [4, 4, 9, 1]])  # lists of 4 items


@pytest.mark.parametrize(("attn", "attention"), [("eager", "segments"), ("sdpa", "dense"), ("eager", "dense")])
@pytest.mark.parametrize("share_prefix", [False, True])
@pytest.mark.parametrize("shape", [UNEVEN, LISTS], ids=["pairs-uneven", "lists-of-4"])
def test_fp32_values_and_grads_match_padded(attn, attention, share_prefix, shape):
    """The padded model vs the fast path with each attention backend (dense: bool / float masks)."""
    model = _model(attn)
    batch = _batch(*shape, kind="pair" if len(shape[1][0]) == 2 else "list")
    weights = torch.randn(batch.num_sequences, generator=torch.Generator().manual_seed(3))
    ref_logps, ref_tokens = _naive(model, batch)
    ref_grads = _grads(model, (ref_logps * weights).sum())
    out = packed_sequence_logps(model, batch, share_prefix=share_prefix, chunk_size=7, token_logps=True,
                                attention=attention)
    assert model.config._attn_implementation == attn  # restored after segment attention
    torch.testing.assert_close(out.logps, ref_logps.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.tokens, batch.completion_mask.sum(1).float())
    torch.testing.assert_close(out.token_logps, ref_tokens.detach(),
                               atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.mask, batch.completion_mask.float())
    got_grads = _grads(model, (out.logps * weights).sum())
    assert got_grads.keys() == ref_grads.keys()
    for name in ref_grads:
        torch.testing.assert_close(got_grads[name], ref_grads[name], atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("share_prefix", [False, True])
@pytest.mark.parametrize("shape", [UNEVEN, LISTS], ids=["pairs-uneven", "lists-of-4"])
def test_bf16_within_documented_tolerance(share_prefix, shape):
    """bf16 weights. Documented tolerance: sequence log-probs (sums of 1-12 tokens, magnitude ~50)
    within 1e-2 absolute (measured <= 1e-3: different bf16 rounding of the packed rows' matmuls);
    gradients within 3% of each tensor's largest entry (measured <= 1.4%)."""
    model = _model("sdpa", torch.bfloat16)
    batch = _batch(*shape)
    ref_logps, _ = _naive(model, batch)
    ref_grads = _grads(model, ref_logps.sum())
    out = packed_sequence_logps(model, batch, share_prefix=share_prefix)
    torch.testing.assert_close(out.logps, ref_logps.detach(), atol=1e-2, rtol=0)
    got_grads = _grads(model, out.logps.sum())
    for name in ref_grads:
        scale = ref_grads[name].float().abs().max().clamp(min=1e-6)
        err = (got_grads[name].float() - ref_grads[name].float()).abs().max()
        assert err <= 0.03 * scale, (name, float(err), float(scale))


def test_packed_layout_batch_gives_same_result():
    model = _model("sdpa")
    batch = _batch(*UNEVEN)
    packed = pack_batch(batch)
    assert packed.layout == "packed" and packed.input_ids.shape == (1, batch.num_tokens())
    assert packed.position_ids[0, :9].tolist() == list(range(9))  # sequence 0: prompt 5 + completion 4
    assert packed.seq_lens.tolist() == batch.attention_mask.sum(1).tolist()
    assert packed.num_sequences == batch.num_sequences
    a = packed_sequence_logps(model, batch).logps
    b = packed_sequence_logps(model, packed).logps
    torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
    assert pack_batch(packed) is packed


def test_lora_gradients_match_padded():
    peft = pytest.importorskip("peft")
    model = _model("sdpa")
    model = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                       init_lora_weights=False))
    assert fast_path_unsupported(model) is None
    batch = _batch(*LISTS, kind="list")
    ref_logps, _ = _naive(model, batch)
    ref_grads = _grads(model, ref_logps.sum())
    out = prefix_shared_sequence_logps(model, batch)
    torch.testing.assert_close(out.logps, ref_logps.detach(), atol=1e-5, rtol=1e-5)
    got_grads = _grads(model, out.logps.sum())
    assert ref_grads and got_grads.keys() == ref_grads.keys()
    assert all("lora" in name for name in got_grads)
    for name in ref_grads:
        torch.testing.assert_close(got_grads[name], ref_grads[name], atol=1e-5, rtol=1e-4, msg=name)


def test_prefix_sharing_encodes_prompt_once():
    batch = _batch([100, 50], [[10, 20], [30, 40]])
    stats = packing_stats(batch)
    shared = packing_stats(batch, share_prefix=True)
    assert stats == {"padded_tokens": 4 * 120, "real_tokens": 400, "run_tokens": 400}
    assert shared["run_tokens"] == 400 - 150  # each prompt once instead of twice


def test_bins_first_fit_decreasing():
    """Lengths 6, 5, 4, 3, 2 (by size) into rows of 6: 6 | 5 | 4 + 2 | 3."""
    rows = _bins([5, 3, 4, 2, 6], capacity=6)
    assert rows == [[4], [0], [2, 3], [1]]


def test_qwen2_gqa_bias_and_gradient_checkpointing():
    """Another architecture (grouped-query attention, q/k/v biases, tied head) with activation
    checkpointing on: the fast path still equals the padded computation."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                         max_position_embeddings=128)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = Qwen2ForCausalLM(config).float()
    model.set_attn_implementation("sdpa")
    model.train()
    model.activation_checkpointing_enable()
    batch = _batch(*LISTS, kind="list")
    ref_logps, _ = _naive(model, batch)
    ref_grads = _grads(model, ref_logps.sum())
    for checkpointing in (True, False):  # dense masks with checkpointing, segment attention without
        if not checkpointing:
            model.activation_checkpointing_disable()
        out = prefix_shared_sequence_logps(model, batch)
        torch.testing.assert_close(out.logps, ref_logps.detach(), atol=1e-5, rtol=1e-5)
        got_grads = _grads(model, out.logps.sum())
        for name in ref_grads:
            torch.testing.assert_close(got_grads[name], ref_grads[name], atol=1e-5, rtol=1e-4, msg=name)


def test_sequence_logps_dispatches_to_fast_path():
    """``sequence_logps`` runs the fast path by default and the padded rows with ``packing=False``;
    both give the same results, token log-probs included."""
    from prefkit.models.logprobs import sequence_logps

    model = _model("sdpa")
    batch = _batch(*UNEVEN)
    fast = sequence_logps(model, batch, token_logps=True)
    slow = sequence_logps(model, batch, token_logps=True, packing=False)
    torch.testing.assert_close(fast.logps, slow.logps, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast.tokens, slow.tokens)
    torch.testing.assert_close(fast.token_logps, slow.token_logps, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast.mask, slow.mask)
    packed = sequence_logps(model, pack_batch(batch))  # the packed layout only runs on the fast path
    torch.testing.assert_close(packed.logps, slow.logps, atol=1e-5, rtol=1e-5)


def test_sliding_window_models_are_refused_and_run_padded():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from prefkit.models.logprobs import sequence_logps

    config = Qwen2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, use_sliding_window=True,
                         sliding_window=4, max_window_layers=1, max_position_embeddings=128)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = Qwen2ForCausalLM(config).float().eval()
    assert "sliding-window" in fast_path_unsupported(model)
    batch = _batch(*UNEVEN)
    torch.testing.assert_close(sequence_logps(model, batch).logps, _naive(model, batch)[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("share_prefix", [False, True])
@pytest.mark.parametrize("shape", [UNEVEN, LISTS], ids=["pairs-uneven", "lists-of-4"])
def test_bf16_autocast_matches_padded(share_prefix, shape):
    """fp32 weights under ``torch.autocast(bfloat16)`` (``train.mixed_precision=bf16``): RoPE returns
    fp32 q/k while v is bf16; segment attention casts them to the autocast dtype, as autocast does for
    the padded SDPA call. Same documented bf16 tolerance as above (log-probs 1e-2 absolute, gradients 3%
    of each tensor's largest entry)."""
    from prefkit.models.logprobs import sequence_logps

    model = _model("sdpa")
    batch = _batch(*shape, kind="pair" if len(shape[1][0]) == 2 else "list")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = sequence_logps(model, batch, packing=False).logps
    ref_grads = _grads(model, ref.sum())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = sequence_logps(model, batch, share_prefix=share_prefix).logps
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    torch.testing.assert_close(out, ref.detach(), atol=1e-2, rtol=0)
    got_grads = _grads(model, out.sum())
    for name in ref_grads:
        scale = ref_grads[name].float().abs().max().clamp(min=1e-6)
        err = (got_grads[name].float() - ref_grads[name].float()).abs().max()
        assert err <= 0.03 * scale, (name, float(err), float(scale))


def test_bf16_mixed_precision_trainer_runs(tmp_path):
    """A few DPO steps with ``train.mixed_precision=bf16`` on the fast path (packed + shared prompt):
    the run completes with finite losses."""
    import copy
    import math

    from prefkit.testing import tiny_pairs, tiny_tokenizer
    from prefkit.train.config import load_config
    from prefkit.train.metrics import read_metrics
    from prefkit.train.trainer import Trainer

    data = tiny_pairs(8)
    cfg = load_config(overrides=[
        "train.progress=false", "output.tensorboard=false", "output.plots=false", "output.save_model=false",
        "train.scheduler=constant", "loss.name=dpo", "train.max_steps=3", f"train.batch_size={len(data)}",
        "train.mixed_precision=bf16", f"output.dir={tmp_path}"])
    assert cfg.model.packing and cfg.model.share_prefix
    tok = copy.deepcopy(tiny_tokenizer())
    Trainer(cfg, tiny_llama(len(tok)), tok, data).train()
    losses = [row["loss"] for row in read_metrics(tmp_path) if "loss" in row]
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses), losses


SHORT_EQUAL = ([3, 3, 3, 2], [[5, 5], [5, 5], [5, 5], [6, 6]])  # the demo's shape: no padding at all
LONG_UNITS = ([40, 40, 30], [[20, 30], [20, 30], [9, 50]])  # shared units > SMALL_DOC_TOKENS: per piece


@pytest.mark.parametrize("share_prefix", [False, True])
@pytest.mark.parametrize("shape", [SHORT_EQUAL, LONG_UNITS], ids=["short-equal", "long-units"])
def test_batched_segments_match_padded(share_prefix, shape):
    """Equally shaped segments / short units run as one batched SDPA call per shape (short units as one
    masked block, long ones per piece); values and gradients still equal the padded computation."""
    model = _model("sdpa")
    batch = _batch(*shape)
    ref_logps, ref_tokens = _naive(model, batch)
    ref_grads = _grads(model, ref_logps.sum())
    out = packed_sequence_logps(model, batch, share_prefix=share_prefix, token_logps=True, attention="segments")
    torch.testing.assert_close(out.logps, ref_logps.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.token_logps, ref_tokens.detach(), atol=1e-5, rtol=1e-5)
    got_grads = _grads(model, out.logps.sum())
    for name in ref_grads:
        torch.testing.assert_close(got_grads[name], ref_grads[name], atol=1e-5, rtol=1e-4, msg=name)


def test_auto_runs_short_unshrinkable_batches_padded(monkeypatch):
    """The dispatcher ``sequence_logps``: short sequences that the fast path would shrink by < 20% run
    padded (decided up front, before any plan); a batch it shrinks more, or with longer sequences, runs
    packed. Same values. ``packed_sequence_logps`` itself always runs packed."""
    from prefkit.models import packing
    from prefkit.models.logprobs import sequence_logps

    model = _model("sdpa")
    calls = []
    original = packing._run_decoder
    monkeypatch.setattr(packing, "_run_decoder", lambda *a: calls.append(a[3]) or original(*a))
    short = _batch(*SHORT_EQUAL)  # 8 sequences of 7-8 tokens, no padding; prompts save 17%
    assert packing.padded_is_cheaper(short, share_prefix=True)
    out = sequence_logps(model, short, share_prefix=True)
    assert calls == []
    torch.testing.assert_close(out.logps, _naive(model, short)[0].detach(), atol=1e-5, rtol=1e-5)
    uneven = _batch(*UNEVEN)  # 54% padding
    assert not packing.padded_is_cheaper(uneven, share_prefix=True)
    sequence_logps(model, uneven, share_prefix=True)
    assert calls == ["segments"]
    forced = packed_sequence_logps(model, short, share_prefix=True)  # no dispatch here: packed
    assert calls == ["segments", "segments"]
    torch.testing.assert_close(forced.logps, out.logps, atol=1e-5, rtol=1e-5)


def test_padded_is_cheaper_without_prompt_lens_counts_shared_prefixes_exactly():
    """Without ``prompt_lens`` the shared prefixes are computed (no plan is built): the same decision
    as the plan's token count."""
    from dataclasses import replace

    from prefkit.models import packing

    for shape in (SHORT_EQUAL, UNEVEN, LISTS):
        batch = replace(_batch(*shape), prompt_lens=None)
        run = plan_for(batch, share_prefix=True).num_real_tokens
        assert run == packing_stats(batch, share_prefix=True)["run_tokens"]
        expected = run > (1 - packing.MIN_SAVING) * batch.input_ids.numel()
        assert packing.padded_is_cheaper(batch, share_prefix=True) == expected


def test_precomputed_plan_is_shared_between_passes(monkeypatch):
    """A plan computed once (``plan_for``) serves several passes over the same batch (a training step's
    reference and policy forwards) with the same results; none is built inside the engine then. A plan
    for another batch or ``share_prefix`` is refused; the dense backend plans its own rows."""
    from prefkit.models import packing
    from prefkit.models.logprobs import sequence_logps, sequence_plan

    model = _model("sdpa")
    batch = _batch(*UNEVEN)
    assert sequence_plan(model, _batch(*SHORT_EQUAL)) is None  # runs padded: nothing to plan
    assert sequence_plan(model, batch, packing=False) is None
    plan = sequence_plan(model, batch)
    assert plan.one_row and plan.share_prefix and plan.segments is not None
    expected = sequence_logps(model, batch, token_logps=True)
    built = []
    original = packing.plan_for
    monkeypatch.setattr(packing, "plan_for", lambda *a, **k: built.append(k) or original(*a, **k))
    with torch.no_grad():
        ref = sequence_logps(model, batch, token_logps=True, plan=plan)
    pol = sequence_logps(model, batch, token_logps=True, plan=plan)
    assert built == []
    for out in (ref, pol):
        for field in ("logps", "tokens", "token_logps", "mask"):
            torch.testing.assert_close(getattr(out, field), getattr(expected, field), atol=0, rtol=0)
    with pytest.raises(ValueError, match="another batch or share_prefix"):
        sequence_logps(model, batch, share_prefix=False, plan=plan)
    with pytest.raises(ValueError, match="another batch or share_prefix"):
        sequence_logps(model, _batch(*LISTS, kind="list"), plan=plan)
    dense = packed_sequence_logps(model, batch, share_prefix=True, attention="dense", plan=plan)
    assert [k["one_row"] for k in built] == [False]
    torch.testing.assert_close(dense.logps, expected.logps, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("one_row", [True, False], ids=["one-row", "bins"])
@pytest.mark.parametrize("share_prefix", [False, True])
def test_plan_layouts(one_row, share_prefix):
    """The one plan builder: every real token once, each scored token predicted by the hidden state of
    the token before it in its sequence (the prompt's last token for a completion's first); one row
    without padding, or first-fit-decreasing rows as wide as the longest packed unit (or
    ``max_row_tokens``), padded with ``pad_id``."""
    prompts, completions = [4, 2, 6], [[3, 5, 1], [2, 2, 2], [7, 1, 4]]
    batch = _batch(prompts, completions, kind="list")
    units = ([sum(c) + p for p, c in zip(prompts, completions, strict=True)] if share_prefix
             else [p + c for p, cs in zip(prompts, completions, strict=True) for c in cs])
    for capacity in (None, 30):
        plan = plan_for(batch, share_prefix=share_prefix, one_row=one_row, max_row_tokens=capacity, pad_id=-5)
        real = plan.doc_ids >= 0
        assert int(real.sum()) == plan.num_real_tokens == sum(units)
        assert (plan.input_ids[~real] == -5).all() and (plan.seg_ids[~real] == 0).all()
        if one_row:
            assert plan.input_ids.shape == (1, sum(units)) and plan.segments is not None
        else:
            rows = _bins(units, max(max(units), capacity or 0))
            assert plan.segments is None and plan.input_ids.shape == (len(rows), max(sum(units[i] for i in r) for r in rows))
        ids, pos, doc = plan.input_ids.flatten(), plan.position_ids.flatten(), plan.doc_ids.flatten()
        assert plan.target_ids.tolist() == batch.input_ids[plan.seq_index, plan.col_index].tolist()
        pred = plan.pred_index
        assert (pos[pred] == plan.col_index - 1).all()
        assert (ids[pred] == batch.input_ids[plan.seq_index, plan.col_index - 1]).all()
        unit_of = {n: d for d, n in zip(doc[pred].tolist(), plan.seq_index.tolist(), strict=True)}
        assert len(set(unit_of.values())) == (len(prompts) if share_prefix else batch.num_sequences)


def test_dense_rows_share_a_prompt_only_as_far_as_all_sequences_agree():
    """Three sequences per example whose prompts agree on different lengths (the second differs from
    the first at position 2, the third not at all): the shared prefix is the common part of all three,
    on the bin-packed (dense) rows as on the one row."""
    model = _model("sdpa")
    batch = _batch([5, 4], [[2, 3, 4], [3, 1, 2]], kind="list")
    batch.input_ids[2, 2] = (batch.input_ids[0, 2] + 1) % VOCAB  # example 0, sequence 1
    ref_logps, _ = _naive(model, batch)
    assert packing_stats(batch, share_prefix=True)["run_tokens"] == int(batch.attention_mask.sum()) - 2 * 2 - 2 * 4
    for attention in ("dense", "segments"):
        out = packed_sequence_logps(model, batch, share_prefix=True, attention=attention)
        torch.testing.assert_close(out.logps, ref_logps.detach(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("grid", [0, 64], ids=["per-shape-groups", "grid"])
@pytest.mark.parametrize("share_prefix", [False, True])
@pytest.mark.parametrize("shape", [UNEVEN, LISTS, SHORT_EQUAL], ids=["pairs-uneven", "lists-of-4", "short-equal"])
def test_grid_and_per_shape_groups_match_padded(grid, share_prefix, shape, monkeypatch):
    """Short units of several shapes run as one masked SDPA call on a padded grid
    (``GRID_UNIT_TOKENS``), or, with the grid off, one call per shape; both equal the padded
    computation. A single shape never takes the grid (it is one call already)."""
    from prefkit.models import attention

    monkeypatch.setattr(attention, "GRID_UNIT_TOKENS", grid)
    model = _model("sdpa")
    batch = _batch(*shape)
    ref_logps, ref_tokens = _naive(model, batch)
    ref_grads = _grads(model, ref_logps.sum())
    seen = []
    original = attention._grid
    monkeypatch.setattr(attention, "_grid", lambda *a: seen.append(original(*a)[0] is not None) or original(*a))
    out = packed_sequence_logps(model, batch, share_prefix=share_prefix, token_logps=True, attention="segments")
    torch.testing.assert_close(out.logps, ref_logps.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.token_logps, ref_tokens.detach(), atol=1e-5, rtol=1e-5)
    got_grads = _grads(model, out.logps.sum())
    for name in ref_grads:
        torch.testing.assert_close(got_grads[name], ref_grads[name], atol=1e-5, rtol=1e-4, msg=name)
    single_shape = shape is SHORT_EQUAL and share_prefix is False
    assert seen == ([] if not grid else [False] if single_shape else [True]), seen
