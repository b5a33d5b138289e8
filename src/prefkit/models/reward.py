"""Reward models: any Hugging Face backbone, a pooling rule and a small head of ours.

A reward model maps a (prompt, completion) sequence to a score. It is three parts:

1. a **backbone**, any ``transformers`` base model (encoder or decoder) returning hidden states
   ``(N, T, H)``; optionally wrapped with LoRA adapters (``peft``);
2. a **pooling** rule turning ``(N, T, H)`` into one feature vector ``(N, H)`` per sequence:
   ``"last"`` (the last non-pad token; the default for decoders, which see the whole sequence only
   there), ``"mean"`` (mean over non-pad tokens), ``"cls"`` (the first token) or ``"pooler"`` (the
   first token through the backbone's own pooling layer, BERT's pretrained dense + tanh, as
   ``AutoModelForSequenceClassification`` does; the default for encoders that have one, ``"mean"`` for
   the others) — :mod:`prefkit.models.reward_inputs`;
3. a **head** (ours, a few parameters) giving a :class:`~prefkit.models.heads.RewardOutput`
   (:mod:`prefkit.models.heads`: scalar, multi-objective, tie-aware, GPM; :mod:`prefkit.models.personal`:
   the pluralistic heads PAL, VPL, mixture, MaxMin, which score a pair for a given user).

Frozen-backbone mode (:meth:`RewardModel.freeze_backbone`): the backbone's weights stop training and
each distinct token sequence's pooled feature is computed once (:mod:`prefkit.models.feature_cache`),
so only the head trains, in minutes on a CPU. Personal heads: :meth:`RewardModel.pair_logits` scores
pairs for their records' users, :meth:`RewardModel.add_user` adapts to a new user from a few pairs.

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
from prefkit.errors import ConfigError, DataError
from prefkit.models.decoder import unwrap
from prefkit.models.feature_cache import FeatureCache, hash_json, hash_module_weights, hash_tokenizer
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
)
from prefkit.models.load import (
    add_lora,
    check_model_path,
    check_tokenizer_path,
    is_peft,
    local_dir,
    quiet_loading,
)
from prefkit.models.packing import backbone_fast_path_unsupported, packed_hidden, padded_is_cheaper
from prefkit.models.personal import make_head
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
    computation up to float rounding. BERT-family encoders (MiniLM) run packed too, each sequence's
    attention bidirectional inside its own segment, with restarting positions and no prompt sharing (a
    shared prompt would see its completions); other encoders (e.g. RoBERTa, whose positions start at
    ``padding_idx + 1``) run padded. ``packing=False`` (per call, or the ``packing`` attribute) turns it off.
    """

    def __init__(self, backbone: nn.Module, head: RewardHead, config: RewardModelConfig,
                 tokenizer: Any = None):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.config = config
        self.tokenizer = tokenizer
        has_pooler = self.pooler_layer() is not None
        self.pooling: Pooling = config.pooling or default_pooling(getattr(backbone, "config", None), has_pooler)
        if self.pooling == "pooler" and not has_pooler:
            raise ConfigError(f"reward.pooling=pooler needs a backbone with its own pooling layer (BERT's 'pooler'); "
                              f"{type(unwrap(backbone)).__name__} has none: use reward.pooling=cls or mean")
        self.packing = True
        """Default of ``forward(packing=...)``: the padding-free fast path where the backbone allows it."""
        self.share_prefix = True
        """Default of ``forward(share_prefix=...)``: with ``"last"`` pooling, a group's common prefix once."""
        self.feature_cache: FeatureCache | None = None
        """Frozen-backbone mode's feature cache (:meth:`freeze_backbone`); None: the backbone runs."""

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
            with quiet_loading():
                model = AutoModel.from_pretrained(path, use_safetensors=True, trust_remote_code=False,
                                                  local_files_only=True,
                                                  **({"dtype": dtype} if dtype is not None else {}))
            if tokenizer is None:
                tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False, local_files_only=True)
        else:
            model = backbone
        model = getattr(model, "base_model", model)
        if lora_r > 0:  # the run config's lora section (0 = off); all linear layers unless named
            model = add_lora(model, r=lora_r, alpha=lora_alpha, dropout=lora_dropout,
                             target_modules=lora_target_modules, task_type=None)
        if config.frozen_backbone and lora_r > 0:
            raise ConfigError("reward.frozen_backbone trains only the head; LoRA adapters would stay frozen: set "
                              "lora.r=0 or reward.frozen_backbone=false")
        head = make_head(config, int(model.config.hidden_size))
        result = cls(model, head, config, tokenizer)
        if config.frozen_backbone:
            result.freeze_backbone(config.feature_cache_dir)
        return result

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
        with quiet_loading():
            backbone = AutoModel.from_pretrained(root / BACKBONE_DIR, use_safetensors=True,
                                                 trust_remote_code=False, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(root / BACKBONE_DIR, trust_remote_code=False,
                                                  local_files_only=True)
        head = make_head(config, int(backbone.config.hidden_size))
        head.load_state_dict(load_file(str(root / HEAD_FILE)))
        model = cls(backbone, head, config, tokenizer).eval()
        if config.frozen_backbone:  # an in-memory cache: loading never writes to the training machine's folder
            model.freeze_backbone()
        return model

    def save(self, path: str | Path, state_dict: dict[str, Tensor] | None = None) -> Path:
        """Write ``backbone/`` (safetensors + tokenizer), ``head.safetensors`` and ``reward_config.json``.

        A LoRA backbone is merged into plain weights first, so the saved model loads without ``peft``.
        ``state_dict``: the model's full weights gathered elsewhere (``backbone.*`` and ``head.*`` keys; a
        sharded FSDP run, whose in-memory weights are shards), written instead of the module's own; not
        for a LoRA backbone (:attr:`saves_gathered_weights`).
        """
        from safetensors.torch import save_file

        root = Path(path)
        root.mkdir(parents=True, exist_ok=True)
        backbone = self.backbone
        if state_dict is not None and not self.saves_gathered_weights:
            raise ConfigError("a LoRA reward model cannot be saved from gathered weights; train it with "
                              "distributed.strategy=ddp, or save without LoRA")
        parts = {"backbone": {}, "head": {}}
        for key, value in (state_dict or {}).items():
            part, _, name = key.partition(".")
            if part in parts:
                parts[part][name] = value
        if hasattr(backbone, "merge_and_unload"):
            import copy

            backbone = copy.deepcopy(backbone).merge_and_unload()
        backbone.save_pretrained(root / BACKBONE_DIR, safe_serialization=True,
                                 **({"state_dict": parts["backbone"]} if state_dict is not None else {}))
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(root / BACKBONE_DIR)
        if state_dict is None:
            self.head.finalize()
            head_weights = self.head.state_dict()
        else:
            head_weights = parts["head"]
        save_file({k: v.detach().contiguous().cpu() for k, v in head_weights.items()}, str(root / HEAD_FILE))
        saved = asdict(self.config) | {"pooling": self.pooling}
        if self.head.personal:
            saved["users"] = list(self.head.users)
        (root / CONFIG_FILE).write_text(json.dumps(saved, indent=2) + "\n")
        return root

    @property
    def saves_gathered_weights(self) -> bool:
        """Whether :meth:`save` can write weights gathered from shards (``state_dict``): not with LoRA."""
        return not is_peft(self.backbone)

    def save_pretrained(self, path: str | Path, state_dict: dict[str, Tensor] | None = None, **_: Any) -> Path:
        """:meth:`save` under the name the trainer calls (``safe_serialization`` is always on)."""
        return self.save(path, state_dict)

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
        ``packing`` / ``share_prefix``: the fast path (default: the model's attributes); it runs on causal
        decoder and BERT-family encoder backbones and right-padded rows, else the padded computation runs. In
        frozen-backbone mode the features come from the cache (each row's real tokens are its key).
        """
        if self.feature_cache is not None:
            rows = [ids[m.bool()].tolist() for ids, m in zip(input_ids, attention_mask, strict=True)]
            return self.feature_cache.lookup(rows).to(input_ids.device)  # (N, H) float32
        return self.backbone_features(input_ids, attention_mask, group_size=group_size, packing=packing,
                                      share_prefix=share_prefix)

    def backbone_features(self, input_ids: Tensor, attention_mask: Tensor, *, group_size: int = 1,
                          packing: bool | None = None, share_prefix: bool | None = None) -> Tensor:
        """:meth:`features` computed by the backbone (never the cache)."""
        packing = self.packing if packing is None else packing
        if packing and self.fast_path_unsupported() is None and right_padded(attention_mask):
            share = self.share_prefix if share_prefix is None else share_prefix
            features = self._packed_features(input_ids, attention_mask, group_size, share)
            if features is not None:
                return features
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask)
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]  # (N, T, H)
        return self._pooler_step(pool(hidden, attention_mask, self.pooling))

    def pooler_layer(self) -> nn.Module | None:
        """The backbone's own pooling layer (BERT-family ``pooler``: first token → dense → tanh), or None."""
        return getattr(unwrap(self.backbone), "pooler", None)

    def _pooler_step(self, first: Tensor) -> Tensor:
        """``"pooler"`` pooling's second step on the first tokens' states (N, H); the identity otherwise."""
        if self.pooling != "pooler":
            return first
        layer = self.pooler_layer()
        if layer is None:  # checked at construction; a backbone swapped since then
            raise ConfigError("reward.pooling=pooler: the backbone has no pooling layer; use cls or mean")
        return layer(first[:, None])  # (N, H): the layer reads position 0 of (N, 1, H)

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
        return self._pooler_step(out.index_copy(0, plan.seq_index, hidden))  # one scored token per sequence

    def forward(self, input_ids: Tensor, attention_mask: Tensor, *, group_size: int = 1,
                packing: bool | None = None, share_prefix: bool | None = None,
                users: Tensor | None = None) -> RewardOutput:
        """Head outputs of N = G * B rows; ``users`` (N,): user indices (``head.user_index``) for a
        personal head (None: the population), ignored by the other heads."""
        features = self.features(input_ids, attention_mask, group_size=group_size, packing=packing,
                                 share_prefix=share_prefix)
        if self.head.personal:
            return self.head(features, users, group_size)
        return self.head(features)

    # frozen backbone and personal heads ------------------------------------------------------------

    def freeze_backbone(self, cache_dir: str | Path | None = None) -> FeatureCache:
        """Frozen-backbone mode: the backbone's parameters stop training (``requires_grad=False``) and
        :meth:`features` reads a :class:`~prefkit.models.feature_cache.FeatureCache` (in memory, and under
        ``cache_dir`` when given), fingerprinted by the backbone's weights, the tokenizer, pooling,
        max_length and truncation side. Returns the cache."""
        if is_peft(self.backbone):
            raise ConfigError("freeze_backbone: this backbone has LoRA adapters, which would stay frozen; build "
                              "the model without LoRA (lora.r=0)")
        self.backbone.requires_grad_(False)
        self.backbone.eval()
        dtype = next(self.backbone.parameters()).dtype
        fingerprint = {"weights": hash_module_weights(self.backbone), "tokenizer": hash_tokenizer(self.tokenizer),
                       "settings": hash_json({"pooling": self.pooling, "max_length": self.config.max_length,
                                              "truncation_side": self.config.truncation_side, "dtype": str(dtype)})}
        self.feature_cache = FeatureCache(self._cache_compute, fingerprint, directory=cache_dir,
                                          batch_size=self.config.feature_batch_size)
        self.config = replace(self.config, frozen_backbone=True,
                              feature_cache_dir=None if cache_dir is None else str(cache_dir))
        return self.feature_cache

    def _cache_compute(self, rows: list[list[int]]) -> Tensor:
        """The backbone's pooled features (n, H) of id lists, in eval mode (what the cache stores)."""
        ids, mask = self.tokens().pad(rows)
        device = next(self.backbone.parameters()).device
        was_training = self.backbone.training
        self.backbone.eval()
        try:
            return self.backbone_features(ids.to(device), mask.to(device))
        finally:
            self.backbone.train(was_training)

    @torch.no_grad()
    def sequence_features(self, rows: Sequence[Sequence[int]], *, batch_size: int = 64) -> Tensor:
        """(N, H) float32 CPU features of token id lists: the cache in frozen mode, else the backbone
        (length-sorted batches, eval mode)."""
        if self.feature_cache is not None:
            return self.feature_cache.lookup(rows)
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
        device = next(self.parameters()).device
        was_training = self.training
        self.eval()
        parts = []
        try:
            for i in range(0, len(order), batch_size):
                ids, mask = self.tokens().pad([rows[j] for j in order[i:i + batch_size]])
                parts.append(self.backbone_features(ids.to(device), mask.to(device)).float().cpu())
        finally:
            self.train(was_training)
        out = torch.cat(parts) if parts else torch.zeros(0, int(self.backbone.config.hidden_size))
        result = torch.empty_like(out)
        result[torch.tensor(order, dtype=torch.long)] = out
        return result

    def record_features(self, records: Sequence[Pair], *, batch_size: int = 64) -> tuple[Tensor, Tensor]:
        """(chosen (B, H), rejected (B, H)) float32 CPU features of pair records."""
        bad = next((r for r in records if not isinstance(r, Pair)), None)
        if bad is not None:
            raise DataError(f"personal reward models score pairs; got a {type(bad).__name__} record")
        tokens = self.tokens()
        rows = [tokens.record_ids(r) for r in records]
        feats = self.sequence_features([r[0] for r in rows] + [r[1] for r in rows], batch_size=batch_size)
        return feats[:len(records)], feats[len(records):]

    @torch.no_grad()
    def pair_logits(self, records: Sequence[Pair], *, batch_size: int = 64) -> Tensor:
        """(B,) float32 log-odds that each record's chosen beats its rejected, for the record's own
        ``user_id`` (personal heads; a record without one gets the population's score; an unknown id is a
        DataError naming ``add_user``); the other heads ignore user ids."""
        users = self.head.user_index([r.user_id for r in records]) if self.head.personal else None
        chosen, rejected = self.record_features(records, batch_size=batch_size)
        device = next(self.head.parameters()).device
        was_training = self.training
        self.eval()
        parts = []
        try:
            for i in range(0, len(records), batch_size):
                c, r = chosen[i:i + batch_size].to(device), rejected[i:i + batch_size].to(device)
                feats = torch.cat([c, r])  # (2b, H): chosen rows, then rejected rows
                if self.head.personal:
                    assert users is not None
                    u = users[i:i + batch_size].to(device)
                    out = self.head(feats, torch.cat([u, u]), 2)
                else:
                    out = self.head(feats)
                b = len(c)
                parts.append(self.head.preference_logits(out.select(slice(0, b)), out.select(slice(b, 2 * b))))
        finally:
            self.train(was_training)
        return torch.cat(parts).float().cpu() if parts else torch.zeros(0)

    def add_user(self, user_id: str, shots: Sequence[Pair], **fit_options: float) -> None:
        """Few-shot adaptation to a new user from their labelled pairs (re-adding an id replaces it).

        PAL fits only the user's mixture weights (``steps``, ``lr``, ``l2`` options); VPL infers the
        latent from the shots; MaxMin assigns the likeliest group; the mixture fits the user's router offset
        (MiCRo's stage 2; same options as PAL); BT / GPM: nothing to do (a user-blind model). The new id is appended to ``config.users`` (saved with the model).
        """
        if not self.head.personal:
            return
        if not shots:
            raise DataError(f"add_user({user_id!r}) needs at least one labelled pair")
        chosen, rejected = self.record_features(shots)
        device = next(self.head.parameters()).device
        self.head.add_user(user_id, chosen.to(device), rejected.to(device), **fit_options)
        self.config = replace(self.config, users=tuple(self.head.users))

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

        Scalar heads: the scores are the rewards (personal heads: the population's). GPM and mixture: the
        score of candidate i is its mean win probability ``mean_j σ(s(y_i ≻ y_j))`` against the other
        candidates. Ties go to the first.
        """
        out = self.outputs_for([prompt] * len(candidates), list(candidates), batch_size=batch_size)
        if not self.head.scalar_preference:  # GPM, mixture: pairwise only
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
