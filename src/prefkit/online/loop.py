"""The online loop (issue 12, item 3): per round, sample, judge, build records, train.

One round of :func:`run_online`:

1. **Prompts.** ``prompts_per_round`` prompts from a seeded cyclic order over the prompt list: epoch
   ``e`` of the list is ``randperm(len(prompts))`` seeded with ``seed + e``; round ``r`` takes positions
   ``[r·P, (r+1)·P)`` of that endless stream (a pure function of the round, so a resume can recompute it).
2. **Sample.** ``samples_per_prompt`` (G) completions of each prompt with :class:`TorchSampler` from the
   current policy, prompts tokenized exactly as the trainer's ``Encoder`` renders them (BOS, chat
   template). Each round samples with the seed ``seed · 1_000_003 + round`` (``sampling.seed`` is replaced).
3. **Judge.** A pointwise judge scores every sample (:func:`judge_scores`); a pairwise-only judge gives
   each sample its mean win rate against the other G − 1 samples of its prompt (row mean of
   :func:`preference_matrix` off the diagonal). Samples are ranked by that number, higher first.
4. **Build records** (``pairs``), completions as texts; empty or whitespace-only completions are left out,
   and so is any pair of equal texts or equal scores (a tie):

   - ``best_vs_worst``: one :class:`Pair` per prompt, the top-scored sample over the bottom-scored one;
   - ``all_pairs``: every pair of samples with different scores, the higher one chosen;
   - ``random_pair``: one seeded random pair of samples per prompt;
   - ``ranked_list``: one :class:`Ranking` per prompt, best first, over distinct texts with one sample per
     distinct score (the first sampled at that score), so a ranking holds no ties. The trainer needs one
     list size per dataset, so every ranking of the round keeps ``k`` = the smallest size of the round,
     evenly spaced over its levels (best and worst always kept).
5. **Train** on the round's records with the existing :class:`~prefkit.train.trainer.Trainer` and the
   run config's registry loss (a pair loss, or a list loss for ``ranked_list``), in its own run folder
   ``<out_dir>/round-NNNN`` (no saved model, plots or TensorBoard, no progress bar), for
   ``steps_per_round`` optimizer steps (or ``epochs_per_round`` epochs when that is 0). The trainer gets
   the current reference through ``reference_model=`` (``reference.mode`` is set to ``frozen``): with
   ``reference="fixed"`` a frozen copy of the policy taken before round 0; with ``refresh_every_k``
   (iterative DPO) the reference becomes a frozen copy of the policy after every ``k`` rounds. Each round
   starts a fresh optimizer and schedule. ``train.batch_size`` is lowered to the number of records when a
   round has fewer; ``train.seed`` is ``seed + round``. A round with no records (all ties) trains nothing.

Every judged sample is written to ``<out_dir>/rounds/NNNN.jsonl``: one JSON line per prompt with the
prompt, the G completion texts, their ``scores`` (pointwise) or ``win_rates`` (pairwise), token counts,
stop reasons, the round and the sampler settings. Per-round metrics (returned, and appended to
``<out_dir>/metrics.jsonl``) use TRL's key names where they exist: ``objective/scores`` and
``objective/scores_std`` (mean and std of the judge's number over all samples: scores or win rates),
``completions/mean_length`` (tokens), ``completions/clipped_ratio`` (fraction that hit
``max_new_tokens``), plus ``round``, ``records``, ``ties_skipped``, ``seconds`` and the trainer's last
logged metrics prefixed ``train/``.

Not yet here (issue 12): resume after a kill, the CLI, KL/entropy/win-rate-vs-reference metrics, and the
XPO / SPPO / Nash-MD / EGPO plug-ins.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import torch
from torch import Tensor, nn

from prefkit.data.encode import Encoder
from prefkit.data.records import Message, Pair, Prompt, Ranking, Record
from prefkit.errors import ConfigError, DataError, check_known_keys
from prefkit.losses import LOSSES
from prefkit.models.load import frozen_copy
from prefkit.online.judges import Judge, judge_name, judge_scores, preference_matrix, preference_probs
from prefkit.online.sampler import SampleBatch, SamplingSettings, TorchSampler
from prefkit.train.config import RunConfig, load_config, to_dict
from prefkit.train.trainer import Trainer

PairBuilding = Literal["best_vs_worst", "all_pairs", "random_pair", "ranked_list"]
ReferenceRule = Literal["fixed", "refresh_every_k"]


@dataclass(frozen=True)
class OnlineConfig:
    """How the online loop runs; validated when built (a bad value is a one-line :class:`ConfigError`)."""

    rounds: int = 1
    """Rounds of sample → judge → train (>= 1)."""
    prompts_per_round: int = 8
    """Prompts sampled per round (>= 1), taken from a seeded cyclic order over the prompt list."""
    samples_per_prompt: int = 4
    """G, completions sampled per prompt (>= 2: a prompt needs two samples to compare)."""
    pairs: PairBuilding = "best_vs_worst"
    """How records are built from a prompt's judged samples: ``best_vs_worst``, ``all_pairs``,
    ``random_pair`` (pair losses) or ``ranked_list`` (list losses); see the module docstring."""
    sampling: SamplingSettings = field(default_factory=SamplingSettings)
    """Sampler settings (temperature, top-p, top-k, max_new_tokens, stop); the seed is set per round."""
    steps_per_round: int = 0
    """Optimizer steps per round (>= 0); 0: train ``epochs_per_round`` epochs over the round's records."""
    epochs_per_round: float = 1.0
    """Epochs over the round's records when ``steps_per_round`` is 0 (> 0)."""
    reference: ReferenceRule = "fixed"
    """``fixed``: the policy before round 0; ``refresh_every_k``: a frozen copy of the policy, renewed
    after every ``refresh_k`` rounds (iterative DPO)."""
    refresh_k: int = 1
    """Rounds between reference refreshes with ``reference="refresh_every_k"`` (>= 1)."""
    seed: int = 0
    """Seeds the prompt order, the sampler (per round), ``random_pair`` and the trainer (``seed + round``)."""

    def __post_init__(self) -> None:
        if isinstance(self.sampling, dict):
            object.__setattr__(self, "sampling", SamplingSettings.from_dict(self.sampling))
        for name, low in (("rounds", 1), ("prompts_per_round", 1), ("samples_per_prompt", 2),
                          ("steps_per_round", 0), ("refresh_k", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ConfigError(f"online {name} must be an int >= {low}, got {v!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ConfigError(f"online seed must be an int, got {self.seed!r}")
        e = self.epochs_per_round
        if isinstance(e, bool) or not isinstance(e, int | float) or not math.isfinite(e) or e <= 0:
            raise ConfigError(f"online epochs_per_round must be a finite number > 0, got {e!r}")
        for name, allowed in (("pairs", get_args(PairBuilding)), ("reference", get_args(ReferenceRule))):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"online {name} must be one of {list(allowed)}, got {getattr(self, name)!r}")
        if not isinstance(self.sampling, SamplingSettings):
            raise ConfigError(f"online sampling must be SamplingSettings or a mapping, got "
                              f"{type(self.sampling).__name__}")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> OnlineConfig:
        """Build from a mapping (YAML); an unknown key is a ConfigError naming the nearest valid one."""
        check_known_keys(values, [f.name for f in dataclasses.fields(cls)], "online option")
        return cls(**values)

    @property
    def record_kind(self) -> str:
        """The loss kind the built records need: ``list`` for ``ranked_list``, else ``pair``."""
        return "list" if self.pairs == "ranked_list" else "pair"


# -- prompts ---------------------------------------------------------------------------------------------


def round_prompts(num_prompts: int, per_round: int, round_index: int, seed: int) -> list[int]:
    """Indices of the prompts of ``round_index``: positions ``[r·P, (r+1)·P)`` of the endless stream whose
    epoch ``e`` is ``randperm(num_prompts)`` seeded with ``seed + e``."""
    out: list[int] = []
    for pos in range(round_index * per_round, (round_index + 1) * per_round):
        epoch, at = divmod(pos, num_prompts)
        perm = torch.randperm(num_prompts, generator=torch.Generator().manual_seed(seed + epoch))
        out.append(int(perm[at]))
    return out


def _prompt_ids(encoder: Encoder, prompt: Prompt) -> list[int]:
    """The prompt's token ids exactly as training renders them (BOS, chat template with generation prompt)."""
    probe = ((Message("assistant", "a"),), (Message("assistant", "b"),)) if isinstance(prompt, tuple) else ("a", "b")
    ids, _ = encoder.render(Pair(prompt, probe[0], probe[1]))
    return ids


def _as_completion(prompt: Prompt, text: str) -> Any:
    """A sample's text as a prefkit completion: the text, or one assistant message for a chat prompt."""
    return (Message("assistant", text),) if isinstance(prompt, tuple) else text


def _usable(prompt: Prompt, text: str) -> bool:
    """Can this text be a record's completion (not empty, valid text)?"""
    try:
        Pair(prompt, _as_completion(prompt, text), _as_completion(prompt, text + " x"))
    except DataError:
        return False
    return True


# -- judging -------------------------------------------------------------------------------------------


def judge_groups(judge: Judge, prompts: Sequence[Prompt], batch: SampleBatch) -> tuple[list[Tensor], str]:
    """Per prompt, a (G,) tensor of the number samples are ranked by (higher is better), and its name:
    ``scores`` (pointwise judge) or ``win_rates`` (pairwise-only judge: row means of the preference matrix
    off the diagonal)."""
    g = batch.n
    if getattr(judge, "pointwise", False):
        flat_prompts = [p for p in prompts for _ in range(g)]
        flat = [_as_completion(p, c.text) for p, c in zip(flat_prompts, batch.completions)]
        scores = judge_scores(judge, flat_prompts, flat).float()
        return [scores[i * g:(i + 1) * g] for i in range(len(prompts))], "scores"
    if not getattr(judge, "pairwise", False):  # let preference_probs say it in its one line
        preference_probs(judge, [], [], [])
    out = []
    for i, p in enumerate(prompts):
        m, _ = preference_matrix(judge, p, [_as_completion(p, c.text) for c in batch.group(i)])
        out.append((m.sum(1) - 0.5) / (g - 1))
    return out, "win_rates"


# -- record building -----------------------------------------------------------------------------------


def build_records(prompt: Prompt, texts: Sequence[str], scores: Tensor, mode: PairBuilding,
                  generator: torch.Generator) -> tuple[list[Record], int]:
    """Records from one prompt's judged samples (module docstring) and the number of ties skipped."""
    s = [float(x) for x in scores]
    ok = [i for i, t in enumerate(texts) if _usable(prompt, t)]
    comp = [_as_completion(prompt, t) for t in texts]
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


# -- the loop --------------------------------------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {k: _jsonable(v) for k, v in dataclasses.asdict(value).items()}
    return value


def _round_config(run_config: RunConfig, online: OnlineConfig, out_dir: Path, round_index: int,
                  num_records: int) -> RunConfig:
    base = to_dict(run_config)
    tc = base["train"]
    tc.update(seed=online.seed + round_index, progress=False, max_steps=online.steps_per_round,
              epochs=online.epochs_per_round, batch_size=min(int(tc["batch_size"]), num_records))
    base["output"].update(dir=str(out_dir / f"round-{round_index:04d}"), save_model=False, plots=False,
                          tensorboard=False, overwrite=False)
    base["reference"]["mode"] = "frozen"
    return load_config(base=base, check_files=False)


def run_online(policy: nn.Module, tokenizer: Any, prompts: Sequence[Prompt], judge: Judge,
               run_config: RunConfig, online: OnlineConfig, out_dir: str | Path) -> list[dict[str, Any]]:
    """Run ``online.rounds`` rounds of sample → judge → train on ``policy`` in place (module docstring).

    Args:
        policy: a ``*ForCausalLM`` (plain or PEFT-wrapped); trained in place.
        tokenizer: its tokenizer.
        prompts: prefkit prompts (text, or tuples of ``Message``).
        judge: a pointwise or pairwise :class:`Judge`.
        run_config: the trainer's config (``loss``, ``train``, ``encode`` ...); per round the loop sets
            ``output.*``, ``train.seed/max_steps/epochs/progress``, caps ``train.batch_size`` and sets
            ``reference.mode=frozen``.
        online: the loop's settings.
        out_dir: the run folder; must be absent or empty (no resume yet).

    Returns: one metrics dict per round (module docstring).
    """
    if not prompts:
        raise ConfigError("run_online needs at least one prompt")
    loss = LOSSES.get(run_config.loss.name)
    if loss is None:
        raise ConfigError(f"unknown loss {run_config.loss.name!r}")
    if loss.kind != online.record_kind:
        need = "a list loss" if online.record_kind == "list" else "a pair loss"
        raise ConfigError(f"online pairs={online.pairs!r} builds {online.record_kind} records and needs {need}; "
                          f"loss.name={run_config.loss.name!r} is a {loss.kind} loss")
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"online run folder {out} is not empty (resume is not supported yet); pick a new one")
    (out / "rounds").mkdir(parents=True, exist_ok=True)
    prompts = list(prompts)
    encoder = Encoder(tokenizer, run_config.encode)
    prompt_ids = [_prompt_ids(encoder, p) for p in prompts]
    reference = frozen_copy(policy) if loss.needs_reference else None
    was_training = policy.training
    history: list[dict[str, Any]] = []
    try:
        for r in range(online.rounds):
            t0 = time.perf_counter()
            chosen = round_prompts(len(prompts), online.prompts_per_round, r, online.seed)
            round_prompts_ = [prompts[i] for i in chosen]
            settings = dataclasses.replace(online.sampling, seed=online.seed * 1_000_003 + r)
            batch = TorchSampler(policy, tokenizer, seed=settings.seed or 0).sample(
                [prompt_ids[i] for i in chosen], settings, n=online.samples_per_prompt)
            numbers, what = judge_groups(judge, round_prompts_, batch)
            gen = torch.Generator().manual_seed(online.seed * 7_919 + r)
            records: list[Record] = []
            ties = 0
            lines = []
            for i, p in enumerate(round_prompts_):
                group = batch.group(i)
                texts = [c.text for c in group]
                recs, t = build_records(p, texts, numbers[i], online.pairs, gen)
                records += recs
                ties += t
                lines.append(json.dumps({"round": r, "prompt": _jsonable(p), "completions": texts,
                                         what: [float(x) for x in numbers[i]],
                                         "num_tokens": [len(c) for c in group],
                                         "stop_reasons": [c.stop_reason for c in group],
                                         "judge": judge_name(judge), "sampling": _jsonable(settings)},
                                        ensure_ascii=False))
            (out / "rounds" / f"{r:04d}.jsonl").write_text("\n".join(lines) + "\n")
            if online.pairs == "ranked_list":
                records = same_size_rankings(records)
            flat = torch.cat(numbers)
            metrics: dict[str, Any] = {
                "round": r, "objective/scores": float(flat.mean()),
                "objective/scores_std": float(flat.std()) if flat.numel() > 1 else 0.0,
                "completions/mean_length": batch.num_tokens() / len(batch),
                "completions/clipped_ratio": batch.truncated_fraction(),
                "records": len(records), "ties_skipped": ties}
            if records:
                cfg = _round_config(run_config, online, out, r, len(records))
                ref = reference
                trainer = Trainer(cfg, policy, tokenizer, records,
                                  reference_model=(lambda: ref) if ref is not None else None)
                summary = trainer.train()
                metrics.update({f"train/{k}": v for k, v in summary.items() if isinstance(v, int | float)})
            if reference is not None and online.reference == "refresh_every_k" and (r + 1) % online.refresh_k == 0:
                reference = frozen_copy(policy)
            metrics["seconds"] = time.perf_counter() - t0
            history.append(metrics)
            with (out / "metrics.jsonl").open("a") as f:
                f.write(json.dumps(metrics) + "\n")
    finally:
        policy.train(was_training)
    return history


__all__ = ["OnlineConfig", "PairBuilding", "ReferenceRule", "run_online", "round_prompts", "judge_groups",
           "build_records", "same_size_rankings"]
