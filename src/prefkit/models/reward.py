"""Reward models: any Hugging Face backbone, a pooling rule and a small head of ours.

A reward model maps a (prompt, completion) sequence to a score. It is three parts:

1. a **backbone**, any ``transformers`` base model (encoder or decoder) returning hidden states
   ``(N, T, H)``; optionally wrapped with LoRA adapters (``peft``);
2. a **pooling** rule turning ``(N, T, H)`` into one feature vector ``(N, H)`` per sequence:
   ``"last"`` (the last non-pad token; the default for decoders, which see the whole sequence only
   there), ``"mean"`` (mean over non-pad tokens; the default for encoders) or ``"cls"`` (the first
   token) — :mod:`prefkit.models.reward_inputs`;
3. a **head** (ours, a few parameters) giving a :class:`~prefkit.models.heads.RewardOutput`
   (:mod:`prefkit.models.heads`: scalar, multi-objective, tie-aware, GPM).

This module holds :class:`RewardModel` (construction, saving, loading, forward, inference) and
:func:`score_records`. Training one is a job of ``prefkit.train`` (a run config with a ``reward:``
section; ``prefkit rm train``), through the one trainer and the objective
``prefkit.train.objectives.RewardObjective``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from prefkit.data.records import Pair, Ranking, Record
from prefkit.errors import ConfigError
from prefkit.models.heads import (
    GPMHead,
    MultiObjectiveHead,
    Pooling,
    RewardHead,
    RewardModelConfig,
    RewardOutput,
    ScalarHead,
    TieHead,
    default_pooling,
    make_head,
)
from prefkit.models.load import add_lora, check_model_path, check_tokenizer_path, local_dir
from prefkit.models.packing import backbone_fast_path_unsupported, packed_hidden, padded_is_cheaper
from prefkit.models.reward_inputs import (
    RewardTokens,
    as_text_record,
    encode_for_reward,
    pool,
    pooling_batch,
    render_text,
    right_padded,
    sequences_of,
)

CONFIG_FILE = "reward_config.json"
HEAD_FILE = "head.safetensors"
BACKBONE_DIR = "backbone"

class RewardModel(nn.Module):
    """backbone → pooling → head. ``forward(input_ids, attention_mask) -> RewardOutput``.

    On a causal decoder backbone the forward runs padding-free by default (the log-prob engine's fast
    path, :mod:`prefkit.models.packing`): the sequences are packed end to end with attention kept inside
    each, and with ``"last"`` pooling the G sequences of an example (``group_size``, rows ``g * B + b``)
    encode their common prefix, the prompt, once. Exact: the pooled features equal the padded
    computation up to float rounding. Bidirectional encoders (BERT, MiniLM) always run padded: their
    tokens see the whole sequence, so neither packing with causal segments nor sharing a prompt would
    be exact. ``packing=False`` (per call, or the ``packing`` attribute) turns it off.
    """

    def __init__(self, backbone: nn.Module, head: RewardHead, config: RewardModelConfig,
                 tokenizer: Any = None):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.config = config
        self.tokenizer = tokenizer
        self.pooling: Pooling = config.pooling or default_pooling(getattr(backbone, "config", None))
        self.packing = True
        """Default of ``forward(packing=...)``: the padding-free fast path where the backbone allows it."""
        self.share_prefix = True
        """Default of ``forward(share_prefix=...)``: with ``"last"`` pooling, a group's common prefix once."""

    # construction ------------------------------------------------------------------------------------

    @classmethod
    def from_backbone(cls, backbone: str | Path | nn.Module, config: RewardModelConfig | None = None,
                      tokenizer: Any = None, *, dtype: torch.dtype | None = None, lora_r: int = 0,
                      lora_alpha: float = 16.0, lora_dropout: float = 0.0,
                      lora_target_modules: Sequence[str] | str = "all-linear") -> RewardModel:
        """A new reward model (freshly initialised head) on a backbone.

        ``backbone``: a local model directory or a hub id ``org/name[@revision]`` (its snapshot in the local
        hub cache, downloaded when online; loaded with ``AutoModel``, safetensors only, no remote code) or a ``transformers`` model instance; a ``*ForCausalLM`` model is reduced to its base
        model. ``tokenizer`` defaults to the one saved in the directory.
        """
        config = config or RewardModelConfig()
        if isinstance(backbone, (str, Path)):
            from transformers import AutoModel, AutoTokenizer

            path = local_dir(backbone, "backbone")
            check_model_path(path, "backbone", gguf=False, causal=False)
            if tokenizer is None:
                check_tokenizer_path(path, "backbone")
            model = AutoModel.from_pretrained(path, use_safetensors=True, trust_remote_code=False,
                                              local_files_only=True, **({"dtype": dtype} if dtype is not None else {}))
            if tokenizer is None:
                tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False, local_files_only=True)
        else:
            model = backbone
        model = getattr(model, "base_model", model)
        if lora_r > 0:  # the run config's lora section (0 = off); all linear layers unless named
            model = add_lora(model, r=lora_r, alpha=lora_alpha, dropout=lora_dropout,
                             target_modules=lora_target_modules, task_type=None)
        head = make_head(config, int(model.config.hidden_size))
        return cls(model, head, config, tokenizer)

    @classmethod
    def load(cls, path: str | Path) -> RewardModel:
        """A reward model saved by :meth:`save` (backbone, tokenizer, head, config), in eval mode: a local
        folder or a hub id ``org/name[@revision]`` (a repository holding such a folder's files)."""
        from safetensors.torch import load_file
        from transformers import AutoModel, AutoTokenizer

        root = local_dir(path, "reward model")
        if not (root / CONFIG_FILE).is_file():
            raise ConfigError(f"{str(path)!r} is not a prefkit reward model (no {CONFIG_FILE}); train one "
                              "with 'prefkit rm train' or save one with RewardModel.save")
        try:
            saved = json.loads((root / CONFIG_FILE).read_bytes())
        except (OSError, ValueError):
            saved = None
        if not isinstance(saved, dict):
            raise ConfigError(f"{str(path)!r}: {CONFIG_FILE} is not a JSON object; save the reward model again")
        check_model_path(root / BACKBONE_DIR, "reward model backbone", gguf=False, causal=False)
        check_tokenizer_path(root / BACKBONE_DIR, "reward model backbone")
        if not (root / HEAD_FILE).is_file():
            raise ConfigError(f"{str(path)!r} holds no {HEAD_FILE}; save the reward model again")
        for legacy in ("lora_r", "lora_alpha"):  # written by older versions (LoRA is merged on save)
            saved.pop(legacy, None)
        config = RewardModelConfig.from_dict(saved)
        backbone = AutoModel.from_pretrained(root / BACKBONE_DIR, use_safetensors=True,
                                             trust_remote_code=False, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(root / BACKBONE_DIR, trust_remote_code=False,
                                                  local_files_only=True)
        head = make_head(config, int(backbone.config.hidden_size))
        head.load_state_dict(load_file(str(root / HEAD_FILE)))
        return cls(backbone, head, config, tokenizer).eval()

    def save(self, path: str | Path) -> Path:
        """Write ``backbone/`` (safetensors + tokenizer), ``head.safetensors`` and ``reward_config.json``.

        A LoRA backbone is merged into plain weights first, so the saved model loads without ``peft``.
        """
        from safetensors.torch import save_file

        root = Path(path)
        root.mkdir(parents=True, exist_ok=True)
        backbone = self.backbone
        if hasattr(backbone, "merge_and_unload"):
            import copy

            backbone = copy.deepcopy(backbone).merge_and_unload()
        backbone.save_pretrained(root / BACKBONE_DIR, safe_serialization=True)
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(root / BACKBONE_DIR)
        save_file({k: v.detach().contiguous().cpu() for k, v in self.head.state_dict().items()},
                  str(root / HEAD_FILE))
        saved = asdict(self.config) | {"pooling": self.pooling}
        (root / CONFIG_FILE).write_text(json.dumps(saved, indent=2) + "\n")
        return root

    def save_pretrained(self, path: str | Path, **_: Any) -> Path:
        """:meth:`save` under the name the trainer calls (``safe_serialization`` is always on)."""
        return self.save(path)

    def gradient_checkpointing_enable(self, **kwargs: Any) -> None:
        """Recompute the backbone's activations in backward (``model.gradient_checkpointing``)."""
        if hasattr(self.backbone, "activation_checkpointing_enable"):  # transformers >= 5 name
            self.backbone.activation_checkpointing_enable(
                activation_checkpointing_kwargs=kwargs.get("gradient_checkpointing_kwargs"))
        else:
            self.backbone.gradient_checkpointing_enable(**kwargs)

    def enable_input_require_grads(self) -> None:
        """Needed with LoRA + gradient checkpointing (frozen embeddings)."""
        self.backbone.enable_input_require_grads()

    def tokens(self) -> RewardTokens:
        """The :class:`RewardTokens` for this model's tokenizer and length settings."""
        if self.tokenizer is None:
            raise ConfigError("this reward model has no tokenizer; pass one to RewardModel.from_backbone")
        return RewardTokens(self.tokenizer, self.config.max_length, self.config.truncation_side)

    # forward -----------------------------------------------------------------------------------------

    def features(self, input_ids: Tensor, attention_mask: Tensor, *, group_size: int = 1,
                 packing: bool | None = None, share_prefix: bool | None = None) -> Tensor:
        """Pooled backbone features (N, H) of N = G * B right- or left-padded rows.

        ``group_size`` G: rows ``g * B + b`` are the G sequences of example b (they may share a prompt).
        ``packing`` / ``share_prefix``: the fast path (default: the model's attributes); it runs only on
        causal decoder backbones and right-padded rows, else the padded computation runs.
        """
        packing = self.packing if packing is None else packing
        if packing and self.fast_path_unsupported() is None and right_padded(attention_mask):
            share = self.share_prefix if share_prefix is None else share_prefix
            features = self._packed_features(input_ids, attention_mask, group_size, share)
            if features is not None:
                return features
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask)
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]  # (N, T, H)
        return pool(hidden, attention_mask, self.pooling)

    def fast_path_unsupported(self) -> str | None:
        """Why the backbone runs padded (None: the fast path can run it)."""
        return backbone_fast_path_unsupported(self.backbone)

    def _packed_features(self, input_ids: Tensor, attention_mask: Tensor, group_size: int,
                         share_prefix: bool) -> Tensor | None:
        """:meth:`features` padding-free (None: a short batch the fast path would barely shrink)."""
        n = input_ids.shape[0]
        batch = pooling_batch(input_ids, attention_mask, group_size, self.pooling)
        share = share_prefix and self.pooling == "last" and group_size > 1
        if padded_is_cheaper(batch, share):
            return None
        hidden, plan = packed_hidden(self.backbone, batch, share_prefix=share)  # (S, H)
        out = hidden.new_zeros(n, hidden.shape[-1])
        if self.pooling == "mean":
            counts = torch.bincount(plan.seq_index, minlength=n).clamp_min(1).to(hidden.dtype)  # (N,)
            return out.index_add(0, plan.seq_index, hidden) / counts[:, None]
        return out.index_copy(0, plan.seq_index, hidden)  # one scored token per sequence

    def forward(self, input_ids: Tensor, attention_mask: Tensor, *, group_size: int = 1,
                packing: bool | None = None, share_prefix: bool | None = None) -> RewardOutput:
        return self.head(self.features(input_ids, attention_mask, group_size=group_size, packing=packing,
                                       share_prefix=share_prefix))

    # inference ---------------------------------------------------------------------------------------

    @torch.no_grad()
    def outputs_for(self, prompts: Sequence[Any], completions: Sequence[Any], *,
                    batch_size: int = 32) -> RewardOutput:
        """Head outputs (float32, CPU) for (prompt, completion) pairs, in input order, in eval mode.

        Sequences are sorted by length internally so batches carry little padding.
        """
        tokens = self.tokens()
        rows = [tokens.pair_ids(p, c) for p, c in zip(prompts, completions, strict=True)]
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        parts: list[RewardOutput] = []
        try:
            for i in range(0, len(order), batch_size):
                ids, mask = tokens.pad([rows[j] for j in order[i:i + batch_size]])
                parts.append(self(ids.to(device), mask.to(device)))
        finally:
            self.train(was_training)
        if not parts:
            return RewardOutput(torch.zeros(0))
        inverse = torch.empty(len(order), dtype=torch.long)
        inverse[torch.tensor(order)] = torch.arange(len(order))
        return RewardOutput(*(None if getattr(parts[0], f.name) is None
                              else torch.cat([getattr(p, f.name) for p in parts]).float().cpu()[inverse]
                              for f in fields(RewardOutput)))

    def pair_outputs(self, records: Sequence[Pair], *, batch_size: int = 32
                     ) -> tuple[RewardOutput, RewardOutput]:
        """(chosen outputs, rejected outputs) for pair records, each with B rows."""
        prompts = [r.prompt for r in records]
        both = self.outputs_for(prompts * 2, [r.chosen for r in records] + [r.rejected for r in records],
                                batch_size=batch_size)
        b = len(records)
        return both.select(slice(0, b)), both.select(slice(b, 2 * b))

    def score(self, prompts: Sequence[Any], completions: Sequence[Any], *, batch_size: int = 32) -> Tensor:
        """Scalar rewards (N,) for (prompt, completion) pairs; GPM heads have none (ConfigError)."""
        if isinstance(self.head, GPMHead):
            raise ConfigError("a GPM reward model has no scalar score, only pairwise preferences; use "
                              "'prefkit rm eval' or 'prefkit bon' (which compares candidates)")
        return self.outputs_for(prompts, completions, batch_size=batch_size).rewards

    def best_of(self, prompt: Any, candidates: Sequence[Any], *, batch_size: int = 32) -> tuple[int, Tensor]:
        """(index of the best candidate, per-candidate scores (N,)) for one prompt.

        Scalar heads: the scores are the rewards. GPM: the score of candidate i is its mean win
        probability ``mean_j σ(s(y_i ≻ y_j))`` against the other candidates. Ties go to the first.
        """
        out = self.outputs_for([prompt] * len(candidates), list(candidates), batch_size=batch_size)
        if isinstance(self.head, GPMHead):
            n = len(candidates)
            ii, jj = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
            with torch.no_grad():
                logits = self.head.preference_logits(out.select(ii.reshape(-1)), out.select(jj.reshape(-1)))
            win = torch.sigmoid(logits.reshape(n, n)).fill_diagonal_(0.0)  # (n, n)
            scores = win.sum(1) / max(n - 1, 1)
        else:
            scores = out.rewards
        return int(torch.argmax(scores)), scores


def score_records(model: RewardModel, records: Sequence[Record], *, batch_size: int = 32,
                  key: str = "rm_score") -> list[Record]:
    """Copies of ``records`` with reward-model scores added to ``metadata``.

    Ratings and unpaired records get ``metadata[key]``; pairs ``{key}_chosen``, ``{key}_rejected`` and
    ``{key}_margin`` (the preference logit, which GPM models also have); rankings ``{key}s`` (a list in
    response order). Scalar heads only for the per-response keys (GPM pairs get just the margin).
    """
    prompts: list[Any] = []
    completions: list[Any] = []
    for r in records:
        seqs = sequences_of(r)
        prompts += [r.prompt] * len(seqs)
        completions += seqs
    out = model.outputs_for(prompts, completions, batch_size=batch_size)
    gpm = isinstance(model.head, GPMHead)
    if gpm and any(not isinstance(r, Pair) for r in records):
        raise ConfigError("a GPM reward model scores pairs only (it has no per-response score)")
    result: list[Record] = []
    at = 0
    for r in records:
        n = len(sequences_of(r))
        part = out.select(slice(at, at + n))
        at += n
        meta = dict(r.metadata or {})
        if isinstance(r, Pair):
            with torch.no_grad():
                margin = model.head.preference_logits(part.select(slice(0, 1)), part.select(slice(1, 2)))
            if not gpm:
                meta[f"{key}_chosen"], meta[f"{key}_rejected"] = (float(part.rewards[0]), float(part.rewards[1]))
            meta[f"{key}_margin"] = float(margin[0])
        elif isinstance(r, Ranking):
            meta[f"{key}s"] = [float(x) for x in part.rewards]
        else:
            meta[key] = float(part.rewards[0])
        result.append(replace(r, metadata=meta))
    return result


__all__ = ["RewardModel", "score_records", "CONFIG_FILE", "HEAD_FILE", "BACKBONE_DIR",
           # re-exported from prefkit.models.heads and prefkit.models.reward_inputs
           "RewardModelConfig", "RewardOutput", "RewardHead", "ScalarHead", "MultiObjectiveHead", "TieHead",
           "GPMHead", "Pooling", "make_head", "default_pooling", "RewardTokens", "render_text", "as_text_record",
           "sequences_of", "encode_for_reward", "pool", "pooling_batch"]
