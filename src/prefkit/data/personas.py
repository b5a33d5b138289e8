"""Synthetic users with conflicting preferences, built from real persona statements.

Input: any statements file (JSONL, JSON, CSV or Parquet, optionally ``.gz``; or a list of dicts) whose
rows hold ``trait`` (text), ``statement`` (text), ``expresses_trait`` (bool: a holder of the trait would
say it) and ``label_confidence`` (the probability that ``expresses_trait`` is right, in [0, 1]); other
keys are ignored. Anthropic's persona statements (Perez et al. 2022, "Discovering Language Model
Behaviors with Model-Written Evaluations"; ``../shared/data/persona/``) have this shape, and the same
construction underlies the Persona experiments of PAL (Chen et al. 2024, "PAL: Pluralistic Alignment
Framework for Learning from Heterogeneous Preferences", Sec. 5).

The generator (``make_personas``), all draws from one ``numpy`` generator seeded by ``seed``:

1. **Stances.** Each of K groups holds a stance on each trait: *for* (prefers statements that express
   it) or *against*. On ``disagree_traits`` traits (a count, or a fraction of the traits; by default
   all when K >= 2) the groups differ; on the others every group shares one random stance. A
   disagreeing trait gets a *pattern*, one stance per group, that is never constant. Patterns are
   picked greedily, each time the one that maximises the smallest pairwise Hamming distance between
   the groups' stance vectors so far (ties: the larger total distance, then the more even distances,
   then a seeded random order), over all non-constant patterns (K <= 12) or 512 random ones. So with
   K = 4 the picks cycle through the three 2-vs-2 splits and every two groups differ on about 2/3 of
   the disagreeing traits (exactly 2/3 when the count is a multiple of 3); with K = 2 they differ on
   all of them. Each pattern's sides are then swapped with probability 1/2 (which leaves distances
   alone). ``Personas.differences()`` gives the K x K counts.
2. **Users.** ``users`` users ``u0000``, ``u0001``... Without ``mixture`` each belongs to one group,
   in proportion to ``group_shares`` (default equal; counts by largest remainder, order shuffled).
   With ``mixture = alpha`` each user mixes the groups with weights w ~ Dirichlet(alpha * K * shares)
   (PAL's users as mixtures of prototypes; small alpha gives nearly pure users, large alpha nearly
   uniform ones); ``metadata["group"]`` is then the dominant group, argmax w. A mixture user's
   probability of being *for* trait t is p = sum_k w_k [group k is for t], and their stance is

   - ``mixture_stance="majority"`` (default): for iff p > 1/2 (p = 1/2: the dominant group's stance),
     fixed for all of the user's pairs, like the sign of a reward that is linear in the weights;
   - ``"per_pair"``: drawn afresh for each pair, for with probability p (a user who answers each
     question as one of their groups would).
3. **Pairs.** Each trait has a pool of ``pairs_per_trait`` pairs (one statement that expresses the
   trait, one that does not), so that many users see the same pair; by default the pool pairs up a
   shuffle of the trait's statements, each statement used once (min(#expressing, #not) pairs). A
   larger pool draws distinct random combinations. Each user gets ``pairs_per_user`` pairs: traits in
   rounds (a fresh shuffle of all traits per round, so traits are balanced per user), and within a
   trait pool pairs without repeats while the pool lasts. The chosen statement is the one that
   matches the user's stance: the expressing one for a user *for* the trait.
4. **Noise** (both optional, combinable). ``noise="confidence"``: each statement's label is right with
   probability ``label_confidence``, drawn once per statement (a wrong label is wrong for everyone).
   If both labels of a pair are right the user answers by stance; if both are wrong the statements
   are really the other way round and the user's answer flips; if one is wrong both statements are of
   one kind and the user picks either with probability 1/2. Per answer, the flip probability is
   (1 - c_e)(1 - c_n) + [c_e (1 - c_n) + (1 - c_e) c_n] / 2 = 1 - (c_e + c_n) / 2 for confidences
   c_e, c_n of the two statements (about 4% on the persona file). ``flip = f`` then flips each answer
   independently with probability f, so the total rate is p (1 - f) + (1 - p) f.
5. **Held-out users.** ``heldout`` users (a count or a fraction) are marked ``metadata["heldout"]``:
   users for unseen-user (few-shot) evaluation, taken round-robin over the groups (by dominant group).

Records are ``Pair(prompt, chosen, rejected, id="u0007-p3", user_id="u0007", metadata=...)`` with
metadata ``{"group": int, "trait": str, "chosen_expresses": bool, "heldout": bool}`` and, for mixture
users, ``"mixture": [w_0, ..., w_{K-1}]``. ``chosen_expresses`` reads the file's labels, so a user-blind
model's best accuracy on a trait is the majority share of ``chosen_expresses`` there
(``prefkit.eval.personal.user_blind_ceiling``). Users of one group label a pair alike, up to noise.
"""

from __future__ import annotations

import math
import numbers
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from itertools import combinations
from typing import Any, Literal

import numpy as np

from prefkit.data.records import Pair
from prefkit.data.sources import CsvRow, Location, open_source
from prefkit.errors import ConfigError, DataError, check_known_keys, did_you_mean

__all__ = ["MIXTURE_STANCES", "NOISES", "PROMPT", "STATEMENT_KEYS", "PersonaConfig", "Personas", "Statement",
           "make_personas", "read_statements"]

PROMPT = "Which statement is closer to your own views?"
"""The fixed question every persona pair asks."""
STATEMENT_KEYS = ("trait", "statement", "expresses_trait", "label_confidence")
"""The keys a statements row must have."""
MIXTURE_STANCES = ("majority", "per_pair")
NOISES = ("none", "confidence")
_EXACT_PATTERNS = 12  # up to this many groups, every non-constant stance pattern is a candidate
_RANDOM_PATTERNS = 512
_TRUE = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


@dataclass(frozen=True)
class Statement:
    """One persona statement: ``expresses`` = a holder of ``trait`` would say ``text``."""

    trait: str
    text: str
    expresses: bool
    confidence: float


# ---------------------------------------------------------------------------------------------------
# reading


def _where(name: str, loc: Location) -> dict[str, Any]:
    return {"source": name, "line": loc[1]} if loc[0] == "line" else {"source": f"{name} row {loc[1]}"}


def _statement(row: Any, csv: bool) -> Statement:
    if not isinstance(row, Mapping):
        raise DataError(f"a statements row must be an object with keys {list(STATEMENT_KEYS)}, got "
                        f"{type(row).__name__}", reason="wrong_type")
    missing = [k for k in STATEMENT_KEYS if row.get(k) is None or (csv and row.get(k) == "")]
    if missing:
        raise DataError(f"statements row has no {missing[0]!r} (a row needs {', '.join(STATEMENT_KEYS)})",
                        field=missing[0], reason="missing_field")
    trait, text, expresses, conf = (row[k] for k in STATEMENT_KEYS)
    for key, value in (("trait", trait), ("statement", text)):
        if not isinstance(value, str) or not value.strip():
            what = "empty" if isinstance(value, str) else f"a {type(value).__name__}"
            raise DataError(f"field {key!r} must be non-empty text, got {what}", field=key, reason="wrong_type")
    if csv and isinstance(expresses, str) and expresses.strip().lower() in _TRUE:
        expresses = _TRUE[expresses.strip().lower()]
    if not isinstance(expresses, bool):
        raise DataError(f"field 'expresses_trait' must be true or false, got {expresses!r}",
                        field="expresses_trait", reason="wrong_type")
    if csv and isinstance(conf, str):
        try:
            conf = float(conf)
        except ValueError:
            pass
    if isinstance(conf, bool) or not isinstance(conf, numbers.Real) or not 0 <= float(conf) <= 1:
        raise DataError(f"field 'label_confidence' must be a number in [0, 1], got {conf!r}",
                        field="label_confidence", reason="out_of_range")
    return Statement(trait, text, expresses, float(conf))


def read_statements(source: Any) -> dict[str, tuple[tuple[Statement, ...], tuple[Statement, ...]]]:
    """trait -> (statements expressing it, statements not expressing it), traits sorted, rows in file order.

    ``source``: a path (JSONL, JSON, CSV, Parquet, ``.gz``) or a list of dicts with ``STATEMENT_KEYS``.
    Raises ``DataError`` (naming the line) for a row without those keys or with bad values, a statement
    labelled both ways within one trait, and a trait without both kinds of statements.
    """
    name, items = open_source(source)
    by_trait: dict[str, tuple[list[Statement], list[Statement]]] = {}
    labels: dict[tuple[str, str], bool] = {}
    n = 0
    for loc, row in items:
        n += 1
        try:
            if isinstance(row, DataError):
                raise row
            s = _statement(row, type(row) is CsvRow)
            if labels.setdefault((s.trait, s.text), s.expresses) != s.expresses:
                raise DataError(f"statement {s.text[:60]!r} of trait {s.trait!r} is labelled both as expressing "
                                "the trait and as not", field="expresses_trait", reason="conflict")
        except DataError as err:
            raise DataError(err.message, field=err.field, reason=err.reason, **_where(name, loc)) from None
        by_trait.setdefault(s.trait, ([], []))[0 if s.expresses else 1].append(s)
    if not n:
        raise DataError("no statements (the source is empty)", source=name, reason="empty_file")
    for trait, (yes, no) in sorted(by_trait.items()):
        if not yes or not no:
            raise DataError(f"trait {trait!r} has {len(yes)} statements expressing it and {len(no)} not; every "
                            "trait needs both kinds (drop the trait or add statements)", source=name,
                            reason="too_few")
    return {t: (tuple(by_trait[t][0]), tuple(by_trait[t][1])) for t in sorted(by_trait)}


# ---------------------------------------------------------------------------------------------------
# configuration


def _count_or_fraction(value: Any, name: str, total: int | None = None, noun: str = "") -> int | None:
    """An int count, or a float fraction of ``total`` (rounded); checks only when ``total`` is None."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f"{name} must be a count (int) or a fraction (float in [0, 1]), got {value!r}")
    if isinstance(value, numbers.Integral):
        if value < 0 or (total is not None and value > total):
            raise ConfigError(f"{name}={value} is out of range: there are {total} {noun}" if total is not None
                              else f"{name} must be >= 0, got {value}")
        return int(value)
    if not 0 <= value <= 1:
        raise ConfigError(f"{name}={value} must be a fraction in [0, 1] (or an int count of {noun or 'items'})")
    return None if total is None else int(round(float(value) * total))


@dataclass(frozen=True)
class PersonaConfig:
    """Options of ``make_personas`` (the module docstring explains each step)."""

    groups: int = 4
    """K, the number of groups (stance vectors)."""
    users: int = 100
    """Number of users."""
    pairs_per_user: int = 40
    """Pairs each user labels."""
    disagree_traits: int | float | None = None
    """Traits on which the groups' stances differ: an int count or a float fraction of the traits
    (``1`` is one trait, ``1.0`` all); None = all traits (none when K = 1)."""
    traits: tuple[str, ...] | None = None
    """Use only these traits of the file (default: all)."""
    group_shares: tuple[float, ...] | None = None
    """Relative group sizes, one per group (default equal), e.g. (0.8, 0.2)."""
    mixture: float | None = None
    """Dirichlet concentration alpha: users mix the groups (PAL-style); None = one group per user."""
    mixture_stance: Literal["majority", "per_pair"] = "majority"
    """A mixture user's stance: the weighted majority (fixed) or drawn per pair."""
    heldout: int | float = 0
    """Held-out (unseen) users: an int count or a float fraction of ``users``."""
    noise: Literal["none", "confidence"] = "none"
    """``"confidence"``: label noise from the statements' ``label_confidence``."""
    flip: float = 0.0
    """Independent probability of flipping each answer, in [0, 0.5]."""
    pairs_per_trait: int | None = None
    """Pool size per trait (pairs shared by users); None = each statement in one pool pair."""
    prompt: str = PROMPT
    """The question every pair asks."""
    seed: int = 0
    """Seed of the one random generator."""

    def __post_init__(self) -> None:
        for name in ("groups", "users", "pairs_per_user", "seed") + (("pairs_per_trait",) if
                                                                       self.pairs_per_trait is not None else ()):
            value = getattr(self, name)
            low = 0 if name == "seed" else 1
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
                raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")
        _count_or_fraction(self.disagree_traits, "disagree_traits", noun="traits")
        if self.disagree_traits and self.groups == 1:
            raise ConfigError(f"disagree_traits={self.disagree_traits} needs at least 2 groups (one group can't "
                              "disagree with itself); set groups >= 2 or disagree_traits=0")
        _count_or_fraction(self.heldout, "heldout", self.users, "users")
        if self.traits is not None:
            if isinstance(self.traits, str) or not self.traits or not all(isinstance(t, str) for t in self.traits):
                raise ConfigError(f"traits must be a non-empty list of trait names, got {self.traits!r}")
            object.__setattr__(self, "traits", tuple(self.traits))
        if self.group_shares is not None:
            shares = tuple(self.group_shares)
            if len(shares) != self.groups or not all(
                    isinstance(s, numbers.Real) and not isinstance(s, bool) and math.isfinite(s) and s > 0
                    for s in shares):
                raise ConfigError(f"group_shares must be {self.groups} positive numbers (one per group), "
                                  f"got {self.group_shares!r}")
            object.__setattr__(self, "group_shares", tuple(float(s) for s in shares))
        if self.mixture is not None and (isinstance(self.mixture, bool) or not isinstance(self.mixture, numbers.Real)
                                         or not math.isfinite(self.mixture) or self.mixture <= 0):
            raise ConfigError(f"mixture (the Dirichlet concentration) must be a number > 0, got {self.mixture!r}")
        if self.mixture_stance not in MIXTURE_STANCES:
            raise ConfigError(f"mixture_stance must be one of {list(MIXTURE_STANCES)}, got {self.mixture_stance!r}"
                              f"{did_you_mean(str(self.mixture_stance), MIXTURE_STANCES)}")
        if self.noise not in NOISES:
            raise ConfigError(f"noise must be one of {list(NOISES)}, got {self.noise!r}"
                              f"{did_you_mean(str(self.noise), NOISES)}")
        if isinstance(self.flip, bool) or not isinstance(self.flip, numbers.Real) or not 0 <= self.flip <= 0.5:
            raise ConfigError(f"flip must be a probability in [0, 0.5], got {self.flip!r}")
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise ConfigError("prompt must be non-empty text")


# ---------------------------------------------------------------------------------------------------
# the generated data


@dataclass(frozen=True)
class Personas:
    """What ``make_personas`` made: the records and the hidden truth behind them."""

    records: list[Pair]
    """All pairs, user by user (held-out users included, marked in metadata)."""
    traits: tuple[str, ...]
    """The traits used, sorted."""
    stances: dict[str, tuple[bool, ...]]
    """trait -> one stance per group (True = for: prefers statements that express the trait)."""
    disagreeing: tuple[str, ...]
    """Traits on which the groups' stances differ."""
    weights: dict[str, tuple[float, ...]]
    """user id -> group weights (one-hot for a single-group user)."""
    groups: dict[str, int]
    """user id -> group (the dominant one for a mixture user)."""
    heldout: tuple[str, ...]
    """Held-out user ids."""
    flipped: int
    """Answers that noise flipped (the chosen statement goes against the user's stance)."""
    pool_sizes: dict[str, int]
    """trait -> pairs in its pool."""
    config: PersonaConfig = field(repr=False)

    def differences(self) -> list[list[int]]:
        """K x K: on how many traits two groups' stances differ."""
        k = self.config.groups
        s = np.array([self.stances[t] for t in self.traits], dtype=bool).reshape(len(self.traits), k)  # (T, K)
        return (s[:, :, None] != s[:, None, :]).sum(axis=0).tolist()

    def summary(self) -> dict[str, Any]:
        """Counts, the stance table (trait -> "+-+-", one sign per group) and pairwise differences."""
        k = self.config.groups
        diff = self.differences()
        pairs = Counter((r.metadata["trait"], r.chosen if r.metadata["chosen_expresses"] else r.rejected,
                         r.rejected if r.metadata["chosen_expresses"] else r.chosen) for r in self.records)
        return {
            "groups": k, "users": len(self.groups), "heldout_users": len(self.heldout),
            "records": len(self.records), "traits": len(self.traits), "disagreeing_traits": len(self.disagreeing),
            "group_sizes": [sum(g == i for g in self.groups.values()) for i in range(k)],
            "stances": {t: "".join("+" if x else "-" for x in self.stances[t]) for t in self.traits},
            "disagreeing": list(self.disagreeing),
            "pairwise_differences": diff,
            "min_pairwise_difference": min((diff[a][b] for a, b in combinations(range(k), 2)), default=0),
            "distinct_pairs": len(pairs), "pool_pairs": sum(self.pool_sizes.values()),
            "flipped": self.flipped, "flip_share": round(self.flipped / len(self.records), 4),
            "config": asdict(self.config),
        }

    def table(self) -> str:
        """The stance table as text: one row per trait, + (for) or - (against) per group."""
        k = self.config.groups
        width = max(len(t) for t in self.traits) + 2
        head = " ".join(f"g{i:<2}" for i in range(k))
        lines = [f"{'trait':<{width}}{head}  differs"]
        for t in self.traits:
            signs = " ".join(f"{'+' if x else '-':<3}" for x in self.stances[t])
            lines.append(f"{t:<{width}}{signs}  {'yes' if t in self.disagreeing else 'no'}")
        diff = self.differences()
        lines.append("traits on which two groups differ: " + (", ".join(
            f"g{a}-g{b} {diff[a][b]}" for a, b in combinations(range(k), 2)) or "none (one group)"))
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------
# generation


def _stance_patterns(k: int, count: int, rng: np.random.Generator) -> list[tuple[bool, ...]]:
    """``count`` non-constant stance patterns over ``k`` groups, picked greedily for max-min distance."""
    if count == 0:
        return []
    if k <= _EXACT_PATTERNS:  # every pattern with the last group against, except the constant one
        cand = np.array([[(m >> g) & 1 for g in range(k)] for m in range(1, 2 ** (k - 1))], dtype=bool)
    else:
        cand = np.zeros((_RANDOM_PATTERNS, k), dtype=bool)
        for row in cand:
            row[rng.permutation(k)[: k // 2]] = True
    cand = cand[rng.permutation(len(cand))]  # (C, K), shuffled: ties go to a random candidate
    sep = (cand[:, :, None] != cand[:, None, :])[:, *np.triu_indices(k, 1)].astype(np.int64)  # (C, pairs)
    dist = np.zeros(sep.shape[1], dtype=np.int64)  # (pairs,) Hamming distance of each two groups so far
    out = []
    for _ in range(count):
        new = dist[None, :] + sep  # (C, pairs)
        score = np.stack([new.min(axis=1), new.sum(axis=1), -(new ** 2).sum(axis=1)], axis=1).tolist()
        best = max(range(len(score)), key=lambda i: (score[i], -i))  # lexicographic max; ties: first candidate
        dist = new[best]
        out.append(tuple(bool(x) for x in cand[best]))
    return out


def _group_counts(users: int, shares: Sequence[float]) -> list[int]:
    """Largest-remainder counts of ``users`` in proportion to ``shares``."""
    exact = [users * s / sum(shares) for s in shares]
    counts = [int(math.floor(x)) for x in exact]
    for i in sorted(range(len(shares)), key=lambda i: (counts[i] - exact[i], i))[: users - sum(counts)]:
        counts[i] += 1
    return counts


def _pool(n_yes: int, n_no: int, size: int | None, rng: np.random.Generator) -> np.ndarray:
    """(P, 2) indices (expressing, not expressing) of a trait's pool of distinct pairs."""
    if size is None or size <= min(n_yes, n_no):
        p = min(n_yes, n_no) if size is None else size
        return np.stack([rng.permutation(n_yes)[:p], rng.permutation(n_no)[:p]], axis=1)
    flat = rng.choice(n_yes * n_no, size=size, replace=False)  # distinct combinations
    return np.stack([flat // n_no, flat % n_no], axis=1)


def _draw(size: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` indices into a pool of ``size``: no repeats until the pool is used up, then a new round."""
    rounds = -(-count // size)
    return np.concatenate([rng.permutation(size) for _ in range(rounds)])[:count]


def _resolve(config: PersonaConfig | None, options: Mapping[str, Any]) -> PersonaConfig:
    check_known_keys(options, [f.name for f in fields(PersonaConfig)], "persona option")
    if config is None:
        return PersonaConfig(**options)
    return replace(config, **options) if options else config


def make_personas(statements: Any, config: PersonaConfig | None = None, **options: Any) -> Personas:
    """Synthetic users and their labelled pairs from persona ``statements`` (see the module docstring).

    ``statements``: a path or list of dicts for ``read_statements``, or its result. ``config`` and/or
    keyword ``options`` (the ``PersonaConfig`` fields; options override ``config``). Deterministic for a
    given statements file and config (``seed`` included).
    """
    cfg = _resolve(config, options)
    table = statements if isinstance(statements, dict) else read_statements(statements)
    traits = tuple(sorted(table))
    if cfg.traits is not None:
        for t in cfg.traits:
            if t not in table:
                raise ConfigError(f"trait {t!r} is not in the statements{did_you_mean(t, table)}; "
                                  f"the file has {len(table)} traits")
        traits = tuple(sorted(set(cfg.traits)))
    n_traits, k = len(traits), cfg.groups
    for t in traits:
        most = len(table[t][0]) * len(table[t][1])
        if cfg.pairs_per_trait is not None and cfg.pairs_per_trait > most:
            raise ConfigError(f"pairs_per_trait={cfg.pairs_per_trait} is more than trait {t!r} allows "
                              f"({len(table[t][0])} x {len(table[t][1])} = {most} distinct pairs)")
    rng = np.random.default_rng(cfg.seed)

    # 1. stances (T, K)
    n_disagree = _count_or_fraction(cfg.disagree_traits, "disagree_traits", n_traits, "traits")
    n_disagree = (n_traits if k > 1 else 0) if n_disagree is None else n_disagree
    disagreeing = tuple(sorted(traits[i] for i in rng.permutation(n_traits)[:n_disagree]))
    patterns = iter(_stance_patterns(k, n_disagree, rng))
    stances: dict[str, tuple[bool, ...]] = {}
    for t in traits:
        swap = bool(rng.random() < 0.5)  # swap sides (or, on a shared trait, the shared stance is "for")
        pattern = next(patterns) if t in disagreeing else (False,) * k
        stances[t] = tuple(x != swap for x in pattern)
    s = np.array([stances[t] for t in traits], dtype=np.float64).reshape(n_traits, k)  # (T, K) 1 = for

    # 2. users: weights (N, K), dominant group, held-out users
    shares = np.array(cfg.group_shares or (1.0,) * k) / sum(cfg.group_shares or (1.0,) * k)  # (K,)
    if cfg.mixture is None:
        labels = np.repeat(np.arange(k), _group_counts(cfg.users, shares.tolist()))
        w = np.eye(k)[rng.permutation(labels)]  # (N, K) one-hot
    else:
        w = rng.dirichlet(cfg.mixture * k * shares, size=cfg.users)  # (N, K)
    dominant = w.argmax(axis=1)  # (N,)
    width = max(4, len(str(cfg.users - 1)))
    uids = [f"u{i:0{width}d}" for i in range(cfg.users)]
    n_heldout = _count_or_fraction(cfg.heldout, "heldout", cfg.users, "users") or 0
    order = rng.permutation(cfg.users)
    rank = np.zeros(cfg.users, dtype=np.int64)  # a user's position within their group, in shuffled order
    for g in range(k):
        members = order[dominant[order] == g]
        rank[members] = np.arange(len(members))
    heldout_idx = sorted(np.lexsort((dominant, rank))[:n_heldout].tolist())  # round-robin over groups
    heldout = {uids[i] for i in heldout_idx}
    p_for = w @ s.T  # (N, T) probability of being for each trait
    tie = np.isclose(p_for, 0.5)
    majority = np.where(tie, s.T[dominant] > 0.5, p_for > 0.5)  # (N, T)

    # 3. pools; 4. statement truth for the confidence noise
    pools = {t: _pool(len(table[t][0]), len(table[t][1]), cfg.pairs_per_trait, rng) for t in traits}
    right: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    if cfg.noise == "confidence":
        for t in traits:
            right[t] = tuple(rng.random(len(side)) < np.array([x.confidence for x in side]) for side in table[t])

    records: list[Pair] = []
    flipped = 0
    for u, uid in enumerate(uids):
        rounds = -(-cfg.pairs_per_user // n_traits)
        seq = np.concatenate([rng.permutation(n_traits) for _ in range(rounds)])[: cfg.pairs_per_user]
        counts = np.bincount(seq, minlength=n_traits)
        picks = {ti: iter(_draw(len(pools[traits[ti]]), int(c), rng)) for ti, c in enumerate(counts) if c}
        meta_user: dict[str, Any] = {"group": int(dominant[u])}
        for j, ti in enumerate(seq):
            t = traits[ti]
            e, n = pools[t][next(picks[ti])]
            stance = bool(majority[u, ti]) if cfg.mixture_stance == "majority" else bool(rng.random() < p_for[u, ti])
            answer = stance  # True: the expressing statement is chosen
            if cfg.noise == "confidence":
                ok_e, ok_n = bool(right[t][0][e]), bool(right[t][1][n])
                if ok_e != ok_n:
                    answer = bool(rng.random() < 0.5)
                elif not ok_e:
                    answer = not stance
            if cfg.flip and rng.random() < cfg.flip:
                answer = not answer
            flipped += answer != stance
            yes, no = table[t][0][e].text, table[t][1][n].text
            meta = {**meta_user, "trait": t, "chosen_expresses": answer, "heldout": uid in heldout}
            if cfg.mixture is not None:
                meta["mixture"] = [round(float(x), 4) for x in w[u]]
            records.append(Pair(prompt=cfg.prompt, chosen=yes if answer else no, rejected=no if answer else yes,
                                id=f"{uid}-p{j}", user_id=uid, metadata=meta))
    return Personas(records=records, traits=traits, stances=stances, disagreeing=disagreeing,
                    weights={uid: tuple(round(float(x), 6) for x in w[i]) for i, uid in enumerate(uids)},
                    groups={uid: int(dominant[i]) for i, uid in enumerate(uids)},
                    heldout=tuple(uids[i] for i in heldout_idx), flipped=flipped,
                    pool_sizes={t: len(pools[t]) for t in traits}, config=cfg)
