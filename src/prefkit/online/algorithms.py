"""Algorithm plug-ins of the online loop: how one round samples, judges, builds records and trains.

An algorithm is a small dataclass (its fields are its options, set through ``online.algorithm`` as
``{name: ..., <option>: ...}``) with

- ``check(run_config, online)``: a one-line :class:`ConfigError` for a loss or option it cannot use;
- ``round(ctx)``: one round on a :class:`~prefkit.online.context.RoundContext` (sample, judge,
  ``ctx.log_samples``, ``ctx.train``); returns extra metrics.

:data:`ALGORITHMS` maps names to classes; :func:`make_algorithm` builds one from an
:class:`~prefkit.online.config.OnlineConfig`.

**online_dpo** (online and iterative DPO; Guo et al. 2024, "Direct Language Model Alignment from Online
AI Feedback", arXiv 2402.04792, Algorithm 1; iterative DPO with ``reference: refresh_every_k``, Xiong
et al. 2024, arXiv 2312.11456): sample G completions of each prompt from the policy, judge them, build
records (``online.pairs``), train with the run config's registry loss (any pair loss, or a list loss for
``ranked_list``). Record building, with completions as texts; empty or whitespace-only completions are
left out, and so is any pair of equal texts or equal scores (a tie):

- ``best_vs_worst``: one :class:`Pair` per prompt, the top-scored sample over the bottom-scored one;
- ``all_pairs``: every pair of samples with different scores, the higher one chosen;
- ``random_pair``: one seeded random pair of samples per prompt;
- ``ranked_list``: one :class:`Ranking` per prompt, best first, over distinct texts with one sample per
  distinct score (the first sampled at that score), so a ranking holds no ties. The trainer needs one
  list size per dataset, so every ranking of the round keeps ``k`` = the smallest size of the round,
  evenly spaced over its levels (best and worst always kept).

The game-theoretic plug-ins (each class docstring gives its paper, loss and deviations; their losses are in
:mod:`prefkit.losses.online`, their trainer objectives in :mod:`prefkit.online.objectives`):

- **xpo** (:class:`XPO`): online DPO plus α·log π(ỹ|x), ỹ ∼ π_ref, one ỹ per prompt and round;
- **sppo_selfplay** (:class:`SPPO`): squared regression of log π(y)/π_t(y) onto η(P̂(y ≻ π_t) − ½), the
  reference refreshed to the policy every round (named so because ``sppo`` is a registry loss);
- **nash_md** (:class:`NashMD`): REINFORCE of P(y ≻ y') against an opponent from the geometric mixture
  π^(1−β)·π_ref^β, plus the τ·KL(π‖π_ref) gradient;
- **egpo** (:class:`EGPO`): extragradient (look-ahead, then update applied at θ_t) on the online IPO loss.

They judge with P(a ≻ b): a pairwise judge's ``prefer``, or σ(r_a − r_b) from a pointwise-only judge
(the round's ``judge/preferences`` metric and each sample line's ``preference_method`` say which). The
judge is asked once per distinct pair of texts, and identical records are merged into one weighted by
its count (:func:`weighted`), so many samples of a few distinct texts cost sampling but little training.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from prefkit.data.encode import EncodedSequence, Encoder
from prefkit.data.records import Pair, Prompt, Ranking, Rating, Record, Unpaired
from prefkit.errors import ConfigError, check_known_keys
from prefkit.losses import LOSSES, get_loss, names_of, validate_loss_params
from prefkit.losses.online import nash_md_pg, sppo_sample_loss
from prefkit.online.config import OnlineConfig, PairBuilding
from prefkit.online.context import RoundContext, as_completion, merge_duplicates, usable, weighted
from prefkit.online.judges import PAIRWISE_NOTE, POINTWISE_NOTE
from prefkit.online.objectives import ExplorationObjective, SampleObjective
from prefkit.online.ppo import PPO
from prefkit.online.rl import GRPO, RLOO, RSF
from prefkit.train.config import RunConfig
from prefkit.train.objectives import PreferenceObjective, make_objective


class Algorithm(Protocol):
    """An online algorithm plug-in (module docstring)."""

    name: str

    def check(self, run_config: RunConfig, online: OnlineConfig) -> None:
        """Raise a one-line ConfigError for a loss or setting this algorithm cannot use."""
        ...

    def round(self, ctx: RoundContext) -> dict[str, Any]:
        """Run one round on ``ctx``; return extra metrics."""
        ...


# -- record building -----------------------------------------------------------------------------------


def build_records(prompt: Prompt, texts: Sequence[str], scores: Tensor, mode: PairBuilding,
                  generator: torch.Generator) -> tuple[list[Record], int]:
    """Records from one prompt's judged samples (module docstring) and the number of ties skipped."""
    s = [float(x) for x in scores]
    ok = [i for i, t in enumerate(texts) if usable(prompt, t)]
    comp = [as_completion(prompt, t) for t in texts]
    if mode == "ranked_list":
        levels: dict[float, int] = {}
        for i in ok:
            if s[i] not in levels and all(texts[i] != texts[j] for j in levels.values()):
                levels[s[i]] = i
        order = sorted(levels.values(), key=lambda i: -s[i])
        if len(order) < 2:
            return [], 1
        return [Ranking(prompt, tuple(comp[i] for i in order), scores=tuple(s[i] for i in order))], 0
    if mode == "all_pairs":
        candidates = [(i, j) for a, i in enumerate(ok) for j in ok[a + 1:]]
    elif mode == "best_vs_worst":
        if len(ok) < 2:
            return [], 0
        best = max(ok, key=lambda i: s[i])
        worst = min(ok, key=lambda i: s[i])
        candidates = [(best, worst)]
    else:  # random_pair
        if len(ok) < 2:
            return [], 0
        a, b = torch.randperm(len(ok), generator=generator)[:2].tolist()
        candidates = [(ok[a], ok[b])]
    records: list[Record] = []
    ties = 0
    for i, j in candidates:
        if s[i] == s[j] or texts[i] == texts[j]:
            ties += 1
            continue
        hi, lo = (i, j) if s[i] > s[j] else (j, i)
        records.append(Pair(prompt, comp[hi], comp[lo]))
    return records, ties


def same_size_rankings(rankings: list[Record]) -> list[Record]:
    """Cut every ranking to the smallest size among them, keeping evenly spaced levels (best and worst)."""
    if not rankings:
        return rankings
    k = min(len(r.responses) for r in rankings)  # type: ignore[union-attr]
    out: list[Record] = []
    for r in rankings:
        n = len(r.responses)  # type: ignore[union-attr]
        keep = sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})
        out.append(dataclasses.replace(r, responses=tuple(r.responses[i] for i in keep),  # type: ignore[union-attr]
                                       scores=tuple(r.scores[i] for i in keep)))  # type: ignore[union-attr]
    return out


def judged_records(ctx: RoundContext, tag: str = "") -> tuple[list[Record], int]:
    """Online DPO's half-round: sample G from the policy, judge, log, build ``online.pairs`` records;
    returns the records and the ties skipped."""
    batch = ctx.sample(ctx.online.samples_per_prompt, tag=tag)
    numbers, what = ctx.judge_groups(batch)
    gen = torch.Generator().manual_seed(ctx.online.seed * 7_919 + ctx.index)
    records: list[Record] = []
    ties = 0
    for i, p in enumerate(ctx.prompts):
        recs, t = build_records(p, [c.text for c in batch.group(i)], numbers[i], ctx.online.pairs, gen)
        records += recs
        ties += t
        ctx.log_samples(i, batch, numbers[i], what, tag=tag)
    if ctx.online.pairs == "ranked_list":
        records = same_size_rankings(records)
    return records, ties


# -- algorithms ----------------------------------------------------------------------------------------


def _check_loss_kind(run_config: RunConfig, online: OnlineConfig) -> None:
    loss = LOSSES.get(run_config.loss.name)
    if loss is None:
        raise ConfigError(f"unknown loss {run_config.loss.name!r}")
    if loss.kind != online.record_kind:
        need = "a list loss" if online.record_kind == "list" else "a pair loss"
        raise ConfigError(f"online pairs={online.pairs!r} builds {online.record_kind} records and needs {need}; "
                          f"loss.name={run_config.loss.name!r} is a {loss.kind} loss")


@dataclass
class OnlineDPO:
    """Online DPO with any registry pair or list loss; iterative DPO with ``reference: refresh_every_k``
    (module docstring)."""

    name: str = "online_dpo"

    def check(self, run_config: RunConfig, online: OnlineConfig) -> None:
        _check_loss_kind(run_config, online)

    def round(self, ctx: RoundContext) -> dict[str, Any]:
        records, ties = judged_records(ctx)
        summary = ctx.train(records)
        return {"records": len(records), "ties_skipped": ties, **{f"train/{k}": v for k, v in summary.items()}}


# -- helpers of the game-theoretic plug-ins -------------------------------------------------------------


def preference_note(judge: Any) -> str:
    """How P(a ≻ b) is obtained from ``judge`` (:data:`PAIRWISE_NOTE` or :data:`POINTWISE_NOTE`, as
    :func:`~prefkit.online.judges.preference_probs` does)."""
    return PAIRWISE_NOTE if getattr(judge, "pairwise", False) else POINTWISE_NOTE


def distinct(texts: Sequence[str]) -> tuple[list[str], list[int]]:
    """The distinct texts (first-seen order) and each text's index among them."""
    index: dict[str, int] = {}
    idx = [index.setdefault(t, len(index)) for t in texts]
    return list(index), idx


def distinct_matrix(ctx: RoundContext, i: int, texts: Sequence[str]) -> tuple[Tensor, list[int]]:
    """(U, U) ``P(u ≻ v)`` among the U distinct texts of prompt ``i`` (the judge is asked once per distinct
    pair; equal texts tie at ½) and each text's index among them."""
    uniq, idx = distinct(texts)
    m = ctx.preference_matrix(i, uniq) if len(uniq) > 1 else torch.full((1, 1), 0.5)
    return m, idx


def sample_win_rates(m: Tensor, idx: list[int]) -> Tensor:
    """(K,) each sample's mean ``P(y ≻ y')`` against the other K − 1 samples, from the distinct-text matrix
    ``m`` and the samples' text indices (a sample ties at ½ with its copies)."""
    k = len(idx)
    counts = torch.bincount(torch.tensor(idx), minlength=m.shape[0]).to(m)  # (U,)
    per_text = (m @ counts - 0.5) / (k - 1)  # (U,) the sample itself (½) left out
    return per_text[torch.tensor(idx)]


def prefer_distinct(ctx: RoundContext, i: int, a: Sequence[str], b: Sequence[str]) -> Tensor:
    """(N,) ``P(a_j ≻ b_j)`` for prompt ``i``, the judge asked once per distinct (a, b); equal texts give ½."""
    asked = sorted({(x, y) for x, y in zip(a, b) if x != y})
    probs = ctx.prefer(i, [x for x, _ in asked], [y for _, y in asked]) if asked else torch.zeros(0)
    table = {pair: float(p) for pair, p in zip(asked, probs)}
    return torch.tensor([0.5 if x == y else table[(x, y)] for x, y in zip(a, b)])


def loss_beta(run_config: RunConfig) -> float:
    """The run config's ``loss.beta`` (its default when not set)."""
    return float(validate_loss_params(run_config.loss.name, dict(run_config.loss.params))["beta"])


def _check_beta_loss(algorithm: str, run_config: RunConfig, role: str) -> None:
    spec = get_loss(run_config.loss.name)
    if not spec.needs_reference or "beta" not in spec.params:
        lack = "no reference" if not spec.needs_reference else "no beta parameter"
        raise ConfigError(f"online algorithm {algorithm!r} reads {role} from loss.beta and needs a reference model; "
                          f"loss.name={run_config.loss.name!r} has {lack}: pick a loss with both (the default does)")


def _check_fixed_reference(algorithm: str, online: OnlineConfig) -> None:
    if online.reference != "fixed":
        raise ConfigError(f"online algorithm {algorithm!r} regularises toward a fixed π_ref; set online "
                          f"reference=fixed (got {online.reference!r})")


def _check_number(algorithm: str, key: str, value: Any, low: float, high: float | None = None,
                  low_open: bool = False) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) \
        and (value > low if low_open else value >= low) and (high is None or value <= high)
    if not ok:
        bound = f"{'>' if low_open else '>='} {low:g}" + (f" and <= {high:g}" if high is not None else "")
        raise ConfigError(f"online algorithm {algorithm!r}: option {key} must be a number {bound}, got {value!r}")


def _sample_objective(ctx: RoundContext, loss: Any, params: dict[str, Any]) -> SampleObjective:
    mc = ctx.run_config.model
    return SampleObjective(loss, params, mc.chunk_size, mc.packing, mc.share_prefix)


def _train_metrics(summary: dict[str, float]) -> dict[str, float]:
    return {f"train/{k}": v for k, v in summary.items()}


# -- XPO -----------------------------------------------------------------------------------------------


@dataclass
class XPO:
    """XPO (Xie et al. 2024, "Exploratory Preference Optimization", arXiv 2405.21046, Algorithm 1):
    online DPO with any registry pair loss (``online.pairs`` records, as ``online_dpo``) plus
    α·log π(ỹ|x) for one reference sample ỹ ∼ π_ref per prompt and round, added to every pair of that
    prompt (:class:`~prefkit.online.objectives.ExplorationObjective`,
    :func:`~prefkit.losses.online.xpo_bonus`). Minimising it lowers the likelihood of what the reference
    already says, so mass moves to responses the reference rarely produces. Deviation: the paper draws
    ỹ for each pair; here one ỹ per prompt serves all pairs of that prompt in the round. A prompt whose ỹ is
    empty trains no pairs that round."""

    alpha: float = 1e-5
    """α, the exploration weight (≥ 0; TRL's default 1e-5; 0 is online DPO)."""
    name: str = "xpo"

    def check(self, run_config: RunConfig, online: OnlineConfig) -> None:
        if online.record_kind != "pair":
            raise ConfigError("online algorithm 'xpo' trains on pairs; set online pairs to best_vs_worst, "
                              f"all_pairs or random_pair (got {online.pairs!r})")
        _check_loss_kind(run_config, online)
        if not get_loss(run_config.loss.name).needs_reference:
            raise ConfigError(f"online algorithm 'xpo' samples ỹ from the reference; loss.name="
                              f"{run_config.loss.name!r} is reference-free: pick a pair loss with a reference")
        _check_number(self.name, "alpha", self.alpha, 0.0)

    def round(self, ctx: RoundContext) -> dict[str, Any]:
        records, ties = judged_records(ctx)
        explore_batch = ctx.sample(1, source="reference", tag="explore")
        encoder = Encoder(ctx.tokenizer, ctx.run_config.encode)
        explore: dict[tuple[int, ...], list[EncodedSequence]] = {}
        covered = set()
        for i, p in enumerate(ctx.prompts):
            text = explore_batch.group(i)[0].text
            ex = encoder.encode(Unpaired(p, as_completion(p, text), desirable=True)) if usable(p, text) else None
            if ex is not None:
                explore.setdefault(tuple(ex.sequences[0].prompt_ids), []).append(ex.sequences[0])
                covered.add(i)
        kept = [r for r in records if any(r.prompt == ctx.prompts[i] for i in covered)]
        inner = make_objective(ctx.run_config)
        if not isinstance(inner, PreferenceObjective):
            raise ConfigError("online algorithm 'xpo' trains a policy; remove the reward: section")
        summary = ctx.train(kept, objective=ExplorationObjective(inner, self.alpha, explore))
        return {"records": len(kept), "ties_skipped": ties, "xpo/no_explore_sample": len(ctx.prompts) - len(covered),
                **_train_metrics(summary)}


# -- SPPO ----------------------------------------------------------------------------------------------


@dataclass
class SPPO:
    """SPPO (Wu et al. 2024, "Self-Play Preference Optimization for Language Model Alignment", arXiv
    2405.00675, Algorithm 1 and its loss): per prompt, K samples y ∼ π_t; P̂(y ≻ π_t) = y's mean
    ``P(y ≻ y')`` over the other K − 1 samples (a pointwise-only judge gives σ(r_a − r_b), and the round's
    ``judge/preferences`` metric and sample lines say so: ``POINTWISE_NOTE``); loss per sample
    ``(log π(y)/π_t(y) − η(P̂ − ½))²`` (:func:`~prefkit.losses.online.sppo_sample_loss`), η = ``eta`` or
    1/``loss.beta``.

    The regularisation is toward the previous iterate π_t, so the reference must be refreshed to the
    policy after every round: ``check`` requires ``online.reference=refresh_every_k`` and ``refresh_k=1``
    (the loop owns the reference, so this is required rather than forced). The loss's ``beta`` and
    reference switch only make the loop keep that reference (its registry function is not used).

    Records: one ``Rating(prompt, y, score=P̂)`` per sample, through
    :class:`~prefkit.online.objectives.SampleObjective`. Why not a registry list loss over a
    ``Ranking``: a ranking holds distinct responses, while the samples' multiplicity is the expectation
    over π_t that SPPO's loss takes (duplicates are merged into one record weighted by their count,
    :func:`merge_duplicates`, which keeps that expectation). The name is ``sppo_selfplay`` because
    ``sppo`` names the registry's hard-label pair loss (a loss name may appear only in ``prefkit.losses``).
    Deviations: none in the loss; P̂ leaves the sample itself out (unbiased for i.i.d. samples).
    """

    eta: float | None = None
    """η, the step of the multiplicative-weights update (> 0); unset: 1/``loss.beta``."""
    name: str = "sppo_selfplay"

    def check(self, run_config: RunConfig, online: OnlineConfig) -> None:
        if online.reference != "refresh_every_k" or online.refresh_k != 1:
            raise ConfigError(f"online algorithm {self.name!r} regularises toward its previous iterate π_t: set online "
                              f"reference=refresh_every_k and refresh_k=1 (got reference={online.reference!r}, "
                              f"refresh_k={online.refresh_k})")
        if self.eta is None:
            _check_beta_loss(self.name, run_config, "η = 1/β")
        else:
            _check_number(self.name, "eta", self.eta, 0.0, low_open=True)
            if not get_loss(run_config.loss.name).needs_reference:
                raise ConfigError(f"online algorithm {self.name!r} needs a reference model (π_t); loss.name="
                                  f"{run_config.loss.name!r} has no reference: pick a loss with one")

    def round(self, ctx: RoundContext) -> dict[str, Any]:
        eta = self.eta if self.eta is not None else 1.0 / loss_beta(ctx.run_config)
        note = preference_note(ctx.judge)
        batch = ctx.sample(ctx.online.samples_per_prompt)
        records: list[Record] = []
        for i, p in enumerate(ctx.prompts):
            texts = [c.text for c in batch.group(i)]
            m, idx = distinct_matrix(ctx, i, texts)
            wins = sample_win_rates(m, idx)  # (K,) P̂(y ≻ π_t)
            ctx.log_samples(i, batch, wins, "win_rates", preference_method=note)
            records += [Rating(p, as_completion(p, t), score=float(w)) for t, w in zip(texts, wins) if usable(p, t)]
        merged = merge_duplicates(records)
        summary = ctx.train(merged, objective=_sample_objective(ctx, sppo_sample_loss, {"eta": eta}))
        return {"records": len(merged), "judge/preferences": note, "eta": eta, **_train_metrics(summary)}


# -- Nash-MD ---------------------------------------------------------------------------------------------


@dataclass
class NashMD:
    """Nash-MD, policy-gradient version (Munos et al. 2023, "Nash Learning from Human Feedback", arXiv
    2312.00886): per prompt, G samples y ∼ π and G opponents y' ∼ π^(1−β)·π_ref^β (the token-level
    geometric mixture, β = ``mixture_coef``), sample j against opponent j; P(y ≻ y') from the judge
    (pointwise-only: σ(r_a − r_b), said in ``judge/preferences``); loss per y
    ``−(P − ½)·log π(y) + τ·sg(log π(y)/π_ref(y))·log π(y)``, τ = ``loss.beta``
    (:func:`~prefkit.losses.online.nash_md_pg`): REINFORCE of the win probability against the mixture
    opponent plus the gradient of τ·KL(π‖π_ref). Records: ``Rating(prompt, y, score=P)`` through
    :class:`~prefkit.online.objectives.SampleObjective`.

    Its fixed point is π ∝ π_ref·exp(P(y ≻ π^β)/τ): the opponent is the mixture, not π, so with β > 0 it
    sits slightly off the regularised Nash equilibrium π ∝ π_ref·exp(P(y ≻ π)/τ) (the paper's rate needs
    β = ητ → 0); small ``mixture_coef`` keeps that bias small. Needs ``online.reference=fixed``.
    Deviations: baseline ½ in the REINFORCE term; one opponent per sample; the mixture coefficient is a
    constant option rather than tied to a learning rate.
    """

    mixture_coef: float = 0.125
    """β of the opponent's mixture π^(1−β)·π_ref^β, in [0, 1] (0: the opponent is the policy itself)."""
    name: str = "nash_md"

    def check(self, run_config: RunConfig, online: OnlineConfig) -> None:
        _check_fixed_reference(self.name, online)
        _check_beta_loss(self.name, run_config, "τ")
        _check_number(self.name, "mixture_coef", self.mixture_coef, 0.0, 1.0)

    def round(self, ctx: RoundContext) -> dict[str, Any]:
        note = preference_note(ctx.judge)
        g = ctx.online.samples_per_prompt
        ys = ctx.sample(g)
        opponents = ctx.sample(g, source="mixture", mixture_beta=self.mixture_coef, tag="opponent")
        records: list[Record] = []
        for i, p in enumerate(ctx.prompts):
            a, b = [c.text for c in ys.group(i)], [c.text for c in opponents.group(i)]
            probs = prefer_distinct(ctx, i, a, b)  # (G,) P(y_j ≻ y'_j)
            ctx.log_samples(i, ys, probs, "win_prob_vs_opponent", opponents=b, preference_method=note)
            records += [Rating(p, as_completion(p, t), score=float(w)) for t, w in zip(a, probs) if usable(p, t)]
        merged = merge_duplicates(records)
        summary = ctx.train(merged, objective=_sample_objective(ctx, nash_md_pg, {"beta": loss_beta(ctx.run_config)}))
        return {"records": len(merged), "judge/preferences": note, **_train_metrics(summary)}


# -- EGPO ------------------------------------------------------------------------------------------------


@dataclass
class EGPO:
    """EGPO (Zhou et al. 2025, "Extragradient Preference Optimization"): extragradient steps on the online
    IPO loss (Calandriello et al. 2024, arXiv 2403.08635, whose fixed point with samples from the current
    policy is the KL-regularised Nash equilibrium π ∝ π_ref·exp(P(y ≻ π)/τ)).

    One round, from θ_t:

    1. **look-ahead**: G samples of π_t per prompt; every pair of samples (y, y') with different texts
       becomes ``Pair(y, y', strength=P(y ≻ y'))`` (the judge asked once per distinct pair; identical pairs
       carry no gradient and are skipped); train (``ctx.train(..., tag="lookahead")``) with the run config's
       soft-label pair loss (``ipo_soft`` is the online IPO loss (h − (P − ½)/τ)²) → θ_{t+½};
    2. **update**: the same at θ_{t+½}, with fresh samples of π_{t+½} (``resample``, the default: the
       game's operator at θ_{t+½} includes its sampling distribution; ``resample=false`` reuses step 1's
       pairs, halving sampling and judging) → θ';
    3. θ_{t+1} = θ_t + (θ' − θ_{t+½}): the update step's displacement applied at θ_t.

    AdamW: the moments carry through both steps (look-ahead, then update, with ``online.keep_optimizer``),
    as Extra-Adam does (Gidel et al. 2019, arXiv 1802.10551, Algorithm 4); the update's displacement is
    Adam's step from those moments. ``train.steps_per_round`` steps are taken in each of the two phases.
    Needs ``online.reference=fixed`` and a pair loss with a reference that takes a ``strength`` (the
    judge's probability is passed as the strength). Records with equal texts are merged with weights
    (:func:`merge_duplicates`).
    """

    resample: bool = True
    """Sample afresh from π_{t+½} for the update step (True) or reuse the look-ahead's pairs (False)."""
    name: str = "egpo"

    def check(self, run_config: RunConfig, online: OnlineConfig) -> None:
        _check_fixed_reference(self.name, online)
        if online.record_kind != "pair":
            raise ConfigError(f"online algorithm 'egpo' builds pairs of samples itself; leave online pairs at a pair "
                              f"mode (got {online.pairs!r})")
        _check_loss_kind(run_config, online)
        spec = get_loss(run_config.loss.name)
        if not spec.needs_reference or "strength" not in spec.needs:
            soft = names_of(lambda s: s.kind == "pair" and s.needs_reference and "strength" in s.needs)
            raise ConfigError(f"online algorithm 'egpo' trains on pairs labelled with P(y ≻ y') as strength; "
                              f"loss.name={run_config.loss.name!r} takes no strength or no reference: use one of {soft}")
        if not isinstance(self.resample, bool):
            raise ConfigError(f"online algorithm 'egpo': option resample must be true or false, got {self.resample!r}")

    def _pairs(self, ctx: RoundContext, tag: str) -> tuple[list[Record], int]:
        """The round's pairs of policy samples for ``tag`` (class docstring), weighted by how many sample pairs
        each distinct pair stands for, and the number of identical sample pairs skipped."""
        note = preference_note(ctx.judge)
        batch = ctx.sample(ctx.online.samples_per_prompt, tag=tag)
        counted: list[tuple[Record, float]] = []
        identical = 0
        for i, p in enumerate(ctx.prompts):
            texts = [c.text for c in batch.group(i)]
            m, idx = distinct_matrix(ctx, i, texts)
            ctx.log_samples(i, batch, sample_win_rates(m, idx), "win_rates", tag=tag, preference_method=note)
            uniq = distinct(texts)[0]
            n = Counter(idx)  # samples per distinct text
            identical += sum(c * (c - 1) // 2 for c in n.values())
            ok = [u for u in range(len(uniq)) if usable(p, uniq[u])]
            for a, u in enumerate(ok):  # every pair of samples with different texts, one record per text pair
                for v in ok[a + 1:]:
                    counted.append((Pair(p, as_completion(p, uniq[u]), as_completion(p, uniq[v]),
                                         strength=float(m[u, v])), float(n[u] * n[v])))
        return weighted(counted), identical

    def round(self, ctx: RoundContext) -> dict[str, Any]:
        params = [q for q in ctx.policy.parameters() if q.requires_grad]
        start = [q.detach().clone() for q in params]  # θ_t
        look, same1 = self._pairs(ctx, "lookahead")
        first = ctx.train(look, tag="lookahead")
        half = [q.detach().clone() for q in params]  # θ_{t+½}
        update, same2 = self._pairs(ctx, "update") if self.resample else (look, 0)
        second = ctx.train(update, tag="update")
        with torch.no_grad():  # θ_{t+1} = θ_t + (θ' − θ_{t+½})
            for q, t0, th in zip(params, start, half):
                q.copy_(t0 + (q - th))
        return {"records": len(look) + (len(update) if self.resample else 0), "identical_pairs_skipped": same1 + same2,
                "judge/preferences": preference_note(ctx.judge),
                **{f"lookahead/{k}": v for k, v in first.items()}, **_train_metrics(second)}


ALGORITHMS: dict[str, type] = {"online_dpo": OnlineDPO, "xpo": XPO, "sppo_selfplay": SPPO, "nash_md": NashMD,
                               "egpo": EGPO, "grpo": GRPO, "rloo": RLOO, "rsf": RSF, "ppo": PPO}
"""Algorithm name -> plug-in class (the RL plug-ins ``grpo``, ``rloo``, ``rsf`` live in ``prefkit.online.rl``)."""


def make_algorithm(online: OnlineConfig) -> Algorithm:
    """The plug-in ``online.algorithm`` names, with its options; one-line ConfigError for an unknown name
    or option (naming the nearest valid one)."""
    name = online.algorithm_name
    check_known_keys({name: None}, list(ALGORITHMS), "online algorithm")
    cls = ALGORITHMS[name]
    options = online.algorithm_options
    check_known_keys(options, [f.name for f in dataclasses.fields(cls) if f.name != "name"],
                     f"option of online algorithm {name!r}")
    return cls(**options)


__all__ = ["Algorithm", "ALGORITHMS", "make_algorithm", "OnlineDPO", "XPO", "SPPO", "NashMD", "EGPO",
           "build_records", "same_size_rankings", "judged_records", "usable", "merge_duplicates", "weighted", "preference_note",
           "distinct", "distinct_matrix", "sample_win_rates", "prefer_distinct", "loss_beta"]
