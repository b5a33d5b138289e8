"""``prefkit.eval.personal``: the user-blind ceiling on hand-made records, accuracy per user and group,
the shots curve with a fake personalized model, and ``prefkit rm eval`` on records with user ids."""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Sequence

import pytest
import torch

from prefkit.data.records import Pair
from prefkit.errors import DataError
from prefkit.eval.personal import (
    adapt_unseen_users,
    adjusted_rand_index,
    blind_majority,
    ceiling_by_group,
    group_recovery,
    pair_key,
    pair_orientation,
    persona_key,
    persona_orientation,
    personal_accuracy,
    personal_report,
    plot_shots_curves,
    shots_curve,
    user_blind_ceiling,
)

Q = "Which statement is closer to your own views?"


def persona(user: str, group: int, trait: str, expresses: bool, i: int = 0) -> Pair:
    """A persona-style pair: statement ``{trait}+{i}`` expresses the trait, ``{trait}-{i}`` does not."""
    yes, no = f"{trait}+{i}", f"{trait}-{i}"
    return Pair(prompt=Q, chosen=yes if expresses else no, rejected=no if expresses else yes, user_id=user,
                metadata={"group": group, "trait": trait, "chosen_expresses": expresses})


class FakePersonal:
    """A personalized model for tests: each user has a stance (True = prefers the expressing statement);
    ``add_user`` sets it to the majority of the shots' ``chosen_expresses`` (a tie: no opinion, logit 0).
    It records every call so tests can check what was asked."""

    def __init__(self, stances: dict[str, bool | None]):
        self.stances = dict(stances)
        self.added: list[tuple[str, list[Pair]]] = []
        self.scored: list[list[Pair]] = []
        self.head = type("Head", (), {"personal": True, "users": list(stances)})()

    def add_user(self, user_id: str, shots: Sequence[Pair], **_: object) -> None:
        self.added.append((user_id, list(shots)))
        votes = sum(1 if r.metadata["chosen_expresses"] else -1 for r in shots)
        self.stances[user_id] = None if votes == 0 else votes > 0

    def pair_logits(self, records: Sequence[Pair], *, batch_size: int = 64) -> torch.Tensor:
        self.scored.append(list(records))
        out = []
        for r in records:
            if r.user_id not in self.stances:
                raise DataError(f"unknown user {r.user_id!r}")
            s = self.stances[r.user_id]
            out.append(0.0 if s is None else (1.0 if s == r.metadata["chosen_expresses"] else -1.0))
        return torch.tensor(out)


# -- ceiling ------------------------------------------------------------------------------------------


def ceiling_records() -> list[Pair]:
    """Trait a: 3 users choose the expressing statement, 1 the other; trait b: 2 and 2; trait c: 0 and 1.
    By trait the ceiling is (3 + 2 + 1) / 9 = 2/3."""
    spec = [("a", True), ("a", True), ("a", True), ("a", False), ("b", True), ("b", False), ("b", True),
            ("b", False), ("c", False)]
    return [persona(f"u{i}", i % 2, t, e) for i, (t, e) in enumerate(spec)]


def test_ceiling_by_trait_is_the_majority_share():
    records = ceiling_records()
    by_trait = {"key": persona_key, "orientation": persona_orientation}
    assert user_blind_ceiling(records, **by_trait) == pytest.approx(6 / 9)
    assert blind_majority(records, **by_trait) == {"a": (3, 1), "b": (2, 2), "c": (0, 1)}


def test_ceiling_by_exact_pair_default_key():
    """Default key: prompt + unordered pair. Every record above is its trait's pair 0, so the same 2/3;
    making trait b's pairs distinct (i = 0, 1, 2, 3) lets a user-blind model get all of b right."""
    records = ceiling_records()
    assert user_blind_ceiling(records) == pytest.approx(6 / 9)
    distinct_b = [persona(r.user_id, 0, "b", r.metadata["chosen_expresses"], i)
                  if r.metadata["trait"] == "b" else r for i, r in enumerate(records)]
    assert user_blind_ceiling(distinct_b) == pytest.approx(8 / 9)
    by_trait = {"key": persona_key, "orientation": persona_orientation}
    assert user_blind_ceiling(distinct_b, **by_trait) == pytest.approx(6 / 9)
    # the default orientation is order-free: swapping chosen and rejected flips it
    r = records[0]
    swapped = Pair(prompt=r.prompt, chosen=r.rejected, rejected=r.chosen)
    assert pair_orientation(r) != pair_orientation(swapped) and pair_key(r) == pair_key(swapped)


def test_ceiling_equals_the_best_user_blind_predictor_by_brute_force():
    """Enumerate every user-blind rule (one oriented winner per key): the best equals the ceiling."""
    records = ceiling_records() + [persona("u9", 1, "c", True, 0), persona("u10", 0, "c", False, 0)]
    keys = sorted({persona_key(r) for r in records})
    best = 0.0
    for choice in itertools.product([True, False], repeat=len(keys)):
        rule = dict(zip(keys, choice, strict=True))
        acc = sum(rule[persona_key(r)] == persona_orientation(r) for r in records) / len(records)
        best = max(best, acc)
    ceiling = user_blind_ceiling(records, key=persona_key, orientation=persona_orientation)
    assert ceiling == pytest.approx(best)


def test_ceiling_by_group_charges_the_minority():
    records = ceiling_records()
    by_group = ceiling_by_group(records, persona_key, persona_orientation)
    # majority rule: a -> expresses, b (2-2 tie) -> expresses, c -> not. Group 0 = users 0,2,4,6,8:
    # a T ok, a T ok, b T ok, b T ok, c F ok -> 1.0; group 1 = users 1,3,5,7: a T ok, a F no, b F no, b F no
    assert by_group == {"0": 1.0, "1": 0.25}


def test_ceiling_without_pairs_or_metadata_is_a_clear_error():
    with pytest.raises(DataError, match="no \\(non-tie\\) preference pairs"):
        user_blind_ceiling([])
    with pytest.raises(DataError, match="metadata\\['trait'\\]"):
        user_blind_ceiling([Pair(prompt="p", chosen="a", rejected="b")], key=persona_key)


# -- accuracy per user and group ----------------------------------------------------------------------


def test_personal_report_per_user_and_group():
    records = ceiling_records()
    logits = [1.0, 1.0, -1.0, 0.0, 2.0, 2.0, -3.0, -3.0, 1.0]  # right, right, wrong, half, ...
    report = personal_report(logits, records)
    assert report["n"] == 9
    assert report["accuracy"] == pytest.approx((1 + 1 + 0 + 0.5 + 1 + 1 + 0 + 0 + 1) / 9)
    assert report["per_user"]["u3"] == {"n": 1, "accuracy": 0.5}
    assert report["per_group"]["0"] == {"n": 5, "accuracy": pytest.approx(3 / 5)}  # u0 u2 u4 u6 u8
    assert report["per_group"]["1"] == {"n": 4, "accuracy": pytest.approx(2.5 / 4)}  # u1 u3 u5 u7
    users = report["users"]
    assert users["count"] == 9 and users["min"] == 0.0 and users["mean"] == pytest.approx(report["accuracy"])
    assert [w["user"] for w in users["worst"]] == ["u2", "u6", "u7", "u3", "u0"]


def test_personal_accuracy_scores_each_record_for_its_user():
    records = ceiling_records()
    model = FakePersonal({f"u{i}": True for i in range(9)} | {"u3": False, "u5": False})
    report = personal_accuracy(model, records)
    # stance True is right where chosen_expresses: u0 u1 u2 u4 u6 (T) right, u8 (F) wrong;
    # stance False: u3 (F) right, u5 (F) right; u7 (F) is True-stanced and wrong
    assert report["accuracy"] == pytest.approx(7 / 9)
    assert report["per_user"]["u8"]["accuracy"] == 0.0 and report["per_user"]["u3"]["accuracy"] == 1.0
    assert model.scored == [records]


# -- shots curve --------------------------------------------------------------------------------------


def heldout_users(n_users: int = 4, pairs: int = 30, flip_every: int = 0) -> list[Pair]:
    """Users alternating stance True/False, group = stance; every ``flip_every``-th pair goes against it."""
    out = []
    for u in range(n_users):
        stance = u % 2 == 0
        for j in range(pairs):
            answer = stance if not flip_every or j % flip_every else not stance
            out.append(persona(f"h{u}", int(stance), f"t{j % 3}", answer, j))
    return out


def test_shots_curve_same_remaining_set_and_nested_shots():
    records = heldout_users(flip_every=3)  # a third of each user's answers go against their stance
    model = FakePersonal({})
    curve = shots_curve(model, records, shots=(1, 5, 10, 20), seed=3)
    assert curve["shots"] == [1, 5, 10, 20] and curve["users"] == 4 and curve["scored_pairs"] == 4 * 10
    assert len(model.scored) == 4 and all(s == model.scored[0] for s in model.scored)  # one remaining set
    shots_of = {}
    for user, shots in model.added:
        shots_of.setdefault(user, []).append(shots)
    for seq in shots_of.values():
        assert [len(s) for s in seq] == [1, 5, 10, 20]
        assert all(seq[i] == seq[i + 1][:len(seq[i])] for i in range(3))  # nested
    scored_ids = {id(r) for r in model.scored[0]}
    assert not scored_ids & {id(r) for seq in shots_of.values() for r in seq[-1]}  # shots never scored
    # 20 shots recover every stance, so accuracy = the share of answers that follow the stance
    follows = sum(r.metadata["chosen_expresses"] == (r.user_id in ("h0", "h2")) for r in model.scored[0])
    assert curve["accuracy"][-1] == pytest.approx(follows / 40)
    assert set(curve["per_group"]) == {"0", "1"} and len(curve["per_group"]["0"]) == 4
    # the same seed gives the same curve; the shot choice depends on the seed
    again = shots_curve(FakePersonal({}), records, shots=(1, 5, 10, 20), seed=3)
    assert again["accuracy"] == curve["accuracy"]


def test_shots_curve_clean_users_one_shot_is_enough_and_repeats_average():
    records = heldout_users(n_users=3, pairs=12)
    curve = shots_curve(lambda: FakePersonal({}), records, shots=(1, 5), repeats=3)
    assert curve["accuracy"] == [1.0, 1.0] and curve["accuracy_std"] == [0.0, 0.0] and curve["repeats"] == 3
    assert curve["user_mean"] == [1.0, 1.0]


def test_shots_curve_skips_small_users_and_checks_arguments():
    records = heldout_users(n_users=2, pairs=12) + [persona("tiny", 0, "t0", True, 0)]
    curve = shots_curve(FakePersonal({}), records, shots=(1, 5))
    assert curve["users"] == 2 and curve["skipped_users"] == 1
    with pytest.raises(DataError, match="more than 50 pairs"):
        shots_curve(FakePersonal({}), records)
    with pytest.raises(Exception, match="positive"):
        shots_curve(FakePersonal({}), records, shots=(0, 5))
    with pytest.raises(DataError, match="no user_id"):
        shots_curve(FakePersonal({}), [Pair(prompt="p", chosen="a", rejected="b")], shots=(1,))


def test_plot_shots_curves_writes_a_png(tmp_path):
    curve = {"shots": [1, 5, 10], "accuracy": [0.6, 0.8, 0.9]}
    path = plot_shots_curves({"PAL": curve, "BT": {"shots": [1, 5, 10], "accuracy": [0.7] * 3}},
                             tmp_path / "c" / "shots.png", ceiling=0.72)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- unseen users and group recovery ------------------------------------------------------------------


def test_adapt_unseen_users_needs_shots_and_names_the_users():
    records = heldout_users(n_users=3, pairs=6)
    model = FakePersonal({"h0": True})
    with pytest.raises(DataError, match="2 users in the data are unknown to the model.*h1, h2.*--shots K"):
        adapt_unseen_users(model, records, None)
    left, info = adapt_unseen_users(model, records, 4)
    assert info == {"unseen_users": 2, "shots": 4, "shot_pairs": 8, "users_without_pairs_left": 0}
    assert len(left) == 18 - 8 and [u for u, _ in model.added] == ["h1", "h2"]
    assert model.added[0][1] == [r for r in records if r.user_id == "h1"][:4]  # the first K, file order
    blind = type("M", (), {"head": object()})()
    assert adapt_unseen_users(blind, records, None)[0] == records


def test_adjusted_rand_index_and_group_recovery():
    assert adjusted_rand_index(["a", "a", "b", "b"], [1, 1, 0, 0]) == pytest.approx(1.0)
    # hand-computed: contingency [[2, 0], [1, 1]]; sum C(n_ij, 2) = 1; rows C(2,2)*2 = 2; cols C(3,2)+0 = 3;
    # expected = 2 * 3 / C(4, 2) = 1; max = (2 + 3) / 2 = 2.5; ARI = (1 - 1) / (2.5 - 1) = 0
    assert adjusted_rand_index([0, 0, 1, 1], [0, 0, 0, 1]) == pytest.approx(0.0)
    records = ceiling_records()
    assignment = {r.user_id: 7 if r.metadata["group"] == 0 else 3 for r in records}
    assert group_recovery(assignment, records) == pytest.approx(1.0)
    with pytest.raises(DataError, match="no cluster assignment"):
        group_recovery({}, records)


# -- prefkit rm eval ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved_rm(tmp_path_factory):
    from prefkit.models.reward import RewardModel, RewardModelConfig
    from prefkit.testing import tiny_llama, tiny_tokenizer

    tok = tiny_tokenizer()
    model = RewardModel.from_backbone(tiny_llama(len(tok)), RewardModelConfig(max_length=64), tok)
    return model.save(tmp_path_factory.mktemp("rm") / "model")


def write_records(records: list[Pair], path) -> str:
    from prefkit.data.writers import write_jsonl

    write_jsonl(records, path)
    return str(path)


def test_rm_eval_reports_per_user_and_group(saved_rm, tmp_path, capsys):
    from prefkit.cli.main import main

    data = write_records(heldout_users(n_users=3, pairs=5), tmp_path / "p.jsonl")
    out = tmp_path / "ev"
    assert main(["rm", "eval", str(saved_rm), data, "--out", str(out), "--no-plots"]) == 0
    printed = capsys.readouterr().out
    assert "per user: 3 users" in printed and "worst:" in printed and "Accuracy per group" in printed
    personal = json.loads((out / "rm_eval.json").read_text())["personal"]
    assert personal["n"] == 15 and set(personal["per_user"]) == {"h0", "h1", "h2"}
    assert set(personal["per_group"]) == {"0", "1"} and personal["users"]["count"] == 3
    assert not math.isnan(personal["accuracy"])
    # a user-blind model: --shots only notes that it has no effect
    assert main(["rm", "eval", str(saved_rm), data, "--out", str(out), "--no-plots", "--shots", "2"]) == 0
    assert "user-blind" in capsys.readouterr().out


def test_rm_eval_unknown_users_and_shots(saved_rm, tmp_path, capsys, monkeypatch):
    """A personalized model (the fake) that knows only h0: unknown users are one clear error; --shots K
    adapts them from their first K pairs and scores the rest, per user."""
    from prefkit.cli import rm as rm_cli
    from prefkit.cli.main import main

    data = write_records(heldout_users(n_users=3, pairs=6), tmp_path / "p.jsonl")
    fake = FakePersonal({"h0": True})
    monkeypatch.setattr(rm_cli, "_load_model", lambda path: fake)
    assert main(["rm", "eval", str(saved_rm), data, "--out", str(tmp_path / "a"), "--no-plots"]) == 1
    err = capsys.readouterr().err
    assert "unknown to the model" in err and "h1, h2" in err and "--shots K" in err and "Traceback" not in err
    assert main(["rm", "eval", str(saved_rm), data, "--out", str(tmp_path / "b"), "--no-plots",
                 "--shots", "2"]) == 0
    printed = capsys.readouterr().out
    assert "adapted 2 unseen users from their first 2 pairs" in printed
    personal = json.loads((tmp_path / "b" / "rm_eval.json").read_text())["personal"]
    assert personal["n"] == 6 + 4 + 4 and personal["accuracy"] == 1.0
    assert personal["adapted"]["shot_pairs"] == 4


def test_rm_train_pal_and_maxmin_then_eval_unseen_users(tmp_path, capsys):
    """End to end on a tiny frozen backbone: rm train a PAL head (and a MaxMin head, routed to EM), then
    rm eval on seen + unseen users: unknown users are one clear error, --shots adapts them."""
    from prefkit.cli.main import main
    from prefkit.testing import tiny_llama, tiny_tokenizer

    tok = tiny_tokenizer()
    backbone = tmp_path / "backbone"
    tiny_llama(len(tok)).save_pretrained(backbone)
    tok.save_pretrained(backbone)
    records = heldout_users(n_users=6, pairs=8)
    seen = [r for r in records if r.user_id in ("h0", "h1", "h2", "h3")]
    train = write_records(seen, tmp_path / "train.jsonl")
    data = write_records(records, tmp_path / "all.jsonl")
    for head in ("pal", "maxmin"):
        config = tmp_path / f"{head}.yaml"
        config.write_text(f"""
model: {{path: {backbone}}}
reward: {{head: {head}, components: 2, frozen_backbone: true, max_length: 32}}
data: {{train: {train}}}
train: {{batch_size: 8, max_steps: 3, lr: 1.0e-2, progress: false}}
output: {{dir: {tmp_path / head}, tensorboard: false, plots: false}}
""")
        assert main(["rm", "train", "--config", str(config)]) == 0
    assert "MaxMin: 4 users in" in capsys.readouterr().out
    model = str(tmp_path / "pal" / "model")
    assert main(["rm", "eval", model, data, "--out", str(tmp_path / "e1"), "--no-plots"]) == 1
    err = capsys.readouterr().err
    assert "2 users in the data are unknown to the model (trained on 4 users): h4, h5" in err
    assert main(["rm", "eval", model, data, "--out", str(tmp_path / "e2"), "--no-plots", "--shots", "3"]) == 0
    assert "adapted 2 unseen users from their first 3 pairs" in capsys.readouterr().out
    personal = json.loads((tmp_path / "e2" / "rm_eval.json").read_text())["personal"]
    assert personal["n"] == 4 * 8 + 2 * 5 and set(personal["per_user"]) == {f"h{i}" for i in range(6)}
