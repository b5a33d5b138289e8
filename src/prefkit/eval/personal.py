"""Evaluation of personalized (user-aware) reward models: the user-blind ceiling, accuracy per user and
per group, few-shot adaptation curves for unseen users, group recovery, and the shots-curve plot.

A personalized model answers ``model.pair_logits(records) -> (B,)``, the log-odds that each record's
``chosen`` beats its ``rejected`` *for the record's own* ``user_id`` (a user-blind model ignores the id),
and adapts an unseen user with ``model.add_user(user_id, shots)`` from a few of their labelled pairs
(:mod:`prefkit.models.personal`). Everything here uses only those two methods, so any object that has
them (a :class:`~prefkit.models.reward.RewardModel`, a test double) can be evaluated.

- :func:`user_blind_ceiling`: the best accuracy any user-blind predictor can reach on the data, computed
  exactly from the labels (the irreducible error of a single Bradley–Terry model when users disagree);
- :func:`personal_report` / :func:`personal_accuracy`: accuracy overall, per user (with a summary: mean,
  min, worst users) and per group (``metadata["group"]``);
- :func:`shots_curve`: unseen-user accuracy after adapting from k = 1, 5, 10, 20, 50 of their pairs, all
  k scored on the same remaining pairs;
- :func:`adjusted_rand_index` / :func:`group_recovery`: how well a clustering of users (MaxMin's EM)
  recovers the true groups;
- :func:`plot_shots_curves`: the curves of several models (PAL, VPL, BT...) in one PNG.

Accuracy follows :func:`prefkit.eval.metrics.pairwise_accuracy`: a logit > 0 is right, exactly 0 counts
1/2; tie records are left out.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Callable, Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor

from prefkit.data.records import Pair, text_of
from prefkit.errors import ConfigError, DataError
from prefkit.eval.metrics import pairwise_accuracy

DEFAULT_SHOTS: tuple[int, ...] = (1, 5, 10, 20, 50)
WORST_USERS = 5
"""How many of the lowest-accuracy users a report lists."""


class PersonalModel(Protocol):
    """What the functions here need of a model (``prefkit.models.personal`` provides it)."""

    def pair_logits(self, records: Sequence[Pair], *, batch_size: int = ...) -> Tensor: ...

    def add_user(self, user_id: str, shots: Sequence[Pair], **fit_options: Any) -> None: ...


# -- the user-blind ceiling ---------------------------------------------------------------------------


def pair_key(record: Pair) -> Hashable:
    """The default ceiling key: the prompt and the *unordered* pair of completions (as text)."""
    a, b = sorted((text_of(record.chosen), text_of(record.rejected)))
    return text_of(record.prompt), a, b


def pair_orientation(record: Pair) -> bool:
    """The default orientation: True when ``chosen`` is the lexicographically smaller completion."""
    return text_of(record.chosen) < text_of(record.rejected)


def persona_key(record: Pair) -> Hashable:
    """Persona data: the trait (``metadata["trait"]``); use with :func:`persona_orientation`."""
    return _meta(record, "trait")


def persona_orientation(record: Pair) -> bool:
    """Persona data: True when the chosen statement expresses the trait (``metadata["chosen_expresses"]``)."""
    return bool(_meta(record, "chosen_expresses"))


def _meta(record: Pair, name: str) -> Any:
    value = (record.metadata or {}).get(name)
    if value is None:
        raise DataError(f"record {record.id or ''} has no metadata[{name!r}] (persona records carry "
                        f"'trait' and 'chosen_expresses'; generate them with 'prefkit data personas')")
    return value


def blind_majority(records: Sequence[Pair], key: Callable[[Pair], Hashable] | None = None,
                   orientation: Callable[[Pair], bool] | None = None) -> dict[Hashable, tuple[int, int]]:
    """Per key: (#records with orientation True, #records with orientation False); ties left out."""
    key = key or pair_key
    orientation = orientation or pair_orientation
    counts: dict[Hashable, list[int]] = {}
    for r in records:
        if r.tie:
            continue
        c = counts.setdefault(key(r), [0, 0])
        c[0 if orientation(r) else 1] += 1
    return {k: (t, f) for k, (t, f) in counts.items()}


def user_blind_ceiling(records: Sequence[Pair], key: Callable[[Pair], Hashable] | None = None,
                       orientation: Callable[[Pair], bool] | None = None) -> float:
    """The best accuracy of any user-blind predictor on ``records``, exactly, from the labels.

    Formula: group the (non-tie) records by ``key(record)`` and orient each with ``orientation(record)``
    (a bool: which of the two completions is the chosen one, in a user-independent frame); then

        ceiling = Σ_groups max(#True, #False) / N.

    Why it is a ceiling: a user-blind predictor sees a record without its user, so its prediction can
    depend only on what ``key`` keeps, and it must say the same oriented winner for every record of a
    group (a pairwise model is antisymmetric: swapping chosen and rejected flips its logit, so it
    predicts the oriented completion, not "chosen"). Within a group it is right on at most
    max(#True, #False) records; a randomized or tied (logit 0) prediction is an average of the two and
    no better. The majority rule reaches the bound, so it is attained: it is the in-sample Bayes
    accuracy of user-blind prediction, and a single Bradley–Terry model can only do worse.

    Defaults: ``key`` = prompt + unordered pair of completions (:func:`pair_key`), ``orientation`` =
    "chosen is the lexicographically smaller text" (:func:`pair_orientation`): the ceiling of *any*
    user-blind model on these exact pairs. When every pair occurs once this is trivially 1.0; it is
    informative when the same pair is labelled by many users. Persona data (``prefkit data personas``):
    ``key=persona_key, orientation=persona_orientation`` give the ceiling of a model that knows the
    trait and which statement expresses it (all a persona label depends on, up to label noise), which is
    ≤ the exact-pair ceiling (a finer key can only raise it).
    """
    counts = blind_majority(records, key, orientation)
    n = sum(t + f for t, f in counts.values())
    if n == 0:
        raise DataError("no (non-tie) preference pairs to compute the user-blind ceiling on")
    return sum(max(t, f) for t, f in counts.values()) / n


def ceiling_by_group(records: Sequence[Pair], key: Callable[[Pair], Hashable] | None = None,
                     orientation: Callable[[Pair], bool] | None = None) -> dict[str, float]:
    """The accuracy of the majority user-blind predictor (the one reaching the ceiling, fitted on all of
    ``records``) on each group's records (``metadata["group"]``): the minority groups pay the error."""
    key = key or pair_key
    orientation = orientation or pair_orientation
    majority = {k: t >= f for k, (t, f) in blind_majority(records, key, orientation).items()}
    right: dict[str, list[float]] = {}
    for r in records:
        if r.tie:
            continue
        hit = 1.0 if majority[key(r)] == orientation(r) else 0.0
        right.setdefault(group_of(r), []).append(hit)
    return {g: statistics.fmean(v) for g, v in sorted(right.items())}


# -- accuracy per user and per group ------------------------------------------------------------------


def group_of(record: Pair) -> str:
    """The record's group (``metadata["group"]``) as text, ``"(none)"`` when absent."""
    value = (record.metadata or {}).get("group")
    return "(none)" if value is None else str(value)


def _rows(logits: Sequence[float], labels: Sequence[str]) -> dict[str, dict[str, Any]]:
    by: dict[str, list[float]] = {}
    for x, label in zip(logits, labels, strict=True):
        by.setdefault(label, []).append(x)
    return {k: {"n": len(v), "accuracy": pairwise_accuracy(v)} for k, v in sorted(by.items())}


def user_summary(per_user: Mapping[str, Mapping[str, Any]], worst: int = WORST_USERS) -> dict[str, Any]:
    """Count, mean / median / min / max of the per-user accuracies, and the ``worst`` lowest users."""
    accs = [(u, r["accuracy"], r["n"]) for u, r in per_user.items() if not math.isnan(r["accuracy"])]
    if not accs:
        return {"count": 0}
    values = [a for _, a, _ in accs]
    lowest = sorted(accs, key=lambda x: (x[1], x[0]))[:worst]
    return {"count": len(accs), "mean": statistics.fmean(values), "median": statistics.median(values),
            "min": min(values), "max": max(values),
            "worst": [{"user": u, "accuracy": a, "n": n} for u, a, n in lowest]}


def personal_report(logits: Sequence[float] | Tensor, records: Sequence[Pair]) -> dict[str, Any]:
    """Accuracy of precomputed logits (same order as ``records``; see the module docstring) overall, per
    user (``user_id``; ``"(none)"`` without one), with :func:`user_summary`, and per group."""
    m = [float(x) for x in torch.as_tensor(logits, dtype=torch.float64).reshape(-1)]
    if len(m) != len(records):
        raise ValueError(f"{len(m)} logits for {len(records)} records")
    keep = [i for i, r in enumerate(records) if not r.tie]
    if not keep:
        raise DataError("no (non-tie) preference pairs to evaluate")
    if any(math.isnan(m[i]) for i in keep):
        raise DataError("the model produced NaN scores; check the model and the data")
    kept = [m[i] for i in keep]
    per_user = _rows(kept, [records[i].user_id or "(none)" for i in keep])
    return {"n": len(keep), "accuracy": pairwise_accuracy(kept), "users": user_summary(per_user),
            "per_user": per_user, "per_group": _rows(kept, [group_of(records[i]) for i in keep])}


def personal_accuracy(model: PersonalModel, records: Sequence[Pair], *,
                      batch_size: int = 64) -> dict[str, Any]:
    """:func:`personal_report` of ``model.pair_logits(records)`` (each record scored for its own user)."""
    pairs = [r for r in records if isinstance(r, Pair)]
    if not pairs:
        raise DataError("no preference pairs to evaluate")
    with torch.no_grad():
        logits = model.pair_logits(pairs, batch_size=batch_size)
    return personal_report(logits, pairs)


# -- unseen users: accuracy against shots -------------------------------------------------------------


def by_user(records: Sequence[Pair]) -> dict[str, list[Pair]]:
    """The pair records of each user, in file order (a record without ``user_id`` is a DataError)."""
    users: dict[str, list[Pair]] = {}
    for i, r in enumerate(records):
        if not isinstance(r, Pair) or r.tie:
            continue
        if r.user_id is None:
            raise DataError(f"record {r.id or i} has no user_id; per-user evaluation needs one on every pair")
        users.setdefault(r.user_id, []).append(r)
    return users


def split_shots(pairs: Sequence[Pair], max_shots: int, rng: random.Random | None = None
                ) -> tuple[list[Pair], list[Pair]]:
    """(shot pool, remaining): the first ``max_shots`` pairs after an optional seeded shuffle, and the
    rest. Shots for k ≤ max_shots are the pool's first k, so every k is scored on the same remaining set."""
    order = list(pairs)
    if rng is not None:
        rng.shuffle(order)
    return order[:max_shots], order[max_shots:]


def shots_curve(model: PersonalModel | Callable[[], PersonalModel], heldout_records: Sequence[Pair], *,
                shots: Sequence[int] = DEFAULT_SHOTS, seed: int = 0, repeats: int = 1,
                batch_size: int = 64, fit_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Accuracy on unseen users after few-shot adaptation from k of their pairs, for each k in ``shots``.

    For each repeat and each user of ``heldout_records`` (users the model was not trained on), the
    user's pairs are shuffled with a seed derived from ``(seed, repeat, user)``; the first
    ``max(shots)`` form the shot pool and the rest are scored. For each k, ``model.add_user(user, pool[:k],
    **fit_options)`` (re-adding replaces the user), then every remaining pair is scored for its user. The
    scored set is the same for every k, so differences between k are due to the shots alone. Users with
    no more than ``max(shots)`` pairs are skipped (counted in ``skipped_users``). ``model`` may be a
    factory (called once); note that the model keeps the adapted users.

    Returns ``{"shots": [k...], "accuracy": [...]`` (pooled over the remaining pairs, mean over repeats),
    ``"accuracy_std"`` (over repeats), ``"user_mean"`` (mean of per-user accuracies), ``"per_group":
    {group: [...]}``, ``"users"``, ``"skipped_users"``, ``"scored_pairs"``, ``"repeats"``, ``"seed"}``.
    """
    ks = sorted({int(k) for k in shots})
    if not ks or ks[0] < 1:
        raise ConfigError(f"shots must be positive numbers of pairs, got {list(shots)}")
    if repeats < 1:
        raise ConfigError(f"repeats must be >= 1, got {repeats}")
    if not hasattr(model, "add_user"):
        model = model()  # a factory
    users = by_user(heldout_records)
    kept = {u: p for u, p in users.items() if len(p) > ks[-1]}
    if not kept:
        most = max((len(p) for p in users.values()), default=0)
        raise DataError(f"no held-out user has more than {ks[-1]} pairs (the largest number of shots); "
                        f"{len(users)} users, at most {most} pairs each")
    acc = {k: [] for k in ks}
    user_mean = {k: [] for k in ks}
    per_group: dict[str, dict[int, list[float]]] = {}
    scored = 0
    for rep in range(repeats):
        pools, rest = {}, []
        for u in sorted(kept):
            pools[u], remaining = split_shots(kept[u], ks[-1], random.Random(f"{seed}:{rep}:{u}"))
            rest += remaining
        scored = len(rest)
        for k in ks:
            for u in sorted(kept):
                model.add_user(u, pools[u][:k], **dict(fit_options or {}))
            with torch.no_grad():
                logits = model.pair_logits(rest, batch_size=batch_size)
            report = personal_report(logits, rest)
            acc[k].append(report["accuracy"])
            user_mean[k].append(report["users"]["mean"])
            for g, row in report["per_group"].items():
                per_group.setdefault(g, {}).setdefault(k, []).append(row["accuracy"])
    return {"shots": ks, "accuracy": [statistics.fmean(acc[k]) for k in ks],
            "accuracy_std": [statistics.pstdev(acc[k]) for k in ks],
            "user_mean": [statistics.fmean(user_mean[k]) for k in ks],
            "per_group": {g: [statistics.fmean(v[k]) for k in ks] for g, v in sorted(per_group.items())},
            "users": len(kept), "skipped_users": len(users) - len(kept), "scored_pairs": scored,
            "repeats": repeats, "seed": seed}


def known_users(model: Any) -> set[str] | None:
    """The user ids a personalized model knows (``model.head.users``), or None for a user-blind model."""
    head = getattr(model, "head", None)
    if not getattr(head, "personal", False):
        return None
    return set(getattr(head, "users", ()))


def unknown_users_message(unknown: Sequence[str], known: int, shown: int = 8) -> str:
    """One line naming the unknown users and how to adapt them."""
    more = len(unknown) - shown
    names = ", ".join(sorted(unknown)[:shown]) + (f" and {more} more" if more > 0 else "")
    return (f"{len(unknown)} users in the data are unknown to the model (trained on {known} users): {names}; "
            "adapt them from their first K labelled pairs with --shots K (few-shot RewardModel.add_user; "
            "those pairs are then not scored), or leave their records out")


def adapt_unseen_users(model: PersonalModel, records: Sequence[Pair], shots: int | None
                       ) -> tuple[list[Pair], dict[str, Any]]:
    """Adapt the users of ``records`` that a personalized model does not know from their first ``shots``
    pairs (file order) with ``model.add_user``, and return (the records left to score, info).

    The shots are removed from the scored records; a user with no more than ``shots`` pairs has nothing
    left to score. Without ``shots``, unknown users are a DataError naming them
    (:func:`unknown_users_message`). A user-blind model (no ``head.personal``) scores everything as is.
    ``info``: ``{"unseen_users", "shots", "shot_pairs", "users_without_pairs_left"}``.
    """
    known = known_users(model)
    pairs = [r for r in records if isinstance(r, Pair)]
    info: dict[str, Any] = {"unseen_users": 0, "shots": shots, "shot_pairs": 0, "users_without_pairs_left": 0}
    if known is None:
        return pairs, info
    unknown = sorted({r.user_id for r in pairs if r.user_id is not None and r.user_id not in known})
    if not unknown:
        return pairs, info
    if not shots:
        raise DataError(unknown_users_message(unknown, len(known)))
    if shots < 1:
        raise ConfigError(f"--shots must be >= 1, got {shots}")
    used: set[int] = set()
    users = by_user([r for r in pairs if r.user_id in set(unknown)])
    for u in unknown:
        first = users.get(u, [])[:shots]
        if not first:
            continue
        model.add_user(u, first)
        used.update(id(r) for r in first)
        info["users_without_pairs_left"] += len(users[u]) <= shots
    info.update(unseen_users=len(unknown), shot_pairs=len(used))
    return [r for r in pairs if id(r) not in used], info


# -- group recovery -----------------------------------------------------------------------------------


def adjusted_rand_index(labels_true: Sequence[Hashable], labels_pred: Sequence[Hashable]) -> float:
    """Adjusted Rand index of two clusterings of the same items (1 = identical up to relabelling, ~0 =
    chance; Hubert & Arabie 1985, "Comparing partitions", J. Classification 2, Eq. 5), via scikit-learn's
    ``adjusted_rand_score``."""
    from sklearn.metrics import adjusted_rand_score

    if len(labels_true) != len(labels_pred):
        raise ValueError(f"{len(labels_true)} true labels for {len(labels_pred)} predicted labels")
    true_ids = {v: i for i, v in enumerate(dict.fromkeys(labels_true))}
    pred_ids = {v: i for i, v in enumerate(dict.fromkeys(labels_pred))}
    return float(adjusted_rand_score([true_ids[v] for v in labels_true], [pred_ids[v] for v in labels_pred]))


def true_groups(records: Sequence[Pair]) -> dict[str, str]:
    """Each user's group (``metadata["group"]`` of their records; the dominant group of a mixture user)."""
    groups: dict[str, str] = {}
    for r in records:
        if r.user_id is not None:
            groups.setdefault(r.user_id, group_of(r))
    return groups


def group_recovery(assignment: Mapping[str, Hashable], records: Sequence[Pair]) -> float:
    """ARI between a clustering of users (user id -> cluster, e.g. MaxMin's EM) and the true groups of
    the users in ``records``; users missing from ``assignment`` are a DataError."""
    truth = true_groups(records)
    missing = sorted(set(truth) - set(assignment))
    if missing:
        raise DataError(f"{len(missing)} users have no cluster assignment: {', '.join(missing[:5])}"
                        + (" ..." if len(missing) > 5 else ""))
    users = sorted(truth)
    return adjusted_rand_index([truth[u] for u in users], [assignment[u] for u in users])


# -- plot ---------------------------------------------------------------------------------------------


def plot_shots_curves(curves: Mapping[str, Mapping[str, Any]], path: str | Path, *,
                      ceiling: float | None = None,
                      title: str = "Unseen users: accuracy against shots") -> Path:
    """One PNG: accuracy (y) against the number of shots (x, log scale) of each model's
    :func:`shots_curve` result (``{"PAL": curve, "VPL": curve, "BT": curve}``), with the user-blind
    ceiling as a dashed line when given."""
    from matplotlib.figure import Figure

    if not curves:
        raise ValueError("no curves to plot")
    fig = Figure(figsize=(6.0, 4.2), dpi=110)  # no pyplot: no global state, no GUI backend
    ax = fig.subplots()
    for name, curve in curves.items():
        ax.plot(curve["shots"], curve["accuracy"], marker="o", label=name)
    if ceiling is not None:
        ax.axhline(ceiling, linestyle="--", color="gray", label=f"user-blind ceiling ({ceiling:.3f})")
    ax.set_xscale("log")
    all_shots = sorted({k for c in curves.values() for k in c["shots"]})
    ax.set_xticks(all_shots)
    ax.set_xticklabels([str(k) for k in all_shots])
    ax.set_ylim(0.4, 1.0)
    ax.set_xlabel("shots: labelled pairs of the new user (log scale)")
    ax.set_ylabel("accuracy on the user's other pairs")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, bbox_inches="tight")
    return out


__all__ = ["PersonalModel", "user_blind_ceiling", "ceiling_by_group", "blind_majority", "pair_key",
           "pair_orientation", "persona_key", "persona_orientation", "personal_report", "personal_accuracy",
           "user_summary", "group_of", "by_user", "split_shots", "shots_curve", "adjusted_rand_index",
           "true_groups", "group_recovery", "plot_shots_curves", "known_users", "unknown_users_message",
           "adapt_unseen_users", "DEFAULT_SHOTS"]
