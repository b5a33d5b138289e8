"""The online loop (issue 12, items 3 and 4): per round, sample, judge, build records, train; resume.

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
   ``<out_dir>/round-NNNN`` (no saved model, plots or TensorBoard, no progress bar; its notices go to
   ``<out_dir>/log.txt``), for ``steps_per_round`` optimizer steps (or ``epochs_per_round`` epochs when
   that is 0). The trainer gets the current reference through ``reference_model=`` (``reference.mode``
   is set to ``frozen``): with ``reference="fixed"`` a frozen copy of the policy taken before round 0;
   with ``refresh_every_k`` (iterative DPO) the reference becomes a frozen copy of the policy after every
   ``k`` rounds. Each round starts a fresh schedule. ``train.batch_size`` is lowered to the number of
   records when a round has fewer; ``train.seed`` is ``seed + round``. A round with no records (all
   ties) trains nothing. The torch global RNG (dropout) is seeded per round inside ``fork_rng``, so the
   caller's RNG state is left as it was.

**Files** in ``out_dir``:

- ``rounds/NNNN.jsonl``: every judged sample of round NNNN as one prefkit rating record per line,
  readable with ``prefkit.data.load``: ``prompt``, ``response`` (text, or one assistant message for a chat
  prompt), ``score`` (the judge's number: a pointwise score, or for a pairwise-only judge the sample's
  mean win rate against the other samples of its prompt), ``id`` and ``metadata`` with ``round``,
  ``source`` (``policy``, ``reference`` or ``mixture``), ``tag``, ``prompt_index`` (in the run's prompt
  list), ``sample_index``, ``group_size``, ``score_kind`` (``scores`` or ``win_rates``), ``judge``,
  ``stop_reason``, ``num_tokens``, ``sampling`` (the sampler settings, seed included) and, for a
  pairwise-only judge, ``preferences`` (the sample's ``P(this ≻ other)`` against each sample of its
  group, itself included as ½), plus what the plug-in passed to ``log_samples``. A sample logged without
  a number is not written. A completion with empty or whitespace-only text (EOS first) is no valid
  record: ``load(..., on_error="skip")`` drops those lines and counts them as ``empty``.
- ``metrics.jsonl``: one line per round (below).
- ``online.json``: what decides the run's results (``prefkit.online.state``), checked on resume.
- ``checkpoints/round-NNNN``: the state after NNNN finished rounds (``prefkit.online.state``).
- ``round-NNNN[-tag]``: the trainer's run folder of each round; ``log.txt``: the trainer's notices.

**Metrics** per round (returned, and appended to ``metrics.jsonl``), TRL's key names where they exist.
"Policy samples" are the samples the round drew from the policy (``ctx.sample(source="policy")``),
before its training step:

- ``objective/scores``, ``objective/scores_std``: mean and std of the judge's number over the logged
  policy samples (scores, or win rates among a prompt's samples); ``objective/scores_margin``: the mean
  over prompts of the best minus the worst such number;
- ``objective/entropy``: the sequence-level Monte-Carlo entropy, mean of ``−log π(y|x)`` over the policy
  samples (TRL's definition), ``log π`` at temperature 1 (the sampler's ``policy_logps``);
- ``objective/kl``: the k1 estimate of KL(π‖π_ref), mean of ``log π(y|x) − log π_ref(y|x)`` over the
  policy samples, ``log π_ref`` teacher-forced (:meth:`RoundContext.reference_logps`); it is unbiased
  when the sampling settings are temperature 1 with no top-k/top-p (otherwise it is that mean under
  the sampling distribution, as TRL's); only with a reference;
- ``beta`` (the loss's β, when it has one), ``objective/non_score_reward`` = −β·kl and
  ``objective/rlhf_reward`` = scores + non_score_reward (a pointwise judge only);
- ``objective/win_rate_vs_reference`` (``online.win_rate_vs_reference``, with a reference): one sample
  per prompt from the reference (tag ``winrate``); the mean over the logged policy samples of
  P(policy sample ≻ that prompt's reference sample): a pointwise judge gives the fraction of wins with
  ties counted ½ (a real win rate, not σ(r_a − r_b)), a pairwise judge its probabilities;
- ``completions/mean_length`` (tokens), ``completions/clipped_ratio`` (fraction that hit
  ``max_new_tokens``), ``val/contain_eos_token`` (fraction that ended with EOS);
- ``round``, ``records``, ``ties_skipped``, ``seconds`` (wall time of the round) and the trainer's last
  logged metrics prefixed ``train/`` (``train/rewards/*``, ``train/logps/*`` ...), plus the plug-in's.

**Progress**: one line per round on stderr (``train.progress``), nothing else.

**Several processes** (``accelerate launch``, ``distributed.strategy: ddp``): every process runs every
round on the same data. The policy starts as the main process's weights (broadcast, as DDP does).
Sampling splits each call's prompts between the processes and gathers the completions, with one
process's random draws, so the samples are one process's (``prefkit.online.sampler``); the judge answers
on the main process and its answers are broadcast (:class:`~prefkit.online.context.MainProcessJudge`);
every process trains on the same records through the one ``Trainer``, whose DDP splits each global batch
(``train.batch_size`` per process: the global batch is ``batch_size x processes``); the main process's
metrics are every process's. Only the main process writes the run folder: ``online.json``,
``rounds/NNNN.jsonl``, ``metrics.jsonl``, ``log.txt`` and the round checkpoints (the trainer's
``round-NNNN`` folders likewise). ``distributed.strategy: fsdp`` is refused with one line: the trainer
shards the policy in place, and sampling runs the whole model on each process.

**Resume** (``resume=True``): after every finished round the loop writes the round's file, its metrics
line and then an atomic checkpoint (the policy's trainable weights, the reference when refreshed, the
AdamW state carried between rounds, the metrics so far). A run killed at any point restarts from the
last checkpoint: the unfinished round is run again from its start, and because every random draw of a
round is seeded by ``(seed, round, tag)`` it is the same round: final weights, ``rounds/*.jsonl`` and
``metrics.jsonl`` (but ``seconds`` and ``train/tokens/s``) equal an uninterrupted run's. ``metrics.jsonl``
is cut back to the checkpoint's rounds; ``rounds`` may grow to extend a finished run. The caller passes
the same initial policy (checked by a hash of its trainable weights), prompts, judge and configs; a
setting that changes results is a one-line ConfigError naming it. The judge must be deterministic.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from prefkit.data.encode import Encoder
from prefkit.data.records import Message, Pair, Prompt
from prefkit.errors import ConfigError
from prefkit.losses import LOSSES
from prefkit.models.load import frozen_copy
from prefkit.online.algorithms import make_algorithm
from prefkit.online.config import OnlineConfig
from prefkit.online.context import MainProcessJudge, RoundContext, as_completion, stack_numbers, tag_seed
from prefkit.online.judges import Judge, judge_name, judge_scores
from prefkit.online.rewards import RoundHooks
from prefkit.online.sampler import Processes
from prefkit.online.state import (
    IDENTITY_FILE,
    check_same_run,
    clean_partial,
    latest_checkpoint,
    load_checkpoint,
    load_judge_state,
    run_identity,
    save_checkpoint,
    write_atomic,
)
from prefkit.train.config import RunConfig, to_dict

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




# -- rounds/NNNN.jsonl ------------------------------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, Tensor):
        return value.tolist()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {k: _jsonable(v) for k, v in dataclasses.asdict(value).items()}
    return value


_LINE_KEYS = ("round", "prompt_index", "source", "tag", "texts", "numbers", "what", "num_tokens", "stop_reasons",
              "settings")


def sample_rows(ctx: RoundContext, prompt_indices: Sequence[int]) -> list[dict[str, Any]]:
    """The round's judged samples as rating rows (module docstring); ``prompt_indices`` maps the round's
    prompts to the run's prompt list."""
    name = judge_name(ctx.judge)
    rows = []
    for n, line in enumerate(ctx.lines):
        if line["numbers"] is None:
            continue
        i, texts = line["prompt_index"], line["texts"]
        prompt = ctx.prompts[i]
        extra = {k: v for k, v in line.items() if k not in _LINE_KEYS}
        for j, (text, number) in enumerate(zip(texts, line["numbers"])):
            meta = {"round": ctx.index, "source": line["source"], "tag": line["tag"],
                    "prompt_index": prompt_indices[i], "sample_index": j, "group_size": len(texts),
                    "score_kind": line["what"], "judge": name, "stop_reason": line["stop_reasons"][j],
                    "num_tokens": line["num_tokens"][j], "sampling": _jsonable(line["settings"])}
            for key, value in extra.items():
                split = isinstance(value, list | tuple | Tensor) and len(value) == len(texts)
                meta[key] = _jsonable(value[j] if split else value)
            rows.append({"id": f"r{ctx.index:04d}-{n}-{j}", "prompt": _jsonable(prompt),
                         "response": _jsonable(as_completion(prompt, text)), "score": number, "metadata": meta})
    return rows


# -- metrics ---------------------------------------------------------------------------------------------


def _pointwise(judge: Judge) -> bool:
    return bool(getattr(judge, "pointwise", False))


def win_rate_vs_reference(ctx: RoundContext) -> float | None:
    """Mean P(policy sample ≻ a reference sample of its prompt) over the logged policy samples (module
    docstring); None without a reference or policy samples."""
    lines = [x for x in ctx.lines if x["source"] == "policy" and x["texts"]]
    if ctx.reference is None or not lines:
        return None
    ref = ctx.sample(1, source="reference", tag="winrate")
    ref_texts = [c.text for c in ref.completions]
    wins: list[Tensor] = []
    if _pointwise(ctx.judge):
        ref_scores = judge_scores(ctx.judge, ctx.prompts, [as_completion(p, t) for p, t in zip(ctx.prompts, ref_texts)])
        for x in lines:
            p = ctx.prompts[x["prompt_index"]]
            mine = torch.tensor(x["numbers"]) if x["what"] == "scores" and x["numbers"] is not None else                 judge_scores(ctx.judge, [p] * len(x["texts"]), [as_completion(p, t) for t in x["texts"]])
            other = ref_scores[x["prompt_index"]].to(mine)
            wins.append((mine > other).float() + 0.5 * (mine == other).float())
    else:
        for x in lines:
            wins.append(ctx.prefer(x["prompt_index"], x["texts"], [ref_texts[x["prompt_index"]]] * len(x["texts"])))
    return float(torch.cat(wins).mean())


def round_metrics(ctx: RoundContext, beta: float | None) -> dict[str, Any]:
    """The round's sample metrics (module docstring); the loop adds the plug-in's and ``seconds``."""
    m: dict[str, Any] = {"round": ctx.index}
    flat = stack_numbers(ctx.numbers)
    if flat.numel():
        m["objective/scores"] = float(flat.mean())
        m["objective/scores_std"] = float(flat.std()) if flat.numel() > 1 else 0.0
        m["objective/scores_margin"] = sum(float(x.max() - x.min()) for x in ctx.numbers) / len(ctx.numbers)
    completions = [c for b in ctx.policy_batches for c in b]
    if not completions:
        return m
    n = len(completions)
    m["completions/mean_length"] = sum(len(c) for c in completions) / n
    m["completions/clipped_ratio"] = sum(not c.finished for c in completions) / n
    m["val/contain_eos_token"] = sum(c.stop_reason == "eos" for c in completions) / n
    logp = torch.tensor([c.policy_logp for c in completions], dtype=torch.float64)
    m["objective/entropy"] = float(-logp.mean())
    if ctx.reference is not None:
        ref = torch.cat([ctx.reference_logps(b) for b in ctx.policy_batches]).double()
        kl = float((logp - ref).mean())
        m["objective/kl"] = kl
        if beta is not None:
            m["beta"] = beta
            m["objective/non_score_reward"] = -beta * kl
            if _pointwise(ctx.judge) and "objective/scores" in m:
                m["objective/rlhf_reward"] = m["objective/scores"] - beta * kl
        if ctx.online.win_rate_vs_reference:
            rate = win_rate_vs_reference(ctx)
            if rate is not None:
                m["objective/win_rate_vs_reference"] = rate
    return m


def _loss_beta(run_config: RunConfig) -> float | None:
    """The loss's β (configured, else its registry default), or None when it has none."""
    spec = LOSSES.get(run_config.loss.name)
    beta = run_config.loss.params.get("beta")
    if beta is None and spec is not None and "beta" in spec.params:
        beta = spec.params["beta"].default
    return float(beta) if isinstance(beta, int | float) and not isinstance(beta, bool) else None


def _progress_line(m: dict[str, Any], rounds: int) -> str:
    parts = [f"online round {m['round'] + 1}/{rounds}"]
    for key, label in (("objective/scores", "scores"), ("objective/kl", "kl"),
                       ("objective/win_rate_vs_reference", "win rate vs ref"), ("train/loss", "loss")):
        if key in m:
            parts.append(f"{label} {m[key]:.3g}")
    if "records" in m:
        parts.append(f"{m['records']} records")
    return ", ".join(parts) + f" ({m['seconds']:.1f} s)"


# -- the loop --------------------------------------------------------------------------------------------


def _weights_hash(model: nn.Module) -> str:
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        if p.requires_grad:
            h.update(name.encode())
            h.update(p.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def _write_round(out: Path, r: int, rows: list[dict[str, Any]], messages: list[str], metrics: dict[str, Any]) -> None:
    """The round's files: ``rounds/NNNN.jsonl``, its ``log.txt`` lines and its ``metrics.jsonl`` line."""
    write_atomic(out / "rounds" / f"{r:04d}.jsonl", "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in rows))
    if messages:
        with (out / "log.txt").open("a") as f:
            f.write("".join(f"round {r}: {x}\n" for x in messages))
    with (out / "metrics.jsonl").open("a") as f:
        f.write(json.dumps(metrics) + "\n")


def _open_run(out: Path, identity: dict[str, Any], resume: bool) -> bool:
    """Check (and claim) the run folder; True when there is a run to resume."""
    used = out.exists() and any(out.iterdir())
    if used and not resume:
        raise ConfigError(f"online run folder {out} is not empty; pick a new one, or resume the run in it "
                          "(resume=True, --resume)")
    if used and not (out / IDENTITY_FILE).is_file():
        raise ConfigError(f"resume: {out} is not an online run folder (no {IDENTITY_FILE}); pick a new one")
    if used:
        check_same_run(out, identity)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / IDENTITY_FILE, json.dumps(identity, indent=1, default=str))  # first: marks the folder
    (out / "rounds").mkdir(exist_ok=True)
    return used


def check_strategy(run_config: RunConfig) -> None:
    """Launched on several processes: a one-line ConfigError unless ``distributed.strategy`` is ``ddp`` (FSDP
    shards the policy in place in each round's trainer, and sampling runs the whole policy on each process)."""
    strategy = run_config.distributed.strategy
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and strategy != "ddp":
        raise ConfigError(f"distributed.strategy={strategy}: the online loop runs on several processes with ddp only "
                          "(each process samples with the whole policy); set distributed.strategy=ddp")


def _start_processes(policy: nn.Module, run_config: RunConfig) -> Processes:
    """The run's processes; several: the policy on this process's device, with the main process's weights."""
    check_strategy(run_config)
    procs = Processes.current()
    if procs.world == 1:
        return procs
    import torch.distributed as dist

    policy.to(procs.device)
    with torch.no_grad():  # as DDP does: an unseeded initialisation would differ between processes
        for tensor in (*policy.parameters(), *policy.buffers()):
            dist.broadcast(tensor.data, src=0)
    return procs


def run_online(policy: nn.Module, tokenizer: Any, prompts: Sequence[Prompt], judge: Judge,
               run_config: RunConfig, online: OnlineConfig, out_dir: str | Path, *,
               resume: bool = False) -> list[dict[str, Any]]:
    """Run ``online.rounds`` rounds of sample → judge → train on ``policy`` in place (module docstring).

    Args:
        policy: a ``*ForCausalLM`` (plain or PEFT-wrapped); trained in place.
        tokenizer: its tokenizer.
        prompts: prefkit prompts (text, or tuples of ``Message``).
        judge: a pointwise or pairwise :class:`Judge` (deterministic, for an exact resume).
        run_config: the trainer's config (``loss``, ``train``, ``encode`` ...); per round the loop sets
            ``output.*``, ``train.seed/max_steps/epochs/progress``, caps ``train.batch_size`` and sets
            ``reference.mode=frozen``.
        online: the loop's settings (``online.algorithm`` picks the plug-in).
        out_dir: the run folder; must be absent or empty, unless ``resume``.
        resume: continue the online run in ``out_dir`` from its last checkpoint (``policy`` is the same
            initial policy as the first call's); an absent or empty folder starts a new run.

    Under ``accelerate launch`` every process calls it with the same arguments (module docstring).

    Returns: one metrics dict per round of the whole run, resumed rounds included (module docstring).
    """
    if not prompts:
        raise ConfigError("run_online needs at least one prompt")
    algorithm = make_algorithm(online)
    algorithm.check(run_config, online)
    out = Path(out_dir)
    prompts = list(prompts)
    procs = _start_processes(policy, run_config)
    identity = run_identity(_jsonable(online), to_dict(run_config), _jsonable(prompts), judge_name(judge))
    identity["policy"] = _weights_hash(policy)
    opened: tuple[bool, Exception | None] = (False, None)
    if procs.main:  # the main process claims the folder; the others learn what it found
        try:
            opened = (_open_run(out, identity, resume), None)
        except ConfigError as error:
            opened = (False, error)
    resuming, error = procs.broadcast(opened)
    if error is not None:
        raise error
    encoder = Encoder(tokenizer, run_config.encode)
    ids = [prompt_ids(encoder, p) for p in prompts]
    loss = LOSSES.get(run_config.loss.name)
    reference = frozen_copy(policy) if loss is not None and loss.needs_reference else None
    refresh = reference is not None and online.reference == "refresh_every_k"
    beta = _loss_beta(run_config)
    start, optimizer_state, history = 0, None, []
    hooks = judge if isinstance(judge, RoundHooks) else None  # a judge with round state (RewardMix)
    if procs.world > 1:
        judge = MainProcessJudge(judge, procs)
    if resuming:
        if procs.main:
            clean_partial(out)
        procs.barrier()
        checkpoint = latest_checkpoint(out)
        if checkpoint is not None:
            start, optimizer_state, history = load_checkpoint(checkpoint, policy, reference)
            judge_state = load_judge_state(checkpoint)
            if hooks is not None and judge_state is not None:
                hooks.load_state_dict(judge_state)
        if start > online.rounds:
            raise ConfigError(f"resume: {out} already holds {start} finished rounds, more than "
                              f"online.rounds={online.rounds}; set online.rounds={start} or more")
        if procs.main:
            write_atomic(out / "metrics.jsonl", "".join(json.dumps(h) + "\n" for h in history))
    console = None
    if run_config.train.progress and procs.main:
        from rich.console import Console

        console = Console(stderr=True, soft_wrap=True)
        if resuming:
            where = (f"all {start} rounds are done, nothing to train" if start == online.rounds
                     else f"at round {start + 1}/{online.rounds}")
            console.print(f"[dim]prefkit:[/dim] online: resuming {out}: {where}", highlight=False)
    was_training = policy.training
    devices = list(range(torch.cuda.device_count()))
    try:
        for r in range(start, online.rounds):
            t0 = time.perf_counter()
            chosen = round_prompts(len(prompts), online.prompts_per_round, r, online.seed)
            ctx = RoundContext(r, [prompts[i] for i in chosen], [ids[i] for i in chosen], policy, reference,
                               tokenizer, judge, online, run_config, out, optimizer_state=optimizer_state,
                               processes=procs)
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(tag_seed(online.seed, r, "torch") % 2**63)
                if hooks is not None:
                    hooks.begin_round(r)
                extra = algorithm.round(ctx)
                if hooks is not None:
                    hooks.end_round()  # the win-rate samples of round_metrics do not count
                    ctx.metrics.update(hooks.metrics())
                metrics = {**round_metrics(ctx, beta), **ctx.metrics, **extra}
            optimizer_state = ctx.optimizer_state
            if refresh and (r + 1) % online.refresh_k == 0:
                reference = frozen_copy(policy)
            metrics["seconds"] = time.perf_counter() - t0
            metrics = procs.broadcast(metrics)  # the main process's (its judge's round state, its timing)
            history.append(metrics)
            if procs.main:
                _write_round(out, r, sample_rows(ctx, chosen), ctx.messages, metrics)
                save_checkpoint(out, r + 1, policy, reference if refresh and r + 1 >= online.refresh_k else None,
                                optimizer_state, history,
                                judge_state=hooks.state_dict() if hooks is not None else None)
            procs.barrier()
            if console is not None:
                console.print(f"[dim]prefkit:[/dim] {_progress_line(metrics, online.rounds)}", highlight=False)
    finally:
        policy.train(was_training)
    return history


__all__ = ["OnlineConfig", "run_online", "check_strategy", "round_prompts", "prompt_ids", "round_metrics", "sample_rows",
           "win_rate_vs_reference"]
