"""Judges and reward models on a suite of pair files (RewardBench-style), and judge-bias scores.

A **suite** is a folder of pair files. Each file is one subset; each subset belongs to a **section**:

- the name of the sub-folder it sits in (``suite/chat_hard/llmbar-natural.json`` → ``chat_hard``);
- or a ``sections.yaml`` in the folder (or the ``sections=`` argument, a mapping or a path), mapping each
  section to its files, by name or stem: ``{chat_hard: [llmbar-natural, llmbar-adversarial-neighbor]}``;
  the mapping wins over sub-folders; a file that neither names goes to section ``other``.

File layouts (:func:`read_pair_file`):

- **LLMBar** (``input``, ``output_1``, ``output_2``, ``label`` ∈ {1, 2}, as int or string): a JSON list or
  JSON lines. The shared MT-Bench human pairs (``mtbench-human.json``) are in this layout too (the LLMBar
  authors' processing: the human experts' majority winner);
- **MT-Bench human judgements** as published (``conversation_a``, ``conversation_b``, ``winner`` ∈
  {``model_a``, ``model_b``, ``tie``…}, optional ``turn``, ``judge``): the prompt is the conversation up to
  the judged assistant turn, the completions its last assistant messages; ties are skipped and counted;
- any prefkit pair file (:func:`prefkit.data.readers.load`).

Every pair becomes a :class:`~prefkit.data.records.Pair` with ``metadata["label"]`` ∈ {1, 2}: which of
the two the file shows *first* is the chosen one. Pairwise judges see the file's order (``output_1``
first) and its swap; prefkit pair files have no order, so their pairs alternate (label 1, 2, 1, …).

**Scoring.** A pointwise judge (a prefkit ``RewardModel``, wrapped in ``RewardModelJudge``, or any judge
with ``pointwise = True``) gives ``P(chosen ≻ rejected) = σ(r_c − r_r)``, order-free. A pairwise-only judge
is asked in both orders (``verdicts`` when it has it, as ``LMJudge`` does; else ``prefer`` twice):
``P(first ≻ second) = ½ (P_ab + 1 − P_ba)``. A pair is correct when ``P(chosen ≻ rejected) > ½``; exactly
½ counts ½ (as in :mod:`prefkit.eval.reward`).

**Accuracy** per file, with a Wilson 95% interval over its n pairs; a section's accuracy is the mean of
its files' accuracies weighted by their pairs (RewardBench's section score), i.e. the pooled accuracy,
with a Wilson interval over the pooled pairs; ``mean_of_files`` is the unweighted mean beside it.

**Bias scores** (:class:`JudgeBias`):

- *position consistency*: the fraction of pairs whose two orders pick the same response (the verdict
  follows the content, not the slot), and the *first-slot rate*: the fraction of the 2N asks won by the
  response shown first (½ = no position bias). Pointwise judges: not applicable (None).
- *length bias* = ``P(judge picks longer | gold prefers shorter) + P(judge picks longer | gold prefers
  longer) − 1`` (lengths in characters; equal lengths left out). A judge blind to length has 0, whatever
  its accuracy (its errors are the same in both strata); a judge that picks the longer response outright on
  a fraction L of the pairs and otherwise judges content has exactly L; −1 ≤ score ≤ 1. Equivalently: its
  error rate where gold prefers the shorter minus its error rate where gold prefers the longer. Chosen over
  a logistic coefficient because it is a rate a reader can check by counting, needs no fit, and is
  invariant to the gold length mix.
- *self-preference* (:func:`self_preference`): on pairs of the judge's own output against another
  model's, with gold ``P(own ≻ other)``: ``mean(judge picks own) − mean(gold)``. A judge that picks its own
  outright on a fraction s of pairs and otherwise agrees with gold scores ``s·(1 − gold rate)``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from prefkit.data.records import Message, Pair
from prefkit.errors import ConfigError, DataError
from prefkit.models.reward import RewardModel
from prefkit.online.judges import RewardModelJudge, completion_text, judge_name

PAIR_SUFFIXES = (".json", ".jsonl", ".jsonl.gz", ".parquet")
"""File endings read as pair files; anything else in a suite folder (README, sections.yaml) is ignored."""
OTHER_SECTION = "other"
"""The section of a file that no sub-folder or mapping names."""
LLMBAR_FIELDS = ("input", "output_1", "output_2", "label")
MTBENCH_FIELDS = ("conversation_a", "conversation_b", "winner")


# -- reading -------------------------------------------------------------------------------------------


def wilson_interval(correct: float, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion ``correct / n`` (95% by default); NaNs for n = 0."""
    if n <= 0:
        return math.nan, math.nan
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def _label(value: Any, where: str) -> int:
    try:
        label = int(str(value).strip())
    except ValueError:
        label = 0
    if label not in (1, 2):
        raise DataError(f"{where}: field 'label' must be 1 or 2, got {value!r}")
    return label


def llmbar_pair(row: Mapping[str, Any], where: str = "row") -> Pair:
    """One LLMBar row (``input``, ``output_1``, ``output_2``, ``label`` ∈ {1, 2}) as a :class:`Pair`;
    ``metadata["label"]`` keeps which output the file shows first."""
    missing = [k for k in LLMBAR_FIELDS if k not in row]
    if missing:
        raise DataError(f"{where}: missing field(s) {missing} of the LLMBar layout {list(LLMBAR_FIELDS)}")
    label = _label(row["label"], where)
    one, two = str(row["output_1"]), str(row["output_2"])
    chosen, rejected = (one, two) if label == 1 else (two, one)
    return Pair(prompt=str(row["input"]), chosen=chosen, rejected=rejected, metadata={"label": label})


def _messages(turns: Any, where: str) -> list[Message]:
    if not isinstance(turns, list) or not all(isinstance(t, Mapping) for t in turns):
        raise DataError(f"{where}: a conversation must be a list of {{role, content}} objects")
    return [Message(role=str(t["role"]), content=str(t["content"])) for t in turns]


def mtbench_pair(row: Mapping[str, Any], where: str = "row") -> Pair | None:
    """One MT-Bench human-judgement row (``conversation_a``, ``conversation_b``, ``winner``, optional
    ``turn``) as a :class:`Pair` (``model_a`` shown first), or None for a tie. The prompt is the
    conversation before the judged assistant turn (``turn``, default 1), shared by both sides."""
    winner = str(row["winner"])
    if winner not in ("model_a", "model_b"):
        return None
    a, b = _messages(row["conversation_a"], where), _messages(row["conversation_b"], where)
    turn = int(row.get("turn", 1) or 1)
    assistant = [i for i, m in enumerate(a) if m.role == "assistant"]
    if len(assistant) < turn:
        raise DataError(f"{where}: turn {turn} but conversation_a has {len(assistant)} assistant message(s)")
    cut = assistant[turn - 1]
    if cut >= len(b) or b[cut].role != "assistant":
        raise DataError(f"{where}: conversation_b has no assistant message for turn {turn}")
    prompt, one, two = tuple(a[:cut]), (a[cut],), (b[cut],)
    label = 1 if winner == "model_a" else 2
    chosen, rejected = (one, two) if label == 1 else (two, one)
    meta = {"label": label, **{k: row[k] for k in ("question_id", "model_a", "model_b", "judge") if k in row}}
    return Pair(prompt=prompt, chosen=chosen, rejected=rejected, metadata=meta)


def _rows(path: Path) -> list[dict[str, Any]] | None:
    """A JSON list or JSON lines file as dicts; None for other types."""
    name = path.name
    if name.endswith(".json"):
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, list):
            raise DataError(f"{path}: expected a JSON list of pairs")
        return data
    if name.endswith(".jsonl"):
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return None


def read_pair_file(path: str | Path, limit: int | None = None) -> list[Pair]:
    """The pairs of one file (LLMBar, MT-Bench human judgements or any prefkit pair layout), each with
    ``metadata["label"]``; the first ``limit`` only when given."""
    path = Path(path)
    rows = _rows(path)
    out: list[Pair] = []
    if rows and isinstance(rows[0], Mapping) and all(k in rows[0] for k in LLMBAR_FIELDS):
        out = [llmbar_pair(r, f"{path.name} row {i}") for i, r in enumerate(rows[:limit] if limit else rows)]
    elif rows and isinstance(rows[0], Mapping) and all(k in rows[0] for k in MTBENCH_FIELDS):
        for i, r in enumerate(rows):
            pair = mtbench_pair(r, f"{path.name} row {i}")
            if pair is not None:
                out.append(pair)
            if limit and len(out) == limit:
                break
    else:
        from prefkit.data.readers import load

        records = list(load(str(path)))
        bad = [type(r).__name__ for r in records if not isinstance(r, Pair)]
        if bad:
            raise DataError(f"{path}: a suite file holds pairs only, found {bad[0]}")
        records = records[:limit] if limit else records
        out = [Pair(**{**r.__dict__, "metadata": {**r.metadata, "label": 1 + i % 2}})
               for i, r in enumerate(records)]
    if not out:
        raise DataError(f"{path}: no pairs")
    return out


def shown(pair: Pair) -> tuple[Any, Any]:
    """The pair's two completions in the file's order (``metadata["label"]`` names the chosen one)."""
    return (pair.chosen, pair.rejected) if pair.metadata.get("label", 1) == 1 else (pair.rejected, pair.chosen)


# -- suite layout --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SuiteFile:
    """One subset of a suite: ``name`` (the file's stem), its ``section`` and ``path``."""

    name: str
    section: str
    path: Path


def _stem(path: Path) -> str:
    name = path.name
    for suffix in PAIR_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _section_map(sections: Mapping[str, Sequence[str]] | str | Path | None, directory: Path) -> dict[str, str]:
    if sections is None and (directory / "sections.yaml").is_file():
        sections = directory / "sections.yaml"
    if isinstance(sections, str | Path):
        import yaml

        sections = yaml.safe_load(Path(sections).read_text(encoding="utf-8")) or {}
    if sections is None:
        return {}
    if not isinstance(sections, Mapping):
        raise ConfigError("sections must map each section to a list of files")
    out: dict[str, str] = {}
    for section, files in sections.items():
        if isinstance(files, str) or not isinstance(files, Sequence):
            raise ConfigError(f"section {section!r}: expected a list of files, got {files!r}")
        for f in files:
            key = _stem(Path(str(f)))
            if key in out and out[key] != str(section):
                raise ConfigError(f"file {key!r} is in two sections: {out[key]!r} and {section!r}")
            out[key] = str(section)
    return out


def discover_suite(directory: str | Path,
                   sections: Mapping[str, Sequence[str]] | str | Path | None = None) -> list[SuiteFile]:
    """The pair files under ``directory`` (sorted by section, then name) with their sections."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"{directory}: not a folder")
    mapping = _section_map(sections, directory)
    files = []
    for path in sorted(p for p in directory.rglob("*") if p.is_file() and p.name.endswith(PAIR_SUFFIXES)):
        rel = path.relative_to(directory)
        folder = rel.parts[0] if len(rel.parts) > 1 else None
        files.append(SuiteFile(_stem(path), mapping.get(_stem(path)) or folder or OTHER_SECTION, path))
    if not files:
        raise DataError(f"{directory}: no pair files ({', '.join(PAIR_SUFFIXES)})")
    names = [f.name for f in files]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise DataError(f"{directory}: two files named {dup[0]!r}; names must be unique in a suite")
    unknown = sorted(set(mapping) - set(names))
    if unknown:
        raise ConfigError(f"sections name file(s) not in {directory}: {unknown}")
    return sorted(files, key=lambda f: (f.section, f.name))


# -- judging -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Judgements:
    """A judge's answers on N pairs.

    probs: (N,) ``P(chosen ≻ rejected)``.
    first: (N,) P(the response shown first wins), file order; None for a pointwise judge.
    second: (N,) the same with the order swapped; None for a pointwise judge.
    method: ``"pointwise"`` or ``"pairwise, both orders"``.
    """

    probs: Tensor
    first: Tensor | None
    second: Tensor | None
    method: str

    @property
    def correct(self) -> Tensor:
        """(N,) 1 when right, ½ at exactly ½, else 0."""
        return (self.probs > 0.5).float() + 0.5 * (self.probs == 0.5).float()

    @property
    def agree(self) -> Tensor | None:
        """(N,) bool: both orders pick the same response; None for a pointwise judge."""
        if self.first is None or self.second is None:
            return None
        return (self.first > 0.5) == (self.second < 0.5)


def as_judge(judge_or_model: Any, batch_size: int = 32) -> Any:
    """A judge: a prefkit ``RewardModel`` is wrapped in ``RewardModelJudge``; a judge is returned as is."""
    if isinstance(judge_or_model, RewardModel):
        return RewardModelJudge(judge_or_model, batch_size=batch_size)
    if not (getattr(judge_or_model, "pointwise", False) or getattr(judge_or_model, "pairwise", False)):
        raise ConfigError(f"{judge_name(judge_or_model)!r} is neither a RewardModel nor a judge "
                          "(pointwise or pairwise)")
    return judge_or_model


def judge_pairs(judge: Any, pairs: Sequence[Pair]) -> Judgements:
    """Ask ``judge`` about ``pairs`` (see the module docstring for the orders asked)."""
    judge = as_judge(judge)
    prompts = [p.prompt for p in pairs]
    one, two = zip(*(shown(p) for p in pairs), strict=True) if pairs else ((), ())
    first_is_chosen = torch.tensor([p.metadata.get("label", 1) == 1 for p in pairs], dtype=torch.bool)
    if getattr(judge, "pointwise", False):
        n = len(pairs)
        scores = judge.score(prompts * 2, [p.chosen for p in pairs] + [p.rejected for p in pairs]).float()
        return Judgements(torch.sigmoid(scores[:n] - scores[n:]), None, None, "pointwise")
    verdicts = getattr(judge, "verdicts", None)
    if callable(verdicts):
        v = verdicts(prompts, list(one), list(two))
        first, second = v.first.float(), v.second.float()
    else:
        first = judge.prefer(prompts, list(one), list(two)).float()
        second = judge.prefer(prompts, list(two), list(one)).float()
    p_one = 0.5 * (first + 1.0 - second)
    return Judgements(torch.where(first_is_chosen, p_one, 1.0 - p_one), first, second, "pairwise, both orders")


# -- bias scores ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JudgeBias:
    """Bias scores on a set of pairs (module docstring for the definitions).

    position_consistency: fraction of pairs whose two orders agree; None for pointwise judges.
    first_slot_rate: fraction of the 2N asks won by the first-shown response; None for pointwise judges.
    length_bias: ``P(picks longer | gold shorter) + P(picks longer | gold longer) − 1``; NaN without both.
    longer_pick_gold_shorter, longer_pick_gold_longer: the two rates.
    gold_longer_rate: fraction of the unequal-length pairs whose gold answer is the longer.
    n_gold_shorter, n_gold_longer: pairs in the two strata.
    """

    position_consistency: float | None
    first_slot_rate: float | None
    length_bias: float
    longer_pick_gold_shorter: float
    longer_pick_gold_longer: float
    gold_longer_rate: float
    n_gold_shorter: int
    n_gold_longer: int


def _mean(x: Tensor) -> float:
    return float(x.float().mean()) if x.numel() else math.nan


def judge_bias(pairs: Sequence[Pair], judgements: Judgements) -> JudgeBias:
    """Position and length bias of ``judgements`` on ``pairs`` (the two in the same order)."""
    if len(pairs) != len(judgements.probs):
        raise ValueError(f"{len(pairs)} pairs but {len(judgements.probs)} judgements")
    lc = torch.tensor([len(completion_text(p.chosen)) for p in pairs], dtype=torch.float32)
    lr = torch.tensor([len(completion_text(p.rejected)) for p in pairs], dtype=torch.float32)
    correct = judgements.correct
    gold_longer, gold_shorter = lc > lr, lc < lr
    picks_longer = torch.where(gold_longer, correct, 1.0 - correct)  # ½ stays ½
    shorter_rate, longer_rate = _mean(picks_longer[gold_shorter]), _mean(picks_longer[gold_longer])
    unequal = int(gold_longer.sum() + gold_shorter.sum())
    agree = judgements.agree
    consistency = _mean(agree) if agree is not None else None
    first_slot = None
    if judgements.first is not None and judgements.second is not None:
        both = torch.cat([judgements.first, judgements.second])
        first_slot = _mean((both > 0.5).float() + 0.5 * (both == 0.5).float())
    return JudgeBias(consistency, first_slot, shorter_rate + longer_rate - 1.0, shorter_rate, longer_rate,
                     int(gold_longer.sum()) / unequal if unequal else math.nan, int(gold_shorter.sum()),
                     int(gold_longer.sum()))


@dataclass(frozen=True)
class SelfPreference:
    """``bias = judge_rate − gold_rate`` on N pairs of the judge's own output against another's.

    judge_rate: mean of the judge's pick of its own output (1, ½ at exactly ½, 0).
    gold_rate: mean gold ``P(own ≻ other)``.
    interval: a normal-approximation 95% interval of the paired difference.
    """

    bias: float
    judge_rate: float
    gold_rate: float
    interval: tuple[float, float]
    n: int


def self_preference(judge: Any, prompts: Sequence[Any], own: Sequence[Any], other: Sequence[Any],
                    gold: Sequence[float] | Tensor) -> SelfPreference:
    """Self-preference of ``judge``: its rate of picking ``own`` (its own model's outputs) over ``other``,
    minus the gold rate ``gold`` (N,) = ``P(own ≻ other)`` (1 / 0 human labels, or vote shares).

    The judge is asked as in :func:`judge_pairs` (pointwise: ``σ(r_own − r_other)``; pairwise: both
    orders, own shown first then second), so position bias cancels."""
    gold_t = torch.as_tensor(gold, dtype=torch.float32)
    if not (len(prompts) == len(own) == len(other) == len(gold_t)) or not len(prompts):
        raise ValueError("self_preference needs equally many (>= 1) prompts, own, other and gold values")
    pairs = [Pair(prompt=p, chosen=a, rejected=b, metadata={"label": 1}) for p, a, b in zip(prompts, own, other)]
    picks = judge_pairs(judge, pairs).correct
    diff = picks - gold_t
    n = len(diff)
    half = 1.959964 * float(diff.std(unbiased=True)) / math.sqrt(n) if n > 1 else math.nan
    bias = float(diff.mean())
    return SelfPreference(bias, float(picks.mean()), float(gold_t.mean()), (bias - half, bias + half), n)


# -- the suite -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SubsetScore:
    """Accuracy of one file or section: ``accuracy`` = ``correct / n`` with its Wilson 95% interval.
    For a section, ``files`` lists its files and ``mean_of_files`` is their unweighted mean."""

    name: str
    section: str
    n: int
    correct: float
    accuracy: float
    low: float
    high: float
    position_consistency: float | None = None
    files: tuple[str, ...] = ()
    mean_of_files: float | None = None


def _score(name: str, section: str, correct: Tensor, agree: Tensor | None) -> SubsetScore:
    n, k = len(correct), float(correct.sum())
    low, high = wilson_interval(k, n)
    return SubsetScore(name, section, n, k, k / n if n else math.nan, low, high,
                       _mean(agree) if agree is not None else None)


@dataclass(frozen=True)
class SuiteResult:
    """What :func:`evaluate_suite` returns: per file, per section, overall, and the bias scores."""

    judge: str
    method: str
    files: list[SubsetScore]
    sections: list[SubsetScore]
    overall: SubsetScore
    bias: JudgeBias
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (NaN → None)."""
        def clean(x: Any) -> Any:
            if isinstance(x, float) and not math.isfinite(x):
                return None
            if isinstance(x, dict):
                return {k: clean(v) for k, v in x.items()}
            if isinstance(x, list | tuple):
                return [clean(v) for v in x]
            return x

        return clean(asdict(self))


def evaluate_suite(judge_or_reward_model: Any, directory: str | Path, *,
                   sections: Mapping[str, Sequence[str]] | str | Path | None = None, limit: int | None = None,
                   batch_size: int = 32) -> SuiteResult:
    """Accuracy of a judge or reward model on every file of a suite, per section and overall.

    ``sections``: a mapping section → files, or a YAML path of one (default: ``DIRECTORY/sections.yaml``,
    else sub-folders); ``limit``: the first N pairs of each file. The bias scores are over all pairs.
    """
    judge = as_judge(judge_or_reward_model, batch_size=batch_size)
    layout = discover_suite(directory, sections)
    per_file = [(f, read_pair_file(f.path, limit)) for f in layout]
    everything = [p for _, pairs in per_file for p in pairs]
    j = judge_pairs(judge, everything)
    correct, agree = j.correct, j.agree
    files, spans, start = [], {}, 0
    for f, pairs in per_file:
        span = slice(start, start + len(pairs))
        start += len(pairs)
        files.append(_score(f.name, f.section, correct[span], None if agree is None else agree[span]))
        spans.setdefault(f.section, []).append(span)
    sections_out = []
    for section, slices in spans.items():
        idx = torch.cat([torch.arange(s.start, s.stop) for s in slices])
        score = _score(section, section, correct[idx], None if agree is None else agree[idx])
        members = [s for s in files if s.section == section]
        sections_out.append(SubsetScore(**{**asdict(score), "files": tuple(m.name for m in members),
                                           "mean_of_files": sum(m.accuracy for m in members) / len(members)}))
    overall = _score("all", "all", correct, agree)
    return SuiteResult(judge_name(judge), j.method, files, sections_out, overall, judge_bias(everything, j))


def format_suite(result: SuiteResult) -> str:
    """The per-file and per-section tables and the bias scores, as text."""
    def row(s: SubsetScore, label: str) -> str:
        cons = "" if s.position_consistency is None else f"  {s.position_consistency:6.3f}"
        return f"{label:<40} {s.n:>5}  {s.accuracy:6.3f}  [{s.low:.3f}, {s.high:.3f}]{cons}"

    pos = result.overall.position_consistency is not None
    head = f"{'':<40} {'pairs':>5}  {'acc':>6}  {'95% interval':<14}" + ("  consist" if pos else "")
    lines = [f"judge: {result.judge} ({result.method})", "", "per file", head]
    lines += [row(s, f"{s.section}/{s.name}") for s in result.files]
    lines += ["", "per section (weighted by pairs)", head]
    lines += [row(s, s.name) for s in result.sections]
    lines += [row(result.overall, "all")]
    b = result.bias
    lines += ["", "bias"]
    if b.position_consistency is not None:
        lines.append(f"  position consistency {b.position_consistency:.3f}   first-slot rate {b.first_slot_rate:.3f}")
    lines.append(f"  length bias {b.length_bias:+.3f}   (picks longer: {b.longer_pick_gold_shorter:.3f} where gold is "
                 f"shorter, n={b.n_gold_shorter}; {b.longer_pick_gold_longer:.3f} where gold is longer, "
                 f"n={b.n_gold_longer})")
    return "\n".join(lines)


__all__ = ["SuiteFile", "Judgements", "JudgeBias", "SelfPreference", "SubsetScore", "SuiteResult",
           "wilson_interval", "llmbar_pair", "mtbench_pair", "read_pair_file", "shown", "discover_suite",
           "as_judge", "judge_pairs", "judge_bias", "self_preference", "evaluate_suite", "format_suite",
           "OTHER_SECTION", "PAIR_SUFFIXES"]
