"""The arena (``prefkit.eval.arena``, ``prefkit arena``): Bradley–Terry ratings recover planted strengths
with honest intervals; Kendall's τ-b and online Elo match hand computations; files and CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from prefkit.cli.main import main
from prefkit.errors import ConfigError, DataError
from prefkit.eval.arena import (
    HALF,
    TIE_MODELS,
    Battles,
    battles_from_rows,
    elo_ratings,
    fit_bradley_terry,
    kendall_tau,
    read_battles,
)

ELO = 400 / math.log(10)  # Elo points per unit of BT strength


def _simulate(strengths: np.ndarray, n: int, seed: int, nu: float = 0.0) -> Battles:
    """n battles between uniformly drawn distinct players; Davidson outcomes (ν = 0: Bradley–Terry)."""
    rng = np.random.default_rng(seed)
    p = strengths.size
    a = rng.integers(0, p, n)
    b = (a + rng.integers(1, p, n)) % p
    pa, pb = np.exp(strengths[a]), np.exp(strengths[b])
    tie = nu * np.sqrt(pa * pb)
    u = rng.random(n) * (pa + pb + tie)
    outcome = np.where(u < pa, 1.0, np.where(u < pa + tie, 0.5, 0.0))
    return Battles(tuple(f"p{i}" for i in range(p)), a, b, outcome)


def _truth(strengths: np.ndarray, anchor: int | None = None) -> dict[str, float]:
    center = strengths.mean() if anchor is None else strengths[anchor]
    return {f"p{i}": 1000 + ELO * (s - center) for i, s in enumerate(strengths)}


def test_planted_strengths_are_recovered_with_covering_intervals():
    """2,000 simulated BT battles among 8 players: Kendall τ ≥ 0.9 with the truth and the 95% intervals
    cover ≥ 7 of 8 true ratings (mean anchored at 1000, same Elo scale)."""
    strengths = np.random.default_rng(0).permutation(np.linspace(-1.4, 1.4, 8))  # 0.4 apart: ~70 Elo
    battles = _simulate(strengths, 2000, seed=1)
    arena = fit_bradley_terry(battles, bootstrap=1000, seed=0)
    truth = _truth(strengths)
    tau = kendall_tau(arena.rating_of(), truth)
    covered = sum(r.low <= truth[r.model] <= r.high for r in arena.ratings)
    assert tau >= 0.9, tau
    assert covered >= 7, [(r.model, r.low, truth[r.model], r.high) for r in arena.ratings]
    assert np.mean([r.rating for r in arena.ratings]) == pytest.approx(1000, abs=1e-6)
    assert sum(r.battles for r in arena.ratings) == 2 * 2000
    assert [r.rating for r in arena.ratings] == sorted((r.rating for r in arena.ratings), reverse=True)


def test_anchor_moves_ratings_not_differences():
    battles = _simulate(np.array([0.0, 0.5, 1.0]), 300, seed=2)
    free = fit_bradley_terry(battles, bootstrap=50, seed=0).rating_of()
    anchored = fit_bradley_terry(battles, bootstrap=50, seed=0, anchor="p1")
    ratings = anchored.rating_of()
    assert ratings["p1"] == pytest.approx(1000)
    row = next(r for r in anchored.ratings if r.model == "p1")
    assert row.low == pytest.approx(1000) and row.high == pytest.approx(1000)  # the anchor is fixed
    for m in free:
        assert ratings[m] - ratings["p0"] == pytest.approx(free[m] - free["p0"], abs=1e-3)


def test_two_models_golden():
    """A beats B 3 times in 4: the MLE has σ(Δθ) = ¾, Δθ = ln 3, a gap of 400·log10(3) = 190.85 Elo. Two
    wins and two ties with ties as half wins is again 3 of 4."""
    rows = [{"model_a": "A", "model_b": "B", "winner": w} for w in ("model_a", "model_a", "model_b")]
    rows.append({"model_a": "B", "model_b": "A", "winner": "model_b"})
    r = fit_bradley_terry(rows, bootstrap=0, l2=0.0).rating_of()
    assert r["A"] - r["B"] == pytest.approx(400 * math.log10(3), abs=1e-3)
    assert (r["A"] + r["B"]) / 2 == pytest.approx(1000)
    ties = [{"model_a": "A", "model_b": "B", "winner": w} for w in ("model_a", "tie", "model_a", "tie")]
    r = fit_bradley_terry(ties, bootstrap=0, l2=0.0, ties=HALF).rating_of()
    assert r["A"] - r["B"] == pytest.approx(400 * math.log10(3), abs=1e-3)


def test_tie_models_fit_their_tie_parameter():
    """Battles drawn from Davidson's model with ν = 0.6 (≈20% ties): the Davidson fit recovers ν; half
    wins shrink the ratings towards each other; every tie model ranks the players right."""
    strengths = np.linspace(-1.0, 1.0, 5)
    battles = _simulate(strengths, 3000, seed=3, nu=0.6)
    truth = _truth(strengths)
    fits = {ties: fit_bradley_terry(battles, bootstrap=100, seed=0, ties=ties) for ties in (HALF, *TIE_MODELS)}
    assert set(TIE_MODELS) and fits[HALF].tie_param is None
    for ties, fit in fits.items():
        assert kendall_tau(fit.rating_of(), truth) == pytest.approx(1.0), ties
        if ties != HALF:
            assert fit.tie_param is not None and fit.ties == ties
    assert set(TIE_MODELS) == {"davidson", "rao_kupper"}
    assert fits["davidson"].tie_param == pytest.approx(0.6, abs=0.1)
    assert fits["rao_kupper"].tie_param > 1
    spread = {t: np.ptp(list(f.rating_of().values())) for t, f in fits.items()}
    assert spread[HALF] < spread["davidson"]


@pytest.mark.parametrize("a, b, tau", [
    ([1, 2, 3, 4], [1, 2, 3, 4], 1.0),
    ([1, 2, 3, 4], [4, 3, 2, 1], -1.0),
    ([1, 2, 3, 4], [1, 3, 2, 4], 2 / 3),  # 6 pairs, 1 discordant: (5 − 1)/6
    ([1, 2, 2, 3], [1, 2, 3, 3], 0.8),  # C − D = 4; one tie in each: 4/√(5·5)
    ({"x": 1, "y": 2, "z": 3}, {"z": 3, "y": 1, "x": 2}, 1 / 3),  # by key: (x,y) D, (x,z) C, (y,z) C
])
def test_kendall_tau_golden(a, b, tau):
    assert kendall_tau(a, b) == pytest.approx(tau)


def test_kendall_tau_edge_cases_and_scipy():
    assert math.isnan(kendall_tau([1, 1, 1], [1, 2, 3]))
    with pytest.raises(ValueError):
        kendall_tau([1, 2], [1, 2, 3])
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 5, 30), rng.integers(0, 5, 30)  # many ties
    assert kendall_tau(x, y) == pytest.approx(stats.kendalltau(x, y).statistic)


def test_online_elo_golden():
    """A beats B: E = ½, so A = 1000 + 4·½ = 1002, B = 998. Then B beats A:
    E_B = 1/(1 + 10^((1002 − 998)/400)) = 0.494244, B = 998 + 4·(1 − 0.494244) = 1000.023025."""
    rows = [{"model_a": "A", "model_b": "B", "winner": "model_a"},
            {"model_a": "B", "model_b": "A", "winner": "model_a"}]
    r = elo_ratings(rows, k=4)
    assert r["B"] == pytest.approx(1000.023025, abs=1e-5)
    assert r["A"] == pytest.approx(999.976975, abs=1e-5)


def test_read_battles_jsonl_and_errors(tmp_path):
    good = tmp_path / "b.jsonl"
    good.write_text('{"model_a": "x", "model_b": "y", "winner": "tie (bothbad)", "turn": 1}\n'
                    '{"model_a": "y", "model_b": "z", "winner": "model_b"}\n')
    battles = read_battles(good)
    assert battles.models == ("x", "y", "z") and battles.outcome.tolist() == [0.5, 0.0]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"model_a": "x", "model_b": "y", "winner": "model_a"}\n'
                   '{"model_a": "x", "model_b": "y", "winner": "a"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl line 2: winner must be one of"):
        read_battles(bad)
    with pytest.raises(DataError, match="battles itself"):
        battles_from_rows([{"model_a": "x", "model_b": "x", "winner": "tie"}])
    with pytest.raises(ConfigError, match="anchor 'w'"):
        fit_bradley_terry(good, anchor="w", bootstrap=0)
    with pytest.raises(ConfigError, match="ties must be one of"):
        fit_bradley_terry(good, ties="thirds", bootstrap=0)


def test_cli_prints_table_and_writes_png(tmp_path, capsys):
    path = tmp_path / "battles.jsonl"
    rows = [("gpt", "llama", "model_a"), ("llama", "mistral", "model_a"), ("gpt", "mistral", "tie"),
            ("mistral", "gpt", "model_b"), ("llama", "gpt", "model_b"), ("mistral", "llama", "model_a")]
    path.write_text("".join(json.dumps(dict(zip(("model_a", "model_b", "winner"), r, strict=True))) + "\n"
                            for r in rows))
    png = tmp_path / "arena.png"
    assert main(["arena", str(path), "--anchor", "llama", "--bootstrap", "50", "--out", str(png)]) == 0
    out = capsys.readouterr().out
    for text in ("rank", "rating", "95% CI", "win rate", "gpt", "mistral", "1000.0", "llama = 1000"):
        assert text in out, text
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_bad_column_is_one_line(tmp_path, capsys):
    path = tmp_path / "battles.csv"
    path.write_text("model_a,model_b,result\nx,y,model_a\n")
    assert main(["arena", str(path), "--out", str(tmp_path / "a.png")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "missing column 'winner'" in err and "\n" not in err
    assert not (tmp_path / "a.png").exists()
