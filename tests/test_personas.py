"""Synthetic persona users (``prefkit.data.personas``), ``check_users`` and the ``prefkit data personas`` /
``inspect`` commands, on the committed 180-row excerpt (6 traits x 30 statements)."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest

from prefkit.cli.main import main
from prefkit.data import Pair, check_users, load, make_personas, read_statements
from prefkit.data.personas import PROMPT, PersonaConfig, _stance_patterns
from prefkit.errors import ConfigError, DataError

EXCERPT = Path(__file__).parent / "data" / "persona-excerpt.jsonl"
ROWS = [json.loads(line) for line in EXCERPT.read_text().splitlines()]


def _stance_follows(p, r: Pair) -> bool:
    """Whether pair ``r`` was answered by its (single-group) user's group stance."""
    return p.stances[r.metadata["trait"]][r.metadata["group"]] == r.metadata["chosen_expresses"]


def test_excerpt_reads_as_six_traits_with_both_kinds():
    table = read_statements(EXCERPT)
    assert len(table) == 6
    assert all(len(yes) == 15 and len(no) == 15 for yes, no in table.values())
    assert all(s.expresses for s in table["agreeableness"][0]) and not any(s.expresses for s in table["agreeableness"][1])


def test_deterministic_per_seed():
    a = make_personas(EXCERPT, groups=3, users=12, pairs_per_user=8, seed=5, noise="confidence", flip=0.1)
    b = make_personas(EXCERPT, groups=3, users=12, pairs_per_user=8, seed=5, noise="confidence", flip=0.1)
    c = make_personas(EXCERPT, groups=3, users=12, pairs_per_user=8, seed=6, noise="confidence", flip=0.1)
    assert a.records == b.records and [r.metadata for r in a.records] == [r.metadata for r in b.records]
    assert a.stances == b.stances and a.summary() == b.summary()
    assert a.records != c.records


def test_records_follow_stances_without_noise():
    p = make_personas(EXCERPT, groups=4, users=20, pairs_per_user=12, seed=0)
    assert len(p.records) == 240 and p.flipped == 0
    table = read_statements(EXCERPT)
    for r in p.records:
        m = r.metadata
        assert r.prompt == PROMPT and r.user_id is not None and r.id.startswith(r.user_id)
        assert set(m) == {"group", "trait", "chosen_expresses", "heldout"}
        assert m["group"] == p.groups[r.user_id]
        yes = {s.text for s in table[m["trait"]][0]}
        no = {s.text for s in table[m["trait"]][1]}
        assert (r.chosen in yes, r.rejected in no) == ((True, True) if m["chosen_expresses"] else (False, False))
        assert _stance_follows(p, r)
    # users of one group label the same pair alike; traits are balanced per user (12 pairs = 2 rounds of 6)
    labels = defaultdict(set)
    for r in p.records:
        labels[(r.metadata["group"], frozenset((r.chosen, r.rejected)))].add(r.chosen)
    assert all(len(v) == 1 for v in labels.values())
    per_user = Counter((r.user_id, r.metadata["trait"]) for r in p.records)
    assert set(per_user.values()) == {2}


def test_stances_and_disagreement_count():
    p = make_personas(EXCERPT, groups=4, users=8, pairs_per_user=6, disagree_traits=3, seed=1)
    assert len(p.disagreeing) == 3
    for t in p.traits:
        assert len(p.stances[t]) == 4
        assert (len(set(p.stances[t])) > 1) == (t in p.disagreeing)
    # K = 4, three disagreeing traits: the three 2-vs-2 splits, so every two groups differ on exactly 2
    diff = p.differences()
    assert all(diff[a][b] == 2 for a, b in combinations(range(4), 2))
    assert all(sum(p.stances[t]) == 2 for t in p.disagreeing)
    assert p.summary()["min_pairwise_difference"] == 2
    half = make_personas(EXCERPT, groups=2, users=4, pairs_per_user=6, disagree_traits=0.5, seed=1)
    assert len(half.disagreeing) == 3 and half.differences()[0][1] == 3
    everyone = make_personas(EXCERPT, groups=4, users=8, pairs_per_user=6, seed=1)
    assert len(everyone.disagreeing) == 6
    agree = make_personas(EXCERPT, groups=4, users=8, pairs_per_user=6, disagree_traits=0, seed=1)
    assert agree.disagreeing == () and max(map(max, agree.differences())) == 0
    one = make_personas(EXCERPT, groups=1, users=3, pairs_per_user=6, seed=1)
    assert one.disagreeing == () and set(one.groups.values()) == {0}


@pytest.mark.parametrize("k, count", [(2, 5), (3, 7), (4, 30), (5, 10), (8, 33), (16, 20)])
def test_stance_patterns_separate_every_two_groups(k, count):
    pats = np.array(_stance_patterns(k, count, np.random.default_rng(0)))  # (count, K)
    assert pats.shape == (count, k) and all(0 < row.sum() < k for row in pats)  # never constant
    diff = (pats[:, :, None] != pats[:, None, :]).sum(axis=0)[np.triu_indices(k, 1)]
    assert diff.min() >= count // 3 and diff.max() - diff.min() <= max(2, count // 3)


def test_label_noise_rates():
    base = dict(groups=2, users=60, pairs_per_user=30, seed=3)
    flip = make_personas(EXCERPT, flip=0.2, **base)
    wrong = sum(not _stance_follows(flip, r) for r in flip.records)
    assert wrong == flip.flipped and abs(wrong / len(flip.records) - 0.2) < 0.03
    conf = make_personas(EXCERPT, noise="confidence", **base)
    table = read_statements(EXCERPT)
    c = {s.text: s.confidence for yes, no in table.values() for s in yes + no}
    expected = np.mean([1 - (c[r.chosen] + c[r.rejected]) / 2 for r in conf.records])
    assert 0.01 < expected < 0.1
    rate = conf.flipped / len(conf.records)
    assert abs(rate - expected) < 0.03, (rate, expected)
    assert conf.flipped == sum(not _stance_follows(conf, r) for r in conf.records)


def test_mixture_users():
    p = make_personas(EXCERPT, groups=3, users=30, pairs_per_user=6, mixture=0.5, seed=2)
    for uid, w in p.weights.items():
        assert len(w) == 3 and abs(sum(w) - 1) < 1e-5 and p.groups[uid] == int(np.argmax(w))
    assert len({w for w in p.weights.values()}) == 30  # not one-hot
    for r in p.records:
        w = np.array(r.metadata["mixture"])
        assert r.metadata["group"] == p.groups[r.user_id] and abs(w.sum() - 1) < 1e-3
        # majority stance: for iff the weight of the groups that are for exceeds 1/2
        p_for = sum(wk for wk, s in zip(p.weights[r.user_id], p.stances[r.metadata["trait"]], strict=True) if s)
        if abs(p_for - 0.5) > 1e-3:
            assert r.metadata["chosen_expresses"] == (p_for > 0.5)
    per_pair = make_personas(EXCERPT, groups=3, users=30, pairs_per_user=12, mixture=0.5, seed=2,
                             mixture_stance="per_pair")
    answers = defaultdict(set)
    for r in per_pair.records:
        answers[(r.user_id, r.metadata["trait"])].add(r.metadata["chosen_expresses"])
    assert any(len(v) == 2 for v in answers.values())  # a mixture user answers a trait both ways


def test_group_shares_and_heldout_users():
    p = make_personas(EXCERPT, groups=2, users=20, pairs_per_user=6, group_shares=(0.8, 0.2), heldout=4, seed=0)
    assert p.summary()["group_sizes"] == [16, 4]
    assert len(p.heldout) == 4 and {p.groups[u] for u in p.heldout} == {0, 1}  # round-robin over groups
    for r in p.records:
        assert r.metadata["heldout"] == (r.user_id in p.heldout)
    frac = make_personas(EXCERPT, groups=4, users=40, pairs_per_user=6, heldout=0.25, seed=0)
    assert len(frac.heldout) == 10 and {frac.groups[u] for u in frac.heldout} == {0, 1, 2, 3}


def test_pairs_per_trait_pool_is_shared():
    p = make_personas(EXCERPT, groups=2, users=30, pairs_per_user=12, pairs_per_trait=3, seed=0)
    assert set(p.pool_sizes.values()) == {3}
    shown = Counter((r.metadata["trait"], frozenset((r.chosen, r.rejected))) for r in p.records)
    assert len(shown) == 18 and min(shown.values()) > 5
    big = make_personas(EXCERPT, groups=2, users=2, pairs_per_user=6, pairs_per_trait=40, seed=0)
    assert set(big.pool_sizes.values()) == {40}


def test_cli_round_trip_through_readers(tmp_path, capsys):
    out = tmp_path / "personas.jsonl.gz"
    summary = tmp_path / "summary.json"
    assert main(["data", "personas", "--statements", str(EXCERPT), "--groups", "4", "--users", "10",
                 "--pairs-per-user", "6", "--seed", "7", "--out", str(out), "--disagree", "4",
                 "--heldout", "0.2", "--mixture", "1.0", "--noise", "confidence", "--flip", "0.05",
                 "--pairs-per-trait", "5", "--summary", str(summary)]) == 0
    text = capsys.readouterr().out
    assert "wrote 60 pairs for 10 users (2 held out" in text and "agreeableness" in text
    records = load(out)
    expected = make_personas(EXCERPT, groups=4, users=10, pairs_per_user=6, seed=7, disagree_traits=4,
                             heldout=0.2, mixture=1.0, noise="confidence", flip=0.05, pairs_per_trait=5)
    assert list(records) == expected.records
    assert [r.metadata for r in records] == [r.metadata for r in expected.records]
    assert records[0].user_id == "u0000" and "mixture" in records[0].metadata
    report = json.loads(summary.read_text())
    assert report["disagreeing_traits"] == 4 and report["records"] == 60

    assert main(["data", "inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert "users: 10 (60 records with a user id)" in text
    assert "pairs per user: min 6, median 6.0, max 6" in text


def test_inspect_reports_uneven_pairs_per_user(tmp_path, capsys):
    rows = [{"prompt": "Q", "chosen": f"a{i}", "rejected": "b", "user_id": u}
            for i, u in enumerate(["u1", "u1", "u1", "u2", "u3", "u3"])]
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["data", "inspect", str(data)]) == 0
    assert "pairs per user: min 1, median 2, max 3" in capsys.readouterr().out


def test_check_users():
    p = make_personas(EXCERPT, groups=2, users=4, pairs_per_user=3, heldout=1, seed=0)
    counts = check_users(p.records)
    assert counts == {u: 3 for u in p.groups}
    seen = [u for u in p.groups if u not in p.heldout]
    with pytest.raises(DataError, match=r"1 user\(s\) in the eval split are unknown to the model \('u000\d'; "
                                        r"it knows 3 users\); add each with model.add_user"):
        check_users(p.records, known_users=seen, what="the eval split")
    check_users([r for r in p.records if r.user_id in seen], known_users=seen)
    with pytest.raises(DataError, match=r"1 user\(s\) have no pairs in the training split \('u0009'\)"):
        check_users(p.records, required_users=[*p.groups, "u0009"], what="the training split")
    blind = [Pair(prompt="Q", chosen="a", rejected="b"), *p.records]
    with pytest.raises(DataError, match=r"1 of 13 records in the records have no user_id \(first: record 0\)"):
        check_users(blind)


def test_statement_errors(tmp_path):
    bad = tmp_path / "s.jsonl"
    row = ROWS[0]

    def write(rows):
        bad.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return bad

    missing = {k: v for k, v in row.items() if k != "label_confidence"}
    with pytest.raises(DataError, match=r"s.jsonl line 2: statements row has no 'label_confidence'"):
        read_statements(write([row, missing]))
    with pytest.raises(DataError, match=r"line 1: field 'expresses_trait' must be true or false, got 'maybe'"):
        read_statements(write([{**row, "expresses_trait": "maybe"}]))
    with pytest.raises(DataError, match=r"field 'label_confidence' must be a number in \[0, 1\], got 1.5"):
        read_statements(write([{**row, "label_confidence": 1.5}]))
    with pytest.raises(DataError, match=r"trait 'agreeableness' has 1 statements expressing it and 0 not; every "
                                        "trait needs both kinds"):
        read_statements(write([row]))
    with pytest.raises(DataError, match=r"line 2: statement .* is labelled both as expressing the trait and as not"):
        read_statements(write([row, {**row, "expresses_trait": False}]))
    with pytest.raises(DataError, match="no statements"):
        read_statements([])
    csv = tmp_path / "s.csv"
    csv.write_text("trait,statement,expresses_trait,label_confidence\nt,I agree,true,0.9\nt,I do not,false,0.8\n")
    assert [len(x) for x in read_statements(csv)["t"]] == [1, 1]


def test_config_errors():
    for options, message in [
        ({"groups": 0}, r"groups must be an integer >= 1, got 0"),
        ({"users": 2.5}, r"users must be an integer >= 1"),
        ({"groups": 1, "disagree_traits": 2}, r"disagree_traits=2 needs at least 2 groups"),
        ({"disagree_traits": 1.5}, r"disagree_traits=1.5 must be a fraction in \[0, 1\]"),
        ({"disagree_traits": True}, r"disagree_traits must be a count \(int\) or a fraction"),
        ({"heldout": 11, "users": 10}, r"heldout=11 is out of range: there are 10 users"),
        ({"group_shares": (1.0,)}, r"group_shares must be 4 positive numbers"),
        ({"mixture": 0}, r"mixture \(the Dirichlet concentration\) must be a number > 0"),
        ({"noise": "confidense"}, r"noise must be one of \['none', 'confidence'\].*did you mean 'confidence'"),
        ({"flip": 0.7}, r"flip must be a probability in \[0, 0.5\]"),
        ({"mixture_stance": "avg"}, r"mixture_stance must be one of"),
    ]:
        with pytest.raises(ConfigError, match=message):
            PersonaConfig(**options)
    with pytest.raises(ConfigError, match=r"disagree_traits=9 is out of range: there are 6 traits"):
        make_personas(EXCERPT, disagree_traits=9)
    with pytest.raises(ConfigError, match=r"trait 'agreeablenes' is not in the statements \(did you mean "
                                          r"'agreeableness'\?\)"):
        make_personas(EXCERPT, traits=("agreeablenes",))
    with pytest.raises(ConfigError, match=r"pairs_per_trait=300 is more than trait .* allows \(15 x 15 = 225"):
        make_personas(EXCERPT, pairs_per_trait=300)
    with pytest.raises(ConfigError, match=r"unknown persona option 'user'"):
        make_personas(EXCERPT, user=3)


def test_cli_errors_are_one_line(tmp_path, capsys):
    out = str(tmp_path / "o.jsonl")
    assert main(["data", "personas", "--statements", str(EXCERPT), "--out", out, "--groups", "0"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "groups must be an integer >= 1, got 0" in err
    assert main(["data", "personas", "--statements", str(EXCERPT), "--out", out, "--disagree", "half"]) == 1
    assert "--disagree 'half' must be a count (e.g. 12) or a fraction" in capsys.readouterr().err
    assert main(["data", "personas", "--statements", str(tmp_path / "none.jsonl"), "--out", out]) == 1
    assert capsys.readouterr().err.count("\n") == 1
