"""PPO with a value head and GAE on the online loop (issue 13): the classic RLHF recipe.

Ziegler et al. 2019, "Fine-Tuning Language Models from Human Preferences", arXiv 1909.08593; Ouyang et al.
2022, arXiv 2203.02155, Eq. 2; Huang et al. 2024, "The N+ Implementation Details of RLHF with PPO: A Case
Study on TL;DR Summarization", arXiv 2403.17031. One round:

1. G samples per prompt from the policy, one score each from the judge (``prefkit.online.rl.collect``:
   the same records, token table, truncation handling and reference log-probs as GRPO/RLOO).
2. One teacher-forced pass of the policy (eval mode, no gradients) over the re-encoded samples gives, in
   the same forward, the old per-token log-probs and the old values V_t (:func:`logps_and_values`).
3. Per-token rewards r_t = −β·(log π_old − log π_ref)_t, the score added at the last trained token
   (:func:`~prefkit.losses.rl.per_token_kl_rewards`, k1); advantages and returns by GAE(γ, λ)
   (:func:`~prefkit.losses.rl.gae`); advantages whitened over all trained tokens of the round
   (:func:`~prefkit.losses.rl.whiten`, ``whiten_advantages``).
4. ``iterations`` passes of the trainer over the round's samples, minimising per sample
   clipped policy loss + ``vf_coef``·clipped value loss (:class:`PPOObjective`), π_old and V_old fixed.

**The value head** is ``nn.Linear(H, 1)`` on the policy's last hidden state at each completion position
(the state that predicts token t gives V_t, TRL's ``values[:, context_length − 1 : −1]``), fp32, zero
initialised (V = 0 at round 0). By default its input is detached (``value_grad_to_policy: false``): the
value loss trains the head only, never the policy's trunk, so the policy update is the same as without a
critic except for the advantages. Where it lives: for the round it is attached to the policy as the
submodule :data:`VALUE_HEAD`, so the round's ``Trainer`` puts it in its one AdamW (same lr, clipping,
schedule; its moments carried with the policy's when ``online.keep_optimizer``). Between rounds it is
*removed* from the policy and kept in ``<out>/ppo/value_head-NNNN.safetensors`` (its weights at the start
of round NNNN; written atomically at the end of round NNNN − 1, before the loop's round checkpoint; the
last three kept). So the loop's ``policy.safetensors``, the run identity hash, the reference copy and the
policy handed back to the caller stay the plain ``*ForCausalLM``, and a resume from round r's checkpoint
reads the head of round r: resume is exact (``tests/test_online_ppo.py``). The AdamW state saved in the
loop's ``optimizer.pt`` holds the head's moments as the last parameters, the order they take every round.

**One forward for log-probs and values** (:func:`logps_and_values`): the engine's dispatch
(:func:`~prefkit.models.logprobs.sequence_plan`), then the packed (:func:`~prefkit.models.packing.packed_hidden`)
or padded decoder run; the output layer (chunked) and the value head both read the scored positions'
hidden states. No second forward.

Deviations: the value head shares the policy's trunk (Ziegler's lm-human-preferences setup) instead of
a separate value model initialised from the reward model (Ouyang et al.; TRL's ``PPOTrainer``); with its
input detached it is a linear critic on the policy's features. The KL in the reward is measured against
π_old (the sampling policy), as everywhere. ``iterations`` counts trainer passes (each
``steps_per_round`` optimizer steps), not single minibatch epochs. No adaptive KL controller.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from prefkit.data.batch import Batch
from prefkit.data.encode import EncodedExample, Encoder
from prefkit.data.records import Rating, Record
from prefkit.errors import ConfigError
from prefkit.losses.rl import (
    Normalize,
    clipped_policy_loss,
    clipped_value_loss,
    gae,
    per_token_kl_rewards,
    whiten,
)
from prefkit.models.chunked import head_logps
from prefkit.models.decoder import SequenceLogps, decoder_and_head, per_sequence, unwrap
from prefkit.models.logprobs import sequence_plan
from prefkit.models.packing import packed_hidden
from prefkit.online.config import OnlineConfig
from prefkit.online.context import RoundContext, as_completion
from prefkit.online.rl import (
    TableObjective,
    _check_common,
    _choice,
    _number,
    collect,
    completion_tokens,
    effective_kl_coef,
    padded_rows,
    per_token_rows,
    reward_metrics,
)
from prefkit.train.config import RunConfig
from prefkit.train.objectives import StepOutput

VALUE_HEAD = "prefkit_value_head"
"""The name of the value head while it is attached to the policy (module docstring)."""
HEAD_DIR = "ppo"
KEEP_HEADS = 3

# -- one forward: log-probs and values ------------------------------------------------------------------------


def logps_and_values(model: nn.Module, value_head: nn.Module, batch: Batch, *, chunk_size: int = 1024,
                     packing: bool = True, share_prefix: bool = True, detach: bool = True
                     ) -> tuple[SequenceLogps, Tensor]:
    """Per-token log-probs (``SequenceLogps`` with ``token_logps``) and (N, T) fp32 values of every sequence
    of ``batch`` from one decoder run: column t holds V_t = head(h_{t−1}) for each scored token t (the hidden
    state that predicts it), 0 elsewhere. Same dispatch as :func:`~prefkit.models.logprobs.sequence_logps`;
    ``detach`` stops the value gradient at the hidden state."""
    plan = sequence_plan(model, batch, packing=packing, share_prefix=share_prefix)
    if plan is not None:
        hidden, plan = packed_hidden(model, batch, share_prefix=share_prefix, plan=plan)  # (S, H)
        rows, cols, targets = plan.seq_index, plan.col_index, plan.target_ids
        lm_head = unwrap(model).get_output_embeddings()
        n, t = plan.num_sequences, plan.max_len
    else:
        if batch.layout != "padded":
            raise NotImplementedError("logps_and_values: layout='packed' needs packing=True and a supported model")
        decoder, lm_head = decoder_and_head(model)
        out = decoder(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
        scored = batch.completion_mask[:, 1:].bool()  # (N, T-1): token t+1 is scored
        hidden = out.last_hidden_state[:, :-1][scored]  # (S, H)
        targets = batch.input_ids[:, 1:][scored]  # (S,)
        r, c = scored.nonzero(as_tuple=True)
        rows, cols = r, c + 1
        n, t = batch.input_ids.shape
    token_lp = head_logps(lm_head, hidden, targets, chunk_size=chunk_size)  # (S,) fp32
    rows, cols = rows.to(token_lp.device), cols.to(token_lp.device)
    seq = per_sequence(token_lp, rows, cols, n, t, token_logps=True)
    h = hidden.detach() if detach else hidden
    weight = next(value_head.parameters())
    v = value_head(h.to(weight.dtype)).squeeze(-1).float()  # (S,)
    values = torch.zeros(n, t, dtype=v.dtype, device=v.device).index_put((rows, cols), v)  # (N, T)
    return seq, values


def _left(seq: SequenceLogps, grid: Tensor, batch: Batch) -> Tensor:
    """(B, L) completion-aligned values from an (N, T) sequence-aligned grid (as ``completion_tokens``)."""
    return completion_tokens(dataclasses.replace(seq, token_logps=grid), batch)[0]


def old_logps_and_values(model: nn.Module, value_head: nn.Module, examples: list[EncodedExample], pad_id: int, *,
                         batch_size: int = 64, chunk_size: int = 1024, packing: bool = True,
                         share_prefix: bool = True) -> list[tuple[tuple[float, ...], tuple[float, ...]]]:
    """Per example, the completion's per-token log-probs and values (eval mode, no gradients)."""

    def step(batch: Batch) -> tuple[Tensor, Tensor]:
        seq, grid = logps_and_values(model, value_head, batch, chunk_size=chunk_size, packing=packing,
                                     share_prefix=share_prefix)
        return completion_tokens(seq, batch)[0], _left(seq, grid, batch)  # (B, L) each

    return [(rows[0], rows[1]) for rows in per_token_rows(model, examples, pad_id, step, batch_size=batch_size)]


# -- the objective -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PPOTokens:
    """One trained record: its completion token ids (re-encoded), the loss mask, and per token the old
    log-probs, old values, (whitened) advantages and returns."""

    completion_ids: tuple[int, ...]
    mask: tuple[float, ...]
    old: tuple[float, ...]
    old_values: tuple[float, ...]
    advantages: tuple[float, ...]
    returns: tuple[float, ...]


@dataclass
class PPOObjective(TableObjective):
    """PPO's step over ``Rating`` records whose ``id`` keys ``table``: per sample, the clipped policy loss
    (:func:`~prefkit.losses.rl.clipped_policy_loss`, per-token advantages) + ``vf_coef`` × the clipped value
    loss (:func:`~prefkit.losses.rl.clipped_value_loss`), both normalised by ``normalize``; log-probs and
    values from one forward (:func:`logps_and_values`). No reference pass (the KL is in the rewards)."""

    value_head: nn.Module
    clip: float = 0.2
    value_clip: float = 0.2
    vf_coef: float = 0.1
    normalize: Normalize = "token"
    mean_tokens: float | None = None
    max_tokens: float | None = None
    detach_value: bool = True
    who: ClassVar[str] = "PPO objective"

    def __call__(self, model: nn.Module, batch: Batch, reference: SequenceLogps | None, *,
                 reward_mean: float | None = None) -> StepOutput:
        seq, grid = logps_and_values(model, self.value_head, batch, chunk_size=self.chunk_size,
                                     packing=self.packing, share_prefix=self.share_prefix, detach=self.detach_value)
        logps, present = completion_tokens(seq, batch)  # (B, L)
        values = _left(seq, grid, batch)  # (B, L)
        width = logps.shape[1]
        mask = self.column(batch, "mask", width, logps) * present  # (B, L)
        old, old_values, advantages, returns = (self.column(batch, f, width, logps)
                                                for f in ("old", "old_values", "advantages", "returns"))
        norm = {"normalize": self.normalize, "mean_tokens": self.mean_tokens, "max_tokens": self.max_tokens}
        pg = clipped_policy_loss(logps, old, advantages, mask, clip_low=self.clip, **norm)
        vf = clipped_value_loss(values, old_values, returns, mask, clip=self.value_clip, **norm)
        count = mask.sum(dim=1).clamp_min(1.0)  # (B,)
        with torch.no_grad():
            approx_kl = (0.5 * (logps - old) ** 2 * mask).sum(dim=1) / count  # (B,)
            vpred = (values * mask).sum(dim=1) / count  # (B,)
        metrics = {"loss/policy_avg": pg.losses.detach(), "loss/value_avg": vf.losses.detach(),
                   "policy/clipfrac_avg": pg.metrics["clip_ratio"], "val/clipfrac_avg": vf.metrics["val/clipfrac"],
                   "val/ratio": pg.metrics["ratio/mean"], "ratio/min": pg.metrics["ratio/min"],
                   "ratio/max": pg.metrics["ratio/max"], "policy/approxkl_avg": approx_kl,
                   "val/error": vf.metrics["val/error"], "val/vpred": vpred}
        return StepOutput(pg.losses + self.vf_coef * vf.losses, {k: v.float() for k, v in metrics.items()})


# -- the value head's home between rounds ---------------------------------------------------------------------


def _head_path(out: Path, round_index: int) -> Path:
    return out / HEAD_DIR / f"value_head-{round_index:04d}.safetensors"


def attach_value_head(ctx: RoundContext) -> nn.Module:
    """The round's value head (zeros at round 0, else the weights saved at the end of the previous round),
    attached to the policy as :data:`VALUE_HEAD` (module docstring)."""
    policy = ctx.policy
    if hasattr(policy, VALUE_HEAD):
        raise ConfigError(f"ppo: the policy already has a submodule {VALUE_HEAD!r}; pass a plain causal LM")
    config = getattr(unwrap(policy), "config", None)
    size = getattr(config, "hidden_size", None)
    if not isinstance(size, int):
        raise ConfigError("ppo: the policy's config has no hidden_size (needed for the value head)")
    device = next(policy.parameters()).device
    head = nn.Linear(size, 1).to(device=device, dtype=torch.float32)
    if ctx.index == 0:
        with torch.no_grad():
            head.weight.zero_()
            head.bias.zero_()
    else:
        path = _head_path(ctx.out_dir, ctx.index)
        if not path.is_file():
            raise ConfigError(f"ppo: resume at round {ctx.index} needs the value head {path}, which is missing")
        from safetensors.torch import load_file

        head.load_state_dict(load_file(str(path)))
    policy.add_module(VALUE_HEAD, head)
    return head


def save_value_head(ctx: RoundContext, head: nn.Module) -> Path:
    """Write the head as the weights at the start of the next round (atomically) and keep the last few."""
    from safetensors.torch import save_file

    path = _head_path(ctx.out_dir, ctx.index + 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({k: v.detach().to("cpu").contiguous() for k, v in head.state_dict().items()}, str(tmp))
    os.replace(tmp, path)
    for old in sorted(path.parent.glob("value_head-*.safetensors"))[:-KEEP_HEADS]:
        old.unlink()
    return path


# -- the plug-in ----------------------------------------------------------------------------------------------


def _float_rows(rows: Sequence[Sequence[float]], width: int) -> Tensor:
    return padded_rows(rows, width, torch.zeros((), dtype=torch.float64))


@dataclass
class PPO:
    """PPO for RLHF (module docstring; Ziegler et al. 2019, Ouyang et al. 2022, Huang et al. 2024): per-token
    rewards −β·KL (k1) with the score at the last token, a value head, GAE(γ, λ) advantages (whitened) and
    returns, then ``iterations`` passes of clipped policy loss + ``vf_coef`` × clipped value loss with
    π_old and V_old from before the update. β is ``kl_coef`` (unset: ``loss.beta``; ``prefkit.online.rl``).

    Deviations: module docstring.
    """

    rewards: str = "judge"
    """``judge`` or ``spo`` (as GRPO)."""
    kl_coef: float | None = None
    """β of the per-token KL penalty in the reward (>= 0; unset: ``loss.beta``; 0: none)."""
    gamma: float = 1.0
    """γ, the discount of GAE (in [0, 1])."""
    lam: float = 0.95
    """λ of GAE (in [0, 1])."""
    clip: float = 0.2
    """ε, the ratio clip [1 − ε, 1 + ε] (in [0, 1))."""
    vf_coef: float = 0.1
    """Weight of the value loss (>= 0)."""
    value_clip: float = 0.2
    """c, the value clip V_old ± c (> 0)."""
    whiten_advantages: bool = True
    """Whiten the advantages over all trained tokens of the round."""
    normalize: str = "token"
    """Token normalisation of both losses: ``token`` (TRL's masked mean), ``sequence`` or ``constant``."""
    iterations: int = 1
    """μ, trainer passes over the same samples per round (>= 1)."""
    value_grad_to_policy: bool = False
    """Let the value loss's gradient reach the policy's trunk (default: the head's input is detached)."""
    truncated: str = "mask_eos"
    """As GRPO: ``mask_eos`` or ``drop``."""
    name: str = "ppo"

    def check(self, run_config: RunConfig, online: OnlineConfig) -> None:
        from prefkit.losses import LOSSES

        _check_common(self, run_config, online)
        n = self.name
        if self.kl_coef is not None:
            _number(n, "kl_coef", self.kl_coef, 0.0)
        _number(n, "gamma", self.gamma, 0.0, 1.0)
        _number(n, "lam", self.lam, 0.0, 1.0)
        _number(n, "clip", self.clip, 0.0, 1.0)
        if self.clip >= 1.0:
            raise ConfigError(f"online algorithm {n!r}: option clip must be < 1, got {self.clip!r}")
        _number(n, "vf_coef", self.vf_coef, 0.0)
        _number(n, "value_clip", self.value_clip, 0.0, low_open=True)
        _number(n, "iterations", self.iterations, 1, integer=True)
        _choice(n, "normalize", self.normalize, ("token", "sequence", "constant"))
        for key in ("whiten_advantages", "value_grad_to_policy"):
            if not isinstance(getattr(self, key), bool):
                raise ConfigError(f"online algorithm {n!r}: option {key} must be true or false, "
                                  f"got {getattr(self, key)!r}")
        beta = effective_kl_coef(self.kl_coef, run_config)
        if beta > 0 and not LOSSES[run_config.loss.name].needs_reference:
            raise ConfigError(f"online algorithm {n!r}: kl_coef={beta:g} needs a reference model, and the loop "
                              f"keeps one only when loss.name has one; loss.name={run_config.loss.name!r} has "
                              "none: use a loss with a reference (the default loss.name has one) or set kl_coef: 0")

    def round(self, ctx: RoundContext) -> dict[str, Any]:
        head = attach_value_head(ctx)
        try:
            metrics = self._round(ctx, head)
        finally:
            delattr(ctx.policy, VALUE_HEAD)
        save_value_head(ctx, head)
        return metrics

    def _round(self, ctx: RoundContext, head: nn.Module) -> dict[str, Any]:
        beta = effective_kl_coef(self.kl_coef, ctx.run_config)
        has_ref = ctx.reference is not None
        samples = collect(ctx, self.rewards, self.truncated, old=False, ref=has_ref)
        g = ctx.online.samples_per_prompt
        encoder = Encoder(ctx.tokenizer, ctx.run_config.encode)
        mc = ctx.run_config.model
        first: dict[str, int] = {}
        for k, key in enumerate(samples.keys):
            if key is not None:
                first.setdefault(key, k)
        records = [Rating(ctx.prompts[k // g], as_completion(ctx.prompts[k // g], samples.batch.completions[k].text),
                          score=0.0, id=key) for key, k in first.items()]
        examples = encoder.encode_all(records)[0] if records else []
        olds = old_logps_and_values(ctx.policy, head, examples, encoder.pad_id, chunk_size=mc.chunk_size,
                                    packing=mc.packing, share_prefix=mc.share_prefix) if examples else []
        by_id = {str(ex.id): (ex, o) for ex, o in zip(examples, olds, strict=True)}
        trained = [k for k, key in enumerate(samples.keys)
                   if key is not None and key in by_id and sum(samples.table[key].mask) > 0]
        m: dict[str, Any] = {**reward_metrics(ctx, samples), "beta": beta,
                             "val/num_eos_tokens": sum(c.stop_reason == "eos" for c in samples.batch.completions)}
        if not trained:
            return {**m, "records": 0, "samples_trained": 0}
        keys = [str(samples.keys[k]) for k in trained]
        width = max(len(samples.table[x].mask) for x in keys)
        mask = _float_rows([samples.table[x].mask for x in keys], width)  # (K, L)
        old = _float_rows([by_id[x][1][0] for x in keys], width)
        values = _float_rows([by_id[x][1][1] for x in keys], width)
        ref = _float_rows([samples.table[x].ref or () for x in keys], width) if has_ref else old
        scores = samples.rewards.flatten()[trained].double()  # (K,)
        rewards = per_token_kl_rewards(scores, old, ref, mask, kl_coef=beta, estimator="k1")  # (K, L)
        advantages, returns = gae(rewards, values, mask, gamma=self.gamma, lam=self.lam)  # (K, L)
        raw = advantages
        if self.whiten_advantages and float(mask.sum()) >= 2:
            advantages = whiten(advantages, mask)
        records, table = self._records(ctx, samples, trained, keys, by_id, mask, old, values, advantages, returns)
        normalize, mean_tokens, max_tokens = self.normalize, None, None
        if normalize == "token":
            weights = [r.weight for r in records]
            lengths = [sum(table[str(r.id)].mask) for r in records]
            mean_tokens = max(sum(w * n for w, n in zip(weights, lengths, strict=True)) / sum(weights), 1.0)
        elif normalize == "constant":
            max_tokens = float(ctx.online.sampling.max_new_tokens)
        objective = PPOObjective(table, head, clip=self.clip, value_clip=self.value_clip, vf_coef=self.vf_coef,
                                 normalize=normalize, mean_tokens=mean_tokens, max_tokens=max_tokens,
                                 detach_value=not self.value_grad_to_policy, chunk_size=mc.chunk_size,
                                 packing=mc.packing, share_prefix=mc.share_prefix)
        summary: dict[str, float] = {}
        for it in range(self.iterations):
            summary = ctx.train(records, objective=objective, tag=f"iter{it}" if it else "")
        n_tok = float(mask.sum())
        kl_seq = ((old - ref) * mask).sum(dim=1)  # (K,) k1 summed over the sample
        m.update({"records": len(records), "samples_trained": len(trained),
                  "objective/kl": float(kl_seq.mean()), "objective/scores": float(scores.mean()),
                  "objective/entropy": float((-old * mask).sum(dim=1).mean()),
                  "objective/non_score_reward": -beta * float(kl_seq.mean()),
                  "objective/rlhf_reward": float(scores.mean()) - beta * float(kl_seq.mean()),
                  "entropy": float((-old * mask).sum()) / n_tok, "kl": float(((old - ref) * mask).sum()) / n_tok,
                  "val/mean": float((values * mask).sum()) / n_tok,
                  "returns/mean": float((returns * mask).sum()) / n_tok,
                  "advantages/mean_raw": float((raw * mask).sum()) / n_tok})
        for key in ("policy/clipfrac_avg", "val/clipfrac_avg", "loss/policy_avg", "loss/value_avg", "val/ratio",
                    "policy/approxkl_avg"):
            if key in summary:
                m[key] = summary[key]
        m.update({f"train/{k}": v for k, v in summary.items()})
        return m

    def _records(self, ctx: RoundContext, samples: Any, trained: list[int], keys: list[str],
                 by_id: dict[str, Any], mask: Tensor, old: Tensor, values: Tensor, advantages: Tensor,
                 returns: Tensor) -> tuple[list[Record], dict[str, PPOTokens]]:
        """One weighted record per distinct (prompt, sample, score): identical samples with the same score
        have the same per-token numbers. Weights = count · (records / samples), as ``rl._records``."""
        g = ctx.online.samples_per_prompt
        flat = samples.rewards.flatten().tolist()
        groups: dict[tuple[int, str, float], list[int]] = {}
        for row, k in enumerate(trained):
            groups.setdefault((k // g, keys[row], flat[k]), []).append(row)
        scale = len(groups) / len(trained)
        out: list[Record] = []
        table: dict[str, PPOTokens] = {}
        used: dict[str, int] = {}
        for (i, key, _), rows in groups.items():
            row = rows[0]
            n = len(samples.table[key].mask)
            rid = key if key not in used else f"{key}~{used[key]}"
            used[key] = used.get(key, 0) + 1
            ex = by_id[key][0]

            def cut(x: Tensor, row: int = row, n: int = n) -> tuple[float, ...]:
                return tuple(float(v) for v in x[row, :n])

            table[rid] = PPOTokens(tuple(ex.sequences[0].completion_ids), cut(mask), cut(old), cut(values),
                                   cut(advantages), cut(returns))
            c = samples.batch.completions[trained[row]]
            p = ctx.prompts[i]
            adv0 = float(advantages[row, 0]) if math.isfinite(float(advantages[row, 0])) else 0.0
            out.append(Rating(p, as_completion(p, c.text), score=adv0, id=rid, weight=len(rows) * scale))
        return out, table


__all__ = ["PPO", "PPOObjective", "PPOTokens", "logps_and_values", "old_logps_and_values", "attach_value_head",
           "save_value_head", "VALUE_HEAD"]
