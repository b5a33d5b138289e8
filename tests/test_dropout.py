"""Dropout is off by default during training (as TRL's ``disable_dropout=True``) for the policy, the
reward model's backbone and the online policy (they all train through the one Trainer), and kept with
``model.dropout=true``; LoRA's and a reward head's own dropout stay as configured."""

from __future__ import annotations

import torch
from torch import nn

from prefkit.models.load import disable_dropout
from prefkit.models.reward import RewardModel, RewardModelConfig
from prefkit.testing import tiny_llama, tiny_pairs, tiny_tokenizer


def _bert(vocab: int):
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    return BertModel(BertConfig(vocab_size=vocab, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=32, hidden_dropout_prob=0.3, attention_probs_dropout_prob=0.3),
                     add_pooling_layer=False)


def _noisy_llama(vocab: int):
    model = tiny_llama(vocab, seed=0)
    for layer in model.model.layers:
        layer.self_attn.attention_dropout = 0.3  # a float Llama's attention reads at forward time
    model.model.dropout_layer = nn.Dropout(0.3)  # a stray nn.Dropout, to count
    return model


def _twice(fn) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        return fn(), fn()


def test_disable_dropout_keeps_lora_and_head_dropout():
    tok = tiny_tokenizer()
    model = RewardModel.from_backbone(_bert(len(tok)), RewardModelConfig(pooling="mean", dropout=0.2), tok,
                                      lora_r=2, lora_dropout=0.1)
    assert disable_dropout(model) == 4  # embeddings, attention probabilities, attention output, MLP output
    backbone = [m.p for n, m in model.backbone.named_modules() if isinstance(m, nn.Dropout) and "lora" not in n]
    assert backbone and all(p == 0.0 for p in backbone)
    assert model.head.dropout.p == 0.2
    assert {m.p for n, m in model.named_modules() if "lora_dropout" in n and isinstance(m, nn.Dropout)} == {0.1}
    llama = _noisy_llama(len(tok))
    assert disable_dropout(llama) == 3  # two layers' attention_dropout and the stray nn.Dropout
    assert all(layer.self_attn.attention_dropout == 0.0 for layer in llama.model.layers)
    assert model.backbone.config.hidden_dropout_prob == 0.3  # the config is left as loaded (and saved)


def _reward_run(tmp_path, keep: bool) -> RewardModel:
    from prefkit.train import load_reward_config, train_reward_model

    tok = tiny_tokenizer()
    model = RewardModel.from_backbone(_bert(len(tok)), RewardModelConfig(pooling="mean"), tok)
    cfg = load_reward_config(overrides=[
        "loss.name=bradley_terry", "train.max_steps=1", "train.batch_size=4", f"model.dropout={str(keep).lower()}",
        f"output.dir={tmp_path / str(keep)}", "train.progress=false", "output.tensorboard=false",
        "output.plots=false", "output.save_model=false"])
    train_reward_model(cfg, model=model, train_records=tiny_pairs(4))
    return model


def test_reward_training_turns_dropout_off_unless_kept(tmp_path):
    ids = torch.randint(3, 50, (4, 9), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    for keep in (False, True):
        model = _reward_run(tmp_path, keep).train()
        a, b = _twice(lambda m=model: m(ids, mask).rewards)
        assert torch.equal(a, b) != keep, keep


def test_policy_training_turns_dropout_off_unless_kept(tmp_path):
    from prefkit.train import Trainer, load_config

    tok = tiny_tokenizer()
    ids = torch.randint(3, len(tok), (2, 7), generator=torch.Generator().manual_seed(0))
    for keep in (False, True):
        model = _noisy_llama(len(tok))
        cfg = load_config(overrides=["loss.name=dpo", "train.max_steps=1", "train.batch_size=2",
                                     f"model.dropout={str(keep).lower()}", f"output.dir={tmp_path / str(keep)}",
                                     "train.progress=false", "output.tensorboard=false", "output.plots=false",
                                     "output.save_model=false"], check_files=False)
        Trainer(cfg, model, tok, tiny_pairs(4))
        model.train()
        a, b = _twice(lambda m=model: m(ids).logits)
        assert torch.equal(a, b) != keep, keep
