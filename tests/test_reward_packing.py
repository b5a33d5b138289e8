"""The reward model's padding-free fast path: packed (and prompt-shared) pooled features equal the
padded computation (fp32: values within 1e-5, gradients within 1e-4 of each tensor's largest entry),
for every pooling and group size; non-BERT encoders and left-padded rows run padded."""

from __future__ import annotations

import pytest
import torch

from prefkit.models import packing
from prefkit.models.reward import RewardModel, RewardModelConfig, pooling_batch
from prefkit.testing import tiny_llama

VOCAB = 97


def _rows(prompt_lens: list[int], completion_lens: list[list[int]], seed: int = 0):
    """Right-padded (N, T) ids and mask; rows g * B + b = prompt b + completion g of example b."""
    gen = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(3, VOCAB, (p,), generator=gen) for p in prompt_lens]
    seqs = [torch.cat([prompts[b], torch.randint(3, VOCAB, (completion_lens[b][g],), generator=gen)])
            for g in range(len(completion_lens[0])) for b in range(len(prompt_lens))]
    width = max(len(s) for s in seqs)
    ids = torch.zeros(len(seqs), width, dtype=torch.long)
    mask = torch.zeros(len(seqs), width, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)], mask[i, :len(s)] = s, 1
    return ids, mask


def _model(pooling: str, layers: int = 2) -> RewardModel:
    backbone = tiny_llama(VOCAB, hidden=32, layers=layers, heads=4, seed=0).model  # the bare LlamaModel
    backbone.set_attn_implementation("sdpa")
    return RewardModel.from_backbone(backbone, RewardModelConfig(pooling=pooling))  # type: ignore[arg-type]


PAIRS = ([5, 1, 9], [[4, 1], [1, 7], [12, 3]])  # one-token prompt and completions, uneven lengths
LISTS = ([3, 6], [[2, 5, 1, 8], [4, 4, 9, 1]])  # lists of 4
SINGLE = ([4, 9, 2, 7], [[3], [8], [1], [6]])  # group size 1 (inference, ratings)


def _packed_runs(monkeypatch) -> list[dict]:
    """The ``share_prefix`` of every packed run, recorded where :func:`packing.packed_hidden` plans it
    (``packing.plan_for``, looked up in the module at each call however callers import ``packed_hidden``)."""
    calls: list[dict] = []
    original = packing.plan_for
    monkeypatch.setattr(packing, "plan_for",
                        lambda *a, **k: calls.append({"share_prefix": k["share_prefix"]}) or original(*a, **k))
    return calls


@pytest.mark.parametrize("pooling", ["last", "mean", "cls"])
@pytest.mark.parametrize("shape", [PAIRS, LISTS, SINGLE], ids=["pairs", "lists-of-4", "single"])
def test_packed_features_match_padded(pooling, shape, monkeypatch):
    monkeypatch.setattr(packing, "SHORT_SEQUENCE_TOKENS", 0)  # no short-batch dispatch: always packed
    model = _model(pooling)
    ids, mask = _rows(*shape)
    group = len(shape[1][0])
    ref = model.features(ids, mask, group_size=group, packing=False)
    ref.square().sum().backward()
    ref_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    calls = _packed_runs(monkeypatch)
    got = model.features(ids, mask, group_size=group)
    assert calls == [{"share_prefix": pooling == "last" and group > 1}]
    torch.testing.assert_close(got, ref.detach(), atol=1e-5, rtol=1e-5)
    got.square().sum().backward()
    for name, grad in ref_grads.items():  # fp32 summation order differs (a shared prompt sums once)
        diff = (dict(model.named_parameters())[name].grad - grad).abs().max()
        assert diff <= 1e-4 * grad.abs().max() + 1e-7, (name, float(diff), float(grad.abs().max()))


def test_shared_prompt_is_encoded_once():
    """``"last"`` pooling over pairs shares each prompt: fewer tokens run than sequences hold."""
    model = _model("last")
    ids, mask = _rows([20, 20], [[5, 6], [7, 3]])
    batch = pooling_batch(ids, mask, 2, "last")
    _, plan = packing.packed_hidden(model.backbone, batch, share_prefix=True)
    assert plan.num_real_tokens == int(batch.attention_mask.sum()) - 2 * 20  # each 20-token prompt once, not twice


def test_encoders_and_left_padding_run_padded(monkeypatch):
    from transformers import RobertaConfig, RobertaModel

    roberta = RobertaModel(RobertaConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=1,
                                         num_attention_heads=2, intermediate_size=32))
    model = RewardModel.from_backbone(roberta)  # positions from padding_idx + 1: not a packable encoder
    assert "neither a causal decoder nor a packable encoder" in model.fast_path_unsupported()
    monkeypatch.setattr(packing, "_run_decoder", lambda *a, **k: pytest.fail("encoder was packed"))
    ids, mask = _rows(*SINGLE)
    model.features(ids, mask)  # padded, no call to the packed engine
    llama = _model("last")
    left = torch.flip(mask, [1])  # left padding: the fast path steps aside
    llama.features(torch.flip(ids, [1]), left)


def test_reward_objective_trains_with_packing(tmp_path, monkeypatch):
    """A Bradley-Terry run through the trainer gives the same losses packed (prompts shared) and padded,
    and the loss falls."""
    from prefkit.testing import tiny_pairs, tiny_tokenizer
    from prefkit.train import load_reward_config, train_reward_model
    from prefkit.train.metrics import read_metrics

    monkeypatch.setattr(packing, "SHORT_SEQUENCE_TOKENS", 0)
    calls = _packed_runs(monkeypatch)
    losses = {}
    for flag in ("true", "false"):
        tok = tiny_tokenizer()
        torch.manual_seed(0)  # the head's initialisation
        model = RewardModel.from_backbone(tiny_llama(len(tok), seed=0), tokenizer=tok)
        cfg = load_reward_config(overrides=[
            "loss.name=bradley_terry", "train.max_steps=3", "train.batch_size=4", "train.lr=1e-2",
            f"model.packing={flag}", f"output.dir={tmp_path / flag}", "train.progress=false",
            "output.tensorboard=false", "output.plots=false", "output.save_model=false"])
        train_reward_model(cfg, model=model, train_records=tiny_pairs(8))
        losses[flag] = [row["loss"] for row in read_metrics(tmp_path / flag) if "loss" in row]
    assert len(losses["true"]) == 3 and losses["true"][-1] < losses["true"][0]
    assert losses["true"] == pytest.approx(losses["false"], abs=1e-5)
    assert calls and all(k == {"share_prefix": True} for k in calls)  # the packed run shared its prompts


@pytest.mark.parametrize("variant", ["lora", "checkpointing"])
def test_lora_and_checkpointing_match_padded(variant, monkeypatch):
    """LoRA adapters (peft) and activation checkpointing (dense-mask rows) on the fast path."""
    monkeypatch.setattr(packing, "SHORT_SEQUENCE_TOKENS", 0)
    backbone = tiny_llama(VOCAB, hidden=32, layers=2, heads=4, seed=0).model
    backbone.set_attn_implementation("sdpa")
    config = RewardModelConfig(pooling="last")
    torch.manual_seed(0)
    model = RewardModel.from_backbone(backbone, config, lora_r=4 if variant == "lora" else 0)
    if variant == "checkpointing":
        model.gradient_checkpointing_enable()
    model.train()
    ids, mask = _rows(*PAIRS)
    ref = model.features(ids, mask, group_size=2, packing=False)
    ref.square().sum().backward()
    trained = {n: p for n, p in model.named_parameters() if p.grad is not None}
    ref_grads = {n: p.grad.clone() for n, p in trained.items()}
    model.zero_grad()
    kinds = []
    original = packing._run_decoder
    monkeypatch.setattr(packing, "_run_decoder", lambda *a: kinds.append(a[3]) or original(*a))
    got = model.features(ids, mask, group_size=2)
    assert kinds == ["dense" if variant == "checkpointing" else "segments"]
    torch.testing.assert_close(got, ref.detach(), atol=1e-5, rtol=1e-5)
    got.square().sum().backward()
    assert ref_grads and (variant != "lora" or all("lora" in n or "head" in n for n in ref_grads))
    for name, grad in ref_grads.items():
        diff = (trained[name].grad - grad).abs().max()
        assert diff <= 1e-4 * grad.abs().max() + 1e-7, (name, float(diff))
