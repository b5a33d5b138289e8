"""User-conditioned policies and the MaxMin objective (issue 16, item 3 and its toy-world "Must show").

**The world.** A one-token world (:func:`prefkit.testing.token_world`): K = 5 actions ``a0`` … ``a4`` and
two groups with opposite hidden rules for the same prompt: group 0 wants high actions, r_0(a_i) = i/4;
group 1 low ones, r_1(a_i) = 1 − i/4. :func:`group_world` adds the user markers of
:func:`prefkit.data.condition.user_markers` to the vocabulary (one token each, a "user token" with a
fixed random embedding) and sets the output layer so that the reference distribution is exactly ``reference`` after
*every* prompt (the bare ``ask`` and each ``<marker> ask``); only the output layer trains, so each
prompt's policy is a softmax over per-action logits and every number below is exact, not sampled:

- **expected** hidden reward of group g: Σ_a π(a | x_g)·r_g(a), x_g the prompt group g is served with
  (``<user:g> ask`` for a user-conditioned policy, ``ask`` for a user-blind one);
- **greedy** hidden reward: r_g(argmax_a π(a | x_g)).

**(b) User-conditioned DPO** (P-RLHF with user tokens): 20 users, 20 pairs each (two distinct actions,
uniform; chosen by the user's group's rule; ``user_id`` and ``metadata.group`` set), DPO (β 0.5, lr 6e-3,
300 steps of 32) on the same pairs, once with ``condition_on_users(by="group")`` and once user-blind.

**(c) MaxMin** (MaxMin-RLHF's egalitarian objective, ``RewardMix(combine="maxmin")``) vs standard RL on
the population-weighted reward 0.8·r_0 + 0.2·r_1 (an 80/20 majority/minority split), RLOO through
``run_online`` on the user-blind prompt (40 rounds of 32 × 4 samples, lr 0.01, β 0.05), from a reference
that leans to the majority (π_ref = 0.05, 0.1, 0.15, 0.3, 0.4: expected rewards 0.725 / 0.275).

Measured numbers (seeds 0–2, one thread) are in the test docstrings and ``bench/personal_policy.py``
prints the tables.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import tempfile
from pathlib import Path

import pytest
import torch

from prefkit.data.condition import (
    UserConditioning,
    condition_on_users,
    user_markers,
    users_of,
)
from prefkit.data.records import Message, Pair, Rating
from prefkit.errors import ConfigError, DataError
from prefkit.losses.rewards import maxmin_weights
from prefkit.models.load import frozen_copy
from prefkit.online import FunctionJudge, OnlineConfig, SamplingSettings, run_online
from prefkit.online.jobs import JudgeConfig, build_judge
from prefkit.online.rewards import RewardComponent, RewardMix
from prefkit.testing import TokenWorld, token_world
from prefkit.train.config import load_config
from prefkit.train.run import read_data
from prefkit.train.trainer import Trainer

K = 5
GROUPS = (0, 1)
PROMPT = "ask"
SKEWED = (0.05, 0.1, 0.15, 0.3, 0.4)
"""The RL reference: leans to the majority (group 0), as an SFT model trained on majority data would."""
DPO_STEPS = 300


def hidden_reward(group: int, action: int) -> float:
    """Group 0 wants high actions, group 1 low ones: r_0(a_i) = i/(K−1), r_1 = 1 − r_0."""
    t = action / (K - 1)
    return t if group == 0 else 1.0 - t


def served_prompt(group: int | None, conditioning: UserConditioning | None = None) -> str:
    """The prompt a group is served with: marked for the group, or the bare prompt (user-blind)."""
    if group is None:
        return PROMPT
    return condition_on_users([Pair(PROMPT, "a0", "a1", metadata={"group": group})], conditioning or
                              UserConditioning(by="group"))[0].prompt


def group_world(markers: tuple[str, ...] = (), reference: tuple[float, ...] | None = None, *,
                seed: int = 0) -> TokenWorld:
    """:func:`token_world` with ``markers`` as extra one-token words, the reference exact after every prompt.

    The output layer is W = t·vᵀ with t the target logits (log π_ref on the actions, 40 below the least
    likely action elsewhere) and v the least-norm solution of v·h_p = 1 for the last hidden state h_p of
    every prompt p (P ≤ hidden prompts, linearly independent), so W·h_p = t for each of them.
    """
    world = token_world(K, reference, seed=seed)
    tok, model = world.tokenizer, world.model
    if markers:
        tok.add_tokens(list(markers))
        old = model.get_input_embeddings().weight.shape[0]
        with torch.random.fork_rng(devices=[]):  # leaves the global RNG as it was
            model.resize_token_embeddings(len(tok), mean_resizing=False)
        with torch.no_grad():
            emb = model.get_input_embeddings().weight
            g = torch.Generator().manual_seed(1000 + seed)
            emb[old:] = 0.2 * torch.randn(len(tok) - old, emb.shape[1], generator=g)
    prompts = [PROMPT, *(f"{m} {PROMPT}" for m in markers)]
    probs = torch.tensor(world.reference_probs if reference is None else reference, dtype=torch.float64)
    with torch.no_grad():
        h = torch.stack([model.model(torch.tensor([tok(p)["input_ids"]])).last_hidden_state[0, -1].double()
                         for p in prompts])  # (P, H)
        target = torch.full((len(tok),), float(probs.log().min()) - 40.0, dtype=torch.float64)  # (V,)
        target[list(world.action_ids)] = probs.log()
        v = torch.linalg.pinv(h) @ torch.ones(len(prompts), dtype=torch.float64)  # (H,) v·h_p = 1
        model.lm_head.weight.copy_((target[:, None] * v[None, :]).float())
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("lm_head"))
    return world


def exact_rewards(world: TokenWorld, group: int, prompt: str) -> tuple[float, float]:
    """(expected, greedy) hidden reward of ``group`` served with ``prompt`` (exact, from the logits); the
    actions must hold the policy's mass (greedy over the actions is then greedy over the vocabulary)."""
    probs = dataclasses.replace(world, prompt=prompt).probs().double()  # (K,)
    assert float(probs.sum()) > 0.99, (prompt, float(probs.sum()))
    r = torch.tensor([hidden_reward(group, a) for a in range(K)], dtype=torch.float64)
    return float(probs @ r), hidden_reward(group, int(probs.argmax()))


def group_pairs(shares: tuple[float, float], *, users: int = 20, pairs_per_user: int = 20,
                seed: int = 0) -> list[Pair]:
    """Pairs from ``users`` users, ``shares`` of them in group 0 and 1; each pair two distinct actions
    (uniform) labelled by the user's group's rule; ``user_id`` ``u0000``…, ``metadata.group``."""
    rng = random.Random(seed)
    out: list[Pair] = []
    counts = [round(users * shares[0]), users - round(users * shares[0])]
    uid = 0
    for group, n in zip(GROUPS, counts, strict=True):
        for _ in range(n):
            for _ in range(pairs_per_user):
                a, b = rng.sample(range(K), 2)
                hi, lo = (a, b) if hidden_reward(group, a) > hidden_reward(group, b) else (b, a)
                out.append(Pair(PROMPT, f"a{hi}", f"a{lo}", user_id=f"u{uid:04d}", metadata={"group": group}))
            uid += 1
    rng.shuffle(out)
    return out


def dpo_config(folder: Path, steps: int, seed: int):
    """DPO β 0.5, lr 6e-3 constant, ``steps`` steps of 32 pairs; the reference log-probs computed once
    (``reference.mode=precomputed``, cached under ``folder``) and padded rows: the sequences are 3–4 tokens."""
    return load_config(overrides=[
        "loss.name=dpo", "loss.beta=0.5", "train.lr=6e-3", "train.batch_size=32", "train.scheduler=constant",
        "train.warmup_steps=0", "train.max_grad_norm=null", "train.log_every=100000", "train.progress=false",
        f"train.max_steps={steps}", f"train.seed={seed}", "encode.add_eos=false", "model.packing=false",
        "reference.mode=precomputed", f"reference.cache_dir={folder / 'reference'}", f"output.dir={folder / 'run'}",
        "output.save_model=false", "output.plots=false", "output.tensorboard=false", "output.overwrite=true"],
        check_files=False)


def serve_groups(shares: tuple[float, float], conditioned: bool, seed: int = 0, *,
                 steps: int = DPO_STEPS) -> dict[int, tuple[float, float]]:
    """DPO on :func:`group_pairs` (user-conditioned by group, or user-blind); group -> (expected, greedy)."""
    conditioning = UserConditioning(by="group")
    markers = tuple(user_markers([str(g) for g in GROUPS], conditioning)) if conditioned else ()
    world = group_world(markers, seed=seed)
    records = group_pairs(shares, seed=seed)
    if conditioned:
        records = condition_on_users(records, conditioning)
    reference = frozen_copy(world.model)
    with tempfile.TemporaryDirectory() as tmp:
        Trainer(dpo_config(Path(tmp), steps, seed), world.model, world.tokenizer, records,
                reference_model=lambda: reference).train()
    return {g: exact_rewards(world, g, served_prompt(g if conditioned else None)) for g in GROUPS}


def group_judge(world: TokenWorld, group: int) -> FunctionJudge:
    index = {a: i for i, a in enumerate(world.actions)}
    return FunctionJudge(lambda prompt, completion: hidden_reward(group, index[completion]), name=f"rule{group}")


def rl_groups(kind: str, seed: int = 0, *, shares: tuple[float, float] = (0.8, 0.2), rounds: int = 40,
              temperature: float = 0.0) -> dict[int, float]:
    """RLOO on the user-blind prompt with the standard (population-weighted) or the MaxMin reward
    (``temperature``: its softmin τ); group -> exact expected hidden reward of the final policy."""
    world = group_world(reference=SKEWED, seed=seed)
    maxmin = kind == "maxmin"
    mix = RewardMix([RewardComponent(f"group{g}", group_judge(world, g), weight=None if maxmin else shares[g])
                     for g in GROUPS], combine="maxmin" if maxmin else "weighted", temperature=temperature)
    online = OnlineConfig(algorithm={"name": "rloo"}, rounds=rounds, prompts_per_round=32, samples_per_prompt=4,
                          sampling=SamplingSettings(max_new_tokens=1), steps_per_round=1, seed=seed,
                          win_rate_vs_reference=False)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(overrides=[
            "loss.name=dpo", "loss.beta=0.05", "train.lr=0.01", "train.batch_size=4096", "train.scheduler=constant",
            "train.warmup_steps=0", "train.max_grad_norm=null", "train.weight_decay=0", "train.log_every=100000",
            "train.progress=false", "encode.add_eos=false", "model.packing=false", f"output.dir={tmp}/unused"],
            check_files=False)
        run_online(world.model, world.tokenizer, [PROMPT], mix, cfg, online, Path(tmp) / "run")
    return {g: exact_rewards(world, g, PROMPT)[0] for g in GROUPS}


# -- condition_on_users ------------------------------------------------------------------------------------


def test_condition_on_users_marks_text_and_chat_prompts() -> None:
    pair = Pair("Which is closer to your views?", "A", "B", user_id="u7", metadata={"group": 2}, weight=2.0, id="p1")
    assert condition_on_users([pair])[0].prompt == "<user:u7> Which is closer to your views?"
    marked = condition_on_users([pair], by="group", template="[group {user}]", separator="\n")[0]
    assert marked.prompt == "[group 2]\nWhich is closer to your views?"
    assert (marked.user_id, marked.metadata, marked.chosen, marked.weight) == ("u7", {"group": 2}, "A", 2.0)
    chat = Pair([{"role": "user", "content": "Hi"}], [{"role": "assistant", "content": "A"}],
                [{"role": "assistant", "content": "B"}], user_id="u7")
    assert condition_on_users([chat])[0].prompt == (Message("user", "<user:u7> Hi"),)
    assert condition_on_users([chat], place="system")[0].prompt == (Message("system", "<user:u7>"),
                                                                   Message("user", "Hi"))
    sys_chat = dataclasses.replace(chat, prompt=(Message("system", "Be brief."), Message("user", "Hi")))
    assert condition_on_users([sys_chat], place="system")[0].prompt[0] == Message("system", "<user:u7> Be brief.")
    rating = Rating("Q", "A", score=1.0, user_id="u1")  # any record kind
    assert condition_on_users([rating])[0].prompt == "<user:u1> Q"


def test_unseen_and_anonymous_users_get_the_generic_marker() -> None:
    records = [Pair("Q", "A", "B", user_id="u1"), Pair("Q", "A", "B", user_id="u9"), Pair("Q", "A", "B")]
    assert users_of(records) == ["u1", "u9"]
    out = condition_on_users(records, known=["u1"])
    assert [r.prompt for r in out] == ["<user:u1> Q", "<user:anyone> Q", "<user:anyone> Q"]
    out = condition_on_users(records, known=["u1"], generic="everyone")
    assert out[1].prompt == "<user:everyone> Q"
    assert user_markers(["u1", "u9"]) == ["<user:u1>", "<user:u9>", "<user:anyone>"]


def test_generic_weight_keeps_a_generic_copy_as_in_p_dpo() -> None:
    """P-DPO's α·L(user) + (1 − α)·L(generic): each record twice, weights w·α and w·(1 − α)."""
    records = [Pair("Q", "A", "B", user_id="u1", weight=2.0, id="r1"), Pair("Q", "A", "B")]
    out = condition_on_users(records, generic_weight=0.25)
    assert [(r.prompt, r.weight, r.id) for r in out] == [
        ("<user:u1> Q", 1.5, "r1"), ("<user:anyone> Q", 0.5, "r1/generic"), ("<user:anyone> Q", 1.0, None)]


@pytest.mark.parametrize(("call", "error", "match"), [
    (lambda: condition_on_users([Pair("Q", "A", "B", user_id="u")], place="system"), DataError, "needs chat prompts"),
    (lambda: condition_on_users([Pair("Q", "A", "B", user_id="anyone")]), DataError, "generic marker's name"),
    (lambda: UserConditioning(template="<user>"), ConfigError, "must contain {user}"),
    (lambda: UserConditioning(template="<{user}:{x}>"), ConfigError, "only {user}"),
    (lambda: UserConditioning(by="users"), ConfigError, "did you mean 'user'"),
    (lambda: UserConditioning(generic_weight=1.0), ConfigError, r"\[0, 1\)"),
    (lambda: UserConditioning.from_dict({"plase": "system"}), ConfigError, "did you mean 'place'"),
    (lambda: condition_on_users([], UserConditioning(), by="group"), ConfigError, "not both"),
])
def test_conditioning_mistakes_are_one_line_errors(call, error, match) -> None:
    with pytest.raises(error, match=match) as err:
        call()
    assert "\n" not in str(err.value)


def test_the_data_section_switches_it_on(tmp_path: Path) -> None:
    """``data.condition_on_users`` in a run config: ``read_data`` marks the records; a user held out for
    evaluation (not in the training split) gets the generic marker; only training records get generic copies."""
    rows = [{"prompt": "Q", "chosen": "A", "rejected": "B", "user_id": u} for u in ("u1", "u2", "u1", "u3")]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = load_config(overrides=[f"data.train={tmp_path / 'pairs.jsonl'}", "data.eval_fraction=0.25",
                                 "data.condition_on_users={generic_weight: 0.5}"], check_files=False)
    train, evaluation = read_data(cfg)
    assert [r.prompt for r in train] == [f"<user:{u}> Q" if i % 2 == 0 else "<user:anyone> Q"
                                         for u in ("u1", "u2", "u1") for i in range(2)]
    assert [r.weight for r in train] == [0.5] * 6
    assert [r.prompt for r in evaluation] == ["<user:anyone> Q"]  # u3 is not in the training split
    plain = load_config(overrides=[f"data.train={tmp_path / 'pairs.jsonl'}"], check_files=False)
    assert [r.prompt for r in read_data(plain)[0]] == ["Q"] * 4
    with pytest.raises(ConfigError, match="did you mean 'data.condition_on_users.by'"):
        load_config(overrides=["data.condition_on_users.bye=group"], check_files=False)


# -- MaxMin weights and the reward mix ---------------------------------------------------------------------


def test_maxmin_weights_by_hand() -> None:
    """Worst group(s) get all the weight, ties share; τ = 1: softmax(−m) of m = (0, ln 2, ln 4) is
    (1, ½, ¼)/(7/4) = (4/7, 2/7, 1/7)."""
    assert maxmin_weights(torch.tensor([0.3, 0.1, 0.5])).tolist() == [0.0, 1.0, 0.0]
    assert maxmin_weights(torch.tensor([0.1, 0.3, 0.1])).tolist() == [0.5, 0.0, 0.5]
    soft = maxmin_weights(torch.tensor([0.0, math.log(2), math.log(4)], dtype=torch.float64), temperature=1.0)
    assert soft.tolist() == pytest.approx([4 / 7, 2 / 7, 1 / 7])
    with pytest.raises(DataError, match="finite"):
        maxmin_weights(torch.tensor([0.0, float("nan")]))
    with pytest.raises(ConfigError, match="temperature"):
        maxmin_weights(torch.tensor([0.0, 1.0]), temperature=-1.0)


def _mix(**options) -> RewardMix:
    a = FunctionJudge(lambda p, c: {"x": 1.0, "y": 0.0}[c], name="a")
    b = FunctionJudge(lambda p, c: {"x": 0.0, "y": 3.0}[c], name="b")
    return RewardMix([RewardComponent("a", a), RewardComponent("b", b)], combine="maxmin", **options)


def test_maxmin_mix_trains_on_the_worst_group_of_the_round() -> None:
    """Round 0, samples x, x, y: group means a = 2/3, b = 1 → a is worst, the rewards are a's column
    (1, 1, 0). Round 1, samples x, x: a = 1, b = 0 → b is worst, the rewards are b's column (0, 0)."""
    mix = _mix()
    assert mix.score(["p"] * 3, ["x", "x", "y"]).tolist() == [1.0, 1.0, 0.0]
    assert mix.group_weights.tolist() == [1.0, 0.0]
    assert mix.metrics()["maxmin/a"] == 1.0 and mix.metrics()["maxmin/b"] == 0.0
    mix.begin_round(1)
    assert mix.score(["p"] * 2, ["x", "x"]).tolist() == [0.0, 0.0]  # a = 1, b = 0: b is worst now
    assert mix.group_weights.tolist() == [0.0, 1.0]
    with mix.uncounted():  # uses the round's α, counts nothing
        assert mix.score(["p"], ["y"]).tolist() == [3.0]
    state = json.loads(json.dumps(mix.state_dict()))
    fresh = _mix()
    fresh.load_state_dict(state)
    assert fresh.group_weights.tolist() == [0.0, 1.0]
    soft = _mix(temperature=1.0)
    soft.score(["p"] * 2, ["x", "y"])  # means a = ½, b = 3/2: α = softmax(−½, −3/2)
    assert soft.group_weights.tolist() == pytest.approx(torch.softmax(torch.tensor([-0.5, -1.5]), 0).tolist())
    assert "maxmin" in _mix().name and "maxmin τ 1" in soft.name


def test_maxmin_mix_mistakes_are_one_line_errors() -> None:
    a = FunctionJudge(lambda p, c: 0.0, name="a")
    with pytest.raises(ConfigError, match="at least 2 free components"):
        RewardMix([RewardComponent("a", a)], combine="maxmin")
    with pytest.raises(ConfigError, match="maxmin' only"):
        RewardMix([RewardComponent("a", a), RewardComponent("b", a)], temperature=0.5)
    with pytest.raises(ConfigError, match="combine"):
        RewardMix([RewardComponent("a", a), RewardComponent("b", a)], combine="min")


def test_maxmin_from_a_job_config(tmp_path: Path) -> None:
    """``judge: {components: [...], combine: maxmin}`` in an online job builds the MaxMin mix."""
    (tmp_path / "personal_policy_judges.py").write_text("def high(p, c):\n    return 1.0\n\n"
                                                      "def low(p, c):\n    return 0.0\n")
    config = JudgeConfig(components=[{"name": "g0", "function": "personal_policy_judges:high"},
                                     {"name": "g1", "function": "personal_policy_judges:low"}],
                         combine="maxmin", temperature=0.1)
    mix = build_judge(config, tmp_path)
    assert isinstance(mix, RewardMix) and mix.combine == "maxmin" and mix.temperature == 0.1
    with pytest.raises(ConfigError, match="judge.temperature applies to judge.combine: maxmin only"):
        JudgeConfig(components=config.components, temperature=0.1)
    with pytest.raises(ConfigError, match="at least 2 components without a target"):
        JudgeConfig(components=config.components[:1], combine="maxmin")
    with pytest.raises(ConfigError, match="judge.combine applies to judge.components only"):
        JudgeConfig(regex="x", combine="maxmin")


# -- the toy world -----------------------------------------------------------------------------------------


def test_group_world_reference_is_exact_after_every_prompt() -> None:
    markers = tuple(user_markers(["0", "1"], UserConditioning(by="group")))
    world = group_world(markers, SKEWED)
    for prompt in (PROMPT, *(f"{m} {PROMPT}" for m in markers)):
        probs = dataclasses.replace(world, prompt=prompt).probs().double()
        assert probs.tolist() == pytest.approx(SKEWED, abs=1e-5), prompt
    assert exact_rewards(world, 0, PROMPT) == (pytest.approx(0.725, abs=1e-5), 1.0)
    assert served_prompt(1) == "<user:1> ask"


def test_user_conditioned_dpo_serves_both_groups_where_user_blind_dpo_cannot() -> None:
    """The same pairs, DPO with and without the group marker; (expected, greedy) hidden reward per group.

    Measured (seed 0, 300 steps, 2–3 s a run), group 0 / group 1: 50/50 conditioned (0.980, 1.0) /
    (0.985, 1.0), blind (0.486, 0.5) / (0.514, 0.5) (the pooled labels cancel: the policy stays near uniform,
    greedy picks the middle action); 80/20 conditioned (0.991, 1.0) / (0.866, 1.0), blind (0.899, 1.0) /
    (0.101, 0.0). Seeds 1 and 2 (``bench/personal_policy.py``) follow the same pattern; the weakest
    conditioned group is seed 1's 80/20 minority, (0.738, 1.0): the two prompts share the output layer, so
    the majority's pairs leak into the minority's prompt; hence the expected-reward bound 0.7."""
    for shares in ((0.5, 0.5), (0.8, 0.2)):
        conditioned = serve_groups(shares, conditioned=True)
        blind = serve_groups(shares, conditioned=False)
        print(f"\n{shares}: conditioned {conditioned} blind {blind}")
        for g in GROUPS:  # user-conditioned DPO serves each group
            assert conditioned[g][1] >= 0.8 and conditioned[g][0] >= 0.7, (shares, g, conditioned)
        if shares == (0.5, 0.5):  # user-blind serves neither: both near ½
            assert all(abs(blind[g][0] - 0.5) < 0.1 and blind[g][1] < 0.8 for g in GROUPS), blind
        else:  # user-blind serves the majority only
            assert blind[0][1] == 1.0 and blind[0][0] >= 0.8, blind
            assert blind[1][1] == 0.0 and blind[1][0] <= 0.2, blind


def test_maxmin_raises_the_minority_over_population_weighted_rl() -> None:
    """80/20: RLOO on 0.8·r_0 + 0.2·r_1 vs on MaxMin's worst-group reward; exact expected hidden rewards.

    Measured (seed 0, 40 rounds, 2–5 s a run): reference 0.725 / 0.275; standard 0.999 / 0.001; MaxMin
    0.479 / 0.521 (α switches between the groups round by round, holding the policy where they are even)."""
    standard = rl_groups("standard")
    maxmin = rl_groups("maxmin")
    print(f"\nstandard {standard} maxmin {maxmin}")
    assert standard[1] <= 0.1 and standard[0] >= 0.9, standard
    assert maxmin[1] >= 0.4 and min(maxmin.values()) >= 0.4, maxmin
    assert maxmin[1] >= standard[1] + 0.3, (standard, maxmin)
