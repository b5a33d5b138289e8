"""The toy world (hidden reward, tokenizer, data) and the demo job (SFT warm-up then preference tuning)."""

from __future__ import annotations

import json
import random

import pytest

from prefkit.errors import ConfigError
from prefkit.toy import world
from prefkit.toy.demo import demo_config_path, is_toy_config, run_config, run_demo
from prefkit.train.config import load_config


def test_reward_golden() -> None:
    """Hand-worked rewards for prompts without a length (DEFAULT_LEN = 4, reward = good positions / 4).

    up 3 : "4 6 5 8": 3→4 up, 4→6 up, 6→5 down, 5→8 up -> 3/4.
    down 3 : "2 1 0 0": 3→2, 2→1, 1→0 down, 0→0 not -> 3/4.
    near 5 : "4 5 6 9": |4−5|, |5−5|, |6−5| <= 1, |9−5| = 4 -> 3/4.
    odd 2 : "1 3 4 7": parity differs from 2's for 1, 3, 7 -> 3/4.
    up 3 : "4 5 6" (too short): 3 good of 4 -> 3/4; "4 5 6 7 8" (one extra): 4/4 − 1/4 = 3/4.
    up 3 : "4 x 6 7": the chain stops at the non-digit -> 1/4.
    """
    assert world.reward("up 3 :", "4 6 5 8") == 0.75
    assert world.reward("down 3 :", "2 1 0 0") == 0.75
    assert world.reward("near 5 :", "4 5 6 9") == 0.75
    assert world.reward("odd 2 :", "1 3 4 7") == 0.75
    assert world.reward("up 3 :", "4 5 6") == 0.75
    assert world.reward("up 3 :", "4 5 6 7 8") == 0.75
    assert world.reward("up 3 :", "4 x 6 7") == 0.25
    assert world.reward("up 0 :", "1 2 3 4") == 1.0
    assert world.reward("up 0 :", "") == 0.0


def test_prompt_length_sets_the_response_length() -> None:
    """A prompt asks for n digits (``"up 3 6 :"``); reward = good positions / n.

    up 3 6 : "4 5 6 7 8 9": all 6 up -> 1; "4 5 6" (too short): 3/6; "4 5 6 7 8 9 9" (one extra): 6/6 − 1/6.
    odd 2 2 : "1 3": 2/2. "up 3 :" asks for DEFAULT_LEN = 4 digits.
    """
    assert world.parse_prompt("up 3 6 :") == world.Prompt("up", 3, 6)
    assert world.parse_prompt("up 3 :") == world.Prompt("up", 3, world.DEFAULT_LEN)
    assert world.Prompt("near", 1, 7).text == "near 1 7 :"
    assert world.reward("up 3 6 :", "4 5 6 7 8 9") == 1.0
    assert world.reward("up 3 6 :", "4 5 6") == 0.5
    assert world.reward("up 3 6 :", "4 5 6 7 8 9 9") == pytest.approx(5 / 6)
    assert world.reward("odd 2 2 :", "1 3") == 1.0
    for bad in ("up 3 0 :", "up 3 x :", "up 3 4 5 :", "sideways 3 4 :"):
        with pytest.raises(ValueError, match="not a toy prompt"):
            world.parse_prompt(bad)
    prompts = world.sample_prompts(400, random.Random(0))
    assert {p.length for p in prompts} == set(range(world.MIN_LEN, world.MAX_LEN + 1))
    rng = random.Random(1)
    assert all(len(world.sample_mixed(p, rng).split()) == p.length for p in prompts)


def test_tokenizer_round_trip() -> None:
    tok = world.build_tokenizer()
    ids = tok("up 3 :", add_special_tokens=False)["input_ids"] + tok("4 5 6 7")["input_ids"]
    assert tok.decode(ids) == "up 3 : 4 5 6 7"
    assert tok("up 3 :4 56")["input_ids"] == ids[:-1]  # punctuation and digits split singly
    assert tok.unk_token_id not in ids and tok.bos_token_id is None
    assert len(tok) == 3 + 1 + len(world.TASKS) + 10


def test_data_has_no_preference_but_pairs_do() -> None:
    rng = random.Random(0)
    pairs = world.preference_pairs(200, rng)
    assert all(p.metadata["chosen_reward"] > p.metadata["rejected_reward"] for p in pairs)
    assert all(p.strength == pytest.approx(p.metadata["chosen_reward"] - p.metadata["rejected_reward"])
               for p in pairs)
    prompt = world.Prompt("up", 2)
    good = sum(world.reward(prompt, world.sample_response(prompt, rng, good=True)) for _ in range(200))
    bad = sum(world.reward(prompt, world.sample_response(prompt, rng, good=False)) for _ in range(200))
    assert good > 2 * bad  # the two modes really differ...
    sft = world.sft_examples(400, rng)  # ...and the SFT data mix them half and half
    mean = sum(world.reward(p, r) for p, r in sft) / len(sft)
    assert 0.3 < mean < 0.6


def test_demo_config_is_a_run_config() -> None:
    cfg = load_config(demo_config_path())
    assert is_toy_config(cfg) and cfg.loss.name == "rpo"
    with pytest.raises(ConfigError, match="resume"):
        run_config(cfg, resume=True)
    other = load_config(overrides=["model.path=some/dir"], check_files=False)
    with pytest.raises(ConfigError, match="model.path: toy"):
        run_demo(config=other, show=False)


def test_demo_learns_the_hidden_preference(tmp_path) -> None:
    """The shortened demo (fixed seed): accuracy from chance to >= 0.9, generation reward up clearly."""
    result = run_demo(out_dir=tmp_path, seed=0, quick=True, progress=False, show=False)
    before, after = result.before, result.after
    assert before.implicit_reward_accuracy == 0.5  # policy == reference: every margin is 0
    assert abs(before.policy_accuracy - 0.5) < 0.1  # the SFT model has no preference
    assert before.kl == pytest.approx(0.0, abs=1e-4)
    assert after.implicit_reward_accuracy >= 0.9
    assert after.policy_accuracy >= 0.8
    assert after.greedy_reward >= before.greedy_reward + 0.3
    assert after.sampled_reward >= before.sampled_reward + 0.2
    assert 0.1 < after.kl < 5.0
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["after"]["implicit_reward_accuracy"] == after.implicit_reward_accuracy
    assert (tmp_path / "plots" / "before_after.png").is_file()
    assert (tmp_path / "preference" / "metrics.jsonl").is_file() and (tmp_path / "preference" / "model").is_dir()
