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
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prefkit.data.batch import Batch
from prefkit.data.records import Message, Pair, Ranking, Rating, Record, Unpaired
from prefkit.errors import ConfigError, DataError, did_you_mean

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
        names = [f.name for f in fields(cls)]
        for key in values:
            if key not in names:
                raise ConfigError(f"unknown reward-model option {key!r}{did_you_mean(key, names)}; "
                                  f"valid options: {names}")
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


def tokenize_texts(tokenizer: Any, texts: Sequence[str], max_length: int,
                   truncation_side: str = "left") -> tuple[Tensor, Tensor]:
    """Tokenize with the tokenizer's own special tokens, truncate, right-pad: (N, T) ids and mask."""
    old_side, old_pad = tokenizer.truncation_side, tokenizer.padding_side
    tokenizer.truncation_side, tokenizer.padding_side = truncation_side, "right"
    try:
        enc = tokenizer(list(texts), truncation=True, max_length=max_length, padding=True,
                        return_tensors="pt")
    finally:
        tokenizer.truncation_side, tokenizer.padding_side = old_side, old_pad
    return enc["input_ids"], enc["attention_mask"]


_KIND = {Pair: "pair", Ranking: "list", Rating: "rating", Unpaired: "unpaired"}


def encode_for_reward(records: Sequence[Record], tokenizer: Any, *, max_length: int = 512,
                      truncation_side: str = "left", attributes: Sequence[str] = ()) -> Batch:
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
    groups = [sequences_of(r) for r in records]
    g = len(groups[0])
    if any(len(s) != g for s in groups):
        raise DataError("rankings of different lengths cannot share a batch; group them by length first")
    texts = [render_text(records[b].prompt, groups[b][k], tokenizer) for k in range(g)
             for b in range(len(records))]
    input_ids, attention_mask = tokenize_texts(tokenizer, texts, max_length, truncation_side)
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
    """backbone → pooling → head. ``forward(input_ids, attention_mask) -> RewardOutput``."""

    def __init__(self, backbone: nn.Module, head: RewardHead, config: RewardModelConfig,
                 tokenizer: Any = None):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.config = config
        self.tokenizer = tokenizer
        backbone_config = getattr(backbone, "config", None)
        self.pooling: Pooling = config.pooling or default_pooling(backbone_config)

    # construction ------------------------------------------------------------------------------------

    @classmethod
    def from_backbone(cls, backbone: str | Path | nn.Module, config: RewardModelConfig | None = None,
                      tokenizer: Any = None) -> RewardModel:
        """A new reward model (freshly initialised head) on a backbone.

        ``backbone``: a local model directory (loaded with ``AutoModel``, safetensors only, no remote
        code) or a ``transformers`` model instance; a ``*ForCausalLM`` model is reduced to its base
        model. ``tokenizer`` defaults to the one saved in the directory.
        """
        config = config or RewardModelConfig()
        if isinstance(backbone, (str, Path)):
            from transformers import AutoModel, AutoTokenizer

            path = _local_dir(backbone, "backbone")
            model = AutoModel.from_pretrained(path, use_safetensors=True, trust_remote_code=False)
            tokenizer = tokenizer if tokenizer is not None else AutoTokenizer.from_pretrained(path)
        else:
            model = backbone
        model = getattr(model, "base_model", model)
        if config.lora_r is not None:
            model = _with_lora(model, config)
        hidden = int(model.config.hidden_size)
        return cls(model, make_head(config, hidden), config, tokenizer)

    @classmethod
    def load(cls, path: str | Path) -> RewardModel:
        """A reward model saved by :meth:`save` (backbone, tokenizer, head, config)."""
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
        model = cls(backbone, head, config, tokenizer)
        model.pooling = json.loads((root / CONFIG_FILE).read_text()).get("pooling") or model.pooling
        return model.eval()

    def save(self, path: str | Path) -> Path:
        """Write ``backbone/`` (safetensors + tokenizer), ``head.safetensors`` and the config.

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

    # forward -----------------------------------------------------------------------------------------

    def features(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Pooled backbone features (N, H)."""
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask)
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]  # (N, T, H)
        return pool(hidden, attention_mask, self.pooling)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> RewardOutput:
        return self.head(self.features(input_ids, attention_mask))

    def forward_batch(self, batch: Batch) -> RewardOutput:
        """The head output for every row of a padded batch (row order)."""
        if batch.layout != "padded":
            raise ConfigError("reward models read padded batches; set layout to 'padded'")
        return self(batch.input_ids, batch.attention_mask)

    # inference ---------------------------------------------------------------------------------------

    @torch.no_grad()
    def outputs_for(self, prompts: Sequence[Any], completions: Sequence[Any], *,
                    batch_size: int = 32) -> RewardOutput:
        """Head outputs for (prompt, completion) pairs, in input order, in eval mode."""
        if self.tokenizer is None:
            raise ConfigError("this reward model has no tokenizer; pass one to RewardModel.from_backbone")
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        parts: list[RewardOutput] = []
        try:
            for i in range(0, len(prompts), batch_size):
                texts = [render_text(p, c, self.tokenizer) for p, c in
                         zip(prompts[i:i + batch_size], completions[i:i + batch_size], strict=True)]
                ids, mask = tokenize_texts(self.tokenizer, texts, self.config.max_length,
                                           self.config.truncation_side)
                parts.append(self(ids.to(device), mask.to(device)))
        finally:
            self.train(was_training)
        if not parts:
            return RewardOutput(torch.zeros(0))
        return RewardOutput(*(None if getattr(parts[0], f.name) is None
                              else torch.cat([getattr(p, f.name) for p in parts]).float().cpu()
                              for f in fields(RewardOutput)))

    def pair_outputs(self, records: Sequence[Pair], *, batch_size: int = 32
                     ) -> tuple[RewardOutput, RewardOutput]:
        """(chosen outputs, rejected outputs) for pair records, each with B rows."""
        prompts = [r.prompt for r in records]
        both = self.outputs_for(prompts * 2, [r.chosen for r in records] + [r.rejected for r in records],
                                batch_size=batch_size)
        b = len(records)
        return both.select(slice(0, b)), both.select(slice(b, 2 * b))


def _with_lora(model: nn.Module, config: RewardModelConfig) -> nn.Module:
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as err:  # pragma: no cover - peft is a dependency
        raise ConfigError("lora_r needs the 'peft' package: pip install peft") from err
    lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, target_modules="all-linear",
                      lora_dropout=0.0)
    return get_peft_model(model, lora)


__all__ = ["Pooling", "HeadKind", "RewardOutput", "RewardHead", "ScalarHead", "MultiObjectiveHead",
           "TieHead", "GPMHead", "RewardModelConfig", "RewardModel", "make_head", "pool", "last_index",
           "render_text", "encode_for_reward", "tokenize_texts", "sequences_of", "default_pooling"]
