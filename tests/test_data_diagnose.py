"""``prefkit data diagnose`` and ``prefkit.data.diagnose`` / ``prefkit.eval.data_quality``.

Hand-made records for each check (golden counts and kappas worked by hand), the HH excerpt in
``tests/data`` (every HH quirk of the shared sample), and, opt-in (``-m slow``), the full 1,600-row
sample in ``../shared/data``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from prefkit.cli.main import main
from prefkit.data import Pair, Rating, load
from prefkit.data.diagnose import (
    agreement,
    cohen_kappa,
    diagnose,
    fleiss_kappa,
    length_bias,
    near_duplicates,
    position_bias,
    read_located,
    wilson,
)
from prefkit.data.writers import write_jsonl

ROOT = Path(__file__).resolve().parents[1]
EXCERPT = ROOT / "tests" / "data" / "hh-rlhf-harmless-200.jsonl.gz"
SHARED = ROOT.parent / "shared" / "data" / "hh-rlhf-harmless-1600.jsonl.gz"

WORDS = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa "
         "quebec romeo sierra tango uniform victor whiskey xray yankee zulu").split()


def _text(n: int, offset: int = 0) -> str:
    return " ".join(f"{WORDS[(i + offset) % len(WORDS)]}{i}" for i in range(n))


# ---------------------------------------------------------------------------------------------------
# statistics: golden values by hand


def test_cohen_kappa_by_hand():
    """a = 1 1 0 0 1, b = 1 0 0 0 1: p_o = 4/5; p_e = (3/5)(2/5) + (2/5)(3/5) = 0.48;
    kappa = (0.8 - 0.48) / 0.52 = 8/13."""
    assert cohen_kappa([1, 1, 0, 0, 1], [1, 0, 0, 0, 1]) == pytest.approx(8 / 13)
    assert cohen_kappa(["x", "y"], ["x", "y"]) == pytest.approx(1.0)
    assert math.isnan(cohen_kappa(["x", "x"], ["x", "x"]))  # p_e = 1: undefined


def test_fleiss_kappa_by_hand():
    """3 items, 3 labels each, counts [[3,0],[0,3],[2,1]]: P_i = 1, 1, (4+1-3)/6 = 1/3, so P = 7/9;
    p = (5/9, 4/9), P_e = 41/81; kappa = (63/81 - 41/81) / (40/81) = 22/40 = 0.55."""
    assert fleiss_kappa([[3, 0], [0, 3], [2, 1]]) == pytest.approx(0.55)
    # Fleiss (1971)-style worked example (10 items, 14 raters, 5 categories; Wikipedia "Fleiss' kappa"): 0.210
    table = [[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
             [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]]
    assert fleiss_kappa(table) == pytest.approx(0.20993, abs=1e-4)
    with pytest.raises(ValueError):
        fleiss_kappa([[2, 0], [1, 0]])  # unequal label counts per item


def test_wilson_interval():
    """5 of 10: the Wilson 95% interval is the textbook (0.2366, 0.7634)."""
    lo, hi = wilson(5, 10)
    assert (lo, hi) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson(0, 0) == (0.0, 1.0)


# ---------------------------------------------------------------------------------------------------
# checks on hand-made records


def test_exact_and_near_duplicates():
    base = _text(100)
    near = base.rsplit(" ", 1)[0] + " changed"  # 98 of 99 word 3-grams shared: Jaccard 97/99 ~ 0.98
    records = [Pair(prompt="p", chosen=base, rejected="no"),
               Pair(prompt="p", chosen=base, rejected="no"),  # exact duplicate of record 0
               Pair(prompt="p", chosen=near, rejected="no"),  # near duplicate of record 0
               Pair(prompt="q", chosen=_text(100, 7), rejected="other words entirely")]
    report = diagnose(records)
    assert report["exact_duplicates"].count == 1
    assert report["exact_duplicates"].examples == ("record 1 = record 0",)
    assert report["near_duplicates"].count == 1
    assert report["near_duplicates"].examples[0].startswith("record 2 ~ record 0")
    assert near_duplicates(records, ["a", "b", "c", "d"], threshold=0.999).count == 0


def test_same_pair_from_two_annotators_is_not_a_duplicate():
    records = [Pair(prompt="p", chosen="a", rejected="b", annotator_id=x) for x in ("u", "v")]
    assert diagnose(records)["exact_duplicates"].count == 0


def test_identical_rows_are_counted_from_the_reader(tmp_path):
    path = tmp_path / "d.jsonl"
    rows = [{"prompt": "p", "chosen": "a", "rejected": "b"}, {"prompt": "p", "chosen": "a", "rejected": "a"},
            {"prompt": "p", "chosen": "", "rejected": "b"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    located = read_located(path)
    assert located.where == ["line 1"]
    report = diagnose(located)
    assert (report.rows, report.records) == (3, 1)
    assert report["refused"].count == 2 and report["refused"].detail == {"identical": 1, "empty": 1}
    assert report["identical"].count == 1 and report["identical"].examples == ("line 2",)


def test_empty_turns_and_early_divergence():
    user = {"role": "user", "content": "hi"}
    records = [
        Pair(prompt=[user], chosen=[{"role": "assistant", "content": ""}],
             rejected=[{"role": "assistant", "content": "hello"}]),  # empty final turn
        Pair(prompt=[user, {"role": "assistant", "content": " "}, user],
             chosen=[{"role": "assistant", "content": "a"}],
             rejected=[{"role": "assistant", "content": "b"}]),  # blank message in the history
        Pair(prompt=[user], chosen=[{"role": "assistant", "content": "a"}, {"role": "assistant", "content": "c"}],
             rejected=[{"role": "assistant", "content": "b"}]),  # parts before the last turn
        Pair(prompt="text", chosen="x", rejected="y"),  # not chat: not looked at
    ]
    report = diagnose(records)
    final = report["empty_final_turn"]
    assert (final.count, final.total, final.examples, dict(final.detail)) == (1, 3, ("record 0 (chosen)",),
                                                                             {"chosen": 1})
    assert report["empty_history_message"].examples == ("record 1",)
    assert report["diverges_early"].examples == ("record 2",) and report["diverges_early"].total == 3


def test_length_and_position_bias():
    records = [Pair(prompt="p", chosen="aaaa", rejected="b", metadata={"position": 0}),
               Pair(prompt="p", chosen="a", rejected="bbbb", metadata={"position": 0}),
               Pair(prompt="p", chosen="a", rejected="bbbb", metadata={"position": 1}),
               Pair(prompt="p", chosen="aa", rejected="bb", metadata={"position": 0}),
               Pair(prompt="p", chosen="a", rejected="b", tie=True)]  # ties are left out
    b = length_bias(records)
    assert (b.pairs, b.longer, b.shorter, b.equal) == (4, 1, 2, 1)
    assert b.shorter_ci == pytest.approx(wilson(2, 4))
    pos = position_bias(records)
    assert (pos.key, pos.pairs, pos.first) == ("position", 4, 3)
    assert position_bias([Pair(prompt="p", chosen="a", rejected="b")]) is None
    one_based = [Pair(prompt="p", chosen="a", rejected="b", metadata={"chosen_position": v}) for v in (1, 2, 2)]
    assert position_bias(one_based).first == 1


def test_agreement_cohen_and_fleiss():
    """Cohen: the labels of test_cohen_kappa_by_hand as pairs (1 = chosen 'a' over 'b'); Fleiss: the
    3-item table of test_fleiss_kappa_by_hand, from three annotators."""
    def pair(item: int, first: bool, who: str) -> Pair:
        a, b = f"a{item}", f"b{item}"
        return Pair(prompt=f"p{item}", chosen=a if first else b, rejected=b if first else a, annotator_id=who)

    x, y = [1, 1, 0, 0, 1], [1, 0, 0, 0, 1]
    records = [pair(i, bool(v), "x") for i, v in enumerate(x)] + [pair(i, bool(v), "y") for i, v in enumerate(y)]
    got = agreement(records)
    assert (got.statistic, got.items, got.annotators) == ("cohen", 5, 2)
    assert got.kappa == pytest.approx(8 / 13)
    labels = {"u": [1, 0, 1], "v": [1, 0, 1], "w": [1, 0, 0]}  # item counts [[3,0],[0,3],[2,1]]
    records = [pair(i, bool(v), who) for who, vs in labels.items() for i, v in enumerate(vs)]
    got = agreement(records)
    assert (got.statistic, got.items, got.annotators, got.labels_per_item) == ("fleiss", 3, 3, 3)
    assert got.kappa == pytest.approx(0.55)
    ratings = [Rating(prompt="p", response=f"r{i}", score=s, annotator_id=w)
               for w, scores in (("x", [1, 2, 3]), ("y", [1, 2, 3])) for i, s in enumerate(scores)]
    assert agreement(ratings).kappa == pytest.approx(1.0)
    assert agreement([Pair(prompt="p", chosen="a", rejected="b")]) is None


# ---------------------------------------------------------------------------------------------------
# the HH excerpt (default) and the full shared sample (opt-in)

CASES = [
    pytest.param(EXCERPT, 200, ("line 87", "line 197", "line 198", "line 199"), "line 200", (90, 105, 5), False,
                 id="excerpt"),
    pytest.param(SHARED, 1600, ("line 87", "line 517", "line 926", "line 1104"), "line 1255", (710, 880, 10), True,
                 id="shared", marks=[pytest.mark.slow,
                                     pytest.mark.skipif(not SHARED.exists(), reason=f"{SHARED} missing")]),
]


@pytest.mark.parametrize(("path", "rows", "empty", "diverges", "lengths", "biased"), CASES)
def test_hh_quirks_found(path, rows, empty, diverges, lengths, biased, capsys):
    """The excerpt's 105 of 195 unequal pairs (53.8% shorter chosen) do not exclude 1/2; the full sample's
    880 of 1,590 (55.3%) do."""
    report = diagnose(read_located(path))
    assert (report.rows, report.records, report["refused"].count) == (rows, rows, 0)
    assert report["empty_final_turn"].examples == tuple(f"{e} (chosen)" for e in empty)
    assert report["diverges_early"].examples == (diverges,)
    assert report["exact_duplicates"].count == 0 and report["near_duplicates"].count == 0
    b = report.length[0]
    assert (b.longer, b.shorter, b.equal, b.biased) == (*lengths, biased)
    assert main(["data", "diagnose", str(path)]) == 0
    out = capsys.readouterr().out
    for words in ("empty final assistant turn", "histories diverge before the last turn", "length bias",
                  f"{lengths[1]} ({100 * lengths[1] / rows:.1f}%"):
        assert words in out
    assert main(["data", "diagnose", str(path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    checks = {c["name"]: c for c in data["checks"]}
    assert checks["empty_final_turn"]["count"] == 4 and checks["diverges_early"]["count"] == 1
    assert data["length_bias"][0]["shorter"] == lengths[1]


def test_cli_errors_are_one_line(tmp_path, capsys):
    for argv, words in [
        (["data", "diagnose", str(tmp_path / "missing.jsonl")], "missing.jsonl"),
        (["data", "diagnose", str(EXCERPT), "--rm", str(tmp_path / "nope")], "--rm"),
        (["data", "diagnose", str(EXCERPT), "--min-margin", "0"], "--rm"),
        (["data", "diagnose", str(tmp_path / "notes.md")], "unsupported"),
    ]:
        if argv[2].endswith(".md"):
            Path(argv[2]).write_text("hi\n")
        assert main(argv) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and len(err.splitlines()) == 1 and words in err


# ---------------------------------------------------------------------------------------------------
# reward-model ensemble


def test_strength_mislabelled_and_filter():
    from prefkit.eval.data_quality import Strength, filter_by_margin, strength_checks

    records = [Pair(prompt="p", chosen=f"c{i}", rejected=f"r{i}", tie=i == 3) for i in range(4)]
    margins = np.array([[1.0, -1.0, -2.0, -1.0], [3.0, 0.5, -1.0, -1.0]])  # (M=2, N=4)
    s = Strength(("a", "b"), margins, np.array([r.tie for r in records]))
    assert s.mean.tolist() == [2.0, -0.25, -1.5, -1.0]
    assert s.mislabelled.tolist() == [False, False, True, False]  # pair 1: models disagree; pair 3: a tie
    checks = strength_checks(s, ["l1", "l2", "l3", "l4"], min_margin=0.0)
    assert [(c.name, c.count) for c in checks] == [("mislabelled", 1), ("below_min_margin", 2)]
    kept = filter_by_margin(records, s, 0.0)
    assert [r.chosen for r in kept] == ["c0", "c3"]
    assert kept[0].metadata["rm_margin_mean"] == 2.0 and kept[0].metadata["rm_margin_std"] == 1.0


def test_cli_rm_ensemble_writes_clean_file_that_loads(tmp_path, capsys):
    from prefkit.eval.data_quality import preference_strength
    from prefkit.models.reward import RewardModel, RewardModelConfig
    from prefkit.testing import tiny_llama, tiny_pairs, tiny_tokenizer

    tok = tiny_tokenizer()
    dirs = []
    for seed in (0, 1):
        model = RewardModel.from_backbone(tiny_llama(len(tok), seed=seed), RewardModelConfig(max_length=64), tok)
        dirs.append(str(model.save(tmp_path / f"rm{seed}")))
    data = tmp_path / "pairs.jsonl"
    records = tiny_pairs(12)
    write_jsonl(records, data)
    clean = tmp_path / "clean.jsonl"
    argv = ["data", "diagnose", str(data), "--rm", dirs[0], "--rm", dirs[1], "--min-margin", "0",
            "--write", str(clean), "--json"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    strength = preference_strength(list(load(data)), [RewardModel.load(d) for d in dirs])
    keep = int((strength.mean >= 0).sum())
    assert 0 < keep < 12  # the random tiny models keep some pairs and drop others (8 of 12)
    checks = {c["name"]: c for c in report["checks"]}
    assert checks["mislabelled"]["count"] == int(strength.mislabelled.sum())
    assert checks["below_min_margin"]["count"] == 12 - keep
    assert report["ensemble"]["written"] == keep
    assert report["ensemble"]["mean_margin"] == pytest.approx(float(strength.mean.mean()), abs=1e-5)
    back = load(clean)
    assert len(back) == keep and all(r.metadata["rm_margin_mean"] >= 0 for r in back)
    assert [(r.prompt, r.chosen, r.rejected) for r in back] == [
        (r.prompt, r.chosen, r.rejected) for r, m in zip(records, strength.mean, strict=True) if m >= 0]
    assert main(argv[:-1]) == 0  # the tables
    assert "likely mislabelled" in capsys.readouterr().out
