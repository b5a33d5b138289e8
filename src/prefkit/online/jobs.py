"""An online job from one YAML file: what ``prefkit online --config FILE`` runs (issue 12, item 4).

The file holds the usual run-config sections (``model``, ``tokenizer`` via ``model.tokenizer``, ``lora``,
``loss``, ``train``, ``encode``, ``output``; ``prefkit.train.config``) plus three of its own:

- ``online``: the :class:`~prefkit.online.config.OnlineConfig` options (``rounds``, ``sampling`` ...);
- ``prompts``: where the prompts come from (:class:`PromptsConfig`);
- ``judge``: who labels the samples (:class:`JudgeConfig`).

:func:`load_job` reads and checks all of it, and the files it names, before any model loads; every
mistake is one :class:`~prefkit.errors.ConfigError` line naming the key. :func:`read_prompts` and
:func:`build_judge` turn the two sections into what :func:`~prefkit.online.loop.run_online` takes;
:func:`run_job` loads the policy and runs the loop.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from prefkit.data.readers import FORMATS, load
from prefkit.data.records import Message, Prompt
from prefkit.data.sources import open_source
from prefkit.errors import ConfigError, DataError, check_known_keys, did_you_mean
from prefkit.models import load as model_load
from prefkit.models.reward import RewardModel
from prefkit.online.algorithms import make_algorithm
from prefkit.online.config import OnlineConfig
from prefkit.online.judges import (
    DEFAULT_TEMPLATE,
    FunctionJudge,
    Judge,
    LMJudge,
    RewardModelJudge,
    exact_match_judge,
    regex_judge,
)
from prefkit.online.loop import check_strategy, run_online
from prefkit.online.rewards import RewardComponent, RewardMix, check_component, check_names
from prefkit.online.sampler import Processes
from prefkit.train.config import TOY, RunConfig, from_dict, load_config, merge, parse_overrides, read_yaml
from prefkit.train.run import load_policy
from prefkit.train.trl import apply_trl_keys

JOB_SECTIONS = ("online", "prompts", "judge")
"""The sections an online job adds to a run config."""
NOT_ONLINE = {"data": "an online job samples its own data; give the prompts in the prompts: section",
              "reward": "an online job trains a policy; train reward models with prefkit rm train"}
"""Run-config sections an online job refuses, with the reason."""
BASE: dict[str, Any] = {"output": {"dir": "runs/online"}}
"""What an online job changes in the run-config defaults."""


@dataclass(frozen=True)
class PromptsConfig:
    """Where the prompts come from (the ``prompts:`` section)."""

    path: str = ""
    """A data file read with ``prefkit.data.load`` (``.jsonl``, ``.json``, ``.csv``, ``.parquet``, any record
    layout; each record's prompt is taken, duplicates dropped, order kept), a file of rows with only a
    ``prompt`` column, or a ``.txt`` file with one prompt per line (blank lines skipped)."""
    format: str = "auto"
    """``auto``: ``.txt`` is text, anything else a data file; ``text``; or a ``prefkit.data.load`` format."""
    columns: dict[str, str] = field(default_factory=dict)
    """Column renames for data files: our field name -> your column name (``{prompt: question}``)."""
    limit: int | None = None
    """Use only the first ``limit`` distinct prompts."""

    def __post_init__(self) -> None:
        if self.format not in ("text", *FORMATS):
            raise ConfigError(f"prompts.format {self.format!r} is not one of {['text', *FORMATS]}"
                              f"{did_you_mean(self.format, ('text', *FORMATS))}")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"prompts.limit must be >= 1; got {self.limit}")


@dataclass(frozen=True)
class JudgeConfig:
    """Who labels the samples (the ``judge:`` section): set exactly one of ``function`` / ``prefer`` (both
    may be set together), ``regex``, ``exact_match``, ``reward_model``, ``lm``, ``components``."""

    function: str | None = None
    """``module.path:callable``, a score function ``(prompt, completion) -> float`` (pointwise), imported
    with the config file's folder on the Python path: it runs your code."""
    prefer: str | None = None
    """``module.path:callable``, a pairwise function ``(prompt, a, b) -> P(a ≻ b)`` in [0, 1]."""
    regex: str | None = None
    """A regular expression: score 1 when the completion matches (``re.search``), else 0."""
    fullmatch: bool = False
    """With ``regex``: the whole completion must match (``re.fullmatch``)."""
    exact_match: dict[str, Any] | str | None = None
    """Answers: a mapping ``prompt -> answer`` (or a list of accepted answers), or a ``.json``/``.yaml``
    file holding one; score 1 when the completion equals the answer (whitespace collapsed), else 0."""
    reward_model: str | None = None
    """A prefkit reward-model folder (``prefkit rm train`` writes ``<output.dir>/model``)."""
    lm: str | None = None
    """A causal LM (folder, ``.gguf`` file or hub id) asked which response is better, in both orders."""
    tokenizer: str | None = None
    """With ``lm``: its tokenizer, when not beside the model."""
    template: str | None = None
    """With ``lm``: the judge prompt (fields ``{question}``, ``{response_a}``, ``{response_b}``,
    ``{label_a}``, ``{label_b}``); unset: ``prefkit.online.judges.DEFAULT_TEMPLATE``."""
    batch_size: int = 8
    """With ``reward_model`` or ``lm``: judged sequences per forward pass."""
    components: list[dict[str, Any]] | None = None
    """Several pointwise rewards as one judge (``prefkit.online.rewards.RewardMix``): a list of mappings,
    each ``name`` plus one judge's keys (``function``, ``regex``, ``exact_match``, ``reward_model``, with
    their options) and either ``weight`` (a fixed weight, default 1) or ``target`` with ``sense`` (``ge`` or
    ``le``, or ``eq``; the component's per-round mean kept there by a Lagrange multiplier, initial value
    ``multiplier``, default 0)."""
    lagrange_lr: float = 0.05
    """With ``components``: the multipliers' step size η per round."""
    max_multiplier: float | None = None
    """With ``components``: a cap on every multiplier."""
    whiten: bool = False
    """With ``components``: whiten the mixed rewards of each judged batch (zero mean, unit variance)."""
    clip: tuple[float | None, float | None] | None = None
    """With ``components``: ``[low, high]`` bounds on the mixed rewards (``null``: no bound on that side)."""
    par_references: dict[str, Any] | str | None = None
    """With ``components``: PAR shaping ``σ(r − r_ref)`` against a reference response per prompt: a mapping
    ``prompt -> reference response``, or a ``.json``/``.yaml`` file holding one."""
    combine: Literal["weighted", "maxmin"] = "weighted"
    """With ``components``: ``weighted`` (fixed weights) or ``maxmin``: the free components are group rewards
    and each round trains on the worst-off group's (MaxMin-RLHF's egalitarian objective)."""
    temperature: float = 0.0
    """With ``combine: maxmin``: 0 trains on the worst group only; τ > 0 weights the groups softmax(−mean/τ)."""

    def __post_init__(self) -> None:
        kinds = [k for k in ("function", "regex", "exact_match", "reward_model", "lm", "components")
                 if getattr(self, k) is not None or (k == "function" and self.prefer is not None)]
        if len(kinds) != 1:
            what = "none" if not kinds else " and ".join(kinds)
            raise ConfigError(f"judge: set exactly one of function (and/or prefer), regex, exact_match, "
                              f"reward_model, lm, components; got {what}")
        if self.components is not None:
            component_configs(self)  # every component's keys and values, before any model loads
        else:
            for key in MIX_OPTIONS:
                if getattr(self, key) != getattr(JudgeConfig, key):
                    raise ConfigError(f"judge.{key} applies to judge.components only")
        extras = {"fullmatch": ("regex", self.fullmatch), "tokenizer": ("lm", self.tokenizer),
                  "template": ("lm", self.template)}
        for key, (needs, value) in extras.items():
            if value and getattr(self, needs) is None:
                raise ConfigError(f"judge.{key} applies to judge.{needs} only")
        if self.batch_size < 1:
            raise ConfigError(f"judge.batch_size must be >= 1; got {self.batch_size}")
        if not 0.0 <= self.temperature < math.inf:
            raise ConfigError(f"judge.temperature must be finite and >= 0; got {self.temperature}")
        if self.temperature and self.combine != "maxmin":
            raise ConfigError("judge.temperature applies to judge.combine: maxmin only")
        if self.combine == "maxmin" and sum(c.target is None for c in component_configs(self)) < 2:
            raise ConfigError("judge.combine: maxmin needs at least 2 components without a target (one reward "
                              "per group)")


MIX_OPTIONS = ("lagrange_lr", "max_multiplier", "whiten", "clip", "par_references", "combine", "temperature")
"""``judge:`` keys of a reward mix as a whole (``components``)."""
COMPONENT_KEYS = ("name", "weight", "target", "sense", "multiplier")
"""A component's own keys; its other keys are one judge's (:class:`JudgeConfig` but ``components``)."""


@dataclass(frozen=True)
class ComponentConfig:
    """One checked entry of ``judge.components`` (:class:`~prefkit.online.rewards.RewardComponent`)."""

    name: str
    """Its name in metrics (``rewards/<name>/mean``)."""
    weight: float | None = None
    """A fixed weight (unset: 1); not with ``target``."""
    target: float | None = None
    """A constraint: the component's per-round mean is kept at ``target`` (``sense``)."""
    sense: Literal["ge", "le", "eq"] = "ge"
    """With ``target``: ``ge`` (mean ≥ target), ``le`` (mean ≤ target) or ``eq``."""
    multiplier: float = 0.0
    """With ``target``: the initial Lagrange multiplier."""
    judge: JudgeConfig | None = None
    """The component's judge (its other keys); set by :func:`component_configs`."""


def component_configs(config: JudgeConfig) -> list[ComponentConfig]:
    """The checked ``judge.components`` of ``config``: unknown keys name the nearest one, each component's
    judge keys are checked as a ``judge:`` section of their own."""
    judge_keys = [f.name for f in dataclasses.fields(JudgeConfig) if f.name not in ("components", *MIX_OPTIONS)]
    out: list[ComponentConfig] = []
    for i, entry in enumerate(config.components or []):
        key = f"judge.components[{i}]"
        if not isinstance(entry, Mapping):
            raise ConfigError(f"{key}: expected a mapping (name, a judge, weight or target), got {entry!r}")
        check_known_keys(entry, [*COMPONENT_KEYS, *judge_keys], f"{key} option")
        if "name" not in entry:
            raise ConfigError(f"{key}: no name; give each component a name (its metrics are rewards/<name>/...)")
        own = from_dict(ComponentConfig, {k: v for k, v in entry.items() if k in COMPONENT_KEYS}, f"{key}.")
        judge = from_dict(JudgeConfig, {k: v for k, v in entry.items() if k not in COMPONENT_KEYS}, f"{key}.")
        try:
            check_component(own.name, weight=own.weight, target=own.target, sense=own.sense,
                            multiplier=own.multiplier)
        except ConfigError as err:
            raise ConfigError(f"{key}: {err}") from None
        out.append(dataclasses.replace(own, judge=judge))
    try:
        check_names([c.name for c in out])
    except ConfigError as err:
        raise ConfigError(f"judge.components: {err}") from None
    return out


@dataclass
class OnlineJob:
    """A checked online job: the trainer's run config, the loop's settings, prompts and judge sections."""

    run: RunConfig
    online: OnlineConfig
    prompts: PromptsConfig
    judge: JudgeConfig
    folder: Path
    """The config file's folder (on the Python path when judge functions are imported)."""


def _section(data: Mapping[str, Any], name: str) -> dict[str, Any]:
    value = data.get(name)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{name}: expected a mapping, got {value!r}")
    return dict(value)


def _from_section(cls: type, data: Mapping[str, Any], name: str) -> Any:
    section = _section(data, name)
    check_known_keys(section, [f.name for f in dataclasses.fields(cls)], f"{name} option")
    return from_dict(cls, section, f"{name}.")


def load_job(path: str | Path, overrides: Sequence[str] = ()) -> OnlineJob:
    """Defaults <- YAML file <- ``key=value`` overrides (any section: ``online.rounds=3``,
    ``judge.function=...``), checked before any model loads: keys, values, the loss against the algorithm,
    the policy's model files and the prompts file (:func:`build_judge` checks the judge's own)."""
    data = merge(read_yaml(path), parse_overrides(overrides))
    valid = [f.name for f in dataclasses.fields(RunConfig) if f.name not in NOT_ONLINE] + list(JOB_SECTIONS)
    for key in data:
        if key in NOT_ONLINE:
            raise ConfigError(f"{key}: {NOT_ONLINE[key]}")
        check_known_keys([key], valid, "config section")
    run_data = apply_trl_keys({k: v for k, v in data.items() if k not in JOB_SECTIONS})
    run = load_config(None, (), base=merge(BASE, run_data))
    if run.model.path == TOY:
        raise ConfigError("model.path: toy (the toy world) has no online job; name a model folder, .gguf file or hub id")
    if run.reference.path:
        raise ConfigError("reference.path: the online reference is the policy before round 0 (or refreshed, "
                          "online.reference); unset it")
    if run.output.overwrite:
        raise ConfigError("output.overwrite: an online run never clears a folder; choose a new output.dir")
    online = OnlineConfig.from_dict(_section(data, "online"))
    make_algorithm(online).check(run, online)
    prompts = _from_section(PromptsConfig, data, "prompts")
    if not prompts.path:
        raise ConfigError("prompts.path: no prompts; name a data file or a .txt file with one prompt per line")
    if not Path(prompts.path).expanduser().is_file():
        raise ConfigError(f"prompts.path {prompts.path!r} is not a file")
    judge = _from_section(JudgeConfig, data, "judge")
    return OnlineJob(run, online, prompts, judge, Path(path).resolve().parent)


# -- prompts ---------------------------------------------------------------------------------------------

_LAYOUT_FIELDS = frozenset({"chosen", "rejected", "completion", "response", "responses", "completions", "label",
                            "desirable", "score", "scores", "ranks", "attributes"})


def _prompt_only_rows(path: Path, columns: Mapping[str, str]) -> list[tuple[str, Any]] | None:
    """``(where, prompt value)`` per row when the file's rows carry a prompt and no record layout (a prompts
    file such as ``{"prompt": ...}`` lines); None when its first row is a record (the first row decides)."""
    name, rows = open_source(path)
    ours = {theirs: mine for mine, theirs in columns.items()}
    out = []
    for i, (loc, row) in enumerate(rows):
        if isinstance(row, DataError):
            raise DataError(row.message, source=name, line=loc[1] if loc[0] == "line" else None, reason=row.reason)
        keys = {ours.get(c, "prompt" if c == "instruction" else c) for c, v in row.items() if v is not None}
        if i == 0 and keys & _LAYOUT_FIELDS:
            return None
        where = f"{name} {loc[0]} {loc[1]}"
        if "prompt" not in keys:
            raise DataError(f"{where}: no 'prompt' column (map yours with prompts.columns)", reason="missing_column")
        col = next(c for c in row if ours.get(c, "prompt" if c == "instruction" else c) == "prompt")
        out.append((where, row[col]))
    return out


def _as_prompt(value: Any, where: str) -> Prompt:
    """A prompt from a prompts-only row: non-empty text, or a list of ``{role, content}`` messages."""
    if isinstance(value, str) and value.strip():
        return value
    if isinstance(value, list) and value and all(isinstance(m, Mapping) for m in value):
        try:
            return tuple(Message(m.get("role"), m.get("content")) for m in value)
        except DataError as err:
            raise DataError(f"{where}: prompt: {err}", reason=err.reason) from None
    raise DataError(f"{where}: prompt must be non-empty text or a list of chat messages, got {value!r:.60}",
                    reason="wrong_type")


def read_prompts(config: PromptsConfig) -> list[Prompt]:
    """The distinct prompts of ``config.path``, in file order, at most ``config.limit``."""
    path = Path(config.path).expanduser()
    text = config.format == "text" or (config.format == "auto" and path.suffix == ".txt")
    if text:
        if config.columns:
            raise ConfigError("prompts.columns applies to data files, not to a .txt file of prompts")
        try:
            found: list[Prompt] = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
        except UnicodeDecodeError as err:
            raise DataError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})", reason="encoding") from None
    else:
        rows = _prompt_only_rows(path, config.columns) if config.format == "auto" else None
        if rows is not None:
            found = [_as_prompt(value, where) for where, value in rows]
        else:
            found = [r.prompt for r in load(path, format=config.format, columns=config.columns or None)]
    prompts = list(dict.fromkeys(p for p in found if p))  # distinct, first occurrence kept
    if not prompts:
        raise DataError(f"{path}: no prompts", reason="empty_file")
    return prompts[:config.limit] if config.limit else prompts


# -- judges ----------------------------------------------------------------------------------------------


def import_callable(spec: str, key: str, folder: Path) -> Callable[..., Any]:
    """The callable ``spec`` (``module.path:name``) names, imported with ``folder`` first on the Python path
    (restored after); one ConfigError line naming ``key`` when it cannot be found."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"{key}: expected 'module.path:callable', got {spec!r}")
    added = str(folder) not in sys.path
    if added:
        sys.path.insert(0, str(folder))
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        raise ConfigError(f"{key}: no module {err.name!r} (looked in {folder} and the Python path)") from None
    except Exception as err:  # the user's module failed while importing: one line, its own message
        raise ConfigError(f"{key}: importing {module_name!r} failed ({type(err).__name__}: {err})") from None
    finally:
        if added:
            sys.path.remove(str(folder))
    fn = module
    for part in attr.split("."):
        if not hasattr(fn, part):
            names = [n for n in dir(fn) if not n.startswith("_")]
            raise ConfigError(f"{key}: {module_name!r} has no {part!r}{did_you_mean(part, names)}")
        fn = getattr(fn, part)
    if not callable(fn):
        raise ConfigError(f"{key}: {spec!r} is not callable")
    return fn


def _answers(value: dict[str, Any] | str, folder: Path, key: str = "judge.exact_match",
             what: str = "answer") -> dict[str, Any]:
    if isinstance(value, Mapping):
        return dict(value)
    path = Path(value).expanduser()
    if not path.is_file():
        raise ConfigError(f"{key} {value!r}: not a mapping of {what}s or a .json/.yaml file")
    try:
        answers = yaml.safe_load(path.read_text(encoding="utf-8"))  # JSON is YAML
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ConfigError(f"{key} {value!r}: unreadable ({' '.join(str(err).split())})") from None
    if not isinstance(answers, Mapping):
        raise ConfigError(f"{key} {value!r}: expected a mapping prompt -> {what}")
    return dict(answers)


def build_judge(config: JudgeConfig, folder: Path, key: str = "judge") -> Judge:
    """The judge ``config`` describes (models load here); ``folder``: where judge modules are looked for;
    ``key``: the section's name in messages (a component's is ``judge.components[i]``)."""
    if config.components is not None:
        parts = [RewardComponent(c.name, build_judge(c.judge, folder, f"{key}.components[{i}]"), weight=c.weight,
                                 target=c.target, sense=c.sense, multiplier=c.multiplier)
                 for i, c in enumerate(component_configs(config)) if c.judge is not None]
        refs = _answers(config.par_references, folder, f"{key}.par_references", "reference response") \
            if config.par_references is not None else None
        return RewardMix(parts, lagrange_lr=config.lagrange_lr, max_multiplier=config.max_multiplier,
                         par=refs is not None, references=refs, whiten=config.whiten, clip=config.clip,
                         combine=config.combine, temperature=config.temperature)
    if config.function is not None or config.prefer is not None:
        score = import_callable(config.function, f"{key}.function", folder) if config.function else None
        prefer = import_callable(config.prefer, f"{key}.prefer", folder) if config.prefer else None
        return FunctionJudge(score, prefer)
    if config.regex is not None:
        try:
            return regex_judge(config.regex, fullmatch=config.fullmatch)
        except re.error as err:
            raise ConfigError(f"{key}.regex {config.regex!r}: {err}") from None
    if config.exact_match is not None:
        return exact_match_judge(_answers(config.exact_match, folder, f"{key}.exact_match"))
    if config.reward_model is not None:
        return RewardModelJudge(RewardModel.load(config.reward_model), batch_size=config.batch_size)
    assert config.lm is not None  # JudgeConfig allows exactly one kind
    model_load.check_model_path(config.lm, f"{key}.lm")
    tokenizer = model_load.load_tokenizer(config.tokenizer or config.lm)
    model = model_load.frozen(model_load.load_model(config.lm))
    return LMJudge(model, tokenizer, template=config.template or DEFAULT_TEMPLATE, batch_size=config.batch_size)


# -- the job ---------------------------------------------------------------------------------------------


def check_out_dir(job: OnlineJob, resume: bool) -> None:
    """Before any model loads: a fresh run needs ``output.dir`` absent or empty (``run_online`` checks a
    resumed one: the same run, from its ``online.json``)."""
    out = Path(job.run.output.dir)
    if not resume and out.is_dir() and any(out.iterdir()):
        raise ConfigError(f"output.dir {str(out)!r} is not empty; pass --resume to continue the run there, "
                          "or choose a new output.dir")


def run_job(job: OnlineJob, *, resume: bool = False) -> list[dict[str, Any]]:
    """Read the prompts, build the judge, load the policy (LoRA per ``lora``), run the loop into
    ``output.dir``; with ``output.save_model``, save the final policy and tokenizer to ``<output.dir>/model``.
    Returns the loop's per-round metrics."""
    check_out_dir(job, resume)
    check_strategy(job.run)
    prompts = read_prompts(job.prompts)
    judge = build_judge(job.judge, job.folder)
    policy, tokenizer = load_policy(job.run)
    out = Path(job.run.output.dir)
    history = run_online(policy, tokenizer, prompts, judge, job.run, job.online, out, resume=resume)
    if job.run.output.save_model and Processes.current().main:  # several processes: one writer
        with model_load.quiet_loading():  # no "Writing model shards" bar
            policy.save_pretrained(out / "model")
        tokenizer.save_pretrained(out / "model")
    return history


__all__ = ["OnlineJob", "PromptsConfig", "JudgeConfig", "ComponentConfig", "component_configs", "load_job", "read_prompts", "build_judge",
           "import_callable", "check_out_dir", "run_job"]
