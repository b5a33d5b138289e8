"""Pluralistic reward heads: rewards for users who disagree, and :func:`make_head`, the one head dispatcher.

A single Bradley–Terry reward averages its annotators: on a pair two groups label oppositely it has an
irreducible error and serves the majority. The heads here read the same pooled features ``h`` (N, H)
as the others (:mod:`prefkit.models.heads`) and model the disagreement:

- :class:`PALHead` (Chen et al. 2024, "PAL: Pluralistic alignment framework", arXiv 2406.08469,
  Sec. 3, the ideal-point model): ``f(h) = MLP(h) ∈ R^d``; K prototypes ``P`` (K, d); user u's ideal point
  ``a_u = Σ_k w_uk P_k`` with ``w_u = softmax(ℓ_u)``; ``r_u(y) = −‖f(h_y) − a_u‖²``, so
  ``P_u(a ≻ b) = σ(r_u(a) − r_u(b))``: the response closer to the user's ideal point wins. A new user
  is fitted from a few labelled pairs by learning only ``ℓ_u`` (:meth:`PALHead.add_user`).
- :class:`VPLHead` (Poddar et al. 2024, "Personalizing reinforcement learning from human feedback with
  variational preference learning", arXiv 2408.10075, Sec. 4, Eq. 4): a latent user variable ``z``;
  an encoder ``q(z | C) = N(μ, diag σ²)`` with ``(μ, log σ²) = Linear(mean_{(c, r) ∈ C} MLP([h_c, h_r]))``
  over a context ``C`` of the user's labelled pairs (chosen, rejected); reward ``r(h, z) = MLP([h, z])``;
  training minimises ``−log σ(r(h_c, z) − r(h_r, z)) + β KL(q ‖ N(0, I))`` with ``z = μ + σ ε``
  (reparametrised), ``β`` = ``kl_weight``; at evaluation ``z = μ``. The reward MLP's hidden layer is
  also scaled by ``(1 + A z)`` (FiLM), and the features are layer-normalised first (see deviations).
- :class:`MixtureHead` (MiCRo, Shen et al. 2025, "Mixture modeling and context-aware routing for
  personalized preference learning", arXiv 2505.24846, Sec. 3.1): K scalar heads ``r_k`` and a router
  ``π(x) = softmax(MLP(x))``; ``P(a ≻ b) = Σ_k π_k σ(r_k(a) − r_k(b))``. Trained without user ids;
  a user's router offset can be fitted afterwards from a few pairs (stage 2).
- :class:`MaxMinHead` (Chakraborty et al. 2024, "MaxMin-RLHF: Alignment with diverse human
  preferences", arXiv 2402.08925, Sec. 4, Algorithm 1): K group rewards ``r_k(h) = w_kᵀh + b_k`` and a
  user → group assignment; user u is scored by ``r_{g(u)}``. The assignment is learned by hard EM
  (``prefkit.train.personal.fit_maxmin``).

Users: a personal head (``personal = True``) knows a list ``users`` of ids; ``forward(features,
users=None, group_size=1)`` takes ``users`` (N,) indices into it, one per row (rows ``g * B + b`` are the
G sequences of example b, see ``prefkit.data.batch``). Index ``-1`` (a record without ``user_id``) and
``users=None`` mean the population: PAL's uniform mixture, VPL's prior mean ``z = 0``, MaxMin's mean
over groups. :meth:`PersonalHead.user_index` maps ids to indices; an unknown id is a DataError.

Deviations from the papers (all heads read whole-sequence pooled features, not a prompt-only state):
PAL's prototypes mix by softmax weights (the paper's simplex weights, parametrised) and the user's
mixture weights are the only per-user parameters; VPL pools the context by a mean (the paper also
offers self-attention); each training example's context is the example's own pair plus others of the
same user's training pairs (size 1..max_context), i.e. the ELBO reconstructs pairs the encoder saw, as
in a VAE (with the example left out, the latent never bootstrapped on persona data with frozen MiniLM
features: accuracy stayed at the user-blind level); VPL's reward adds a FiLM gain ``(1 + A z)`` on the
hidden layer of ``MLP([h, z])`` (A = 0 is the paper's MLP) so that z acts on reward differences at first
order, and a LayerNorm on the features (MiniLM's mean-pooled features are ~0.15 in scale); MiCRo's router reads the mean of the two
sequences' features (the paper routes on the prompt; with pooled whole-sequence features the pair mean
is the nearest shared input) and its stage-2 router adaptation is a batch fit of a per-user
offset on the router logits from the user's pairs (:meth:`MixtureHead.add_user`); MaxMin's M-step trains all group heads
at once, each example routed to its user's group.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prefkit.errors import ConfigError, DataError
from prefkit.models.heads import (
    GPMHead,
    MultiObjectiveHead,
    RewardHead,
    RewardModelConfig,
    RewardOutput,
    ScalarHead,
    TieHead,
)

LOGVAR_BOUND = 10.0
"""VPL's ``log σ²`` is clamped to ``[−10, 10]`` (keeps ``exp`` finite without a KL term)."""


def _mlp(n_in: int, hidden: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, hidden), nn.GELU(), nn.Linear(hidden, n_out))


def _rows(per_example: Tensor, group_size: int) -> Tensor:
    """(B, ...) values -> (G * B, ...) rows in batch order (row ``g * B + b`` gets example b's value)."""
    return per_example.repeat(group_size, *([1] * (per_example.dim() - 1)))


class PersonalHead(RewardHead):
    """Base of the user-conditioned heads: a list of user ids and the mapping to indices."""

    personal = True
    strict_users = True
    """Whether an unknown user id is a DataError (False: it gets the population's score, index -1)."""

    def __init__(self, users: Sequence[str]):
        super().__init__()
        self.users: list[str] = list(users)
        self._index = {u: i for i, u in enumerate(self.users)}

    def user_index(self, user_ids: Sequence[str | None]) -> Tensor:
        """(n,) long indices of ``user_ids`` into :attr:`users` (``-1`` for None); unknown id -> DataError."""
        out = []
        for u in user_ids:
            if u is None:
                out.append(-1)
            elif u in self._index:
                out.append(self._index[u])
            elif not self.strict_users:
                out.append(-1)
            else:
                shown = ", ".join(self.users[:3]) + (", ..." if len(self.users) > 3 else "")
                raise DataError(f"unknown user {u!r}: this {self.kind} reward model knows {len(self.users)} users "
                                f"({shown}); add a new user from a few labelled pairs with "
                                f"RewardModel.add_user({u!r}, shots)")
        return torch.tensor(out, dtype=torch.long)

    def _slot(self, user_id: str) -> int:
        """The index of ``user_id``, appended to :attr:`users` when new (the caller grows its tables)."""
        if user_id not in self._index:
            self._index[user_id] = len(self.users)
            self.users.append(user_id)
        return self._index[user_id]

    def add_user(self, user_id: str, chosen: Tensor, rejected: Tensor, **options: float) -> None:
        """Adapt to a new user from the features (n, H) of their chosen and rejected responses."""
        raise NotImplementedError


# -- PAL ---------------------------------------------------------------------------------------------------


class PALHead(PersonalHead):
    """PAL ideal points: ``r_u(y) = −‖f(h_y) − Σ_k softmax(ℓ_u)_k P_k‖²`` (see the module docstring)."""

    kind = "pal"

    def __init__(self, hidden_size: int, users: Sequence[str], *, components: int = 4, dim: int = 16,
                 hidden: int = 64):
        super().__init__(users)
        self.embed = _mlp(hidden_size, hidden, dim)
        self.prototypes = nn.Parameter(torch.randn(components, dim))  # (K, d)
        self.user_logits = nn.Parameter(torch.zeros(len(self.users), components))  # (U, K); 0 = uniform

    def weights(self, users: Tensor) -> Tensor:
        """(n, K) mixture weights ``w_u`` of user indices (n,); uniform for ``-1``."""
        known = users >= 0
        logits = self.user_logits[users.clamp_min(0)]  # (n, K)
        # zero logits (uniform weights: the population's mean ideal point) where the user is -1
        return torch.softmax(torch.where(known[:, None], logits, torch.zeros_like(logits)), dim=-1)

    def ideal_points(self, users: Tensor) -> Tensor:
        """(n, d) ideal points ``a_u``."""
        return self.weights(users) @ self.prototypes

    def forward(self, features: Tensor, users: Tensor | None = None, group_size: int = 1) -> RewardOutput:
        f = self.embed(features)  # (N, d)
        if users is None:
            users = torch.full((features.shape[0],), -1, dtype=torch.long)
        a = self.ideal_points(users.to(features.device))  # (N, d)
        return RewardOutput(-((f - a) ** 2).sum(-1))  # (N,)

    def add_user(self, user_id: str, chosen: Tensor, rejected: Tensor, *, steps: float = 300, lr: float = 0.1,
                 l2: float = 0.01) -> None:
        """Fit only the new user's mixture logits ``ℓ_u`` (K,) on their shots: Adam on the mean
        Bradley–Terry NLL plus ``l2 · ‖ℓ_u‖²`` (a pull toward the uniform mixture), everything else frozen."""
        with torch.no_grad():
            fc, fr = self.embed(chosen), self.embed(rejected)  # (n, d)
            protos = self.prototypes.detach()
        logits = torch.zeros(protos.shape[0], device=protos.device, requires_grad=True)
        opt = torch.optim.Adam([logits], lr=lr)
        for _ in range(int(steps)):
            a = torch.softmax(logits, -1) @ protos  # (d,)
            margin = ((fr - a) ** 2).sum(-1) - ((fc - a) ** 2).sum(-1)  # (n,) r_c − r_r
            loss = -F.logsigmoid(margin).mean() + l2 * (logits ** 2).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
        i = self._slot(user_id)
        with torch.no_grad():
            table = self.user_logits.detach()
            if i == table.shape[0]:
                table = torch.cat([table, torch.zeros_like(table[:1])])
            table = table.clone()
            table[i] = logits.detach()
            self.user_logits = nn.Parameter(table)


# -- VPL ---------------------------------------------------------------------------------------------------


class VPLHead(PersonalHead):
    """VPL: a latent ``z`` per user from an encoder over their labelled pairs (see the module docstring).

    Training needs each user's context table (:meth:`set_contexts`, from cached features; built by
    ``prefkit.train.run.train_reward_model``). Evaluation uses ``z = μ`` of the user's whole context when
    the head has one, else the stored latent (``user_z``: filled by :meth:`finalize` for the training
    users, by :meth:`add_user` for new ones).
    """

    kind = "vpl"

    def __init__(self, hidden_size: int, users: Sequence[str], *, dim: int = 16, hidden: int = 64,
                 kl_weight: float = 0.001, max_context: int = 64):
        super().__init__(users)
        self.kl_weight, self.max_context = kl_weight, max_context
        self.norm = nn.LayerNorm(hidden_size)  # features of any backbone's scale -> O(1) inputs
        self.pair_encoder = nn.Sequential(nn.Linear(2 * hidden_size, hidden), nn.GELU(), nn.Linear(hidden, hidden),
                                          nn.GELU())
        self.to_stats = nn.Linear(hidden, 2 * dim)  # -> (μ, log σ²)
        nn.init.zeros_(self.to_stats.bias)
        self.reward_in = nn.Linear(hidden_size + dim, hidden)  # the MLP's first layer on [h, z]
        self.modulation = nn.Linear(dim, hidden, bias=False)  # A: the FiLM gain (1 + A z)
        nn.init.normal_(self.modulation.weight, std=dim ** -0.5)
        self.reward_out = nn.Linear(hidden, 1)
        self.register_buffer("user_z", torch.zeros(len(self.users), dim))  # (U, dz)
        self._features: Tensor | None = None  # (S, H) context features
        self._table: Tensor | None = None  # (Uc, M) pair rows per user, -1 padded
        self._pairs: Tensor | None = None  # (P, 2) rows of _features (chosen, rejected)

    @property
    def dim(self) -> int:
        return int(self.user_z.shape[1])

    def set_contexts(self, features: Tensor, pairs: Tensor, users: Tensor) -> None:
        """The training users' labelled pairs: ``features`` (S, H), ``pairs`` (P, 2) rows of ``features``
        (chosen, rejected), ``users`` (P,) each pair's user index. Not saved (see :meth:`finalize`)."""
        counts = torch.bincount(users, minlength=len(self.users))  # (U,)
        table = torch.full((len(self.users), max(int(counts.max()) if len(users) else 1, 1)), -1, dtype=torch.long)
        order = torch.argsort(users, stable=True)
        starts = torch.cumsum(counts, 0) - counts
        slot = torch.arange(len(users)) - starts[users[order]]
        table[users[order], slot] = order
        self._features, self._pairs, self._table = features.detach().float(), pairs.long(), table

    def encode(self, context: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """``q(z | C)``: context (B, M, 2, H) features of (chosen, rejected), mask (B, M) -> (μ, log σ²)
        (B, dz); an empty context gives the prior (0, 0)."""
        e = self.pair_encoder(self.norm(context).flatten(-2))  # (B, M, hidden)
        m = mask.to(e.dtype)[..., None]  # (B, M, 1)
        count = m.sum(1)  # (B, 1)
        stats = self.to_stats((e * m).sum(1) / count.clamp_min(1.0))  # (B, 2 dz)
        stats = torch.where(count > 0, stats, torch.zeros_like(stats))
        return stats[:, :self.dim], stats[:, self.dim:].clamp(-LOGVAR_BOUND, LOGVAR_BOUND)

    def reward(self, features: Tensor, z: Tensor) -> Tensor:
        """``r(h, z) = wᵀ(GELU(W [h, z] + b) ⊙ (1 + A z)) + c``: (N, H), (N, dz) -> (N,)."""
        hidden = F.gelu(self.reward_in(torch.cat([self.norm(features), z], -1)))  # (N, hidden)
        return self.reward_out(hidden * (1 + self.modulation(z))).squeeze(-1)

    def _context(self, users: Tensor, device: torch.device) -> tuple[Tensor, Tensor]:
        """The whole context of each user (n,): features (n, M, 2, H) and mask (n, M)."""
        assert self._table is not None and self._pairs is not None and self._features is not None
        rows = self._table[users.cpu()]  # (n, M) pair ids, -1 padded
        pairs = self._pairs[rows.clamp_min(0)]  # (n, M, 2)
        return self._features[pairs].to(device), (rows >= 0).to(device)

    def _sampled_context(self, users: Tensor, target: Tensor | None) -> tuple[Tensor, Tensor]:
        """Per example: a random context of size k ~ U{1..max_context}: the ``target`` pair (B, 2, H)
        first, then k − 1 other pairs of its user (without ``target``: k pairs of the user)."""
        assert self._table is not None and self._pairs is not None and self._features is not None
        device = users.device
        rows = self._table[users.cpu()]  # (B, M)
        m = min(self.max_context + 1, rows.shape[1])
        scores = torch.rand(rows.shape).masked_fill(rows < 0, 2.0)
        picked = rows.gather(1, scores.topk(m, dim=1, largest=False).indices)  # (B, m), -1 = none
        ctx = self._features[self._pairs[picked.clamp_min(0)]].to(device)  # (B, m, 2, H)
        ok = (picked >= 0).to(device)
        k = torch.randint(1, self.max_context + 1, (len(users), 1), device=device)
        if target is None:
            return ctx, ok & (torch.cumsum(ok.long(), 1) <= k)  # the first k pairs
        ok &= ~(ctx == target[:, None]).flatten(2).all(-1)  # the target once, first
        ok &= torch.cumsum(ok.long(), 1) <= k - 1
        ctx = torch.cat([target[:, None].to(ctx.dtype), ctx], 1)  # (B, m + 1, 2, H)
        return ctx, torch.cat([torch.ones_like(ok[:, :1]), ok], 1)

    def latents(self, users: Tensor) -> Tensor:
        """(n, dz) evaluation latents ``z = μ``: from the user's whole context when the head has one,
        else the stored ``user_z``; 0 for ``-1``."""
        z = torch.zeros(len(users), self.dim, device=users.device)
        known = users >= 0
        if known.any():
            z[known] = self.user_z[users[known]].to(z.dtype)
        if self._table is not None:
            idx = users.clamp_min(0).cpu()
            in_table = known.cpu() & (idx < self._table.shape[0])
            has = in_table.clone()
            has[in_table] = (self._table[idx[in_table]] >= 0).any(1)  # users with a context
            has = has.to(users.device)
            if has.any():
                uniq, inverse = torch.unique(users[has], return_inverse=True)
                mu = torch.cat([self.encode(*self._context(part, users.device))[0] for part in uniq.split(256)])
                z[has] = mu[inverse]
        return z

    def forward(self, features: Tensor, users: Tensor | None = None, group_size: int = 1) -> RewardOutput:
        n = features.shape[0]
        b = n // group_size
        if users is None:
            users = torch.full((n,), -1, dtype=torch.long)
        users = users.to(features.device)[:b]  # (B,) one user per example
        penalty = None
        if self.training:
            if self._table is None:
                raise ConfigError("a VPL head trains on contexts of each user's cached pair features; train it "
                                  "with prefkit.train.run.train_reward_model (reward.frozen_backbone=true)")
            target = torch.stack([features[:b], features[b:2 * b]], 1) if group_size == 2 else None
            mu, logvar = self.encode(*self._sampled_context(users.clamp_min(0), target))  # (B, dz)
            z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
            kl = 0.5 * (mu ** 2 + logvar.exp() - 1.0 - logvar).sum(-1)  # (B,)
            unknown = users < 0
            z = torch.where(unknown[:, None], torch.zeros_like(z), z)
            kl = torch.where(unknown, torch.zeros_like(kl), kl)
            penalty = _rows(self.kl_weight * kl / group_size, group_size)  # (N,)
        else:
            z = self.latents(users)
        return RewardOutput(self.reward(features, _rows(z.to(features.dtype), group_size)), penalty=penalty)

    def finalize(self) -> None:
        """Store ``z = μ`` of every training user's whole context in ``user_z`` (what a saved model keeps)."""
        if self._table is None:
            return
        with torch.no_grad():
            users = torch.arange(self._table.shape[0], device=self.user_z.device)
            has = (self._table >= 0).any(1).to(users.device)
            self.user_z[users[has]] = self.latents(users[has]).to(self.user_z.dtype)

    def add_user(self, user_id: str, chosen: Tensor, rejected: Tensor, **options: float) -> None:
        """``z = μ(q(z | shots))``: the encoder's mean over all the shots (no training)."""
        if options:
            raise ConfigError(f"VPL's add_user takes no options (it infers z from the shots); got {sorted(options)}")
        with torch.no_grad():
            context = torch.stack([chosen, rejected], 1)[None].to(self.user_z.device)  # (1, n, 2, H)
            mu = self.encode(context.float(), torch.ones(context.shape[:2], dtype=torch.bool,
                                                          device=context.device))[0][0]
        i = self._slot(user_id)
        if i == self.user_z.shape[0]:
            self.user_z = torch.cat([self.user_z, torch.zeros_like(self.user_z[:1])])
        self.user_z[i] = mu
        if self._table is not None and i < self._table.shape[0]:
            self._table[i] = -1  # a re-added training user: the shots replace their context


# -- mixture (MiCRo) --------------------------------------------------------------------------------------


def _mixture_log_odds(d: Tensor, log_pi: Tensor) -> Tensor:
    """``log P(a ≻ b) − log P(b ≻ a)`` (B,) of a mixture with log weights ``log_pi`` (B, K) and per-component
    reward differences ``d = r_k(a) − r_k(b)`` (B, K); stable in log space, antisymmetric in ``d``."""
    log_win = torch.logsumexp(log_pi + F.logsigmoid(d), -1)  # log P(a ≻ b)
    log_lose = torch.logsumexp(log_pi + F.logsigmoid(-d), -1)  # log P(b ≻ a)
    return log_win - log_lose


class MixtureHead(PersonalHead):
    """MiCRo-style mixture of K Bradley–Terry heads with a router, trained without user ids.

    ``P(a ≻ b) = Σ_k π_k σ(r_k(a) − r_k(b))`` with ``π = softmax(W2 GELU(W1 x) + β_u)`` and router input
    ``x = (h_a + h_b) / 2`` (the pair's mean pooled features; MiCRo routes on the prompt).
    :meth:`preference_logits` returns ``log P(a ≻ b) − log P(b ≻ a)`` (antisymmetric, stable in log
    space); the training objective feeds it to the Bradley–Terry loss as ``(s/2, −s/2)``, so the loss
    is exactly ``−log P(chosen ≻ rejected)``. ``forward`` keeps the K rewards in ``attributes`` (N, K),
    ``W1 h`` in ``embeddings`` (N, C) (``W1`` is linear, so the pair's router input is the mean of the
    two rows) and the user's router offset ``β_u`` in ``gate`` (N, K); ``rewards`` is
    ``Σ_k π_k(h) r_k(h)``, the sequence alone routed, a summary only.

    Stage 1 (training) ignores user ids: every user's offset is 0, so the model is user-blind and its
    accuracy cannot exceed the user-blind ceiling. Stage 2 (MiCRo's online routing, Sec. 3.2, here as a
    batch fit): :meth:`add_user` fits only a user's router offset ``β_u`` (K,) from their labelled pairs,
    everything else frozen, so the learned components are re-weighted per user. Unknown users are not an
    error here: they get offset 0 (the user-blind router).
    """

    kind = "mixture"
    scalar_preference = False
    strict_users = False

    def __init__(self, hidden_size: int, components: int = 4, hidden: int = 64, users: Sequence[str] = ()):
        super().__init__(users)
        self.scores = nn.Linear(hidden_size, components)
        self.router_in = nn.Linear(hidden_size, hidden)
        self.router_out = nn.Linear(hidden, components)
        nn.init.zeros_(self.router_out.weight)  # start from uniform routing
        nn.init.zeros_(self.router_out.bias)
        self.register_buffer("user_bias", torch.zeros(len(self.users), components))  # (U, K) β_u

    def log_route(self, pre: Tensor, bias: Tensor | None = None) -> Tensor:
        """log π (n, K) from router first-layer activations (n, C) and user offsets (n, K)."""
        logits = self.router_out(F.gelu(pre))
        return torch.log_softmax(logits if bias is None else logits + bias, dim=-1)

    def forward(self, features: Tensor, users: Tensor | None = None, group_size: int = 1) -> RewardOutput:
        r = self.scores(features)  # (N, K)
        pre = self.router_in(features)  # (N, C)
        bias = torch.zeros_like(r)
        if users is not None and self.user_bias.shape[0]:
            users = users.to(features.device)
            bias = torch.where((users >= 0)[:, None], self.user_bias[users.clamp_min(0)], bias)
        return RewardOutput((self.log_route(pre, bias).exp() * r).sum(-1), attributes=r, embeddings=pre,
                            gate=bias)

    def preference_logits(self, a: RewardOutput, b: RewardOutput) -> Tensor:
        assert a.attributes is not None and b.attributes is not None
        assert a.embeddings is not None and b.embeddings is not None
        return _mixture_log_odds(a.attributes - b.attributes,
                                 self.log_route((a.embeddings + b.embeddings) / 2, a.gate))

    def add_user(self, user_id: str, chosen: Tensor, rejected: Tensor, *, steps: float = 300, lr: float = 0.1,
                 l2: float = 0.01) -> None:
        """Stage-2 routing: fit only the user's router offset ``β_u`` (K,) on their shots (Adam on the mean
        ``−log P(chosen ≻ rejected)`` plus ``l2 · ‖β_u‖²``), everything else frozen."""
        with torch.no_grad():
            d = self.scores(chosen) - self.scores(rejected)  # (n, K)
            pre = (self.router_in(chosen) + self.router_in(rejected)) / 2  # (n, C)
            logits = self.router_out(F.gelu(pre))  # (n, K): fixed; only the offset is fitted
        bias = torch.zeros(d.shape[1], device=d.device, requires_grad=True)
        opt = torch.optim.Adam([bias], lr=lr)
        for _ in range(int(steps)):
            log_pi = torch.log_softmax(logits + bias, dim=-1)
            loss = -F.logsigmoid(_mixture_log_odds(d, log_pi)).mean() + l2 * (bias ** 2).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
        i = self._slot(user_id)
        table = self.user_bias
        if i == table.shape[0]:
            table = torch.cat([table, table.new_zeros(1, table.shape[1])])
        table = table.clone()
        table[i] = bias.detach()
        self.user_bias = table


# -- MaxMin ------------------------------------------------------------------------------------------------


class MaxMinHead(PersonalHead):
    """K group rewards ``r_k(h) = w_kᵀh + b_k`` (``attributes``, (N, K)) and a user → group
    ``assignment`` buffer (U,); a user's rows are scored by their group's reward, population rows
    (``-1``) by the mean over groups. :meth:`group_loglik` is the E-step's likelihood table."""

    kind = "maxmin"

    def __init__(self, hidden_size: int, users: Sequence[str], components: int = 4):
        super().__init__(users)
        self.groups = nn.Linear(hidden_size, components)
        self.register_buffer("assignment", torch.zeros(len(self.users), dtype=torch.long))

    @property
    def num_groups(self) -> int:
        return int(self.groups.out_features)

    def set_assignment(self, assignment: Mapping[str, int] | Tensor) -> None:
        """Set each user's group: a (U,) tensor in user order, or ``{user: group}`` for some users."""
        if isinstance(assignment, Tensor):
            self.assignment.copy_(assignment.to(self.assignment))
            return
        for user, group in assignment.items():
            if not 0 <= int(group) < self.num_groups:
                raise ConfigError(f"group {group} of user {user!r} is not in 0..{self.num_groups - 1}")
            self.assignment[int(self.user_index([user])[0])] = int(group)

    def group_of(self) -> dict[str, int]:
        """``{user: group}`` for every known user."""
        return {u: int(g) for u, g in zip(self.users, self.assignment.tolist(), strict=True)}

    def forward(self, features: Tensor, users: Tensor | None = None, group_size: int = 1) -> RewardOutput:
        r = self.groups(features)  # (N, K)
        if users is None:
            return RewardOutput(r.mean(-1), attributes=r)
        users = users.to(features.device)
        g = self.assignment[users.clamp_min(0)]  # (N,)
        mine = r.gather(1, g[:, None]).squeeze(1)
        return RewardOutput(torch.where(users >= 0, mine, r.mean(-1)), attributes=r)

    def group_loglik(self, chosen: Tensor, rejected: Tensor) -> Tensor:
        """(n, K) ``log σ(r_k(chosen) − r_k(rejected))`` of each pair under each group's reward."""
        return F.logsigmoid(self.groups(chosen) - self.groups(rejected))

    def add_user(self, user_id: str, chosen: Tensor, rejected: Tensor, **options: float) -> None:
        """Assign the user to the group whose reward gives their shots the highest likelihood."""
        if options:
            raise ConfigError(f"MaxMin's add_user takes no options (it picks the likeliest group); got {sorted(options)}")
        with torch.no_grad():
            group = int(self.group_loglik(chosen.float(), rejected.float()).sum(0).argmax())
        i = self._slot(user_id)
        if i == self.assignment.shape[0]:
            self.assignment = torch.cat([self.assignment, self.assignment.new_zeros(1)])
        self.assignment[i] = group


# -- the dispatcher -------------------------------------------------------------------------------------


def make_head(config: RewardModelConfig, hidden_size: int) -> RewardHead:
    """The head ``config`` asks for, for features of size ``hidden_size`` (personal heads get
    ``config.users``)."""
    if config.head == "scalar":
        return ScalarHead(hidden_size, config.dropout)
    if config.head == "multi":
        return MultiObjectiveHead(hidden_size, len(config.attributes), gating=config.gating,
                                  weights=config.weights)
    if config.head == "tie":
        return TieHead(hidden_size, config.tie_model, config.dropout)
    if config.head == "gpm":
        return GPMHead(hidden_size, config.gpm_dim)
    if config.head == "pal":
        return PALHead(hidden_size, config.users, components=config.components, dim=config.user_dim,
                       hidden=config.head_hidden)
    if config.head == "vpl":
        return VPLHead(hidden_size, config.users, dim=config.user_dim, hidden=config.head_hidden,
                       kl_weight=config.kl_weight, max_context=config.max_context)
    if config.head == "mixture":
        return MixtureHead(hidden_size, config.components, config.head_hidden, config.users)
    return MaxMinHead(hidden_size, config.users, config.components)


__all__ = ["PersonalHead", "PALHead", "VPLHead", "MixtureHead", "MaxMinHead", "make_head"]
