"""The ``eval:`` section: policy diagnostics every N steps, into metrics.jsonl and the plots, exact on resume."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import pytest

from prefkit.errors import ConfigError
from prefkit.eval.during_training import evaluator_factory, make_evaluators
from prefkit.testing import tiny_llama, tiny_pairs, tiny_tokenizer
from prefkit.train.config import load_config
from prefkit.train.metrics import read_metrics
from prefkit.train.trainer import Trainer

QUIET = ["train.progress=false", "output.tensorboard=false", "train.batch_size=4", "loss.beta=0.5"]
EVAL = ["eval.every=2", "eval.ranking=true", "eval.displacement=true", "eval.true_pref_prob=1"]


def _train(run_dir: Path, overrides: list[str], *, resume: bool = False) -> list[dict]:
    tok = copy.deepcopy(tiny_tokenizer())
    cfg = load_config(overrides=[*QUIET, *EVAL, f"output.dir={run_dir}", *overrides])
    model, train, held_out = tiny_llama(len(tok)), tiny_pairs(8), tiny_pairs(4, seed=1)
    hooks = make_evaluators(cfg, model, tok, train, held_out)  # before training: the reference is the model now
    Trainer(cfg, model, tok, train, held_out, evaluators=hooks).train(resume=resume)
    return read_metrics(run_dir)


def test_diagnostics_every_n_steps_into_metrics_and_plots(tmp_path: Path) -> None:
    rows = _train(tmp_path, ["train.max_steps=4", "eval.ches=true"])
    diag = [r for r in rows if "eval/ranking/accuracy" in r]
    assert [r["step"] for r in diag] == [0, 2, 4]  # before the first step, every 2 steps, at the end
    for r in diag:
        assert {"eval/ranking/normalized_accuracy", "eval/ranking/idealized_accuracy", "eval/ranking/alignment_gap",
                "eval/displacement/chosen", "eval/displacement/rejected", "eval/displacement/margin",
                "eval/displacement/displaced_fraction"} <= r.keys()
        assert 0 <= r["eval/ranking/accuracy"] <= 1 and r["eval/ranking/idealized_accuracy"] == 1.0
    assert diag[0]["eval/displacement/chosen"] == 0.0 == diag[0]["eval/displacement/rejected"]  # π = π_ref at 0
    assert diag[-1]["eval/displacement/margin"] > 0  # DPO widened the margin
    assert {k for k in diag[0] if k.startswith("eval/ches/")} == {
        "eval/ches/mean", "eval/ches/median", "eval/ches/p90", "eval/ches/max", "eval/ches/pairs"}
    assert not any("eval/ches/mean" in r for r in diag[1:])  # CHES once, at the start
    final = next(r for r in rows if r["step"] == 4 and "eval/loss" in r)  # one line per step: loss and diagnostics
    assert "eval/ranking/accuracy" in final
    assert {"ranking.png", "displacement.png"} <= {p.name for p in (tmp_path / "plots").glob("*.png")}


def test_resume_writes_the_same_lines(tmp_path: Path) -> None:
    full = _train(tmp_path / "full", ["train.max_steps=6", "output.plots=false"])
    stopped = tmp_path / "stopped"
    _train(stopped, ["train.max_steps=6", "output.plots=false", "train.save_every=2", "train.keep_last=3"])
    # stop after step 4: drop the last checkpoint and pretend the run died there
    shutil.rmtree(stopped / "checkpoints" / "step-00000006")
    resumed = _train(stopped, ["train.max_steps=6", "output.plots=false", "train.save_every=2",
                               "train.keep_last=3"], resume=True)

    def diagnostics(rows: list[dict]) -> list[dict]:
        return [{k: v for k, v in r.items() if k.startswith("eval/")} | {"step": r["step"]} for r in rows
                if "eval/ranking/accuracy" in r]

    assert [r["step"] for r in diagnostics(resumed)] == [0, 2, 4, 6]
    assert diagnostics(resumed) == diagnostics(full)


@pytest.mark.parametrize(("overrides", "message"), [
    (["eval.rankin=true"], "unknown config key 'eval.rankin' (did you mean 'eval.ranking'?)"),
    (["eval.every=-1"], "eval.every must be >= 0"),
    (["eval.max_pairs=0"], "eval.max_pairs must be >= 1"),
    (["eval.true_pref_prob=1.5", "eval.ranking=true"], "eval.true_pref_prob must be in (0, 1]"),
    (["eval.true_pref_prob=0.8"], "set eval.ranking: true"),
])
def test_bad_eval_keys_are_one_line_errors(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(overrides=overrides)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_factory_checks_before_models_load() -> None:
    assert evaluator_factory(load_config(overrides=[])) is None
    with pytest.raises(ConfigError, match=r"set data.eval or data.eval_fraction"):
        evaluator_factory(load_config(overrides=["eval.ranking=true"]))
    with pytest.raises(ConfigError, match=r"has no loss.beta"):
        evaluator_factory(load_config(overrides=["eval.ranking=true", "eval.true_pref_prob=1", "loss.name=orpo",
                                                 "data.eval_fraction=0.2"]))
