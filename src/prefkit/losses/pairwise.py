"""Pairwise preference losses: one function per method, on summed sequence log-probs of (chosen, rejected).

Every function has the signature ``fn(policy, reference, *, <params>) -> LossOutput`` and returns one
loss per pair (no reduction; the trainer reduces) plus detached implicit rewards.

Conventions shared by every loss here (see ``prefkit.losses.types``):

- log-probs are log-likelihoods, higher = more likely; every loss is minimised;
- ``policy`` / ``reference`` are :class:`PairLogps`, all tensors (B,); ``reference`` is ignored (may be
  ``None``) by the reference-free losses (``needs_reference=False`` in the registry);
- ``*_logratios`` = policy − reference log-probs of one response, ``h`` = chosen_logratios −
  rejected_logratios is the DPO margin;
- rewards: β·logratio for reference-based losses; reference-free losses return their own implicit
  reward (documented per loss). ``chosen_rewards − rejected_rewards`` always changes sign when chosen
  and rejected are swapped;
- NLL terms (``cpo``, ``orpo``, ``rpo``, ``slic``) use the policy's chosen log-probs divided by the
  chosen token count (per-token NLL, as ORPO and iterative RPO define it and as CPO's and SLiC's
  released code compute cross-entropy); see each docstring;
- docstrings: summary, ``Formula:``, ``References:`` (arXiv id, equation number where checked, else the
  paper's name for the objective), shapes, sign convention, deviations. Parameter ranges are only the
  registry's ``Param`` bounds (checked when a config is parsed); bodies check only their inputs;
- results keep the input dtype and device; everything is written with ``logsigmoid`` / ``softplus``
  so values and gradients stay finite for log-ratios of ±1e4 and one-token completions.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from prefkit.errors import ConfigError, DataError
from prefkit.losses.registry import reference_free_pair_losses
from prefkit.losses.types import LossOutput, PairLogps, as_float

# exp() arguments are clamped to this in f-DPO's forward-KL / α-divergence scores (e^30 ≈ 1e13), so
# the loss stays finite in fp32/bf16 when the policy is far below the reference (see ``fdpo``).
_EXP_CLAMP = 30.0
_LN2 = math.log(2.0)


# --- helpers ---------------------------------------------------------------------------------------


def _need_reference(reference: PairLogps | None, loss: str) -> PairLogps:
    if reference is None:
        raise ConfigError(f"loss {loss!r} needs reference log-probs; give the trainer a reference model "
                          f"or pick a reference-free loss ({', '.join(reference_free_pair_losses())})")
    return reference


def _logratios(policy: PairLogps, reference: PairLogps) -> tuple[Tensor, Tensor]:
    """(chosen_logratios, rejected_logratios), each (B,): policy − reference log-probs."""
    return policy.chosen_logps - reference.chosen_logps, policy.rejected_logps - reference.rejected_logps


def _tokens(policy: PairLogps) -> tuple[Tensor, Tensor]:
    """Chosen and rejected token counts as float tensors like the log-probs, at least 1."""
    return (as_float(policy.chosen_tokens, policy.chosen_logps).clamp_min(1.0),
            as_float(policy.rejected_tokens, policy.rejected_logps).clamp_min(1.0))


def _chosen_nll(policy: PairLogps) -> Tensor:
    """Per-token NLL of the chosen response, (B,): −log π(y_w|x) / |y_w| (log-probs are positive-up)."""
    chosen_tokens, _ = _tokens(policy)
    return -policy.chosen_logps / chosen_tokens


def _strength(strength: Tensor | None, like: Tensor, loss: str) -> Tensor:
    if strength is None:
        raise ConfigError(f"loss {loss!r} needs a per-pair strength; give every record a "
                          "'strength' (or 'margin') value")
    return as_float(strength, like)


def _log1mexp(m: Tensor) -> Tensor:
    """log(1 − exp(m)) for m < 0: log(−expm1(m)) above −ln 2, log1p(−exp(m)) below (Mächler 2012,
    "Accurately Computing log(1 − exp(−|a|))"); each branch sees only its range, so gradients stay finite."""
    near_zero = torch.log(-torch.expm1(m.clamp(min=-_LN2)))
    far = torch.log1p(-torch.exp(m.clamp(max=-_LN2)))
    return torch.where(m > -_LN2, near_zero, far)


def _bce(logits: Tensor, p: Tensor | float) -> Tensor:
    """Binary cross-entropy with target probability ``p``: −p·log σ(z) − (1−p)·log σ(−z), (B,)."""
    return -p * F.logsigmoid(logits) - (1 - p) * F.logsigmoid(-logits)


def _out(losses: Tensor, chosen_rewards: Tensor, rejected_rewards: Tensor, **metrics: Tensor) -> LossOutput:
    return LossOutput(losses=losses, chosen_rewards=chosen_rewards.detach(),
                      rejected_rewards=rejected_rewards.detach(),
                      metrics={k: v.detach() for k, v in metrics.items()})


# --- DPO and direct variants -----------------------------------------------------------------------


def dpo(policy: PairLogps, reference: PairLogps | None, *, beta: float = 0.1,
        label_smoothing: float = 0.0) -> LossOutput:
    """Direct Preference Optimization; with ``label_smoothing`` ε > 0, conservative DPO (cDPO).

    Formula:
        h = [log π(y_w) − log π_ref(y_w)] − [log π(y_l) − log π_ref(y_l)]
        loss = −(1 − ε)·log σ(β·h) − ε·log σ(−β·h)

    References:
        Rafailov et al. 2023, "Direct Preference Optimization: Your Language Model is Secretly a Reward
        Model", arXiv 2305.18290, Eq. 7 (ε = 0). cDPO (ε > 0): Mitchell 2023, "A note on DPO with noisy
        preferences & relationship to IPO".

    cDPO is the BCE against a label that is right with probability 1 − ε. It stays biased under label noise;
    ``robust_dpo`` is the unbiased form. Shapes: every tensor of ``policy`` / ``reference`` (B,); returns
    losses (B,). Sign convention: higher log-prob = more likely, loss minimised; rewards are β·logratio per
    response (detached). Typical: β 0.1–0.5; ε 0–0.2. Deviations from the paper: none.
    """
    reference = _need_reference(reference, "dpo")
    chosen_logratios, rejected_logratios = _logratios(policy, reference)
    logits = beta * (chosen_logratios - rejected_logratios)  # (B,)
    losses = _bce(logits, 1.0 - label_smoothing)
    return _out(losses, beta * chosen_logratios, beta * rejected_logratios)


def robust_dpo(policy: PairLogps, reference: PairLogps | None, *, beta: float = 0.1,
               label_smoothing: float = 0.1) -> LossOutput:
    """Robust DPO (rDPO): the unbiased DPO loss under a known label-flip rate ε.

    Formula:
        ℓ(z)  = −log σ(z),  z = β·h
        loss  = [(1 − ε)·ℓ(z) − ε·ℓ(−z)] / (1 − 2ε)

    References:
        Chowdhury, Kini & Natarajan 2024, "Provably Robust DPO: Aligning Language Models with Noisy
        Feedback", arXiv 2403.00409, the de-biased loss ℓ̂_ε.

    Its expectation over random flips of rate ε equals the clean DPO loss; ε = 0 is DPO. Unlike DPO the loss
    is not bounded below (the −ε·ℓ(−z) term can dominate); that is the paper's estimator, kept as is. ε =
    ``label_smoothing`` must stay below 0.5 (the divisor 1 − 2ε). Shapes: (B,) everywhere. Sign convention:
    higher log-prob = more likely, loss minimised; rewards are β·logratio. Deviations from the paper: none.
    """
    reference = _need_reference(reference, "robust_dpo")
    chosen_logratios, rejected_logratios = _logratios(policy, reference)
    logits = beta * (chosen_logratios - rejected_logratios)  # (B,)
    eps = label_smoothing
    losses = (-(1 - eps) * F.logsigmoid(logits) + eps * F.logsigmoid(-logits)) / (1 - 2 * eps)
    return _out(losses, beta * chosen_logratios, beta * rejected_logratios)


def dpo_soft(policy: PairLogps, reference: PairLogps | None, *, strength: Tensor | None = None,
             beta: float = 0.1) -> LossOutput:
    """Soft-label DPO: each pair's preference probability p ∈ [0, 1] replaces the hard label 1.

    Formula:
        loss = −p·log σ(β·h) − (1 − p)·log σ(−β·h),  p = strength

    References:
        Zhang et al. 2024, "Online Self-Preferring Language Models", arXiv 2405.14103, the
        soft-preference cross-entropy (also the smoothed-label DPO of SmPO).

    p = ``strength`` (B,) is the probability that the "chosen" response is preferred (e.g. an annotator vote
    share or a reward model's σ(r_w − r_l)); p = 1 is DPO, a constant p = 1 − ε is cDPO. Shapes: (B,)
    everywhere, ``strength`` (B,) in [0, 1] (a DataError otherwise). Sign convention: higher log-prob = more
    likely, loss minimised; rewards are β·logratio. Deviations from the paper: OSP obtains p from
    self-judged strengths; here p is whatever the data supplies.
    """
    reference = _need_reference(reference, "dpo_soft")
    p = _strength(strength, policy.chosen_logps, "dpo_soft")  # (B,)
    if p.numel() and (bool((p < 0).any()) or bool((p > 1).any())):
        raise DataError("loss 'dpo_soft' needs strength in [0, 1] (a preference probability); "
                        f"got values in [{p.min().item():g}, {p.max().item():g}]")
    chosen_logratios, rejected_logratios = _logratios(policy, reference)
    logits = beta * (chosen_logratios - rejected_logratios)  # (B,)
    return _out(_bce(logits, p), beta * chosen_logratios, beta * rejected_logratios)


def ln_dpo(policy: PairLogps, reference: PairLogps | None, *, beta: float = 1.0) -> LossOutput:
    """Length-normalised DPO (LN-DPO): DPO on per-token log-ratios.

    Formula:
        |y| = completion token count
        loss = −log σ(β·[logratio_w / |y_w| − logratio_l / |y_l|])

    References:
        Saeidi et al. 2024, "The Hitchhiker's Guide to Human Alignment with *PO", arXiv 2407.15229,
        LN-DPO; TRL's ``sigmoid_norm`` is the same idea.

    Shapes: (B,) everywhere. Sign convention: higher log-prob = more likely, loss minimised; rewards are
    β·logratio/|y| (the quantity inside the sigmoid). Typical: per-token log-ratios are |y| times smaller
    than summed ones, so β is chosen larger than DPO's (default 1.0). Deviations from the paper: none.
    """
    reference = _need_reference(reference, "ln_dpo")
    chosen_logratios, rejected_logratios = _logratios(policy, reference)
    chosen_tokens, rejected_tokens = _tokens(policy)
    chosen_rewards = beta * chosen_logratios / chosen_tokens  # (B,)
    rejected_rewards = beta * rejected_logratios / rejected_tokens  # (B,)
    losses = -F.logsigmoid(chosen_rewards - rejected_rewards)
    return _out(losses, chosen_rewards, rejected_rewards)


def ipo(policy: PairLogps, reference: PairLogps | None, *, beta: float = 0.1) -> LossOutput:
    """Identity Preference Optimization (IPO): squared regression of the margin onto 1/(2τ).

    Formula:
        loss = (h − 1/(2τ))²,  τ = ``beta``

    References:
        Azar et al. 2023, "A General Theoretical Paradigm to Understand Learning from Human
        Preferences", arXiv 2310.12036, Eq. 17.

    Shapes: (B,) everywhere. Sign convention: higher log-prob = more likely, loss minimised; rewards are
    β·logratio (τ·logratio). Typical: τ 0.01–1. Deviations from the paper: none — h uses *summed* log-probs
    as in the paper; TRL's ``ipo`` averages log-probs over tokens instead (use ``ln_dpo``-style
    normalisation yourself if wanted).
    """
    reference = _need_reference(reference, "ipo")
    chosen_logratios, rejected_logratios = _logratios(policy, reference)
    losses = (chosen_logratios - rejected_logratios - 1 / (2 * beta)) ** 2
    return _out(losses, beta * chosen_logratios, beta * rejected_logratios)


def rdpo(policy: PairLogps, reference: PairLogps | None, *, beta: float = 0.1,
         alpha: float = 0.01) -> LossOutput:
    """Length-regularised DPO (R-DPO).

    Formula:
        loss = −log σ(β·h + α·|y_w| − α·|y_l|)

    References:
        Park, Rafailov, Ermon & Finn 2024, "Disentangling Length from Quality in Direct Preference
        Optimization", arXiv 2403.19159, the R-DPO objective.

    It follows from maximising r(x, y) − α|y| under the KL constraint: the implicit reward is β·logratio +
    α·|y|, so a long chosen response needs a smaller log-ratio margin and length is not rewarded. α = 0 is
    DPO. Shapes: (B,) everywhere; |y| = token counts. Sign convention: higher log-prob = more likely, loss
    minimised; rewards are β·logratio (the length term is reported in ``metrics["length_term"]``). Typical:
    α 0.005–0.05 with β 0.1. Deviations from the paper: none.
    """
    reference = _need_reference(reference, "rdpo")
    chosen_logratios, rejected_logratios = _logratios(policy, reference)
    chosen_tokens, rejected_tokens = _tokens(policy)
    length_term = alpha * (chosen_tokens - rejected_tokens)  # (B,)
    losses = -F.logsigmoid(beta * (chosen_logratios - rejected_logratios) + length_term)
    return _out(losses, beta * chosen_logratios, beta * rejected_logratios, length_term=length_term)


def dpop(policy: PairLogps, reference: PairLogps | None, *, beta: float = 0.1,
         lam: float = 50.0) -> LossOutput:
    """DPO-Positive (DPOP, "Smaug"): DPO plus a penalty when the chosen log-prob falls below reference.

    Formula:
        loss = −log σ(β·[h − λ·max(0, log π_ref(y_w) − log π(y_w))])

    References:
        Pal et al. 2024, "Smaug: Fixing Failure Modes of Preference Optimisation with DPO-Positive",
        arXiv 2402.13228, Eq. 3.

    Shapes: (B,) everywhere. Sign convention: higher log-prob = more likely, loss minimised; rewards are
    β·logratio; the penalty max(0, ·) is ``metrics["penalty"]``. Typical: λ 5–500 (paper: 50). λ = 0 is DPO.
    Deviations from the paper: none.
    """
    reference = _need_reference(reference, "dpop")
    chosen_logratios, rejected_logratios = _logratios(policy, reference)
    penalty = torch.relu(-chosen_logratios)  # (B,) max(0, log π_ref(y_w) − log π(y_w))
    losses = -F.logsigmoid(beta * (chosen_logratios - rejected_logratios - lam * penalty))
    return _out(losses, beta * chosen_logratios, beta * rejected_logratios, penalty=penalty)


def odpo(policy: PairLogps, reference: PairLogps | None, *, strength: Tensor | None = None,
         beta: float = 0.1, alpha: float = 1.0, offset: str = "linear") -> LossOutput:
    """DPO with an offset (ODPO): the chosen must beat the rejected by a pair-specific margin Δ.

    Formula:
        loss = −log σ(β·h − Δ),  Δ = α·s (offset="linear") or α·log s (offset="log")

    References:
        Amini, Vieira & Cotterell 2024, "Direct Preference Optimization with an Offset",
        arXiv 2402.10571, the ODPO loss.

    s = ``strength`` (B,) is how much better the chosen response is (e.g. a reward or score gap). The
    paper's experiments use Δ = α·log(score_w − score_l) (``offset="log"``, needs s > 0, a DataError
    otherwise). Δ = 0 is DPO. Shapes: (B,) everywhere. Sign convention: higher log-prob = more likely, loss
    minimised; rewards are β·logratio; Δ is ``metrics["offset"]``. Deviations from the paper: none (the
    offset function f(·) is left general in the paper; two choices offered).
    """
    reference = _need_reference(reference, "odpo")
    s = _strength(strength, policy.chosen_logps, "odpo")  # (B,)
    if offset == "log":
        if s.numel() and bool((s <= 0).any()):
            raise DataError("loss 'odpo' with offset='log' needs strength > 0; use offset='linear' "
                            "or drop pairs with a zero score gap")
        delta = alpha * torch.log(s)
    else:
        delta = alpha * s
    chosen_logratios, rejected_logratios = _logratios(policy, reference)
    losses = -F.logsigmoid(beta * (chosen_logratios - rejected_logratios) - delta)
    return _out(losses, beta * chosen_logratios, beta * rejected_logratios, offset=delta)


# f′(u) − f′(1) of each divergence from logratio = log u (B,) and α; zero where π = π_ref (see fdpo).
_F_PRIME: dict[str, Callable[[Tensor, float], Tensor]] = {
    "reverse_kl": lambda logratios, alpha: logratios,  # log u
    "forward_kl": lambda logratios, alpha: -torch.expm1((-logratios).clamp(max=_EXP_CLAMP)),  # 1 − 1/u
    "js": lambda logratios, alpha: F.logsigmoid(logratios) + math.log(2.0),  # log(2u / (1 + u))
    "alpha": lambda logratios, alpha: -torch.expm1((-alpha * logratios).clamp(max=_EXP_CLAMP)) / alpha,
}
FDPO_DIVERGENCES = tuple(_F_PRIME)


def fdpo(policy: PairLogps, reference: PairLogps | None, *, beta: float = 0.1,
         divergence: str = "reverse_kl", alpha: float = 0.5) -> LossOutput:
    """f-DPO: DPO under an f-divergence constraint instead of the reverse KL.

    Formula:
        loss = −log σ(β·f′(u_w) − β·f′(u_l)),  u = π(y)/π_ref(y) = exp(logratio)

        reverse_kl  f′(u) = log u + 1               (DPO)
        forward_kl  f′(u) = −1/u
        js          f′(u) = log(2u / (1 + u))       = log 2 + log σ(logratio)
        alpha       f′(u) = (1 − u^(−α)) / α,  α ∈ (0, 1)   (→ reverse KL as α → 0, forward KL as α → 1)

    References:
        Wang et al. 2023, "Beyond Reverse KL: Generalizing Direct Preference Optimization with Diverse
        Divergence Constraints", arXiv 2309.16240, the f-DPO objective, with f′ from its table.

    Constants in f′ cancel in the difference; we use f′(u) − f′(1), which is 0 where π = π_ref. Shapes: (B,)
    everywhere. Sign convention: higher log-prob = more likely, loss minimised; rewards are β·(f′(u) −
    f′(1)) per response (the paper's reward parametrisation up to a constant); for reverse KL that is
    β·logratio, i.e. DPO's. Deviations from the paper: for ``forward_kl`` and ``alpha`` the exponent
    −logratio (resp. −α·logratio) is clamped at 30 so the loss stays finite when the policy is more than 30
    nats below the reference (gradient zero beyond that point); the paper has no clamp.
    """
    reference = _need_reference(reference, "fdpo")
    chosen_logratios, rejected_logratios = _logratios(policy, reference)
    f_prime = _F_PRIME[divergence]  # the registry's Param.choices are the keys
    chosen_rewards = beta * f_prime(chosen_logratios, alpha)  # (B,)
    rejected_rewards = beta * f_prime(rejected_logratios, alpha)  # (B,)
    losses = -F.logsigmoid(chosen_rewards - rejected_rewards)
    return _out(losses, chosen_rewards, rejected_rewards)


def rpo(policy: PairLogps, reference: PairLogps | None, *, beta: float = 0.1,
        alpha: float = 1.0) -> LossOutput:
    """Regularised Preference Optimization (RPO): DPO plus an SFT (NLL) term on the chosen response.

    Formula:
        loss = −log σ(β·h) + α·(−log π(y_w|x) / |y_w|)

    References:
        Liu et al. 2024, "Provably Mitigating Overoptimization in RLHF: Your SFT Loss is Implicitly an
        Adversarial Regularizer", arXiv 2405.16436, the RPO objective; the same form is the loss of
        iterative RPO (Pang et al. 2024, arXiv 2404.19733).

    Shapes: (B,) everywhere. Sign convention: higher log-prob = more likely, loss minimised; rewards are
    β·logratio; the NLL is ``metrics["nll"]``. Deviations from the paper: the NLL is per token (divided by
    |y_w|), as in Pang et al. and TRL's ``rpo_alpha``; Liu et al. write the summed log-likelihood of a
    baseline response, which we take to be y_w.
    """
    reference = _need_reference(reference, "rpo")
    chosen_logratios, rejected_logratios = _logratios(policy, reference)
    nll = _chosen_nll(policy)  # (B,)
    losses = -F.logsigmoid(beta * (chosen_logratios - rejected_logratios)) + alpha * nll
    return _out(losses, beta * chosen_logratios, beta * rejected_logratios, nll=nll)


# --- other reference-based pairwise losses ---------------------------------------------------------


def rso_hinge(policy: PairLogps, reference: PairLogps | None, *, beta: float = 0.1) -> LossOutput:
    """Hinge loss on the DPO margin (RSO's "hinge-norm" loss; SLiC with a reference model).

    Formula:
        loss = max(0, 1 − β·h)

    References:
        Liu et al. 2023, "Statistical Rejection Sampling Improves Preference Optimization",
        arXiv 2309.06657, the hinge-norm loss.

    Shapes: (B,) everywhere. Sign convention: higher log-prob = more likely, loss minimised; rewards are
    β·logratio. Typical: β (RSO's γ) 0.05–0.5. Deviations from the paper: none. Not differentiable at β·h =
    1 (subgradient 0 there, as torch.relu gives).
    """
    reference = _need_reference(reference, "rso_hinge")
    chosen_logratios, rejected_logratios = _logratios(policy, reference)
    losses = torch.relu(1 - beta * (chosen_logratios - rejected_logratios))
    return _out(losses, beta * chosen_logratios, beta * rejected_logratios)


def exo(policy: PairLogps, reference: PairLogps | None, *, beta: float = 0.1,
        label_smoothing: float = 1e-3) -> LossOutput:
    """Efficient Exact Optimization (EXO), pairwise form: reverse KL between model and label distributions.

    Formula:
        q_w = σ(β·h), q_l = σ(−β·h)            (softmax of β·logratio over the pair)
        p_w = 1 − ε,  p_l = ε                  (label distribution; ε > 0 keeps it finite)
        loss = KL(q ‖ p) = q_w·(log q_w − log p_w) + q_l·(log q_l − log p_l)

    References:
        Ji et al. 2024, "Towards Efficient Exact Optimization of Language Model Alignment",
        arXiv 2402.00856, the EXO loss with K = 2 responses and binary preference labels.

    Shapes: (B,) everywhere. Sign convention: higher log-prob = more likely, loss minimised; rewards are
    β·logratio. Typical: ε 1e-3. Deviations from the paper: none (the paper's β_r-tempered reward
    distribution becomes the ε-smoothed label for binary preference data, as in its pairwise experiments).
    """
    reference = _need_reference(reference, "exo")
    chosen_logratios, rejected_logratios = _logratios(policy, reference)
    logits = beta * (chosen_logratios - rejected_logratios)  # (B,)
    log_qw, log_ql = F.logsigmoid(logits), F.logsigmoid(-logits)
    losses = (torch.exp(log_qw) * (log_qw - math.log1p(-label_smoothing))
              + torch.exp(log_ql) * (log_ql - math.log(label_smoothing)))
    return _out(losses, beta * chosen_logratios, beta * rejected_logratios)


def nca(policy: PairLogps, reference: PairLogps | None, *, beta: float = 0.1) -> LossOutput:
    """Noise Contrastive Alignment (NCA), pairwise-preference form.

    Formula:
        r = β·logratio
        loss = −log σ(r_w) − ½·log σ(−r_w) − ½·log σ(−r_l)

    References:
        Chen et al. 2024, "Noise Contrastive Alignment of Language Models with Explicit Rewards",
        arXiv 2402.05369, the NCA loss for K = 2 responses with a one-hot preference.

    Unlike DPO it optimises each response's absolute reward, so the chosen likelihood is not pushed down
    together with the rejected one. Shapes: (B,) everywhere. Sign convention: higher log-prob = more likely,
    loss minimised; rewards are β·logratio. Deviations from the paper: none.
    """
    reference = _need_reference(reference, "nca")
    chosen_logratios, rejected_logratios = _logratios(policy, reference)
    chosen_rewards, rejected_rewards = beta * chosen_logratios, beta * rejected_logratios
    losses = (-F.logsigmoid(chosen_rewards) - 0.5 * F.logsigmoid(-chosen_rewards)
              - 0.5 * F.logsigmoid(-rejected_rewards))
    return _out(losses, chosen_rewards, rejected_rewards)


def bco_pair(policy: PairLogps, reference: PairLogps | None, *, beta: float = 0.1,
             delta: float = 0.0) -> LossOutput:
    """Binary Classifier Optimization (BCO) on pairs: chosen classified as +1, rejected as −1.

    Formula:
        r = β·logratio
        loss = −log σ(r_w − δ) − log σ(−(r_l − δ))

    References:
        Jung et al. 2024, "Binary Classifier Optimization for Large Language Model Alignment",
        arXiv 2404.04656, the BCO loss (binary cross-entropy with reward shift δ), on pairs.

    δ is, in the paper, a running mean of the rewards of past batches (detached). Here it is a parameter
    (default 0); the registry marks this loss ``running_reward_mean``, so the trainer passes the running
    mean as ``delta`` each step. Shapes: (B,) everywhere. Sign convention: higher log-prob = more likely,
    loss minimised; rewards are β·logratio. Deviations from the paper: δ is not tracked inside the loss
    (pure function); δ = 0 unless the caller passes one.
    """
    reference = _need_reference(reference, "bco_pair")
    chosen_logratios, rejected_logratios = _logratios(policy, reference)
    chosen_rewards, rejected_rewards = beta * chosen_logratios, beta * rejected_logratios
    losses = -F.logsigmoid(chosen_rewards - delta) - F.logsigmoid(-(rejected_rewards - delta))
    return LossOutput(losses, chosen_rewards.detach(), rejected_rewards.detach(),
                      metrics={"bco/delta": torch.as_tensor(float(delta))})


def sppo(policy: PairLogps, reference: PairLogps | None, *, beta: float = 0.1) -> LossOutput:
    """Self-Play Preference Optimization (SPPO) with hard labels.

    Formula:
        loss_y = (log π(y|x)/π_t(y|x) − η·(P̂(y ≻ π_t | x) − ½))²,  η = 1/β
        hard labels P̂(y_w) = 1, P̂(y_l) = 0:
        loss = (logratio_w − 1/(2β))² + (logratio_l + 1/(2β))²

    References:
        Wu et al. 2024, "Self-Play Preference Optimization for Language Model Alignment",
        arXiv 2405.00675, the SPPO objective (hard labels).

    The reference is the previous iterate π_t. Shapes: (B,) everywhere. Sign convention: higher log-prob =
    more likely, loss minimised; rewards are β·logratio. Deviations from the paper: the paper estimates P̂
    with a preference model against samples of π_t; the hard-label form (TRL's ``sppo_hard``) replaces it by
    the pair's label.
    """
    reference = _need_reference(reference, "sppo")
    chosen_logratios, rejected_logratios = _logratios(policy, reference)
    half_eta = 1 / (2 * beta)
    losses = (chosen_logratios - half_eta) ** 2 + (rejected_logratios + half_eta) ** 2
    return _out(losses, beta * chosen_logratios, beta * rejected_logratios)


def apo_zero(policy: PairLogps, reference: PairLogps | None, *, beta: float = 0.1) -> LossOutput:
    """Anchored Preference Optimization, APO-zero: raise the chosen, lower the rejected likelihood.

    Formula:
        loss = −σ(β·logratio_w) + σ(β·logratio_l)

    References:
        D'Oosterlinck et al. 2024, "Anchored Preference Optimization and Contrastive Revisions",
        arXiv 2408.06266, Eq. 7.

    For pairs where the chosen response is better than the model's outputs. Shapes: (B,) everywhere.
    Sign convention: higher log-prob = more likely, loss minimised; rewards are β·logratio.
    Deviations from the paper: none (TRL adds the constant 1; gradients are identical).
    """
    reference = _need_reference(reference, "apo_zero")
    chosen_logratios, rejected_logratios = _logratios(policy, reference)
    chosen_rewards, rejected_rewards = beta * chosen_logratios, beta * rejected_logratios
    losses = -torch.sigmoid(chosen_rewards) + torch.sigmoid(rejected_rewards)
    return _out(losses, chosen_rewards, rejected_rewards)


def apo_down(policy: PairLogps, reference: PairLogps | None, *, beta: float = 0.1) -> LossOutput:
    """Anchored Preference Optimization, APO-down: lower both, the rejected more.

    Formula:
        loss = σ(β·logratio_w) − σ(β·logratio_w − β·logratio_l)

    References:
        D'Oosterlinck et al. 2024, "Anchored Preference Optimization and Contrastive Revisions",
        arXiv 2408.06266, Eq. 8.

    For pairs where the chosen response is worse than the model's outputs. Shapes: (B,) everywhere.
    Sign convention: higher log-prob = more likely, loss minimised; rewards are β·logratio.
    Deviations from the paper: none (TRL adds the constant 1; gradients are identical).
    """
    reference = _need_reference(reference, "apo_down")
    chosen_logratios, rejected_logratios = _logratios(policy, reference)
    chosen_rewards, rejected_rewards = beta * chosen_logratios, beta * rejected_logratios
    losses = torch.sigmoid(chosen_rewards) - torch.sigmoid(chosen_rewards - rejected_rewards)
    return _out(losses, chosen_rewards, rejected_rewards)


def discopop(policy: PairLogps, reference: PairLogps | None, *, beta: float = 0.05,
             tau: float = 0.05) -> LossOutput:
    """DiscoPOP: the discovered log-ratio modulated loss (LRML).

    Formula:
        ρ = β·h
        loss = (1 − σ(ρ/τ))·(−log σ(ρ)) + σ(ρ/τ)·exp(−ρ)

    References:
        Lu et al. 2024, "Discovering Preference Optimization Algorithms with and for Large Language
        Models", arXiv 2406.08414, LRML.

    A blend of the logistic (DPO) and exponential losses, switched by the sign of ρ. The second term is
    computed as exp(log σ(ρ/τ) − ρ), finite for any ρ when τ ≤ 1. The loss is not monotone in ρ (the paper
    notes it is non-convex): with τ = 0.05 it has a local minimum at ρ ≈ −0.12 and a local maximum at ρ ≈
    0.07, so at policy = reference (ρ = 0) its gradient pushes ρ slightly negative. Shapes: (B,) everywhere.
    Sign convention: higher log-prob = more likely, loss minimised; rewards are β·logratio. Typical: β 0.05,
    τ 0.05 (paper). Deviations from the paper: none.
    """
    reference = _need_reference(reference, "discopop")
    chosen_logratios, rejected_logratios = _logratios(policy, reference)
    rho = beta * (chosen_logratios - rejected_logratios)  # (B,)
    losses = (-torch.sigmoid(-rho / tau) * F.logsigmoid(rho)
              + torch.exp(F.logsigmoid(rho / tau) - rho))
    return _out(losses, beta * chosen_logratios, beta * rejected_logratios)


def aot(policy: PairLogps, reference: PairLogps | None, *, beta: float = 0.1,
        label_smoothing: float = 0.0, variant: str = "paired") -> LossOutput:
    """Alignment via Optimal Transport (AOT): distributional (first-order dominance) preference loss.

    Formula:
        paired:   u = sort_batch(log π(y_w) − log π(y_l)),  v = sort_batch(log π_ref(y_w) − log π_ref(y_l))
        unpaired: u = sort_batch(logratio_w),               v = sort_batch(logratio_l)
        loss_i = −(1 − ε)·log σ(β·(u_i − v_i)) − ε·log σ(−β·(u_i − v_i))

    References:
        Melnyk et al. 2024, "Distributional Preference Alignment of LLMs via Optimal Transport",
        arXiv 2406.05882, AOT paired / unpaired (sorting = 1-D optimal transport).

    The losses are per *quantile*: element i pairs the i-th smallest values across the batch, so it is not
    tied to pair i and the loss depends on the whole batch (use batch sizes > 1). The mean over the batch is
    the paper's objective. Shapes: (B,) everywhere. Sign convention: higher log-prob = more likely, loss
    minimised; rewards are β·logratio of pair i (not sorted). Deviations from the paper: none.
    """
    reference = _need_reference(reference, "aot")
    chosen_logratios, rejected_logratios = _logratios(policy, reference)
    if variant == "paired":
        u = torch.sort(policy.chosen_logps - policy.rejected_logps).values  # (B,)
        v = torch.sort(reference.chosen_logps - reference.rejected_logps).values  # (B,)
    else:
        u = torch.sort(chosen_logratios).values  # (B,)
        v = torch.sort(rejected_logratios).values  # (B,)
    losses = _bce(beta * (u - v), 1.0 - label_smoothing)
    return _out(losses, beta * chosen_logratios, beta * rejected_logratios)


# --- reference-free --------------------------------------------------------------------------------


def simpo(policy: PairLogps, reference: PairLogps | None = None, *, beta: float = 2.0,
          gamma: float = 1.0) -> LossOutput:
    """Simple Preference Optimization (SimPO): reference-free, length-normalised, with a target margin.

    Formula:
        loss = −log σ(β/|y_w|·log π(y_w) − β/|y_l|·log π(y_l) − γ)

    References:
        Meng, Xia & Chen 2024, "SimPO: Simple Preference Optimization with a Reference-Free Reward",
        arXiv 2405.14734, Eq. 6.

    ``reference`` is ignored. Shapes: (B,) everywhere. Sign convention: higher log-prob = more likely, loss
    minimised; rewards are the implicit SimPO reward β/|y|·log π(y) (no reference). Typical: β 2.0–2.5, γ/β
    0.3–0.8 (paper). Deviations from the paper: none (TRL parametrises γ as γ/β).
    """
    chosen_tokens, rejected_tokens = _tokens(policy)
    chosen_rewards = beta * policy.chosen_logps / chosen_tokens  # (B,)
    rejected_rewards = beta * policy.rejected_logps / rejected_tokens  # (B,)
    losses = -F.logsigmoid(chosen_rewards - rejected_rewards - gamma)
    return _out(losses, chosen_rewards, rejected_rewards)


def cpo(policy: PairLogps, reference: PairLogps | None = None, *, beta: float = 0.1,
        alpha: float = 1.0) -> LossOutput:
    """Contrastive Preference Optimization (CPO): reference-free DPO plus behaviour cloning on y_w.

    Formula:
        loss = −log σ(β·log π(y_w) − β·log π(y_l)) + α·(−log π(y_w|x) / |y_w|)

    References:
        Xu et al. 2024, "Contrastive Preference Optimization: Pushing the Boundaries of LLM Performance
        in Machine Translation", arXiv 2401.08417, L_CPO = L_prefer + L_NLL.

    ``reference`` is ignored (CPO replaces π_ref by a uniform reference, whose log-ratio cancels). Shapes:
    (B,) everywhere. Sign convention: higher log-prob = more likely, loss minimised; rewards are β·log π(y)
    (no reference). The NLL is ``metrics["nll"]``. Deviations from the paper: the behaviour-cloning NLL is
    averaged over tokens (the paper writes −log π(y_w|x); its released code and TRL use the token-mean
    cross-entropy); α (paper: 1) weights it.
    """
    chosen_rewards, rejected_rewards = beta * policy.chosen_logps, beta * policy.rejected_logps
    nll = _chosen_nll(policy)  # (B,)
    losses = -F.logsigmoid(chosen_rewards - rejected_rewards) + alpha * nll
    return _out(losses, chosen_rewards, rejected_rewards, nll=nll)


def orpo(policy: PairLogps, reference: PairLogps | None = None, *, lam: float = 0.1) -> LossOutput:
    """Odds Ratio Preference Optimization (ORPO): SFT on y_w plus a log-odds-ratio penalty.

    Formula:
        m(y) = log P(y) = log π(y|x) / |y|              (length-normalised log-likelihood)
        log odds(y) = m(y) − log(1 − exp(m(y)))
        loss = −log π(y_w|x)/|y_w| − λ·log σ(log odds(y_w) − log odds(y_l))

    References:
        Hong, Lee & Thorne 2024, "ORPO: Monolithic Preference Optimization without Reference Model",
        arXiv 2403.07691, L_ORPO = L_SFT + λ·L_OR.

    ``reference`` is ignored. log(1 − exp(m)) is computed stably for every m < 0, so log odds near P = 1 (a
    memorised response) keep their value and gradient. Shapes: (B,) everywhere. Sign convention: higher
    log-prob = more likely, loss minimised; rewards are λ·log odds(y) (the odds ratio is the implicit
    preference score). Metrics: ``nll``, ``log_odds_ratio``. Deviations from the paper: only m ≥ 0 (P = 1,
    or malformed log-probs > 0) changes: it is clamped to −(smallest normal) of the dtype (−1.2e-38 in
    fp32/bf16, −2.2e-308 in fp64), so log odds is large but finite (≈ 87 in fp32), with zero gradient,
    instead of inf/NaN.
    """
    chosen_tokens, rejected_tokens = _tokens(policy)
    below_zero = -torch.finfo(policy.chosen_logps.dtype).tiny  # m >= 0 goes here: log(1 − e^m) finite
    chosen_mean = (policy.chosen_logps / chosen_tokens).clamp(max=below_zero)  # (B,) log P(y_w)
    rejected_mean = (policy.rejected_logps / rejected_tokens).clamp(max=below_zero)  # (B,) log P(y_l)
    chosen_log_odds = chosen_mean - _log1mexp(chosen_mean)  # (B,)
    rejected_log_odds = rejected_mean - _log1mexp(rejected_mean)  # (B,)
    log_odds_ratio = chosen_log_odds - rejected_log_odds
    nll = _chosen_nll(policy)
    losses = nll - lam * F.logsigmoid(log_odds_ratio)
    return _out(losses, lam * chosen_log_odds, lam * rejected_log_odds, nll=nll,
                log_odds_ratio=log_odds_ratio)


def slic(policy: PairLogps, reference: PairLogps | None = None, *, delta: float = 1.0,
         lam: float = 0.0) -> LossOutput:
    """SLiC-HF: hinge calibration loss on sequence log-likelihoods, plus an optional NLL regulariser.

    Formula:
        loss = max(0, δ − log π(y_w|x) + log π(y_l|x)) + λ·(−log π(y_w|x) / |y_w|)

    References:
        Zhao et al. 2023, "SLiC-HF: Sequence Likelihood Calibration with Human Feedback",
        arXiv 2305.10425, the calibration loss with regularisation.

    ``reference`` is ignored. Shapes: (B,) everywhere. Sign convention: higher log-prob = more likely, loss
    minimised; rewards are log π(y) (the calibrated score). The NLL is ``metrics["nll"]``.
    Deviations from the paper: the paper regularises towards the SFT target y_ref; we use the chosen
    response y_w (the "SLiC-HF with positive target" choice) and average its NLL over tokens. λ defaults to
    0 (pure hinge, as TRL's ``hinge`` without a reference); the paper tunes λ > 0 per task. Not
    differentiable at the hinge point (subgradient 0 there).
    """
    nll = _chosen_nll(policy)  # (B,)
    losses = torch.relu(delta - policy.chosen_logps + policy.rejected_logps) + lam * nll
    return _out(losses, policy.chosen_logps, policy.rejected_logps, nll=nll)


__all__ = ["dpo", "robust_dpo", "dpo_soft", "ln_dpo", "ipo", "rdpo", "dpop", "odpo", "fdpo", "rpo",
           "rso_hinge", "exo", "nca", "bco_pair", "sppo", "apo_zero", "apo_down", "discopop", "aot",
           "simpo", "cpo", "orpo", "slic", "FDPO_DIVERGENCES"]
