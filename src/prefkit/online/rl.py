"""RL plug-ins of the online loop (issue 13): GRPO, RLOO and rejection-sampling fine-tuning (RSF/RAFT).

Each round: G samples per prompt from the policy (``ctx.sample``), one reward per sample from the judge,
advantages (``prefkit.losses.rl``), then the one :class:`~prefkit.train.trainer.Trainer` with an
objective of this module. ``docs/rl.md`` has the formulas, the fixed points and the toy-world numbers.

**Rewards** (option ``rewards``): ``judge``: a pointwise judge's score; a pairwise-only judge gives each
sample its win share against the other G − 1 samples of its prompt (SPO, below). ``spo``: that win share
with any judge (Swamy et al. 2024, "A Minimaximalist Approach to Reinforcement Learning from Human
Feedback", arXiv 2401.04056, Algorithm 1; :func:`~prefkit.losses.rewards.spo_rewards`); a pointwise-only
judge's P(a ≻ b) is σ(r_a − r_b).

**Records and token alignment.** A sample's text becomes a ``Rating(prompt, y, score=advantage, id=...)``
(RSF: ``score=reward``). The trainer re-encodes it (``encode.*``: BOS, EOS, truncation), so every
per-token number is computed on the *re-encoded* tokens: before training, the plug-in encodes the round's
distinct samples with the same :class:`~prefkit.data.encode.Encoder` and scores them teacher-forced with
the log-prob engine the trainer uses (policy in eval mode, no gradients; reference likewise). The results
go into a table keyed by record id (:class:`SampleTokens`); the objective's ``prepare`` checks that the
trainer's tokens equal the table's (a one-line ``DataError`` otherwise). Old log-probs are therefore the
sampling policy's on exactly the training tokens, and the first step's ratio is exactly 1 (up to float
rounding of batch composition; a model with dropout adds its noise). Identical samples of a prompt (same
text, same end) share one record weighted by their count, as the other plug-ins do.

**Truncated samples** (``truncated``). A sample that did not end with EOS (cut by ``max_new_tokens`` or a
stop string) gets an EOS from the encoder when ``encode.add_eos`` is on; the policy never sampled it.
``mask_eos`` (default) trains on the sampled tokens and leaves that EOS out of the loss; ``drop`` trains
on none of the sample's tokens (TRL's ``mask_truncated_completions``), while its reward still counts in
its group's baseline. With ``add_eos: false`` a finished sample's EOS is not trained either. A sample with
empty text (EOS first) is no valid record: it counts in its group's rewards and is not trained.

**The loss section.** These plug-ins do not use ``loss.name``'s function. β (``kl_coef``) is ``loss.beta``
(its registry default when unset) unless the option is given; the loop keeps a reference model only when
``loss.name`` has one (the default ``dpo`` does), so ``kl_coef > 0`` needs such a loss, and ``kl_coef: 0``
with a reference-free loss (e.g. ``loss.name: simpo``) saves the reference copy.

**Metrics** (TRL's names): ``reward``, ``reward_std`` (mean over prompts of the group std),
``frac_reward_zero_std``, ``rewards/<judge>/mean`` and ``/std``, ``kl`` (token mean of the KL estimator
on the trained tokens before the first step), ``entropy`` (token mean of −log π(y_t) over the trained
tokens: the Monte-Carlo estimate of the per-token entropy at temperature 1), ``clip_ratio`` and
``clip_ratio/low_mean`` / ``clip_ratio/high_mean`` (the trainer's last logged step), ``beta`` and
``objective/non_score_reward`` = −β·KL(seq) (k1), ``objective/rlhf_reward`` = reward + that; the loop
adds ``completions/mean_length`` and the rest, the trainer's metrics come as ``train/*``.

Deviations common to all three: the objective's log-probs are the policy's at temperature 1 (sampling at
another temperature or with top-k/top-p makes the samples slightly off-policy; nothing corrects it); a
text whose re-encoding differs from the sampled token ids is trained on its re-encoding.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import KW_ONLY, dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from prefkit.data.batch import Batch
from prefkit.data.encode import EncodedExample, Encoder, TruncationReport, collate
from prefkit.data.records import Rating, Record
from prefkit.errors import ConfigError, DataError
from prefkit.losses import LOSSES, validate_loss_params
from prefkit.losses.rewards import rsf_select, spo_rewards
from prefkit.losses.rl import (
    KL_ESTIMATORS,
    Estimator,
    Normalize,
    clipped_policy_loss,
    grpo_advantages,
    rloo_advantages,
)
from prefkit.models.logprobs import SequenceLogps, sequence_logps
from prefkit.online.config import OnlineConfig
from prefkit.online.context import RoundContext, as_completion, usable, weighted
from prefkit.online.judges import judge_name
from prefkit.online.sampler import SampleBatch
from prefkit.train.config import RunConfig
from prefkit.train.objectives import StepOutput

# -- token tables and the objectives ----------------------------------------------------------------------


@dataclass(frozen=True)
class SampleTokens:
    """One distinct sample as the trainer will see it: its completion token ids (re-encoded), the loss mask
    over them (0: the EOS the encoder appended to a truncated sample), and per-token log-probs of the
    sampling policy (``old``) and of the reference (``ref``), when computed."""

    completion_ids: tuple[int, ...]
    mask: tuple[float, ...]
    old: tuple[float, ...] | None = None
    ref: tuple[float, ...] | None = None


def completion_tokens(seq: SequenceLogps, batch: Batch) -> tuple[Tensor, Tensor]:
    """(B, L) per-token completion log-probs, left-aligned (token j of the completion in column j), and the
    (B, L) mask of real completion tokens, from engine results with ``token_logps`` (one sequence per
    example, any layout: column t of ``seq.token_logps`` is token t of the sequence)."""
    if seq.token_logps is None or seq.mask is None or batch.prompt_lens is None:
        raise DataError("completion_tokens needs per-token log-probs (token_logps=True) and prompt lengths")
    lengths = seq.mask.sum(dim=1).long()  # (B,) completion tokens per row
    width = max(int(lengths.max()), 1) if lengths.numel() else 1
    steps = torch.arange(width, device=seq.token_logps.device)  # (L,)
    cols = batch.prompt_lens.to(steps.device)[:, None] + steps[None, :]  # (B, L) sequence positions
    valid = steps[None, :] < lengths[:, None]  # (B, L)
    cols = cols.clamp(max=seq.token_logps.shape[1] - 1)
    logps = seq.token_logps.gather(1, cols) * valid  # (B, L)
    return logps, valid.to(logps.dtype)


def padded_rows(rows: Sequence[Sequence[float]], width: int, like: Tensor) -> Tensor:
    """(B, width) tensor from per-row lists (zero-padded on the right)."""
    out = torch.zeros(len(rows), width, dtype=like.dtype, device=like.device)
    for b, r in enumerate(rows):
        n = min(len(r), width)
        if n:
            out[b, :n] = torch.tensor(list(r[:n]), dtype=like.dtype, device=like.device)
    return out


def _check_table(examples: list[EncodedExample], table: Mapping[str, Any], who: str) -> None:
    """Every example is a rating in ``table`` with the table's completion tokens (one-line DataError)."""
    for ex in examples:
        entry = table.get(ex.id or "")
        if ex.kind != "rating" or entry is None:
            raise DataError(f"{who}: example {ex.id!r} is not one of this round's samples (a rating record with a "
                            "known id)")
        if tuple(ex.sequences[0].completion_ids) != entry.completion_ids:
            raise DataError(f"{who}: example {ex.id!r} was encoded to other tokens than its old log-probs were "
                            "computed on; encode the records with the trainer's encode settings")


@dataclass
class TableObjective:
    """What the objectives over one round's samples share: ``table`` maps each record id to its re-encoded
    completion tokens (and what the step needs per token), ``prepare`` checks the examples against it, and
    :meth:`completion_logps` runs the log-prob engine. Subclasses set ``who`` (for messages) and
    ``__call__``; every other field is keyword-only."""

    table: Mapping[str, Any]
    _: KW_ONLY
    chunk_size: int = 1024
    packing: bool = True
    share_prefix: bool = True
    needs_reference: bool = False
    token_logps: bool = False
    kl_pairs: bool = False
    tracks_reward_mean: bool = False
    who: ClassVar[str] = "objective"

    def prepare(self, examples: list[EncodedExample], seed: int,
                report: TruncationReport | None = None) -> list[EncodedExample]:
        _check_table(examples, self.table, self.who)
        return examples

    def completion_logps(self, model: nn.Module, batch: Batch) -> tuple[Tensor, Tensor]:
        """(B, L) per-token completion log-probs and the (B, L) mask of real completion tokens."""
        seq = sequence_logps(model, batch, chunk_size=self.chunk_size, token_logps=True, packing=self.packing,
                             share_prefix=self.share_prefix)
        return completion_tokens(seq, batch)

    def column(self, batch: Batch, field: str, width: int, like: Tensor) -> Tensor:
        """(B, width) the per-token ``field`` of each example's table entry, zero-padded."""
        return padded_rows([getattr(self.table[i or ""], field) or () for i in (batch.example_ids or [])], width, like)


@dataclass
class PolicyGradientObjective(TableObjective):
    """The clipped policy-gradient step of GRPO and RLOO (:func:`~prefkit.losses.rl.clipped_policy_loss`)
    over ``Rating`` records whose ``score`` is the sample's advantage and whose ``id`` keys ``table`` (old
    and reference per-token log-probs, loss mask: module docstring). The reference log-probs come from the
    table (the reference is frozen), so the trainer runs no reference pass."""

    clip_low: float = 0.2
    clip_high: float | None = None
    kl_coef: float = 0.0
    kl_estimator: Estimator = "k3"
    normalize: Normalize = "sequence"
    mean_tokens: float | None = None
    max_tokens: float | None = None
    who: ClassVar[str] = "policy-gradient objective"

    def __call__(self, model: nn.Module, batch: Batch, reference: SequenceLogps | None, *,
                 reward_mean: float | None = None) -> StepOutput:
        logps, present = self.completion_logps(model, batch)  # (B, L)
        width = logps.shape[1]
        old = self.column(batch, "old", width, logps)  # (B, L)
        mask = self.column(batch, "mask", width, logps) * present  # (B, L)
        ref = self.column(batch, "ref", width, logps) if self.kl_coef != 0.0 else None
        advantages = batch.scores[:, 0].to(logps.dtype)  # (B,) the record's score is its advantage
        out = clipped_policy_loss(logps, old, advantages, mask, clip_low=self.clip_low, clip_high=self.clip_high,
                                  ref_logps=ref, kl_coef=self.kl_coef, kl_estimator=self.kl_estimator,
                                  normalize=self.normalize, mean_tokens=self.mean_tokens,
                                  max_tokens=self.max_tokens)
        metrics = {k: v.float() for k, v in out.metrics.items()}
        metrics["advantages"] = advantages.detach().float()
        return StepOutput(out.losses, metrics)


@dataclass
class MaskedNLLObjective(TableObjective):
    """RSF's SFT step: the per-token negative log-likelihood of the completion, −Σ_t m_t·log π(y_t) / Σ_t m_t,
    over ``Rating`` records whose ``id`` keys ``table`` (the loss mask: module docstring). No reference."""

    who: ClassVar[str] = "RSF objective"

    def __call__(self, model: nn.Module, batch: Batch, reference: SequenceLogps | None, *,
                 reward_mean: float | None = None) -> StepOutput:
        logps, present = self.completion_logps(model, batch)  # (B, L)
        mask = self.column(batch, "mask", logps.shape[1], logps) * present
        nll = -(logps * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)  # (B,) log-likelihood negated: a loss
        return StepOutput(nll, {"nll": nll.detach().float()})


# -- one round's samples ------------------------------------------------------------------------------------


@dataclass
class RoundSamples:
    """The round's policy samples, judged and encoded (see :func:`collect`)."""

    batch: SampleBatch
    rewards: Tensor
    """(P, G) the judge's reward of every sample."""
    keys: list[str | None]
    """(P·G,) each sample's record id, None when it is not trained (empty text, dropped, cut by encoding)."""
    table: dict[str, SampleTokens]
    what: str
    """``scores`` or ``win_rates``."""
    masked_eos: int = 0
    """Samples whose appended EOS is left out of the loss."""


def judge_rewards(ctx: RoundContext, batch: SampleBatch, mode: str) -> tuple[list[Tensor], str]:
    """Per prompt, (G,) rewards and their kind, logged to ``rounds/NNNN.jsonl`` (module docstring)."""
    if mode == "judge":
        numbers, what = ctx.judge_groups(batch)
        for i in range(len(ctx.prompts)):
            ctx.log_samples(i, batch, numbers[i], what)
        return numbers, what
    out = []
    for i in range(len(ctx.prompts)):
        m = ctx.preference_matrix(i, [c.text for c in batch.group(i)])  # (G, G)
        out.append(spo_rewards(m[None])[0].float())
        ctx.log_samples(i, batch, out[-1], "win_rates", preferences=[[float(x) for x in row] for row in m])
    return out, "win_rates"


def collect(ctx: RoundContext, rewards: str, truncated: str, *, old: bool, ref: bool) -> RoundSamples:
    """Sample G per prompt, judge, log, and encode the distinct trainable samples into a token table, with
    the policy's (``old``) and the reference's (``ref``) per-token log-probs when asked."""
    g = ctx.online.samples_per_prompt
    batch = ctx.sample(g)
    numbers, what = judge_rewards(ctx, batch, rewards)
    encoder = Encoder(ctx.tokenizer, ctx.run_config.encode)
    ids: dict[tuple[Any, ...], str] = {}
    ended_by_id: dict[str, bool] = {}  # did the sample end with a sampled EOS
    keys: list[str | None] = []
    records: list[Rating] = []
    for k, c in enumerate(batch.completions):
        i = k // g
        p = ctx.prompts[i]
        ended = c.stop_reason == "eos"
        if not usable(p, c.text) or (truncated == "drop" and not ended):
            keys.append(None)
            continue
        key = (tuple(ctx.prompt_ids[i]), c.text, ended)
        if key not in ids:
            ids[key] = f"r{ctx.index}-s{len(ids)}"
            ended_by_id[ids[key]] = ended
            records.append(Rating(p, as_completion(p, c.text), score=0.0, id=ids[key]))
        keys.append(ids[key])
    examples = {str(ex.id): ex for ex in encoder.encode_all(records)[0]}
    keys = [x if x in examples else None for x in keys]
    table: dict[str, SampleTokens] = {}
    for rid, ex in examples.items():
        comp = tuple(ex.sequences[0].completion_ids)
        mask = [1.0] * len(comp)
        if encoder.config.add_eos and not ended_by_id[rid] and comp and comp[-1] == encoder.eos_id:
            mask[-1] = 0.0  # the EOS the encoder appended to a cut sample: never sampled
        table[rid] = SampleTokens(comp, tuple(mask))
    masked = sum(1 for x in keys if x is not None and table[x].mask[-1] == 0.0)
    listed = [examples[rid] for rid in table]
    mc = ctx.run_config.model
    engine = {"chunk_size": mc.chunk_size, "packing": mc.packing, "share_prefix": mc.share_prefix}
    olds = token_logps(ctx.policy, listed, encoder.pad_id, **engine) if old and listed else None
    refs = token_logps(ctx.reference, listed, encoder.pad_id, **engine) \
        if ref and listed and ctx.reference is not None else None
    for n, rid in enumerate(list(table)):
        e = table[rid]
        table[rid] = SampleTokens(e.completion_ids, e.mask, None if olds is None else olds[n],
                                  None if refs is None else refs[n])
    return RoundSamples(batch, torch.stack([x.double() for x in numbers]), keys, table, what, masked)


def per_token_rows(model: nn.Module, examples: list[EncodedExample], pad_id: int,
                   step: Callable[[Batch], Sequence[Tensor]], *, batch_size: int = 64) -> list[tuple[tuple[float, ...], ...]]:
    """Run ``step`` (batch -> (B, L) completion-aligned tensors) over ``examples`` in batches, in eval mode
    without gradients; per example, each tensor's row cut to the example's completion length."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out: list[tuple[tuple[float, ...], ...]] = []
    try:
        with torch.no_grad():
            for s in range(0, len(examples), batch_size):
                chunk = examples[s:s + batch_size]
                batch = collate(chunk, pad_id).to(device)
                grids = [g.cpu() for g in step(batch)]
                for b, ex in enumerate(chunk):
                    n = len(ex.sequences[0].completion_ids)
                    out.append(tuple(tuple(float(x) for x in g[b, :n]) for g in grids))
    finally:
        model.train(was_training)
    return out


def token_logps(model: nn.Module, examples: list[EncodedExample], pad_id: int, *, batch_size: int = 64,
                chunk_size: int = 1024, packing: bool = True, share_prefix: bool = True) -> list[tuple[float, ...]]:
    """Per example, the per-token completion log-probs under ``model`` (teacher-forced with the trainer's
    engine, eval mode, no gradients)."""

    def step(batch: Batch) -> tuple[Tensor]:
        seq = sequence_logps(model, batch, chunk_size=chunk_size, token_logps=True, packing=packing,
                             share_prefix=share_prefix)
        return (completion_tokens(seq, batch)[0],)

    return [rows[0] for rows in per_token_rows(model, examples, pad_id, step, batch_size=batch_size)]


def reward_metrics(ctx: RoundContext, samples: RoundSamples) -> dict[str, Any]:
    """``reward``, ``reward_std``, ``frac_reward_zero_std``, ``rewards/<judge>/mean|std`` (TRL's names)."""
    r = samples.rewards  # (P, G)
    std = r.std(dim=1)  # (P,)
    name = judge_name(ctx.judge)
    return {"reward": float(r.mean()), "reward_std": float(std.mean()),
            "frac_reward_zero_std": float((std < 1e-12).double().mean()),
            f"rewards/{name}/mean": float(r.mean()), f"rewards/{name}/std": float(r.flatten().std()),
            "reward/kind": samples.what, "truncated/masked_eos": samples.masked_eos}


def _records(ctx: RoundContext, samples: RoundSamples, values: Tensor, chosen: Sequence[int] | None = None
             ) -> list[Record]:
    """One weighted ``Rating(prompt, y, score=value, id=key)`` per distinct (sample, value) among the trained
    samples (or ``chosen`` flat indices), weights = count · (records / samples) so that the trainer's mean
    over records is the mean over samples."""
    g = ctx.online.samples_per_prompt
    flat = values.flatten().tolist()
    counted: list[tuple[Record, float]] = []
    for k in (range(len(samples.keys)) if chosen is None else chosen):
        key = samples.keys[k]
        if key is not None:
            p = ctx.prompts[k // g]
            counted.append((Rating(p, as_completion(p, samples.batch.completions[k].text), score=flat[k], id=key), 1.0))
    return weighted(counted)


# -- options -------------------------------------------------------------------------------------------------


def _choice(algorithm: str, key: str, value: Any, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ConfigError(f"online algorithm {algorithm!r}: option {key} must be one of {list(choices)}, got {value!r}")


def _number(algorithm: str, key: str, value: Any, low: float, high: float | None = None, *,
            low_open: bool = False, integer: bool = False) -> None:
    ok = isinstance(value, int if integer else int | float) and not isinstance(value, bool) \
        and math.isfinite(value) and (value > low if low_open else value >= low) and (high is None or value <= high)
    if not ok:
        bound = f"{'>' if low_open else '>='} {low:g}" + (f" and <= {high:g}" if high is not None else "")
        kind = "an int" if integer else "a number"
        raise ConfigError(f"online algorithm {algorithm!r}: option {key} must be {kind} {bound}, got {value!r}")


def effective_kl_coef(kl_coef: float | None, run_config: RunConfig) -> float:
    """β: the option when set, else ``loss.beta`` (its registry default when unset; 0 without one)."""
    if kl_coef is not None:
        return float(kl_coef)
    spec = LOSSES.get(run_config.loss.name)
    if spec is None or "beta" not in spec.params:
        return 0.0
    return float(validate_loss_params(run_config.loss.name, dict(run_config.loss.params))["beta"])


def _check_common(algorithm: Any, run_config: RunConfig, online: OnlineConfig) -> None:
    name = algorithm.name
    _choice(name, "rewards", algorithm.rewards, ("judge", "spo"))
    _choice(name, "truncated", algorithm.truncated, ("mask_eos", "drop"))
    if run_config.loss.name not in LOSSES:
        raise ConfigError(f"unknown loss {run_config.loss.name!r} (online algorithm {name!r} reads loss.beta "
                          "and whether the loss keeps a reference)")


def _check_policy_gradient(algorithm: Any, run_config: RunConfig, online: OnlineConfig, normalizations: Sequence[str]
                           ) -> None:
    name = algorithm.name
    _check_common(algorithm, run_config, online)
    _number(name, "clip_low", algorithm.clip_low, 0.0, 1.0)
    if algorithm.clip_low >= 1.0:
        raise ConfigError(f"online algorithm {name!r}: option clip_low must be < 1, got {algorithm.clip_low!r}")
    if algorithm.clip_high is not None:
        _number(name, "clip_high", algorithm.clip_high, 0.0)
    _choice(name, "normalize", algorithm.normalize, normalizations)
    _choice(name, "kl_estimator", algorithm.kl_estimator, tuple(KL_ESTIMATORS))
    if algorithm.kl_coef is not None:
        _number(name, "kl_coef", algorithm.kl_coef, 0.0)
    _number(name, "iterations", algorithm.iterations, 1, integer=True)
    beta = effective_kl_coef(algorithm.kl_coef, run_config)
    if beta > 0 and not LOSSES[run_config.loss.name].needs_reference:
        raise ConfigError(f"online algorithm {name!r}: kl_coef={beta:g} needs a reference model, and the loop keeps "
                          f"one only when loss.name has one; loss.name={run_config.loss.name!r} has none: use a loss "
                          "with a reference (the default loss.name has one) or set kl_coef: 0")


# -- GRPO and RLOO -------------------------------------------------------------------------------------------


def _policy_gradient_round(ctx: RoundContext, algo: Any, *, leave_one_out: bool, kl_in_reward: bool
                           ) -> dict[str, Any]:
    """One GRPO (group-normalised advantages) or RLOO (``leave_one_out``) round (class docstrings)."""
    beta = effective_kl_coef(algo.kl_coef, ctx.run_config)
    has_ref = ctx.reference is not None
    samples = collect(ctx, algo.rewards, algo.truncated, old=True, ref=has_ref)
    est = KL_ESTIMATORS[algo.kl_estimator]
    g = ctx.online.samples_per_prompt
    seq_kl = torch.zeros(samples.rewards.numel(), dtype=torch.float64)  # (P·G,) Σ_t m·k(old, ref)
    seq_k1 = torch.zeros_like(seq_kl)
    tok = {"kl": 0.0, "neg_logp": 0.0, "n": 0.0}
    trained = 0
    for k, key in enumerate(samples.keys):
        if key is None:
            continue
        e = samples.table[key]
        m = torch.tensor(e.mask, dtype=torch.float64)
        old = torch.tensor(e.old or (), dtype=torch.float64)
        tok["neg_logp"] += float(-(old * m).sum())
        tok["n"] += float(m.sum())
        trained += 1
        if e.ref is not None:
            ref = torch.tensor(e.ref, dtype=torch.float64)
            seq_kl[k] = (est(old, ref) * m).sum()
            seq_k1[k] = ((old - ref) * m).sum()
            tok["kl"] += float((est(old, ref) * m).sum())
    rewards = samples.rewards  # (P, G)
    if leave_one_out:
        penalised = rewards - beta * seq_kl.view(-1, g) if kl_in_reward and has_ref else rewards
        advantages = rloo_advantages(penalised)  # (P, G)
    else:
        advantages = grpo_advantages(rewards, scale=algo.scale)  # (P, G)
    records = _records(ctx, samples, advantages)
    normalize, max_tokens, mean_tokens = algo.normalize, None, None
    if normalize == "sum":
        normalize, max_tokens = "constant", 1.0
    elif normalize == "constant":
        max_tokens = float(ctx.online.sampling.max_new_tokens)
    elif normalize == "token" and records:
        weights = [r.weight for r in records]
        lengths = [sum(samples.table[str(r.id)].mask) for r in records]
        mean_tokens = max(sum(w * n for w, n in zip(weights, lengths)) / sum(weights), 1.0)
    mc = ctx.run_config.model
    objective = PolicyGradientObjective(
        samples.table, clip_low=algo.clip_low, clip_high=algo.clip_high,
        kl_coef=0.0 if kl_in_reward or not has_ref else beta, kl_estimator=algo.kl_estimator, normalize=normalize,
        mean_tokens=mean_tokens, max_tokens=max_tokens, chunk_size=mc.chunk_size, packing=mc.packing,
        share_prefix=mc.share_prefix)
    summary: dict[str, float] = {}
    for it in range(algo.iterations):
        summary = ctx.train(records, objective=objective, tag=f"iter{it}" if it else "")
    m: dict[str, Any] = {**reward_metrics(ctx, samples), "records": len(records), "samples_trained": trained}
    if tok["n"]:
        m["entropy"] = tok["neg_logp"] / tok["n"]
        if has_ref:
            m["kl"] = tok["kl"] / tok["n"]
    if has_ref and trained:
        kl_seq = float(seq_k1.sum()) / trained
        m.update({"beta": beta, "objective/non_score_reward": -beta * kl_seq,
                  "objective/rlhf_reward": m["reward"] - beta * kl_seq})
    for key in ("clip_ratio", "clip_ratio/low_mean", "clip_ratio/high_mean"):
        if key in summary:
            m[key] = summary[key]
    m.update({f"train/{k}": v for k, v in summary.items()})
    return m


@dataclass
class GRPO:
    """GRPO (Shao et al. 2024, "DeepSeekMath", arXiv 2402.03300, Eq. 3, outcome supervision, Sec. 4.1.2):
    per prompt G samples y_i ∼ π_old, rewards r_i, advantages Â_i = (r_i − mean r)/(std r + ε) given to
    every token (``scale``: ``group_std``; ``none`` is Dr. GRPO, Liu et al. 2025, arXiv 2503.20783;
    ``batch_std``), and ``iterations`` (μ) passes of the trainer over the round's samples minimising, per
    sample, the normalised token sum of −min(ρ_t·Â, clip(ρ_t, 1 − ε_low, 1 + ε_high)·Â) + β·k(π, π_ref)_t
    with ρ_t = π(y_t)/π_old(y_t) (:func:`~prefkit.losses.rl.clipped_policy_loss`; ``clip_high`` > ``clip_low``
    is DAPO's clip-higher, Yu et al. 2025, arXiv 2503.14476; ``normalize``: ``sequence`` 1/|o_i| as the
    paper, ``token`` 1/mean|o| (DAPO), ``constant`` 1/``max_new_tokens`` (Dr. GRPO)). Each pass is
    ``online.steps_per_round`` optimizer steps (or ``epochs_per_round`` epochs) with the AdamW state kept;
    π_old stays the sampling policy through all passes. β is ``kl_coef`` (module docstring).

    Deviations: ``token`` divides by the round's mean trained length, not each minibatch's (equal for one
    full-batch step); μ counts trainer passes, not single gradient steps (one pass of one full-batch step
    is the paper's inner step).
    """

    rewards: str = "judge"
    """``judge`` (pointwise scores; a pairwise-only judge gives win shares) or ``spo`` (win shares, any judge)."""
    scale: str = "group_std"
    """Advantage scaling: ``group_std`` (GRPO), ``none`` (Dr. GRPO), ``batch_std``."""
    clip_low: float = 0.2
    """ε_low, the ratio's lower clip 1 − ε_low (in [0, 1))."""
    clip_high: float | None = None
    """ε_high, the upper clip 1 + ε_high (unset: ε_low; DAPO uses 0.28)."""
    normalize: str = "sequence"
    """Loss normalisation over tokens: ``sequence``, ``token`` or ``constant``."""
    kl_coef: float | None = None
    """β of the KL-to-reference loss term (>= 0; unset: ``loss.beta``; 0: no KL term)."""
    kl_estimator: str = "k3"
    """The per-token KL estimator of the loss term: ``k1``, ``k2`` or ``k3`` (GRPO's)."""
    iterations: int = 1
    """μ, trainer passes over the same samples per round (>= 1)."""
    truncated: str = "mask_eos"
    """Samples that did not end with EOS: ``mask_eos`` (leave the appended EOS out of the loss) or ``drop``."""
    name: str = "grpo"

    def check(self, run_config: RunConfig, online: OnlineConfig) -> None:
        _check_policy_gradient(self, run_config, online, ("sequence", "token", "constant"))
        _choice(self.name, "scale", self.scale, ("group_std", "batch_std", "none"))

    def round(self, ctx: RoundContext) -> dict[str, Any]:
        return _policy_gradient_round(ctx, self, leave_one_out=False, kl_in_reward=False)


@dataclass
class RLOO:
    """RLOO (Ahmadian et al. 2024, "Back to Basics: Revisiting REINFORCE Style Optimization for Learning from
    Human Feedback in LLMs", arXiv 2402.14740): per prompt G samples, the sequence-level reward
    R_i = r_i − β·Σ_t k(π_old, π_ref)_t (``kl_penalty: reward``, the paper's; k1 by default), advantages with
    the leave-one-out baseline Â_i = R_i − mean_{j≠i} R_j (:func:`~prefkit.losses.rl.rloo_advantages`), and
    the REINFORCE loss −Â_i·log π(y_i) over the whole sequence (``normalize: sum``), written as the clipped
    ratio loss: with one pass (``iterations: 1``) of one step the ratio is 1 and the clip never acts, so it
    is exactly REINFORCE; more passes or steps make it PPO-clipped RLOO (TRL's RLOO). ``kl_penalty: loss``
    instead adds β·k to the loss as GRPO does.

    Deviations: none for one full-batch step; ``normalize`` may also be ``sequence``, ``token`` or
    ``constant`` (GRPO's meanings).
    """

    rewards: str = "judge"
    """``judge`` or ``spo`` (as GRPO)."""
    clip_low: float = 0.2
    """ε_low (acts only after the first step on the same samples)."""
    clip_high: float | None = None
    """ε_high (unset: ε_low)."""
    normalize: str = "sum"
    """``sum`` (the sequence's summed log-prob, the paper's), ``sequence``, ``token`` or ``constant``."""
    kl_coef: float | None = None
    """β (>= 0; unset: ``loss.beta``; 0: no KL)."""
    kl_estimator: str = "k1"
    """Per-token KL estimator summed into the sequence penalty (k1: log π_old − log π_ref, the paper's)."""
    kl_penalty: str = "reward"
    """``reward``: −β·KL(seq) in the reward (the paper's); ``loss``: β·k per token in the loss."""
    iterations: int = 1
    """Trainer passes over the same samples per round (>= 1)."""
    truncated: str = "mask_eos"
    """As GRPO."""
    name: str = "rloo"

    def check(self, run_config: RunConfig, online: OnlineConfig) -> None:
        _check_policy_gradient(self, run_config, online, ("sum", "sequence", "token", "constant"))
        _choice(self.name, "kl_penalty", self.kl_penalty, ("reward", "loss"))

    def round(self, ctx: RoundContext) -> dict[str, Any]:
        return _policy_gradient_round(ctx, self, leave_one_out=True, kl_in_reward=self.kl_penalty == "reward")


# -- RSF ----------------------------------------------------------------------------------------------------


@dataclass
class RSF:
    """Rejection-sampling fine-tuning, RAFT (Dong et al. 2023, "RAFT: Reward rAnked FineTuning for Generative
    Foundation Model Alignment", arXiv 2304.06767, Algorithm 1), iterated per round: G samples per prompt,
    the ``top_k`` best by the judge (:func:`~prefkit.losses.rewards.rsf_select`, ties to the earlier
    sample; untrainable samples are never chosen), then SFT on them: the per-token negative
    log-likelihood (:class:`MaskedNLLObjective`) with the round's trainer settings. No reference, no KL.

    Deviations: the paper's local (per-prompt) ranking only; a prompt whose best samples are all equal in
    reward still trains on the first of them (RAFT does the same).
    """

    rewards: str = "judge"
    """``judge`` or ``spo`` (as GRPO)."""
    top_k: int = 1
    """Samples kept per prompt (1 <= top_k <= samples_per_prompt)."""
    truncated: str = "mask_eos"
    """As GRPO."""
    name: str = "rsf"

    def check(self, run_config: RunConfig, online: OnlineConfig) -> None:
        _check_common(self, run_config, online)
        _number(self.name, "top_k", self.top_k, 1, online.samples_per_prompt, integer=True)

    def round(self, ctx: RoundContext) -> dict[str, Any]:
        samples = collect(ctx, self.rewards, self.truncated, old=False, ref=False)
        g = ctx.online.samples_per_prompt
        trainable = torch.tensor([k is not None for k in samples.keys]).view(-1, g)  # (P, G)
        masked = torch.where(trainable, samples.rewards, torch.full_like(samples.rewards, -math.inf))
        picked = rsf_select(masked, self.top_k)  # (P, k)
        chosen = [i * g + int(j) for i in range(picked.shape[0]) for j in picked[i] if bool(trainable[i, j])]
        records = _records(ctx, samples, samples.rewards, chosen)
        mc = ctx.run_config.model
        summary = ctx.train(records, objective=MaskedNLLObjective(samples.table, chunk_size=mc.chunk_size,
                                                                  packing=mc.packing, share_prefix=mc.share_prefix))
        flat = samples.rewards.flatten()
        return {**reward_metrics(ctx, samples), "records": len(records),
                "rsf/selected_reward": float(flat[chosen].mean()) if chosen else math.nan,
                **{f"train/{k}": v for k, v in summary.items()}}


__all__ = ["GRPO", "RLOO", "RSF", "PolicyGradientObjective", "MaskedNLLObjective", "SampleTokens", "RoundSamples",
           "collect", "completion_tokens", "token_logps", "judge_rewards", "effective_kl_coef"]
