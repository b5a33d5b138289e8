"""A run report: one self-contained static HTML page for a prefkit run folder (``prefkit report``).

The page needs no server and fetches nothing: CSS is inline, plots are PNG images embedded as base64
``data:`` URIs (matplotlib ``Figure``, no pyplot, no global state), there is no JavaScript, and every
piece of run text (config values, prompts, completions) is HTML-escaped. :func:`build_report` only reads
the run folder; :func:`write_report_page` writes one file, the page (default ``<run_dir>/report.html``),
and replaces an existing file only when it is an earlier report page.

What a run folder holds decides what the page shows (:func:`find_stages`):

- **a training run** (``prefkit train``, ``prefkit rm train``; ``config.yaml``, ``metrics.jsonl``): the
  curves (loss, preference accuracy, reward margins, chosen and rejected rewards, log-probs, KL where
  logged, gradient norm, learning rate; train solid, ``eval/`` dashed); the evaluation lines (``eval/*``)
  as a table per evaluation step; JSON files and PNG plots under ``eval/`` (``rm_eval.json``, the
  reliability diagram); the last logged training and evaluation values; the config as tables per section;
- **an online run** (``prefkit online``; ``online.json``, ``metrics.jsonl`` with one line per round,
  ``rounds/NNNN.jsonl``): a table with one row per round; per-round curves; a few judged completions per
  round (the first prompts of the round, their samples best first, with the judge's score); the config
  from ``online.json``;
- **a folder of stages** (``prefkit demo``: ``sft/`` and ``preference/`` training runs under one folder,
  with ``results.json`` and ``plots/``): the folder's JSON summaries (a ``before``/``after`` file as a
  side-by-side table) and PNGs, then one part per stage as above.

Anything else is one :class:`~prefkit.errors.PrefkitError` line.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

import prefkit
from prefkit.errors import PrefkitError
from prefkit.online.state import IDENTITY_FILE
from prefkit.train.metrics import read_metrics
from prefkit.train.rundir import MARKER, read_marker

GENERATOR = "prefkit report"
"""The ``<meta name="generator">`` of a report page; :func:`write_report_page` overwrites only such files."""
SAMPLE_PROMPTS = 2
"""Prompts shown per online round (the round's first ones, by prompt index)."""
SAMPLES_PER_PROMPT = 4
"""Completions shown per prompt, best score first."""
_TEXT_LIMIT = 400  # characters of a prompt or completion shown; the rest is cut with "…"

# title, y label, keys. Train runs: TRL's metric names (``prefkit.train.metrics``); eval/ variants are
# drawn beside them. KL: any key whose last part is ``kl`` (``kl``, ``rewards/kl``, ``objective/kl``).
TRAIN_CURVES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("Loss", "loss", ("loss",)),
    ("Preference accuracy (reward chosen > rejected)", "accuracy", ("rewards/accuracies",)),
    ("Reward margin (chosen − rejected)", "reward margin", ("rewards/margins",)),
    ("Rewards of chosen and rejected", "reward", ("rewards/chosen", "rewards/rejected")),
    ("Completion log-probs, summed over tokens", "log π(completion | prompt)", ("logps/chosen", "logps/rejected")),
    ("KL", "KL estimate", ("kl",)),
    ("Gradient norm", "grad norm", ("grad_norm",)),
    ("Learning rate", "learning rate", ("lr",)),
)
ONLINE_CURVES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("Judge score of the policy samples", "score", ("objective/scores", "objective/rlhf_reward")),
    ("KL(π ‖ π_ref), k1 estimate", "KL", ("objective/kl",)),
    ("Win rate against the reference", "win rate", ("objective/win_rate_vs_reference",)),
    ("Training loss (last step of the round)", "loss", ("train/loss",)),
    ("Preference accuracy (last step of the round)", "accuracy", ("train/rewards/accuracies",)),
    ("Completion length", "tokens", ("completions/mean_length",)),
    ("Sequence entropy", "−log π(y | x)", ("objective/entropy",)),
)
ROUND_COLUMNS: tuple[tuple[str, str], ...] = (  # per-round table: key, header
    ("records", "records"), ("ties_skipped", "ties"), ("objective/scores", "score"),
    ("objective/scores_std", "score std"), ("objective/kl", "KL"),
    ("objective/win_rate_vs_reference", "win rate vs ref"), ("completions/mean_length", "mean length"),
    ("completions/clipped_ratio", "clipped"), ("train/loss", "train loss"),
    ("train/rewards/accuracies", "train accuracy"), ("seconds", "seconds"),
)
_KL = re.compile(r"(^|/)kl$")


@dataclass
class Stage:
    """One run inside the report: the folder itself, or a stage folder of a demo."""

    name: str
    path: Path
    kind: str
    """``train`` (config.yaml / metrics.jsonl) or ``online`` (online.json)."""


# -- reading the folder ---------------------------------------------------------------------------------


def _stage_kind(path: Path) -> str | None:
    if (path / IDENTITY_FILE).is_file():
        return "online"
    if (path / "config.yaml").is_file() or (path / "metrics.jsonl").is_file():
        return "train"
    return None


def _started(stage: Stage) -> tuple[str, int, str]:
    """A stage's place in run order: its marker's ``created`` (seconds), then when its first file was written
    (``config.yaml`` is written as training starts), then its name."""
    first = next((p for p in (stage.path / "config.yaml", stage.path / IDENTITY_FILE, stage.path / "metrics.jsonl")
                  if p.is_file()), None)
    return (str((read_marker(stage.path) or {}).get("created", "")), first.stat().st_mtime_ns if first else 0,
            stage.name)


def find_stages(run_dir: str | Path) -> list[Stage]:
    """The runs a report of ``run_dir`` shows: the folder itself when it is a run, else its stage folders
    (for a folder marked as prefkit's, the sub-folders its marker lists that are runs, in the order they
    were started: :func:`_started`). One error line when there are none."""
    path = Path(run_dir)
    if not path.exists():
        raise PrefkitError(f"{path}: no such folder; pass a prefkit run folder (output.dir of a run)")
    if not path.is_dir():
        raise PrefkitError(f"{path} is a file, not a folder; pass a prefkit run folder (output.dir of a run)")
    kind = _stage_kind(path)
    if kind is not None:
        return [Stage(path.resolve().name, path, kind)]
    listed = (read_marker(path) or {}).get("entries", [])  # only a marked folder's own entries are stages
    children = [path / name for name in listed if (path / name).is_dir() and not (path / name).is_symlink()]
    stages = [Stage(p.name, p, k) for p in children if (k := _stage_kind(p)) is not None]
    stages.sort(key=_started)
    if not stages:
        raise PrefkitError(f"{path} is not a prefkit run folder (no config.yaml, metrics.jsonl or {IDENTITY_FILE}, "
                           f"and no {MARKER} listing stage folders that hold them); pass the output.dir of a run")
    return stages


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8", errors="replace"))
    except (OSError, ValueError, RecursionError) as err:
        raise PrefkitError(f"{path}: not readable as JSON ({err}); fix or remove it") from None


def _read_config(stage: Stage) -> dict[str, Any]:
    """The stage's config flattened to dotted keys (``train.lr``): ``config.yaml``, or ``online.json``."""
    if stage.kind == "online":
        data = _read_json(stage.path / IDENTITY_FILE)
        return dict(data) if isinstance(data, dict) else {}
    path = stage.path / "config.yaml"
    if not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8", errors="replace"))
    except yaml.YAMLError as err:
        raise PrefkitError(f"{path}: not readable as YAML ({str(err).splitlines()[0]}); fix or remove it") from None
    return _flatten(data) if isinstance(data, dict) else {}


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping) and value:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _read_rounds(path: Path) -> dict[int, list[dict[str, Any]]]:
    """``rounds/NNNN.jsonl`` as {round: rows}; lines that are not JSON objects are left out."""
    out: dict[int, list[dict[str, Any]]] = {}
    for file in sorted((path / "rounds").glob("[0-9]*.jsonl")):
        if not file.stem.isdigit():
            continue
        rows = []
        for line in file.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict):
                rows.append(row)
        out[int(file.stem)] = rows
    return out


# -- HTML pieces ----------------------------------------------------------------------------------------


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _fmt(value: Any) -> str:
    """A cell's text: floats to 4 significant digits, lists and dicts as compact JSON, None as —."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "true" if value else "false"
    if value == "":
        return '""'
    if isinstance(value, float):
        return "—" if math.isnan(value) else f"{value:.4g}"
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, ensure_ascii=False, default=str)
    return str(value)


def _cut(text: str, limit: int = _TEXT_LIMIT) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]], cls: str = "") -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f'<td class="{"num" if _number(c) else "txt"}">{_e(_fmt(c))}</td>'
                                    for c in row) + "</tr>" for row in rows)
    return f'<table class="{_e(cls)}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _png(data: bytes, alt: str) -> str:
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode("ascii")}">'


def _figure_png(title: str, xlabel: str, ylabel: str, series: Mapping[str, Sequence[tuple[float, float]]],
                integer_x: bool = False) -> bytes:
    """One line plot as PNG bytes: train series solid, ``eval/`` series dashed with markers."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.6, 3.3), dpi=100)
    ax = fig.subplots()
    bases = list(dict.fromkeys(label.rsplit(" (", 1)[0] for label in series))  # train and eval share a color
    for label, pts in series.items():
        xs, ys = zip(*pts, strict=True)
        dashed = label.endswith("(eval)")
        ax.plot(xs, ys, label=label, color=f"C{bases.index(label.rsplit(' (', 1)[0])}",
                linestyle="--" if dashed else "-", marker="o" if dashed or len(xs) < 12 else None, markersize=3)
    if integer_x:
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if len(series) > 1:
        ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})  # no matplotlib URL in the file
    return buf.getvalue()


def _curves(rows: Sequence[Mapping[str, Any]], specs: Sequence[tuple[str, str, tuple[str, ...]]],
            x_key: str, xlabel: str, prefixes: Sequence[str]) -> list[str]:
    """The ``<figure>`` of every spec with at least one finite point (KL: any key ending in ``kl``)."""
    keys_seen = {k for r in rows for k in r}
    out = []
    for title, ylabel, keys in specs:
        wanted = sorted(k for k in keys_seen if _KL.search(k) and not k.startswith("eval/")) \
            if keys == ("kl",) else list(keys)
        series: dict[str, list[tuple[float, float]]] = {}
        for key in wanted:
            for prefix in prefixes:
                pts = [(float(r[x_key]), float(r[prefix + key])) for r in rows
                       if _number(r.get(x_key)) and _number(r.get(prefix + key)) and math.isfinite(r[prefix + key])]
                if pts:
                    label = f"{key} (eval)" if prefix == "eval/" else (f"{key} (train)" if len(prefixes) > 1 else key)
                    series[label] = pts
        if series:
            png = _figure_png(title, xlabel, ylabel, series, integer_x=x_key == "round")
            out.append(f"<figure>{_png(png, title)}<figcaption>{_e(title)}</figcaption></figure>")
    return out


def _config_section(config: Mapping[str, Any], anchor: str) -> str:
    """The config as one small table per top-level section, laid out side by side."""
    if not config:
        return ""
    groups: dict[str, list[tuple[str, Any]]] = {}
    for key, value in config.items():
        head, _, rest = key.partition(".")
        if key.startswith("run.") and "." in rest:  # online.json: run.<section>.<key>
            head, _, rest = rest.partition(".")
            head = f"run.{head}"
        groups.setdefault(head if rest else "other", []).append((rest or key, value))
    tables = "".join(f'<div class="cfg"><h4>{_e(name)}</h4>{_table(("key", "value"), items, "config")}</div>'
                     for name, items in groups.items())
    return (f'<section id="{anchor}-config"><h3>Config</h3><p class="note">{len(config)} keys, as resolved '
            f'for the run.</p><div class="cfgs">{tables}</div></section>')


def _json_section(path: Path, title: str) -> str:
    """A JSON summary: ``before``/``after`` side by side when it has both, else its scalars flattened."""
    data = _read_json(path)
    if not isinstance(data, dict):
        return ""
    parts = [f"<h4>{_e(title)}</h4><div class=\"cfgs\">"]
    before, after = data.get("before"), data.get("after")
    if isinstance(before, dict) and isinstance(after, dict):
        b, a = _flatten(before), _flatten(after)
        keys = [k for k in b if _number(b[k]) or _number(a.get(k))]
        rows = [(k, b[k], a.get(k), a[k] - b[k] if _number(a.get(k)) and _number(b[k]) else None) for k in keys]
        parts.append(_table(("metric", "before", "after", "change"), rows, "summary"))
        examples = [(when, *ex) for when, d in (("before", before), ("after", after))
                    for ex in d.get("examples", []) if isinstance(ex, list) and len(ex) == 3]
        if examples:
            parts.append(_table(("model", "prompt", "greedy response", "reward"),
                                [(w, _cut(str(p)), _cut(str(r)), s) for w, p, r, s in examples], "samples"))
        rest = {k: v for k, v in _flatten(data).items() if not k.startswith(("before.", "after.", "plots"))
                and (_number(v) or isinstance(v, str))}
    else:
        rest = {k: v for k, v in _flatten(data).items() if not isinstance(v, (list, dict))}
    if rest:
        parts.append(_table(("key", "value"), list(rest.items())[:80], "summary"))
    return "".join(parts) + "</div>"


def _pngs(paths: Iterable[Path]) -> list[str]:
    return [f"<figure>{_png(p.read_bytes(), p.name)}<figcaption>{_e(p.name)}</figcaption></figure>"
            for p in paths if p.is_file() and not p.is_symlink()]


def _text(value: Any) -> str:
    """A prompt or completion as plain text: a string, or chat messages as ``role: content`` lines."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "\n".join(f"{m.get('role', '?')}: {m.get('content', '')}" if isinstance(m, dict) else str(m)
                         for m in value)
    return json.dumps(value, ensure_ascii=False, default=str)


# -- the parts of a stage -------------------------------------------------------------------------------


def _train_stage(stage: Stage, anchor: str) -> str:
    """Curves, evaluation lines and reports, the last logged values, then the config."""
    rows = read_metrics(stage.path)
    train = [r for r in rows if "loss" in r or not any(k.startswith("eval/") for k in r)]
    evals = [r for r in rows if any(k.startswith("eval/") for k in r)]
    parts = []
    figures = _curves(rows, TRAIN_CURVES, "step", "optimizer step", ("", "eval/"))
    if figures:
        parts.append(f'<section id="{anchor}-curves"><h3>Training curves</h3><div class="plots">'
                     f'{"".join(figures)}</div></section>')
    if evals:
        keys = sorted({k for r in evals for k in r if k.startswith("eval/") and _number(r[k])})
        table = _table(["step", *(k.removeprefix("eval/") for k in keys)],
                       [[r.get("step"), *(r.get(k) for k in keys)] for r in evals], "eval")
        parts.append(f'<section id="{anchor}-eval"><h3>Evaluation</h3><p class="note">The eval/* lines of '
                     f'metrics.jsonl, one row per evaluation.</p><div class="wide">{table}</div></section>')
    eval_dir = stage.path / "eval"
    if eval_dir.is_dir() and not eval_dir.is_symlink():
        files = "".join(_json_section(p, f"eval/{p.name}") for p in sorted(eval_dir.glob("*.json")))
        figs = "".join(_pngs(sorted(eval_dir.glob("*.png"))))
        if files or figs:
            parts.append(f'<section id="{anchor}-evalfiles"><h3>Evaluation reports</h3>{files}'
                         f'<div class="plots">{figs}</div></section>')
    last_train = next((r for r in reversed(train) if "step" in r), None)
    last_eval = next((r for r in reversed(evals)), None)
    if last_train or last_eval:
        rows_final = [(k, v) for k, v in (last_train or {}).items() if _number(v)]
        rows_final += [(k, v) for k, v in (last_eval or {}).items() if _number(v) and k != "step"]
        parts.append(f'<section id="{anchor}-final"><h3>Last logged values</h3><p class="note">{len(train)} '
                     f'training lines, {len(evals)} evaluation lines in metrics.jsonl; training at step '
                     f'{_e(_fmt((last_train or {}).get("step")))}, evaluation at step '
                     f'{_e(_fmt((last_eval or {}).get("step")))}.</p>{_table(("metric", "value"), rows_final, "final")}'
                     "</section>")
    parts.append(_config_section(_read_config(stage), anchor))
    return "".join(parts)


def _online_stage(stage: Stage, anchor: str) -> str:
    """The per-round table and curves, sample completions per round, then the config."""
    rows = sorted((r for r in read_metrics(stage.path) if _number(r.get("round"))), key=lambda r: r["round"])
    parts = []
    if rows:
        cols = [(k, h) for k, h in ROUND_COLUMNS if any(k in r for r in rows)]
        table = _table(["round", *(h for _, h in cols)], [[r["round"], *(r.get(k) for k, _ in cols)] for r in rows],
                       "rounds")
        parts.append(f'<section id="{anchor}-rounds"><h3>Rounds</h3><p class="note">One row per round of '
                     f'metrics.jsonl ({len(rows)} rounds); round N\'s samples are in rounds/NNNN.jsonl.</p>'
                     f'<div class="wide">{table}</div></section>')
        figures = _curves(rows, ONLINE_CURVES, "round", "round", ("",))
        if figures:
            parts.append(f'<section id="{anchor}-curves"><h3>Curves per round</h3><div class="plots">'
                         f'{"".join(figures)}</div></section>')
    rounds = _read_rounds(stage.path)
    if rounds:
        blocks = []
        for r, samples in rounds.items():
            by_prompt: dict[Any, list[dict[str, Any]]] = {}
            for s in samples:
                meta = s.get("metadata") if isinstance(s.get("metadata"), dict) else {}
                by_prompt.setdefault(meta.get("prompt_index", _text(s.get("prompt"))), []).append(s)
            shown = []
            for group in list(by_prompt.values())[:SAMPLE_PROMPTS]:
                best = sorted(group, key=lambda s: -s["score"] if _number(s.get("score")) else math.inf)
                shown += [(_cut(_text(s.get("prompt"))), _cut(_text(s.get("response"))), s.get("score"),
                           (s.get("metadata") or {}).get("source", "")) for s in best[:SAMPLES_PER_PROMPT]]
            blocks.append(f"<details{' open' if r == min(rounds) or r == max(rounds) else ''}><summary>round {r}: "
                          f"{len(samples)} judged samples, {len(by_prompt)} prompts (showing {len(shown)})</summary>"
                          f'{_table(("prompt", "completion", "score", "source"), shown, "samples")}</details>')
        parts.append(f'<section id="{anchor}-samples"><h3>Sample completions</h3><p class="note">Per round, the '
                     f'first {SAMPLE_PROMPTS} prompts and up to {SAMPLES_PER_PROMPT} of their completions, best '
                     f'judge score first.</p>{"".join(blocks)}</section>')
    parts.append(_config_section(_read_config(stage), anchor))
    return "".join(parts)


# -- the page -------------------------------------------------------------------------------------------

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
main{max-width:1240px;margin:0 auto;padding:16px 24px 48px}
h1{font-size:22px;margin:8px 0 4px}h2{font-size:18px;margin:28px 0 8px;border-bottom:2px solid #d5d9e0}
h3{font-size:15px;margin:18px 0 6px}h4{font-size:13px;margin:6px 0 4px;color:#445}
.note{color:#5a6270;margin:2px 0 8px}nav{font-size:13px;margin:6px 0 12px}nav a{margin-right:12px}
table{border-collapse:collapse;background:#fff;font-size:12.5px;margin:4px 0 10px}
th,td{border:1px solid #dde1e7;padding:3px 7px;vertical-align:top;text-align:left}
th{background:#eef1f5;position:sticky;top:0}td.num{text-align:right;font-variant-numeric:tabular-nums}
td.txt{white-space:pre-wrap;word-break:break-word;max-width:420px}
.cfgs{display:flex;flex-wrap:wrap;gap:10px;align-items:flex-start}.cfg table{margin:0}
.wide{overflow-x:auto;max-width:100%}
.plots{display:grid;grid-template-columns:repeat(auto-fill,minmax(520px,1fr));gap:12px}
figure{margin:0;background:#fff;border:1px solid #dde1e7;padding:6px}figure img{max-width:100%;height:auto}
figcaption{font-size:12px;color:#5a6270}details{margin:6px 0}summary{cursor:pointer;font-weight:600}
"""


def build_report(run_dir: str | Path) -> str:
    """The report page of ``run_dir`` as an HTML string (see the module docstring)."""
    path = Path(run_dir)
    stages = find_stages(path)
    name = path.resolve().name
    marker = read_marker(path) or (read_marker(stages[0].path) if len(stages) == 1 else None) or {}
    kind = marker.get("kind") or ("online" if stages[0].kind == "online" and len(stages) == 1 else "train")
    anchors = [f"s{i}-{re.sub(r'[^A-Za-z0-9_-]', '_', s.name)}" for i, s in enumerate(stages)]
    top = []
    if len(stages) > 1 or stages[0].path != path:  # a folder of stages: its own summaries and plots first
        jsons = "".join(_json_section(p, p.name) for p in sorted(path.glob("*.json")) if p.name != MARKER)
        figs = "".join(_pngs(sorted((path / "plots").glob("*.png")))) if (path / "plots").is_dir() else ""
        if jsons or figs:
            top.append(f'<section id="summary"><h2>Summary</h2>{jsons}<div class="plots">{figs}</div></section>')
    body = []
    for stage, anchor in zip(stages, anchors, strict=True):
        inner = _online_stage(stage, anchor) if stage.kind == "online" else _train_stage(stage, anchor)
        title = f"Stage: {stage.name}" if stage.path != path else ("Online run" if stage.kind == "online"
                                                                    else "Training run")
        body.append(f'<section class="stage" id="{anchor}"><h2>{_e(title)}</h2><p class="note">{_e(stage.path)} '
                    f'({_e(stage.kind)} run)</p>{inner}</section>')
    nav = "".join(f'<a href="#{a}">{_e(s.name)}</a>' for s, a in zip(stages, anchors, strict=True))
    if top:
        nav = '<a href="#summary">summary</a>' + nav
    when = " · ".join(f"{k} {_e(marker[k])}" for k in ("created", "updated") if isinstance(marker.get(k), str))
    title = f"prefkit run report: {name}"
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<meta name="generator" content="{GENERATOR} {_e(prefkit.__version__)}">'
            f"<title>{_e(title)}</title><style>{_CSS}</style></head><body><main>"
            f"<header><h1>{_e(title)}</h1><p class=\"note\">{_e(path.resolve())} · {_e(kind)} · "
            f"{len(stages)} stage{'s' if len(stages) > 1 else ''}{' · ' + when if when else ''}</p>"
            f"<nav>{nav}</nav></header>{''.join(top)}{''.join(body)}</main></body></html>\n")


def write_report_page(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the report of ``run_dir`` to ``out`` (default ``<run_dir>/report.html``); returns the file.

    An existing ``out`` is replaced only when it is an earlier report page (its generator meta tag).
    """
    page = build_report(run_dir)
    target = Path(out) if out is not None else Path(run_dir) / "report.html"
    if target.is_dir():
        raise PrefkitError(f"--out {target} is a folder; pass a file name such as {target / 'report.html'}")
    if target.exists() or target.is_symlink():
        head = target.read_bytes()[:2000].decode("utf-8", errors="replace") if target.is_file() else ""
        if target.is_symlink() or f'content="{GENERATOR} ' not in head:
            raise PrefkitError(f"{target} exists and is not a prefkit report page; choose another --out")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(page, encoding="utf-8")
    return target


__all__ = ["build_report", "write_report_page", "find_stages", "Stage", "GENERATOR"]
