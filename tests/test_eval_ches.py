"""Likelihood displacement and CHES (prefkit.eval.displacement; Razin et al. 2024)."""

from __future__ import annotations

import copy
import random
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import nn

from prefkit.data.records import Pair
from prefkit.eval.displacement import (
    DisplacementTracker,
    add_ches,
    ches_scores,
    displacement_from_metrics,
    filter_top_ches,
    likelihood_displacement,
)
from prefkit.models.load import frozen_copy
from prefkit.toy import world
from prefkit.toy.demo import QUICK, sft_policy
from prefkit.train.config import load_config
from prefkit.train.trainer import Trainer


class _Decoder(nn.Module):
    """A "decoder" whose hidden state at t is the embedding of token t (no mixing): easy to sum by hand."""

    def __init__(self, embed: nn.Embedding):
        super().__init__()
        self.embed = embed

    def forward(self, input_ids: torch.Tensor, attention_mask: Any = None, use_cache: Any = None) -> Any:
        return SimpleNamespace(last_hidden_state=self.embed(input_ids))


class _LookupLM(nn.Module):
    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.decoder = _Decoder(nn.Embedding.from_pretrained(table))
        self.head = nn.Linear(table.shape[1], table.shape[0], bias=False)

    def get_decoder(self) -> nn.Module:
        return self.decoder

    def get_output_embeddings(self) -> nn.Module:
        return self.head


def test_ches_golden() -> None:
    """Toy ids: ':' 3, 'up' 7, digit d 8 + d, EOS 1. Prompt "up 3 :" = [7, 11, 3].

    chosen "4" -> [7, 11, 3 | 12, EOS]: the states predicting 12 and EOS sit on tokens 3 and 12;
    rejected "5 6" -> [7, 11, 3 | 13, 14, EOS]: states on 3, 13, 14.
    With E[3] = (1, 0), E[12] = (0, 1), E[13] = (1, 1), E[14] = (2, 0):
    S+ = (1, 1), S− = (1, 0) + (1, 1) + (2, 0) = (4, 1).
    CHES = ⟨S+, S−⟩ − ‖S+‖² = 5 − 2 = 3; normalised 5 / (2·3) − 2 / 2² = 1/3.
    Swapped (chosen "5 6"): ⟨S−, S+⟩ − ‖S−‖² = 5 − 17 = −12. Padding in the batch changes nothing.
    """
    table = torch.zeros(18, 2)
    table[3], table[12], table[13], table[14] = torch.tensor([1.0, 0]), torch.tensor([0, 1.0]), \
        torch.tensor([1.0, 1]), torch.tensor([2.0, 0])
    table[[0, 1, 2]] = 100.0  # pad, EOS and unk states must never be summed
    model, tok = _LookupLM(table), world.build_tokenizer()
    pairs = [Pair("up 3 :", "4", "5 6"), Pair("up 3 :", "5 6", "4")]
    assert ches_scores(model, tok, pairs).tolist() == pytest.approx([3.0, -12.0])
    assert ches_scores(model, tok, pairs, length_normalize=True).tolist() == pytest.approx([1 / 3, 5 / 6 - 17 / 9])
    assert ches_scores(model, tok, pairs[:1], batch_size=1).tolist() == pytest.approx([3.0])


def test_add_and_filter_top_ches() -> None:
    pairs = [Pair("up 1 :", f"{i} 2", "9 9", metadata={"i": i}) for i in range(4)]
    scored = add_ches(pairs, [0.1, 0.9, 0.5, 0.3])
    assert [p.metadata for p in scored][1] == {"i": 1, "ches": 0.9} and "ches" not in pairs[1].metadata
    kept, removed = filter_top_ches(scored, 0.25)
    assert [p.metadata["i"] for p in kept] == [0, 2, 3] and [p.metadata["i"] for p in removed] == [1]
    kept, removed = filter_top_ches(scored, 0.5)
    assert [p.metadata["i"] for p in kept] == [0, 3] and [p.metadata["i"] for p in removed] == [1, 2]
    with pytest.raises(ValueError, match="add_ches"):
        filter_top_ches(pairs, 0.1)
    with pytest.raises(ValueError, match="scores for"):
        add_ches(pairs, [1.0])


@pytest.fixture(scope="module")
def toy_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The demo's SFT stage (quick sizes), then DPO (β 0.5, 150 steps of 32, as the quick demo) on all
    training pairs, and again, same seed, without the 10% of pairs with the highest CHES."""
    tmp = tmp_path_factory.mktemp("ches")
    torch.manual_seed(0)
    rng, tok = random.Random(0), world.build_tokenizer()
    sft = sft_policy(tok, QUICK, 0, rng, tmp / "sft", plots=False)
    train = world.preference_pairs(QUICK.train_pairs, rng)
    held = world.preference_pairs(200, rng)
    reference = frozen_copy(sft)

    def dpo(pairs: list[Pair], name: str) -> nn.Module:
        policy = copy.deepcopy(sft)
        cfg = load_config(overrides=[
            f"output.dir={tmp / name}", "output.save_model=false", "output.plots=false",
            "output.tensorboard=false", "train.progress=false", "train.max_steps=150", "train.batch_size=32",
            "train.lr=1e-3", "train.scheduler=constant", "train.warmup_steps=10", "train.eval_every=75",
            "loss.name=dpo", "loss.beta=0.5"])
        Trainer(cfg, policy, tok, pairs, held, reference_model=reference).train()
        return policy

    ches = ches_scores(reference, tok, train)
    kept, removed = filter_top_ches(add_ches(train, ches), 0.1)
    top = set(ches.argsort()[-len(removed):].tolist())
    return {"tok": tok, "train": train, "held": held, "reference": reference, "ches": ches, "tmp": tmp,
            "kept_index": [i for i in range(len(train)) if i not in top],
            "full": dpo(train, "full"), "filtered": dpo(kept, "filtered")}


@pytest.mark.slow  # two DPO runs and CHES over 2,400 toy pairs: minutes on 2 cores
def test_top_ches_decile_loses_more_chosen_likelihood(toy_runs: dict[str, Any]) -> None:
    """After DPO on all pairs, the chosen log-prob falls more on the top CHES decile than the bottom one;
    training without the top 10% keeps more chosen likelihood on the pairs both runs trained on.
    Numbers at three seeds, with a random-10% control: docs/evaluation.md (bench/eval_toy.py)."""
    r = toy_runs
    d = likelihood_displacement(r["full"], r["reference"], r["tok"], r["train"])
    order = r["ches"].argsort()
    k = len(order) // 10
    top, bottom = float(d.chosen_logratios[order[-k:]].mean()), float(d.chosen_logratios[order[:k]].mean())
    common = [r["train"][i] for i in r["kept_index"]]
    full = float(likelihood_displacement(r["full"], r["reference"], r["tok"], common).chosen_logratios.mean())
    filtered = float(likelihood_displacement(r["filtered"], r["reference"], r["tok"], common).chosen_logratios.mean())
    print(f"top decile {top:.3f}, bottom decile {bottom:.3f}; kept pairs: full {full:.3f}, filtered {filtered:.3f}")
    assert top < bottom
    assert full < filtered


@pytest.mark.slow  # shares the toy runs above
def test_displacement_tracker_and_metrics_curve(toy_runs: dict[str, Any]) -> None:
    """The tracker is 0 for the reference itself; the curve read off metrics.jsonl (eval/rewards/chosen / β)
    ends where a direct measurement on the same eval pairs does."""
    r = toy_runs
    tracker = DisplacementTracker(r["reference"], r["tok"], r["held"])
    assert tracker.record(0, r["reference"]) == {"step": 0.0, "displacement/chosen": 0.0,
                                                 "displacement/rejected": 0.0, "displacement/margin": 0.0,
                                                 "displacement/displaced_fraction": 0.0}
    row = tracker.record(150, r["full"])
    assert row["displacement/margin"] > 0
    assert tracker.write(r["tmp"] / "displacement.jsonl").read_text().count("\n") == 2
    curve = displacement_from_metrics(r["tmp"] / "full", beta=0.5)
    assert [c["step"] for c in curve] == [75.0, 150.0]
    assert curve[-1]["displacement/chosen"] == pytest.approx(row["displacement/chosen"], abs=1e-3)
    assert curve[-1]["displacement/rejected"] == pytest.approx(row["displacement/rejected"], abs=1e-3)
