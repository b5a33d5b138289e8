"""``prefkit report``: one self-contained HTML page per run folder (training, online, the demo's stages)."""

from __future__ import annotations

import base64
import copy
import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from prefkit.cli.main import main
from prefkit.errors import PrefkitError
from prefkit.eval.report import build_report, find_stages, write_report_page
from prefkit.online import FunctionJudge, OnlineConfig, SamplingSettings, run_online
from prefkit.testing import tiny_llama, tiny_pairs, tiny_tokenizer
from prefkit.train.config import load_config
from prefkit.train.trainer import Trainer

PROMPTS = ["Question <b>one</b> & more:", "Say something:"]  # markup in run text must come out escaped


class Page(HTMLParser):
    """The parts of a report page the tests look at."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.title = ""
        self.tags: list[str] = []
        self.ids: set[str] = set()
        self.headings: list[str] = []
        self.tables: list[dict] = []  # {"class", "header", "rows"}
        self.images: list[str] = []
        self.links: list[str] = []  # every src / href / url(...) value
        self.styles = ""
        self._stack: list[str] = []
        self._cell: list[str] | None = None
        self._row: list[str] | None = None
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append(tag)
        self._stack.append(tag)
        if "id" in a:
            self.ids.add(a["id"])
        self.links += [v or "" for k, v in attrs if k in ("src", "href", "action", "srcset", "poster", "data")]
        if tag == "img":
            self.images.append(a.get("src") or "")
        if tag == "table":
            self.tables.append({"class": a.get("class", ""), "header": [], "rows": []})
        if tag == "tr":
            self._row = []
        if tag in ("td", "th"):
            self._cell = []
        if a.get("style"):
            self.styles += a["style"]

    def handle_endtag(self, tag):
        if self._stack:
            self._stack.pop()
        if tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append("".join(self._cell))
            self._cell = None
        if tag == "tr" and self._row is not None and self.tables:
            table = self.tables[-1]
            if table["header"]:
                table["rows"].append(self._row)
            else:  # the first row is the header
                table["header"] = self._row
            self._row = None

    def handle_data(self, data):
        tag = self._stack[-1] if self._stack else ""
        if tag == "title":
            self.title += data
        elif tag in ("h1", "h2", "h3"):
            self.headings.append(data.strip())
        elif tag == "style":
            self.styles += data
        if self._cell is not None:
            self._cell.append(data)


def _check_self_contained(text: str, page: Page) -> None:
    """No external URL: every src/href is a data: URI or an in-page anchor; no url(...) in the CSS."""
    for link in page.links:
        assert link.startswith(("#", "data:image/png;base64,")), link[:80]
    assert "url(" not in page.styles and "@import" not in page.styles
    assert "script" not in page.tags and "link" not in page.tags and "iframe" not in page.tags
    assert not any(s in text.lower() for s in ("http://", "https://", "//cdn"))
    for src in page.images:  # real PNGs, decodable
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def train_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("train") / "run"
    tok = copy.deepcopy(tiny_tokenizer())
    cfg = load_config(overrides=["train.progress=false", "train.max_steps=4", "train.batch_size=4",
                                 "train.eval_every=2", "train.log_every=1", "output.save_model=false",
                                 "output.tensorboard=false", "output.plots=false", f"output.dir={out}"])
    Trainer(cfg, tiny_llama(len(tok)), tok, tiny_pairs(8), tiny_pairs(4, seed=1)).train()
    return out


@pytest.fixture(scope="module")
def online_run(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("online")
    tok = tiny_tokenizer()
    cfg = load_config(overrides=["loss.name=dpo", "train.lr=1e-2", "train.batch_size=8", "train.log_every=1000",
                                 f"output.dir={base / 'unused'}"], check_files=False)
    online = OnlineConfig(rounds=2, prompts_per_round=2, samples_per_prompt=4, pairs="all_pairs",
                          sampling=SamplingSettings(max_new_tokens=3), steps_per_round=1, seed=0)
    judge = FunctionJudge(lambda prompt, completion: float(len(completion)), name="length")
    run_online(tiny_llama(len(tok)), tok, PROMPTS, judge, cfg, online, base / "run")
    return base / "run"


def test_training_run_report(train_run, tmp_path) -> None:
    text = build_report(train_run)
    page = Page(text)
    assert page.title == f"prefkit run report: {train_run.name}"
    assert page.headings[:2] == [page.title, "Training run"]
    assert {"Config", "Last logged values", "Training curves", "Evaluation"} <= set(page.headings)
    config = [t for t in page.tables if t["class"] == "config"]
    keys = {row[0] for t in config for row in t["rows"]}
    assert {"lr", "max_steps", "name", "beta", "path"} <= keys and config[0]["header"] == ["key", "value"]
    assert ["max_steps", "4"] in [row for t in config for row in t["rows"]]
    assert len(page.images) >= 4  # loss, accuracy, margins, rewards, log-probs ... as embedded PNGs
    evals = next(t for t in page.tables if t["class"] == "eval")
    assert evals["header"][0] == "step" and {"loss", "rewards/accuracies", "rewards/margins"} <= set(evals["header"])
    assert [row[0] for row in evals["rows"]] == ["2", "4"]
    _check_self_contained(text, page)
    copy_dir = tmp_path / "run"  # an evaluation report under eval/ (``prefkit rm train`` writes rm_eval.json)
    shutil.copytree(train_run, copy_dir)
    (copy_dir / "eval").mkdir()
    (copy_dir / "eval" / "rm_eval.json").write_text(json.dumps({"n_pairs": 12, "accuracy": 0.75, "note": "<i>x</i>"}))
    page = Page(build_report(copy_dir))
    assert "Evaluation reports" in page.headings and "i" not in page.tags
    assert ["accuracy", "0.75"] in next(t for t in page.tables if t["class"] == "summary")["rows"]


def test_online_run_report(online_run) -> None:
    text = build_report(online_run)
    page = Page(text)
    assert page.headings[1] == "Online run" and {"Config", "Rounds", "Curves per round",
                                                 "Sample completions"} <= set(page.headings)
    rounds = next(t for t in page.tables if t["class"] == "rounds")
    assert rounds["header"][:3] == ["round", "records", "ties"] and "score" in rounds["header"]
    assert [row[0] for row in rounds["rows"]] == ["0", "1"]
    metrics = [json.loads(x) for x in (online_run / "metrics.jsonl").read_text().splitlines()]
    assert [row[1] for row in rounds["rows"]] == [str(m["records"]) for m in metrics]
    samples = [t for t in page.tables if t["class"] == "samples"]
    assert len(samples) == 2 and all(t["header"] == ["prompt", "completion", "score", "source"] for t in samples)
    shown = samples[0]["rows"]
    assert {r[0] for r in shown} == set(PROMPTS) and len(shown) == 8
    first = [float(r[2]) for r in shown if r[0] == PROMPTS[0]]
    assert first == sorted(first, reverse=True)  # best judge score first
    assert "b" not in page.tags and "Question &lt;b&gt;one&lt;/b&gt; &amp; more:" in text  # escaped, not markup
    config = {row[0] for t in page.tables if t["class"] == "config" for row in t["rows"]}
    assert {"algorithm", "rounds", "samples_per_prompt", "lr"} <= config
    assert len(page.images) >= 3
    _check_self_contained(text, page)


def test_demo_folder_report_shows_both_stages(tmp_path) -> None:
    from prefkit.toy import ToySettings, run_demo
    from prefkit.toy.demo import demo_config_path

    settings = ToySettings(hidden_size=16, num_layers=1, sft_steps=3, sft_batch_size=8, train_pairs=16,
                           eval_pairs=8, eval_prompts=4)
    cfg = load_config(demo_config_path(), ["train.max_steps=4", "train.eval_every=2", "train.batch_size=8",
                                           "train.log_every=1", "train.progress=false", "output.save_model=false",
                                           "output.tensorboard=false"])
    out = tmp_path / "demo"
    run_demo(out, config=cfg, settings=settings, show=False)
    assert [(s.name, s.kind) for s in find_stages(out)] == [("sft", "train"), ("preference", "train")]
    text = build_report(out)
    page = Page(text)
    assert {"Summary", "Stage: sft", "Stage: preference"} <= set(page.headings)
    assert page.headings.index("Stage: sft") < page.headings.index("Stage: preference")
    summary = next(t for t in page.tables if t["class"] == "summary")
    assert summary["header"] == ["metric", "before", "after", "change"]
    assert "implicit_reward_accuracy" in {row[0] for row in summary["rows"]}
    assert any("before_after.png" in t for t in text.split("<figcaption>"))  # the demo's own plot is embedded
    _check_self_contained(text, page)


def test_cli_writes_the_page_and_refuses_non_runs(train_run, tmp_path, capsys) -> None:
    out = tmp_path / "page" / "r.html"
    assert main(["report", str(train_run), "--out", str(out)]) == 0
    assert out.read_text().startswith("<!DOCTYPE html>") and f"wrote {out}" in capsys.readouterr().out
    assert main(["report", str(train_run), "--out", str(out)]) == 0  # an earlier report page is replaced
    mine = tmp_path / "notes.html"
    mine.write_text("<p>my notes</p>")
    assert main(["report", str(train_run), "--out", str(mine)]) == 1  # anything else is not overwritten
    assert mine.read_text() == "<p>my notes</p>" and "not a prefkit report page" in capsys.readouterr().err
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "notes.txt").write_text("x")
    for bad, why in ((tmp_path / "plain", "is not a prefkit run folder"), (tmp_path / "absent", "no such folder"),
                     (mine, "is a file, not a folder")):
        assert main(["report", str(bad)]) == 1
        err = capsys.readouterr().err
        assert why in err and err.count("\n") == 1 and "Traceback" not in err
    with pytest.raises(PrefkitError, match="is not a prefkit run folder"):
        write_report_page(tmp_path / "plain")


@pytest.mark.slow
def test_demo_report_screenshot_in_headless_chromium(tmp_path) -> None:
    """Opt-in (-m slow): the quick demo's report rendered by headless Chromium (Debian's ``chromium``)."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("no headless chromium (apt-get install chromium)")
    from prefkit.toy import run_demo

    run_demo(tmp_path / "demo", quick=True, show=False, progress=False)
    page = write_report_page(tmp_path / "demo")
    shot = tmp_path / "report.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    "--window-size=1366,2400", f"--screenshot={shot}", page.as_uri()],
                   check=True, capture_output=True, timeout=120)
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 50_000  # a rendered page, not a blank one
