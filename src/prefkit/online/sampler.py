"""Sampling completions from a causal LM: the ``Sampler`` protocol and the built-in :class:`TorchSampler`.

The online loop (issue 12) only sees the protocol: ``sample(prompts_ids, settings, n=...)`` returns a
:class:`SampleBatch` of :class:`Completion` s. :class:`TorchSampler` runs any ``*ForCausalLM`` (plain or
PEFT-wrapped) in plain PyTorch: one prefill of the left-padded prompts (each prompt once, its KV cache
then repeated for its ``n`` samples), then one-token decode steps with a ``DynamicCache`` whose buffers
are allocated once per call; a faster engine (vLLM on GPUs) can implement the same protocol later.

What a completion's log-probs mean (per sampled token ``y_t``, given the prompt and ``y_<t``):

- ``logps``: the log-prob of ``y_t`` under the distribution it was **actually sampled from**: the base
  distribution (the policy, or the policy/reference mixture below) after temperature, top-k and top-p,
  renormalised. With ``temperature == 0`` (greedy) that distribution is a point mass, so every entry is
  0.0. With ``temperature == 1`` and no top-k/top-p on a plain policy it equals ``policy_logps``.
- ``policy_logps``: the raw log-prob of ``y_t`` under the sampler's ``model`` (the policy; the reference
  when sampling from it) at temperature 1 (``log_softmax`` of its logits, nothing cut): what the log-prob
  engine (``prefkit.models.logprobs.sequence_logps``) computes teacher-forced on prompt + completion.
- ``reference_logps``: the same for the reference, only when sampling from a mixture.

The geometric mixture (Nash-MD; Munos et al. 2023, "Nash Learning from Human Feedback"): with
``mixture=(reference, beta)`` every step samples the next token from
``log π_mix(·) = (1 − β)·log π(·) + β·log π_ref(·) − log Z`` (renormalised over the vocabulary at each
step), the token-level version of the paper's regularised policy ``π^(1−β) π_ref^β`` that its
language-model experiments sample from (the sequence-level product is not tractable). Both models run
with their own KV caches in lock step. Temperature, top-k and top-p then apply to ``log π_mix``.

Differences from ``model.generate``: greedy decoding gives the same tokens (tested); sampling draws from
the same distributions (temperature, then top-k, then top-p: the smallest set of most likely tokens whose
mass reaches ``top_p``, at least one, as transformers' ``TopPLogitsWarper`` up to ties), but by inverse
CDF (:func:`draw`) rather than ``torch.multinomial``, so one seed gives different samples in the two.

Several processes (``accelerate launch``; :class:`Processes`): a sampler built with ``processes=`` takes
every process's call with the same prompts, runs the forward passes of its contiguous share of them, and
returns the whole batch on every process (the completions are gathered). Its draws are those of one
process: every decode step, each process draws the uniforms of *all* rows still running (their count is
gathered, one small all-gather per step), in row order, and uses its own rows' slice, so the tokens are
one process's, whatever the split, up to float rounding of the batched forward (a share is padded to its
own longest prompt; a rounding difference can only move a draw that falls on a token boundary).
"""

from __future__ import annotations

import dataclasses
import inspect
import os
from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import Any, Literal, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from prefkit.errors import ConfigError, DataError, check_known_keys
from prefkit.models.decoder import unwrap

StopReason = Literal["eos", "stop", "length"]


@dataclass(frozen=True)
class SamplingSettings:
    """How to sample; validated when built (a bad value is a one-line :class:`ConfigError`)."""

    temperature: float = 1.0
    """Softmax temperature (> 0); 0 means greedy (argmax, no randomness)."""
    top_p: float = 1.0
    """Nucleus sampling: keep the smallest set of most likely tokens whose mass reaches ``top_p``, in (0, 1];
    1 keeps all."""
    top_k: int = 0
    """Keep only the ``top_k`` most likely tokens (ties at the k-th value kept); 0 keeps all."""
    max_new_tokens: int = 64
    """Most tokens generated per completion (>= 1); a completion that reaches it is not ``finished``."""
    stop: tuple[str, ...] = ()
    """Stop strings: generation of a completion ends once its decoded text contains one; ``text`` is cut
    before it, ``token_ids`` keep the token that completed it."""
    seed: int | None = None
    """None: draw from the sampler's own generator stream (saved by ``state_dict``); an int: this call
    uses a fresh generator seeded with it, and leaves the sampler's stream untouched."""

    def __post_init__(self) -> None:
        if isinstance(self.stop, str) or isinstance(self.stop, list):
            object.__setattr__(self, "stop", (self.stop,) if isinstance(self.stop, str) else tuple(self.stop))
        if not (self.temperature >= 0 and self.temperature != float("inf")):
            raise ConfigError(f"sampling temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"sampling top_p must be in (0, 1], got {self.top_p}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise ConfigError(f"sampling top_k must be an int >= 0 (0 = off), got {self.top_k!r}")
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) \
                or self.max_new_tokens < 1:
            raise ConfigError(f"sampling max_new_tokens must be an int >= 1, got {self.max_new_tokens!r}")
        if not all(isinstance(s, str) and s for s in self.stop):
            raise ConfigError(f"sampling stop strings must be non-empty strings, got {list(self.stop)!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise ConfigError(f"sampling seed must be an int or None, got {self.seed!r}")

    @property
    def greedy(self) -> bool:
        """True for temperature 0."""
        return self.temperature == 0

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SamplingSettings:
        """Build from a mapping (YAML); an unknown key is a ConfigError naming the nearest valid one."""
        check_known_keys(values, [f.name for f in fields(cls)], "sampling option")
        return cls(**values)


@dataclass(frozen=True)
class Completion:
    """One sampled completion of one prompt (the log-probs are explained in the module docstring)."""

    prompt_index: int
    """Index of its prompt in the ``prompts_ids`` given to ``sample``."""
    token_ids: tuple[int, ...]
    """The sampled tokens, in order: EOS included when it ended with EOS, the token that completed a stop
    string included when a stop string ended it."""
    text: str
    """``token_ids`` decoded (special tokens skipped), cut before the stop string that ended it."""
    logps: tuple[float, ...]
    """Per token: log-prob under the distribution actually sampled from (after temperature/top-k/top-p,
    of the mixture when there is one); 0.0 for greedy."""
    policy_logps: tuple[float, ...]
    """Per token: raw log-prob under the sampler's model at temperature 1, nothing cut."""
    reference_logps: tuple[float, ...] | None
    """Per token: raw reference log-prob at temperature 1; only when sampling from a mixture."""
    stop_reason: StopReason
    """``"eos"``, ``"stop"`` (a stop string) or ``"length"`` (reached ``max_new_tokens``)."""

    @property
    def finished(self) -> bool:
        """Ended with EOS or a stop string (not cut by ``max_new_tokens``)."""
        return self.stop_reason != "length"

    @property
    def logp(self) -> float:
        """Summed ``logps``: the completion's log-prob under the sampling distribution."""
        return float(sum(self.logps))

    @property
    def policy_logp(self) -> float:
        """Summed ``policy_logps``."""
        return float(sum(self.policy_logps))

    def __len__(self) -> int:
        return len(self.token_ids)


@dataclass(frozen=True)
class SampleBatch:
    """The completions of one ``sample`` call: prompt-major, ``completions[i * n + j]`` is sample j of
    prompt i."""

    completions: list[Completion]
    n: int
    """Completions per prompt."""
    settings: SamplingSettings
    """The settings they were sampled with."""

    def group(self, i: int) -> list[Completion]:
        """The ``n`` completions of prompt ``i``."""
        return self.completions[i * self.n:(i + 1) * self.n]

    @property
    def num_prompts(self) -> int:
        return len(self.completions) // self.n

    def num_tokens(self) -> int:
        """Generated tokens over all completions."""
        return sum(len(c) for c in self.completions)

    def truncated_fraction(self) -> float:
        """Fraction of completions cut by ``max_new_tokens`` (not ``finished``); 0.0 when empty."""
        return sum(not c.finished for c in self.completions) / len(self.completions) if self.completions else 0.0

    def __len__(self) -> int:
        return len(self.completions)

    def __iter__(self) -> Iterator[Completion]:
        return iter(self.completions)

    def __getitem__(self, i: int) -> Completion:
        return self.completions[i]


@runtime_checkable
class Sampler(Protocol):
    """What the online loop needs from a generation engine."""

    def sample(self, prompts_ids: list[list[int]], settings: SamplingSettings, *, n: int = 1) -> SampleBatch:
        """``n`` completions of each prompt (token ids, no padding), prompt-major."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """The RNG state (and anything else) needed to resume the same sample stream."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""
        ...


# -- several processes ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Processes:
    """The processes of an ``accelerate launch`` run, as the online loop uses them: this process's
    ``rank`` among ``world``, and the collectives it needs (every process calls each, in the same order).
    One process (``world == 1``) makes every collective a no-op."""

    rank: int = 0
    world: int = 1
    device: torch.device | None = None
    """This process's device (``accelerate``'s choice); None for one process (the model stays where it is)."""

    @classmethod
    def current(cls) -> Processes:
        """One process, or, when launched with ``WORLD_SIZE > 1``, accelerate's process group (set up here
        if no ``Accelerator`` has done it yet: gloo on a machine without GPUs, as the trainer does)."""
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return cls()
        from accelerate import PartialState

        state = PartialState(cpu=not torch.cuda.is_available())
        return cls(state.process_index, state.num_processes, state.device)

    @property
    def main(self) -> bool:
        """True on the process that writes the run folder."""
        return self.rank == 0

    def share(self, n: int) -> tuple[int, int]:
        """``[lo, hi)``: this process's contiguous share of ``n`` items (the first ``n % world`` get one more)."""
        size, extra = divmod(n, self.world)
        lo = self.rank * size + min(self.rank, extra)
        return lo, lo + size + (self.rank < extra)

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def gather(self, value: Any) -> list[Any]:
        """Every process's ``value`` (picklable), in rank order, on every process."""
        if self.world == 1:
            return [value]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, value)
        return out

    def broadcast(self, value: Any) -> Any:
        """The main process's ``value`` (picklable) on every process."""
        if self.world == 1:
            return value
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def counts(self, k: int, device: torch.device) -> list[int]:
        """Every process's ``k`` (an int), in rank order: one small all-gather, no pickling."""
        if self.world == 1:
            return [k]
        import torch.distributed as dist

        mine = torch.tensor([k], dtype=torch.long, device=device)
        out = [torch.zeros_like(mine) for _ in range(self.world)]
        dist.all_gather(out, mine)
        return [int(x) for x in out]


# -- logits processing -------------------------------------------------------------------------------


def sampling_logits(logits: Tensor, settings: SamplingSettings) -> Tensor:
    """(R, V) fp32 base logits -> the (unnormalised) logits of the distribution sampled from: divided by
    the temperature, then -inf outside the top-k set, then -inf outside the top-p set. Not for greedy."""
    if settings.temperature != 1.0:
        logits = logits / settings.temperature
    vocab = logits.shape[-1]
    if 0 < settings.top_k < vocab:
        kth = torch.topk(logits, settings.top_k, dim=-1).values[:, -1:]  # (R, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if settings.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        mass_before = probs.cumsum(-1) - probs  # mass of the more likely tokens
        cut = mass_before >= settings.top_p
        cut[:, 0] = False  # always keep the most likely token
        logits = logits.masked_fill(cut.scatter(1, order, cut), float("-inf"))
    return logits


def draw(probs: Tensor, generator: torch.Generator, uniforms: Tensor | None = None) -> Tensor:
    """One token per row of ``probs`` (R, V) by inverse CDF: the first token whose float64 cumulative mass
    exceeds u·total, u ~ U[0, 1). Exact up to float64 rounding (tokens of probability 0 are never
    drawn), and ~10x faster on CPU than ``torch.multinomial``, which it replaces. ``uniforms`` (R, 1)
    float64: the u's, drawn by the caller (several processes); default: drawn here from ``generator``."""
    cdf = probs.double().cumsum(-1)  # (R, V)
    if uniforms is None:
        uniforms = torch.rand(probs.shape[0], 1, generator=generator, dtype=torch.float64, device=probs.device)
    u = uniforms * cdf[:, -1:]
    picked = torch.searchsorted(cdf, u, right=True).squeeze(1)
    return torch.minimum(picked, cdf.argmax(-1))  # u rounded up to the total: the last token with mass


def mixture_logps(policy_logps: Tensor, reference_logps: Tensor, beta: float) -> Tensor:
    """Normalised log-probs of the token-level geometric mixture ``π^(1−β) π_ref^β / Z`` (Nash-MD)."""
    return torch.log_softmax((1.0 - beta) * policy_logps + beta * reference_logps, dim=-1)


# -- the built-in engine -----------------------------------------------------------------------------


def _preallocated_cache(config: Any, capacity: int) -> Any:
    """A ``DynamicCache`` whose plain (full-attention) layers write into buffers of ``capacity`` positions
    instead of concatenating a new tensor every step (that copy is O(length) per token per layer: ~20%
    of a small model's decode time on CPU). Other layer kinds (sliding window, ...) stay as they are."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    class BufferedLayer(DynamicLayer):
        def update(self, key_states: Tensor, value_states: Tensor, *args: Any, **kwargs: Any) -> tuple[Tensor, Tensor]:
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
                b, h = key_states.shape[:2]
                self.k_buf = key_states.new_empty(b, h, capacity, key_states.shape[-1])
                self.v_buf = value_states.new_empty(b, h, capacity, value_states.shape[-1])
                self.length = 0
            end = self.length + key_states.shape[-2]
            if end > self.k_buf.shape[-2]:  # past the planned capacity: grow (never in TorchSampler)
                self.k_buf = torch.cat([self.k_buf, torch.empty_like(self.k_buf)], dim=-2)
                self.v_buf = torch.cat([self.v_buf, torch.empty_like(self.v_buf)], dim=-2)
                return self.update(key_states, value_states)
            self.k_buf[:, :, self.length:end] = key_states
            self.v_buf[:, :, self.length:end] = value_states
            self.length = end
            self.keys, self.values = self.k_buf[:, :, :end], self.v_buf[:, :, :end]
            return self.keys, self.values

        def get_seq_length(self) -> int:
            return self.length if self.is_initialized else 0

        def batch_repeat_interleave(self, repeats: int) -> None:
            if self.is_initialized:
                self.k_buf = self.k_buf.repeat_interleave(repeats, dim=0)
                self.v_buf = self.v_buf.repeat_interleave(repeats, dim=0)
                self.keys, self.values = self.k_buf[:, :, :self.length], self.v_buf[:, :, :self.length]

        def batch_select_indices(self, indices: Tensor) -> None:
            if self.is_initialized:
                self.k_buf, self.v_buf = self.k_buf[indices], self.v_buf[indices]
                self.keys, self.values = self.k_buf[:, :, :self.length], self.v_buf[:, :, :self.length]

    cache = DynamicCache(config=config)
    cache.layers = [BufferedLayer() if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache


class _Stepper:
    """One model's incremental forward: a prefill, then one token per step, with its own KV cache."""

    def __init__(self, model: nn.Module):
        self.model = model
        lm = unwrap(model)
        try:
            params = inspect.signature(lm.forward).parameters
        except (TypeError, ValueError):
            params = {}
        self.keep_last = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
        # transformers >= 5.x names the KV cache argument ``cache`` (``past_key_values`` is deprecated)
        self.cache_arg = "cache" if "cache" in params else "past_key_values"
        self.config = getattr(lm, "config", None)
        self.cache: Any = None

    def prefill(self, ids: Tensor, mask: Tensor, positions: Tensor, capacity: int) -> Tensor:
        """(P_rows, L) left-padded prompts -> (P_rows, V) fp32 logits of the next token; the KV cache is
        sized for ``capacity`` positions."""
        self.cache = _preallocated_cache(self.config, capacity)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                         **{self.cache_arg: self.cache}, **self.keep_last)
        return out.logits[:, -1].float()  # the cache was updated in place

    def step(self, tokens: Tensor, mask: Tensor, positions: Tensor) -> Tensor:
        """(R,) tokens at (R,) positions, ``mask`` (R, L + 1) -> (R, V) fp32 next-token logits."""
        out = self.model(input_ids=tokens[:, None], attention_mask=mask, position_ids=positions[:, None],
                         use_cache=True, **{self.cache_arg: self.cache})
        return out.logits[:, -1].float()

    def repeat(self, n: int) -> None:
        if n > 1:
            self.cache.batch_repeat_interleave(n)

    def select(self, rows: Tensor) -> None:
        self.cache.batch_select_indices(rows)


class TorchSampler:
    """Batched sampling with a KV cache from a ``*ForCausalLM`` (plain or PEFT-wrapped), on its device.

    Args:
        model: the policy (or the reference: any causal LM samples the same way).
        tokenizer: decodes completions and gives the pad and EOS ids.
        mixture: ``(reference, beta)`` to sample from the geometric mixture of ``model`` and
            ``reference`` (module docstring), ``beta`` in [0, 1]; None samples from ``model``.
        seed: seeds the sampler's generator stream (used by calls whose settings have no seed).
        eos_token_ids: token ids that end a completion; default: the tokenizer's EOS and the model's
            ``generation_config.eos_token_id``.
        processes: several processes sampling one batch together (module docstring); every process
            calls ``sample`` with the same prompts and gets the whole batch. None: this process alone.

    The algorithm, per call: left-pad the prompts (attention mask 0 on padding,
    positions counted from each prompt's first real token, so a row's result does not depend on its
    batch); prefill once per prompt and repeat the cache ``n`` times; then one decode step per token for
    the rows still running, dropping finished rows from the batch (and their caches), until every row
    has finished or ``max_new_tokens`` is reached. Models run in eval mode under ``torch.inference_mode``
    and are put back in their previous mode.
    """

    def __init__(self, model: nn.Module, tokenizer: Any, *, mixture: tuple[nn.Module, float] | None = None,
                 seed: int = 0, eos_token_ids: list[int] | None = None, processes: Processes | None = None):
        self.model = model
        self.processes = processes if processes is not None and processes.world > 1 else None
        self.tokenizer = tokenizer
        self.reference: nn.Module | None = None
        self.beta = 0.0
        if mixture is not None:
            reference, beta = mixture
            if not 0.0 <= float(beta) <= 1.0:
                raise ConfigError(f"mixture beta must be in [0, 1], got {beta}")
            self.reference, self.beta = reference, float(beta)
        self.device = next(model.parameters()).device
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)
        self.eos_token_ids = sorted(set(eos_token_ids if eos_token_ids is not None else _eos_ids(model, tokenizer)))
        pad = getattr(tokenizer, "pad_token_id", None)
        self.pad_id = int(pad if pad is not None else (self.eos_token_ids[0] if self.eos_token_ids else 0))

    # -- RNG state, for exact resume --

    def state_dict(self) -> dict[str, Any]:
        """The generator state (a CPU byte tensor), to resume the identical sample stream."""
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`."""
        self.generator.set_state(state["generator"])

    # -- sampling --

    def sample(self, prompts_ids: list[list[int]], settings: SamplingSettings, *, n: int = 1) -> SampleBatch:
        """``n`` completions of each prompt (token ids without padding); see the class docstring."""
        if n < 1:
            raise ConfigError(f"samples per prompt n must be >= 1, got {n}")
        for i, p in enumerate(prompts_ids):
            if len(p) == 0:
                raise DataError(f"prompt {i} has no tokens; sampling needs at least one (e.g. BOS)")
        if not prompts_ids:
            return SampleBatch([], n, settings)
        if settings.seed is not None:
            generator = torch.Generator(device=self.device)
            generator.manual_seed(settings.seed)
        else:
            generator = self.generator
        procs = self.processes
        lo, hi = procs.share(len(prompts_ids)) if procs is not None else (0, len(prompts_ids))
        models = [self.model] + ([self.reference] if self.reference is not None else [])
        modes = [m.training for m in models]
        try:
            for m in models:
                m.eval()
            with torch.inference_mode():
                raw = self._generate(prompts_ids[lo:hi], settings, n, generator)
        finally:
            for m, mode in zip(models, modes):
                m.train(mode)
        completions = self._completions(raw, settings, n) if raw is not None else []
        if procs is not None:  # this process's rows, then everyone's, in prompt order
            mine = [dataclasses.replace(c, prompt_index=c.prompt_index + lo) for c in completions]
            completions = [c for part in procs.gather(mine) for c in part]
        return SampleBatch(completions, n, settings)

    def _uniforms(self, rows: int, settings: SamplingSettings, generator: torch.Generator) -> Tensor | None:
        """Several processes: this step's uniforms of this process's ``rows`` running rows, out of the draw
        of all running rows of all processes (module docstring); None when no row runs anywhere (stop).
        One process: an empty tensor (``draw`` draws its own)."""
        procs = self.processes
        if procs is None:
            return torch.empty(0)
        counts = procs.counts(rows, self.device)
        if sum(counts) == 0:
            return None
        if settings.greedy:
            return torch.empty(0)
        offset = sum(counts[:procs.rank])
        u = torch.rand(sum(counts), 1, generator=generator, dtype=torch.float64, device=self.device)
        return u[offset:offset + rows]

    def _follow(self, settings: SamplingSettings, generator: torch.Generator, steps: int) -> None:
        """Several processes, none of this process's rows running: take part in the remaining ``steps``
        decode steps' draws until every process's rows have finished."""
        for _ in range(steps):
            if self._uniforms(0, settings, generator) is None:
                return

    def _generate(self, prompts_ids: list[list[int]], settings: SamplingSettings, n: int,
                  generator: torch.Generator) -> dict[str, Any] | None:
        dev = self.device
        if not prompts_ids:  # several processes, more of them than prompts: only the draws
            self._follow(settings, generator, settings.max_new_tokens)
            return None
        num_prompts, max_new = len(prompts_ids), settings.max_new_tokens
        width = max(len(p) for p in prompts_ids)
        ids = torch.full((num_prompts, width), self.pad_id, dtype=torch.long)
        mask = torch.zeros(num_prompts, width + max_new, dtype=torch.long)  # columns grow one per step
        for i, p in enumerate(prompts_ids):
            ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
            mask[i, width - len(p):] = 1
        ids, mask = ids.to(dev), mask.to(dev)
        positions = (mask[:, :width].cumsum(-1) - 1).clamp(min=0)
        next_pos = positions[:, -1] + 1  # (P,)

        steppers = [_Stepper(self.model)] + ([_Stepper(self.reference)] if self.reference is not None else [])
        logits = [s.prefill(ids, mask[:, :width], positions, width + max_new) for s in steppers]
        rows = num_prompts * n
        if n > 1:
            if max_new > 1:  # a single-token call never reads the cache again
                for s in steppers:
                    s.repeat(n)
            logits = [x.repeat_interleave(n, dim=0) for x in logits]
            mask = mask.repeat_interleave(n, dim=0)
            next_pos = next_pos.repeat_interleave(n, dim=0)

        tokens = torch.full((rows, max_new), self.pad_id, dtype=torch.long, device=dev)
        sample_lp = torch.zeros(rows, max_new, dtype=torch.float32, device=dev)
        policy_lp = torch.zeros_like(sample_lp)
        ref_lp = torch.zeros_like(sample_lp) if self.reference is not None else None
        lengths = torch.full((rows,), max_new, dtype=torch.long)
        reasons: list[StopReason] = ["length"] * rows
        eos = torch.tensor(self.eos_token_ids, dtype=torch.long, device=dev)
        stops = _StopChecker(self.tokenizer, settings.stop) if settings.stop else None
        active = torch.arange(rows, device=dev)  # original row of each running row
        active_list = list(range(rows))
        plain = self.reference is None and not settings.greedy and settings.temperature == 1.0 \
            and settings.top_k == 0 and settings.top_p == 1.0

        tok = torch.empty(0, dtype=torch.long, device=dev)  # the tokens sampled at the previous step
        for t in range(max_new):
            uniforms = self._uniforms(len(active_list), settings, generator)
            if uniforms is None:
                break
            if t > 0:
                cols = width + t
                logits = [s.step(tok, mask[:, :cols], next_pos) for s in steppers]
                next_pos = next_pos + 1
            p_lp = torch.log_softmax(logits[0], dim=-1)
            base = p_lp
            if self.reference is not None:
                r_lp = torch.log_softmax(logits[1], dim=-1)
                base = mixture_logps(p_lp, r_lp, self.beta)
            if settings.greedy:
                tok = base.argmax(-1)
                s_lp = None
            else:
                dist = base if plain else torch.log_softmax(sampling_logits(base, settings), dim=-1)
                tok = draw(dist.exp(), generator, uniforms if uniforms.numel() else None)
                s_lp = dist.gather(1, tok[:, None]).squeeze(1)
            tokens[active, t] = tok
            policy_lp[active, t] = p_lp.gather(1, tok[:, None]).squeeze(1)
            if s_lp is not None:
                sample_lp[active, t] = s_lp
            if ref_lp is not None:
                ref_lp[active, t] = r_lp.gather(1, tok[:, None]).squeeze(1)
            mask[:, width + t] = 1

            done = torch.isin(tok, eos)
            done_list = done.tolist()
            if stops is not None:
                open_rows = [j for j, d in enumerate(done_list) if not d]
                hits = stops.hits(tokens[active[open_rows], max(0, t + 1 - stops.window):t + 1].tolist())
                for j, hit in zip(open_rows, hits):
                    if hit:
                        done_list[j] = True
                        reasons[active_list[j]] = "stop"
            if not any(done_list):
                continue
            keep_idx = []
            for j, row in enumerate(active_list):
                if done_list[j]:
                    lengths[row] = t + 1
                    if reasons[row] == "length":
                        reasons[row] = "eos"
                else:
                    keep_idx.append(j)
            if not keep_idx or t == max_new - 1:
                if not keep_idx and self.processes is not None:
                    self._follow(settings, generator, max_new - 1 - t)
                break
            keep = torch.tensor(keep_idx, dtype=torch.long, device=dev)
            for s in steppers:
                s.select(keep)
            active, tok, mask, next_pos = active[keep], tok[keep], mask[keep], next_pos[keep]
            active_list = [active_list[j] for j in keep_idx]
        return {"tokens": tokens.cpu(), "sample_lp": sample_lp.cpu(), "policy_lp": policy_lp.cpu(),
                "ref_lp": None if ref_lp is None else ref_lp.cpu(), "lengths": lengths.tolist(),
                "reasons": reasons}

    def _completions(self, raw: dict[str, Any], settings: SamplingSettings, n: int) -> list[Completion]:
        out = []
        tokens, s_lp, p_lp, r_lp = (raw["tokens"].tolist(), raw["sample_lp"].tolist(), raw["policy_lp"].tolist(),
                                    None if raw["ref_lp"] is None else raw["ref_lp"].tolist())
        eos = set(self.eos_token_ids)
        all_ids = [tokens[row][:length] for row, length in enumerate(raw["lengths"])]
        bodies = [ids[:-1] if reason == "eos" and ids and ids[-1] in eos else ids
                  for ids, reason in zip(all_ids, raw["reasons"])]
        texts = decode_batch(self.tokenizer, bodies)
        for row, (ids, text, reason) in enumerate(zip(all_ids, texts, raw["reasons"])):
            length = len(ids)
            if reason == "stop":
                cuts = [text.find(s) for s in settings.stop if s in text]
                if cuts:
                    text = text[:min(cuts)]
            out.append(Completion(
                prompt_index=row // n, token_ids=tuple(ids), text=text, logps=tuple(s_lp[row][:length]),
                policy_logps=tuple(p_lp[row][:length]),
                reference_logps=None if r_lp is None else tuple(r_lp[row][:length]), stop_reason=reason,
            ))
        return out


class _StopChecker:
    """Whether a completion's decoded text now contains a stop string, decoding only its tail.

    A character takes at most 4 byte-level tokens, so the last ``4 * longest + 4`` tokens hold any stop
    string that the newest token completed (an earlier one would have stopped an earlier step)."""

    def __init__(self, tokenizer: Any, stop: tuple[str, ...]):
        self.tokenizer, self.stop = tokenizer, stop
        self.window = 4 * max(len(s) for s in stop) + 4

    def hits(self, tails: list[list[int]]) -> list[bool]:
        """For each completion's last ``window`` tokens: does their text contain a stop string?"""
        return [any(s in text for s in self.stop) for text in decode_batch(self.tokenizer, tails)]


def decode_batch(tokenizer: Any, seqs: list[list[int]]) -> list[str]:
    """``tokenizer.batch_decode(seqs, skip_special_tokens=True)``; straight through the Rust backend of a
    fast tokenizer when that gives the same text (no clean-up of tokenization spaces)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and not getattr(tokenizer, "clean_up_tokenization_spaces", False):
        return backend.decode_batch(seqs, skip_special_tokens=True)
    return tokenizer.batch_decode(seqs, skip_special_tokens=True)


def _eos_ids(model: nn.Module, tokenizer: Any) -> list[int]:
    ids: list[int] = []
    tok_eos = getattr(tokenizer, "eos_token_id", None)
    if tok_eos is not None:
        ids.append(int(tok_eos))
    gen = getattr(unwrap(model), "generation_config", None)
    gen_eos = getattr(gen, "eos_token_id", None) if gen is not None else None
    if gen_eos is None:
        gen_eos = getattr(getattr(unwrap(model), "config", None), "eos_token_id", None)
    if isinstance(gen_eos, int):
        ids.append(gen_eos)
    elif isinstance(gen_eos, (list, tuple)):
        ids.extend(int(x) for x in gen_eos)
    return ids


__all__ = ["Processes", "SamplingSettings", "Completion", "SampleBatch", "Sampler", "TorchSampler", "sampling_logits",
           "mixture_logps", "draw", "decode_batch", "StopReason"]
