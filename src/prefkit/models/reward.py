"""Reward models: any Hugging Face backbone, a pooling rule and a small head of ours.

A reward model maps a (prompt, completion) sequence to a score. It is three parts:

1. a **backbone**, any ``transformers`` base model (encoder or decoder) returning hidden states
   ``(N, T, H)``; optionally wrapped with LoRA adapters (``peft``);
2. a **pooling** rule turning ``(N, T, H)`` into one feature vector ``(N, H)`` per sequence:
   ``"last"`` (the last non-pad token; the default for decoders, which see the whole sequence only
   there), ``"mean"`` (mean over non-pad tokens; the default for encoders) or ``"cls"`` (the first
   token);
3. a **head** (ours, a few parameters) giving a :class:`RewardOutput`:

   - :class:`ScalarHead`: one reward ``r(x, y)``; with Bradley–Terry ``P(y1 ≻ y2) = σ(r1 − r2)``;
   - :class:`MultiObjectiveHead`: ``A`` attribute scores combined into one reward by fixed weights, a
     learned global gating (softmax weights times a learned scale) or a contextual gating network
     (weights from the pooled features, after ArmoRM);
   - :class:`TieHead`: a scalar reward plus a learned tie parameter for Rao–Kupper (``θ ≥ 1``) or
     Davidson (``ν ≥ 0``) models, so ``P(tie)`` is predicted too;
   - :class:`GPMHead`: the General Preference Model (Zhang et al. 2024, arXiv 2410.02197): each
     response gets a preference embedding ``v ∈ R^{2k}``, and ``P(y_i ≻ y_j) = σ(v_iᵀ R v_j)`` with a
     skew-symmetric block-diagonal ``R``, which can express cyclic (intransitive) preferences.

Every head answers :meth:`RewardHead.preference_logits` ``(a, b) -> (B,)``, the log-odds that ``a`` is
preferred to ``b`` (``r_a − r_b`` for the scalar heads), which evaluation and best-of-N use.

Sequences are rendered to text by :func:`render_text` and tokenized by :func:`encode_for_reward`,
which **truncates from the left** by default: for long dialogues the end (the last turns, where the two
responses differ) is what a reward model must see. The batch follows ``prefkit.data.batch`` (row
``g * B + b`` is sequence ``g`` of example ``b``; pairs: chosen rows first).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prefkit.data.batch import Batch
from prefkit.data.records import Message, Pair, Ranking, Rating, Record, Unpaired
from prefkit.errors import ConfigError, DataError, check_known_keys, did_you_mean

Pooling = Literal["last", "mean", "cls"]
HeadKind = Literal["scalar", "multi", "tie", "gpm"]
Gating = Literal["fixed", "learned", "contextual"]
TieModel = Literal["rao_kupper", "davidson"]

CONFIG_FILE = "reward_config.json"
HEAD_FILE = "head.safetensors"
BACKBONE_DIR = "backbone"

# -- pooling -------------------------------------------------------------------------------------------


def last_index(attention_mask: Tensor) -> Tensor:
    """Index of the last non-pad token per row (works for left and right padding). (N, T) -> (N,)."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)  # (T,)
    return (attention_mask.long() * (positions + 1)).argmax(dim=1)  # (N,)


def _right_padded(attention_mask: Tensor) -> bool:
    """Every row's real tokens come first (what the fast path's appended token assumes)."""
    lens = attention_mask.sum(1, keepdim=True)  # (N, 1)
    cols = torch.arange(attention_mask.shape[1], device=attention_mask.device)[None]  # (1, T)
    return bool(((cols < lens) == attention_mask.bool()).all())


def pooling_batch(input_ids: Tensor, attention_mask: Tensor, group_size: int, mode: Pooling) -> Batch:
    """Right-padded rows (N, T) as a :class:`Batch` whose scored tokens make the packed engine
    (:func:`prefkit.models.packing.packed_hidden`) return the hidden states ``mode`` pools.

    The engine returns the state *before* each scored token, so one token (id 0; nothing attends to it)
    is appended after each sequence: ``"last"`` scores only that one (the last real token's state; the
    group's common prefix can then be shared), ``"mean"`` every token from position 1 on (all real
    states), ``"cls"`` position 1 (the state of position 0). (N, T + 1) ids and masks.
    """
    n = input_ids.shape[0]
    if n % group_size:
        raise ValueError(f"{n} rows are not a multiple of group_size {group_size}")
    rows = torch.arange(n, device=input_ids.device)
    lens = attention_mask.sum(1).long()  # (N,)
    ids = torch.nn.functional.pad(input_ids, (0, 1))
    mask = torch.nn.functional.pad(attention_mask, (0, 1))
    mask[rows, lens] = 1  # (N, T + 1): the appended token is part of its sequence
    scored = torch.zeros_like(mask)
    if mode == "last":
        scored[rows, lens] = 1
    elif mode == "mean":
        scored = mask.clone()
    else:  # cls
        scored[:, 1] = 1
    return Batch(kind="list" if group_size > 1 else "unpaired", group_size=group_size, input_ids=ids,
                 attention_mask=mask, completion_mask=scored)


def pool(hidden: Tensor, attention_mask: Tensor, mode: Pooling) -> Tensor:
    """One feature vector per sequence: hidden (N, T, H), attention_mask (N, T) -> (N, H).

    ``"last"``: the hidden state of the last token whose mask is 1; ``"mean"``: the mean over tokens
    whose mask is 1; ``"cls"``: position 0 (BERT's ``[CLS]``; assumes right padding).
    """
    if mode == "last":
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        return hidden[rows, last_index(attention_mask)]  # (N, H)
    if mode == "mean":
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (N, T, 1)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)  # (N, H)
    if mode == "cls":
        return hidden[:, 0]
    raise ConfigError(f"unknown pooling {mode!r}; choose from {list(get_args(Pooling))}"
                      f"{did_you_mean(str(mode), get_args(Pooling))}")


# -- heads ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RewardOutput:
    """What a head returns for N sequences.

    rewards: (N,) scalar reward, higher = better (GPM: a norm-free summary, see :class:`GPMHead`).
    attributes: (N, A) attribute scores (multi-objective head), else None.
    embeddings: (N, 2k) preference embeddings (GPM head), else None.
    gate: (N, A) combination weights actually used (multi-objective head), else None.
    """

    rewards: Tensor
    attributes: Tensor | None = None
    embeddings: Tensor | None = None
    gate: Tensor | None = None

    def select(self, index: slice | Tensor) -> RewardOutput:
        """The same fields for a subset of rows."""
        return RewardOutput(*(None if v is None else v[index] for v in
                              (self.rewards, self.attributes, self.embeddings, self.gate)))


class RewardHead(nn.Module):
    """Base of the heads: pooled features (N, H) -> :class:`RewardOutput`."""

    kind: HeadKind = "scalar"

    def preference_logits(self, a: RewardOutput, b: RewardOutput) -> Tensor:
        """log P(a ≻ b) / P(b ≻ a) per example: ``r_a − r_b`` (B,). Antisymmetric in (a, b)."""
        return a.rewards - b.rewards


class ScalarHead(RewardHead):
    """``r = wᵀh + b``: one reward per sequence (Bradley–Terry, regression, Plackett–Luce)."""

    kind: HeadKind = "scalar"

    def __init__(self, hidden_size: int, dropout: float = 0.0):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.score = nn.Linear(hidden_size, 1)
        nn.init.normal_(self.score.weight, std=1.0 / math.sqrt(hidden_size + 1))
        nn.init.zeros_(self.score.bias)

    def forward(self, features: Tensor) -> RewardOutput:
        return RewardOutput(self.score(self.dropout(features)).squeeze(-1))  # (N,)


class MultiObjectiveHead(RewardHead):
    """``A`` attribute scores ``a = W h`` combined into ``r = Σ_j g_j a_j``.

    Gating ``g``:

    - ``"fixed"``: the given ``weights`` (a buffer, not trained);
    - ``"learned"``: ``g = exp(s) · softmax(ℓ)``, global logits ``ℓ`` (A,) and a scale ``s``;
      :meth:`weights` returns ``softmax(ℓ)``, the learned mixture on the simplex;
    - ``"contextual"``: ``g = exp(s) · softmax(G h)``, per-example weights from the pooled features
      (ArmoRM, Wang et al. 2024, arXiv 2406.12845, Sec. 3.2).

    Deviation from ArmoRM: the contextual gate reads the same pooled features as the attributes (the
    whole prompt + response), not a prompt-only hidden state.
    """

    kind: HeadKind = "multi"

    def __init__(self, hidden_size: int, num_attributes: int, *, gating: Gating = "learned",
                 weights: Sequence[float] | None = None):
        super().__init__()
        if gating not in get_args(Gating):
            raise ConfigError(f"unknown gating {gating!r}; choose from {list(get_args(Gating))}"
                              f"{did_you_mean(str(gating), get_args(Gating))}")
        if num_attributes < 1:
            raise ConfigError(f"a multi-objective head needs at least one attribute, got {num_attributes}")
        self.gating = gating
        self.attributes = nn.Linear(hidden_size, num_attributes)
        if gating == "fixed":
            if weights is None or len(weights) != num_attributes:
                raise ConfigError(f"gating 'fixed' needs {num_attributes} weights (one per attribute), "
                                  f"got {None if weights is None else list(weights)}")
            self.register_buffer("fixed_weights", torch.tensor([float(w) for w in weights]))
        else:
            self.gate_logits = nn.Parameter(torch.zeros(num_attributes))
            self.log_scale = nn.Parameter(torch.zeros(()))
            if gating == "contextual":
                self.gate = nn.Linear(hidden_size, num_attributes)
                nn.init.zeros_(self.gate.weight)
                nn.init.zeros_(self.gate.bias)

    def weights(self) -> Tensor:
        """The global combination weights (A,): fixed, or ``softmax(ℓ)`` for learned gating."""
        if self.gating == "fixed":
            return self.fixed_weights
        return torch.softmax(self.gate_logits, dim=-1)

    def forward(self, features: Tensor) -> RewardOutput:
        attrs = self.attributes(features)  # (N, A)
        if self.gating == "fixed":
            gate = self.fixed_weights.expand_as(attrs)
        elif self.gating == "learned":
            gate = (self.log_scale.exp() * torch.softmax(self.gate_logits, dim=-1)).expand_as(attrs)
        else:
            gate = self.log_scale.exp() * torch.softmax(self.gate_logits + self.gate(features), dim=-1)
        return RewardOutput((gate * attrs).sum(-1), attributes=attrs, gate=gate)  # rewards (N,)


class TieHead(ScalarHead):
    """A scalar reward plus one learned tie parameter (Rao–Kupper ``θ ≥ 1`` or Davidson ``ν ≥ 0``).

    Rao–Kupper (Rao & Kupper 1967), with ``π = exp(r)``:
    ``P(i ≻ j) = π_i / (π_i + θ π_j) = σ(r_i − r_j − log θ)`` and
    ``P(tie) = 1 − P(i ≻ j) − P(j ≻ i)``; we keep ``θ = exp(softplus(t)) ≥ 1``.

    Davidson (1970): ``P(i ≻ j) = π_i / (π_i + π_j + ν √(π_i π_j))``,
    ``P(tie) = ν √(π_i π_j) / (π_i + π_j + ν √(π_i π_j))``; we keep ``ν = exp(t)``.

    The parameter is trained through the registry losses ``rao_kupper`` (``theta=``) and ``davidson``
    (``nu=``), which accept a tensor: :meth:`loss_params` gives that keyword.
    ``preference_logits`` stays ``r_a − r_b`` (the log-odds of a over b given no tie, in both models).
    """

    kind: HeadKind = "tie"

    def __init__(self, hidden_size: int, tie_model: TieModel = "rao_kupper", dropout: float = 0.0):
        super().__init__(hidden_size, dropout)
        if tie_model not in get_args(TieModel):
            raise ConfigError(f"unknown tie model {tie_model!r}; choose from {list(get_args(TieModel))}"
                              f"{did_you_mean(str(tie_model), get_args(TieModel))}")
        self.tie_model = tie_model
        self.tie_param = nn.Parameter(torch.zeros(()))

    def loss_params(self) -> dict[str, Tensor]:
        """``{"theta": θ}`` (Rao–Kupper) or ``{"nu": ν}`` (Davidson), differentiable 0-dim tensors."""
        if self.tie_model == "rao_kupper":
            return {"theta": F.softplus(self.tie_param).exp()}
        return {"nu": self.tie_param.exp()}

    def outcome_probs(self, a: RewardOutput, b: RewardOutput) -> tuple[Tensor, Tensor, Tensor]:
        """(P(a ≻ b), P(tie), P(b ≻ a)), each (B,)."""
        diff = a.rewards - b.rewards  # (B,)
        if self.tie_model == "rao_kupper":
            log_theta = self.loss_params()["theta"].log()
            win, lose = torch.sigmoid(diff - log_theta), torch.sigmoid(-diff - log_theta)
            return win, (1.0 - win - lose).clamp_min(0.0), lose
        nu = self.loss_params()["nu"]
        half = diff / 2  # divide every term by sqrt(π_a π_b): exp(±Δ/2) and ν
        denom = half.exp() + (-half).exp() + nu  # (B,)
        return half.exp() / denom, nu / denom, (-half).exp() / denom

    def tie_probability(self, diff: Tensor | float = 0.0) -> Tensor:
        """P(tie) for a reward difference ``diff`` (default: two equally good responses)."""
        d = torch.as_tensor(diff, dtype=self.tie_param.dtype).reshape(-1)
        return self.outcome_probs(RewardOutput(d), RewardOutput(torch.zeros_like(d)))[1]


class GPMHead(RewardHead):
    """General Preference Model head (Zhang et al. 2024, arXiv 2410.02197, Sec. 3–4).

    Each sequence gets a preference embedding ``v = normalize(W h) ∈ R^{2k}`` (unit norm, as in the
    paper). With ``R = blockdiag(λ_1 J, …, λ_k J)``, ``J = [[0, −1], [1, 0]]`` and ``λ_l ≥ 0``::

        s(y_i ≻ y_j) = v_iᵀ R v_j = Σ_l λ_l (v_i[2l+1] v_j[2l] − v_i[2l] v_j[2l+1])
        P(y_i ≻ y_j) = σ(s(y_i ≻ y_j))

    ``s`` is antisymmetric, so ``P(i ≻ j) + P(j ≻ i) = 1``, and with k ≥ 1 it can express cycles
    (rock ≻ scissors ≻ paper ≻ rock), which no scalar reward can.

    Deviations: the eigenvalue scales ``λ_l = exp(t_l)`` are learned global parameters (the paper's
    "eigenvalue scale gate" makes them prompt-dependent); ``rewards`` in the output is the first
    embedding coordinate scaled by λ_1, only a placeholder: GPM has no scalar reward, so use
    :meth:`preference_logits` (evaluation and best-of-N do).
    """

    kind: HeadKind = "gpm"

    def __init__(self, hidden_size: int, dim: int = 4, *, init_scale: float = 4.0):
        super().__init__()
        if dim < 2 or dim % 2:
            raise ConfigError(f"GPM embedding dim must be an even number >= 2, got {dim}")
        self.dim = dim
        self.embed = nn.Linear(hidden_size, dim)
        self.log_scales = nn.Parameter(torch.full((dim // 2,), math.log(init_scale)))

    def forward(self, features: Tensor) -> RewardOutput:
        v = F.normalize(self.embed(features), dim=-1)  # (N, 2k)
        return RewardOutput(v[:, 0] * self.log_scales[0].exp(), embeddings=v)

    def preference_logits(self, a: RewardOutput, b: RewardOutput) -> Tensor:
        assert a.embeddings is not None and b.embeddings is not None
        va = a.embeddings.unflatten(-1, (-1, 2))  # (B, k, 2)
        vb = b.embeddings.unflatten(-1, (-1, 2))  # (B, k, 2)
        cross = va[..., 1] * vb[..., 0] - va[..., 0] * vb[..., 1]  # (B, k)
        return (cross * self.log_scales.exp()).sum(-1)  # (B,)


# -- configuration ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RewardModelConfig:
    """The head, pooling and input settings of a reward model (saved as ``reward_config.json``)."""

    head: HeadKind = "scalar"
    """``"scalar"`` (Bradley–Terry / regression / Plackett–Luce), ``"multi"`` (multi-objective),
    ``"tie"`` (Rao–Kupper / Davidson tie-aware) or ``"gpm"`` (general preference model)."""

    pooling: Pooling | None = None
    """``"last"``, ``"mean"`` or ``"cls"``; None picks ``"last"`` for decoders, ``"mean"`` for encoders."""

    max_length: int = 512
    """Most tokens per sequence (special tokens included)."""

    truncation_side: Literal["left", "right"] = "left"
    """Which end a too-long sequence loses; ``"left"`` keeps the end of the dialogue (the last turns)."""

    attributes: tuple[str, ...] = ()
    """Multi-objective head: the attribute names (rating ``attributes`` keys), in order."""

    gating: Gating = "learned"
    """Multi-objective head: ``"fixed"`` weights, ``"learned"`` global weights, or ``"contextual"``."""

    weights: tuple[float, ...] | None = None
    """Multi-objective head with fixed gating: one weight per attribute."""

    tie_model: TieModel = "rao_kupper"
    """Tie head: ``"rao_kupper"`` or ``"davidson"``."""

    gpm_dim: int = 4
    """GPM head: preference-embedding size 2k (even)."""

    dropout: float = 0.0
    """Dropout on the pooled features before a scalar/tie head."""

    lora_r: int | None = None
    """LoRA rank for the backbone (``peft``, all linear layers); None fine-tunes the full backbone."""

    lora_alpha: float = 16.0
    """LoRA scaling numerator (the update is scaled by alpha / r)."""

    def __post_init__(self) -> None:
        for name, kind in (("head", HeadKind), ("gating", Gating), ("tie_model", TieModel),
                           ("truncation_side", Literal["left", "right"])):
            value, choices = getattr(self, name), get_args(kind)
            if value not in choices:
                raise ConfigError(f"unknown {name} {value!r}; choose from {list(choices)}"
                                  f"{did_you_mean(str(value), choices)}")
        if self.pooling is not None and self.pooling not in get_args(Pooling):
            raise ConfigError(f"unknown pooling {self.pooling!r}; choose from {list(get_args(Pooling))}"
                              f"{did_you_mean(str(self.pooling), get_args(Pooling))}")
        if self.max_length < 4:
            raise ConfigError(f"max_length must be at least 4, got {self.max_length}")
        if self.head == "multi" and not self.attributes:
            raise ConfigError("head 'multi' needs attributes: the names of the rating attributes to predict")
        if self.lora_r is not None and self.lora_r < 1:
            raise ConfigError(f"lora_r must be a positive integer or null, got {self.lora_r}")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> RewardModelConfig:
        """Build from a mapping; an unknown key is a ConfigError naming the nearest valid one."""
        check_known_keys(values, [f.name for f in fields(cls)], "reward-model option")
        clean = dict(values)
        for key in ("attributes", "weights"):
            if clean.get(key) is not None:
                clean[key] = tuple(clean[key])
        return cls(**clean)


def make_head(config: RewardModelConfig, hidden_size: int) -> RewardHead:
    """The head ``config`` asks for, for features of size ``hidden_size``."""
    if config.head == "scalar":
        return ScalarHead(hidden_size, config.dropout)
    if config.head == "multi":
        return MultiObjectiveHead(hidden_size, len(config.attributes), gating=config.gating,
                                  weights=config.weights)
    if config.head == "tie":
        return TieHead(hidden_size, config.tie_model, config.dropout)
    return GPMHead(hidden_size, config.gpm_dim)


def default_pooling(backbone_config: Any) -> Pooling:
    """``"mean"`` for encoder (masked-LM family) backbones, ``"last"`` for everything else."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    return "mean" if getattr(backbone_config, "model_type", None) in MODEL_FOR_MASKED_LM_MAPPING_NAMES else "last"


# -- rendering and tokenization --------------------------------------------------------------------

_ROLE_NAMES = {"system": "System", "user": "Human", "assistant": "Assistant", "tool": "Tool"}


def render_text(prompt: str | tuple[Message, ...], completion: str | tuple[Message, ...],
                tokenizer: Any = None) -> str:
    """The text a reward model reads for (prompt, completion).

    Text records: ``prompt + completion`` (as ``prefkit.data.encode``). Chat records: the tokenizer's
    chat template when it has one, else a plain transcript ``"\\n\\nHuman: …\\n\\nAssistant: …"`` (HH-RLHF
    style; ``system`` and ``tool`` turns are named ``System:`` and ``Tool:``).
    """
    if isinstance(prompt, str) and isinstance(completion, str):
        return prompt + completion
    if isinstance(prompt, str) or isinstance(completion, str):
        raise DataError("prompt and completion must both be text or both be chat messages")
    messages = [*prompt, *completion]
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": m.role, "content": m.content} for m in messages],
                                             tokenize=False)
    return "".join(f"\n\n{_ROLE_NAMES[m.role]}: {m.content}" for m in messages)


def sequences_of(record: Record) -> list[str | tuple[Message, ...]]:
    """The completions a record contributes, in batch group order (pairs: chosen, rejected)."""
    if isinstance(record, Pair):
        return [record.chosen, record.rejected]
    if isinstance(record, Ranking):
        return list(record.responses)
    if isinstance(record, (Rating, Unpaired)):
        return [record.response]
    raise DataError(f"cannot score a {type(record).__name__} record")


def as_text_record(record: Record, tokenizer: Any) -> Record:
    """``record`` with chat prompt/completions rendered to transcript text when the tokenizer has no
    chat template (encoders); unchanged otherwise. See :func:`render_text`."""
    if not isinstance(record.prompt, tuple) or getattr(tokenizer, "chat_template", None):
        return record
    prompt = render_text(record.prompt, (), None)
    done = [render_text(record.prompt + c, (), None)[len(prompt):] for c in sequences_of(record)]  # type: ignore[operator]
    if isinstance(record, Pair):
        return replace(record, prompt=prompt, chosen=done[0], rejected=done[1])
    if isinstance(record, Ranking):
        return replace(record, prompt=prompt, responses=tuple(done))
    return replace(record, prompt=prompt, response=done[0])  # type: ignore[call-arg]


class RewardTokens:
    """The token ids a reward model reads, the same in training and at inference.

    A sequence is the prompt and completion ids of ``prefkit.data.encode`` (no BOS/EOS added there),
    then cut to ``max_length`` from the ``truncation_side`` and wrapped in the tokenizer's own special
    tokens (BERT: ``[CLS] … [SEP]``; Llama-style: ``<bos> …``), so a left cut keeps both the leading
    special token and the end of the dialogue. Chat records without a chat template are rendered as a
    transcript first (:func:`as_text_record`).
    """

    def __init__(self, tokenizer: Any, max_length: int = 512, truncation_side: str = "left"):
        from prefkit.data.encode import EncodeConfig, Encoder

        self.tokenizer, self.max_length, self.truncation_side = tokenizer, max_length, truncation_side
        self.encoder = Encoder(tokenizer, EncodeConfig(add_eos=False, add_bos=False))
        bare = tokenizer("a", add_special_tokens=False)["input_ids"]
        full = tokenizer("a", add_special_tokens=True)["input_ids"]
        at = next((i for i in range(len(full)) if full[i:i + len(bare)] == bare), 0)
        self.prefix, self.suffix = list(full[:at]), list(full[at + len(bare):])
        if max_length <= len(self.prefix) + len(self.suffix):
            raise ConfigError(f"max_length {max_length} leaves no room besides the special tokens")

    @property
    def pad_id(self) -> int:
        return self.encoder.pad_id

    def wrap(self, ids: Sequence[int]) -> list[int]:
        """Truncate (keeping ``truncation_side``'s opposite end) and add the special tokens."""
        ids = list(ids)
        if self.prefix and ids[:len(self.prefix)] == self.prefix:  # a chat template wrote BOS itself
            ids = ids[len(self.prefix):]
        room = self.max_length - len(self.prefix) - len(self.suffix)
        ids = ids[len(ids) - room:] if self.truncation_side == "left" and len(ids) > room else ids[:room]
        return self.prefix + ids + self.suffix

    def record_ids(self, record: Record) -> list[list[int]]:
        """One id list per sequence of ``record`` (group order)."""
        prompt, completions = self.encoder.render(as_text_record(record, self.tokenizer))
        return [self.wrap(prompt + c) for c in completions]

    def pair_ids(self, prompt: Any, completion: Any) -> list[int]:
        """The ids for one (prompt, completion)."""
        return self.record_ids(Unpaired(prompt=prompt, response=completion, desirable=True))[0]

    def pad(self, rows: Sequence[Sequence[int]]) -> tuple[Tensor, Tensor]:
        """Right-pad id lists: (N, T) ids and attention mask."""
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, :len(r)] = torch.tensor(r, dtype=torch.long)
            mask[i, :len(r)] = 1
        return ids, mask


_KIND = {Pair: "pair", Ranking: "list", Rating: "rating", Unpaired: "unpaired"}


def encode_for_reward(records: Sequence[Record], tokens: RewardTokens, *,
                      attributes: Sequence[str] = ()) -> Batch:
    """Collate B records of one kind into a :class:`Batch` for a reward model.

    Row ``g * B + b`` is sequence ``g`` of example ``b`` (pairs: chosen rows [0:B), rejected [B:2B)).
    ``completion_mask`` equals ``attention_mask`` (a reward model reads the whole sequence). Per-example
    fields: ``weight``; ``strength`` (NaN where absent); ``ties`` (pairs); ``scores``: rankings (B, K)
    given scores, ratings (B, 1) the score, or (B, A) the named ``attributes`` when given (NaN where
    absent).
    """
    if not records:
        raise ValueError("encode_for_reward needs at least one record")
    kinds = {type(r) for r in records}
    if len(kinds) != 1:
        raise DataError(f"cannot batch different feedback kinds together: {sorted(k.__name__ for k in kinds)}")
    groups = [tokens.record_ids(r) for r in records]
    g = len(groups[0])
    if any(len(s) != g for s in groups):
        raise DataError("rankings of different lengths cannot share a batch; group them by length first")
    input_ids, attention_mask = tokens.pad([groups[b][k] for k in range(g) for b in range(len(records))])
    nan = float("nan")
    strength = None
    if any(r.strength is not None for r in records):
        strength = torch.tensor([nan if r.strength is None else float(r.strength) for r in records])
    ties = torch.tensor([r.tie for r in records]) if isinstance(records[0], Pair) else None
    scores = None
    if isinstance(records[0], Ranking) and any(r.scores is not None for r in records):
        scores = torch.tensor([list(r.scores) if r.scores is not None else [nan] * g for r in records])
    elif isinstance(records[0], Rating):
        if attributes:
            scores = torch.tensor([[float((r.attributes or {}).get(a, nan)) for a in attributes]
                                   for r in records])
        else:
            scores = torch.tensor([[nan if r.score is None else float(r.score)] for r in records])
    return Batch(kind=_KIND[type(records[0])], group_size=g, input_ids=input_ids,  # type: ignore[arg-type]
                 attention_mask=attention_mask, completion_mask=attention_mask.clone(),
                 strength=strength, weight=torch.tensor([float(r.weight) for r in records]),
                 ties=ties, scores=scores, example_ids=[r.id for r in records])


# -- the model -----------------------------------------------------------------------------------------


def _local_dir(path: str | Path, what: str) -> Path:
    p = Path(path)
    if not p.is_dir():
        raise ConfigError(f"{what} {str(path)!r} is not a local directory; prefkit loads models only from "
                          "disk (download it first, then pass its folder)")
    return p


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
                      tokenizer: Any = None, *, dtype: torch.dtype | None = None) -> RewardModel:
        """A new reward model (freshly initialised head) on a backbone.

        ``backbone``: a local model directory (loaded with ``AutoModel``, safetensors only, no remote
        code) or a ``transformers`` model instance; a ``*ForCausalLM`` model is reduced to its base
        model. ``tokenizer`` defaults to the one saved in the directory.
        """
        config = config or RewardModelConfig()
        if isinstance(backbone, (str, Path)):
            from transformers import AutoModel, AutoTokenizer

            path = _local_dir(backbone, "backbone")
            model = AutoModel.from_pretrained(path, use_safetensors=True, trust_remote_code=False,
                                              **({"dtype": dtype} if dtype is not None else {}))
            tokenizer = tokenizer if tokenizer is not None else AutoTokenizer.from_pretrained(path)
        else:
            model = backbone
        model = getattr(model, "base_model", model)
        if config.lora_r is not None:
            model = _with_lora(model, config)
        head = make_head(config, int(model.config.hidden_size))
        return cls(model, head, config, tokenizer)

    @classmethod
    def load(cls, path: str | Path) -> RewardModel:
        """A reward model saved by :meth:`save` (backbone, tokenizer, head, config), in eval mode."""
        from safetensors.torch import load_file
        from transformers import AutoModel, AutoTokenizer

        root = _local_dir(path, "reward model")
        if not (root / CONFIG_FILE).is_file():
            raise ConfigError(f"{str(path)!r} is not a prefkit reward model (no {CONFIG_FILE}); train one "
                              "with 'prefkit rm train' or save one with RewardModel.save")
        config = RewardModelConfig.from_dict(json.loads((root / CONFIG_FILE).read_text()))
        backbone = AutoModel.from_pretrained(root / BACKBONE_DIR, use_safetensors=True,
                                             trust_remote_code=False)
        tokenizer = AutoTokenizer.from_pretrained(root / BACKBONE_DIR)
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
        saved = asdict(self.config) | {"pooling": self.pooling, "lora_r": None}
        (root / CONFIG_FILE).write_text(json.dumps(saved, indent=2) + "\n")
        return root

    def save_pretrained(self, path: str | Path, **_: Any) -> Path:
        """:meth:`save` under the name the trainer calls (``safe_serialization`` is always on)."""
        return self.save(path)

    def gradient_checkpointing_enable(self, **kwargs: Any) -> None:
        """Recompute the backbone's activations in backward (``model.gradient_checkpointing``)."""
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
        if packing and self.fast_path_unsupported() is None and _right_padded(attention_mask):
            share = self.share_prefix if share_prefix is None else share_prefix
            features = self._packed_features(input_ids, attention_mask, group_size, share)
            if features is not None:
                return features
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask)
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]  # (N, T, H)
        return pool(hidden, attention_mask, self.pooling)

    def fast_path_unsupported(self) -> str | None:
        """Why the backbone runs padded (None: the fast path can run it)."""
        from prefkit.models.packing import backbone_fast_path_unsupported

        return backbone_fast_path_unsupported(self.backbone)

    def _packed_features(self, input_ids: Tensor, attention_mask: Tensor, group_size: int,
                         share_prefix: bool) -> Tensor | None:
        """:meth:`features` padding-free (None: a short batch the fast path would barely shrink)."""
        from prefkit.models.packing import _padded_is_cheaper, packed_hidden

        n = input_ids.shape[0]
        batch = pooling_batch(input_ids, attention_mask, group_size, self.pooling)
        share = share_prefix and self.pooling == "last" and group_size > 1
        if _padded_is_cheaper(batch, share):
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


def _with_lora(model: nn.Module, config: RewardModelConfig) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, target_modules="all-linear",
                      lora_dropout=0.0)
    return get_peft_model(model, lora)


# -- training through prefkit.train ------------------------------------------------------------------


def check_head_and_loss(head: HeadKind, loss_name: str, loss_kind: str) -> None:
    """Raise ConfigError when a loss cannot train a head (checked before any model loads)."""
    if not loss_kind.startswith("reward_"):
        raise ConfigError(f"loss {loss_name!r} is a policy loss; a reward model needs a reward loss "
                          "(bradley_terry, soft_bradley_terry, rao_kupper, davidson, plackett_luce, "
                          "rm_regression, rm_multi_regression)")
    if head == "gpm" and loss_kind != "reward_pair":
        raise ConfigError(f"a GPM head learns from pairs only; loss {loss_name!r} is {loss_kind!r}")
    if head == "tie" and loss_name not in ("rao_kupper", "davidson"):
        raise ConfigError(f"head 'tie' learns its tie parameter from loss rao_kupper or davidson, "
                          f"not {loss_name!r}")


@dataclass
class RewardObjective:
    """The trainer's pluggable step for reward models: ``RewardModel`` forward -> registry reward loss.

    ``prepare`` turns the trainer's encoded examples (``prefkit.data.encode``, no BOS/EOS) into reward
    model inputs (:meth:`RewardTokens.wrap`: truncation from ``truncation_side`` and the tokenizer's
    special tokens) and puts rating attributes in the head's order. ``__call__`` builds the loss input:

    - ``reward_pair``: ``PairScores(r_chosen, r_rejected)``; for GPM ``(s/2, −s/2)`` with
      ``s = v_cᵀ R v_r``, so the loss's ``r_c − r_r`` is the GPM preference logit; a tie head passes its
      learned ``theta`` / ``nu``;
    - ``reward_list``: ``ListScores`` (B, K) rewards, best first;
    - ``reward_rating``: ``RatingScores`` of the attribute scores (B, A) (multi head) or rewards (B,).
    """

    loss_name: str
    spec: Any
    params: dict[str, Any]
    tokens: RewardTokens
    attributes: tuple[str, ...] = ()
    needs_reference: bool = False
    token_logps: bool = False
    packing: bool = True
    """The model's padding-free fast path (``model.packing``; causal decoder backbones only)."""
    share_prefix: bool = True
    """With ``packing`` and ``"last"`` pooling, each example's prompt once (``model.share_prefix``)."""

    def prepare(self, examples: list[Any], seed: int) -> list[Any]:
        from prefkit.data.encode import EncodedExample, EncodedSequence

        out = []
        for ex in examples:
            seqs = [EncodedSequence([], self.tokens.wrap(s.prompt_ids + s.completion_ids)) for s in ex.sequences]
            scores = ex.scores
            if ex.kind == "rating" and ex.score_names is not None:
                named = dict(zip(ex.score_names, ex.scores or (), strict=False))
                wanted = self.attributes or ("score",)
                scores = tuple(float(named.get(a, math.nan)) for a in wanted)
            out.append(EncodedExample(**{**ex.__dict__, "sequences": seqs, "scores": scores,
                                         "score_names": tuple(self.attributes or ("score",))
                                         if ex.kind == "rating" else ex.score_names}))
        return out

    def __call__(self, model: nn.Module, batch: Batch, reference: Any = None) -> Any:
        from prefkit.losses.reward import ListScores, PairScores, RatingScores
        from prefkit.train.trainer import StepOutput

        head = model.head
        out = model(batch.input_ids, batch.attention_mask, group_size=batch.group_size, packing=self.packing,
                    share_prefix=self.share_prefix)
        b, g = batch.num_examples, batch.group_size
        kind = self.spec.kind
        params = dict(self.params)
        metrics: dict[str, Tensor] = {}
        if kind == "reward_pair":
            first, second = out.select(slice(0, b)), out.select(slice(b, 2 * b))
            if isinstance(head, GPMHead):
                s = head.preference_logits(first, second)  # (B,)
                pred = PairScores(s / 2, -s / 2)
            else:
                pred = PairScores(first.rewards, second.rewards)
            if isinstance(head, TieHead):
                params.update(head.loss_params())
        elif kind == "reward_list":
            pred = ListScores(out.rewards.reshape(g, b).T)  # (B, K)
        else:
            pred = RatingScores(out.attributes if out.attributes is not None and self.attributes
                                else out.rewards)
        inputs = {k: getattr(batch, k) for k in ("strength", "ties", "scores") if k in self.spec.needs}
        loss = self.spec.fn(pred, None, **inputs, **params)
        if loss.chosen_rewards is not None and loss.rejected_rewards is not None:
            metrics["rewards/chosen"], metrics["rewards/rejected"] = loss.chosen_rewards, loss.rejected_rewards
            metrics["rewards/margins"] = loss.chosen_rewards - loss.rejected_rewards
            correct = (metrics["rewards/margins"] > 0).float()
            if batch.ties is not None:  # accuracy counts strict pairs only
                correct = torch.where(batch.ties.bool(), torch.full_like(correct, math.nan), correct)
            metrics["rewards/accuracies"] = correct
        metrics.update(loss.metrics)
        return StepOutput(loss.losses, {k: v.detach().float() for k, v in metrics.items()})


@dataclass
class RewardRunConfig:
    """A reward-model training job (``prefkit rm train --config FILE``): the trainer's sections plus
    ``reward`` (the head). Data, loss, train and output sections mean what they mean for
    ``prefkit train``; ``loss`` must be a reward loss."""

    model: Any = None
    """The backbone: ``model.path`` a local Hugging Face model directory (encoder or decoder)."""
    reward: RewardModelConfig = field(default_factory=RewardModelConfig)
    """Head, pooling, max_length, truncation side, LoRA (``RewardModelConfig``)."""
    data: Any = None
    """Training and evaluation data (as for ``prefkit train``)."""
    loss: Any = None
    """A reward loss and its parameters (default ``bradley_terry``)."""
    train: Any = None
    """Optimisation and the loop (as for ``prefkit train``)."""
    output: Any = None
    """Run directory; the reward model is saved in ``<dir>/model`` and the evaluation report beside."""
    eval_by: str | None = None
    """Column to break evaluation accuracy down by (a record field or metadata key), e.g. ``subset``."""

    def __post_init__(self) -> None:
        from prefkit.train.config import DataConfig, LossConfig, ModelConfig, OutputConfig, TrainConfig

        self.model = self.model or ModelConfig()
        self.data = self.data or DataConfig()
        self.loss = self.loss or LossConfig(name="bradley_terry")
        self.train = self.train or TrainConfig()
        self.output = self.output or OutputConfig(dir="runs/rm")

    def run_config(self) -> Any:
        """The equivalent ``prefkit.train.RunConfig`` (encoding without BOS/EOS or length limit: the
        reward objective adds special tokens and truncates)."""
        from prefkit.data.encode import EncodeConfig
        from prefkit.train.config import RunConfig

        return RunConfig(model=self.model, data=self.data, encode=EncodeConfig(add_eos=False, add_bos=False),
                         loss=self.loss, train=self.train, output=self.output)


_SECTIONS = ("model", "reward", "data", "loss", "train", "output", "eval_by")


def load_reward_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> RewardRunConfig:
    """Read a reward-model job from YAML plus ``key=value`` overrides; unknown keys are errors."""
    from prefkit.losses.registry import get_loss
    from prefkit.train.config import (
        DataConfig,
        LossConfig,
        ModelConfig,
        OutputConfig,
        TrainConfig,
        check_loss,
        from_dict,
        merge,
        parse_overrides,
        read_yaml,
    )

    raw = merge(read_yaml(path) if path else {}, parse_overrides(overrides))
    for key in raw:
        if key not in _SECTIONS:
            raise ConfigError(f"unknown config section {key!r}{did_you_mean(key, _SECTIONS)}; "
                              f"valid sections: {list(_SECTIONS)}")
    loss_raw = dict(raw.get("loss") or {})
    loss_raw.setdefault("name", "bradley_terry")
    output_raw = dict(raw.get("output") or {})
    output_raw.setdefault("dir", "runs/rm")
    reward = raw.get("reward") or {}
    if not isinstance(reward, Mapping):
        raise ConfigError(f"reward: expected a mapping, got {reward!r}")
    cfg = RewardRunConfig(
        model=from_dict(ModelConfig, raw.get("model") or {}, "model."),
        reward=RewardModelConfig.from_dict(reward),
        data=from_dict(DataConfig, raw.get("data") or {}, "data."),
        loss=from_dict(LossConfig, loss_raw, "loss."),
        train=from_dict(TrainConfig, raw.get("train") or {}, "train."),
        output=from_dict(OutputConfig, output_raw, "output."),
        eval_by=raw.get("eval_by"),
    )
    spec = get_loss(cfg.loss.name)
    check_head_and_loss(cfg.reward.head, cfg.loss.name, spec.kind)
    check_loss(cfg.run_config())
    return cfg


def train_reward_model(config: RewardRunConfig, *, resume: bool = False,
                       train_records: Sequence[Record] | None = None,
                       eval_records: Sequence[Record] | None = None,
                       model: RewardModel | None = None) -> tuple[RewardModel, dict[str, float]]:
    """Train a reward model with ``prefkit.train.Trainer`` and a :class:`RewardObjective`.

    Reads ``config.data`` unless records are given; builds the model from ``config.model.path`` unless
    one is given. Saves the model in ``<output.dir>/model`` (see :meth:`RewardModel.save`). Returns the
    trained model and the trainer's final metrics.
    """
    from prefkit.losses.registry import get_loss
    from prefkit.train.run import check_run_dir, read_data
    from prefkit.train.trainer import Trainer

    run_cfg = config.run_config()
    spec = get_loss(config.loss.name)
    check_head_and_loss(config.reward.head, config.loss.name, spec.kind)
    if train_records is None:
        check_run_dir(run_cfg, resume)
        train_records, eval_records = read_data(run_cfg)
    if model is None:
        if not config.model.path:
            raise ConfigError("no backbone; set model.path to a local Hugging Face model directory")
        from transformers import set_seed

        set_seed(config.train.seed)
        dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[config.model.dtype]
        model = RewardModel.from_backbone(config.model.path, config.reward, dtype=dtype)
        if config.model.tokenizer:
            from transformers import AutoTokenizer

            model.tokenizer = AutoTokenizer.from_pretrained(_local_dir(config.model.tokenizer, "tokenizer"))
    tokens = model.tokens()
    keep = _KIND_OF_LOSS[spec.kind]
    train_records = [as_text_record(r, tokens.tokenizer) for r in train_records if isinstance(r, keep)]
    eval_records = [as_text_record(r, tokens.tokenizer) for r in (eval_records or []) if isinstance(r, keep)]
    if not train_records:
        raise DataError(f"no {keep.__name__} records in the training data for loss {config.loss.name!r}")
    objective = RewardObjective(config.loss.name, spec, dict(config.loss.params), tokens,
                                tuple(config.reward.attributes), packing=config.model.packing,
                                share_prefix=config.model.share_prefix)
    trainer = Trainer(run_cfg, model, tokens.tokenizer, train_records, eval_records, objective=objective)
    summary = trainer.train(resume=resume)
    return model, summary


_KIND_OF_LOSS: dict[str, type] = {"reward_pair": Pair, "reward_list": Ranking, "reward_rating": Rating}


__all__ = ["Pooling", "HeadKind", "RewardOutput", "RewardHead", "ScalarHead", "MultiObjectiveHead",
           "TieHead", "GPMHead", "RewardModelConfig", "RewardModel", "RewardTokens", "RewardObjective",
           "RewardRunConfig", "load_reward_config", "score_records", "train_reward_model", "check_head_and_loss", "make_head",
           "pool", "last_index", "render_text", "as_text_record", "encode_for_reward", "sequences_of",
           "default_pooling"]
