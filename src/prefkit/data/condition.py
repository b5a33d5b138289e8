"""User-conditioned prompts (P-RLHF, user tokens): put who a record serves into its prompt.

A user-blind policy π(y | x) trained on the pooled feedback of people who disagree learns their
(population-weighted) average: on a prompt where two groups want opposite things it serves the majority,
or, at an even split, neither. P-RLHF conditions the policy on the user, π(y | x, u), so one model can
serve each group; plain DPO on records whose prompt names the user is then "user-conditioned DPO".

:func:`condition_on_users` is that transform, on the data floor, so every loss and trainer use it
unchanged: each record's prompt gets a **marker** naming its user (``by="user"``: ``record.user_id``) or
its group (``by="group"``: ``record.metadata["group"]``), e.g. ``"<user:u0007> Which statement ..."``.

- ``place="prefix"``: the marker and ``separator`` go before the prompt text (a chat prompt: before the
  first message's content);
- ``place="system"``: a chat prompt gets the marker as its system message (prepended to an existing one,
  joined by ``separator``); a text prompt has no system turn, so it is a ``DataError``.

**Unseen users fall back to a generic marker.** A record without a user (or group), or whose user is not
in ``known`` (the users trained on; :func:`users_of` gives them), gets the ``generic`` marker
(``"<user:anyone>"`` by default). With ``generic_weight`` = 1 − α > 0 every record is also kept a
second time with the generic marker, the two copies weighted α and 1 − α: this is P-DPO's generic-user
term, so the generic marker learns the pooled (user-blind) policy, which then serves unseen users::

    L = α·L_DPO(x ⊕ marker(u)) + (1 − α)·L_DPO(x ⊕ marker(generic))

**User tokens vs a learned user embedding.** P-RLHF's user model maps a user to embedding vectors that
are prepended to the prompt (a soft prompt: individual plus generic user embeddings). Here the user is a
marker in the text; for a learned per-user embedding, add the markers (:func:`user_markers`) to the
tokenizer as tokens (``tokenizer.add_tokens(markers)``, then ``model.resize_token_embeddings``): each
user's token row is then that user's embedding, trained with the policy. Without that, the marker is
ordinary text and the policy conditions on its tokens (fine for a few groups or readable user profiles).

References:
    Li, Zhou, Lipton, Leqi 2024, "Personalized Language Modeling from Personalized Human Feedback",
    arXiv 2402.05133: the user model (individual and generic user embeddings), P-DPO (the personalized
    DPO loss with the generic-user term weighted 1 − α; equation number not checked), generic embeddings
    for unseen users.

Deviations: the user representation is a discrete marker (text or an added token), not the paper's
user-model MLP over user ids and textual user information; a record's id gets ``"/generic"`` appended on
its generic copy so ids stay distinct.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, Literal, get_args

from prefkit.data.records import Message, Record
from prefkit.errors import ConfigError, DataError, check_known_keys, did_you_mean

By = Literal["user", "group"]
Place = Literal["prefix", "system"]


@dataclass(frozen=True)
class UserConditioning:
    """How :func:`condition_on_users` marks prompts (the run config's ``data.condition_on_users``)."""

    by: By = "user"
    """Whom the marker names: ``user`` (the record's ``user_id``) or ``group`` (its ``metadata.group``)."""
    template: str = "<user:{user}>"
    """The marker; ``{user}`` is replaced by the user id (or the group)."""
    place: Place = "prefix"
    """``prefix``: before the prompt text (chat: the first message); ``system``: a chat prompt's system message."""
    separator: str = " "
    """Between the marker and the prompt text (``prefix``), or an existing system message (``system``)."""
    generic: str = "anyone"
    """The ``{user}`` of the generic marker: records without a user, and users not trained on (unseen)."""
    generic_weight: float = 0.0
    """1 − α of P-DPO: also keep every training record with the generic marker, weighted this (the
    personal copy 1 − this); 0: no generic copies (the generic marker is then untrained)."""

    def __post_init__(self) -> None:
        for name, choices, value in (("by", get_args(By), self.by), ("place", get_args(Place), self.place)):
            if value not in choices:
                raise ConfigError(f"{name}: {value!r} is not one of {list(choices)}"
                                  f"{did_you_mean(str(value), choices)}")
        if "{user}" not in self.template:
            raise ConfigError(f"template {self.template!r} must contain {{user}}, "
                              "e.g. '<user:{user}>'")
        try:
            self.template.format(user="x")
        except (KeyError, IndexError, ValueError):
            raise ConfigError(f"template {self.template!r}: only {{user}} may appear in "
                              "braces") from None
        if not self.generic.strip():
            raise ConfigError("generic must be a non-empty name")
        if not 0.0 <= self.generic_weight < 1.0:
            raise ConfigError(f"generic_weight must be in [0, 1); got {self.generic_weight}")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> UserConditioning:
        """Build from a mapping (YAML); an unknown key is a ConfigError naming the nearest valid one."""
        check_known_keys(values, [f.name for f in fields(cls)], "condition_on_users option")
        return cls(**values)

    def marker(self, user: str) -> str:
        """The marker text for ``user`` (an id or a group)."""
        return self.template.format(user=user)


def user_of(record: Record, by: By = "user") -> str | None:
    """The id the marker names: ``record.user_id`` (``by="user"``) or ``str(metadata["group"])``; None if absent."""
    if by == "user":
        return record.user_id
    group = record.metadata.get("group")
    return None if group is None else str(group)


def users_of(records: Iterable[Record], by: By = "user") -> list[str]:
    """The distinct users (or groups) of ``records``, in first-seen order (the ``known`` of training data)."""
    seen: dict[str, None] = {}
    for r in records:
        u = user_of(r, by)
        if u is not None:
            seen.setdefault(u)
    return list(seen)


def user_markers(users: Iterable[str], conditioning: UserConditioning | None = None) -> list[str]:
    """The markers of ``users`` plus the generic one, e.g. to add as tokens (``tokenizer.add_tokens``)."""
    c = conditioning or UserConditioning()
    out = [c.marker(u) for u in users]
    return [*out, *([c.marker(c.generic)] * (c.marker(c.generic) not in out))]


def _marked(prompt: Any, marker: str, c: UserConditioning) -> Any:
    if isinstance(prompt, str):
        if c.place == "system":
            raise DataError("condition_on_users: place='system' needs chat prompts (a text prompt has no system "
                            "message); use place='prefix'", field="prompt", reason="wrong_type")
        return f"{marker}{c.separator}{prompt}"
    first, rest = prompt[0], prompt[1:]
    if c.place == "prefix":
        return (Message(first.role, f"{marker}{c.separator}{first.content}"), *rest)
    if first.role == "system":
        return (Message("system", f"{marker}{c.separator}{first.content}"), *rest)
    return (Message("system", marker), *prompt)


def condition_on_users(records: Sequence[Record], conditioning: UserConditioning | None = None, *,
                       known: Collection[str] | None = None, **options: Any) -> list[Record]:
    """``records`` with a user (or group) marker in each prompt (module docstring).

    Args:
        records: any record kinds (each keeps its kind, completions, user id and metadata).
        conditioning: the settings; or give them as keyword ``options`` (``by="group"``, ...), not both.
        known: the users (or groups) trained on; any other gets the generic marker. None: every user is
            known (give ``users_of(train)`` when marking evaluation or serving records).

    Returns a new list: each record marked for its user, and (``generic_weight`` > 0) after it its generic
    copy; the weights are then w·(1 − generic_weight) and w·generic_weight. Records without a user get
    only the generic marker, at their own weight.
    """
    if conditioning is not None and options:
        raise ConfigError("condition_on_users: give a UserConditioning or keyword options, not both")
    c = conditioning or UserConditioning(**options)
    generic = c.marker(c.generic)
    known_set = None if known is None else set(known)
    if known_set is not None and c.generic in known_set:
        raise DataError(f"condition_on_users: a user is named {c.generic!r}, the generic marker's name; choose "
                        "another generic name", field="user_id", reason="bad_value")
    out: list[Record] = []
    for r in records:
        user = user_of(r, c.by)
        if user == c.generic:
            raise DataError(f"condition_on_users: user {user!r} has the generic marker's name; choose another "
                            "generic name", field="user_id", reason="bad_value")
        personal = user is not None and (known_set is None or user in known_set)
        if not personal or not c.generic_weight:
            out.append(dataclasses.replace(r, prompt=_marked(r.prompt, c.marker(user) if personal else generic, c)))
            continue
        out.append(dataclasses.replace(r, prompt=_marked(r.prompt, c.marker(user), c),
                                       weight=r.weight * (1.0 - c.generic_weight)))
        out.append(dataclasses.replace(r, prompt=_marked(r.prompt, generic, c), weight=r.weight * c.generic_weight,
                                       id=None if r.id is None else f"{r.id}/generic"))
    return out


def condition_train_eval(train: Sequence[Record], evaluation: Sequence[Record],
                         conditioning: UserConditioning) -> tuple[list[Record], list[Record]]:
    """A job's (train, eval) records marked alike: the known users are those of ``train``; only the
    training records get generic copies (``generic_weight``), evaluation users not in ``train`` get the
    generic marker (``prefkit.train.run.read_data`` applies this for ``data.condition_on_users``)."""
    known = users_of(train, conditioning.by)
    return (condition_on_users(train, conditioning, known=known),
            condition_on_users(evaluation, dataclasses.replace(conditioning, generic_weight=0.0), known=known))


__all__ = ["UserConditioning", "condition_on_users", "condition_train_eval", "user_of", "users_of", "user_markers"]
