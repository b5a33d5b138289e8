"""Pluralistic reward heads (PAL, VPL, mixture, MaxMin) and the frozen-backbone feature cache, in a
synthetic feature world where the user-blind ceiling is known exactly.

The world: T traits, each with S statements expressing it ("pro") and S not ("con"). The backbone is a
BERT with no transformer layers whose word embedding of statement (t, stance, j) is
``3 · onehot(2t + stance) + 0.3 · noise`` and zero for every other token, so a sequence's mean-pooled
feature tells its trait and stance (and which statement). Group 0 prefers "pro" on every trait; group 1
prefers "con" on the first ``DISAGREE`` traits and "pro" on the rest. With 6 : 4 users, any user-blind
predictor is capped by the majority per trait: ceiling = Σ_trait max(#pro chosen, #con chosen) / N,
computed from the test pairs. Personal heads can be right on every pair.
"""

from __future__ import annotations

import dataclasses
import random

import pytest
import torch

from prefkit.data.records import Pair
from prefkit.errors import ConfigError, DataError
from prefkit.models.heads import RewardModelConfig, RewardOutput
from prefkit.models.personal import MixtureHead, PALHead
from prefkit.models.reward import RewardModel
from prefkit.train import load_reward_config
from prefkit.train.personal import fit_maxmin
from prefkit.train.run import train_reward_model

T, S, DISAGREE = 6, 3, 4
GROUP_SIZES = (6, 4)
PROMPT = "which is closer "
QUIET = ["train.progress=false", "output.tensorboard=false", "output.plots=false", "output.save_model=false",
         "output.overwrite=true", "train.log_every=1000"]


def word(t: int, stance: int, j: int) -> str:
    return f"w{t}{'pc'[1 - stance]}{j}"  # "w3p1": trait 3, pro, statement 1


WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "which", "is", "closer",
         *(word(t, s, j) for t in range(T) for s in (1, 0) for j in range(S))]


def backbone_and_tokenizer(seed: int = 0):
    from transformers import BertConfig, BertModel, BertTokenizer

    hidden = 2 * T + 4
    config = BertConfig(vocab_size=len(WORDS), hidden_size=hidden, num_hidden_layers=0, num_attention_heads=1,
                        intermediate_size=8, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(seed)
    model = BertModel(config).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        emb = torch.zeros(len(WORDS), hidden)
        for t in range(T):
            for s in (0, 1):
                for j in range(S):
                    row = WORDS.index(word(t, s, j))
                    emb[row, 2 * t + s] = 3.0
                    emb[row] += 0.3 * torch.randn(hidden, generator=gen)
        model.embeddings.word_embeddings.weight.copy_(emb)
        model.embeddings.position_embeddings.weight.zero_()
        model.embeddings.token_type_embeddings.weight.zero_()
    return model, BertTokenizer(vocab={w: i for i, w in enumerate(WORDS)})


def group_prefers_pro(group: int, trait: int) -> bool:
    return group == 0 or trait >= DISAGREE


def make_pairs(user: str, group: int, n: int, rng: random.Random) -> list[Pair]:
    out = []
    for _ in range(n):
        t = rng.randrange(T)
        pro, con = word(t, 1, rng.randrange(S)), word(t, 0, rng.randrange(S))
        chosen, rejected = (pro, con) if group_prefers_pro(group, t) else (con, pro)
        out.append(Pair(prompt=PROMPT, chosen=chosen, rejected=rejected, user_id=user,
                        metadata={"group": group, "trait": t, "chosen_expresses": chosen == pro}))
    return out


def world(seed: int = 0) -> dict[str, list[Pair]]:
    """Seen users: 40 training + 24 test pairs each; unseen users (2 per group): 12 shots + 24 test pairs."""
    rng = random.Random(seed)
    data: dict[str, list[Pair]] = {"train": [], "test": [], "shots": [], "unseen_test": []}
    for g, size in enumerate(GROUP_SIZES):
        for i in range(size):
            user = f"u{g}{i:02d}"
            data["train"] += make_pairs(user, g, 40, rng)
            data["test"] += make_pairs(user, g, 24, rng)
        for i in range(2):
            user = f"new{g}{i}"
            data["shots"] += make_pairs(user, g, 12, rng)
            data["unseen_test"] += make_pairs(user, g, 24, rng)
    rng.shuffle(data["train"])
    return data


def blind_ceiling(records: list[Pair]) -> float:
    """Σ_trait max(#pro chosen, #con chosen) / N: the best any user-blind predictor can do."""
    counts: dict[int, list[int]] = {}
    for r in records:
        counts.setdefault(r.metadata["trait"], [0, 0])[int(r.metadata["chosen_expresses"])] += 1
    return sum(max(c) for c in counts.values()) / len(records)


def accuracy(model: RewardModel, records: list[Pair]) -> float:
    return float((model.pair_logits(records) > 0).float().mean())


def new_model(head: str, **options) -> RewardModel:
    backbone, tokenizer = backbone_and_tokenizer()
    config = RewardModelConfig(head=head, pooling="mean", max_length=16, frozen_backbone=True, components=2,
                               user_dim=4, head_hidden=32, **options)
    return RewardModel.from_backbone(backbone, config, tokenizer)


def train(head: str, data, tmp_path, *, epochs: int = 15, **options) -> RewardModel:
    users = tuple(sorted({r.user_id for r in data["train"]}))
    model = new_model(head, users=users if head in ("pal", "vpl", "maxmin") else (), **options)
    config = load_reward_config(overrides=[*QUIET, f"output.dir={tmp_path / head}", "train.batch_size=20",
                                           f"train.epochs={epochs}", "train.lr=0.03", "train.seed=0"])
    config = dataclasses.replace(config, reward=model.config)
    torch.manual_seed(0)
    if head == "maxmin":
        return fit_maxmin(config, data["train"], model=model, max_iters=4)[0]
    return train_reward_model(config, train_records=data["train"], model=model)[0]


@pytest.fixture(scope="module")
def data():
    return world()


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    root = tmp_path_factory.mktemp("personal")
    return {head: train(head, data, root) for head in ("scalar", "pal", "vpl", "mixture", "maxmin")}


# -- the heads learn what a user-blind model cannot --------------------------------------------------------


def test_world_ceiling_is_below_one(data):
    """6 : 4 users on 4 of 6 disagreeing traits: ceiling ≈ 2/6 + 4/6 · 0.6 = 0.73 (exactly, from the data)."""
    ceiling = blind_ceiling(data["test"])
    assert 0.65 < ceiling < 0.82


def test_bt_stays_at_the_blind_ceiling_and_personal_heads_exceed_it(trained, data):
    ceiling = blind_ceiling(data["test"])
    acc = {head: accuracy(model, data["test"]) for head, model in trained.items()}
    assert acc["scalar"] <= ceiling + 1e-6, acc
    assert acc["scalar"] >= ceiling - 0.08, acc  # it does reach the majority
    for head in ("pal", "vpl", "maxmin"):
        assert acc[head] >= 0.95, (head, acc, ceiling)
    # the mixture has no user ids: capped like BT, but it learns the majority too
    assert acc["scalar"] - 0.08 <= acc["mixture"] <= ceiling + 1e-6, (acc, ceiling)


@pytest.mark.parametrize("head", ["pal", "vpl", "maxmin"])
def test_add_user_few_shot_beats_the_ceiling(trained, data, head):
    model = trained[head]
    for user in sorted({r.user_id for r in data["shots"]}):
        model.add_user(user, [r for r in data["shots"] if r.user_id == user])
    acc = accuracy(model, data["unseen_test"])
    assert acc > blind_ceiling(data["unseen_test"]) + 0.1, acc
    assert acc >= 0.9, acc
    assert "new00" in model.config.users


def test_maxmin_em_recovers_the_groups(trained):
    sklearn = pytest.importorskip("sklearn.metrics")
    groups = trained["maxmin"].head.group_of()
    users = sorted(u for u in groups if u.startswith("u"))
    truth = [int(u[1]) for u in users]
    assert sklearn.adjusted_rand_score(truth, [groups[u] for u in users]) == 1.0


def test_save_load_scores_training_users_identically(trained, data, tmp_path):
    for head in ("pal", "vpl", "maxmin", "mixture"):
        model = trained[head]
        before = model.pair_logits(data["test"])
        loaded = RewardModel.load(model.save(tmp_path / head))
        assert loaded.config.users == model.config.users
        assert loaded.feature_cache is not None  # frozen mode comes back (memory only)
        torch.testing.assert_close(loaded.pair_logits(data["test"]), before, atol=1e-4, rtol=1e-4)


def test_unknown_user_is_a_data_error_naming_add_user(trained, data):
    record = dataclasses.replace(data["test"][0], user_id="stranger")
    with pytest.raises(DataError, match=r"unknown user 'stranger'.*add_user"):
        trained["pal"].pair_logits([record])
    assert trained["scalar"].pair_logits([record]).shape == (1,)  # user-blind: ignores the id


def test_records_without_user_get_the_population_score(trained, data):
    record = dataclasses.replace(data["test"][0], user_id=None)
    for head in ("pal", "vpl", "maxmin"):
        assert torch.isfinite(trained[head].pair_logits([record])).all()


# -- configuration errors ----------------------------------------------------------------------------


def test_vpl_without_frozen_backbone_is_a_config_error():
    with pytest.raises(ConfigError, match="frozen_backbone"):
        RewardModelConfig(head="vpl")
    with pytest.raises(ConfigError, match="kl_weight"):
        RewardModelConfig(head="vpl", frozen_backbone=True, kl_weight=-1.0)


def test_personal_head_needs_user_ids_in_training(data, tmp_path):
    model = new_model("pal", users=("u000",))
    config = load_reward_config(overrides=[*QUIET, f"output.dir={tmp_path / 'x'}", "train.max_steps=1"])
    config = dataclasses.replace(config, reward=model.config)
    records = [dataclasses.replace(r, user_id=None) for r in data["train"][:40]]
    with pytest.raises(DataError, match="user_id"):
        train_reward_model(config, train_records=records, model=model)


def test_maxmin_needs_fit_maxmin(tmp_path):
    config = load_reward_config(overrides=[*QUIET, f"output.dir={tmp_path / 'x'}", "reward.head=maxmin",
                                           "reward.frozen_backbone=true"])
    with pytest.raises(ConfigError, match="fit_maxmin"):
        train_reward_model(config, train_records=[])


# -- head formulas -------------------------------------------------------------------------------------------


def test_mixture_logits_are_the_log_odds_of_the_mixture():
    """P(a ≻ b) = Σ_k π_k σ(r_k(a) − r_k(b)) with π from the pair's mean router input; antisymmetric."""
    torch.manual_seed(0)
    head = MixtureHead(5, components=3, hidden=4)
    torch.nn.init.normal_(head.router_out.weight)
    ha, hb = torch.randn(7, 5), torch.randn(7, 5)
    a, b = head(ha), head(hb)
    pi = torch.softmax(head.router_out(torch.nn.functional.gelu(head.router_in((ha + hb) / 2))), -1)
    p = (pi * torch.sigmoid(head.scores(ha) - head.scores(hb))).sum(-1)
    torch.testing.assert_close(head.preference_logits(a, b), torch.logit(p), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(head.preference_logits(b, a), -head.preference_logits(a, b))


def test_pal_reward_is_minus_squared_distance_to_the_ideal_point():
    torch.manual_seed(0)
    head = PALHead(5, ["a", "b"], components=3, dim=2, hidden=4)
    with torch.no_grad():
        head.user_logits[1] = torch.tensor([0.0, 2.0, -1.0])
    h = torch.randn(4, 5)
    out = head(h, torch.tensor([1, 1, -1, 0]))
    w1 = torch.softmax(torch.tensor([0.0, 2.0, -1.0]), -1)
    a1 = w1 @ head.prototypes
    torch.testing.assert_close(out.rewards[0], -((head.embed(h[0]) - a1) ** 2).sum())
    uniform = head.prototypes.mean(0)
    torch.testing.assert_close(out.rewards[2], -((head.embed(h[2]) - uniform) ** 2).sum())
    assert isinstance(out, RewardOutput)


# -- the feature cache ------------------------------------------------------------------------------------


def test_feature_cache_hits_misses_and_fingerprint(tmp_path, data):
    model = new_model("scalar")
    cache = model.freeze_backbone(tmp_path / "cache")
    records = data["train"][:30]
    first = model.record_features(records)
    distinct = len({r.chosen for r in records} | {r.rejected for r in records})
    assert cache.misses == distinct and len(cache) == distinct and cache.hits == 0
    second = model.record_features(records)
    assert cache.misses == distinct and cache.hits == 2 * len(records)
    torch.testing.assert_close(first[0], second[0])
    # the features equal the backbone's own
    ids, mask = model.tokens().pad([model.tokens().record_ids(records[0])[0]])
    torch.testing.assert_close(first[0][:1], model.backbone_features(ids, mask), atol=1e-6, rtol=1e-6)
    assert cache.flush() is not None and cache.path is not None and cache.path.is_file()
    # a new model on the same backbone reads the file: no misses
    again = new_model("scalar")
    reread = again.freeze_backbone(tmp_path / "cache")
    again.record_features(records)
    assert reread.misses == 0 and reread.path == cache.path
    # other backbone weights: another fingerprint, another file, everything recomputed
    changed = new_model("scalar")
    with torch.no_grad():
        changed.backbone.embeddings.word_embeddings.weight[5] += 1.0
    other = changed.freeze_backbone(tmp_path / "cache")
    assert other.path != cache.path and len(other) == 0
    changed.record_features(records)
    assert other.misses == distinct
    assert not any(p.requires_grad for p in changed.backbone.parameters())


def test_mixture_stage_two_fits_only_the_user_router_offset(trained, data, tmp_path):
    """MiCRo's stage 2: add_user fits the user's router offset (K,) and nothing else; the adapted user is
    saved with the model; unknown users get the user-blind router (no error: trained without ids)."""
    import copy

    model = copy.deepcopy(trained["mixture"])
    before = {k: v.clone() for k, v in model.head.state_dict().items() if k != "user_bias"}
    stranger = dataclasses.replace(data["unseen_test"][0], user_id="stranger")
    blind = model.pair_logits([stranger])
    model.add_user("new00", [r for r in data["shots"] if r.user_id == "new00"])
    assert model.head.user_bias.shape == (1, 2) and model.head.user_bias.abs().sum() > 0
    for k, v in model.head.state_dict().items():
        if k != "user_bias":
            torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    torch.testing.assert_close(model.pair_logits([stranger]), blind)
    mine = [r for r in data["unseen_test"] if r.user_id == "new00"]
    loaded = RewardModel.load(model.save(tmp_path / "mixture"))
    assert loaded.config.users == ("new00",)
    torch.testing.assert_close(loaded.pair_logits(mine), model.pair_logits(mine), atol=1e-5, rtol=1e-5)
