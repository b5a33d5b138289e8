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
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from prefkit.data.records import Pair, Prompt, Ranking, Record
from prefkit.errors import ConfigError, DataError, check_known_keys
from prefkit.losses import LOSSES
from prefkit.online.config import OnlineConfig, PairBuilding
from prefkit.online.context import RoundContext, as_completion
from prefkit.train.config import RunConfig


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


def usable(prompt: Prompt, text: str) -> bool:
    """Can this text be a record's completion (not empty, valid text)?"""
    try:
        Pair(prompt, as_completion(prompt, text), as_completion(prompt, text + " x"))
    except DataError:
        return False
    return True


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


ALGORITHMS: dict[str, type] = {"online_dpo": OnlineDPO}
"""Algorithm name -> plug-in class."""


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


__all__ = ["Algorithm", "ALGORITHMS", "make_algorithm", "OnlineDPO", "build_records", "same_size_rankings",
           "judged_records", "usable"]
