"""Reward-model wrapper: pooling, token ids, save/load, and training every feedback form through the
one trainer (``prefkit.train.Trainer`` with ``RewardObjective``) on tiny in-process backbones."""

from __future__ import annotations

import math

import pytest
import torch

from prefkit.data.records import Message, Pair, Rating
from prefkit.errors import ConfigError
from prefkit.losses import LOSSES
from prefkit.models.heads import GPMHead, RewardModelConfig, TieHead
from prefkit.models.reward import RewardModel
from prefkit.models.reward_inputs import (
    RewardTokens,
    as_text_record,
    encode_for_reward,
    last_index,
    pool,
    render_text,
)
from prefkit.testing import tiny_llama, tiny_pairs, tiny_rankings, tiny_tokenizer
from prefkit.train import load_reward_config, train_reward_model

QUIET = ["train.progress=false", "output.tensorboard=false", "output.plots=false", "output.save_model=false",
         "output.overwrite=true"]


# -- pooling ---------------------------------------------------------------------------------------------


def test_pooling_golden():
    """hidden[b, t] = [10b + t, 1]; mask row 0 = [1, 1, 0], row 1 = [0, 1, 1] (left padded).
    last: t = 1 for row 0, t = 2 for row 1 -> [1, 12]; mean over real tokens: (0 + 1)/2 = 0.5 and
    (11 + 12)/2 = 11.5; cls: t = 0 -> [0, 10]."""
    t = torch.arange(3.0)
    hidden = torch.stack([torch.stack([10 * b + t, torch.ones(3)], -1) for b in range(2)])  # (2, 3, 2)
    mask = torch.tensor([[1, 1, 0], [0, 1, 1]])
    assert last_index(mask).tolist() == [1, 2]
    assert pool(hidden, mask, "last")[:, 0].tolist() == [1.0, 12.0]
    assert pool(hidden, mask, "mean")[:, 0].tolist() == [0.5, 11.5]
    assert pool(hidden, mask, "cls")[:, 0].tolist() == [0.0, 10.0]
    with pytest.raises(ConfigError, match="did you mean 'mean'"):
        pool(hidden, mask, "maen")  # type: ignore[arg-type]


def test_pooler_pooling_is_the_backbones_pooler_on_the_first_token(tmp_path):
    """``"pooler"``: BERT's own pooler, ``tanh(W h_[CLS] + b)`` (what ``pooler_output`` and
    ``AutoModelForSequenceClassification`` use), packed or padded, and it survives save / load; a backbone
    without a pooling layer is refused in one line."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    bert = BertModel(BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=32))
    tok = tiny_tokenizer()
    model = RewardModel.from_backbone(bert, RewardModelConfig(pooling="pooler"), tok).eval()
    ids = torch.tensor([[2, 5, 7, 9, 11, 3], [2, 6, 8, 3, 0, 0]])
    mask = (ids != 0).long()
    with torch.no_grad():
        out = bert(input_ids=ids, attention_mask=mask)
        by_hand = torch.tanh(out.last_hidden_state[:, 0] @ bert.pooler.dense.weight.T + bert.pooler.dense.bias)
        torch.testing.assert_close(out.pooler_output, by_hand)
        for packed in (False, True):
            torch.testing.assert_close(model.features(ids, mask, packing=packed), by_hand, atol=1e-5, rtol=1e-5)
        model.save(tmp_path / "rm")
        loaded = RewardModel.load(tmp_path / "rm")
        assert loaded.pooling == "pooler"
        torch.testing.assert_close(loaded(ids, mask).rewards, model(ids, mask).rewards)
        lora = RewardModel.from_backbone(bert, RewardModelConfig(pooling="pooler"), tok, lora_r=2).eval()
        torch.testing.assert_close(lora.features(ids, mask, packing=False),
                                   lora.backbone(input_ids=ids, attention_mask=mask).pooler_output)
    with pytest.raises(ConfigError, match="has none: use reward.pooling=cls or mean"):
        RewardModel.from_backbone(tiny_llama(len(tok)), RewardModelConfig(pooling="pooler"), tok)


def test_default_pooling_decoder_last_encoder_pooler_or_mean():
    from transformers import BertConfig, BertModel

    tok = tiny_tokenizer()
    assert RewardModel.from_backbone(tiny_llama(len(tok)), tokenizer=tok).pooling == "last"
    config = BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    assert RewardModel.from_backbone(BertModel(config)).pooling == "pooler"
    assert RewardModel.from_backbone(BertModel(config, add_pooling_layer=False)).pooling == "mean"


# -- token ids -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bert_tokenizer():
    """A WordPiece (BERT) tokenizer over a 15-word vocabulary, built in-process."""
    from transformers import BertTokenizer

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "dog", "sat", ":", "human",
             "assistant", "yes", "no", "."]
    return BertTokenizer(vocab={w: i for i, w in enumerate(words)})


def test_left_truncation_keeps_special_tokens_and_the_end(bert_tokenizer):
    """BERT wraps in [CLS] … [SEP]; a left cut to 6 tokens keeps [CLS], the last 4 words, [SEP]."""
    tokens = RewardTokens(bert_tokenizer, max_length=6, truncation_side="left")
    assert tokens.prefix == [2] and tokens.suffix == [3]
    ids = tokens.pair_ids("the cat sat the dog", " sat yes")
    words = bert_tokenizer.convert_ids_to_tokens(ids)
    assert words == ["[CLS]", "the", "dog", "sat", "yes", "[SEP]"]
    right = RewardTokens(bert_tokenizer, max_length=6, truncation_side="right").pair_ids("the cat sat the dog", " yes")
    assert bert_tokenizer.convert_ids_to_tokens(right) == ["[CLS]", "the", "cat", "sat", "the", "[SEP]"]


def test_bos_tokenizer_gets_one_bos():
    tok = tiny_tokenizer()
    tokens = RewardTokens(tok, max_length=8)
    ids = tokens.pair_ids("Question: a b c d e f g h i j\nAnswer:", " Yes.")
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1 and len(ids) == 8
    assert tok.decode(ids[1:]).endswith("Yes.")
    # A chat template that writes BOS itself: still exactly one.
    chat = Pair(prompt=(Message("user", "Hi"),), chosen=(Message("assistant", "Yes."),),
                rejected=(Message("assistant", "No."),))
    for row in RewardTokens(tok, max_length=64).record_ids(chat):
        assert row.count(tok.bos_token_id) == 1


def test_chat_records_render_as_transcript_without_template(bert_tokenizer):
    chat = Pair(prompt=(Message("user", "the cat"),), chosen=(Message("assistant", "yes"),),
                rejected=(Message("assistant", "no"),))
    text = as_text_record(chat, bert_tokenizer)
    assert text.prompt == "\n\nHuman: the cat" and text.chosen == "\n\nAssistant: yes"
    assert render_text(chat.prompt, chat.chosen) == "\n\nHuman: the cat\n\nAssistant: yes"
    batch = encode_for_reward([chat], RewardTokens(bert_tokenizer, max_length=32))
    assert batch.kind == "pair" and batch.input_ids.shape[0] == 2 and batch.ties.tolist() == [False]
    words = bert_tokenizer.convert_ids_to_tokens(batch.input_ids[0][batch.attention_mask[0].bool()].tolist())
    assert words == ["[CLS]", "human", ":", "the", "cat", "assistant", ":", "yes", "[SEP]"]


# -- training through the trainer -------------------------------------------------------------------


def _train(tmp_path, records, overrides, *, head_cfg=None, eval_records=None, steps=25):
    tok = tiny_tokenizer()
    config = load_reward_config(None, [f"output.dir={tmp_path}", f"train.max_steps={steps}", "train.lr=3e-3",
                                       "train.batch_size=8", *QUIET, *overrides])
    model = RewardModel.from_backbone(tiny_llama(len(tok)), head_cfg or config.reward, tok)
    before = {k: v.clone() for k, v in model.head.state_dict().items()}
    model, summary = train_reward_model(config, train_records=records, eval_records=eval_records, model=model)
    return model, summary, before


def test_bradley_terry_learns_tiny_pairs_and_roundtrips(tmp_path):
    pairs = tiny_pairs(48)
    model, summary, _ = _train(tmp_path, pairs[:40], [], eval_records=pairs[40:])
    assert summary["eval/rewards/accuracies"] >= 0.85
    assert summary["loss"] < 0.5
    model.save(tmp_path / "saved")
    again = RewardModel.load(tmp_path / "saved")
    assert torch.allclose(again.score([p.prompt for p in pairs[40:]], [p.chosen for p in pairs[40:]]),
                          model.score([p.prompt for p in pairs[40:]], [p.chosen for p in pairs[40:]]), atol=1e-5)


def test_gpm_trains_on_pairs(tmp_path):
    pairs = tiny_pairs(48)
    model, summary, _ = _train(tmp_path, pairs[:40], ["reward.head=gpm", "reward.gpm_dim=4"],
                               eval_records=pairs[40:])
    assert isinstance(model.head, GPMHead)
    assert summary["eval/rewards/accuracies"] >= 0.85
    with pytest.raises(ConfigError, match="GPM"):
        model.score(["q"], ["a"])
    best, scores = model.best_of(pairs[40].prompt, [pairs[40].rejected, pairs[40].chosen])
    assert best == 1 and 0.0 <= float(scores.min()) <= float(scores.max()) <= 1.0


def test_tie_head_learns_theta_with_rao_kupper(tmp_path):
    pairs = tiny_pairs(48)
    records = [Pair(prompt=p.prompt, chosen=p.chosen, rejected=p.chosen + " " if i % 3 == 0 else p.rejected,
                    tie=i % 3 == 0) for i, p in enumerate(pairs)]
    model, summary, before = _train(tmp_path, records, ["reward.head=tie", "loss.name=rao_kupper"])
    assert isinstance(model.head, TieHead)
    assert not torch.equal(before["tie_param"], model.head.tie_param.detach())
    # a third of the pairs are ties of (nearly) identical responses: P(tie | equal) moves toward that share
    assert model.head.tie_probability(0.0).item() > 0.25
    assert math.isfinite(summary["loss"])


def test_plackett_luce_on_rankings(tmp_path):
    lists = tiny_rankings(16, k=3)
    _, summary, _ = _train(tmp_path, lists, ["loss.name=plackett_luce"], steps=15)
    assert summary["loss"] < 3 * math.log(3) / 2  # below the uniform-score NLL log 3! ≈ 1.79


def test_multi_attribute_regression_and_soft_labels(tmp_path):
    pairs = tiny_pairs(32)
    ratings = []
    for p in pairs:
        ratings.append(Rating(prompt=p.prompt, response=p.chosen, attributes={"helpful": 1.0, "short": 0.0}))
        ratings.append(Rating(prompt=p.prompt, response=p.rejected, attributes={"helpful": -1.0}))
    model, summary, _ = _train(tmp_path, ratings, ["reward.head=multi", "reward.attributes=[helpful, short]",
                                                   "loss.name=rm_multi_regression"], steps=30)
    assert summary["loss"] < 0.3
    out = model.outputs_for([pairs[0].prompt, pairs[0].prompt], [pairs[0].chosen, pairs[0].rejected])
    assert out.attributes is not None and out.attributes[0, 0] > out.attributes[1, 0]
    soft = [Pair(prompt=p.prompt, chosen=p.chosen, rejected=p.rejected, strength=0.9) for p in pairs]
    _, summary, _ = _train(tmp_path / "soft", soft, ["loss.name=soft_bradley_terry"], steps=20)
    assert summary["rewards/accuracies"] >= 0.9


def test_lora_backbone_trains_and_saves_merged(tmp_path):
    pairs = tiny_pairs(24)
    tok = tiny_tokenizer()
    model = RewardModel.from_backbone(tiny_llama(len(tok)), RewardModelConfig(), tok, lora_r=4)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("lora" in n for n in trainable) and any(n.startswith("head.") for n in trainable)
    assert not any("embed_tokens" in n for n in trainable)
    config = load_reward_config(None, [f"output.dir={tmp_path}", "train.max_steps=3", "train.batch_size=8", *QUIET])
    model, _ = train_reward_model(config, train_records=pairs, model=model)
    model.save(tmp_path / "merged")
    again = RewardModel.load(tmp_path / "merged")
    args = ([pairs[0].prompt], [pairs[0].chosen])
    assert torch.allclose(again.score(*args), model.score(*args), atol=1e-4)


def test_config_checks():
    with pytest.raises(ConfigError, match="did you mean 'reward.pooling'"):
        load_reward_config(None, ["reward.poling=mean"])
    with pytest.raises(ConfigError, match=r"tie loss \(davidson, rao_kupper\)"):
        load_reward_config(None, ["reward.head=tie"])
    with pytest.raises(ConfigError, match="learns 'nu'"):
        load_reward_config(None, ["reward.head=tie", "reward.tie_model=davidson", "loss.name=rao_kupper"])
    with pytest.raises(ConfigError, match="now lora.r"):
        load_reward_config(None, ["reward.lora_r=4"])
    with pytest.raises(ConfigError, match="policy loss"):
        load_reward_config(None, ["loss.name=dpo"])
    with pytest.raises(ConfigError, match="needs attributes"):
        RewardModelConfig(head="multi")


def test_gradient_checkpointing_and_resume(tmp_path):
    """model.gradient_checkpointing reaches the backbone; a run resumes from its step-2 checkpoint."""
    from prefkit.train.checkpoint import list_checkpoints

    pairs = tiny_pairs(16)
    tok = tiny_tokenizer()
    config = load_reward_config(None, [f"output.dir={tmp_path}", "train.batch_size=8", "train.save_every=2",
                                       "train.keep_last=3", "train.max_steps=4", "model.gradient_checkpointing=true",
                                       *QUIET])
    model = RewardModel.from_backbone(tiny_llama(len(tok)), config.reward, tok)
    train_reward_model(config, train_records=pairs, model=model)
    assert model.backbone.is_activation_checkpointing
    step2 = [c for c in list_checkpoints(tmp_path) if c.name.endswith("2")][0]
    fresh = RewardModel.from_backbone(tiny_llama(len(tok)), config.reward, tok)
    _, summary = train_reward_model(config, train_records=pairs, model=fresh, resume=step2)
    assert summary["step"] == 4
    assert torch.allclose(fresh.head.score.weight, model.head.score.weight, atol=1e-6)


def test_training_log_states_the_reward_models_truncation(tmp_path, capsys):
    """The encoding line the trainer logs counts the cut to ``reward.max_length`` (it used to say
    "0 truncated" while the reward model cut later)."""
    tok = tiny_tokenizer()
    pairs = tiny_pairs(8)
    config = load_reward_config(None, [f"output.dir={tmp_path}", "train.max_steps=1", "train.batch_size=4",
                                       "reward.max_length=6", *QUIET])
    model = RewardModel.from_backbone(tiny_llama(len(tok)), config.reward, tok)
    tokens = model.tokens()
    expected = sum(any(len(row) == 6 and len(tokens.encoder.render(r)[0]) + max(map(len, tokens.encoder.render(r)[1]))
                       + len(tokens.prefix) + len(tokens.suffix) > 6 for row in tokens.record_ids(r)) for r in pairs)
    assert expected > 0
    train_reward_model(config, train_records=pairs, model=model)
    line = next(x for x in capsys.readouterr().err.splitlines() if "train: encoded" in x)
    assert f"{expected} truncated" in line, line


REWARD_LOSSES = sorted(n for n, spec in LOSSES.items() if spec.kind.startswith("reward_"))


@pytest.mark.parametrize("name", REWARD_LOSSES)
def test_every_reward_loss_trains(name, tmp_path):
    """Every reward-model loss of the registry trains a head through the one trainer: its loss falls.
    (``tests/test_train_losses.py`` does the same for the policy losses.)"""
    from prefkit.train.metrics import read_metrics

    spec = LOSSES[name]
    pairs = tiny_pairs(16)
    overrides = [f"loss.name={name}"]
    if spec.record_kind == "pair":
        records = [Pair(prompt=p.prompt, chosen=p.chosen, rejected=p.rejected, strength=0.9) for p in pairs]
        if spec.head_params:
            overrides += ["reward.head=tie", f"reward.tie_model={name}"]
    elif spec.record_kind == "ranking":
        records = tiny_rankings(16, k=3)
    else:  # ratings: the chosen response scores 1, the rejected -1
        records = [Rating(prompt=p.prompt, response=r, score=s, attributes={"helpful": s})
                   for p in pairs for r, s in ((p.chosen, 1.0), (p.rejected, -1.0))]
        if "multi" in name:
            overrides += ["reward.head=multi", "reward.attributes=[helpful]"]
    _train(tmp_path, records, overrides, steps=8)
    losses = [row["loss"] for row in read_metrics(tmp_path) if "loss" in row]
    assert len(losses) == 8 and all(math.isfinite(x) for x in losses), losses
    assert losses[-1] < losses[0], f"{name}: loss did not go down: {losses}"
