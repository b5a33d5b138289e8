"""Several rewards as one pointwise judge (issue 13, item 2): :class:`RewardMix`, and KL as a reward penalty.

A :class:`RewardMix` is a :class:`~prefkit.online.judges.Judge` with ``pointwise = True``, so every online
algorithm (and the loop's metrics) uses it unchanged. It scores each sample with C named components
(each a pointwise judge: a Python function, a regex, a reward model ...) and combines them, per sample:

1. **components** ``r_{n,c}`` (N, C), kept in :attr:`RewardMix.last_components`;
2. **mix**: the free components by their fixed weights, the constrained ones by their Lagrange multipliers
   (``prefkit.losses.rewards``: ``combine_rewards`` and ``lagrangian_rewards``)::

       r_n = Σ_{c free} w_c·r_{n,c} + Σ_{c constrained} s_c·λ_c·r_{n,c},   s_c = +1 for "ge", −1 for "le"

3. **PAR** (``par=True``): ``σ(r_n − r_ref)``, r_ref the mixed reward of the prompt's reference completion
   (``par_shaping``; Fu et al. 2025, arXiv 2502.18770);
   With ``combine="maxmin"`` the free components are the rewards of K groups, and their fixed weights are
   multiplied by the egalitarian weights α of MaxMin-RLHF (below);
4. **whitening** (``whiten=True``): zero mean, unit variance over the N samples of the call (``whiten``;
   a call with one sample is left as is);
5. **clipping** (``clip=(low, high)``, ``clip_rewards``).

**Constraints** (constrained RLHF, Moskovitz et al. 2023, arXiv 2310.04373): a component with a
``target`` and a ``sense`` ("ge": keep its mean ≥ target, "le": ≤, "eq": =) is weighted by a multiplier
λ_c, updated once per round by ``lagrange_update`` from the component's mean over the samples the mix
scored ("counted") in that round. The update is lazy: :meth:`RewardMix.begin_round` of a new round
applies it from the previous round's counted scores, so a round's rewards all use one λ. Scores made
inside :meth:`RewardMix.uncounted` (or after :meth:`RewardMix.end_round`) do not count, e.g. reference
samples; PAR's reference completions never count.

**Who calls what.** Nothing is needed for fixed weights. For constraints the loop calls, per round r::

    mix.begin_round(r)                  # before the algorithm's round: λ update from round r − 1's scores
    ...                                 # the algorithm scores samples (counted)
    mix.end_round()                     # after it: later scores of the round (win rate ...) do not count
    metrics.update(mix.metrics())       # rewards/<name>/mean|std, lagrange/<name>

and, to resume exactly, saves ``mix.state_dict()`` (JSON-able: round, multipliers, the counted sums of
the round) with each round checkpoint and calls ``mix.load_state_dict(saved)`` before the first resumed
round (:class:`RoundHooks` is the protocol to test for). Without those calls the multipliers stay at
their initial values and the metrics cover every score since the mix was built.

**MaxMin** (``combine="maxmin"``; Chakraborty et al. 2024, arXiv 2402.08925): the policy objective
max_π min_k E_π[r_k] over K group rewards (the free components, e.g. one reward model or hidden rule per
group). At every counted score call, α = ``maxmin_weights`` (``prefkit.losses.rewards``) of the groups'
(weighted) means over the samples counted so far in the round: one-hot on the group that is worst off
(``temperature=0``; ties share), or a softmin with ``temperature`` τ > 0. A round's samples scored in one
call (the RL plug-ins) are so all trained on the reward of the round's worst group. Uncounted scores use
the last α; before any counted score it is uniform. ``maxmin/<name>`` logs α; it is recomputed from the
saved counts on resume.

**PAR's references**: a mapping prompt → reference completion given at construction (``references``),
and/or :meth:`RewardMix.set_references` (an algorithm that samples the reference policy each round:
``mix.set_references(ctx.prompts, [as_completion(p, c.text) for p, c in zip(ctx.prompts, ref.completions)])``
with ``ref = ctx.sample(1, source="reference", tag="par")``). The mix keeps each reference's component
vector and mixes it with the current multipliers at every score; a prompt without a reference is a
one-line ``ConfigError``. References are not part of :meth:`RewardMix.state_dict` (set them again).

**KL as a reward penalty**: :func:`kl_penalized_rewards` gives ``r − β·KL`` per sample from sequence
log-probs (k1 summed over the tokens), for RL plug-ins that put the KL in the reward rather than in the
loss (``prefkit.losses.rl.per_token_kl_rewards`` spreads it over tokens instead).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal, Protocol, get_args, runtime_checkable

import torch
from torch import Tensor

from prefkit.data.records import Completion, Prompt
from prefkit.errors import ConfigError, DataError
from prefkit.losses.rewards import (
    Sense,
    clip_rewards,
    combine_rewards,
    lagrange_update,
    lagrangian_rewards,
    maxmin_weights,
    par_shaping,
)
from prefkit.losses.rl import kl_k1, whiten
from prefkit.online.judges import Judge, judge_name

_SENSE_SIGN = {"ge": "≥", "le": "≤", "eq": "="}
Combine = Literal["weighted", "maxmin"]


@runtime_checkable
class RoundHooks(Protocol):
    """What a judge with per-round state offers the loop (module docstring: who calls what)."""

    def begin_round(self, index: int) -> None:
        """Round ``index`` starts (0-based); applies what the previous round decided."""
        ...

    def end_round(self) -> None:
        """The algorithm's part of the round is over; later scores of the round are not counted."""
        ...

    def metrics(self) -> dict[str, float]:
        """The round's metrics so far."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """JSON-able state to save with a round checkpoint."""
        ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` gave."""
        ...


@dataclass(frozen=True)
class RewardComponent:
    """One named reward of a :class:`RewardMix`."""

    name: str
    """Its name in metrics (``rewards/<name>/mean``) and in the state."""
    judge: Judge
    """A pointwise judge: ``score(prompts, completions) -> (N,)``."""
    weight: float | None = None
    """A free component's fixed weight (unset: 1); a constrained one is weighted by its multiplier."""
    target: float | None = None
    """Set: the component is a constraint, its per-round mean kept at ``target`` (``sense``)."""
    sense: Sense = "ge"
    """With ``target``: "ge" (mean ≥ target), "le" (mean ≤ target) or "eq"."""
    multiplier: float = 0.0
    """With ``target``: the initial Lagrange multiplier λ (≥ 0 for "ge"/"le")."""

    @property
    def constrained(self) -> bool:
        return self.target is not None


class RewardMix:
    """Several pointwise judges as one pointwise judge: weights, constraints, PAR, whitening, clipping.

    Args:
        components: the rewards, names distinct (:class:`RewardComponent`).
        lagrange_lr: η of ``lagrange_update`` (typical 0.01–0.1 on rewards of unit scale).
        max_multiplier: an optional cap on every λ.
        par: shape the mixed reward as ``σ(r − r_ref)`` (needs references, module docstring).
        references: prompt → reference completion, for ``par``.
        whiten: whiten the rewards of each score call (over its N samples, mean shifted to 0).
        clip: ``(low, high)``, either None for no bound on that side; applied last.
        combine: ``weighted`` (the free components by their fixed weights) or ``maxmin`` (the free components
            are group rewards, weighted by the egalitarian weights α of the worst-off group; module docstring).
        temperature: with ``maxmin``: 0 trains on the worst group only; τ > 0 softmin weights softmax(−m/τ).
        name: the judge's name (logs, the run identity checked on resume); unset: built from the settings.

    Attributes:
        last_components: (N, C) the components of the last ``score`` call, columns in ``names`` order.
        last_rewards: (N,) what the last ``score`` call returned.
        multipliers: (C_constrained,) float64, the λ in use, in ``constrained`` order.
        group_weights: (C_free,) float64, MaxMin's α in use (uniform, and unused, with ``weighted``).
    """

    pointwise = True
    pairwise = False

    def __init__(self, components: Sequence[RewardComponent], *, lagrange_lr: float = 0.05,
                 max_multiplier: float | None = None, par: bool = False,
                 references: Mapping[Any, Completion] | None = None, whiten: bool = False,
                 clip: tuple[float | None, float | None] | None = None, combine: Combine = "weighted",
                 temperature: float = 0.0, name: str | None = None):
        self.components = tuple(components)
        _check_components(self.components)
        if lagrange_lr < 0:
            raise ConfigError(f"RewardMix: lagrange_lr must be >= 0; got {lagrange_lr}")
        if max_multiplier is not None and max_multiplier < 0:
            raise ConfigError(f"RewardMix: max_multiplier must be >= 0; got {max_multiplier}")
        if clip is not None:
            if len(clip) != 2:
                raise ConfigError(f"RewardMix: clip must be (low, high); got {clip!r}")
            clip_rewards(torch.zeros(1), clip[0], clip[1])  # low > high: its one-line error
        if references is not None and not par:
            raise ConfigError("RewardMix: references are for PAR shaping; set par=True or leave them out")
        if combine not in get_args(Combine):
            raise ConfigError(f"RewardMix: combine {combine!r} is not one of {list(get_args(Combine))}")
        if combine == "maxmin" and sum(not c.constrained for c in self.components) < 2:
            raise ConfigError("RewardMix: combine='maxmin' needs at least 2 free components (one reward per group)")
        if not (0.0 <= temperature < math.inf):
            raise ConfigError(f"RewardMix: temperature must be finite and >= 0; got {temperature}")
        if temperature and combine != "maxmin":
            raise ConfigError("RewardMix: temperature applies to combine='maxmin' only")
        self.combine, self.temperature = combine, float(temperature)
        self.lagrange_lr, self.max_multiplier = float(lagrange_lr), max_multiplier
        self.par, self.whiten, self.clip = par, whiten, clip
        self.names = tuple(c.name for c in self.components)
        self._free = [i for i, c in enumerate(self.components) if not c.constrained]
        self._bound = [i for i, c in enumerate(self.components) if c.constrained]
        self.constrained = tuple(self.names[i] for i in self._bound)
        self.weights = torch.tensor([1.0 if self.components[i].weight is None else float(self.components[i].weight)
                                     for i in self._free], dtype=torch.float64)  # (C_free,)
        self.targets = torch.tensor([float(self.components[i].target or 0.0) for i in self._bound],
                                    dtype=torch.float64)  # (C_bound,); `or`: target is set on these
        self.senses: tuple[Sense, ...] = tuple(self.components[i].sense for i in self._bound)
        self.multipliers = torch.tensor([float(self.components[i].multiplier) for i in self._bound],
                                        dtype=torch.float64)  # (C_bound,)
        self.group_weights = torch.full((len(self._free),), 1.0 / max(1, len(self._free)),
                                        dtype=torch.float64)  # (C_free,) MaxMin's α
        self.round = 0
        self._counting = True
        self._reset_counts()
        self._references: dict[Any, Tensor] = {}
        self.last_components = torch.zeros(0, len(self.components))
        self.last_rewards = torch.zeros(0)
        self.name = name or self._describe()
        if references:
            self.set_references(list(references), list(references.values()))

    def _describe(self) -> str:
        parts = []
        for c in self.components:
            rule = (f"{_SENSE_SIGN[c.sense]}{c.target:g}" if c.constrained
                    else f"×{1.0 if c.weight is None else c.weight:g}")
            parts.append(f"{c.name}={judge_name(c.judge)}{rule}")
        options = [f"lagrange_lr {self.lagrange_lr:g}"] if self._bound else []
        options += [f"max_multiplier {self.max_multiplier:g}"] if self._bound and self.max_multiplier is not None else []
        options += ([f"maxmin τ {self.temperature:g}" if self.temperature else "maxmin"]
                    if self.combine == "maxmin" else [])
        options += ["par"] * self.par + ["whiten"] * self.whiten
        options += [f"clip {list(self.clip)}"] if self.clip is not None else []
        return f"reward mix ({', '.join(parts)}{'; ' + ', '.join(options) if options else ''})"

    def _reset_counts(self) -> None:
        c = len(self.components)
        self._count = 0
        self._sum = torch.zeros(c, dtype=torch.float64)  # (C,)
        self._sumsq = torch.zeros(c, dtype=torch.float64)  # (C,)

    # -- scoring --

    def component_scores(self, prompts: Sequence[Prompt], completions: Sequence[Completion]) -> Tensor:
        """(N, C) every component's scores, columns in ``names`` order (nothing counted or kept)."""
        if len(prompts) != len(completions):
            raise ValueError(f"judge inputs differ in length: prompts {len(prompts)}, completions {len(completions)}")
        columns = []
        for c in self.components:
            s = c.judge.score(prompts, completions).detach().float().cpu().reshape(-1)
            if s.shape[0] != len(prompts):
                raise DataError(f"reward component {c.name!r} returned {s.shape[0]} scores for {len(prompts)} samples")
            columns.append(s)
        return torch.stack(columns, dim=1) if columns else torch.zeros(len(prompts), 0)  # (N, C)

    def mix(self, components: Tensor) -> Tensor:
        """(N,) the weighted and Lagrangian sum of ``components`` (N, C) with the current multipliers (step 2)."""
        comps = components.double()
        weights = self.weights * self.group_weights if self.combine == "maxmin" else self.weights  # (C_free,)
        free = combine_rewards(comps[:, self._free], weights)  # (N,)
        if not self._bound:
            return free
        return lagrangian_rewards(comps[:, self._bound], self.multipliers, senses=self.senses, objective=free)

    def score(self, prompts: Sequence[Prompt], completions: Sequence[Completion]) -> Tensor:
        """(N,) float32 mixed rewards, higher = better (module docstring, steps 1–5)."""
        comps = self.component_scores(prompts, completions)  # (N, C)
        self.last_components = comps
        if self._counting and comps.shape[0]:
            self._count += comps.shape[0]
            self._sum += comps.double().sum(0)
            self._sumsq += (comps.double() ** 2).sum(0)
            self._update_group_weights()
        rewards = self.mix(comps)  # (N,)
        if self.par:
            rewards = par_shaping(rewards, self.mix(self._reference_components(prompts)))
        if self.whiten and rewards.shape[0] >= 2:
            rewards = whiten(rewards)
        if self.clip is not None:
            rewards = clip_rewards(rewards, self.clip[0], self.clip[1])
        self.last_rewards = rewards.float()
        return self.last_rewards

    def _update_group_weights(self) -> None:
        """MaxMin's α from the (weighted) group means counted this round (module docstring)."""
        if self.combine == "maxmin" and self._count:
            means = self.component_means()[self._free] * self.weights  # (C_free,)
            self.group_weights = maxmin_weights(means, temperature=self.temperature)

    def prefer(self, prompts: Sequence[Prompt], a: Sequence[Completion], b: Sequence[Completion]) -> Tensor:
        raise ConfigError(f"judge {self.name!r} is pointwise only; use preference_probs, which gives σ(r_a − r_b)")

    @contextmanager
    def uncounted(self) -> Iterator[None]:
        """Scores inside do not count towards the round's means (e.g. samples not from the policy)."""
        before, self._counting = self._counting, False
        try:
            yield
        finally:
            self._counting = before

    # -- PAR references --

    def set_references(self, prompts: Sequence[Prompt], completions: Sequence[Completion]) -> None:
        """Score one reference completion per prompt (uncounted) and keep its components for PAR; a prompt
        given again gets the new reference."""
        if not self.par:
            raise ConfigError("RewardMix.set_references: the mix has no PAR shaping (par=False)")
        comps = self.component_scores(prompts, completions)  # (N, C)
        for prompt, row in zip(prompts, comps):
            self._references[prompt] = row

    def _reference_components(self, prompts: Sequence[Prompt]) -> Tensor:
        missing = next((p for p in prompts if p not in self._references), None)
        if missing is not None:
            raise ConfigError(f"reward mix: PAR needs a reference completion for prompt {str(missing)[:60]!r}; "
                              "give references= or call set_references")
        if not prompts:
            return torch.zeros(0, len(self.components))
        return torch.stack([self._references[p] for p in prompts])  # (N, C)

    # -- rounds, metrics, state --

    def begin_round(self, index: int) -> None:
        """Round ``index`` starts. For a later round than the current one, one ``lagrange_update`` from the
        component means counted since the current round began (none counted: λ unchanged); the same round
        again does nothing but count again. Scores from here on count."""
        if index < self.round:
            raise ConfigError(f"reward mix: begin_round({index}) after round {self.round}; rounds only go forward "
                              "(a resumed run loads the mix's state first)")
        if index > self.round:
            if self._bound and self._count:
                means = self._sum / self._count  # (C,)
                self.multipliers = lagrange_update(self.multipliers, means[self._bound], self.targets,
                                                   lr=self.lagrange_lr, senses=self.senses,
                                                   max_multiplier=self.max_multiplier)
            self._reset_counts()
            self.round = index
        self._counting = True

    def end_round(self) -> None:
        """Stop counting until the next :meth:`begin_round` (the metrics' and the λ update's samples are
        those counted so far)."""
        self._counting = False

    def component_means(self) -> Tensor:
        """(C,) each component's mean over the samples counted this round (NaN when none)."""
        return self._sum / self._count if self._count else torch.full((len(self.components),), math.nan,
                                                                        dtype=torch.float64)

    def metrics(self) -> dict[str, float]:
        """``rewards/<name>/mean`` and ``rewards/<name>/std`` (unbiased; 0 for one sample) over the samples
        counted this round (absent when none), ``lagrange/<name>``: the λ in use this round, and with
        ``maxmin`` ``maxmin/<name>``: each group's weight α."""
        out: dict[str, float] = {}
        if self._count:
            mean = self._sum / self._count  # (C,)
            n = self._count
            var = ((self._sumsq - n * mean ** 2) / (n - 1)).clamp_min(0.0) if n > 1 else torch.zeros_like(mean)
            for name, m, v in zip(self.names, mean.tolist(), var.tolist()):
                out[f"rewards/{name}/mean"] = m
                out[f"rewards/{name}/std"] = math.sqrt(v)
        for name, lam in zip(self.constrained, self.multipliers.tolist()):
            out[f"lagrange/{name}"] = lam
        if self.combine == "maxmin":
            for i, alpha in zip(self._free, self.group_weights.tolist()):
                out[f"maxmin/{self.names[i]}"] = alpha
        return out

    def state_dict(self) -> dict[str, Any]:
        """JSON-able: the round, the multipliers by name and the counts of the round (for the lazy update)."""
        return {"round": self.round, "multipliers": dict(zip(self.constrained, self.multipliers.tolist())),
                "count": self._count, "sum": dict(zip(self.names, self._sum.tolist())),
                "sumsq": dict(zip(self.names, self._sumsq.tolist()))}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`; the components (names, constrained ones) must be the same."""
        keys = {"round", "multipliers", "count", "sum", "sumsq"}
        if set(state) != keys:
            raise ConfigError(f"reward mix state: expected keys {sorted(keys)}, got {sorted(state)}")
        if list(state["multipliers"]) != list(self.constrained) or list(state["sum"]) != list(self.names) \
                or list(state["sumsq"]) != list(self.names):
            raise ConfigError(f"reward mix state: components {list(state['sum'])} (constrained "
                              f"{list(state['multipliers'])}) differ from this mix's {list(self.names)} "
                              f"(constrained {list(self.constrained)})")
        self.round = int(state["round"])
        self.multipliers = torch.tensor([float(state["multipliers"][n]) for n in self.constrained],
                                        dtype=torch.float64)
        self._count = int(state["count"])
        self._sum = torch.tensor([float(state["sum"][n]) for n in self.names], dtype=torch.float64)
        self._sumsq = torch.tensor([float(state["sumsq"][n]) for n in self.names], dtype=torch.float64)
        self._update_group_weights()


def check_component(name: str, *, weight: float | None, target: float | None, sense: str,
                    multiplier: float) -> None:
    """One-line ``ConfigError`` for a component's settings that do not go together (:class:`RewardComponent`);
    ``prefkit.online.jobs`` calls it at config time, before any judge loads."""
    if not name or "/" in name:
        raise ConfigError(f"reward component name {name!r}: give a non-empty name without '/'")
    if sense not in _SENSE_SIGN:
        raise ConfigError(f"reward component {name!r}: sense {sense!r} is not one of {list(_SENSE_SIGN)}")
    if target is not None and weight is not None:
        raise ConfigError(f"reward component {name!r}: a constrained component (target) is weighted by its "
                          "Lagrange multiplier; drop weight, or drop target for a fixed weight")
    if target is None and multiplier != 0.0:
        raise ConfigError(f"reward component {name!r}: multiplier applies to a constrained component (target)")
    if target is not None and sense != "eq" and multiplier < 0:
        raise ConfigError(f"reward component {name!r}: the initial multiplier of an inequality must be >= 0; "
                          f"got {multiplier}")


def check_names(names: Sequence[str]) -> None:
    """One-line ``ConfigError`` for no components or a name used twice."""
    if not names:
        raise ConfigError("a reward mix needs at least one component")
    twice = next((n for i, n in enumerate(names) if n in names[:i]), None)
    if twice is not None:
        raise ConfigError(f"reward component name {twice!r} is used twice; names must be distinct")


def _check_components(components: Sequence[RewardComponent]) -> None:
    check_names([c.name for c in components])
    for c in components:
        check_component(c.name, weight=c.weight, target=c.target, sense=c.sense, multiplier=c.multiplier)
        if not getattr(c.judge, "pointwise", False):
            raise ConfigError(f"reward component {c.name!r}: judge {judge_name(c.judge)!r} is pairwise only; a "
                              "component needs a pointwise score (a function, a regex, a scalar reward model)")


def kl_penalized_rewards(rewards: Tensor, logps: Tensor, ref_logps: Tensor, *, beta: float) -> Tensor:
    """Sequence rewards minus β times the sequence's k1 KL estimate: KL as a reward penalty.

    Formula (y ~ π, log-probs summed over the completion's tokens):
        r'(x, y) = r(x, y) − β·(log π(y|x) − log π_ref(y|x))

    References:
        Ziegler et al. 2019, "Fine-Tuning Language Models from Human Preferences", arXiv 1909.08593, the
        KL-penalised reward R = r − β·log(π/ρ); Ouyang et al. 2022, arXiv 2203.02155, Eq. 2. The k1
        estimator (Schulman 2020) summed over tokens is unbiased for the sequence KL when y ~ π at
        temperature 1.

    Shapes: ``rewards``, ``logps``, ``ref_logps`` (B,); returns (B,). Sign convention: rewards higher =
    better; a completion more likely under the policy than the reference pays β·(log π − log π_ref).
    Typical: β 0.01–0.1. In a plug-in: ``logps = torch.tensor([c.policy_logp for c in batch.completions])``
    (the sampler's temperature-1 log-probs) and ``ref_logps = ctx.reference_logps(batch)``. Deviations: the
    per-token form is ``prefkit.losses.rl.per_token_kl_rewards`` (for GAE); this is its sequence sum.
    """
    if rewards.dim() != 1 or logps.shape != rewards.shape or ref_logps.shape != rewards.shape:
        raise DataError(f"kl_penalized_rewards: rewards, logps and ref_logps must be (B,) alike; got "
                        f"{tuple(rewards.shape)}, {tuple(logps.shape)}, {tuple(ref_logps.shape)}")
    if beta < 0:
        raise ConfigError(f"kl_penalized_rewards: beta must be >= 0; got {beta}")
    dtype = torch.promote_types(rewards.dtype, logps.dtype)
    return rewards.to(dtype) - beta * kl_k1(logps.to(dtype), ref_logps.to(dtype))


__all__ = ["RewardComponent", "RewardMix", "RoundHooks", "check_component", "check_names", "kl_penalized_rewards"]
