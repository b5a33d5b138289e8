"""TRL compatibility: every TRL DPO ``loss_type`` maps to a prefkit loss with TRL's values, or is listed
as unsupported with the reason; TRL config keys map to prefkit keys with one notice line each.

TRL's formulas below are written independently, in float64, from ``trl/trainer/dpo_trainer.py``
(``DPOTrainer._compute_loss``, the ``for loss_type, loss_weight in zip(...)`` block, lines ~1433-1556 at
TRL 1.10.0.dev0, commit f2cd5771; the same block as v1.9.0 and as lines 1386-1510 of the TRL 1.16.0
wheel from PyPI) and ``trl/trainer/dpo_config.py``
(``loss_type`` help, lines ~234-241). There ``chosen_scores = chosen_logratios`` for the default
``f_divergence_type='reverse_kl'`` and ``delta_score = chosen_scores - rejected_scores``.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from prefkit.errors import ConfigError
from prefkit.losses import LOSSES, PairLogps, get_loss, validate_loss_params
from prefkit.losses.aliases import TRL_ALIASES, TRL_LOSS_TYPES, TRL_SAME_NAME, TRL_UNSUPPORTED
from prefkit.train.config import load_config
from prefkit.train.trl import apply_trl_keys

BETA, EPS, TAU = 0.3, 0.1, 0.05


def _batch(seed: int = 0, b: int = 16):
    g = torch.Generator().manual_seed(seed)
    logps = -torch.rand(4, b, generator=g, dtype=torch.float64) * 40  # policy w, l; ref w, l
    tokens = torch.randint(1, 30, (2, b), generator=g).to(torch.float64)
    policy = PairLogps(logps[0], logps[1], tokens[0], tokens[1])
    reference = PairLogps(logps[2], logps[3], tokens[0], tokens[1])
    return policy, reference


def _trl(loss_type: str, policy: PairLogps, reference: PairLogps) -> torch.Tensor:
    """TRL 1.x's per-sequence loss for ``loss_type`` (dpo_trainer.py, _compute_loss)."""
    cw, cl = policy.chosen_logps - reference.chosen_logps, policy.rejected_logps - reference.rejected_logps
    d = cw - cl
    beta, eps = BETA, EPS
    if loss_type == "sigmoid":  # -logsigmoid(beta * delta_score)
        return -F.logsigmoid(beta * d)
    if loss_type == "hinge":  # relu(1 - beta * delta_score)
        return torch.relu(1 - beta * d)
    if loss_type == "exo_pair":  # qw (log qw - log(1-eps)) + ql (log ql - log eps)
        qw, ql = torch.sigmoid(beta * d), torch.sigmoid(-beta * d)
        return qw * (F.logsigmoid(beta * d) - math.log1p(-eps)) + ql * (F.logsigmoid(-beta * d) - math.log(eps))
    if loss_type == "nca_pair":
        rw, rl = beta * cw, beta * cl
        return -F.logsigmoid(rw) - 0.5 * F.logsigmoid(-rw) - 0.5 * F.logsigmoid(-rl)
    if loss_type == "robust":
        return (-(1 - eps) * F.logsigmoid(beta * d) + eps * F.logsigmoid(-beta * d)) / (1 - 2 * eps)
    if loss_type == "bco_pair":
        return -F.logsigmoid(beta * cw) - F.logsigmoid(-beta * cl)
    if loss_type == "sppo_hard":
        return (cw - 0.5 / beta) ** 2 + (cl + 0.5 / beta) ** 2
    if loss_type in ("aot", "aot_unpaired"):
        if loss_type == "aot":  # sorted policy chosen-rejected vs sorted reference chosen-rejected
            delta = (torch.sort(policy.chosen_logps - policy.rejected_logps).values
                     - torch.sort(reference.chosen_logps - reference.rejected_logps).values)
        else:  # sorted chosen log-ratios vs sorted rejected log-ratios
            delta = torch.sort(cw).values - torch.sort(cl).values
        return -F.logsigmoid(beta * delta) * (1 - eps) - F.logsigmoid(-beta * delta) * eps
    if loss_type == "apo_zero":
        return 1 - torch.sigmoid(beta * cw) + torch.sigmoid(beta * cl)
    if loss_type == "apo_down":
        return torch.sigmoid(beta * cw) + 1 - torch.sigmoid(beta * d)
    if loss_type == "discopop":
        logits = beta * d
        mod = torch.sigmoid(logits / TAU)
        return -F.logsigmoid(logits) * (1 - mod) + torch.exp(-logits) * mod
    if loss_type == "sigmoid_norm":  # log-ratios divided by completion token counts
        return -F.logsigmoid(beta * (cw / policy.chosen_tokens - cl / policy.rejected_tokens))
    raise AssertionError(loss_type)


# TRL name -> (prefkit name, parameters as TRL's config would set them, constant TRL adds to the value)
MAPPED = {
    "sigmoid": ("sigmoid", {"beta": BETA}, 0.0),
    "hinge": ("hinge", {"beta": BETA}, 0.0),
    "exo_pair": ("exo_pair", {"beta": BETA, "label_smoothing": EPS}, 0.0),
    "nca_pair": ("nca_pair", {"beta": BETA}, 0.0),
    "robust": ("robust", {"beta": BETA, "label_smoothing": EPS}, 0.0),
    "bco_pair": ("bco_pair", {"beta": BETA, "delta": 0.0}, 0.0),
    "sppo_hard": ("sppo_hard", {"beta": BETA}, 0.0),
    "aot": ("aot", {"beta": BETA, "label_smoothing": EPS}, 0.0),
    "aot_unpaired": ("aot_unpaired", {"beta": BETA, "label_smoothing": EPS}, 0.0),
    "apo_zero": ("apo_zero", {"beta": BETA}, 1.0),
    "apo_down": ("apo_down", {"beta": BETA}, 1.0),
    "discopop": ("discopop", {"beta": BETA, "tau": TAU}, 0.0),
    "sigmoid_norm": ("sigmoid_norm", {"beta": BETA}, 0.0),
}


def test_every_trl_loss_type_is_mapped_or_unsupported_with_a_reason():
    assert set(TRL_LOSS_TYPES) == set(MAPPED) | {"ipo", "sft"}
    for name in TRL_LOSS_TYPES:
        assert (name in MAPPED) != (name in TRL_UNSUPPORTED), name
    for name, reason in TRL_UNSUPPORTED.items():
        assert len(reason) > 40 and "\n" not in reason


@pytest.mark.parametrize("trl_name", sorted(MAPPED))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_alias_values_equal_trl_formula(trl_name, seed, capsys):
    name, params, constant = MAPPED[trl_name]
    spec = get_loss(name)
    full = validate_loss_params(name, params)
    policy, reference = _batch(seed)
    ours = spec.fn(policy, reference, **full).losses
    assert ours.dtype == torch.float64
    torch.testing.assert_close(ours + constant, _trl(trl_name, policy, reference), rtol=1e-10, atol=1e-10)
    err = capsys.readouterr().err
    if trl_name in TRL_ALIASES:
        target = TRL_ALIASES[trl_name][0]
        assert err.count("\n") == 2  # get_loss and validate_loss_params: one line each
        assert err.splitlines()[0].startswith(f"note: loss {trl_name!r} is TRL's name for prefkit's {target!r}")
    else:
        assert err == "" and trl_name in LOSSES and trl_name in TRL_SAME_NAME


def test_aot_names_are_swapped_relative_to_trl_before_1_0():
    """TRL < 1.0's 'aot_pair' sorted chosen and rejected log-ratios separately: prefkit's variant 'unpaired'."""
    assert TRL_ALIASES["aot_pair"] == ("aot", {"variant": "unpaired"})
    assert TRL_ALIASES["aot_unpaired"] == ("aot", {"variant": "unpaired"})
    assert validate_loss_params("aot")["variant"] == "paired"  # TRL's plain 'aot'


def test_sigmoid_notice_is_one_line_and_not_a_did_you_mean(capsys):
    assert get_loss("sigmoid") is LOSSES["dpo"]
    assert capsys.readouterr().err == "note: loss 'sigmoid' is TRL's name for prefkit's 'dpo'\n"
    for trl_name in ("nca_pair", "exo_pair", "aot_pair"):
        get_loss(trl_name)
    err = capsys.readouterr().err
    assert "bco_pair" not in err and len(err.splitlines()) == 3


def test_unsupported_trl_names_say_why():
    with pytest.raises(ConfigError, match="'sft' .*not supported"):
        get_loss("sft")
    with pytest.raises(ConfigError, match="per token|token count"):
        apply_trl_keys({"loss_type": "ipo"})
    with pytest.raises(ConfigError, match="one loss"):
        apply_trl_keys({"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, 1.0]})


def test_trl_config_keys_map_with_one_notice_each(capsys):
    data = apply_trl_keys({"loss_type": ["sigmoid"], "beta": 0.2, "rpo_alpha": 0.5, "learning_rate": 1e-5,
                           "per_device_train_batch_size": 4, "gradient_accumulation_steps": 2, "max_steps": -1,
                           "num_train_epochs": 2, "warmup_ratio": 0.1, "max_length": 512, "output_dir": "runs/x",
                           "seed": 3, "lr_scheduler_type": "constant_with_warmup", "weight_decay": 0.01,
                           "max_grad_norm": 0.5, "bf16": True})
    assert data["loss"] == {"name": "rpo", "alpha": 0.5, "beta": 0.2}
    assert data["train"] == {"lr": 1e-5, "batch_size": 4, "grad_accum": 2, "max_steps": 0, "epochs": 2,
                             "warmup_ratio": 0.1, "scheduler": "constant", "weight_decay": 0.01,
                             "max_grad_norm": 0.5, "seed": 3, "mixed_precision": "bf16"}
    assert data["encode"] == {"max_length": 512} and data["output"] == {"dir": "runs/x"}
    lines = capsys.readouterr().err.splitlines()
    assert all(line.startswith("note: ") for line in lines)
    assert "note: TRL key 'learning_rate' is prefkit's 'train.lr'" in lines
    assert len(lines) == 17  # 15 keys + rpo_alpha + the 'sigmoid' alias


def test_trl_loss_keys_f_divergence_and_aot_unpaired(capsys):
    loss = apply_trl_keys({"loss_type": "sigmoid", "f_divergence_type": "alpha_divergence",
                           "f_alpha_divergence_coef": 0.3})["loss"]
    assert loss == {"name": "fdpo", "divergence": "alpha", "alpha": pytest.approx(0.7)}
    loss = apply_trl_keys({"loss_type": "aot_unpaired", "label_smoothing": 0.1})["loss"]
    assert loss == {"name": "aot", "variant": "unpaired", "label_smoothing": 0.1}
    loss = apply_trl_keys({"loss": {"name": "robust", "beta": 0.2}})["loss"]
    assert loss == {"name": "robust_dpo", "beta": 0.2}
    with pytest.raises(ConfigError, match="ignores it for loss_type 'sigmoid'"):
        apply_trl_keys({"loss_type": "sigmoid", "label_smoothing": 0.1})


def test_trl_alpha_divergence_equals_fdpo_alpha(capsys):
    """TRL's f′(t) = t^(c−1)/(c−1) vs prefkit's (1 − t^(−α))/α with α = 1 − c: equal up to a constant."""
    c = 0.3
    policy, reference = _batch(5)
    cw, cl = policy.chosen_logps - reference.chosen_logps, policy.rejected_logps - reference.rejected_logps
    trl = -F.logsigmoid(BETA * (torch.exp((c - 1) * cw) / (c - 1) - torch.exp((c - 1) * cl) / (c - 1)))
    ours = LOSSES["fdpo"].fn(policy, reference, beta=BETA, divergence="alpha", alpha=1 - c).losses
    torch.testing.assert_close(ours, trl, rtol=1e-10, atol=1e-10)


def test_load_config_accepts_trl_keys_and_overrides_win(tmp_path, capsys):
    job = tmp_path / "job.yaml"
    job.write_text("learning_rate: 1.0e-4\nloss_type: nca_pair\nbeta: 0.2\nmax_steps: 7\n")
    cfg = load_config(job, ["max_steps=9", "train.lr=2.0e-5"], check_files=False)
    assert (cfg.loss.name, cfg.loss.params["beta"]) == ("nca", 0.2)
    assert (cfg.train.max_steps, cfg.train.lr) == (9, 2e-5)
    assert "note: loss 'nca_pair' is TRL's name for prefkit's 'nca'" in capsys.readouterr().err


def test_unknown_keys_still_name_the_nearest(tmp_path):
    with pytest.raises(ConfigError, match="unknown config key 'learning_rat'"):
        load_config(overrides=["learning_rat=1e-5"], check_files=False)
