"""``prefkit.online.rewards``: several rewards as one pointwise judge (weights, Lagrange constraints, PAR,
whitening, clipping), KL as a reward penalty, and the ``judge.components`` config section."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from prefkit.errors import ConfigError
from prefkit.online import FunctionJudge, judge_scores, run_online
from prefkit.online.jobs import build_judge, load_job
from prefkit.online.rewards import RewardComponent, RewardMix, RoundHooks, kl_penalized_rewards
from prefkit.testing import token_world


def table(name: str, values: dict[str, float]) -> FunctionJudge:
    """A pointwise judge that looks the completion up in ``values``."""
    return FunctionJudge(lambda prompt, completion: values[completion], name=name)


HELPFUL = {"a": 1.0, "b": 2.0, "c": 4.0, "d": 0.0}
LENGTH = {"a": 1.0, "b": 0.0, "c": 1.0, "d": 1.0}


def test_fixed_weights_are_a_weighted_sum_by_hand() -> None:
    """helpful×2 + length×(−0.5): a → 2·1 − 0.5·1 = 1.5, b → 2·2 − 0 = 4, c → 8 − 0.5 = 7.5; no weight is 1."""
    mix = RewardMix([RewardComponent("helpful", table("h", HELPFUL), weight=2.0),
                     RewardComponent("length", table("l", LENGTH), weight=-0.5)])
    assert mix.pointwise and not mix.pairwise and isinstance(mix, RoundHooks)
    assert judge_scores(mix, ["p"] * 3, ["a", "b", "c"]).tolist() == [1.5, 4.0, 7.5]
    assert mix.last_components.tolist() == [[1.0, 1.0], [2.0, 0.0], [4.0, 1.0]]
    plain = RewardMix([RewardComponent("helpful", table("h", HELPFUL)), RewardComponent("length", table("l", LENGTH))])
    assert plain.score(["p", "p"], ["a", "c"]).tolist() == [2.0, 5.0]
    assert "helpful=h×2" in mix.name and "length=l×-0.5" in mix.name


def _constrained(lr: float = 0.1) -> RewardMix:
    return RewardMix([RewardComponent("helpful", table("h", HELPFUL)),
                      RewardComponent("length", table("l", LENGTH), target=0.5, sense="le"),
                      RewardComponent("floor", table("f", HELPFUL), target=2.0, sense="ge", multiplier=0.2)],
                     lagrange_lr=lr)


def test_round_hooks_count_only_the_rounds_scores() -> None:
    """Round 0 (a, b, c, c; next test) gives λ_len = 0.025, λ_floor = 0.125. Scores after end_round() or inside uncounted()
    (a win rate's reference samples) do not count; begin_round of the same round changes nothing.
    Round 1 uses its λ: c → 4 − 0.025·1 + 0.125·4 = 4.475; its counted samples c, b give length mean 0.5 and
    floor mean 3 → λ_len = 0.025 + 0.1·0 = 0.025, λ_floor = 0.125 + 0.1·(2 − 3) = 0.025. Round 2: d, d →
    λ_len = 0.025 + 0.1·0.5 = 0.075, λ_floor = 0.025 + 0.1·2 = 0.225; round 3 counts nothing: λ unchanged.
    """
    mix = _constrained()
    mix.begin_round(0)
    mix.score(["p"] * 4, ["a", "b", "c", "c"])
    mix.end_round()
    mix.score(["p"], ["d"])  # after end_round: not counted
    assert mix.metrics()["lagrange/length"] == 0.0 and mix.metrics()["lagrange/floor"] == pytest.approx(0.2)
    mix.begin_round(1)
    assert mix.multipliers.tolist() == pytest.approx([0.025, 0.125])
    assert mix.score(["p"], ["c"]).tolist() == pytest.approx([4.475])
    mix.begin_round(1)  # the same round again changes nothing
    with mix.uncounted():
        mix.score(["p"], ["d"])
    mix.score(["p"], ["b"])
    mix.begin_round(2)
    assert mix.multipliers.tolist() == pytest.approx([0.025, 0.025])
    mix.score(["p"] * 2, ["d", "d"])
    mix.begin_round(3)
    assert mix.multipliers.tolist() == pytest.approx([0.025 + 0.05, 0.025 + 0.2])
    mix.begin_round(4)  # nothing counted in round 3: λ unchanged
    assert mix.multipliers.tolist() == pytest.approx([0.075, 0.225])
    with pytest.raises(ConfigError, match="rounds only go forward"):
        mix.begin_round(2)


def test_multipliers_over_three_rounds_by_hand() -> None:
    """Driven as the loop would: begin_round(r), the round's scores, end_round(); λ updates when round r + 1
    begins, from round r's component means. η = 0.1, "length" ≤ 0.5 from λ = 0, "floor" (helpful) ≥ 2 from 0.2.

    round 0: samples a, b, c, c: length mean (1+0+1+1)/4 = 0.75, floor (helpful) mean (1+2+4+4)/4 = 2.75
             → λ_len = max(0, 0 + 0.1·(0.75 − 0.5)) = 0.025;  λ_floor = max(0, 0.2 + 0.1·(2 − 2.75)) = 0.125
    round 1: samples b, b: length 0, floor 2 → λ_len = max(0, 0.025 + 0.1·(0 − 0.5)) = 0 (projected);
             λ_floor = 0.125 + 0.1·(2 − 2) = 0.125
    round 2: samples d, d: length 1, floor 0 → λ_len = 0 + 0.1·0.5 = 0.05; λ_floor = 0.125 + 0.1·2 = 0.325
    The λ in use (``lagrange/length``) is 0, 0.025, 0 in rounds 0, 1, 2.
    """
    mix = _constrained()
    lams = []
    for r, samples in enumerate((["a", "b", "c", "c"], ["b", "b"], ["d", "d"])):
        mix.begin_round(r)
        mix.score(["p"] * len(samples), samples)
        mix.end_round()
        lams.append(mix.metrics()["lagrange/length"])
    mix.begin_round(3)
    assert lams == pytest.approx([0.0, 0.025, 0.0])
    assert mix.multipliers.tolist() == pytest.approx([0.05, 0.325])


def test_state_dict_round_trips_through_json_and_resumes_the_lazy_update() -> None:
    mix = _constrained()
    mix.begin_round(0)
    mix.score(["p"] * 4, ["a", "b", "c", "c"])
    mix.begin_round(1)
    mix.score(["p"] * 2, ["b", "c"])
    mix.end_round()
    saved = json.loads(json.dumps(mix.state_dict()))  # what a checkpoint's state.json would hold
    assert saved["round"] == 1 and set(saved["multipliers"]) == {"length", "floor"}
    resumed = _constrained()
    resumed.load_state_dict(saved)
    assert resumed.state_dict() == mix.state_dict() and resumed.metrics() == mix.metrics()
    mix.begin_round(2)
    resumed.begin_round(2)
    assert resumed.multipliers.tolist() == mix.multipliers.tolist()
    assert resumed.score(["p"], ["c"]).tolist() == mix.score(["p"], ["c"]).tolist()
    other = RewardMix([RewardComponent("helpful", table("h", HELPFUL))])
    with pytest.raises(ConfigError, match="differ from this mix"):
        other.load_state_dict(saved)


def test_metrics_keys_and_values() -> None:
    """Over the round's counted samples a, b, c: helpful 1, 2, 4 → mean 7/3, std sqrt(((4/3)² + (1/3)² + (5/3)²)/2)."""
    mix = _constrained()
    assert set(mix.metrics()) == {"lagrange/length", "lagrange/floor"}  # nothing scored yet
    mix.score(["p"] * 3, ["a", "b", "c"])
    m = mix.metrics()
    assert set(m) == {f"rewards/{n}/{s}" for n in ("helpful", "length", "floor") for s in ("mean", "std")} | {
        "lagrange/length", "lagrange/floor"}
    assert m["rewards/helpful/mean"] == pytest.approx(7 / 3)
    assert m["rewards/helpful/std"] == pytest.approx(math.sqrt((16 / 9 + 1 / 9 + 25 / 9) / 2))
    assert m["rewards/helpful/std"] == pytest.approx(float(torch.tensor([1.0, 2.0, 4.0]).std()))
    assert m["rewards/length/mean"] == pytest.approx(2 / 3) and m["lagrange/floor"] == pytest.approx(0.2)


def test_par_shaping_by_hand() -> None:
    """r = helpful + length; the reference of p is b (r_ref = 2), of q is d (r_ref = 1):
    a|p → σ(2 − 2) = 0.5, c|p → σ(5 − 2) = σ(3), a|q → σ(2 − 1) = σ(1). References are not counted."""
    parts = [RewardComponent("helpful", table("h", HELPFUL)), RewardComponent("length", table("l", LENGTH))]
    mix = RewardMix(parts, par=True, references={"p": "b"})
    mix.set_references(["q"], ["d"])
    assert mix.metrics() == {}
    got = mix.score(["p", "p", "q"], ["a", "c", "a"])
    assert got.tolist() == pytest.approx([0.5, 1 / (1 + math.exp(-3)), 1 / (1 + math.exp(-1))])
    assert mix.metrics()["rewards/helpful/mean"] == pytest.approx(2.0)
    with pytest.raises(ConfigError, match="PAR needs a reference completion for prompt 'z'"):
        mix.score(["z"], ["a"])
    with pytest.raises(ConfigError, match="par=True"):
        RewardMix(parts, references={"p": "b"})


def test_whitening_then_clipping() -> None:
    """helpful of a, b, c = 1, 2, 4: mean 7/3, std sqrt(7/3); whitened (r − 7/3)/sqrt(7/3) then clipped to ±1."""
    mix = RewardMix([RewardComponent("helpful", table("h", HELPFUL))], whiten=True, clip=(-1.0, 1.0))
    s = math.sqrt(7 / 3)
    assert mix.score(["p"] * 3, ["a", "b", "c"]).tolist() == pytest.approx([-(4 / 3) / s, -(1 / 3) / s, 1.0])
    assert mix.score(["p"], ["c"]).tolist() == [1.0]  # one sample: not whitened, clipped
    with pytest.raises(ConfigError, match="above high"):
        RewardMix([RewardComponent("helpful", table("h", HELPFUL))], clip=(1.0, -1.0))


def test_a_violated_constraint_raises_its_multiplier_until_the_mix_prefers_samples_that_satisfy_it() -> None:
    """helpful = length = len/10 of "x"·len. Constraint: mean length ≤ 0.3. The samples (lengths 1, 3, 8) keep
    violating it (mean 0.4), so λ grows by η·0.1 = 0.5 per round; once λ > 1 the mix (1 − λ)·len/10 prefers
    the shortest sample, which satisfies the constraint."""
    texts = ["x", "xxx", "xxxxxxxx"]
    mix = RewardMix([RewardComponent("helpful", FunctionJudge(_tenth, name="h")),
                     RewardComponent("length", FunctionJudge(_tenth, name="l"), target=0.3, sense="le")],
                    lagrange_lr=5.0)
    best, lams = [], []
    for r in range(4):
        mix.begin_round(r)
        rewards = mix.score(["p"] * 3, texts)
        best.append(texts[int(rewards.argmax())])
        lams.append(float(mix.multipliers[0]))
        mix.end_round()
    assert lams == pytest.approx([0.0, 0.5, 1.0, 1.5])
    assert best[0] == "xxxxxxxx" and best[-1] == "x" and len(best[-1]) / 10 <= 0.3


def _tenth(prompt: str, completion: str) -> float:
    return len(completion) / 10


def test_kl_penalized_rewards_by_hand() -> None:
    """r − β·(log π − log π_ref): 1 − 0.1·(−2 + 3) = 0.9; 0 − 0.1·(−5 + 4) = 0.1."""
    got = kl_penalized_rewards(torch.tensor([1.0, 0.0]), torch.tensor([-2.0, -5.0]), torch.tensor([-3.0, -4.0]),
                               beta=0.1)
    assert got.tolist() == pytest.approx([0.9, 0.1])
    with pytest.raises(ConfigError):
        kl_penalized_rewards(torch.zeros(2), torch.zeros(2), torch.zeros(2), beta=-1.0)


def test_component_mistakes_are_one_line_errors() -> None:
    h = table("h", HELPFUL)
    for parts, match in (([RewardComponent("a", h), RewardComponent("a", h)], "used twice"),
                         ([RewardComponent("a", h, weight=1.0, target=0.5)], "drop weight"),
                         ([RewardComponent("a", h, multiplier=1.0)], "applies to a constrained"),
                         ([RewardComponent("a/b", h)], "without '/'"),
                         ([RewardComponent("a", FunctionJudge(prefer_fn=lambda p, a, b: 0.5))], "pairwise only")):
        with pytest.raises(ConfigError, match=match):
            RewardMix(parts)


# -- the judge: section of an online job ---------------------------------------------------------------------

JUDGES = ("def helpful(prompt, completion):\n    return float(completion[1:])\n\n"
          "def length(prompt, completion):\n    return 1.0 if completion in ('a4', 'a5') else 0.0\n")


@pytest.fixture()
def job_folder(tmp_path: Path) -> Path:
    world = token_world(6)
    world.model.save_pretrained(tmp_path / "world")
    world.tokenizer.save_pretrained(tmp_path / "world")
    (tmp_path / "prompts.txt").write_text(world.prompt + "\n")
    (tmp_path / "online_rewards_judges.py").write_text(JUDGES)
    config = {
        "model": {"path": str(tmp_path / "world")},
        "loss": {"name": "dpo", "beta": 0.1},
        "train": {"lr": 0.1, "batch_size": 4, "progress": False},
        "encode": {"add_eos": False},
        "output": {"dir": str(tmp_path / "unused")},
        "online": {"rounds": 1, "prompts_per_round": 4, "samples_per_prompt": 4, "steps_per_round": 1,
                   "sampling": {"max_new_tokens": 1}},
        "prompts": {"path": str(tmp_path / "prompts.txt")},
        "judge": {"components": [{"name": "helpful", "function": "online_rewards_judges:helpful", "weight": 1.0},
                                 {"name": "length", "function": "online_rewards_judges:length", "target": 0.5,
                                  "sense": "le", "multiplier": 2.0}],
                  "lagrange_lr": 0.05, "whiten": False, "clip": [-5, 5]},
    }
    (tmp_path / "online.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return tmp_path


def test_a_config_with_two_function_components_runs_a_round_on_the_token_world(job_folder: Path) -> None:
    """The mix from YAML: index − 2·[a4 or a5], clipped to [−5, 5]; every logged score is that."""
    job = load_job(job_folder / "online.yaml")
    mix = build_judge(job.judge, job.folder)
    assert isinstance(mix, RewardMix) and mix.names == ("helpful", "length") and mix.constrained == ("length",)
    assert mix.clip == (-5.0, 5.0) and mix.lagrange_lr == 0.05
    world = token_world(6)
    out = job_folder / "run"
    history = run_online(world.model, world.tokenizer, [world.prompt], mix, job.run, job.online, out)
    assert len(history) == 1
    rows = [json.loads(x) for x in (out / "rounds" / "0000.jsonl").read_text().splitlines()]
    assert len(rows) == 16
    for row in rows:
        index = int(row["response"][1:])
        assert row["score"] == pytest.approx(index - 2.0 * (index >= 4))
    m = history[0]  # the loop drives the round hooks and logs the mix's metrics with the round's
    assert {"rewards/helpful/mean", "rewards/length/std", "lagrange/length"} <= set(m)
    assert m["lagrange/length"] == 2.0  # the multiplier used in round 0 (updated when round 1 begins)
    lengths = [float(int(r["response"][1:]) >= 4) for r in rows]
    assert m["rewards/length/mean"] == pytest.approx(sum(lengths) / len(lengths))


def test_the_loop_updates_the_multipliers_per_round_and_resumes_them_exactly(job_folder: Path) -> None:
    """Four rounds through run_online: λ of round r+1 = max(0, λ_r + 0.05·(mean length cost of round r − 0.5))
    (sense le), read from the logged metrics; a run stopped after two rounds and resumed gives the same
    multipliers, scores and weights as the straight run."""
    job = load_job(job_folder / "online.yaml", ["online.rounds=4"])

    def run(out: Path, rounds: int, resume: bool = False):
        world = token_world(6)
        cfg = job.online if rounds == 4 else type(job.online)(**{**job.online.__dict__, "rounds": rounds})
        mix = build_judge(job.judge, job.folder)  # a fresh mix: a resume restores its multipliers
        history = run_online(world.model, world.tokenizer, [world.prompt], mix, job.run, cfg, out, resume=resume)
        return history, world.model.lm_head.weight.detach().clone()

    straight, w_straight = run(job_folder / "straight", 4)
    lam = [h["lagrange/length"] for h in straight]
    assert lam[0] == 2.0 and len(set(lam)) > 1, lam
    for r in range(3):
        expected = max(0.0, lam[r] + 0.05 * (straight[r]["rewards/length/mean"] - 0.5))
        assert lam[r + 1] == pytest.approx(expected, abs=1e-6), (r, lam)
    run(job_folder / "split", 2)
    resumed, w_resumed = run(job_folder / "split", 4, resume=True)
    assert torch.equal(w_straight, w_resumed)
    keys = ("lagrange/length", "rewards/length/mean", "objective/scores")
    assert [[h[k] for k in keys] for h in resumed] == [[h[k] for k in keys] for h in straight]


@pytest.mark.parametrize(("judge", "match"), [
    ({"components": [{"name": "a", "functon": "m:f"}]}, r"judge.components\[0\] option 'functon' \(did you mean 'function'"),
    ({"components": [{"name": "a", "function": "m:f", "weight": 1, "target": 0}]}, "drop weight"),
    ({"components": [{"name": "a", "function": "m:f"}], "lagrange_rl": 0.1}, "did you mean 'lagrange_lr'"),
    ({"function": "m:f", "whiten": True}, "judge.whiten applies to judge.components only"),
    ({"components": [{"name": "a", "function": "m:f"}, {"name": "a", "regex": "x"}]}, "used twice"),
])
def test_judge_components_mistakes_are_one_line_errors(job_folder: Path, judge: dict, match: str) -> None:
    data = yaml.safe_load((job_folder / "online.yaml").read_text())
    data["judge"] = judge
    (job_folder / "bad.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=match) as err:
        load_job(job_folder / "bad.yaml")
    assert "\n" not in str(err.value)
