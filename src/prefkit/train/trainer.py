"""The one training loop: every registry loss, one readable ``train()`` on ``accelerate``.

Quick start (in memory)::

    from prefkit.train import Trainer, load_config
    cfg = load_config(overrides=["loss.name=dpo", "train.max_steps=10", "output.dir=runs/x"])
    trainer = Trainer(cfg, model, tokenizer, train_records, eval_records)
    summary = trainer.train()           # writes runs/x/{config.yaml,metrics.jsonl,checkpoints,model,plots}

From a config file: ``prefkit.train.run(load_config("job.yaml"))`` (what ``prefkit train`` does).

The pluggable step is the *objective* (``prefkit.train.objectives``): ``objective(model, batch,
reference) -> StepOutput`` turns a batch into per-example losses (B,) and detached metrics.
``PreferenceObjective`` (pair, list and unpaired losses) computes sequence log-probs with the engine and
calls the registry loss; ``RewardObjective`` scores sequences with a reward model instead, and gets the
same loop, logging and checkpoints.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from prefkit.data.batch import Batch
from prefkit.data.encode import Encoder, collate
from prefkit.data.records import Record
from prefkit.errors import ConfigError, PrefkitError
from prefkit.models.load import disable_dropout, frozen_copy, is_peft, quiet_loading
from prefkit.models.logprobs import SequenceLogps
from prefkit.train import checkpoint as ckpt
from prefkit.train import distributed, rundir
from prefkit.train.config import RunConfig, dump_config, to_dict
from prefkit.train.heap import heap_trimmer
from prefkit.train.metrics import MetricsWriter, plot_metrics, progress_bar, read_metrics
from prefkit.train.objectives import Objective, StepOutput, make_objective
from prefkit.train.refcache import (
    CachedReference,
    ModelReference,
    ReferenceCache,
    ReferenceSource,
    assemble_table,
    compute_shard,
    hash_records,
    hash_settings,
    hash_tokenizer,
    hash_weights,
)

Evaluator = Callable[[nn.Module, int], dict[str, float]]
"""A diagnostic the trainer calls as ``fn(model, step)`` (the unwrapped policy, in eval mode, no gradients,
main process only) before the first step, every ``eval.every`` steps and at the end; its metrics are
logged as ``eval/<key>`` (``prefkit.eval.during_training`` builds them from the ``eval:`` section)."""

# -- the module accelerate wraps ------------------------------------------------------------------------


class PolicyStep(nn.Module):
    """The policy and the objective as one module: what ``accelerate`` wraps (DDP, FSDP, DeepSpeed).

    ``forward(batch, reference)`` is one objective call on the *unwrapped* policy. The objective may
    reach inside the model (the log-prob engine runs the decoder and the output layer directly; a
    reward objective reads ``model.head``), which a DDP wrapper around the bare policy would not see:
    its gradient synchronisation hooks are armed by its own ``forward``. Wrapping this module instead
    routes every training forward through the wrapper's ``forward``, whatever the objective does
    inside. The objective is kept as a plain attribute (not a submodule): its state is not replicated.
    ``reference`` may be a function of no arguments that computes it: it then runs inside this forward,
    where a sharded (FSDP) policy's root weights are gathered (the "adapters off" reference is the policy).
    """

    def __init__(self, model: nn.Module, objective: Objective):
        super().__init__()
        self.model = model
        object.__setattr__(self, "objective", objective)

    def forward(self, batch: Batch, reference: SequenceLogps | Callable[[], SequenceLogps | None] | None,
                reward_mean: float | None = None) -> StepOutput:
        if callable(reference):
            reference = reference()
        return self.objective(self.model, batch, reference, reward_mean=reward_mean)


# -- data order --------------------------------------------------------------------------------------------


@dataclass
class DataOrder:
    """Seeded shuffled order over ``n`` examples, one ``batch_size`` slice per process.

    Epoch e uses ``randperm(n)`` seeded with ``seed + e``; each global micro-batch of
    ``batch_size x world`` consecutive indices is split by rank; the incomplete tail is dropped.
    ``(epoch, batch)`` is the whole state, saved in checkpoints for an exact resume.
    """

    n: int
    batch_size: int
    seed: int
    rank: int = 0
    world: int = 1
    epoch: int = 0
    batch: int = 0

    def __post_init__(self) -> None:
        if self.batches_per_epoch < 1:
            raise ConfigError(f"{self.n} training examples are fewer than one global batch "
                              f"({self.batch_size} x {self.world} processes); lower train.batch_size")

    @property
    def batches_per_epoch(self) -> int:
        return self.n // (self.batch_size * self.world)

    def next(self) -> Tensor:
        """This process's indices (batch_size,) of the next micro-batch."""
        if self.batch >= self.batches_per_epoch:
            self.epoch, self.batch = self.epoch + 1, 0
        perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        start = (self.batch * self.world + self.rank) * self.batch_size
        self.batch += 1
        return perm[start:start + self.batch_size]


# -- the trainer --------------------------------------------------------------------------------------------


def _fused_adamw(params: list[nn.Parameter], sharded: bool) -> bool | None:
    """AdamW's fused kernel (one pass over each tensor, no temporaries; transformers' default optimizer)
    where torch has it: plain floating-point parameters on one CPU or CUDA device. On CPU it is about 5x
    faster than the per-tensor loop (an AdamW step of MiniLM-L6's 22M parameters: 14 ms vs 65 ms) and
    does not allocate the temporaries that push the resident set up. Sharded (FSDP) parameters keep
    torch's default."""
    devices = {p.device.type for p in params}
    if sharded or not params or len(devices) != 1 or devices.pop() not in ("cpu", "cuda"):
        return None
    return all(p.dtype in (torch.float32, torch.float16, torch.bfloat16) for p in params) or None


class Trainer:
    """Trains a policy (or, with a custom objective, a reward model) on preference records.

    Supports: every registry loss of kind pair / list (k responses) / unpaired (KTO KL pairs built per
    example); WPO weights and LD-DPO log-probs for any pair loss; BCO's running reward shift δ;
    reference as a frozen copy, the policy with adapters off, or cached log-probs; LoRA;
    mixed precision, gradient accumulation (losses normalised by the examples of the whole optimizer
    step, across micro-batches and processes), gradient clipping, AdamW, warmup + cosine/linear decay,
    gradient checkpointing, periodic evaluation; several processes (``accelerate launch``): DDP, or FSDP2
    sharding (``distributed.strategy=fsdp``, :mod:`prefkit.train.distributed`); atomic checkpoints (sharded
    ones with ``torch.distributed.checkpoint``) and exact resume (model, optimizer, scheduler, RNG, data position).

    Assumptions: the model is a causal LM (``*ForCausalLM``, optionally PEFT-wrapped) or what a custom
    objective expects; every example of a dataset has the same group size (rankings: the same k). The
    distributed layer is ``accelerate``'s: the policy and the objective are one :class:`PolicyStep`, which
    ``accelerator.prepare`` wraps in DDP when ``num_processes > 1`` (or FSDP2 shards, as its root), so every
    training forward passes through the wrapper; DDP micro-steps before the last one of an optimizer step
    run under ``accelerator.no_sync``. Every trainable parameter must get a gradient in every step (DDP
    without ``find_unused_parameters``). ``self.model`` is the policy inside the wrapper: under DDP a full
    replica (checkpoints and the saved model are taken from it); under FSDP its parameters are shards, so
    checkpoints are sharded and the saved model is gathered first. Evaluation runs the unwrapped module
    (no gradients; under FSDP every process runs as many batches as the busiest one).
    """

    def __init__(self, config: RunConfig, model: nn.Module, tokenizer: Any,
                 train_data: Sequence[Record], eval_data: Sequence[Record] | None = None, *,
                 objective: Objective | None = None, reference: ReferenceSource | None = None,
                 reference_model: Callable[[], nn.Module] | None = None,
                 reference_weights: str | Path | None = None, accelerator: Any = None,
                 say: Callable[[str], None] | None = None, evaluators: Sequence[Evaluator] = ()):
        """
        Args:
            config: the run config (``load_config``); ``loss`` picks the objective when none is given.
            model: the policy (LoRA already applied when wanted); moved to the accelerator's device.
            tokenizer: its tokenizer; records are encoded with ``config.encode``.
            train_data, eval_data: preference records (``prefkit.data``).
            objective: the pluggable step (default :func:`make_objective`).
            reference: a ready reference source (overrides ``config.reference.mode``).
            reference_model: builds the frozen reference model when needed (default: a frozen copy of
                ``model`` taken now, before training); called lazily, so a cache hit builds nothing.
            reference_weights: path of the reference weights for the cache fingerprint (default: hash
                the in-memory reference weights).
            accelerator: an ``accelerate.Accelerator`` (default: one built from ``config.train``).
            say: where the trainer's one-line notices go (encoding report, reference cache, resume); default:
                stderr. The online loop collects them, so that a round prints nothing of its own.
            evaluators: diagnostics run every ``eval.every`` steps (:data:`Evaluator`).
        """

        self.config, self.tokenizer = config, tokenizer
        self._say_to, self.evaluators = say, list(evaluators)
        # Several processes and no GPU (``accelerate launch --multi_gpu --num_processes 2`` on a CPU
        # machine): accelerate needs cpu=True to pick gloo.
        cpu = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
        self.accelerator = accelerator or distributed.make_accelerator(config.train.mixed_precision, cpu)
        self.device = self.accelerator.device
        self.run_dir = Path(config.output.dir)
        self.objective = objective or make_objective(config)
        # encode.max_length must fit the model's positions (max_position_embeddings or n_positions of
        # its config, PEFT unwrapped); a model that has neither is not checked.
        base_config = getattr(model.get_base_model() if is_peft(model) else model, "config", None)
        limit_key = next((k for k in ("max_position_embeddings", "n_positions")
                          if type(getattr(base_config, k, None)) is int), None)
        if limit_key and config.encode.max_length and config.encode.max_length > getattr(base_config, limit_key):
            limit = getattr(base_config, limit_key)
            raise ConfigError(f"encode.max_length={config.encode.max_length} exceeds the model's position limit "
                              f"({limit_key}={limit}); set encode.max_length={limit} or lower")
        self.encoder = Encoder(tokenizer, config.encode)
        self.records = {"train": list(train_data), "eval": list(eval_data or [])}
        self.examples = {}
        for split, recs in self.records.items():
            encoded, report = self.encoder.encode_all(recs)
            self.examples[split] = self.objective.prepare(encoded, config.train.seed, report)
            if recs:
                self._say(f"{split}: {report}")
        if not self.examples["train"]:
            raise PrefkitError("no training examples left after encoding; check data.train and encode.*")
        self.model = model.to(self.device)
        if not config.model.dropout:  # before any frozen copy: policy, reference and reward model alike
            disable_dropout(model)
        if config.model.gradient_checkpointing:
            if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5 name
                model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            if is_peft(model):
                model.enable_input_require_grads()
        self._step_module = PolicyStep(model, self.objective)
        tc, dc = config.train, config.distributed
        distributed.check_accelerator(self.accelerator)
        self.sharded = distributed.is_sharded(self.accelerator, dc.strategy)
        if self.sharded:  # FSDP: the policy (PolicyStep as root) sharded before the optimizer sees its parameters
            distributed.check_sharded_run(model, evaluators=bool(self.evaluators), save_model=config.output.save_model)
            if reference is None and reference_model is None and self._reference_mode() in ("frozen", "precomputed"):
                reference_model = frozen_copy(model)  # the policy as it is now, copied before it is sharded
            distributed.shard(self._step_module, model, dc, tc.mixed_precision, self.device)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.order = DataOrder(len(self.examples["train"]), tc.batch_size, tc.seed,
                               self.accelerator.process_index, self.accelerator.num_processes)
        self.total_steps = tc.max_steps or max(1, int(tc.epochs * self.order.batches_per_epoch) // tc.grad_accum)
        optimizer = torch.optim.AdamW(self.params, lr=tc.lr, betas=tc.adam_betas, eps=tc.adam_eps,
                                      weight_decay=tc.weight_decay, fused=_fused_adamw(self.params, self.sharded))
        # DDP: one prepare call for module and optimizer; FSDP: both are ready (sharded above). The
        # scheduler stays ours: accelerate's wrapper would step it once per process.
        self.step_module, self.optimizer = ((self._step_module, optimizer) if self.sharded
                                            else self.accelerator.prepare(self._step_module, optimizer))
        from transformers import get_scheduler

        warmup = tc.warmup_steps or math.ceil(tc.warmup_ratio * self.total_steps)
        self.scheduler = get_scheduler("constant_with_warmup" if tc.scheduler == "constant" else tc.scheduler,
                                       optimizer, num_warmup_steps=warmup, num_training_steps=self.total_steps)
        self._reference_model: nn.Module | Callable[[], nn.Module] | None = reference_model
        self._reference_weights = reference_weights
        self._sources: dict[tuple[int, bool], ReferenceSource] = {}  # one (sharded) source per reference model
        self._weights_hash: str | None = None
        self.reference = {"train": reference, "eval": reference}
        if reference is None and self.objective.needs_reference:
            self.reference = {split: self._build_reference(split) for split in ("train", "eval")}
        self.step = 0
        # What the next logged line averages: (sum, count) per key, tokens and seconds since the last one.
        self._log_sums: dict[str, list[float]] = {}
        self._log_tokens, self._log_t0 = 0, time.perf_counter()
        # BCO: (sum, count) of every reward of the steps so far, over all processes; δ = sum / count.
        self.reward_mean: list[float] | None = [0.0, 0.0] if self.objective.tracks_reward_mean else None

    # -- reference ------------------------------------------------------------------------------------

    def _reference_mode(self) -> str:
        mode = self.config.reference.mode
        return ("adapters_off" if is_peft(self.model) else "frozen") if mode == "auto" else mode

    def _build_reference(self, split: str) -> ReferenceSource | None:
        mode = self._reference_mode()
        if mode == "adapters_off":
            if not is_peft(self.model):
                raise ConfigError("reference.mode=adapters_off needs a LoRA policy (set lora.r > 0)")
            return self._model_reference(self.model, adapters_off=True)
        if mode == "frozen":
            return self._model_reference(self._get_reference_model())
        if not self.examples[split]:
            return None
        return CachedReference(self._cached_table(split))

    def _model_reference(self, model: nn.Module, adapters_off: bool = False) -> ReferenceSource:
        """Log-probs of ``model`` (no gradients). FSDP: a separate reference model is sharded like the policy
        under its own root; the adapters-off reference is the policy and runs inside the policy's forward."""
        key = (id(model), adapters_off)
        if key not in self._sources:
            mc = self.config.model
            source: ReferenceSource = ModelReference(
                model, adapters_off=adapters_off, chunk_size=mc.chunk_size, token_logps=self.objective.token_logps,
                packing=mc.packing, share_prefix=mc.share_prefix)
            if self.sharded and not adapters_off:
                source = distributed.ShardedReference(model, source)
                distributed.shard(source, model, self.config.distributed, self.config.train.mixed_precision,
                                  self.device)
            self._sources[key] = source
        return self._sources[key]

    def _get_reference_model(self) -> nn.Module:
        """The frozen reference model, built on first use (default: a frozen copy of the policy now)."""
        if self._reference_model is None:
            self._reference_model = frozen_copy(self.model)
        elif not isinstance(self._reference_model, nn.Module):
            self._reference_model = self._reference_model().to(self.device)
        return self._reference_model

    def fingerprint(self, split: str) -> dict[str, str]:
        """The four cache-key parts for ``split``'s reference log-probs."""
        cfg = self.config
        precision = (cfg.model.dtype, cfg.train.mixed_precision)
        if self._weights_hash is None:  # hashed once, before a (FSDP) reference model is sharded
            source = (self._reference_weights if self._reference_weights is not None
                      else self.model if self._reference_model is None  # the policy as it is now (LoRA left out)
                      else self._get_reference_model())
            self._weights_hash = hash_weights(source, precision)
        kl = self.objective.kl_pairs
        return {"weights": self._weights_hash, "tokenizer": hash_tokenizer(self.tokenizer),
                "data": hash_records(self.records[split], ("kl_pairs", kl, cfg.train.seed if kl else None)),
                "encoding": hash_settings(cfg.encode)}

    def _cached_table(self, split: str) -> Tensor:
        cfg, acc = self.config, self.accelerator
        cache, parts = ReferenceCache(cfg.reference.cache_dir), self.fingerprint(split)
        table = cache.load(parts)
        if table is not None and table.shape[0] == len(self.examples[split]):
            self._say(f"reference log-probs ({split}): cache hit {cache.path(parts).name}")
            return table
        self._say(f"reference log-probs ({split}): {cache.explain_miss(parts)}; computing")
        # every process computes its batches; the main process writes the gathered table, all then load it.
        # FSDP: every forward is a collective, so every process runs every batch (sharded weights, no split).
        rank, world = (0, 1) if self.sharded else (acc.process_index, acc.num_processes)
        shard = compute_shard(self._model_reference(self._get_reference_model()), self.examples[split],
                              self.encoder.pad_id, batch_size=cfg.reference.batch_size, rank=rank,
                              world_size=world, device=self.device, autocast=acc.autocast)
        shards: list[Any] = [shard]
        if world > 1:
            shards = [None] * acc.num_processes if acc.is_main_process else []
            torch.distributed.gather_object(shard, shards if acc.is_main_process else None, dst=0)
        if acc.is_main_process:
            cache.store(parts, assemble_table(shards))
        acc.wait_for_everyone()
        return cache.load(parts)

    def _say(self, message: str) -> None:
        if not self.accelerator.is_main_process:
            return
        if self._say_to is not None:
            self._say_to(message)
        else:
            from rich.console import Console

            Console(stderr=True, soft_wrap=True).print(f"[dim]prefkit:[/dim] {message}", highlight=False)

    # -- one batch ------------------------------------------------------------------------------------------

    def _forward(self, split: str, indices: Tensor) -> tuple[StepOutput, Batch]:
        """One batch through the objective: the prepared (wrapped) module in training, the bare one in eval."""
        batch = collate([self.examples[split][i] for i in indices.tolist()], self.encoder.pad_id).to(self.device)
        step = self.step_module if split == "train" else self._step_module
        with self.accelerator.autocast():
            source = self.reference[split]
            # computed inside the step's forward (FSDP: where the policy's root weights are gathered)
            ref = (lambda: source(batch, indices)) if self.objective.needs_reference and source else None
            return step(batch, ref, self._reward_mean()), batch

    def _reward_mean(self) -> float | None:
        """The running mean of all rewards of the previous steps (None: none yet, or not tracked)."""
        if self.reward_mean is None or not self.reward_mean[1]:
            return None
        return self.reward_mean[0] / self.reward_mean[1]

    def _update_reward_mean(self, step_rewards: list[float]) -> None:
        """Add this step's rewards (all processes) to the running mean the next steps pass the objective.

        Deviation from BCO (and TRL, which updates the mean with the current batch first): the step uses
        the mean of the *previous* steps' rewards (the first step the configured ``delta``), so the
        mean needs no extra synchronisation before the loss.
        """
        t = torch.tensor(step_rewards, dtype=torch.float64, device=self.device)
        if self.accelerator.num_processes > 1:
            t = self.accelerator.reduce(t, reduction="sum")
        self.reward_mean = [self.reward_mean[0] + float(t[0]), self.reward_mean[1] + float(t[1])]

    def _reduce(self, sums: dict[str, list[float]]) -> dict[str, float]:
        """Per-key (sum, count) over processes -> means."""
        if self.accelerator.num_processes > 1:  # a process may lack a key (e.g. no eval batch): union them
            everyone: list[Any] = [None] * self.accelerator.num_processes
            torch.distributed.all_gather_object(everyone, sorted(sums))
            for key in {k for ks in everyone for k in ks}:
                sums.setdefault(key, [0.0, 0.0])
        keys = sorted(sums)
        t = torch.tensor([sums[k] for k in keys], dtype=torch.float64, device=self.device).reshape(-1, 2)
        if self.accelerator.num_processes > 1:
            t = self.accelerator.reduce(t, reduction="sum")
        return {k: (float(s / c) if c else math.nan) for k, (s, c) in zip(keys, t.tolist(), strict=True)}

    # -- the loop ----------------------------------------------------------------------------------------------

    def train(self, resume: bool | str | Path = False) -> dict[str, float]:
        """Run (or resume) training; returns the last logged metrics (plus final ``eval/*``).

        The run folder (``output.dir``) must be absent, empty or a prefkit run folder
        (:mod:`prefkit.train.rundir`); with ``output.overwrite`` and no resume, what earlier prefkit runs
        wrote there is removed first."""
        cfg, tc, acc = self.config, self.config.train, self.accelerator
        self._claim_run_dir(bool(resume))
        self._log_sums, self._log_tokens, self._log_t0 = {}, 0, time.perf_counter()
        start = self._resume(resume) if resume else 0  # restores the sums since the last logged line
        writer = MetricsWriter(self.run_dir, tensorboard=cfg.output.tensorboard) if acc.is_main_process else None
        last: dict[str, float] = {}
        if writer is not None:
            (self.run_dir / "config.yaml").write_text(dump_config(cfg))
            notice = writer.truncate_after(start, final=start == self.total_steps)
            if notice:
                self._say(notice)
            if start == self.total_steps:  # resumed from the last checkpoint: its logged line is the result
                last = next((r for r in reversed(read_metrics(self.run_dir)) if r.get("step") == start
                             and "loss" in r), {})
        if cfg.eval.enabled and not self.evaluators:
            self._say("eval: section set but no evaluators given (prefkit.eval.during_training builds them)")
        if start == 0:  # the diagnostics before training: the curves' starting point
            self._log_eval(writer, 0, loss=False)
        self.step_module.train()
        trim = heap_trimmer() if tc.trim_memory and self.device.type == "cpu" else None
        bar = progress_bar(self.total_steps, tc.progress and acc.is_main_process)
        task = bar.add_task("train", total=self.total_steps, completed=start, loss=math.nan, acc=math.nan, tps=0.0)
        with bar:
            for step in range(start + 1, self.total_steps + 1):
                micro = [self.order.next() for _ in range(tc.grad_accum)]
                step_rewards = [0.0, 0.0]  # (sum, count) of this step's rewards on this process
                n_global = sum(len(ix) for ix in micro) * acc.num_processes
                sums = self._log_sums  # (sum, count) per key since the last logged line (saved in checkpoints)
                for i, indices in enumerate(micro):
                    # Gradients sync (DDP all-reduce) only in the backward of the last micro-step.
                    sync = nullcontext() if i == len(micro) - 1 else acc.no_sync(self.step_module)
                    with sync:
                        out, batch = self._forward("train", indices)
                        weight = batch.weight.to(out.losses) if batch.weight is not None else 1.0
                        total = (out.losses * weight).sum()  # () this micro-batch's weighted loss sum
                        # DDP averages gradients over processes: x num_processes makes the step's gradient
                        # the mean over all n_global examples of the global step.
                        acc.backward(total * (acc.num_processes / n_global))
                    if trim is not None:  # this micro-step's activations are free now
                        trim()
                    self._log_tokens += batch.num_tokens()
                    if self.reward_mean is not None:
                        _add_rewards(step_rewards, out.metrics)
                    _add(sums, "loss", total.detach(), len(indices))
                    for key, value in out.metrics.items():
                        _add_metric(sums, key, value, len(indices))
                # null (config) disables clipping; so does 0, which older configs used for that
                max_norm = tc.max_grad_norm if tc.max_grad_norm is not None else math.inf  # null: no clipping
                grad_norm = (distributed.clip_grad_norm(self.params, max_norm) if self.sharded
                             else acc.clip_grad_norm_(self.step_module.parameters(), max_norm))
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.step = step
                if self.reward_mean is not None:
                    self._update_reward_mean(step_rewards)
                if step % tc.log_every == 0 or step == self.total_steps:
                    elapsed = time.perf_counter() - self._log_t0
                    tok = self._reduce({"t": [float(self._log_tokens), 1.0]})["t"] * acc.num_processes
                    last = {"step": step, "epoch": self.order.epoch + self.order.batch / self.order.batches_per_epoch,
                            **self._reduce(sums), "grad_norm": float(grad_norm), "lr": self.scheduler.get_last_lr()[0],
                            "tokens/s": tok / max(elapsed, 1e-9)}
                    if not math.isfinite(last["loss"]):
                        raise PrefkitError(f"loss became {last['loss']} at step {step}; lower train.lr or check "
                                           "the data (empty completions?)")
                    if writer is not None:
                        writer.write(last)
                    bar.update(task, completed=step, loss=last["loss"],
                               acc=last.get("rewards/accuracies", math.nan), tps=last["tokens/s"])
                    self._log_sums, self._log_tokens, self._log_t0 = {}, 0, time.perf_counter()
                else:
                    bar.update(task, completed=step)
                loss_due, hooks_due = (bool(n) and step % n == 0 for n in (tc.eval_every, cfg.eval.every))
                if (loss_due or hooks_due) and step != self.total_steps:
                    self._log_eval(writer, step, loss=loss_due, hooks=hooks_due)
                if tc.save_every and step % tc.save_every == 0:
                    self.save_checkpoint()
        last.update(self._log_eval(writer, self.total_steps))
        if cfg.output.save_model:
            self.save_model(self.run_dir / "model")
        if acc.is_main_process and cfg.output.plots:
            plot_metrics(self.run_dir)
        if writer is not None:
            writer.close()
        acc.wait_for_everyone()
        return last

    def evaluate(self) -> dict[str, float]:
        """Mean loss and metrics over the evaluation data (``eval/`` keys); {} without eval data."""
        examples = self.examples["eval"]
        if not examples:
            return {}
        bs, acc = self.config.train.batch_size, self.accelerator
        every = list(range(0, len(examples), bs))
        limit = self.config.train.eval_batches or len(every)
        starts = every[acc.process_index::acc.num_processes][:limit]
        # FSDP: every forward is a collective, so every process runs as many batches as the busiest one
        # (the extra ones repeat the first batch and are not counted)
        rounds = min(limit, -(-len(every) // acc.num_processes)) if self.sharded else len(starts)
        was_training = self._step_module.training
        self._step_module.eval()
        sums: dict[str, list[float]] = {}
        with torch.no_grad():
            for i in range(rounds):
                s = starts[i] if i < len(starts) else 0
                out, batch = self._forward("eval", torch.arange(s, min(s + bs, len(examples))))
                if i >= len(starts):
                    continue
                weight = batch.weight.to(out.losses) if batch.weight is not None else torch.ones_like(out.losses)
                _add(sums, "loss", (out.losses * weight).sum(), len(out.losses))
                for key, value in out.metrics.items():
                    _add_metric(sums, key, value, len(out.losses))
        self._step_module.train(was_training)
        return {f"eval/{k}": v for k, v in self._reduce(sums).items()}

    def _log_eval(self, writer: MetricsWriter | None, step: int, *, loss: bool = True,
                  hooks: bool = True) -> dict[str, float]:
        """One ``eval/`` line at ``step``: the evaluation loss and metrics, and the evaluators' metrics."""
        result = self.evaluate() if loss else {}
        if hooks and self.evaluators:
            if self.accelerator.is_main_process:
                was_training = self.model.training
                self.model.eval()
                with torch.no_grad():
                    for fn in self.evaluators:
                        result.update({f"eval/{k}": float(v) for k, v in fn(self.model, step).items()})
                self.model.train(was_training)
            self.accelerator.wait_for_everyone()
        if result and writer is not None:
            writer.write({"step": step, **result})
        return result

    # -- checkpoints and outputs --------------------------------------------------------------------------

    def save_checkpoint(self) -> Path | None:
        """Write ``<run>/checkpoints/step-N`` atomically (keeps ``train.keep_last``)."""
        state = {"epoch": self.order.epoch, "batch": self.order.batch, "world": self.accelerator.num_processes,
                 "reward_mean": self.reward_mean,
                 "config": _flat(to_dict(self.config))}
        # This process's sums since the last logged line: the first line after a resume averages the same steps.
        partial = {"log_sums": self._log_sums, "log_tokens": self._log_tokens,
                   "log_seconds": time.perf_counter() - self._log_t0}
        return ckpt.save_checkpoint(self.run_dir, self.step, model=self.model, optimizer=self.optimizer,
                                    scheduler=self.scheduler, state=state, keep_last=self.config.train.keep_last,
                                    accelerator=self.accelerator, rank_state=partial, sharded=self.sharded)

    def _claim_run_dir(self, resume: bool) -> None:
        """Every process checks the run folder (one ``ConfigError`` line if it is not prefkit's to write);
        then the main process claims it (:func:`prefkit.train.rundir.claim_run_dir`)."""
        out, acc = self.config.output, self.accelerator
        kind = "reward" if self.config.reward is not None else "train"
        rundir.check_run_dir(self.run_dir, resume=resume, overwrite=out.overwrite)
        acc.wait_for_everyone()
        if acc.is_main_process:
            rundir.claim_run_dir(self.run_dir, resume=resume, overwrite=out.overwrite, kind=kind)
        acc.wait_for_everyone()

    def _resume(self, resume: bool | str | Path) -> int:
        path = ckpt.latest_checkpoint(self.run_dir) if resume is True else Path(resume)
        if path is None:
            raise PrefkitError(f"--resume: no checkpoint in {ckpt.checkpoint_dir(self.run_dir)}; "
                               "start without --resume")
        self._check_resumable(ckpt.read_state(path))
        state = ckpt.load_checkpoint(path, model=self.model, optimizer=self.optimizer, scheduler=self.scheduler,
                                     accelerator=self.accelerator, sharded=self.sharded)
        self.order.epoch, self.order.batch, self.step = state["epoch"], state["batch"], state["step"]
        if self.reward_mean is not None and state.get("reward_mean"):
            self.reward_mean = list(state["reward_mean"])
        partial = state.get("rank_state") or {}
        self._log_sums = {k: list(v) for k, v in partial.get("log_sums", {}).items()}
        self._log_tokens = int(partial.get("log_tokens", 0))
        self._log_t0 = time.perf_counter() - float(partial.get("log_seconds", 0.0))
        self._say(f"resumed from {path} (step {self.step})")
        return self.step

    def _check_resumable(self, state: dict[str, Any]) -> None:
        """An exact resume needs the settings that shape the run unchanged (outputs and logging may change)."""
        saved, now = state.get("config", {}), _flat(to_dict(self.config))
        changed = [k for k in sorted(set(saved) | set(now)) if saved.get(k) != now.get(k)
                   and not k.startswith(RESUME_MAY_CHANGE)]
        if state.get("world", 1) != self.accelerator.num_processes:
            changed.append(f"processes ({state.get('world', 1)} -> {self.accelerator.num_processes})")
        if changed:
            shown = ", ".join(k if k.startswith("processes") else f"{k} ({saved.get(k)!r} -> {now.get(k)!r})"
                              for k in changed[:4])
            raise ConfigError(f"--resume: the config differs from the checkpoint's in {shown}; resume with the "
                              "same settings (or start a new run)")

    def save_model(self, path: str | Path) -> None:
        """``save_pretrained`` (safetensors) of the model (PEFT: the adapter) and the tokenizer, written by
        the main process. FSDP: every process calls it; the weights are gathered on the main process first."""
        model = self.accelerator.unwrap_model(self.model)
        gathered = {"state_dict": distributed.full_state_dict(model)} if self.sharded else {}
        if not self.accelerator.is_main_process:
            return
        with quiet_loading():  # no "Writing model shards" bar: one progress bar per phase
            model.save_pretrained(str(path), safe_serialization=True, **gathered)
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(str(path))


RESUME_MAY_CHANGE = ("output.", "eval.", "train.progress", "train.log_every", "train.eval_every",
                     "train.eval_batches", "train.save_every", "train.keep_last", "reference.cache_dir", "data.eval", "data.eval_fraction",
                     "distributed.reshard_after_forward", "distributed.cpu_offload")


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 1}}`` -> ``{"train.lr": 1}``."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and not (prefix == "data." and key == "columns"):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def _add(sums: dict[str, list[float]], key: str, total: Tensor | float, count: int) -> None:
    entry = sums.setdefault(key, [0.0, 0.0])
    entry[0] += float(total)
    entry[1] += count


def _add_rewards(step_rewards: list[float], metrics: dict[str, Tensor]) -> None:
    """Add the non-NaN ``rewards/chosen`` and ``rewards/rejected`` (B,) entries to (sum, count)."""
    for key in ("rewards/chosen", "rewards/rejected"):
        value = metrics.get(key)
        if value is not None:
            ok = ~torch.isnan(value)
            step_rewards[0] += float(value[ok].double().sum())
            step_rewards[1] += int(ok.sum())


def _add_metric(sums: dict[str, list[float]], key: str, value: Tensor, batch_size: int) -> None:
    """Accumulate a (B,) metric ignoring NaN entries, or a scalar counted once per example."""
    value = value.detach().float()
    if value.dim() == 0:
        _add(sums, key, value * batch_size, batch_size)
    else:
        ok = ~torch.isnan(value)
        _add(sums, key, value[ok].sum(), int(ok.sum()))


__all__ = ["Trainer", "PolicyStep", "DataOrder", "Evaluator"]
