"""The online loop (``prefkit.online.loop``) on a verifiable one-token bandit."""

from __future__ import annotations

import json

import pytest
import torch

from prefkit.data import load
from prefkit.data.encode import Encoder
from prefkit.data.records import Pair, Ranking, Rating
from prefkit.errors import ConfigError
from prefkit.online import FunctionJudge, OnlineConfig, SamplingSettings, run_online
from prefkit.online.algorithms import build_records, same_size_rankings
from prefkit.online.loop import prompt_ids, round_prompts
from prefkit.testing import tiny_llama, tiny_tokenizer, token_world
from prefkit.train.config import load_config

PROMPTS = ["Question one:", "Tell me a word:", "Say something:"]
REWARDED = "all"  # the 2nd most likely next token of every prompt under the sharpened tiny model (p ≈ 0.1)


def _policy(tok):
    """The tiny Llama with its output layer scaled ×20, so each prompt's next-token distribution is peaked
    (top token p ≈ 0.2–0.25; untouched it is near uniform over 384 tokens)."""
    model = tiny_llama(len(tok))
    with torch.no_grad():
        model.lm_head.weight.mul_(20.0)
    return model


def _rewarded_prob(model, tok, run_config) -> float:
    """Exact mean over the prompts of P(first completion token = the rewarded token)."""
    enc = Encoder(tok, run_config.encode)
    target = tok(REWARDED, add_special_tokens=False)["input_ids"]
    assert len(target) == 1
    probs = []
    with torch.no_grad():
        for p in PROMPTS:
            logits = model(torch.tensor([prompt_ids(enc, p)])).logits[0, -1]
            probs.append(float(logits.softmax(-1)[target[0]]))
    return sum(probs) / len(probs)


def _judge():
    return FunctionJudge(lambda prompt, completion: 1.0 if completion == REWARDED else 0.0, name="bandit")


def _config(tmp_path, loss="dpo", **train):
    overrides = [f"loss.name={loss}", "loss.beta=0.1", "train.lr=1e-2", "train.batch_size=8",
                 "train.scheduler=constant", "train.max_grad_norm=null", "train.log_every=1000",
                 f"output.dir={tmp_path / 'unused'}", *(f"train.{k}={v}" for k, v in train.items())]
    return load_config(overrides=overrides, check_files=False)


def test_online_dpo_raises_the_rewarded_token(tmp_path):
    tok = tiny_tokenizer()
    policy = _policy(tok)
    cfg = _config(tmp_path, lr="1e-3")  # 1e-2 gets there in one round; 1e-3 shows the rounds add up
    before = _rewarded_prob(policy, tok, cfg)
    online = OnlineConfig(rounds=3, prompts_per_round=3, samples_per_prompt=8, pairs="all_pairs",
                          sampling=SamplingSettings(max_new_tokens=1), steps_per_round=1,
                          reference="refresh_every_k", refresh_k=2, seed=0)
    history = run_online(policy, tok, PROMPTS, _judge(), cfg, online, tmp_path / "run")
    after = _rewarded_prob(policy, tok, cfg)
    assert after > 2 * before, (before, after)  # seed 0: 0.110 -> 0.965
    assert len(history) == 3 and all(h["records"] > 0 for h in history)
    scores = [h["objective/scores"] for h in history]  # seed 0: 0.167, 0.542, 0.958
    assert scores[0] < scores[1] < scores[2], scores
    assert all(h["completions/clipped_ratio"] <= 1.0 and h["completions/mean_length"] <= 1.0 for h in history)
    # The reference was refreshed to the policy after round 1: KL 0 up to rounding. The sampler's log-probs
    # (incremental decoding) and the reference's (the packed engine) are two computations, equal to about
    # one float32 ulp, not bitwise (round 0, policy = reference: -1.3e-7); without the refresh it is 1.98.
    assert abs(history[2]["objective/kl"]) < 1e-6
    # every judged sample is on disk as a prefkit rating record: 3 prompts x 8 samples; those whose text is
    # empty (EOS or a special token first) are no valid record and are skipped as "empty"
    records = load(tmp_path / "run" / "rounds" / "0000.jsonl", on_error="skip")
    assert len(records) + records.skipped.get("empty", 0) == 24 and len(records) >= 12
    assert all(isinstance(r, Rating) for r in records)
    for r in records:
        assert r.prompt in PROMPTS and r.score == float(r.response == REWARDED)
        assert r.metadata["round"] == 0 and r.metadata["source"] == "policy" and r.metadata["group_size"] == 8
        assert r.metadata["sampling"]["max_new_tokens"] == 1 and r.metadata["score_kind"] == "scores"
        assert PROMPTS[r.metadata["prompt_index"]] == r.prompt and r.metadata["num_tokens"] == 1
    assert not records.warnings
    assert (tmp_path / "run" / "round-0002").is_dir()
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 3


def test_ranked_list_runs_one_round_of_a_list_loss(tmp_path):
    tok = tiny_tokenizer()
    policy = _policy(tok)
    judge = FunctionJudge(lambda prompt, completion: float(len(completion)), name="length")
    online = OnlineConfig(rounds=1, prompts_per_round=3, samples_per_prompt=6, pairs="ranked_list",
                          sampling=SamplingSettings(max_new_tokens=2), steps_per_round=1, seed=1)
    history = run_online(policy, tok, PROMPTS, judge, _config(tmp_path, "pl_dpo"), online, tmp_path / "run")
    assert history[0]["records"] > 0 and "train/loss" in history[0]
    rows = [json.loads(x) for x in (tmp_path / "run" / "rounds" / "0000.jsonl").read_text().splitlines()]
    assert len(rows) == 18 and all(r["metadata"]["group_size"] == 6 for r in rows)
    assert all(r["score"] == len(r["response"]) for r in rows)


def test_pairwise_judge_ranks_by_win_rate(tmp_path):
    tok = tiny_tokenizer()
    judge = FunctionJudge(prefer_fn=lambda p, a, b: 1.0 if a == REWARDED else 0.0 if b == REWARDED else 0.5)
    online = OnlineConfig(rounds=1, prompts_per_round=2, samples_per_prompt=4,
                          sampling=SamplingSettings(max_new_tokens=1), steps_per_round=1)
    history = run_online(_policy(tok), tok, PROMPTS, judge, _config(tmp_path), online, tmp_path / "run")
    records = load(tmp_path / "run" / "rounds" / "0000.jsonl", on_error="skip")
    assert len(records) + records.skipped.get("empty", 0) == 8
    for r in records:
        prefs = r.metadata["preferences"]  # P(this ≻ each sample of its group), itself ½
        assert r.metadata["score_kind"] == "win_rates" and len(prefs) == 4
        assert prefs[r.metadata["sample_index"]] == 0.5
        assert r.score == pytest.approx((sum(prefs) - 0.5) / 3)
    assert 0.0 <= history[0]["objective/scores"] <= 1.0
    assert 0.0 <= history[0]["objective/win_rate_vs_reference"] <= 1.0


def test_record_building_skips_ties_and_orders_best_first():
    gen = torch.Generator().manual_seed(0)
    texts, scores = ["a", "b", "c", "d"], torch.tensor([0.0, 2.0, 1.0, 2.0])
    recs, ties = build_records("p", texts, scores, "all_pairs", gen)
    assert ties == 1 and len(recs) == 5 and all(isinstance(r, Pair) for r in recs)
    assert ("b", "d") not in {(r.chosen, r.rejected) for r in recs}
    (best,), _ = build_records("p", texts, scores, "best_vs_worst", gen)
    assert best.chosen == "b" and best.rejected == "a"
    (rank,), _ = build_records("p", texts, scores, "ranked_list", gen)
    assert isinstance(rank, Ranking) and rank.responses == ("b", "c", "a")  # one per score level, best first
    assert build_records("p", ["x", "x", " "], torch.tensor([1.0, 0.0, 2.0]), "all_pairs", gen)[0] == []
    assert build_records("p", ["x", "y"], torch.tensor([1.0, 1.0]), "best_vs_worst", gen) == ([], 1)
    short = Ranking("q", ("u", "v"), scores=(1.0, 0.0))
    cut = same_size_rankings([rank, short])
    assert [c.responses for c in cut] == [("b", "a"), ("u", "v")]


def test_prompt_order_cycles_with_a_seeded_order():
    first = round_prompts(5, 5, 0, seed=3)
    assert sorted(first) == list(range(5))
    assert round_prompts(5, 2, 0, 3) + round_prompts(5, 2, 1, 3) == first[:4]
    assert round_prompts(5, 2, 0, 3) == round_prompts(5, 2, 0, 3)


@pytest.mark.parametrize("bad", [{"samples_per_prompt": 1}, {"rounds": 0}, {"pairs": "best"},
                                 {"reference": "every_k"}, {"epochs_per_round": 0}, {"refresh_k": 0}])
def test_bad_online_config_is_one_line(bad):
    with pytest.raises(ConfigError):
        OnlineConfig(**bad)
    with pytest.raises(ConfigError, match="nearest|did you mean|Did you mean|unknown"):
        OnlineConfig.from_dict({"round": 1})


def test_wrong_loss_kind_and_used_folder_are_refused(tmp_path):
    tok = tiny_tokenizer()
    online = OnlineConfig(pairs="ranked_list", sampling=SamplingSettings(max_new_tokens=1))
    with pytest.raises(ConfigError, match="list loss"):
        run_online(_policy(tok), tok, PROMPTS, _judge(), _config(tmp_path), online, tmp_path / "a")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "x").write_text("x")
    with pytest.raises(ConfigError, match="not empty"):
        run_online(_policy(tok), tok, PROMPTS, _judge(), _config(tmp_path), OnlineConfig(), tmp_path / "b")


def test_round_metrics_match_the_exact_kl_entropy_and_win_rate_on_the_token_world(tmp_path):
    """Round 0 samples the reference itself (KL 0, entropy H(p0), win rate ½); round 1 samples the policy p1
    that round 0 trained, and its estimates lie within 4 standard errors of the exact values."""
    ref_probs = [0.4, 0.2, 0.15, 0.1, 0.1, 0.05]
    runs = {}
    for rounds in (1, 2):
        world = token_world(6, ref_probs)
        judge = FunctionJudge(lambda p, c, w=world: float(w.actions.index(c)), name="index")
        cfg = load_config(overrides=["loss.name=dpo", "loss.beta=0.1", "train.lr=0.3", "train.batch_size=16",
                                     "train.scheduler=constant", "encode.add_eos=false", "train.progress=false",
                                     f"output.dir={tmp_path / 'unused'}"], check_files=False)
        online = OnlineConfig(rounds=rounds, prompts_per_round=64, samples_per_prompt=8, steps_per_round=3,
                              sampling=SamplingSettings(max_new_tokens=1), seed=3)
        history = run_online(world.model, world.tokenizer, [world.prompt], judge, cfg, online,
                             tmp_path / f"run{rounds}")
        runs[rounds] = (history, world.probs().double())
    p0 = torch.tensor(ref_probs, dtype=torch.float64)
    p1 = runs[1][1]
    m0, m1 = runs[2][0]
    assert abs(m0["objective/kl"]) < 1e-5
    n = 64 * 8
    for m, p in ((m0, p0), (m1, p1)):
        logp = p.log()
        entropy, se = float(-(p * logp).sum()), float((p * logp**2).sum() - (p * logp).sum() ** 2) ** 0.5 / n**0.5
        assert abs(m["objective/entropy"] - entropy) < 4 * se + 1e-4, (m["objective/entropy"], entropy, se)
        assert m["completions/clipped_ratio"] == 1.0 and m["val/contain_eos_token"] == 0.0
        assert m["completions/mean_length"] == 1.0 and m["beta"] == 0.1
        assert m["objective/non_score_reward"] == pytest.approx(-0.1 * m["objective/kl"])
        assert m["objective/rlhf_reward"] == pytest.approx(m["objective/scores"] - 0.1 * m["objective/kl"])
    ratio = (p1 / p0).log()
    kl, kl_se = float((p1 * ratio).sum()), float((p1 * ratio**2).sum() - (p1 * ratio).sum() ** 2) ** 0.5 / n**0.5
    assert kl > 0.05 and abs(m1["objective/kl"] - kl) < 4 * kl_se, (m1["objective/kl"], kl, kl_se)
    idx = torch.arange(6)
    beats = (idx[:, None] > idx[None, :]).double() + 0.5 * (idx[:, None] == idx[None, :]).double()
    for m, p in ((m0, p0), (m1, p1)):
        exact = float(p @ beats @ p0)
        # 64 reference samples, each compared with 8 policy samples: the SE is at most ½/√64
        assert abs(m["objective/win_rate_vs_reference"] - exact) < 4 * 0.5 / 8, (m, exact)
    assert m1["objective/win_rate_vs_reference"] > 0.6


def test_trainer_notices_go_to_the_log_not_stderr(tmp_path, capfd):
    tok = tiny_tokenizer()
    online = OnlineConfig(rounds=2, prompts_per_round=2, samples_per_prompt=4,
                          sampling=SamplingSettings(max_new_tokens=1), steps_per_round=1)
    run_online(_policy(tok), tok, PROMPTS, _judge(), _config(tmp_path), online, tmp_path / "run")
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all("online round" in line for line in err), err
    assert "encoded" in (tmp_path / "run" / "log.txt").read_text()
