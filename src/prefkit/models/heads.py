"""Reward-model heads and their configuration: pooled features (N, H) -> :class:`RewardOutput`.

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
:class:`RewardModelConfig` (saved with a model as ``reward_config.json``) picks the head, the pooling
and the input length; ``prefkit.models.personal.make_head`` builds the head it names (the pluralistic
heads live in that module).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prefkit.errors import ConfigError, check_known_keys, did_you_mean
from prefkit.losses import LOSSES

Pooling = Literal["last", "mean", "cls", "pooler"]
HeadKind = Literal["scalar", "multi", "tie", "gpm", "pal", "vpl", "mixture", "maxmin"]
PERSONAL_HEADS = ("pal", "vpl", "maxmin")
"""Head kinds that condition on the user (``prefkit.models.personal``); ``"mixture"`` needs no user ids."""
Gating = Literal["fixed", "learned", "contextual"]
TieModel = str
"""A tie model is a registry tie loss (one whose ``LossSpec.head_params`` a tie head supplies)."""

TIE_MODELS: dict[str, str] = {name: spec.head_params[0] for name, spec in LOSSES.items() if spec.head_params}
"""Tie model (registry loss name) -> the loss keyword its learned parameter is passed as, from the
registry: Rao–Kupper's ``theta`` and Davidson's ``nu``."""
DEFAULT_TIE_MODEL = next(iter(TIE_MODELS))

# -- heads ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RewardOutput:
    """What a head returns for N sequences.

    rewards: (N,) scalar reward, higher = better (GPM: a norm-free summary, see :class:`GPMHead`).
    attributes: (N, A) attribute scores (multi-objective head), else None.
    embeddings: (N, 2k) preference embeddings (GPM head), or (N, C) the router's first-layer
        activations (mixture head), else None.
    gate: (N, A) combination weights actually used (multi-objective head), or (N, K) the user's router
        offsets (mixture head), else None.
    penalty: (N,) each row's share of a per-example regulariser that the training objective adds to
        the example's loss (sum over the example's G rows; VPL: ``kl_weight · KL(q ‖ N(0, I)) / G``),
        else None.
    """

    rewards: Tensor
    attributes: Tensor | None = None
    embeddings: Tensor | None = None
    gate: Tensor | None = None
    penalty: Tensor | None = None

    def select(self, index: slice | Tensor) -> RewardOutput:
        """The same fields for a subset of rows."""
        return RewardOutput(*(None if v is None else v[index] for v in
                              (self.rewards, self.attributes, self.embeddings, self.gate, self.penalty)))


class RewardHead(nn.Module):
    """Base of the heads: pooled features (N, H) -> :class:`RewardOutput`.

    ``personal`` heads (``prefkit.models.personal``) also take ``users`` (N,) user indices into their
    ``users`` list; ``scalar_preference`` is False for heads whose pair log-odds are not a reward
    difference (GPM, the mixture), which the training objective then feeds to the loss as
    ``(s/2, −s/2)``.
    """

    kind: HeadKind = "scalar"
    personal: bool = False
    """Whether :meth:`forward` takes ``users`` (a personal head; ``prefkit.models.personal``)."""
    scalar_preference: bool = True
    """Whether :meth:`preference_logits` is ``r_a − r_b`` of the ``rewards`` field."""

    def preference_logits(self, a: RewardOutput, b: RewardOutput) -> Tensor:
        """log P(a ≻ b) / P(b ≻ a) per example: ``r_a − r_b`` (B,). Antisymmetric in (a, b)."""
        return a.rewards - b.rewards

    def finalize(self) -> None:
        """Bring state that is derived during training up to date before saving (VPL: the training users'
        latents); nothing for most heads."""


class ScalarHead(RewardHead):
    """``r = wᵀh + b``: one reward per sequence (Bradley–Terry, regression, Plackett–Luce).

    ``w`` starts as ``N(0, init_std²)``, ``b`` at 0. The default 0.02 is transformers' ``initializer_range``,
    which its sequence-classification heads (and so TRL's ``RewardTrainer``) start from; the previous
    ``1/sqrt(H + 1)`` (0.051 at H = 384) made no measurable difference on MiniLM-L6 / HH-RLHF (held-out
    accuracy within the seed-to-seed spread, ``docs/benchmarks.md``).
    """

    kind: HeadKind = "scalar"

    def __init__(self, hidden_size: int, dropout: float = 0.0, init_std: float = 0.02):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.score = nn.Linear(hidden_size, 1)
        nn.init.normal_(self.score.weight, std=init_std)
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

    def __init__(self, hidden_size: int, tie_model: TieModel = DEFAULT_TIE_MODEL, dropout: float = 0.0):
        super().__init__(hidden_size, dropout)
        if tie_model not in TIE_MODELS:
            raise ConfigError(f"unknown tie model {tie_model!r}; choose from {list(TIE_MODELS)}"
                              f"{did_you_mean(str(tie_model), TIE_MODELS)}")
        self.tie_model = tie_model
        self.param = TIE_MODELS[tie_model]
        """The loss keyword of the learned parameter: ``"theta"`` (Rao–Kupper) or ``"nu"`` (Davidson)."""
        self.tie_param = nn.Parameter(torch.zeros(()))

    def loss_params(self) -> dict[str, Tensor]:
        """``{"theta": θ}`` (Rao–Kupper) or ``{"nu": ν}`` (Davidson), differentiable 0-dim tensors."""
        if self.param == "theta":
            return {"theta": F.softplus(self.tie_param).exp()}
        return {"nu": self.tie_param.exp()}

    def outcome_probs(self, a: RewardOutput, b: RewardOutput) -> tuple[Tensor, Tensor, Tensor]:
        """(P(a ≻ b), P(tie), P(b ≻ a)), each (B,)."""
        diff = a.rewards - b.rewards  # (B,)
        if self.param == "theta":
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
    scalar_preference = False

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
    ``"tie"`` (Rao–Kupper / Davidson tie-aware), ``"gpm"`` (general preference model), or a
    pluralistic head (``prefkit.models.personal``): ``"pal"`` (ideal points), ``"vpl"`` (variational
    user latent), ``"mixture"`` (MiCRo-style mixture of K Bradley–Terry heads, no user ids) or
    ``"maxmin"`` (one reward per user group, groups found by EM: ``prefkit.train.personal.fit_maxmin``)."""

    pooling: Pooling | None = None
    """``"last"``, ``"mean"``, ``"cls"`` (the first token's state) or ``"pooler"`` (the backbone's own pooling
    layer on the first token: BERT's pretrained ``[CLS]`` → dense → tanh, what
    ``AutoModelForSequenceClassification`` scores; encoders that have one); None picks ``"last"`` for
    decoders; for encoders ``"pooler"`` when the backbone has a pooling layer, else ``"mean"``."""

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

    tie_model: TieModel = DEFAULT_TIE_MODEL
    """Tie head: its tie loss, ``"rao_kupper"`` (default) or ``"davidson"``."""

    gpm_dim: int = 4
    """GPM head: preference-embedding size 2k (even)."""

    dropout: float = 0.0
    """Dropout on the pooled features before a scalar/tie head."""

    components: int = 4
    """K: PAL prototypes, mixture components, or MaxMin groups."""

    user_dim: int = 16
    """PAL: size d of the ideal-point space; VPL: size of the user latent z."""

    head_hidden: int = 64
    """Width of the hidden layer of the MLPs in the pal / vpl / mixture heads."""

    users: tuple[str, ...] = ()
    """Personal heads (pal, vpl, maxmin): the known user ids, in index order (the training users, then
    any added with ``RewardModel.add_user``); filled from the training records when empty."""

    kl_weight: float = 0.001
    """VPL: β, the weight of ``KL(q(z | context) ‖ N(0, I))`` added to each example's Bradley–Terry loss
    (larger values collapsed the latent on persona data with frozen MiniLM features)."""

    max_context: int = 64
    """VPL: most labelled pairs of a user's own training data in one sampled context (training draws a
    size in 1..max_context per example: the example's own pair plus others of the same user)."""

    frozen_backbone: bool = False
    """Train only the head on cached pooled features: each distinct token sequence goes through the frozen
    backbone once (``RewardModel.freeze_backbone``); required by ``vpl``; excludes LoRA."""

    feature_cache_dir: str | None = None
    """With ``frozen_backbone``: folder of the on-disk feature cache (safetensors, one file per backbone /
    tokenizer / pooling / max_length fingerprint); None keeps the cache in memory only."""

    feature_batch_size: int = 256
    """With ``frozen_backbone``: sequences per backbone forward when filling the feature cache."""

    def __post_init__(self) -> None:
        for name, choices in (("head", get_args(HeadKind)), ("gating", get_args(Gating)),
                              ("tie_model", tuple(TIE_MODELS)), ("truncation_side", ("left", "right"))):
            value = getattr(self, name)
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
        for name in ("components", "user_dim", "head_hidden", "max_context", "feature_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"reward.{name} must be >= 1, got {getattr(self, name)}")
        if not (math.isfinite(self.kl_weight) and self.kl_weight >= 0):
            raise ConfigError(f"reward.kl_weight must be finite and >= 0, got {self.kl_weight}")
        if self.head == "vpl" and not self.frozen_backbone:
            raise ConfigError("head 'vpl' samples each user's context from the cached features of their own "
                              "training pairs: set reward.frozen_backbone=true")
        if len(set(self.users)) != len(self.users):
            dup = next(u for u in self.users if self.users.count(u) > 1)
            raise ConfigError(f"reward.users lists {dup!r} twice; user ids must be unique")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> RewardModelConfig:
        """Build from a mapping; an unknown key is a ConfigError naming the nearest valid one.

        ``lora_r`` / ``lora_alpha`` (LoRA is the run config's ``lora`` section) are refused with a hint.
        """
        for old, new in (("lora_r", "lora.r"), ("lora_alpha", "lora.alpha")):
            if old in values:
                raise ConfigError(f"reward.{old} is now {new} (the run's one LoRA section; 0 = off)")
        check_known_keys(values, [f.name for f in fields(cls)], "reward-model option")
        clean = dict(values)
        for key in ("attributes", "weights", "users"):
            if clean.get(key) is not None:
                clean[key] = tuple(clean[key])
        return cls(**clean)


def default_pooling(backbone_config: Any, has_pooler: bool = False) -> Pooling:
    """For encoder (masked-LM family) backbones ``"pooler"`` when the backbone has its own pooling layer
    (``has_pooler``; BERT's pretrained dense + tanh, what ``AutoModelForSequenceClassification`` scores),
    else ``"mean"``; ``"last"`` for everything else. Why ``"pooler"`` first: ``docs/reward_models.md``
    (measured on MiniLM-L6 / HH-RLHF).
    """
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    if getattr(backbone_config, "model_type", None) not in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        return "last"
    return "pooler" if has_pooler else "mean"


__all__ = ["Pooling", "HeadKind", "Gating", "TieModel", "TIE_MODELS", "DEFAULT_TIE_MODEL", "RewardOutput", "RewardHead", "ScalarHead",
           "MultiObjectiveHead", "TieHead", "GPMHead", "RewardModelConfig", "default_pooling", "PERSONAL_HEADS"]
