"""The online loop (issue 12, item 3): per round, sample, judge, build records, train.

One round of :func:`run_online` is the algorithm plug-in's ``round`` (``prefkit.online.algorithms``) on a
:class:`~prefkit.online.context.RoundContext`. For ``online_dpo``:

1. **Prompts.** ``prompts_per_round`` prompts from a seeded cyclic order over the prompt list: epoch
   ``e`` of the list is ``randperm(len(prompts))`` seeded with ``seed + e``; round ``r`` takes positions
   ``[r·P, (r+1)·P)`` of that endless stream (a pure function of the round, so a resume can recompute it).
2. **Sample.** ``samples_per_prompt`` (G) completions of each prompt with :class:`TorchSampler` from the
   current policy, prompts tokenized exactly as the trainer's ``Encoder`` renders them (BOS, chat
   template). Each round samples with a seed derived from ``seed``, the round and the call's tag
   (``sampling.seed`` is replaced).
3. **Judge.** A pointwise judge scores every sample (:func:`judge_scores`); a pairwise-only judge gives
   each sample its mean win rate against the other G − 1 samples of its prompt (row mean of
   :func:`preference_matrix` off the diagonal). Samples are ranked by that number, higher first.
4. **Build records** (``pairs``; ``prefkit.online.algorithms`` says how).
5. **Train** on the round's records with the existing :class:`~prefkit.train.trainer.Trainer` and the
   run config's registry loss (a pair loss, or a list loss for ``ranked_list``), in its own run folder
   ``<out_dir>/round-NNNN`` (no saved model, plots or TensorBoard, no progress bar), for
   ``steps_per_round`` optimizer steps (or ``epochs_per_round`` epochs when that is 0). The trainer gets
   the current reference through ``reference_model=`` (``reference.mode`` is set to ``frozen``): with
   ``reference="fixed"`` a frozen copy of the policy taken before round 0; with ``refresh_every_k``
   (iterative DPO) the reference becomes a frozen copy of the policy after every ``k`` rounds. Each round
   starts a fresh schedule. ``train.batch_size`` is lowered to the number of records when a
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
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prefkit.data.encode import Encoder
from prefkit.data.records import Message, Pair, Prompt
from prefkit.errors import ConfigError
from prefkit.losses import LOSSES
from prefkit.models.load import frozen_copy
from prefkit.online.algorithms import make_algorithm
from prefkit.online.config import OnlineConfig
from prefkit.online.context import RoundContext, stack_numbers
from prefkit.online.judges import Judge, judge_name
from prefkit.train.config import RunConfig

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


def prompt_ids(encoder: Encoder, prompt: Prompt) -> list[int]:
    """The prompt's token ids exactly as training renders them (BOS, chat template with generation prompt)."""
    probe = ((Message("assistant", "a"),), (Message("assistant", "b"),)) if isinstance(prompt, tuple) else ("a", "b")
    ids, _ = encoder.render(Pair(prompt, probe[0], probe[1]))
    return ids


# -- the loop --------------------------------------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {k: _jsonable(v) for k, v in dataclasses.asdict(value).items()}
    return value


def _round_lines(ctx: RoundContext, judge: Judge) -> list[str]:
    out = []
    for line in ctx.lines:
        row = {"round": line["round"], "prompt": _jsonable(ctx.prompts[line["prompt_index"]]),
               "source": line["source"], "tag": line["tag"], "completions": line["texts"]}
        if line["numbers"] is not None:
            row[line["what"]] = line["numbers"]
        row.update(num_tokens=line["num_tokens"], stop_reasons=line["stop_reasons"], judge=judge_name(judge),
                   sampling=_jsonable(line["settings"]))
        row.update({k: _jsonable(v) for k, v in line.items() if k not in row and k not in
                    ("prompt_index", "texts", "numbers", "what", "settings")})
        out.append(json.dumps(row, ensure_ascii=False))
    return out


def _round_metrics(ctx: RoundContext) -> dict[str, Any]:
    flat = stack_numbers(ctx.numbers)
    completions = [c for b in ctx.policy_batches for c in b]
    m: dict[str, Any] = {"round": ctx.index}
    if flat.numel():
        m["objective/scores"] = float(flat.mean())
        m["objective/scores_std"] = float(flat.std()) if flat.numel() > 1 else 0.0
    if completions:
        m["completions/mean_length"] = sum(len(c) for c in completions) / len(completions)
        m["completions/clipped_ratio"] = sum(not c.finished for c in completions) / len(completions)
    return m


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
        online: the loop's settings (``online.algorithm`` picks the plug-in).
        out_dir: the run folder; must be absent or empty (no resume yet).

    Returns: one metrics dict per round (module docstring).
    """
    if not prompts:
        raise ConfigError("run_online needs at least one prompt")
    algorithm = make_algorithm(online)
    algorithm.check(run_config, online)
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"online run folder {out} is not empty (resume is not supported yet); pick a new one")
    (out / "rounds").mkdir(parents=True, exist_ok=True)
    prompts = list(prompts)
    encoder = Encoder(tokenizer, run_config.encode)
    ids = [prompt_ids(encoder, p) for p in prompts]
    loss = LOSSES.get(run_config.loss.name)
    reference = frozen_copy(policy) if loss is not None and loss.needs_reference else None
    was_training = policy.training
    history: list[dict[str, Any]] = []
    optimizer_state: dict[str, Any] | None = None
    try:
        for r in range(online.rounds):
            t0 = time.perf_counter()
            chosen = round_prompts(len(prompts), online.prompts_per_round, r, online.seed)
            ctx = RoundContext(r, [prompts[i] for i in chosen], [ids[i] for i in chosen], policy, reference,
                               tokenizer, judge, online, run_config, out, optimizer_state=optimizer_state)
            extra = algorithm.round(ctx)
            optimizer_state = ctx.optimizer_state
            (out / "rounds" / f"{r:04d}.jsonl").write_text("".join(x + "\n" for x in _round_lines(ctx, judge)))
            metrics = {**_round_metrics(ctx), **ctx.metrics, **extra}
            if reference is not None and online.reference == "refresh_every_k" and (r + 1) % online.refresh_k == 0:
                reference = frozen_copy(policy)
            metrics["seconds"] = time.perf_counter() - t0
            history.append(metrics)
            with (out / "metrics.jsonl").open("a") as f:
                f.write(json.dumps(metrics) + "\n")
    finally:
        policy.train(was_training)
    return history


__all__ = ["OnlineConfig", "run_online", "round_prompts", "prompt_ids"]
