"""Likelihood displacement: does preference tuning lower the likelihood of the *chosen* completion?

DPO only asks the margin ``log π/π_ref(y_w) − log π/π_ref(y_l)`` to grow, so both log-probs can fall,
and the chosen one can fall far ("likelihood displacement"), moving probability mass to completions no
pair names. Razin et al. (2024) trace it to pairs whose two completions look alike to the model and
score that likeness with CHES, from the model's last hidden states.

- :func:`likelihood_displacement`: per pair, ``log π(y|x) − log π_ref(y|x)`` for chosen and rejected;
- :class:`DisplacementTracker`: the same summarised at training steps or checkpoints, one row per call;
  :func:`displacement_from_metrics` reads it off a run's ``metrics.jsonl`` with no extra forward passes;
- :func:`ches_scores`: the CHES score of every pair; :func:`add_ches` puts it in each record's metadata;
  :func:`filter_top_ches` drops the most similar fraction.

References:
    N. Razin, S. Malladi, A. Bhaskar, D. Chen, S. Arora, B. Hanin. "Unintentional Unalignment: Likelihood
    Displacement in Direct Preference Optimization." ICLR 2025, arXiv:2410.08847. Sec. 5 (the CHES score,
    its length-normalised variant, and filtering high-CHES pairs); the formula and the normalisation
    below were checked against the authors' reference implementation (``compute_ches_scores``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from prefkit.data.encode import Encoder
from prefkit.data.records import Pair
from prefkit.eval.ranking import policy_pair_logps
from prefkit.losses.types import PairLogps
from prefkit.models.decoder import decoder_and_head
from prefkit.train.metrics import read_metrics

CHES_KEY = "ches"
"""Metadata key :func:`add_ches` writes and :func:`filter_top_ches` reads."""


@dataclass(frozen=True)
class Displacement:
    """Log-prob changes of P pairs against the reference (see :func:`likelihood_displacement`).

    chosen_logratios, rejected_logratios: (P,) ``log π(y|x) − log π_ref(y|x)``.
    """

    chosen_logratios: Tensor
    rejected_logratios: Tensor

    def summary(self) -> dict[str, float]:
        """Means and the displaced fraction, under stable names (``displacement/*``).

        ``displaced_fraction``: pairs whose chosen log-prob fell (``chosen_logratio < 0``).
        """
        c, r = self.chosen_logratios, self.rejected_logratios
        return {"displacement/chosen": float(c.mean()), "displacement/rejected": float(r.mean()),
                "displacement/margin": float((c - r).mean()),
                "displacement/displaced_fraction": float((c < 0).float().mean())}


def likelihood_displacement(policy: nn.Module, reference: nn.Module | PairLogps, tokenizer: Any,
                            pairs: Sequence[Pair], *, batch_size: int = 64, packing: bool = True,
                            share_prefix: bool = True) -> Displacement:
    """Per-pair ``log π(y_w|x) − log π_ref(y_w|x)`` and the same for ``y_l``.

    ``reference``: the reference model, or its :class:`~prefkit.losses.types.PairLogps` on ``pairs``
    (from :func:`~prefkit.eval.ranking.policy_pair_logps`) to score it only once. Other arguments as in
    :func:`~prefkit.eval.ranking.policy_pair_logps`.
    """
    engine = {"batch_size": batch_size, "packing": packing, "share_prefix": share_prefix}
    pol = policy_pair_logps(policy, tokenizer, pairs, **engine)
    ref = policy_pair_logps(reference, tokenizer, pairs, **engine) if isinstance(reference, nn.Module) else reference
    return Displacement(pol.chosen_logps - ref.chosen_logps, pol.rejected_logps - ref.rejected_logps)


class DisplacementTracker:
    """Likelihood displacement on fixed pairs over training, without trainer callbacks.

    The reference log-probs are computed once at construction; call :meth:`record` with the policy
    whenever you want a point (between ``Trainer.train()`` segments, on saved checkpoints, or from your
    own loop); ``rows`` holds one dict per call and :meth:`write` saves them as JSON lines.

    During a Trainer run, ``train.eval_every`` already logs ``eval/rewards/chosen`` = β·(mean log-ratio
    of the chosen completions): :func:`displacement_from_metrics` turns it into the same curve.
    """

    def __init__(self, reference: nn.Module, tokenizer: Any, pairs: Sequence[Pair], **engine: Any):
        self.tokenizer, self.pairs, self.engine = tokenizer, list(pairs), engine
        self.reference_logps = policy_pair_logps(reference, tokenizer, self.pairs, **engine)
        self.rows: list[dict[str, float]] = []

    def record(self, step: int, policy: nn.Module) -> dict[str, float]:
        """Score ``policy``, append ``{"step": step, "displacement/*": ...}`` to ``rows`` and return it."""
        d = likelihood_displacement(policy, self.reference_logps, self.tokenizer, self.pairs, **self.engine)
        row = {"step": float(step), **d.summary()}
        self.rows.append(row)
        return row

    def write(self, path: str | Path) -> Path:
        """``rows`` as JSON lines at ``path`` (replaced)."""
        path = Path(path)
        path.write_text("".join(json.dumps(r) + "\n" for r in self.rows))
        return path


def displacement_from_metrics(run_dir: str | Path, beta: float) -> list[dict[str, float]]:
    """The chosen / rejected log-ratio curve of a finished run, from its evaluation rows.

    ``eval/rewards/chosen`` is β·mean(log π(y_w) − log π_ref(y_w)) over the eval pairs for
    reference-based losses (``prefkit.losses``' sign convention), so dividing by the loss's β gives the
    mean chosen log-ratio. Needs ``train.eval_every`` and eval data; rows without the keys are skipped.
    Reference-free losses log their own reward there, and this curve is then meaningless.
    """
    out = []
    for row in read_metrics(run_dir):
        if "eval/rewards/chosen" in row and "eval/rewards/rejected" in row:
            out.append({"step": float(row["step"]), "displacement/chosen": row["eval/rewards/chosen"] / beta,
                        "displacement/rejected": row["eval/rewards/rejected"] / beta})
    return out


@torch.no_grad()
def ches_scores(model: nn.Module, tokenizer: Any, pairs: Sequence[Pair], *, length_normalize: bool = False,
                batch_size: int = 64) -> Tensor:
    """(P,) CHES score of each pair from ``model``'s last hidden states (the ones fed to the output layer).

    With ``h_k^+ = h(x, y^+_{<k})`` the hidden state that predicts token k of the chosen completion
    (EOS included: one state per scored token) and ``S^± = Σ_k h_k^±``:

    Formula:
        CHES(x, y^+, y^-) = ⟨S^+, S^-⟩ − ‖S^+‖²
        normalised:        ⟨S^+, S^-⟩ / (|y^+|·|y^-|) − ‖S^+‖² / |y^+|²

    High CHES: the two completions look alike to the model, and DPO on the pair tends to lower
    log π(y^+|x) (likelihood displacement). Computed in fp32 on the padded rows, in eval mode.
    References: Razin et al. 2024, Sec. 5 (module docstring).
    """
    encoder = Encoder(tokenizer)
    examples, report = encoder.encode_all(list(pairs))
    if len(examples) != len(pairs):
        raise ValueError(f"{len(pairs) - len(examples)} of {len(pairs)} pairs could not be encoded ({report})")
    decoder, _ = decoder_and_head(model)
    was_training = model.training
    model.eval()
    scores = []
    try:
        for s in range(0, len(examples), batch_size):
            batch = encoder.collate(examples[s:s + batch_size])
            b = batch.num_examples
            hidden = decoder(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                             use_cache=False).last_hidden_state.float()  # (2B, T, H)
            predicts = batch.completion_mask[:, 1:].to(hidden)  # (2B, T-1): state t predicts scored token t+1
            sums = (hidden[:, :-1] * predicts[..., None]).sum(1)  # (2B, H) S per sequence
            lengths = predicts.sum(1)  # (2B,) |y| (EOS included)
            s_pos, s_neg = sums[:b], sums[b:]  # (B, H) chosen rows [0:B), rejected [B:2B)
            cross, own = (s_pos * s_neg).sum(-1), (s_pos * s_pos).sum(-1)  # (B,)
            if length_normalize:
                cross, own = cross / (lengths[:b] * lengths[b:]), own / lengths[:b] ** 2
            scores.append(cross - own)
    finally:
        model.train(was_training)
    return torch.cat(scores)


def add_ches(pairs: Sequence[Pair], scores: Tensor | Sequence[float], key: str = CHES_KEY) -> list[Pair]:
    """Copies of ``pairs`` with ``metadata[key]`` set to each pair's score (e.g. from :func:`ches_scores`)."""
    values = [float(v) for v in scores]
    if len(values) != len(pairs):
        raise ValueError(f"{len(values)} scores for {len(pairs)} pairs")
    return [replace(p, metadata={**p.metadata, key: v}) for p, v in zip(pairs, values, strict=True)]


def filter_top_ches(pairs: Sequence[Pair], fraction: float = 0.1, key: str = CHES_KEY
                    ) -> tuple[list[Pair], list[Pair]]:
    """Split ``pairs`` (scored by :func:`add_ches`) into (kept, removed): removed holds the
    ``round(fraction · P)`` pairs with the highest ``metadata[key]``; both keep the input order."""
    if not 0 <= fraction <= 1:
        raise ValueError(f"fraction must lie in [0, 1], got {fraction}")
    missing = [i for i, p in enumerate(pairs) if key not in p.metadata]
    if missing:
        raise ValueError(f"{len(missing)} pairs lack metadata[{key!r}] (first: #{missing[0]}); run add_ches first")
    n_drop = round(fraction * len(pairs))
    order = sorted(range(len(pairs)), key=lambda i: -float(pairs[i].metadata[key]))
    drop = set(order[:n_drop])
    return ([p for i, p in enumerate(pairs) if i not in drop], [p for i, p in enumerate(pairs) if i in drop])


__all__ = ["CHES_KEY", "Displacement", "likelihood_displacement", "DisplacementTracker",
           "displacement_from_metrics", "ches_scores", "add_ches", "filter_top_ches"]
