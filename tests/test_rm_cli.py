"""``prefkit rm train|eval|score`` and ``prefkit bon`` end to end on a tiny in-process backbone."""

from __future__ import annotations

import json

import pytest
import torch

from prefkit.cli.main import main
from prefkit.data.readers import load
from prefkit.data.writers import write_jsonl
from prefkit.models.reward import RewardModel, RewardModelConfig
from prefkit.testing import tiny_llama, tiny_pairs, tiny_tokenizer


@pytest.fixture(scope="module")
def saved_rm(tmp_path_factory):
    """A saved scalar reward model (random head) on a tiny Llama backbone."""
    tok = tiny_tokenizer()
    model = RewardModel.from_backbone(tiny_llama(len(tok)), RewardModelConfig(max_length=64), tok)
    path = tmp_path_factory.mktemp("rm") / "model"
    model.save(path)
    return path


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "pairs.jsonl"
    records = tiny_pairs(12)
    records = [r.__class__(**{**r.__dict__, "metadata": {"subset": "a" if i % 2 else "b"}})
               for i, r in enumerate(records)]
    write_jsonl(records, path)
    return path


def test_rm_eval_prints_table_writes_json_and_png(saved_rm, pairs_file, tmp_path, capsys):
    out = tmp_path / "ev"
    assert main(["rm", "eval", str(saved_rm), str(pairs_file), "--out", str(out), "--by", "subset"]) == 0
    printed = capsys.readouterr().out
    assert "pairwise accuracy" in printed and "longer wins" in printed and "subset: a" in printed
    report = json.loads((out / "rm_eval.json").read_text())
    assert report["n_pairs"] == 12 and set(report["by_subset"]) == {"a", "b"}
    assert 0.0 <= report["accuracy"] <= 1.0 and "ece" in report["calibration"]
    for png in ("reliability.png", "margins.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_rm_eval_matches_library_margins(saved_rm, pairs_file, tmp_path):
    """The accuracy in the JSON is the accuracy of the model's own margins on the file's pairs."""
    model = RewardModel.load(saved_rm)
    records = list(load(pairs_file))
    chosen, rejected = model.pair_outputs(records)
    expected = ((chosen.rewards > rejected.rewards).float().mean()).item()
    main(["rm", "eval", str(saved_rm), str(pairs_file), "--out", str(tmp_path), "--no-plots"])
    assert json.loads((tmp_path / "rm_eval.json").read_text())["accuracy"] == pytest.approx(expected)
    assert not (tmp_path / "reliability.png").exists()


def test_rm_score_adds_scores(saved_rm, pairs_file, tmp_path):
    out = tmp_path / "scored.jsonl"
    assert main(["rm", "score", str(saved_rm), str(pairs_file), str(out)]) == 0
    scored = list(load(out))
    assert len(scored) == 12
    model = RewardModel.load(saved_rm)
    chosen, rejected = model.pair_outputs(scored[:1])
    meta = scored[0].metadata
    assert meta["subset"] == "b"
    assert meta["rm_score_chosen"] == pytest.approx(float(chosen.rewards[0]), abs=1e-5)
    assert meta["rm_score_margin"] == pytest.approx(meta["rm_score_chosen"] - meta["rm_score_rejected"], abs=1e-5)
    parquet = tmp_path / "scored.parquet"
    assert main(["rm", "score", str(saved_rm), str(pairs_file), str(parquet)]) == 0
    assert len(list(load(parquet))) == 12


def test_bon_picks_argmax_score_candidate(saved_rm, tmp_path):
    rows = [{"id": "p1", "prompt": "Question: what is two plus two?\n",
             "candidates": ["Four.", "No.", "Two plus two is four, here is why.", "Whatever."]},
            {"id": "p2", "prompt": "Tell me about the cat.\n", "responses": ["The cat likes the ball.", "No"]}]
    data = tmp_path / "cands.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "best.jsonl"
    assert main(["bon", str(saved_rm), str(data), str(out)]) == 0
    got = [json.loads(line) for line in out.read_text().splitlines()]
    model = RewardModel.load(saved_rm)
    for row, res in zip(rows, got, strict=True):
        cands = row.get("candidates") or row["responses"]
        scores = model.score([row["prompt"]] * len(cands), cands)
        assert res["best_index"] == int(torch.argmax(scores))
        assert res["best"] == cands[res["best_index"]] and res["id"] == row["id"]
        assert res["scores"] == pytest.approx(scores.tolist(), abs=1e-5)
        assert max(res["scores"]) == res["scores"][res["best_index"]]


def test_bon_bad_rows_are_one_line_errors(saved_rm, tmp_path, capsys):
    data = tmp_path / "bad.jsonl"
    data.write_text(json.dumps({"prompt": "hi", "answers": ["a"]}) + "\n")
    assert main(["bon", str(saved_rm), str(data), str(tmp_path / "o.jsonl")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error:") and "candidates" in err and "Traceback" not in err


def test_rm_eval_on_non_model_dir_is_a_one_line_error(tmp_path, pairs_file, capsys):
    assert main(["rm", "eval", str(tmp_path), str(pairs_file)]) == 1
    assert "not a prefkit reward model" in capsys.readouterr().err


def test_rm_train_from_config_then_eval(tmp_path, capsys):
    """rm train with a YAML config on a saved tiny backbone: trains, saves, evaluates the held-out part."""
    tok = tiny_tokenizer()
    backbone = tmp_path / "backbone"
    tiny_llama(len(tok)).save_pretrained(backbone)
    tok.save_pretrained(backbone)
    data = tmp_path / "pairs.jsonl"
    write_jsonl(tiny_pairs(40), data)
    run = tmp_path / "run"
    config = tmp_path / "rm.yaml"
    config.write_text(f"""
model: {{path: {backbone}}}
reward: {{head: scalar, max_length: 64}}
data: {{train: {data}, eval_fraction: 0.2}}
loss: {{name: bradley_terry}}
train: {{batch_size: 8, max_steps: 12, lr: 3.0e-3, progress: false, eval_every: 6}}
output: {{dir: {run}, tensorboard: false, plots: false}}
""")
    assert main(["rm", "train", "--config", str(config)]) == 0
    printed = capsys.readouterr().out
    assert "pairwise accuracy" in printed
    report = json.loads((run / "eval" / "rm_eval.json").read_text())
    assert report["n_pairs"] == 8 and report["accuracy"] >= 0.75
    assert (run / "model" / "reward_config.json").is_file()
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["eval/rewards/accuracies"] >= 0.75


def test_rm_train_config_errors_are_one_line(tmp_path, capsys):
    config = tmp_path / "rm.yaml"
    config.write_text("reward: {head: scalr}\n")
    assert main(["rm", "train", "--config", str(config)]) == 1
    assert "did you mean 'scalar'" in capsys.readouterr().err
    config.write_text("reward: {head: gpm}\nloss: {name: plackett_luce}\n")
    assert main(["rm", "train", "--config", str(config)]) == 1
    assert "GPM head learns from pairs only" in capsys.readouterr().err
    config.write_text("rewards: {head: gpm}\n")
    assert main(["rm", "train", "--config", str(config)]) == 1
    assert "did you mean 'reward.head'" in capsys.readouterr().err
