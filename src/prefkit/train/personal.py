"""MaxMin-RLHF's EM: cluster users into groups with one reward per group, each M-step through the Trainer.

Chakraborty et al. 2024, "MaxMin-RLHF: Alignment with diverse human preferences" (arXiv 2402.08925),
Sec. 4, Algorithm 1 (reward learning by expectation–maximisation). With K group rewards
``r_k`` (:class:`~prefkit.models.personal.MaxMinHead`) and a hard assignment ``g(u)`` of users to groups:

- **init**: each user's preference direction ``d_u = normalize(Σ_{(c, r) of u} (h_c − h_r))`` over the
  pooled (frozen) features of their pairs, clustered by k-means++ seeding plus a few Lloyd rounds on the
  unit sphere (users of one group agree on the same pairs, so their directions align);
- **M-step**: train the group heads with the one :class:`~prefkit.train.trainer.Trainer`
  (``train_reward_model`` with the model; ``reward.frozen_backbone``: the features are cached), each
  example scored by its user's group reward, ``train.epochs`` epochs per step;
- **E-step**: reassign each user to ``argmax_k Σ_{(c, r) of u} log σ(r_k(h_c) − r_k(h_r))``;
- stop when no assignment changes or after ``max_iters`` steps. With ``restarts > 1`` the whole EM runs
  again from other seeds and the run with the highest total log-likelihood is kept.

Deviations: hard (not soft) assignments, as in the paper's algorithm; the initialisation (the paper
does not fix one) is the direction clustering above; all group heads train in one Trainer run per
M-step (each example routed to its user's group) rather than one run per group.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from prefkit.data.records import Pair, Record
from prefkit.errors import ConfigError, DataError
from prefkit.models.personal import MaxMinHead
from prefkit.models.reward import RewardModel
from prefkit.models.reward_inputs import as_text_record
from prefkit.train import rundir
from prefkit.train.config import RunConfig
from prefkit.train.run import (
    build_reward_model,
    fill_feature_cache,
    read_data,
    train_reward_model,
    with_users,
)

EM_ENTRIES = ("em", "model")
"""What :func:`fit_maxmin` creates in ``output.dir``: ``em/`` (one Trainer run folder per M-step) and
``model/`` (the final reward model)."""


def user_directions(chosen: Tensor, rejected: Tensor, users: Tensor, num_users: int) -> Tensor:
    """(U, H) unit vectors ``normalize(Σ_{pairs of u} (h_c − h_r))``."""
    sums = torch.zeros(num_users, chosen.shape[1]).index_add_(0, users, chosen - rejected)
    return F.normalize(sums, dim=-1)


def spherical_kmeans(points: Tensor, k: int, *, seed: int = 0, rounds: int = 20) -> Tensor:
    """(U,) cluster of each unit vector (U, H): k-means++ seeding (distance 1 − cos), then Lloyd rounds."""
    gen = torch.Generator().manual_seed(seed)
    n = points.shape[0]
    centers = [int(torch.randint(n, (1,), generator=gen))]
    for _ in range(1, min(k, n)):
        dist = (1 - points @ points[centers].T).min(1).values.clamp_min(0)  # (U,)
        probs = dist ** 2 if float(dist.sum()) > 0 else torch.ones(n)
        centers.append(int(torch.multinomial(probs, 1, generator=gen)))
    c = points[centers]  # (k, H)
    labels = (points @ c.T).argmax(1)
    for _ in range(rounds):
        c = F.normalize(torch.zeros_like(c).index_add_(0, labels, points), dim=-1)
        new = (points @ c.T).argmax(1)
        if torch.equal(new, labels):
            break
        labels = new
    return labels


def e_step(head: MaxMinHead, chosen: Tensor, rejected: Tensor, users: Tensor) -> tuple[Tensor, float]:
    """(U,) each user's likeliest group and the total log-likelihood under that assignment."""
    device = next(head.parameters()).device
    with torch.no_grad():
        ll = head.group_loglik(chosen.to(device), rejected.to(device)).cpu()  # (P, K)
    per_user = torch.zeros(len(head.users), ll.shape[1]).index_add_(0, users, ll)  # (U, K)
    best = per_user.max(1)
    return best.indices, float(best.values.sum())


def fit_maxmin(config: RunConfig, records: Sequence[Record] | None = None, *,
               eval_records: Sequence[Record] | None = None, model: RewardModel | None = None,
               max_iters: int = 10, restarts: int = 1,
               say: Callable[[str], None] | None = None) -> tuple[RewardModel, dict[str, int]]:
    """Learn MaxMin group rewards and the user → group assignment by hard EM (module docstring).

    ``config``: a reward job with ``reward.head: maxmin`` (``reward.components`` groups) and
    ``reward.frozen_backbone: true``; ``records``: the training pairs (default: ``config.data``), each
    with a ``user_id``; ``model``: a ready maxmin reward model (default: built from ``config``). M-step
    runs write under ``<output.dir>/em/``; the final model goes to
    ``<output.dir>/model`` when ``output.save_model``. Returns the model (its head's ``assignment`` set)
    and ``{user: group}``.
    """
    reward = config.reward
    if reward is None or reward.head != "maxmin":
        raise ConfigError("fit_maxmin trains a reward: section with head: maxmin")
    if not reward.frozen_backbone:
        raise ConfigError("fit_maxmin reuses pooled features across EM steps: set reward.frozen_backbone=true")
    if max_iters < 1 or restarts < 1:
        raise ConfigError(f"fit_maxmin needs max_iters >= 1 and restarts >= 1; got {max_iters}, {restarts}")
    root = Path(config.output.dir)
    rundir.check_run_dir(root, overwrite=config.output.overwrite, entries=EM_ENTRIES)
    if records is None:
        records, eval_records = read_data(config)
    pairs = [r for r in records if isinstance(r, Pair)]
    if not pairs:
        raise DataError("fit_maxmin learns from pairs; the training data holds none")
    config = with_users(config, pairs)
    rundir.claim_run_dir(root, overwrite=config.output.overwrite, kind="reward", entries=EM_ENTRIES)
    if model is None:
        model = build_reward_model(config)
    elif model.feature_cache is None:
        model.freeze_backbone(reward.feature_cache_dir)
    head = model.head
    if not isinstance(head, MaxMinHead):
        raise ConfigError(f"fit_maxmin needs a maxmin head; the model has {head.kind!r}")
    pairs = [as_text_record(r, model.tokenizer) for r in pairs]
    fill_feature_cache(model, [*pairs, *(eval_records or [])])
    chosen, rejected = model.record_features(pairs)  # (P, H) each, from the cache
    users = head.user_index([r.user_id for r in pairs])
    if bool((users < 0).any()):
        raise DataError("fit_maxmin clusters users: every training pair needs a user_id")
    directions = user_directions(chosen, rejected, users, len(head.users))
    step_output = dataclasses.replace(config.output, save_model=False, plots=False, tensorboard=False)
    best: tuple[float, dict[str, Tensor]] | None = None
    for restart in range(restarts):
        seed = config.train.seed + restart
        with torch.random.fork_rng(devices=[]):  # fresh group heads per restart, global RNG untouched
            torch.manual_seed(seed)
            head.groups.reset_parameters()
        assignment = spherical_kmeans(directions, head.num_groups, seed=seed)
        for it in range(max_iters):
            head.set_assignment(assignment)
            step = dataclasses.replace(config, output=dataclasses.replace(
                step_output, dir=str(root / "em" / f"restart{restart}-step{it}")))
            train_reward_model(step, train_records=pairs, eval_records=eval_records, model=model)
            new, loglik = e_step(head, chosen, rejected, users)
            changed = int((new != assignment).sum())
            if say is not None:
                say(f"maxmin EM restart {restart} step {it}: log-likelihood {loglik:.1f}, {changed} users moved")
            assignment = new
            if not changed:
                break
        head.set_assignment(assignment)
        loglik = e_step(head, chosen, rejected, users)[1]
        if best is None or loglik > best[0]:
            best = (loglik, {k: v.detach().clone() for k, v in head.state_dict().items()})
    assert best is not None
    head.load_state_dict(best[1])
    if config.output.save_model:
        model.save(root / "model")
    return model, head.group_of()


__all__ = ["fit_maxmin", "e_step", "spherical_kmeans", "user_directions", "EM_ENTRIES"]
