"""Evaluation metrics and the reward-model report, with hand-worked numbers."""

from __future__ import annotations

import json
import math

import pytest
import torch

from prefkit.data.records import Pair
from prefkit.eval.metrics import (
    bucket_labels,
    bucket_of,
    calibration_bins,
    expected_calibration_error,
    pair_confidence,
    pairwise_accuracy,
    quantile_edges,
    sign_baseline_accuracy,
)
from prefkit.eval.reward import evaluate_margins, print_report, write_report


def test_pairwise_accuracy_counts_zero_as_half():
    """[2, -1, 0, 0.5] -> (1 + 0 + 0.5 + 1) / 4 = 0.625; empty -> NaN."""
    assert pairwise_accuracy([2.0, -1.0, 0.0, 0.5]) == 0.625
    assert math.isnan(pairwise_accuracy([]))


def test_sign_baseline():
    """Lengths chosen (10, 3, 5) vs rejected (4, 8, 5): longer wins on pair 1, loses pair 2, ties 3 -> 0.5."""
    assert sign_baseline_accuracy([10, 3, 5], [4, 8, 5]) == 0.5
    assert sign_baseline_accuracy([4, 8, 5], [10, 3, 5]) == 0.5


def test_ece_hand_worked():
    """Two bins over [0.5, 1]: [0.5, 0.75) holds confidences 0.6, 0.6 with correctness 1, 0 -> |0.5 − 0.6|;
    [0.75, 1] holds 0.9, 0.9 both correct -> |1 − 0.9|. ECE = 0.5·0.1 + 0.5·0.1 = 0.1."""
    bins = calibration_bins([0.6, 0.6, 0.9, 0.9], [1, 0, 1, 1], num_bins=2)
    assert [b.count for b in bins] == [2, 2]
    assert bins[0].accuracy == 0.5 and bins[1].confidence == pytest.approx(0.9)
    assert expected_calibration_error(bins) == pytest.approx(0.1)


def test_calibration_bins_include_one_and_keep_empty_bins():
    bins = calibration_bins([1.0, 0.5], [1, 0], num_bins=5)
    assert bins[-1].count == 1 and bins[0].count == 1
    assert math.isnan(bins[2].accuracy) and bins[2].count == 0


def test_pair_confidence_is_orientation_free():
    """margin ln 3 -> p = 0.75 -> confidence 0.75, correct; margin −ln 3 -> confidence 0.75, wrong."""
    conf, correct = pair_confidence([math.log(3), -math.log(3), 0.0])
    assert conf.tolist() == pytest.approx([0.75, 0.75, 0.5])
    assert correct.tolist() == [1.0, 0.0, 0.5]


def test_buckets():
    edges = quantile_edges([1, 2, 3, 4, 5, 6, 7, 8], 2)
    assert edges == [4.5]
    assert [bucket_of(v, edges) for v in (1, 4.5, 8)] == [0, 1, 1]
    assert bucket_labels([100, 300], " chars") == ["<100 chars", "100–300 chars", ">=300 chars"]


def _pairs(lengths, ties=None, subsets=None):
    out = []
    for i, (lc, lr) in enumerate(lengths):
        out.append(Pair(prompt="q: ", chosen="x" * lc, rejected="y" * lr, tie=bool(ties and ties[i]),
                        metadata={"subset": subsets[i]} if subsets else {}))
    return out


def test_report_accuracy_baselines_subsets_and_lengths():
    """4 pairs; margins (+, +, −, +): accuracy 0.75. Chosen longer in pairs 0 and 2 -> longer wins 0.5.
    Subset a = pairs 0, 1 (both right), subset b = pairs 2, 3 (one right)."""
    records = _pairs([(10, 5), (5, 10), (20, 2), (2, 20)], subsets=["a", "a", "b", "b"])
    report = evaluate_margins([1.0, 2.0, -1.0, 0.5], records, by="subset", num_length_buckets=2)
    d = report.data
    assert d["accuracy"] == 0.75
    assert d["baselines"] == {"longer_wins": 0.5, "shorter_wins": 0.5}
    assert d["by_subset"]["a"]["accuracy"] == 1.0 and d["by_subset"]["b"]["accuracy"] == 0.5
    assert d["by_length_relation"]["chosen longer"] == {"n": 2, "accuracy": 0.5, "longer_wins": 1.0,
                                                        "shorter_wins": 0.0}
    assert sum(b["n"] for b in d["by_length"]) == 4 and len(d["by_length"]) == 2
    assert sum(d["margins"]["histogram"]["correct"]) == 3 and sum(d["margins"]["histogram"]["wrong"]) == 1
    assert "ties" not in d


def test_report_ties_without_and_with_tie_probabilities():
    """Pair 2 is a tie. Without tie probabilities, a tie is predicted when |σ(m) − 0.5| < 0.1: margins
    (2, 0.1, 0.05) -> predictions (chosen, tie, tie); three-way correct: yes, no, yes -> 2/3.
    Accuracy counts the two strict pairs only: (2 > 0, 0.1 > 0) -> 1.0."""
    records = _pairs([(3, 4), (3, 4), (3, 4)], ties=[False, False, True])
    d = evaluate_margins([2.0, 0.1, 0.05], records).data
    assert d["accuracy"] == 1.0 and d["n_ties"] == 1
    assert d["ties"]["three_way_accuracy"] == pytest.approx(2 / 3)
    assert d["ties"]["tie_recall"] == 1.0
    # With P(tie) from a tie model: pair 1 has P(tie) = 0.6 > its win/lose shares -> predicted tie.
    d = evaluate_margins([2.0, 0.1, 0.05], records, tie_probs=[0.1, 0.6, 0.7]).data
    assert d["ties"]["three_way_accuracy"] == pytest.approx(2 / 3)
    assert d["ties"]["mean_p_tie_on_ties"] == pytest.approx(0.7)


def test_report_rejects_nan_and_mismatch():
    from prefkit.errors import DataError

    records = _pairs([(3, 4)])
    with pytest.raises(DataError, match="NaN"):
        evaluate_margins([math.nan], records)
    with pytest.raises(ValueError):
        evaluate_margins([1.0, 2.0], records)


def test_write_and_print_report(tmp_path, capsys):
    gen = torch.Generator().manual_seed(0)
    records = _pairs([(i % 7 + 1, i % 5 + 1) for i in range(50)])
    report = evaluate_margins(torch.randn(50, generator=gen) + 0.5, records)
    paths = write_report(report, tmp_path)
    data = json.loads(paths["json"].read_text())
    assert data["n_pairs"] == 50 and len(data["calibration"]["bins"]) == 10
    assert all(b["accuracy"] is None for b in data["calibration"]["bins"] if b["count"] == 0)  # NaN -> null
    assert paths["reliability"].read_bytes()[:4] == b"\x89PNG" and paths["margins"].stat().st_size > 1000
    print_report(report)
    out = capsys.readouterr().out
    assert "overall" in out and "ECE" in out
