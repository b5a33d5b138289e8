"""What an algorithm plug-in gets for one round: :class:`RoundContext`.

The loop (``prefkit.online.loop``) builds one context per round; an algorithm
(``prefkit.online.algorithms``) calls its helpers to sample, judge, write what was judged and train.
Every helper is deterministic given the run's seed, the round and the call's ``tag``, so a resumed round
draws the same samples.

- :meth:`RoundContext.sample` samples from the policy, the reference or their geometric mixture
  (Nash-MD), seeded by ``(seed, round, tag)``; policy samples are kept for the round's metrics.
- :meth:`RoundContext.judge_groups` ranks each prompt's samples: pointwise scores, or for a pairwise-only
  judge each sample's mean win rate against the other samples of its prompt.
- :meth:`RoundContext.log_samples` adds judged samples to ``rounds/NNNN.jsonl`` (one prefkit rating
  record per sample; a pairwise judge's verdicts among a prompt's samples go with them).
- :meth:`RoundContext.train` trains the policy on records with the one
  :class:`~prefkit.train.trainer.Trainer`, in ``<out>/round-NNNN[-tag]``, keeping the AdamW state from
  round to round when ``online.keep_optimizer``; the trainer's notices are collected in ``messages``
  (the loop writes them to ``<out>/log.txt``), so a round prints nothing itself.
- :meth:`RoundContext.reference_logps` scores samples under the reference, teacher-forced (the round's
  KL estimate).

Several processes (``accelerate launch``, ``processes``): every process runs the round's code on the same
data. :meth:`RoundContext.sample` splits each call's prompts between the processes and gives every process
the whole batch (:class:`~prefkit.online.sampler.TorchSampler`, one process's draws); the judge answers on
the main process only and its answers are broadcast (:class:`MainProcessJudge`); :meth:`RoundContext.train`
hands every process the same records, and the trainer splits each global batch between them (DDP).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from prefkit.data.records import Message, Pair, Prompt, Record
from prefkit.errors import DataError
from prefkit.online.config import OnlineConfig
from prefkit.online.judges import (
    Judge,
    Verdicts,
    judge_name,
    judge_scores,
    preference_matrix,
    preference_probs,
)
from prefkit.online.sampler import Processes, SampleBatch, SamplingSettings, TorchSampler
from prefkit.train.config import RunConfig, load_config, to_dict
from prefkit.train.objectives import Objective
from prefkit.train.trainer import Trainer

Source = Literal["policy", "reference", "mixture"]


def as_completion(prompt: Prompt, text: str) -> Any:
    """A sample's text as a prefkit completion: the text, or one assistant message for a chat prompt."""
    return (Message("assistant", text),) if isinstance(prompt, tuple) else text


def usable(prompt: Prompt, text: str) -> bool:
    """Can this text be a record's completion (not empty, valid text)?"""
    try:
        Pair(prompt, as_completion(prompt, text), as_completion(prompt, text + " x"))
    except DataError:
        return False
    return True


def weighted(records: Sequence[tuple[Record, float]]) -> list[Record]:
    """Records with counts (merging identical ones) as records weighted by count · (n / total), n the number
    of records returned, so the trainer's mean over the round (Σ weight·loss / n) is the count-weighted mean
    over all of them (same loss and gradient, fewer sequences)."""
    counts: dict[Record, float] = {}
    for r, c in records:
        counts[r] = counts.get(r, 0.0) + c
    counts = {r: c for r, c in counts.items() if c > 0}
    scale = len(counts) / max(sum(counts.values()), 1e-12)
    return [dataclasses.replace(r, weight=r.weight * c * scale) for r, c in counts.items()]


def merge_duplicates(records: list[Record]) -> list[Record]:
    """Identical records merged into one, weighted by its count (:func:`weighted`); a no-op when all
    records differ, as with free text."""
    return weighted([(r, 1.0) for r in records])


def tag_seed(seed: int, round_index: int, tag: str) -> int:
    """A seed from the run seed, the round and a tag (stable across processes and runs)."""
    h = 0
    for ch in tag:
        h = (h * 131 + ord(ch)) % 1_000_003
    return (seed * 1_000_003 + round_index) * 1_000_003 + h


_tag_seed = tag_seed  # the name plug-ins used first


class MainProcessJudge:
    """A judge asked on the main process only, its answers broadcast to every process (several processes).

    Every process makes the same calls in the same order (they run the same round on the same samples), so
    each call is one broadcast. Why not a share per process: a judge may be a remote API, a large local
    model loaded once, or draw its own random verdicts; asked once, it answers exactly as in one process
    (the same calls, the same order, the same count). An error on the main process is raised on every
    process."""

    def __init__(self, judge: Judge, processes: Processes):
        self.judge, self.processes = judge, processes
        self.pointwise = bool(getattr(judge, "pointwise", False))
        self.pairwise = bool(getattr(judge, "pairwise", False))
        self.name = judge_name(judge)
        if callable(getattr(judge, "verdicts", None)):
            self.verdicts = self._verdicts

    def _ask(self, method: str, *args: Any) -> Any:
        answer: Any = None
        if self.processes.main:
            try:
                answer = ("ok", getattr(self.judge, method)(*args))
            except Exception as error:  # handed to every process, raised there
                answer = ("error", error)
        kind, value = self.processes.broadcast(answer)
        if kind == "error":
            raise value
        return value

    def score(self, prompts: Sequence[Prompt], completions: Sequence[Any]) -> Tensor:
        return self._ask("score", prompts, completions)

    def prefer(self, prompts: Sequence[Prompt], a: Sequence[Any], b: Sequence[Any]) -> Tensor:
        return self._ask("prefer", prompts, a, b)

    def _verdicts(self, prompts: Sequence[Prompt], a: Sequence[Any], b: Sequence[Any]) -> Verdicts:
        return self._ask("verdicts", prompts, a, b)


@dataclass
class RoundContext:
    """One round's prompts, models and helpers (module docstring)."""

    index: int
    """The round, from 0."""
    prompts: list[Prompt]
    """This round's prompts."""
    prompt_ids: list[list[int]]
    """Their token ids, rendered exactly as training renders them."""
    policy: nn.Module
    reference: nn.Module | None
    """The current reference (frozen), or None when the loss needs none."""
    tokenizer: Any
    judge: Judge
    online: OnlineConfig
    run_config: RunConfig
    out_dir: Path
    optimizer_state: dict[str, Any] | None = None
    """The AdamW state carried between rounds (``online.keep_optimizer``); updated by :meth:`train`."""
    lines: list[dict[str, Any]] = field(default_factory=list)
    """What :meth:`log_samples` collected, written to ``rounds/NNNN.jsonl`` by the loop."""
    policy_batches: list[SampleBatch] = field(default_factory=list)
    """The policy samples of this round (for metrics)."""
    numbers: list[Tensor] = field(default_factory=list)
    """The judge's numbers of the policy samples logged this round (for metrics)."""
    metrics: dict[str, Any] = field(default_factory=dict)
    """Extra metrics an algorithm adds (merged into the round's metrics)."""
    messages: list[str] = field(default_factory=list)
    """The trainer's one-line notices of this round (encoding reports ...)."""
    processes: Processes = field(default_factory=Processes)
    """The processes of the run (several under ``accelerate launch``; module docstring)."""
    verdicts: list[tuple[SampleBatch, int, Tensor]] = field(default_factory=list)
    """``(batch, prompt, (G, G) P(y_a ≻ y_b))`` that :meth:`judge_groups` got from a pairwise-only judge;
    :meth:`log_samples` writes each sample's row with it."""

    # -- sampling --

    def settings(self, tag: str = "") -> SamplingSettings:
        """The round's sampling settings, with the seed for ``tag``."""
        return dataclasses.replace(self.online.sampling, seed=_tag_seed(self.online.seed, self.index, tag))

    def sample(self, n: int, *, source: Source = "policy", tag: str = "", mixture_beta: float = 0.0,
               prompt_ids: list[list[int]] | None = None) -> SampleBatch:
        """``n`` samples of each prompt (of this round, or ``prompt_ids``) from the policy, the reference or
        the token-level geometric mixture ``π^(1−β)·π_ref^β`` (β = ``mixture_beta``)."""
        settings = self.settings(tag or source)
        ids = self.prompt_ids if prompt_ids is None else prompt_ids
        if source == "reference":
            if self.reference is None:
                raise RuntimeError("sampling from the reference needs a loss with a reference")
            sampler = TorchSampler(self.reference, self.tokenizer, seed=settings.seed or 0, processes=self.processes)
        elif source == "mixture":
            if self.reference is None:
                raise RuntimeError("sampling from the mixture needs a loss with a reference")
            sampler = TorchSampler(self.policy, self.tokenizer, mixture=(self.reference, mixture_beta),
                                   seed=settings.seed or 0, processes=self.processes)
        else:
            sampler = TorchSampler(self.policy, self.tokenizer, seed=settings.seed or 0, processes=self.processes)
        batch = sampler.sample(ids, settings, n=n)
        if source == "policy" and prompt_ids is None:
            self.policy_batches.append(batch)
        return batch

    # -- judging --

    def judge_groups(self, batch: SampleBatch) -> tuple[list[Tensor], str]:
        """Per prompt, a (G,) tensor to rank its samples by (higher is better), and its name: ``scores``
        (pointwise judge) or ``win_rates`` (pairwise-only judge: the mean of ``P(y_i ≻ y_j)`` over the
        other G − 1 samples)."""
        g = batch.n
        if getattr(self.judge, "pointwise", False):
            flat_prompts = [p for p in self.prompts for _ in range(g)]
            flat = [as_completion(p, c.text) for p, c in zip(flat_prompts, batch.completions)]
            scores = judge_scores(self.judge, flat_prompts, flat).float()
            return [scores[i * g:(i + 1) * g] for i in range(len(self.prompts))], "scores"
        out = []
        for i in range(len(self.prompts)):
            m = self.preference_matrix(i, [c.text for c in batch.group(i)])
            self.verdicts.append((batch, i, m))
            out.append((m.sum(1) - 0.5) / (g - 1))
        return out, "win_rates"

    def preference_matrix(self, i: int, texts: Sequence[str]) -> Tensor:
        """(K, K) ``P(y_a ≻ y_b)`` among texts of prompt ``i`` (a pointwise judge gives σ(r_a − r_b))."""
        p = self.prompts[i]
        m, _ = preference_matrix(self.judge, p, [as_completion(p, t) for t in texts])
        return m

    def win_rates(self, i: int, texts: Sequence[str]) -> Tensor:
        """(K,) each text's mean ``P(y ≻ y')`` against the other K − 1 texts of prompt ``i``."""
        m = self.preference_matrix(i, texts)
        return (m.sum(1) - 0.5) / (len(texts) - 1)

    def prefer(self, i: int, a: Sequence[str], b: Sequence[str]) -> Tensor:
        """(N,) ``P(a_j ≻ b_j)`` for texts of prompt ``i``."""
        p = self.prompts[i]
        return preference_probs(self.judge, [p] * len(a), [as_completion(p, t) for t in a],
                                [as_completion(p, t) for t in b]).probs.float()

    # -- writing --

    def log_samples(self, i: int, batch: SampleBatch, numbers: Tensor | None, what: str = "scores", *,
                    source: Source = "policy", tag: str = "", **extra: Any) -> None:
        """Record prompt ``i``'s samples of ``batch`` with the judge's ``numbers`` (named ``what``) for
        ``rounds/NNNN.jsonl``; policy samples' numbers also feed the round's ``objective/scores``. ``extra``
        goes to each sample's metadata: a list of one value per sample is split among them, any other
        value is given to every sample. Samples logged with no numbers are not written (not judged)."""
        group = batch.group(i)
        matrix = next((m for b, j, m in self.verdicts if b is batch and j == i), None)
        if matrix is not None and "preferences" not in extra:
            extra["preferences"] = [[float(x) for x in row] for row in matrix]
        self.lines.append({"round": self.index, "prompt_index": i, "source": source, "tag": tag,
                           "texts": [c.text for c in group],
                           "numbers": None if numbers is None else [float(x) for x in numbers], "what": what,
                           "num_tokens": [len(c) for c in group],
                           "stop_reasons": [c.stop_reason for c in group],
                           "settings": batch.settings, **extra})
        if numbers is not None and source == "policy":
            self.numbers.append(numbers.float())

    # -- training --

    def round_config(self, num_records: int, tag: str = "") -> RunConfig:
        """The trainer's config for this round's training (module docstring of ``prefkit.online.loop``);
        ``train.batch_size`` (per process) is capped so that one global batch fits in ``num_records``."""
        base = to_dict(self.run_config)
        tc = base["train"]
        cap = max(1, num_records // self.processes.world)
        tc.update(seed=self.online.seed + self.index, progress=False, max_steps=self.online.steps_per_round,
                  epochs=self.online.epochs_per_round, batch_size=min(int(tc["batch_size"]), cap))
        name = f"round-{self.index:04d}" + (f"-{tag}" if tag else "")
        base["output"].update(dir=str(self.out_dir / name), save_model=False, plots=False, tensorboard=False,
                              overwrite=True)
        base["reference"]["mode"] = "frozen"
        return load_config(base=base, check_files=False)

    def train(self, records: Sequence[Record], *, objective: Objective | None = None, tag: str = "",
              reference: nn.Module | None = None) -> dict[str, float]:
        """Train the policy on ``records`` (with ``objective``, default: the run config's loss) against
        ``reference`` (default: the round's); returns the trainer's last logged metrics. Nothing happens
        for no records."""
        if not records:
            return {}
        ref = reference if reference is not None else self.reference
        trainer = Trainer(self.round_config(len(records), tag), self.policy, self.tokenizer, list(records),
                          objective=objective, reference_model=(lambda: ref) if ref is not None else None,
                          say=self.messages.append)
        if self.online.keep_optimizer and self.optimizer_state is not None:
            trainer.optimizer.load_state_dict(self.optimizer_state)
        summary = trainer.train()
        if self.online.keep_optimizer:
            self.optimizer_state = copy.deepcopy(trainer.optimizer.state_dict())
        del trainer  # several processes: its DDP wrapper (and gradient hooks) go before the next round's
        return summary


    # -- scoring under the reference --

    def reference_logps(self, batch: SampleBatch, prompt_ids: list[list[int]] | None = None,
                        batch_size: int = 64) -> Tensor:
        """(N,) summed log-prob of every completion of ``batch`` under the reference at temperature 1,
        teacher-forced on prompt + completion tokens (prompts of this round, or ``prompt_ids``)."""
        if self.reference is None:
            raise RuntimeError("reference log-probs need a loss with a reference")
        ids = self.prompt_ids if prompt_ids is None else prompt_ids
        rows = [(ids[c.prompt_index], list(c.token_ids)) for c in batch.completions]
        return sequence_logprobs(self.reference, rows, batch_size)


def sequence_logprobs(model: nn.Module, rows: Sequence[tuple[list[int], list[int]]], batch_size: int = 64) -> Tensor:
    """(N,) summed ``log p(completion | prompt)`` under ``model`` (teacher-forced, right-padded batches, in
    float32); an empty completion gets 0."""
    device = next(model.parameters()).device
    out = torch.zeros(len(rows), dtype=torch.float32)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(rows), batch_size):
                chunk = rows[start:start + batch_size]
                width = max(len(p) + len(c) for p, c in chunk)
                ids = torch.zeros(len(chunk), width, dtype=torch.long)
                mask = torch.zeros(len(chunk), width, dtype=torch.long)
                for k, (p, c) in enumerate(chunk):
                    ids[k, :len(p) + len(c)] = torch.tensor(p + c)
                    mask[k, :len(p) + len(c)] = 1
                logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
                logps = torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None].to(device))[..., 0].cpu()
                for k, (p, c) in enumerate(chunk):
                    if c:
                        out[start + k] = logps[k, len(p) - 1:len(p) + len(c) - 1].sum()
    finally:
        model.train(was_training)
    return out


def prompt_sample_texts(batch: SampleBatch, i: int) -> list[str]:
    """The texts of prompt ``i``'s samples."""
    return [c.text for c in batch.group(i)]


def stack_numbers(numbers: list[Tensor]) -> Tensor:
    """All numbers as one flat tensor (empty when none)."""
    return torch.cat(numbers) if numbers else torch.zeros(0)


__all__ = ["RoundContext", "MainProcessJudge", "Source", "as_completion", "usable", "weighted", "merge_duplicates", "prompt_sample_texts", "stack_numbers", "sequence_logprobs", "tag_seed"]
