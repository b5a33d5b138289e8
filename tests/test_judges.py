"""Judges of the online loop (``prefkit.online.judges``): shapes, golden values, reward-model and LM
judges on tiny in-process models."""

from __future__ import annotations

import math

import pytest
import torch

from prefkit.data.records import Message
from prefkit.errors import ConfigError
from prefkit.models.heads import GPMHead, RewardModelConfig, RewardOutput
from prefkit.models.reward import RewardModel
from prefkit.online.judges import (
    PAIRWISE_NOTE,
    POINTWISE_NOTE,
    FunctionJudge,
    Judge,
    LMJudge,
    RewardModelJudge,
    exact_match_judge,
    judge_scores,
    preference_matrix,
    preference_probs,
    regex_judge,
)
from prefkit.testing import tiny_llama, tiny_pairs, tiny_tokenizer


def one_line(err: pytest.ExceptionInfo) -> bool:
    return "\n" not in str(err.value) and len(str(err.value)) > 0


# -- shapes and function judges ---------------------------------------------------------------------------


def test_regex_judge_golden():
    judge = regex_judge(r"\b4\b")
    assert judge.pointwise and not judge.pairwise and isinstance(judge, Judge)
    chat = (Message("assistant", "It is 4."),)
    got = judge.score(["q"] * 4, ["The answer is 4.", "four", "44", chat])
    assert got.tolist() == [1.0, 0.0, 0.0, 1.0] and got.dtype == torch.float32
    full = regex_judge(r"\s*\d+\s*", fullmatch=True)
    assert full.score(["q"] * 3, [" 12 ", "12 apples", "7"]).tolist() == [1.0, 0.0, 1.0]


def test_exact_match_judge_golden():
    chat_prompt = (Message("user", "2+2?"),)
    judge = exact_match_judge({"capital of France?": "Paris", chat_prompt: ["4", "four"]})
    got = judge.score(["capital of France?", "capital of France?", "capital of France?", chat_prompt, chat_prompt],
                      ["  Paris\n", "paris", "Paris, France", "four", (Message("assistant", "4"),)])
    assert got.tolist() == [1.0, 0.0, 0.0, 1.0, 1.0]  # whitespace normalised, case kept
    with pytest.raises(ConfigError, match="no answer for prompt") as err:
        judge.score(["unknown?"], ["x"])
    assert one_line(err)
    by_fn = exact_match_judge(lambda p: str(len(p)), normalize=None)
    assert by_fn.score(["abc", "abcd"], ["3", " 4"]).tolist() == [1.0, 0.0]  # exact: " 4" != "4"


def test_preference_probs_pointwise_is_sigmoid_of_score_difference():
    judge = FunctionJudge(lambda p, c: len(c) / 3.0 - (p == "x"))
    prompts, a, b = ["x", "y", "z"], ["aaaa", "b", "cc"], ["a", "bbbbbbb", "dd"]
    prefs = preference_probs(judge, prompts, a, b)
    ra, rb = judge.score(prompts, a), judge.score(prompts, b)
    assert torch.equal(prefs.probs, torch.sigmoid(ra - rb))
    assert prefs.method == POINTWISE_NOTE == "pointwise judge: P(a≻b) = σ(r_a − r_b)"
    assert torch.equal(prefs.scores_a, ra) and torch.equal(prefs.scores_b, rb)
    assert math.isclose(float(prefs.probs[0]), 1 / (1 + math.exp(-1.0)), rel_tol=1e-6)  # 4/3 − 1/3 = 1


def test_pairwise_function_judge_and_wrong_shapes():
    judge = FunctionJudge(prefer_fn=lambda p, a, b: 0.9 if len(a) > len(b) else 0.1, name="longer")
    assert judge.pairwise and not judge.pointwise
    prefs = preference_probs(judge, ["q", "q"], ["long one", "s"], ["s", "long one"])
    assert prefs.method == PAIRWISE_NOTE and prefs.agreement is None
    assert torch.allclose(prefs.probs, torch.tensor([0.9, 0.1]))
    for ask in (lambda: judge.score(["q"], ["a"]), lambda: judge_scores(judge, ["q"], ["a"])):
        with pytest.raises(ConfigError, match="pairwise only") as err:
            ask()
        assert one_line(err)
    pointwise = FunctionJudge(lambda p, c: 1.0)
    with pytest.raises(ConfigError, match="pointwise only") as err:
        pointwise.prefer(["q"], ["a"], ["b"])
    assert one_line(err)
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        FunctionJudge(prefer_fn=lambda p, a, b: 2.0).prefer(["q"], ["a"], ["b"])
    with pytest.raises(ConfigError):
        FunctionJudge()
    with pytest.raises(ValueError, match="differ in length"):
        preference_probs(judge, ["q"], ["a", "b"], ["c"])


def test_preference_matrix_is_antisymmetric():
    judge = FunctionJudge(lambda p, c: float(len(c)))
    m, prefs = preference_matrix(judge, "q", ["a", "bbb", "cc"])
    r = torch.tensor([1.0, 3.0, 2.0])
    assert torch.allclose(m, torch.sigmoid(r[:, None] - r[None, :]).fill_diagonal_(0.5), atol=1e-6)
    assert torch.allclose(m + m.T, torch.ones(3, 3)) and prefs.probs.shape == (3,)


# -- reward-model judges -------------------------------------------------------------------------------------


def _reward_model(head: str) -> RewardModel:
    tok = tiny_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return RewardModel.from_backbone(tiny_llama(len(tok)), RewardModelConfig(head=head), tok)


def test_reward_model_judge_scalar_equals_model_score():
    model = _reward_model("scalar")
    pairs = tiny_pairs(5)
    prompts, a, b = [p.prompt for p in pairs], [p.chosen for p in pairs], [p.rejected for p in pairs]
    judge = RewardModelJudge(model, batch_size=2)
    assert judge.pointwise and judge.pairwise
    assert torch.allclose(judge.score(prompts, a), model.score(prompts, a), atol=1e-6)
    probs = judge.prefer(prompts, a, b)
    want = torch.sigmoid(model.score(prompts, a) - model.score(prompts, b))
    assert torch.allclose(probs, want, atol=1e-5)
    prefs = preference_probs(judge, prompts, a, b)
    assert prefs.method == PAIRWISE_NOTE and torch.allclose(prefs.probs, probs)


def test_reward_model_judge_scores_empty_completions_as_the_worst_of_the_call():
    """A policy that samples EOS first gives an empty completion: no record can hold it, so the judge gives
    it the lowest score of the call (or empty_score) and lets it lose every comparison with a real one."""
    model = _reward_model("scalar")
    pairs = tiny_pairs(3)
    prompts, a = [p.prompt for p in pairs], [p.chosen for p in pairs]
    judge = RewardModelJudge(model)
    real = model.score(prompts, a)
    got = judge.score(prompts + [prompts[0]], a + ["  "])
    assert torch.allclose(got[:3], real, atol=1e-6) and float(got[3]) == pytest.approx(float(real.min()))
    assert float(RewardModelJudge(model, empty_score=-5.0).score([prompts[0]], [""])[0]) == -5.0
    assert judge.score([prompts[0]], [""]).tolist() == [0.0]
    probs = judge.prefer(prompts, ["", a[1], ""], [a[0], "", " "])
    assert probs.tolist() == [0.0, 1.0, 0.5]
    mixed = judge.prefer(prompts[:2], [a[0], ""], [a[1], a[1]])
    assert float(mixed[1]) == 0.0
    assert torch.allclose(mixed[:1], judge.prefer(prompts[:1], a[:1], a[1:2]), atol=1e-6)


def test_gpm_judge_is_pairwise_only_and_antisymmetric():
    model = _reward_model("gpm")
    pairs = tiny_pairs(4)
    prompts, a, b = [p.prompt for p in pairs], [p.chosen for p in pairs], [p.rejected for p in pairs]
    judge = RewardModelJudge(model)
    assert judge.pairwise and not judge.pointwise
    ab, ba = judge.prefer(prompts, a, b), judge.prefer(prompts, b, a)
    assert torch.allclose(ab + ba, torch.ones(4), atol=1e-6)
    assert ((ab > 0) & (ab < 1)).all()
    with pytest.raises(ConfigError, match="pairwise only") as err:
        judge_scores(judge, prompts, a)
    assert one_line(err)
    with pytest.raises(ConfigError, match="pairwise only"):
        judge.score(prompts, a)


def test_gpm_head_expresses_rock_paper_scissors():
    """Embeddings at angles 0° (rock), 240° (scissors), 120° (paper): ``vᵢᵀRvⱼ = λ sin(θᵢ − θⱼ)``, so
    each beats the next around the cycle with logit ``4 sin 120° ≈ 3.46``."""
    head = GPMHead(3, dim=2, init_scale=4.0)
    angles = torch.tensor([0.0, 240.0, 120.0]) * math.pi / 180  # rock, scissors, paper
    with torch.no_grad():
        head.embed.weight.copy_(torch.stack([angles.cos(), angles.sin()]))  # (2, 3): feature i -> angle i
        head.embed.bias.zero_()
    with torch.no_grad():
        rock, scissors, paper = (head(torch.eye(3)[i:i + 1]) for i in range(3))

    def p(x: RewardOutput, y: RewardOutput) -> float:
        with torch.no_grad():
            return float(torch.sigmoid(head.preference_logits(x, y))[0])

    cycle = [p(rock, scissors), p(scissors, paper), p(paper, rock)]
    assert all(v > 0.5 for v in cycle)
    assert all(math.isclose(v, 1 / (1 + math.exp(-4 * math.sin(2 * math.pi / 3))), rel_tol=1e-5) for v in cycle)
    assert math.isclose(p(rock, scissors) + p(scissors, rock), 1.0, rel_tol=1e-6)


# -- LM judge ----------------------------------------------------------------------------------------------


def _hand_first_prob(judge: LMJudge, model, prompt, first, second) -> float:
    ids = judge.context_ids(judge.context(prompt, first, second))
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0, -1]  # (V,) unpadded, full forward
    la, lb = float(logits[judge.label_ids[0]]), float(logits[judge.label_ids[1]])
    return 1.0 / (1.0 + math.exp(lb - la))


@pytest.mark.parametrize("chat", [True, False])
def test_lm_judge_matches_hand_computation_in_both_orders(chat):
    tok = tiny_tokenizer() if chat else tiny_tokenizer(chat_template=None)
    model = tiny_llama(len(tok), seed=3)
    model.train()
    judge = LMJudge(model, tok, batch_size=3, **({} if chat else {"label_lead": ""}))
    assert judge.chat is chat and judge.pairwise and not judge.pointwise
    assert [tok.encode("A", add_special_tokens=False), tok.encode("B", add_special_tokens=False)] == [
        [judge.label_ids[0]], [judge.label_ids[1]]]
    pairs = tiny_pairs(4)
    prompts = [p.prompt for p in pairs[:3]] + [(Message("user", "Say hi."),)]
    a = [p.chosen for p in pairs[:3]] + [(Message("assistant", "Hi there!"),)]
    b = [p.rejected for p in pairs[:3]] + [(Message("assistant", "No."),)]
    v = judge.verdicts(prompts, a, b)
    assert model.training  # mode restored
    for i in range(4):
        p_ab = _hand_first_prob(judge, model, prompts[i], a[i], b[i])
        p_ba = _hand_first_prob(judge, model, prompts[i], b[i], a[i])
        assert math.isclose(float(v.first[i]), p_ab, abs_tol=1e-5)
        assert math.isclose(float(v.second[i]), p_ba, abs_tol=1e-5)
        assert math.isclose(float(v.probs[i]), 0.5 * (p_ab + 1 - p_ba), abs_tol=1e-5)
        assert bool(v.agree[i]) == ((p_ab > 0.5) == (p_ba < 0.5))
    assert 0.0 <= v.agreement <= 1.0 and judge.last_agreement == v.agreement
    reverse = judge.prefer(prompts, b, a)
    assert torch.allclose(v.probs + reverse, torch.ones(4), atol=1e-6)
    prefs = preference_probs(judge, prompts, a, b)
    assert prefs.method == PAIRWISE_NOTE and prefs.agreement == v.agreement
    assert torch.allclose(prefs.probs, v.probs, atol=1e-6)


def test_lm_judge_errors_are_one_line():
    plain = tiny_tokenizer(chat_template=None)
    model = tiny_llama(len(plain))
    with pytest.raises(ConfigError, match="not one token") as err:  # " A" is two tokens here
        LMJudge(model, plain)
    assert one_line(err)
    with pytest.raises(ConfigError, match="not one token") as err:
        LMJudge(model, tiny_tokenizer(), labels=("Response one", "Response two"))
    assert one_line(err)
    with pytest.raises(ConfigError, match="response_b") as err:
        LMJudge(model, tiny_tokenizer(), template="Q: {question} A: {response_a}")
    assert one_line(err)
    with pytest.raises(ConfigError, match="does not format") as err:
        LMJudge(model, tiny_tokenizer(), template="{response_a} {response_b} {oops}")
    assert one_line(err)
    judge = LMJudge(model, tiny_tokenizer())
    with pytest.raises(ConfigError, match="pairwise only") as err:
        judge_scores(judge, ["q"], ["a"])
    assert one_line(err)
