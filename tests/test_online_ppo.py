"""PPO with a value head and GAE on the online loop (issue 13; ``prefkit.online.ppo``) through ``run_online``.

- the one-token world (:func:`prefkit.testing.token_world`): PPO finds the best action; the value head's
  prediction of the prompt state's value approaches the mean reward;
- a multi-token policy (the toy world's tokenizer, an untrained tiny Llama): the first step's ratio is 1,
  and the table the objective trains on is the per-token KL reward, GAE and whitening of
  ``prefkit.losses.rl`` (checked by explicit sums at round 0, where V = 0);
- exact resume with the value head (stopped mid-round and between the head's save and the checkpoint);
- the toy world from the demo's SFT policy (slow).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from statistics import mean

import pytest
import torch

from prefkit.errors import ConfigError
from prefkit.online import FunctionJudge, OnlineConfig, SamplingSettings, ppo, run_online
from prefkit.online.algorithms import make_algorithm
from prefkit.online.context import RoundContext
from prefkit.online.ppo import VALUE_HEAD, PPOObjective
from prefkit.testing import token_world
from prefkit.train.config import load_config

K = 10
REWARDS = torch.linspace(0.0, 1.0, K, dtype=torch.float64)  # action a9 is the best
REFERENCE = [0.2, 0.15, 0.15, 0.1, 0.1, 0.1, 0.08, 0.06, 0.04, 0.02]


def run_config(out: Path, *, lr: float = 0.03, beta: float = 0.1, **extra):
    overrides = ["loss.name=dpo", f"loss.beta={beta}", f"train.lr={lr}", "train.batch_size=4096",
                 "train.scheduler=constant", "train.warmup_steps=0", "train.max_grad_norm=null", "train.weight_decay=0",
                 "train.log_every=100000", "train.progress=false", "encode.add_eos=false", f"output.dir={out}",
                 *(f"{k}={v}" for k, v in extra.items())]
    return load_config(overrides=overrides, check_files=False)


def bandit_judge(world) -> FunctionJudge:
    index = {a: i for i, a in enumerate(world.actions)}
    return FunctionJudge(lambda p, c: float(REWARDS[index[c]]), name="hidden")


def online(algorithm: dict, *, rounds: int, prompts: int = 32, g: int = 4, **extra) -> OnlineConfig:
    return OnlineConfig(algorithm=algorithm, rounds=rounds, prompts_per_round=prompts, samples_per_prompt=g,
                        sampling=SamplingSettings(max_new_tokens=1), steps_per_round=1, seed=0,
                        win_rate_vs_reference=False, **extra)


# -- the one-token world --------------------------------------------------------------------------------------


def test_ppo_finds_the_best_action_and_the_value_learns_the_mean_reward(tmp_path):
    """No KL (kl_coef 0), 30 rounds of 32 × 4 samples, lr 0.03: π(a9) rises from π_ref 0.02 to > 0.9. The
    value head (zero at round 0) predicts the prompt state's value, E_π[r]: over the last 5 rounds its mean
    prediction is within 0.1 of the sampled mean reward. Measured (seed 0): π(a9) 1.000, reward 0.359 → 1.000,
    value 0 → 0.991, |V − r̄| over the last 5 rounds 0.029."""
    world = token_world(K, REFERENCE)
    history = run_online(world.model, world.tokenizer, [world.prompt], bandit_judge(world),
                         run_config(tmp_path / "u"), online({"name": "ppo", "kl_coef": 0.0}, rounds=30),
                         tmp_path / "run")
    probs = world.probs().double()
    values = [h["val/mean"] for h in history]
    rewards = [h["reward"] for h in history]
    print(f"\nppo: π(a9) {float(probs[-1]):.3f}; reward {rewards[0]:.3f} -> {rewards[-1]:.3f}; "
          f"value {values[0]:.3f} -> {values[-1]:.3f}; |V − r̄| over the last 5 rounds "
          f"{abs(mean(values[-5:]) - mean(rewards[-5:])):.3f}")
    assert float(probs[-1]) > 0.9, probs
    assert values[0] == 0.0  # zero-initialised head
    assert abs(mean(values[-5:]) - mean(rewards[-5:])) < 0.1
    assert {"objective/kl", "objective/scores", "policy/clipfrac_avg", "val/clipfrac_avg", "loss/policy_avg",
            "loss/value_avg", "val/ratio", "val/num_eos_tokens", "objective/rlhf_reward"} <= set(history[0])
    assert not hasattr(world.model, VALUE_HEAD)  # the caller gets the plain model back
    assert sorted(p.name for p in (tmp_path / "run" / "ppo").iterdir()) == [
        "value_head-0028.safetensors", "value_head-0029.safetensors", "value_head-0030.safetensors"]


# -- a multi-token policy: the table, GAE and whitening, the first ratio ---------------------------------------


def test_gae_whitening_and_first_ratio_on_multi_token_samples(tmp_path, monkeypatch):
    """The toy world's tokenizer and an untrained tiny Llama, 3 new tokens at most (many samples cut: their
    appended EOS is masked), β = 0.1, γ = 0.9, λ = 0.8, two rounds. In round 1 (policy ≠ reference, value
    head ≠ 0) the objective's table must hold, by explicit sums (not via ``gae``/``whiten``):
    r_t = −β·(log π_old − log π_ref)_t plus the score at the last trained token,
    δ_t = r_t + γ·V_{t+1} − V_t (V = 0 after the last trained token), A_t = Σ_l (γλ)^l·δ_{t+l},
    returns = A + V, and the advantages A whitened over all trained tokens of all samples (duplicates
    counted). The first step's ratio is 1 and nothing is clipped; the second pass (iterations 2) measures
    against the sampling policy."""
    from prefkit.toy import world as toy
    from prefkit.toy.demo import QUICK, build_model

    captured: list[tuple[list, PPOObjective]] = []
    original = RoundContext.train

    def spy(self, records, *, objective=None, tag="", reference=None):
        captured.append((list(records), objective))
        return original(self, records, objective=objective, tag=tag, reference=reference)

    monkeypatch.setattr(RoundContext, "train", spy)
    collected: list = []
    collect = ppo.collect

    def collect_spy(*args, **kwargs):
        collected.append(collect(*args, **kwargs))
        return collected[-1]

    monkeypatch.setattr("prefkit.online.ppo.collect", collect_spy)
    tokenizer = toy.build_tokenizer()
    model = build_model(tokenizer, QUICK, seed=0)
    prompts = [p.text for p in toy.sample_prompts(16, random.Random(0))]
    judge = FunctionJudge(lambda p, c: toy.reward(p, c), name="hidden rule")
    cfg = load_config(overrides=["loss.name=dpo", "loss.beta=0.1", "train.lr=1e-3", "train.batch_size=4096",
                                 "train.progress=false", "train.log_every=1", f"output.dir={tmp_path / 'u'}"],
                      check_files=False)
    gamma, lam = 0.9, 0.8
    config = OnlineConfig(algorithm={"name": "ppo", "iterations": 2, "gamma": gamma, "lam": lam}, rounds=2,
                          prompts_per_round=8, samples_per_prompt=4, sampling=SamplingSettings(max_new_tokens=3),
                          steps_per_round=1, seed=0, win_rate_vs_reference=False)
    history = run_online(model, tokenizer, prompts, judge, cfg, config, tmp_path / "run")
    first = json.loads((tmp_path / "run" / "round-0000" / "metrics.jsonl").read_text().splitlines()[0])
    second = json.loads((tmp_path / "run" / "round-0000-iter1" / "metrics.jsonl").read_text().splitlines()[0])
    assert abs(first["val/ratio"] - 1.0) < 1e-5 and abs(first["ratio/min"] - 1.0) < 1e-5
    assert abs(first["ratio/max"] - 1.0) < 1e-5 and first["policy/clipfrac_avg"] == 0.0
    assert abs(second["val/ratio"] - 1.0) > 1e-5
    assert history[0]["truncated/masked_eos"] > 0

    assert captured[1][1] is captured[0][1] and len(captured) == 4 and len(collected) == 2
    records, objective = captured[2]  # round 1: the policy has moved from the reference, V ≠ 0
    table = collected[1].table
    beta = 0.1
    flat = collected[1].rewards.flatten().tolist()
    score_of = {key: flat[k] for k, key in reversed(list(enumerate(collected[1].keys))) if key is not None}
    raw: list[list[float]] = []
    weights: list[float] = []
    kl_seen = 0.0
    for rec in records:
        e = objective.table[str(rec.id)]
        ref = table[str(rec.id)].ref
        m, v = e.mask, e.old_values
        score = score_of[str(rec.id)]
        last = max(t for t, x in enumerate(m) if x > 0)
        n = len(m)
        r = [(-beta * (e.old[t] - ref[t]) + (score if t == last else 0.0)) * m[t] for t in range(n)]
        kl_seen += sum(abs(e.old[t] - ref[t]) * m[t] for t in range(n))
        nxt = [v[t + 1] * m[t + 1] if t + 1 < n else 0.0 for t in range(n)]
        delta = [r[t] + gamma * nxt[t] - v[t] for t in range(n)]
        adv = [0.0] * n
        for t in range(n):  # A_t = Σ_l (γλ)^l δ_{t+l} over the trained tokens that follow without a gap
            acc, u = 0.0, t
            while u < n and m[u] > 0:
                acc += (gamma * lam) ** (u - t) * delta[u]
                u += 1
            adv[t] = acc * m[t]
        assert all(abs(a + x * y - b) < 1e-5 for a, x, y, b in zip(adv, v, m, e.returns, strict=True))
        raw.append(adv)
        weights.append(rec.weight)
    assert kl_seen > 1e-3 and any(x != 0.0 for rec in records for x in objective.table[str(rec.id)].old_values)
    # whitening over all trained tokens, each record counted as often as it was sampled
    counts = [round(w * history[1]["samples_trained"] / len(records)) for w in weights]
    tokens = [(a, n) for rec, adv, n in zip(records, raw, counts, strict=True)
              for a, m in zip(adv, objective.table[str(rec.id)].mask, strict=True) if m > 0]
    total = sum(n for _, n in tokens)
    mu = sum(a * n for a, n in tokens) / total
    sd = (sum(n * (a - mu) ** 2 for a, n in tokens) / (total - 1)) ** 0.5
    for rec, adv in zip(records, raw, strict=True):
        e = objective.table[str(rec.id)]
        want = [(a - mu) / sd * m for a, m in zip(adv, e.mask, strict=True)]
        assert all(abs(a - b) < 1e-4 for a, b in zip(want, e.advantages, strict=True)), (want, e.advantages)


# -- exact resume with the value head -----------------------------------------------------------------------


class Stop(BaseException):
    """Stands for a kill: nothing in the loop catches it."""


RESUME_REWARD = [0.0, 3.0, 1.0, 2.0, 0.5, 1.5]


def _resume_run(out: Path, *, resume: bool = False, stop_judge_at: int | None = None):
    world = token_world(6, [0.3, 0.05, 0.25, 0.1, 0.2, 0.1])
    calls = [0]

    def reward(prompt, completion):
        calls[0] += 1
        if stop_judge_at is not None and calls[0] == stop_judge_at:
            raise Stop
        return RESUME_REWARD[world.actions.index(completion)]

    cfg = load_config(overrides=["loss.name=dpo", "loss.beta=0.1", "train.lr=0.01", "train.batch_size=4",
                                 "train.scheduler=constant", "encode.add_eos=false", "train.progress=false",
                                 f"output.dir={out.parent / 'unused'}"], check_files=False)
    config = OnlineConfig(algorithm={"name": "ppo", "iterations": 2}, rounds=4, prompts_per_round=4,
                          samples_per_prompt=4, steps_per_round=2, sampling=SamplingSettings(max_new_tokens=1),
                          seed=5, win_rate_vs_reference=False)
    history = run_online(world.model, world.tokenizer, [world.prompt], FunctionJudge(reward, name="hidden"), cfg,
                         config, out, resume=resume)
    return {k: v.clone() for k, v in world.model.state_dict().items()}, history


def _strip(rows):
    return [{k: v for k, v in r.items() if k not in ("seconds", "train/tokens/s")} for r in rows]


def _head(out: Path) -> bytes:
    return (out / "ppo" / "value_head-0004.safetensors").read_bytes()


def test_resume_is_exact_with_the_value_head(tmp_path, monkeypatch):
    """4 rounds straight vs. (a) stopped while judging round 2 (16 judge calls per round), then resumed;
    (b) stopped after round 2's value head was saved but before its round checkpoint, then resumed: the
    policy weights, the final value head file, and the metrics are bitwise equal."""
    torch.set_num_threads(1)
    weights, history = _resume_run(tmp_path / "straight")
    head = _head(tmp_path / "straight")
    from safetensors.torch import load_file

    assert float(load_file(str(tmp_path / "straight" / "ppo" / "value_head-0004.safetensors"))["bias"].abs()) > 0

    with pytest.raises(Stop):
        _resume_run(tmp_path / "a", stop_judge_at=2 * 16 + 5)
    got, hist = _resume_run(tmp_path / "a", resume=True)
    assert all(torch.equal(got[k], weights[k]) for k in weights) and _head(tmp_path / "a") == head
    assert _strip(hist) == _strip(history)

    import prefkit.online.loop as loop

    save = loop.save_checkpoint

    def stop_at_round_3(out, next_round, *args, **kwargs):
        if next_round == 3:
            raise Stop
        return save(out, next_round, *args, **kwargs)

    monkeypatch.setattr(loop, "save_checkpoint", stop_at_round_3)
    with pytest.raises(Stop):
        _resume_run(tmp_path / "b")
    assert (tmp_path / "b" / "ppo" / "value_head-0003.safetensors").is_file()
    monkeypatch.setattr(loop, "save_checkpoint", save)
    got, hist = _resume_run(tmp_path / "b", resume=True)
    assert all(torch.equal(got[k], weights[k]) for k in weights) and _head(tmp_path / "b") == head
    assert _strip(hist) == _strip(history)


# -- options -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("algorithm", "message"), [
    ({"name": "ppo", "lam": 1.5}, "option lam must be a number >= 0 and <= 1"),
    ({"name": "ppo", "value_clip": 0}, "option value_clip must be a number > 0"),
    ({"name": "ppo", "whiten_advantages": "yes"}, "option whiten_advantages must be true or false"),
    ({"name": "ppo", "normalize": "sum"}, "option normalize must be one of"),
    ({"name": "ppo", "vf_coeff": 0.1}, "vf_coef"),
])
def test_options_are_checked_in_one_line(tmp_path, algorithm, message):
    cfg = run_config(tmp_path)
    config = online(algorithm, rounds=1)
    with pytest.raises(ConfigError) as err:
        make_algorithm(config).check(cfg, config)
    assert message in str(err.value) and "\n" not in str(err.value)


# -- the toy world ----------------------------------------------------------------------------------------------


def greedy_reward(model, tokenizer, prompts) -> float:
    """Mean hidden reward of greedy generations (the demo's ``greedy_reward``)."""
    from prefkit.toy import world as toy
    from prefkit.toy.demo import generate

    was_training = model.training
    model.eval()
    ids, _ = generate(model, tokenizer, [p.text for p in prompts], sample=False)
    model.train(was_training)
    texts = tokenizer.batch_decode(ids, skip_special_tokens=True)
    return mean(toy.reward(p, t) for p, t in zip(prompts, texts, strict=True))


TOY_OPTIONS = {"name": "ppo", "kl_coef": 0.02}


@pytest.mark.slow
def test_toy_world_greedy_hidden_reward(tmp_path):
    """From the demo's SFT policy (quick sizes, greedy hidden reward 0.263 on 200 held-out prompts), 100
    rounds of 32 prompts × 8 samples, 2 full-batch steps per round, lr 5e-4, β = 0.02 (k1 in the reward),
    the other options at their defaults: greedy hidden reward ≥ 0.7. Measured (seed 0, one thread, 138 s on a
    busy 2-core machine): 0.263 → 0.790; sampled reward per 10 rounds 0.459, 0.572, 0.613, 0.685, 0.721,
    0.705, 0.743, 0.759, 0.778, 0.778."""
    from prefkit.toy import world as toy
    from prefkit.toy.demo import QUICK, sft_policy

    torch.manual_seed(0)
    rng = random.Random(0)
    tokenizer = toy.build_tokenizer()
    policy = sft_policy(tokenizer, QUICK, 0, rng, tmp_path / "sft", plots=False)
    held_out = toy.sample_prompts(200, random.Random(10_000))
    prompts = [p.text for p in toy.sample_prompts(512, rng)]
    before = greedy_reward(policy, tokenizer, held_out)
    judge = FunctionJudge(lambda prompt, completion: toy.reward(prompt, completion), name="hidden rule")
    cfg = load_config(overrides=["loss.name=dpo", "train.lr=5e-4", "train.batch_size=512", "train.scheduler=constant",
                                 "train.warmup_steps=0", "train.log_every=100000", "train.progress=false",
                                 f"output.dir={tmp_path / 'unused'}"], check_files=False)
    config = OnlineConfig(algorithm=TOY_OPTIONS, rounds=100, prompts_per_round=32, samples_per_prompt=8,
                          sampling=SamplingSettings(max_new_tokens=toy.MAX_LEN + 1), steps_per_round=2, seed=0,
                          win_rate_vs_reference=False)
    history = run_online(policy, tokenizer, prompts, judge, cfg, config, tmp_path / "run")
    after = greedy_reward(policy, tokenizer, held_out)
    curve = [round(mean(h["reward"] for h in history[i:i + 10]), 3) for i in range(0, len(history), 10)]
    print(f"\nppo: greedy hidden reward {before:.3f} -> {after:.3f}; sampled reward per 10 rounds {curve}")
    assert after >= 0.7, (before, after)
