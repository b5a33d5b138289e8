"""Toy truths for the reward-model heads, on feature vectors (seconds on CPU).

Each test plants a known preference structure, fits a head with the registry's reward losses
(``prefkit.losses.LOSSES``) by full-batch Adam, and checks that the planted quantity is recovered:

- rock-paper-scissors (cyclic) preferences: a Bradley–Terry scalar head stays at chance, GPM learns it;
- a planted tie probability (Rao–Kupper and Davidson) is recovered within 0.05;
- planted multi-objective attribute weights are recovered (cosine >= 0.95).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from prefkit.losses import LOSSES
from prefkit.losses.reward import PairScores, RatingScores
from prefkit.models.reward import GPMHead, MultiObjectiveHead, RewardOutput, ScalarHead, TieHead

H = 8  # feature size


@pytest.fixture(autouse=True)
def one_thread():
    """These are tiny full-batch fits: one torch thread is several times faster than two."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _fit(params, loss_fn, steps: int, lr: float) -> None:
    opt = torch.optim.Adam(params, lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        loss_fn().backward()
        opt.step()


# -- rock-paper-scissors ----------------------------------------------------------------------------


def _rps(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """n cyclic pairs: (winner features, loser features), each (n, H).

    Classes rock/paper/scissors sit at 0°, 120°, 240° in the first two feature dimensions (unit
    circle) plus N(0, 0.15²) noise in all H dimensions. Paper beats rock, scissors beat paper, rock
    beats scissors. The data are symmetric under a 120° rotation of the class plane, so the best
    linear scalar reward has no component in that plane and predicts nothing (chance).
    """
    angles = torch.tensor([0.0, 2 * math.pi / 3, 4 * math.pi / 3])
    centers = torch.zeros(3, H)
    centers[:, 0], centers[:, 1] = angles.cos(), angles.sin()
    loser = torch.randint(0, 3, (n,), generator=gen)
    winner = (loser + 1) % 3  # paper (1) beats rock (0), scissors (2) beat paper, rock beats scissors
    noise = 0.15 * torch.randn(2, n, H, generator=gen)
    return centers[winner] + noise[0], centers[loser] + noise[1]


def test_rock_paper_scissors_bt_at_chance_gpm_learns_cycle():
    """BT (scalar head) held-out accuracy <= 0.55; GPM (k = 1, 2-d embeddings) >= 0.95."""
    gen = torch.Generator().manual_seed(0)
    train_w, train_l = _rps(600, gen)
    test_w, test_l = _rps(3000, gen)
    bt_loss = LOSSES["bradley_terry"].fn
    torch.manual_seed(0)

    scalar = ScalarHead(H)
    _fit(scalar.parameters(), lambda: bt_loss(PairScores(scalar(train_w).rewards,
                                                         scalar(train_l).rewards)).losses.mean(),
         steps=300, lr=0.05)
    gpm = GPMHead(H, dim=2)
    _fit(gpm.parameters(), lambda: bt_loss(PairScores(*_half(gpm, train_w, train_l))).losses.mean(),
         steps=300, lr=0.05)

    with torch.no_grad():
        bt_acc = (scalar.preference_logits(scalar(test_w), scalar(test_l)) > 0).float().mean().item()
        gpm_acc = (gpm.preference_logits(gpm(test_w), gpm(test_l)) > 0).float().mean().item()
    assert bt_acc <= 0.55, bt_acc
    assert gpm_acc >= 0.95, gpm_acc


def _half(gpm: GPMHead, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    s = gpm.preference_logits(gpm(a), gpm(b))  # (B,) GPM logit as chosen − rejected = s
    return s / 2, -s / 2


def test_gpm_is_antisymmetric_and_represents_a_cycle_exactly():
    """s(a ≻ b) = −s(b ≻ a), s(a ≻ a) = 0; with v at 0°, 120°, 240° every cyclic logit is λ·sin 120°."""
    gpm = GPMHead(2, dim=2, init_scale=1.0)
    with torch.no_grad():
        gpm.embed.weight.copy_(torch.eye(2))
        gpm.embed.bias.zero_()
    angles = torch.tensor([0.0, 2 * math.pi / 3, 4 * math.pi / 3])
    v = gpm(torch.stack([angles.cos(), angles.sin()], -1))
    ahead = v.select(torch.tensor([1, 2, 0]))  # paper, scissors, rock
    behind = v.select(torch.tensor([0, 1, 2]))  # rock, paper, scissors
    s = gpm.preference_logits(ahead, behind)
    assert torch.allclose(s, torch.full((3,), math.sin(2 * math.pi / 3)), atol=1e-6)
    assert torch.allclose(gpm.preference_logits(behind, ahead), -s)
    assert torch.allclose(gpm.preference_logits(v, v), torch.zeros(3))


# -- ties ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tie_model", ["rao_kupper", "davidson"])
def test_tie_head_recovers_planted_tie_probability(tie_model):
    """Outcomes sampled from the tie model with P(tie | equal rewards) = 0.30; the fit is within 0.05.

    Rao–Kupper: P(tie | Δ = 0) = (θ − 1)/(θ + 1), so θ* = 1.3/0.7; Davidson: ν/(2 + ν), so ν* = 0.6/0.7.
    """
    p_tie = 0.30
    gen = torch.Generator().manual_seed(1)
    n = 4000
    u = torch.randn(H, generator=gen)
    u = u / u.norm()  # true reward r(x) = u·x with x ~ N(0, I): reward differences have sd √2
    a, b = torch.randn(n, H, generator=gen), torch.randn(n, H, generator=gen)
    planted = TieHead(H, tie_model)
    with torch.no_grad():
        planted.score.weight.copy_(u[None])
        planted.score.bias.zero_()
        planted.tie_param.copy_(_inverse_tie_param(tie_model, p_tie))
        assert abs(planted.tie_probability(0.0).item() - p_tie) < 1e-5
        win, tie, _ = planted.outcome_probs(planted(a), planted(b))
    draw = torch.rand(n, generator=gen)
    a_wins, is_tie = draw < win, (draw >= win) & (draw < win + tie)
    chosen = torch.where(a_wins[:, None], a, b)  # a tie keeps (a, b) in order; the label says tie
    rejected = torch.where(a_wins[:, None], b, a)

    torch.manual_seed(0)
    head = TieHead(H, tie_model)
    loss_fn = LOSSES[tie_model].fn
    _fit(head.parameters(), lambda: loss_fn(PairScores(head(chosen).rewards, head(rejected).rewards),
                                            ties=is_tie, **head.loss_params()).losses.mean(),
         steps=400, lr=0.05)
    recovered = head.tie_probability(0.0).item()
    assert abs(recovered - p_tie) < 0.05, (recovered, p_tie)


def _inverse_tie_param(tie_model: str, p_tie: float) -> torch.Tensor:
    """The raw parameter t giving P(tie | Δ = 0) = p_tie (see TieHead.loss_params)."""
    if tie_model == "rao_kupper":
        log_theta = math.log((1 + p_tie) / (1 - p_tie))  # θ = (1 + p)/(1 − p)
        return torch.tensor(math.log(math.expm1(log_theta)))  # softplus⁻¹
    return torch.tensor(math.log(2 * p_tie / (1 - p_tie)))  # ν = 2p/(1 − p)


# -- multi-objective -------------------------------------------------------------------------------------


def test_multi_objective_head_recovers_planted_weights():
    """Attributes a = U x (3 attributes); preferences from BT on r = 4·(w*·a), w* = (0.6, 0.3, 0.1).

    Stage 1 fits the attribute layer to noisy attribute ratings (rm_multi_regression, 20% of the
    ratings missing); stage 2 freezes it and fits the learned gating on pairs (bradley_terry).
    The learned weights softmax(ℓ) have cosine >= 0.95 with w*.
    """
    gen = torch.Generator().manual_seed(2)
    w_star = torch.tensor([0.6, 0.3, 0.1])
    u = torch.randn(3, H, generator=gen)
    x = torch.randn(2000, H, generator=gen)
    ratings = x @ u.T + 0.1 * torch.randn(2000, 3, generator=gen)  # (N, A)
    ratings[torch.rand(2000, 3, generator=gen) < 0.2] = math.nan
    torch.manual_seed(0)
    head = MultiObjectiveHead(H, 3, gating="learned")
    regression = LOSSES["rm_multi_regression"].fn
    _fit(head.attributes.parameters(),
         lambda: regression(RatingScores(head(x).attributes), scores=ratings).losses.mean(), steps=300, lr=0.05)

    a, b = torch.randn(3000, H, generator=gen), torch.randn(3000, H, generator=gen)
    true_diff = 4.0 * ((a - b) @ u.T) @ w_star  # (N,)
    a_wins = torch.rand(3000, generator=gen) < torch.sigmoid(true_diff)
    chosen, rejected = torch.where(a_wins[:, None], a, b), torch.where(a_wins[:, None], b, a)
    head.attributes.requires_grad_(False)
    bt = LOSSES["bradley_terry"].fn
    _fit([head.gate_logits, head.log_scale],
         lambda: bt(PairScores(head(chosen).rewards, head(rejected).rewards)).losses.mean(), steps=300, lr=0.05)
    cosine = F.cosine_similarity(head.weights().detach(), w_star, dim=0).item()
    assert cosine >= 0.95, (head.weights(), cosine)


def test_multi_objective_fixed_weights_combine_attributes():
    """Fixed gating: r = Σ w_j a_j exactly; weights() returns the fixed weights."""
    head = MultiObjectiveHead(4, 2, gating="fixed", weights=[2.0, -1.0])
    out = head(torch.randn(5, 4))
    assert out.attributes is not None
    assert torch.allclose(out.rewards, 2.0 * out.attributes[:, 0] - out.attributes[:, 1])
    assert torch.equal(head.weights(), torch.tensor([2.0, -1.0]))


def test_reward_output_select_keeps_fields():
    out = RewardOutput(torch.arange(4.0), embeddings=torch.ones(4, 2))
    part = out.select(slice(1, 3))
    assert part.rewards.tolist() == [1.0, 2.0] and part.embeddings.shape == (2, 2) and part.attributes is None
