"""The contract every registered loss keeps, parametrized over the whole registry ``sorted(LOSSES)``.

Inputs are built from ``spec.kind`` and ``spec.needs`` alone, so a new registry entry is covered with no
extra work: per-example losses (B,) with no reduction, finite values and gradients (also for log-ratios
of ±1e4 and one-token completions), detached rewards, the input dtype kept (fp32, bf16, fp64),
reference-free losses ignore the reference, swapping chosen and rejected flips the reward margin, and
``torch.autograd.gradcheck`` passes in fp64; loss bodies leave parameter ranges to the registry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from torch import Tensor

from prefkit.errors import ConfigError
from prefkit.losses import LOSSES, validate_loss_params
from prefkit.losses.reward import ListScores, PairScores, RatingScores
from prefkit.losses.types import ListLogps, LossOutput, LossSpec, PairLogps, Param, UnpairedLogps

NAMES = sorted(LOSSES)
# The subsets each property applies to (parametrized over, rather than skipped inside the test):
REFERENCE_FREE = [n for n in NAMES if not LOSSES[n].needs_reference]
ORDERED = [n for n in NAMES if LOSSES[n].kind not in ("unpaired", "reward_rating")]  # has chosen/rejected or order
BOUNDED = [n for n in NAMES if any(p.choices is not None or p.low is not None or p.high is not None
                                   for p in LOSSES[n].params.values())]
B, K, T, A = 4, 3, 5, 3
EXTREME = 1e4


@dataclass
class Case:
    """One call of a loss: ``spec.fn(policy, reference, **inputs, **params)``, with its gradient leaves."""

    policy: Any
    reference: Any
    inputs: dict[str, Tensor]
    leaves: list[Tensor] = field(default_factory=list)


def _token_side(shape: tuple[int, ...], gen: torch.Generator, dtype: torch.dtype, *, extreme: Tensor | None,
                leaf: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(summed logps, token counts, token logps, mask) for sequences of ``shape``; token logps are the leaf.

    extreme: per-sequence target summed log-prob for one-token completions (T = 1), or None for random.
    """
    if extreme is not None:
        token = extreme.to(dtype)[..., None].clone()  # (..., 1)
        mask = torch.ones_like(token)
    else:
        lengths = torch.randint(1, T + 1, shape, generator=gen)  # (...,)
        mask = (torch.arange(T) < lengths[..., None]).to(dtype)  # (..., T)
        token = (-3 * torch.rand(*shape, T, generator=gen, dtype=torch.float64)).to(dtype) * mask
    if leaf:
        token.requires_grad_(True)
    logps = (token * mask).sum(-1)
    return logps, mask.sum(-1).long(), token, mask


def _extremes(shape: tuple[int, ...], sign: float) -> tuple[Tensor, Tensor]:
    """Policy and reference summed log-probs whose log-ratios alternate ±1e4 (policy near 0 or −1e4)."""
    flip = torch.ones(shape)
    flip.view(-1)[1::2] = -1  # alternate the sign across the batch / list
    high, low = torch.full(shape, -1e-3), torch.full(shape, -EXTREME)
    up = (flip * sign) > 0
    return torch.where(up, high, low), torch.where(up, low, high)


def _inputs(spec: LossSpec, gen: torch.Generator, dtype: torch.dtype) -> dict[str, Tensor]:
    inputs: dict[str, Tensor] = {}
    if "strength" in spec.needs:
        inputs["strength"] = (0.1 + 0.8 * torch.rand(B, generator=gen, dtype=torch.float64)).to(dtype)
    if "ties" in spec.needs:
        inputs["ties"] = torch.arange(B) % 4 == 1  # (B,) some ties
    if "labels" in spec.needs:
        inputs["labels"] = torch.arange(B) % 2 == 0  # (B,) half desirable
    if "scores" in spec.needs:
        if spec.kind == "reward_rating":
            inputs["scores"] = (4 * torch.rand(B, A, generator=gen, dtype=torch.float64)).to(dtype)
        else:  # graded labels of a list, best first, strictly decreasing
            steps = 0.5 + torch.rand(B, K, generator=gen, dtype=torch.float64)
            inputs["scores"] = steps.flip(-1).cumsum(-1).flip(-1).to(dtype)
    return inputs


def make_case(spec: LossSpec, dtype: torch.dtype = torch.float32, *, seed: int = 0,
              extreme: bool = False) -> Case:
    """Inputs for ``spec`` of ``dtype``: random, or with log-ratios / scores of ±1e4 (one-token)."""
    gen = torch.Generator().manual_seed(seed)
    inputs = _inputs(spec, gen, dtype)
    if spec.kind == "pair":
        ce = re = ca = ra = None
        if extreme:
            ce, ca = _extremes((B,), 1.0)  # chosen: policy, reference
            re, ra = _extremes((B,), -1.0)  # rejected
        pc, pct, pctok, pcm = _token_side((B,), gen, dtype, extreme=ce, leaf=True)
        pr, prt, prtok, prm = _token_side((B,), gen, dtype, extreme=re, leaf=True)
        rc, _, rctok, _ = _token_side((B,), gen, dtype, extreme=ca, leaf=False)
        rr, _, rrtok, _ = _token_side((B,), gen, dtype, extreme=ra, leaf=False)
        if not extreme:  # the reference scores the same tokens as the policy
            rctok, rrtok = rctok * pcm, rrtok * prm
            rc, rr = rctok.sum(-1), rrtok.sum(-1)
        policy = PairLogps(pc, pr, pct, prt, pctok, prtok, pcm, prm)
        reference = PairLogps(rc, rr, pct, prt, rctok, rrtok, pcm, prm)
        return Case(policy, reference, inputs, [pctok, prtok])
    if spec.kind == "list":
        pe = ra = None
        if extreme:
            pe, ra = _extremes((B, K), 1.0)
        p, pt, ptok, pm = _token_side((B, K), gen, dtype, extreme=pe, leaf=True)
        r, _, rtok, _ = _token_side((B, K), gen, dtype, extreme=ra, leaf=False)
        if not extreme:
            rtok = rtok * pm
            r = rtok.sum(-1)
        return Case(ListLogps(p, pt, ptok, pm), ListLogps(r, pt, rtok, pm), inputs, [ptok])
    if spec.kind == "unpaired":
        if extreme:
            pe, ra = _extremes((B,), 1.0)
            p, r = pe.to(dtype).clone().requires_grad_(True), ra.to(dtype)
        else:
            p = (-20 * torch.rand(B, generator=gen, dtype=torch.float64)).to(dtype).requires_grad_(True)
            r = (-20 * torch.rand(B, generator=gen, dtype=torch.float64)).to(dtype)
        tokens = torch.randint(1, 20, (B,), generator=gen) if not extreme else torch.ones(B, dtype=torch.long)
        kl_p = (-20 * torch.rand(B, generator=gen, dtype=torch.float64)).to(dtype)
        kl_r = (-20 * torch.rand(B, generator=gen, dtype=torch.float64)).to(dtype)
        return Case(UnpairedLogps(p, tokens, kl_p), UnpairedLogps(r, tokens, kl_r), inputs, [p])
    scale = EXTREME if extreme else 2.0
    if spec.kind == "reward_pair":
        c = (scale * torch.randn(B, generator=gen, dtype=torch.float64)).to(dtype).requires_grad_(True)
        r = (scale * torch.randn(B, generator=gen, dtype=torch.float64)).to(dtype).requires_grad_(True)
        return Case(PairScores(c, r), None, inputs, [c, r])
    if spec.kind == "reward_list":
        s = (scale * torch.randn(B, K, generator=gen, dtype=torch.float64)).to(dtype).requires_grad_(True)
        return Case(ListScores(s), None, inputs, [s])
    if spec.kind == "reward_rating":
        p = (scale * torch.randn(B, A, generator=gen, dtype=torch.float64)).to(dtype).requires_grad_(True)
        return Case(RatingScores(p), None, inputs, [p])
    raise AssertionError(f"contract test does not know kind {spec.kind!r}")


def call(name: str, case: Case, reference: Any = "default") -> LossOutput:
    spec = LOSSES[name]
    ref = case.reference if reference == "default" else reference
    return spec.fn(case.policy, ref, **case.inputs, **validate_loss_params(name, {}))


def _rewards(out: LossOutput) -> list[Tensor]:
    return [t for t in (out.chosen_rewards, out.rejected_rewards, out.rewards) if t is not None]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize("name", NAMES)
def test_shape_finite_detached_dtype(name: str, dtype: torch.dtype) -> None:
    case = make_case(LOSSES[name], dtype)
    out = call(name, case)
    assert out.losses.shape == (B,), "one loss per example, not reduced"
    assert out.losses.dtype == dtype
    assert torch.isfinite(out.losses).all()
    assert out.losses.requires_grad
    assert _rewards(out), "a loss returns rewards"
    for t in _rewards(out):
        assert not t.requires_grad, "rewards are detached"
        assert t.dtype == dtype and t.shape[0] == B
    for key, value in out.metrics.items():
        assert not value.requires_grad, f"metric {key} is detached"
    out.losses.sum().backward()
    grads = [leaf.grad for leaf in case.leaves if leaf.grad is not None]
    assert grads, "gradients reach the policy-side inputs"
    assert all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", NAMES)
def test_extreme_inputs_stay_finite(name: str, dtype: torch.dtype) -> None:
    """Log-ratios (or scores) of ±1e4 with one-token completions: finite losses and gradients."""
    case = make_case(LOSSES[name], dtype, extreme=True)
    out = call(name, case)
    assert torch.isfinite(out.losses).all(), out.losses
    out.losses.sum().backward()
    for leaf in case.leaves:
        assert leaf.grad is not None and torch.isfinite(leaf.grad).all(), leaf.grad


@pytest.mark.parametrize("name", NAMES)
def test_one_example_batch(name: str) -> None:
    case = make_case(LOSSES[name])
    one = _slice(case, 1)
    assert call(name, one).losses.shape == (1,)


def _slice(case: Case, n: int) -> Case:
    """The first n examples of a case (strength, ties, labels, scores sliced too)."""
    def cut(x: Any) -> Any:
        if isinstance(x, Tensor):
            return x[:n]
        if x is None:
            return None
        return type(x)(*(cut(getattr(x, f)) for f in x.__dataclass_fields__))
    return Case(cut(case.policy), cut(case.reference), {k: v[:n] for k, v in case.inputs.items()})


@pytest.mark.parametrize("name", REFERENCE_FREE)
def test_reference_free_loss_ignores_reference(name: str) -> None:
    spec = LOSSES[name]
    case = make_case(spec, torch.float64)
    other = make_case(spec, torch.float64, seed=7)
    without = call(name, case, reference=None)
    with_other = call(name, case, reference=other.policy if other.reference is None else other.reference)
    torch.testing.assert_close(without.losses, with_other.losses)


def _swapped(spec: LossSpec, case: Case) -> Case:
    """Chosen and rejected exchanged (pairs), or the list order reversed (lists)."""
    if spec.kind in ("pair", "reward_pair"):
        ref = None if case.reference is None else case.reference.swapped()
        return Case(case.policy.swapped(), ref, case.inputs)
    inputs = {k: (v.flip(-1) if k == "scores" else v) for k, v in case.inputs.items()}
    if spec.kind == "reward_list":
        return Case(ListScores(case.policy.scores.flip(-1)), None, inputs)

    def rev(x: ListLogps) -> ListLogps:
        return ListLogps(x.logps.flip(-1), x.tokens.flip(-1), x.token_logps.flip(-2), x.mask.flip(-2))
    return Case(rev(case.policy), rev(case.reference), inputs)


@pytest.mark.parametrize("name", ORDERED)
def test_swapping_flips_the_margin(name: str) -> None:
    """Pairs: chosen_rewards − rejected_rewards changes sign when chosen and rejected are exchanged.

    Lists: reversing the order flips rewards[:, 0] − rewards[:, -1] (per-item rewards depend only on the
    item, not on its position). Not meaningful, hence skipped, for unpaired losses (one completion per
    example, no order) and for rating regression (one prediction per example).
    """
    spec = LOSSES[name]
    case = make_case(spec, torch.float64)
    out, swapped = call(name, case), call(name, _swapped(spec, case))
    if spec.kind in ("pair", "reward_pair"):
        margin = out.chosen_rewards - out.rejected_rewards
        torch.testing.assert_close(swapped.chosen_rewards - swapped.rejected_rewards, -margin)
    else:
        gap = out.rewards[:, 0] - out.rewards[:, -1]
        torch.testing.assert_close(swapped.rewards[:, 0] - swapped.rewards[:, -1], -gap)


@pytest.mark.parametrize("name", NAMES)
def test_gradcheck_fp64(name: str) -> None:
    """Analytical gradients of the per-example losses match finite differences, in fp64."""
    spec = LOSSES[name]
    case = make_case(spec, torch.float64, seed=3)
    leaves = [leaf.detach().clone().requires_grad_(True) for leaf in case.leaves]

    def rebuild(*xs: Tensor) -> Tensor:
        fresh = _with_leaves(spec, case, list(xs))
        return call(name, fresh).losses

    assert torch.autograd.gradcheck(rebuild, tuple(leaves), eps=1e-6, atol=1e-5, rtol=1e-4)


def _with_leaves(spec: LossSpec, case: Case, xs: list[Tensor]) -> Case:
    """``case`` with its leaves replaced by ``xs``; summed log-probs recomputed from token log-probs."""
    if spec.kind == "pair":
        p = case.policy
        ct, rt = xs
        policy = PairLogps((ct * p.chosen_mask).sum(-1), (rt * p.rejected_mask).sum(-1), p.chosen_tokens,
                           p.rejected_tokens, ct, rt, p.chosen_mask, p.rejected_mask)
        return Case(policy, case.reference, case.inputs)
    if spec.kind == "list":
        (tok,) = xs
        p = case.policy
        return Case(ListLogps((tok * p.mask).sum(-1), p.tokens, tok, p.mask), case.reference, case.inputs)
    if spec.kind == "unpaired":
        (x,) = xs
        return Case(UnpairedLogps(x, case.policy.tokens, case.policy.kl_logps), case.reference, case.inputs)
    if spec.kind == "reward_pair":
        return Case(PairScores(*xs), None, case.inputs)
    if spec.kind == "reward_list":
        return Case(ListScores(xs[0]), None, case.inputs)
    return Case(RatingScores(xs[0]), None, case.inputs)


def _out_of_range(param: Param) -> list[Any]:
    """Values ``validate_loss_params`` rejects for ``param``: each open bound itself, or just past a bound."""
    if param.choices is not None:
        return ["not-a-choice"]
    values = []
    if param.low is not None:
        values.append(param.low if param.low_open else param.low - 0.5)
    if param.high is not None:
        values.append(param.high if param.high_open else param.high + 0.5)
    return values


@pytest.mark.parametrize("name", BOUNDED)
def test_bodies_do_not_check_parameter_ranges(name: str) -> None:
    """Ranges live only in the registry's Param (checked by validate_loss_params at config-parse time):
    an out-of-range value reaches the loss body, which computes whatever its formula gives (possibly
    inf/NaN, or an arithmetic error) but raises no ConfigError of its own."""
    spec = LOSSES[name]
    tried = 0
    for key, param in spec.params.items():
        for value in _out_of_range(param):
            with pytest.raises(ConfigError):
                validate_loss_params(name, {key: value})
            case = make_case(spec, torch.float64)
            params = {**validate_loss_params(name, {}), key: value}
            try:
                spec.fn(case.policy, case.reference, **case.inputs, **params)
            except ConfigError as err:
                pytest.fail(f"{name}: the body re-checks {key}={value!r}: {err}")
            except (ArithmeticError, ValueError, LookupError):
                pass  # the math itself may break outside the range (e.g. 1/(2β) at β = 0)
            tried += 1
    assert tried, f"{name}: no out-of-range value was tried"


def test_registry_is_not_empty_and_covers_every_kind() -> None:
    kinds = {spec.kind for spec in LOSSES.values()}
    assert {"list", "unpaired", "reward_pair", "reward_list", "reward_rating"} <= kinds
