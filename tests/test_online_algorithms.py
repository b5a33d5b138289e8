"""The game-theoretic online plug-ins (``prefkit.online.algorithms``: XPO, SPPO, Nash-MD, EGPO) through the real
loop (``run_online``) on one-token worlds whose answers are computed exactly.

The intransitive game: 3 actions, reference π_ref = [0.6, 0.3, 0.1], a cyclic pairwise judge
P(a0 ≻ a1) = P(a1 ≻ a2) = P(a2 ≻ a0) = 0.9 (P(y ≻ y) = ½). Its KL-regularised Nash equilibrium
π* ∝ π_ref·exp(P(y ≻ π*)/τ) is computed here by a damped fixed-point iteration; with τ = 0.2 it is
[0.576, 0.174, 0.249] (0.15 TV from π_ref, 0.24 from uniform). The unregularised equilibrium is uniform.

Settings shared by every run (chosen for these dynamics, the same for all algorithms): AdamW with
``adam_betas=[0.0, 0.999]`` (no momentum: momentum makes the rotation of this game spiral outward, and SPPO's
iterates then collapse onto one action, from which its samples never leave), the optimizer state kept
across rounds, constant lr, no clipping, one optimizer step per round (per phase for EGPO), one prompt per
round, and large G: identical one-token samples are merged into weighted records, so G costs sampling and
judging but not training.
"""

from __future__ import annotations

import time

import pytest
import torch

from prefkit.data.encode import Encoder, collate
from prefkit.data.records import Pair
from prefkit.errors import ConfigError
from prefkit.models.load import frozen_copy
from prefkit.models.logprobs import sequence_logps
from prefkit.online import (
    ALGORITHMS,
    POINTWISE_NOTE,
    FunctionJudge,
    OnlineConfig,
    SamplingSettings,
    run_online,
)
from prefkit.online.algorithms import (
    SPPO,
    make_algorithm,
    merge_duplicates,
    sample_win_rates,
    weighted,
)
from prefkit.online.objectives import ExplorationObjective
from prefkit.testing import token_world
from prefkit.train.config import load_config
from prefkit.train.objectives import make_objective

REF = (0.6, 0.3, 0.1)


def cyclic(prompt, a, b) -> float:
    """P(a ≻ b) of the cyclic judge: a0 ≻ a1 ≻ a2 ≻ a0 with 0.9; ½ for equal actions."""
    if a == b:
        return 0.5
    return 0.9 if (int(b[1:]) - int(a[1:])) % 3 == 1 else 0.1


PM = torch.tensor([[cyclic(None, f"a{i}", f"a{j}") for j in range(3)] for i in range(3)], dtype=torch.float64)


def regularised_nash(tau: float, ref=REF, iters: int = 20_000) -> torch.Tensor:
    """π* = π_ref·exp(P(y ≻ π*)/τ)/Z by the damped iteration π ← 0.9·π + 0.1·T(π); checks the residual."""
    r = torch.tensor(ref, dtype=torch.float64)
    pi = r.clone()
    for _ in range(iters):
        new = r * torch.exp(PM @ pi / tau)
        pi = 0.9 * pi + 0.1 * new / new.sum()
    new = r * torch.exp(PM @ pi / tau)
    assert torch.allclose(pi, new / new.sum(), atol=1e-12)
    return pi


def tv(p, q) -> float:
    return 0.5 * float((torch.as_tensor(p, dtype=torch.float64) - torch.as_tensor(q, dtype=torch.float64)).abs().sum())


def game_config(tmp_path, tau: float, lr: float, loss: str = "dpo", *extra: str):
    return load_config(overrides=[f"loss.name={loss}", f"loss.beta={tau}", f"train.lr={lr}", "train.batch_size=4096",
                                  "train.scheduler=constant", "train.max_grad_norm=null", "train.log_every=1000",
                                  "train.adam_betas=[0.0,0.999]", "encode.add_eos=false",
                                  f"output.dir={tmp_path / 'unused'}", *extra], check_files=False)


def play(tmp_path, algorithm, *, tau: float, lr: float, rounds: int, g: int, loss: str = "dpo",
         reference: str = "fixed", monkeypatch=None, seed: int = 0):
    """Run the game; returns the world, the iterate after every round and the seconds taken."""
    world = token_world(3, REF)
    judge = FunctionJudge(prefer_fn=cyclic, name="cyclic")
    online = OnlineConfig(algorithm=algorithm, rounds=rounds, prompts_per_round=1, samples_per_prompt=g,
                          sampling=SamplingSettings(max_new_tokens=1), steps_per_round=1, reference=reference,
                          seed=seed, win_rate_vs_reference=False)
    iterates: list[torch.Tensor] = []
    name = algorithm if isinstance(algorithm, str) else algorithm["name"]
    base = ALGORITHMS[name]

    class Recording(base):  # type: ignore[misc,valid-type]
        def round(self, ctx):
            out = super().round(ctx)
            iterates.append(world.probs().double())
            return out

    monkeypatch.setitem(ALGORITHMS, name, Recording)
    t0 = time.perf_counter()
    run_online(world.model, world.tokenizer, [world.prompt], judge, game_config(tmp_path, tau, lr, loss), online,
               tmp_path / f"run-{name}")
    return world, iterates, time.perf_counter() - t0


def test_nash_md_last_iterate_reaches_the_regularised_nash_equilibrium(tmp_path, monkeypatch):
    """τ = 0.2, mixture_coef 0.1, G = 512, lr 2e-3, 60 rounds. The fixed point of Nash-MD-PG with a mixture
    opponent is π ∝ π_ref·exp(P(y ≻ π^β)/τ), 0.013 TV from π* at β = 0.1 (computed in the test)."""
    star = regularised_nash(0.2)
    world, its, sec = play(tmp_path, {"name": "nash_md", "mixture_coef": 0.1}, tau=0.2, lr=2e-3, rounds=60, g=512,
                           monkeypatch=monkeypatch)
    last = its[-1]
    print(f"nash_md: last {last.numpy().round(3)} pi* {star.numpy().round(3)} TV {tv(last, star):.3f} ({sec:.1f} s)")
    assert tv(its[0], star) > 0.1  # it starts away from π*
    assert tv(last, star) < 0.05


def test_egpo_last_iterate_reaches_the_regularised_nash_equilibrium(tmp_path, monkeypatch):
    """τ = 0.2, loss ipo_soft (online IPO), G = 256 per phase (fresh samples for the update), lr 2e-3, 50
    rounds of look-ahead + update."""
    star = regularised_nash(0.2)
    world, its, sec = play(tmp_path, "egpo", tau=0.2, lr=2e-3, rounds=50, g=256, loss="ipo_soft",
                           monkeypatch=monkeypatch)
    last = its[-1]
    print(f"egpo: last {last.numpy().round(3)} pi* {star.numpy().round(3)} TV {tv(last, star):.3f} ({sec:.1f} s)")
    assert tv(its[0], star) > 0.1
    assert tv(last, star) < 0.05


def test_sppo_average_iterate_reaches_the_uniform_equilibrium(tmp_path, monkeypatch):
    """SPPO regularises toward its previous iterate (reference refreshed every round), so it targets the
    unregularised equilibrium, uniform here. Its iterates cycle around it (multiplicative weights in a
    cyclic game: the last iterate does not converge; measured last-iterate TV ≈ 0.5), so the test checks the
    *average* iterate over the rounds. η = 1/β = 1, G = 64, lr 3e-3, 300 rounds (≈ 3–4 cycles)."""
    world, its, sec = play(tmp_path, "sppo_selfplay", tau=1.0, lr=3e-3, rounds=300, g=64,
                           reference="refresh_every_k", monkeypatch=monkeypatch)
    average = torch.stack(its).mean(0)
    uniform = torch.full((3,), 1 / 3, dtype=torch.float64)
    print(f"sppo: average {average.numpy().round(3)} TV to uniform {tv(average, uniform):.3f}; last "
          f"{its[-1].numpy().round(3)} TV {tv(its[-1], uniform):.3f} ({sec:.1f} s)")
    assert max(tv(p, uniform) for p in its) > 0.3  # it really cycles: not a policy that stayed near uniform
    assert tv(average, uniform) < 0.05


def test_online_dpo_with_a_bradley_terry_fit_on_the_game(tmp_path, monkeypatch):
    """For the report: online DPO (best vs worst of G = 16 by win rate, DPO loss, τ = 0.2) on the same game.
    A Bradley–Terry fit has no stable answer in a cyclic game: measured (seed 0) it keeps circling, ending
    far from π* and from uniform. Asserted only that it does not reach π*."""
    star = regularised_nash(0.2)
    world, its, sec = play(tmp_path, "online_dpo", tau=0.2, lr=2e-3, rounds=120, g=16, monkeypatch=monkeypatch)
    last = its[-1]
    uniform = torch.full((3,), 1 / 3, dtype=torch.float64)
    print(f"online_dpo: last {last.numpy().round(3)} TV to pi* {tv(last, star):.3f} TV to uniform "
          f"{tv(last, uniform):.3f}; max TV to pi* over rounds {max(tv(p, star) for p in its):.3f} ({sec:.1f} s)")
    assert tv(last, star) > 0.1


# -- XPO ---------------------------------------------------------------------------------------------------


def test_xpo_objective_adds_alpha_times_the_reference_sample_logprob():
    """On a token world, the XPO objective's per-example loss is the pair loss plus α·log π(ỹ) exactly, with
    ỹ matched to its pair by prompt ids and the pair loss computed as without XPO."""
    world = token_world(3, REF)
    cfg = load_config(overrides=["loss.name=dpo", "encode.add_eos=false", "output.dir=/tmp/unused"], check_files=False)
    enc = Encoder(world.tokenizer, cfg.encode)
    records = [Pair("ask", "a2", "a0"), Pair("ask", "a1", "a0")]
    examples, _ = enc.encode_all(records)
    inner = make_objective(cfg)
    y_tilde = enc.encode_all([Pair("ask", "a0", "a1")])[0][0].sequences[0]  # ỹ = a0
    xpo = ExplorationObjective(inner, 0.5, {tuple(y_tilde.prompt_ids): [y_tilde]})
    prepared = xpo.prepare(examples, 0)
    assert [len(ex.sequences) for ex in prepared] == [3, 3]
    batch = collate(prepared, enc.pad_id)
    ref_model = frozen_copy(world.model)
    with torch.no_grad():
        world.model.lm_head.weight.mul_(1.3)  # policy ≠ reference
        reference = sequence_logps(ref_model, batch)
        out = xpo(world.model, batch, reference)
        plain_batch = collate(inner.prepare(examples, 0), enc.pad_id)
        plain = inner(world.model, plain_batch, sequence_logps(ref_model, plain_batch))
    log_pi_a0 = float(world.probs()[0].log())
    torch.testing.assert_close(out.losses, plain.losses + 0.5 * log_pi_a0, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.metrics["xpo/explore_logps"], torch.full((2,), log_pi_a0), rtol=1e-5, atol=1e-5)


def test_xpo_term_has_the_exact_gradient_and_pushes_away_from_the_reference():
    """Hand case on a token world (logits z over 3 actions, π = softmax(z)): the exploration part of the
    XPO loss, α·log π(ỹ), has logit gradient α·(e_ỹ − π) (it lowers log π(ỹ) and raises the other actions);
    averaged over ỹ ∼ π_ref it is α·(π_ref − π), zero at π = π_ref and otherwise a descent step that takes
    mass from the actions the reference favours over the policy: it pushes π away from π_ref (exploration)."""
    world = token_world(3, REF)
    cfg = load_config(overrides=["loss.name=dpo", "encode.add_eos=false", "output.dir=/tmp/unused"], check_files=False)
    enc = Encoder(world.tokenizer, cfg.encode)
    inner = make_objective(cfg)
    ref_model = frozen_copy(world.model)
    h = world.model.model(torch.tensor([world.tokenizer(world.prompt)["input_ids"]])).last_hidden_state[0, -1]
    h = h.detach().double()
    with torch.no_grad():  # shift the action logits by [−0.5, 0, 0.8]: π ≠ π_ref, a0 below and a2 above it
        shift = torch.tensor([-0.5, 0.0, 0.8], dtype=torch.float64)
        world.model.lm_head.weight[list(world.action_ids)] += (shift[:, None] * h[None, :] / h.dot(h)).float()
    pi = world.probs().double()
    alpha, expected = 0.5, torch.zeros(3, dtype=torch.float64)
    for k, action in enumerate(world.actions):
        y_tilde = enc.encode_all([Pair("ask", action, "a0" if action != "a0" else "a1")])[0][0].sequences[0]
        xpo = ExplorationObjective(inner, alpha, {tuple(y_tilde.prompt_ids): [y_tilde]})
        examples, _ = enc.encode_all([Pair("ask", "a2", "a1")])
        batch = collate(xpo.prepare(examples, 0), enc.pad_id)
        plain_batch = collate(inner.prepare(examples, 0), enc.pad_id)
        world.model.zero_grad()
        out = xpo(world.model, batch, sequence_logps(ref_model, batch))
        plain = inner(world.model, plain_batch, sequence_logps(ref_model, plain_batch))
        (out.losses - plain.losses).sum().backward()  # the exploration part alone
        grad_z = (world.model.lm_head.weight.grad.double() @ h / h.dot(h))[list(world.action_ids)]  # dL/dz
        e = torch.zeros(3, dtype=torch.float64)
        e[k] = 1.0
        torch.testing.assert_close(grad_z, alpha * (e - pi), rtol=1e-4, atol=1e-5)
        expected += REF[k] * grad_z
    torch.testing.assert_close(expected, alpha * (torch.tensor(REF, dtype=torch.float64) - pi), rtol=1e-4, atol=1e-5)
    step = -expected  # a descent step on the logits
    assert pi[0] < REF[0] and step[0] < 0  # a0: favoured by the reference over the policy, loses more mass
    assert pi[2] > REF[2] and step[2] > 0  # a2: favoured by the policy, gains


def test_xpo_runs_through_the_loop(tmp_path):
    """XPO through ``run_online``: one reference sample per prompt per round, its bonus logged."""
    world = token_world(3, REF)
    judge = FunctionJudge(lambda p, c: float(c[1:]), name="index")
    online = OnlineConfig(algorithm={"name": "xpo", "alpha": 0.1}, rounds=2, prompts_per_round=2, samples_per_prompt=4,
                          pairs="all_pairs", sampling=SamplingSettings(max_new_tokens=1), steps_per_round=1,
                          win_rate_vs_reference=False)
    cfg = load_config(overrides=["loss.name=dpo", "train.lr=1e-3", "train.batch_size=64", "encode.add_eos=false",
                                 "train.log_every=1000", f"output.dir={tmp_path / 'unused'}"], check_files=False)
    history = run_online(world.model, world.tokenizer, [world.prompt], judge, cfg, online, tmp_path / "run")
    assert all(h["xpo/no_explore_sample"] == 0 and h["records"] > 0 for h in history)
    assert all(h["train/xpo/explore_logps"] < 0 and "train/xpo/bonus" in h for h in history)


# -- helpers and checks -----------------------------------------------------------------------------------


def test_merged_records_keep_the_mean_and_win_rates_leave_the_sample_out():
    a, b = Pair("p", "x", "y"), Pair("p", "y", "z")
    merged = merge_duplicates([a, a, a, b])
    assert [(r.chosen, r.weight) for r in merged] == [("x", 1.5), ("y", 0.5)]  # Σ w·l / 2 = (3·l_a + l_b) / 4
    assert [r.weight for r in weighted([(a, 6.0), (b, 2.0)])] == [1.5, 0.5]
    # samples [a0, a0, a1]: a0 vs the others: (½ + 0.9)/2 = 0.7; a1: (0.1 + 0.1)/2 = 0.1
    m = PM[:2, :2].float()
    torch.testing.assert_close(sample_win_rates(m, [0, 0, 1]), torch.tensor([0.7, 0.7, 0.1]))


@pytest.mark.parametrize(("algorithm", "online", "loss", "message"), [
    ("sppo_selfplay", {}, "dpo", "set online reference=refresh_every_k and refresh_k=1"),
    ("sppo_selfplay", {"reference": "refresh_every_k", "refresh_k": 2}, "dpo", "refresh_k=2"),
    ("sppo_selfplay", {"reference": "refresh_every_k"}, "simpo", "has no reference"),
    ({"name": "sppo_selfplay", "eta": -1.0}, {"reference": "refresh_every_k"}, "dpo", "eta must be a number > 0"),
    ({"name": "sppo_selfplay", "eta": 2.0}, {"reference": "refresh_every_k"}, "cpo", "has no reference"),
    ("nash_md", {"reference": "refresh_every_k"}, "dpo", "set online reference=fixed"),
    ("nash_md", {}, "orpo", "has no reference"),
    ({"name": "nash_md", "mixture_coef": 1.5}, {}, "dpo", "mixture_coef must be a number >= 0 and <= 1"),
    ("egpo", {}, "dpo", "takes no strength or no reference: use one of"),
    ("egpo", {}, "pl_dpo", "is a list loss"),
    ("xpo", {"pairs": "ranked_list"}, "pl_dpo", "trains on pairs"),
    ("xpo", {}, "simpo", "is reference-free"),
    ({"name": "xpo", "alpha": -0.1}, {}, "dpo", "alpha must be a number >= 0"),
])
def test_wrong_settings_are_one_line_config_errors(tmp_path, algorithm, online, loss, message):
    cfg = load_config(overrides=[f"loss.name={loss}", f"output.dir={tmp_path}"], check_files=False)
    oc = OnlineConfig(algorithm=algorithm, **online)
    with pytest.raises(ConfigError, match=message) as err:
        make_algorithm(oc).check(cfg, oc)
    assert "\n" not in str(err.value)


def test_unknown_option_names_the_nearest_one():
    with pytest.raises(ConfigError, match="mixture_coef"):
        make_algorithm(OnlineConfig(algorithm={"name": "nash_md", "mixture_coeff": 0.2}))
    assert isinstance(make_algorithm(OnlineConfig(algorithm="sppo_selfplay")), SPPO)


@pytest.mark.parametrize(("algorithm", "reference", "loss"), [
    ("sppo_selfplay", "refresh_every_k", "dpo"), ("nash_md", "fixed", "dpo"), ("egpo", "fixed", "ipo_soft"),
    ({"name": "egpo", "resample": False}, "fixed", "dpo_soft")])
def test_a_pointwise_judge_gives_sigmoid_preferences_and_says_so(tmp_path, algorithm, reference, loss):
    """With a pointwise-only judge, P(a ≻ b) = σ(r_a − r_b), and the round's metrics say so."""
    world = token_world(3, REF)
    judge = FunctionJudge(lambda p, c: float(c[1:]), name="index")
    online = OnlineConfig(algorithm=algorithm, rounds=1, prompts_per_round=1, samples_per_prompt=16,
                          sampling=SamplingSettings(max_new_tokens=1), steps_per_round=1, reference=reference,
                          win_rate_vs_reference=False)
    history = run_online(world.model, world.tokenizer, [world.prompt], judge, game_config(tmp_path, 0.5, 1e-3, loss),
                         online, tmp_path / "run")
    assert history[0]["judge/preferences"] == POINTWISE_NOTE and history[0]["records"] > 0
