"""The loss registry: one dict literal, name -> LossSpec.

Every loss is a pure function ``fn(policy, reference, **inputs, **params) -> LossOutput`` returning
per-example losses; see ``prefkit.losses.types`` for the input and output types. Names follow papers.
Docs (``docs/losses.md``), the CLI (``prefkit losses``) and the test matrix all read ``LOSSES``.

``LOSSES`` is the one source of facts about a loss: its kind, inputs, paper, the valid range of each
parameter (``Param``; its default is read from the function's signature), and properties callers branch
on (``running_reward_mean``, ``head_params``, ``record_kind``), so no code outside ``prefkit.losses``
needs to list loss names; ``prefkit.losses.registry`` selects names by property (``names_of``).
"""

from __future__ import annotations

from prefkit.losses import pairwise
from prefkit.losses.types import (
    ListLogps,
    LossOutput,
    LossSpec,
    PairLogps,
    Paper,
    Param,
    UnpairedLogps,
)

from . import listwise, online, reward, unpaired
from .registry import get_loss, names_of, reference_free_pair_losses, reward_losses, validate_loss_params
from .reward import ListScores, PairScores, RatingScores

LOSSES: dict[str, LossSpec] = {
    # --- pairwise (prefkit.losses.pairwise) ---
    "dpo": LossSpec(
        fn=pairwise.dpo, kind="pair", needs_reference=True,
        paper=Paper("Direct Preference Optimization: Your Language Model is Secretly a Reward Model",
                    "2305.18290", "Eq. 7"),
        params={"beta": Param(low=0, low_open=True, doc="KL strength β (typ. 0.1–0.5)"),
                "label_smoothing": Param(low=0, high=0.5,
                                         doc="label-flip rate ε; > 0 gives conservative DPO (cDPO)")},
        summary="DPO: −log σ(β·margin of policy/reference log-ratios); label_smoothing > 0 gives cDPO"),
    "robust_dpo": LossSpec(
        fn=pairwise.robust_dpo, kind="pair", needs_reference=True,
        paper=Paper("Provably Robust DPO: Aligning Language Models with Noisy Feedback", "2403.00409",
                    "de-biased loss"),
        params={"beta": Param(low=0, low_open=True, doc="KL strength β (typ. 0.1–0.5)"),
                "label_smoothing": Param(low=0, high=0.5, high_open=True, doc="known label-flip rate ε")},
        summary="rDPO: DPO loss de-biased for a known label-flip rate ε (unbiased under random flips)"),
    "dpo_soft": LossSpec(
        fn=pairwise.dpo_soft, kind="pair", needs_reference=True,
        paper=Paper("Online Self-Preferring Language Models", "2405.14103", "soft-preference CE"),
        params={"beta": Param(low=0, low_open=True, doc="KL strength β (typ. 0.1–0.5)")},
        needs=frozenset({"strength"}),
        summary="soft-label DPO: BCE of β·margin against each pair's preference probability p = strength"),
    "ln_dpo": LossSpec(
        fn=pairwise.ln_dpo, kind="pair", needs_reference=True,
        paper=Paper("The Hitchhiker's Guide to Human Alignment with *PO", "2407.15229", "LN-DPO"),
        params={"beta": Param(low=0, low_open=True, doc="β on per-token log-ratios (larger than DPO's)")},
        summary="length-normalised DPO: DPO on log-ratios divided by response token counts"),
    "ipo": LossSpec(
        fn=pairwise.ipo, kind="pair", needs_reference=True,
        paper=Paper("A General Theoretical Paradigm to Understand Learning from Human Preferences",
                    "2310.12036", "Eq. 17"),
        params={"beta": Param(low=0, low_open=True, doc="regularisation τ; target margin is 1/(2τ)")},
        summary="IPO: squared error between the log-ratio margin (summed log-probs) and 1/(2τ)"),
    "rdpo": LossSpec(
        fn=pairwise.rdpo, kind="pair", needs_reference=True,
        paper=Paper("Disentangling Length from Quality in Direct Preference Optimization", "2403.19159",
                    "R-DPO objective"),
        params={"beta": Param(low=0, low_open=True, doc="KL strength β"),
                "alpha": Param(low=0, doc="length penalty α per token (typ. 0.005–0.05)")},
        summary="R-DPO: DPO with α·(|y_w| − |y_l|) added to the margin, so length is not rewarded"),
    "dpop": LossSpec(
        fn=pairwise.dpop, kind="pair", needs_reference=True,
        paper=Paper("Smaug: Fixing Failure Modes of Preference Optimisation with DPO-Positive", "2402.13228",
                    "Eq. 3"),
        params={"beta": Param(low=0, low_open=True, doc="KL strength β"),
                "lam": Param(low=0, doc="penalty λ on the chosen log-prob falling below reference")},
        summary="DPO-Positive: DPO minus λ·max(0, ref − policy log-prob of the chosen) inside the sigmoid"),
    "odpo": LossSpec(
        fn=pairwise.odpo, kind="pair", needs_reference=True,
        paper=Paper("Direct Preference Optimization with an Offset", "2402.10571", "ODPO loss"),
        params={"beta": Param(low=0, low_open=True, doc="KL strength β"),
                "alpha": Param(low=0, doc="offset scale α"),
                "offset": Param(choices=("linear", "log"),
                                doc="offset Δ = α·strength ('linear') or α·log(strength) ('log')")},
        needs=frozenset({"strength"}),
        summary="ODPO: DPO whose margin must exceed a per-pair offset Δ derived from the strength"),
    "fdpo": LossSpec(
        fn=pairwise.fdpo, kind="pair", needs_reference=True,
        paper=Paper("Beyond Reverse KL: Generalizing Direct Preference Optimization with Diverse "
                    "Divergence Constraints", "2309.16240", "f-DPO objective"),
        params={"beta": Param(low=0, low_open=True, doc="divergence strength β"),
                "divergence": Param(choices=pairwise.FDPO_DIVERGENCES, doc="f-divergence of the constraint"),
                "alpha": Param(low=0, low_open=True, high=1, high_open=True,
                               doc="α of the α-divergence (only for divergence='alpha')")},
        summary="f-DPO: DPO with f′(π/π_ref) in place of log(π/π_ref): reverse/forward KL, JS, α-divergence"),
    "rpo": LossSpec(
        fn=pairwise.rpo, kind="pair", needs_reference=True,
        paper=Paper("Provably Mitigating Overoptimization in RLHF: Your SFT Loss is Implicitly an "
                    "Adversarial Regularizer", "2405.16436", "RPO objective"),
        params={"beta": Param(low=0, low_open=True, doc="KL strength β"),
                "alpha": Param(low=0, doc="weight of the per-token NLL on the chosen response")},
        summary="RPO: DPO plus α·(per-token NLL of the chosen response)"),
    "rso_hinge": LossSpec(
        fn=pairwise.rso_hinge, kind="pair", needs_reference=True,
        paper=Paper("Statistical Rejection Sampling Improves Preference Optimization", "2309.06657",
                    "hinge-norm loss"),
        params={"beta": Param(low=0, low_open=True, doc="scale β (RSO's γ) of the log-ratio margin")},
        summary="hinge loss max(0, 1 − β·margin) on the DPO log-ratio margin (RSO / SLiC with reference)"),
    "exo": LossSpec(
        fn=pairwise.exo, kind="pair", needs_reference=True,
        paper=Paper("Towards Efficient Exact Optimization of Language Model Alignment", "2402.00856",
                    "EXO loss (K = 2)"),
        params={"beta": Param(low=0, low_open=True, doc="β of the policy's pair distribution"),
                "label_smoothing": Param(low=0, low_open=True, high=0.5, high_open=True,
                                         doc="ε of the label distribution (1 − ε, ε)")},
        summary="EXO: reverse KL from σ(β·margin) to the ε-smoothed preference label"),
    "nca": LossSpec(
        fn=pairwise.nca, kind="pair", needs_reference=True,
        paper=Paper("Noise Contrastive Alignment of Language Models with Explicit Rewards", "2402.05369",
                    "NCA loss (K = 2)"),
        params={"beta": Param(low=0, low_open=True, doc="reward scale β")},
        summary="NCA: absolute per-response rewards; −log σ(r_w) − ½ log σ(−r_w) − ½ log σ(−r_l)"),
    "bco_pair": LossSpec(
        fn=pairwise.bco_pair, kind="pair", needs_reference=True,
        paper=Paper("Binary Classifier Optimization for Large Language Model Alignment", "2404.04656",
                    "BCO loss on pairs"),
        params={"beta": Param(low=0, low_open=True, doc="reward scale β"),
                "delta": Param(doc="reward shift δ (running reward mean; 0 = none)")},
        running_reward_mean=True,
        summary="BCO on pairs: chosen classified positive, rejected negative, with reward shift δ"),
    "sppo": LossSpec(
        fn=pairwise.sppo, kind="pair", needs_reference=True,
        paper=Paper("Self-Play Preference Optimization for Language Model Alignment", "2405.00675",
                    "SPPO objective (hard labels)"),
        params={"beta": Param(low=0, low_open=True, doc="β = 1/η; targets are ±1/(2β)")},
        summary="SPPO (hard labels): regress log-ratios of chosen to +1/(2β) and rejected to −1/(2β)"),
    "apo_zero": LossSpec(
        fn=pairwise.apo_zero, kind="pair", needs_reference=True,
        paper=Paper("Anchored Preference Optimization and Contrastive Revisions", "2408.06266", "Eq. 7"),
        params={"beta": Param(low=0, low_open=True, doc="reward scale β")},
        summary="APO-zero: raise the chosen and lower the rejected likelihood (chosen better than model)"),
    "apo_down": LossSpec(
        fn=pairwise.apo_down, kind="pair", needs_reference=True,
        paper=Paper("Anchored Preference Optimization and Contrastive Revisions", "2408.06266", "Eq. 8"),
        params={"beta": Param(low=0, low_open=True, doc="reward scale β")},
        summary="APO-down: lower both likelihoods, the rejected more (chosen worse than model)"),
    "discopop": LossSpec(
        fn=pairwise.discopop, kind="pair", needs_reference=True,
        paper=Paper("Discovering Preference Optimization Algorithms with and for Large Language Models",
                    "2406.08414", "LRML"),
        params={"beta": Param(low=0, low_open=True, doc="KL strength β (paper 0.05)"),
                "tau": Param(low=0, low_open=True, high=1,
                             doc="temperature τ of the logistic/exponential switch")},
        summary="DiscoPOP (LRML): logistic and exponential losses blended by σ(β·margin/τ)"),
    "aot": LossSpec(
        fn=pairwise.aot, kind="pair", needs_reference=True,
        paper=Paper("Distributional Preference Alignment of LLMs via Optimal Transport", "2406.05882",
                    "AOT paired/unpaired"),
        params={"beta": Param(low=0, low_open=True, doc="scale β"),
                "label_smoothing": Param(low=0, high=0.5, doc="label smoothing ε"),
                "variant": Param(choices=("paired", "unpaired"),
                                 doc="'paired': sorted policy vs reference pair log-ratios; "
                                     "'unpaired': sorted chosen vs rejected log-ratios")},
        summary="AOT: logistic loss on batch-sorted (quantile-matched) log-ratios; stochastic dominance"),
    "simpo": LossSpec(
        fn=pairwise.simpo, kind="pair", needs_reference=False,
        paper=Paper("SimPO: Simple Preference Optimization with a Reference-Free Reward", "2405.14734",
                    "Eq. 6"),
        params={"beta": Param(low=0, low_open=True, doc="reward scale β (typ. 2.0–2.5)"),
                "gamma": Param(low=0, doc="target reward margin γ (typ. 0.3–0.8·β)")},
        summary="SimPO: reference-free; length-normalised log-probs with target margin γ"),
    "cpo": LossSpec(
        fn=pairwise.cpo, kind="pair", needs_reference=False,
        paper=Paper("Contrastive Preference Optimization: Pushing the Boundaries of LLM Performance in "
                    "Machine Translation", "2401.08417", "L_prefer + L_NLL"),
        params={"beta": Param(low=0, low_open=True, doc="scale β"),
                "alpha": Param(low=0, doc="weight of the behaviour-cloning per-token NLL on y_w")},
        summary="CPO: reference-free DPO plus per-token NLL on the chosen response"),
    "orpo": LossSpec(
        fn=pairwise.orpo, kind="pair", needs_reference=False,
        paper=Paper("ORPO: Monolithic Preference Optimization without Reference Model", "2403.07691",
                    "L_ORPO = L_SFT + λ·L_OR"),
        params={"lam": Param(low=0, doc="weight λ of the odds-ratio term")},
        summary="ORPO: per-token NLL on the chosen plus λ·(−log σ(log odds ratio)); reference-free"),
    "slic": LossSpec(
        fn=pairwise.slic, kind="pair", needs_reference=False,
        paper=Paper("SLiC-HF: Sequence Likelihood Calibration with Human Feedback", "2305.10425",
                    "calibration loss + regulariser"),
        params={"delta": Param(low=0, doc="hinge margin δ on log π(y_w) − log π(y_l)"),
                "lam": Param(low=0, doc="weight λ of the per-token NLL regulariser on the chosen")},
        summary="SLiC-HF: hinge max(0, δ − log π(y_w) + log π(y_l)) + λ·NLL; reference-free"),
    # --- end pairwise ---
    # --- online (prefkit.losses.online) ---
    "ipo_soft": LossSpec(
        fn=online.ipo_soft, kind="pair", needs_reference=True,
        paper=Paper("Human Alignment of Large Language Models through Online Preference Optimisation",
                    "2403.08635", "online IPO; IPO (2310.12036) Eq. 17 with p in place of 1"),
        params={"beta": Param(low=0, low_open=True, doc="regularisation τ; target margin is (p − ½)/τ")},
        needs=frozenset({"strength"}),
        summary="soft-label IPO: (h − (p − ½)/τ)², p = strength = P(y₁ ≻ y₂); EGPO's online IPO loss"),
    # --- end online ---
    # --- listwise (prefkit.losses.listwise) ---
    "pl_dpo": LossSpec(
        fn=listwise.pl_dpo, kind="list", needs_reference=True,
        paper=Paper("Direct Preference Optimization: Your Language Model is Secretly a Reward Model",
                    "2305.18290", "Appendix A.3, Plackett–Luce objective"),
        params={"beta": Param(low=0, low_open=True, doc="β scaling the log-ratios (typ. 0.1–0.5)")},
        summary="Plackett–Luce DPO: −log P_PL(ranking) of β·log-ratios; DPO at K = 2"),
    "lipo": LossSpec(
        fn=listwise.lipo, kind="list", needs_reference=True,
        paper=Paper("LiPO: Listwise Preference Optimization through Learning-to-Rank", "2402.01878",
                    "LiPO-λ loss (Lambda-weighted pairwise logistic loss)"),
        params={"beta": Param(low=0, low_open=True, doc="β scaling the log-ratios (typ. 0.1–0.5)"),
                "form": Param(choices=("logistic", "hinge"),
                              doc="pairwise loss: 'logistic' log(1+e^−(s_i−s_j)) or 'hinge' "
                                  "max(0, δ − (s_i−s_j))"),
                "weighting": Param(choices=("lambda", "none"),
                                   doc="'lambda': LiPO-λ weights Δ_ij from graded labels and ranks; 'none': "
                                       "every ordered pair weighs 1"),
                "delta": Param(low=0, doc="hinge margin δ, in units of β·log-ratio (form='hinge')")},
        needs=frozenset({"scores"}),
        summary="LiPO-λ: Lambda-weighted pairwise logistic (or hinge) loss over graded lists"),
    "pro": LossSpec(
        fn=listwise.pro, kind="list", needs_reference=False,
        paper=Paper("Preference Ranking Optimization for Human Alignment", "2306.17492",
                    "L_PRO with dynamic temperature + β·L_SFT"),
        params={"sft_weight": Param(low=0, doc="weight of the SFT term on the best item (paper's β)"),
                "temperature": Param(low=0, low_open=True, doc="constant temperature T when not dynamic"),
                "dynamic_temperature": Param(doc="use 1/T = reward-score gaps when scores are given")},
        needs=frozenset({"scores"}),
        summary="PRO: iterated softmax over length-normalised log-probs of the ranking + SFT; no reference"),
    "listnet": LossSpec(
        fn=listwise.listnet, kind="list", needs_reference=True,
        paper=Paper("Learning to Rank: From Pairwise Approach to Listwise Approach (ListNet, ICML 2007)", "",
                    "top-one probability cross entropy"),
        params={"beta": Param(low=0, low_open=True, doc="β scaling the log-ratios (typ. 0.1–0.5)"),
                "label_temperature": Param(low=0, low_open=True, doc="temperature t of the label softmax")},
        needs=frozenset({"scores"}),
        summary="ListNet: cross-entropy of softmax(β·log-ratios) against softmax(graded labels)"),
    # --- end listwise ---
    # --- unpaired (prefkit.losses.unpaired) ---
    "kto": LossSpec(
        fn=unpaired.kto, kind="unpaired", needs_reference=True,
        paper=Paper("KTO: Model Alignment as Prospect Theoretic Optimization", "2402.01306",
                    "L_KTO with reference point z0"),
        params={"beta": Param(low=0, low_open=True, doc="β scaling the log-ratios (typ. 0.1–0.5)"),
                "desirable_weight": Param(low=0, doc="λ_D, weight of desirable examples"),
                "undesirable_weight": Param(low=0, doc="λ_U, weight of undesirable examples"),
                "z0_fallback": Param(choices=("zero", "batch"),
                                     doc="z0 when kl_logps are absent: 'zero', or 'batch' (clamped mean of "
                                         "the batch's own log-ratios)")},
        needs=frozenset({"labels"}),
        summary="KTO: prospect-theoretic value of log-ratios against a batch KL reference point z0"),
    "bco": LossSpec(
        fn=unpaired.bco, kind="unpaired", needs_reference=True,
        paper=Paper("Binary Classifier Optimization for Large Language Model Alignment", "2404.04656",
                    "BCE on implicit rewards with reward shift δ"),
        params={"beta": Param(low=0, low_open=True, doc="β scaling the log-ratios (typ. 0.1–0.5)"),
                "delta": Param(doc="reward shift δ (the caller may pass the running mean)")},
        needs=frozenset({"labels"}),
        running_reward_mean=True,
        summary="BCO: logistic regression of desirable vs undesirable on β·log-ratio − δ"),
    # --- end unpaired ---
    # --- reward models (prefkit.losses.reward) ---
    "bradley_terry": LossSpec(
        fn=reward.bradley_terry, kind="reward_pair", needs_reference=False,
        paper=Paper("Training language models to follow instructions with human feedback", "2203.02155",
                    "Eq. 1; margin: Llama 2 (2307.09288) Eq. 2; centering: 2312.09244"),
        params={"margin_scale": Param(low=0, doc="margin m = margin_scale·strength (0 = no margin)"),
                "center_coef": Param(low=0, doc="reward-centering weight η on (r_w + r_l)² (typ. 0.01)")},
        needs=frozenset({"strength"}),
        summary="Bradley–Terry RM loss −log σ(r_w − r_l − m) + η·(r_w + r_l)²"),
    "soft_bradley_terry": LossSpec(
        fn=reward.soft_bradley_terry, kind="reward_pair", needs_reference=False,
        paper=Paper("Deep reinforcement learning from human preferences", "1706.03741",
                    "Sec. 2.2.3, cross-entropy with label distribution μ"),
        needs=frozenset({"strength", "ties"}),
        summary="soft-label BT: cross-entropy against p = strength (1 if absent, 0.5 on ties)"),
    "rao_kupper": LossSpec(
        fn=reward.rao_kupper, kind="reward_pair", needs_reference=False,
        paper=Paper("Ties in Paired-Comparison Experiments: A Generalization of the Bradley-Terry Model "
                    "(Rao & Kupper, JASA 1967)", "", "win and tie probabilities"),
        params={"theta": Param(low=1, doc="tie threshold θ (fixed; pass a tensor at call time to "
                               "learn it)")},
        needs=frozenset({"ties"}),
        head_params=("theta",),
        summary="Rao–Kupper: BT with ties, P(w ≻ l) = σ(Δ − log θ)"),
    "davidson": LossSpec(
        fn=reward.davidson, kind="reward_pair", needs_reference=False,
        paper=Paper("On Extending the Bradley-Terry Model to Accommodate Ties in Paired Comparison "
                    "Experiments (Davidson, JASA 1970)", "", "win and tie probabilities"),
        params={"nu": Param(low=0, doc="tie weight ν (fixed; pass a tensor at call time to learn it)")},
        needs=frozenset({"ties"}),
        head_params=("nu",),
        summary="Davidson: BT with ties, P(tie) ∝ ν·√(π_w π_l)"),
    "plackett_luce": LossSpec(
        fn=reward.plackett_luce, kind="reward_list", needs_reference=False,
        paper=Paper("Principled Reinforcement Learning with Human Feedback from Pairwise or K-wise "
                    "Comparisons", "2301.11270", "Plackett–Luce MLE for K-wise comparisons"),
        summary="Plackett–Luce RM loss over a ranking of K responses; BT at K = 2"),
    "rm_regression": LossSpec(
        fn=reward.rm_regression, kind="reward_rating", needs_reference=False,
        paper=Paper("HelpSteer2-Preference: Complementing Ratings with Preferences", "2410.01257",
                    "regression RM (MSE on ratings)"),
        needs=frozenset({"scores"}),
        summary="regression RM: squared error to the rating (mean over attributes for (B, A))"),
    "rm_multi_regression": LossSpec(
        fn=reward.rm_multi_regression, kind="reward_rating", needs_reference=False,
        paper=Paper("HelpSteer2: Open-source dataset for training top-performing reward models",
                    "2406.08673", "multi-attribute regression RM"),
        needs=frozenset({"scores"}),
        summary="multi-attribute regression RM: MSE over rated attributes (NaN = missing)"),
    # --- end reward models ---
}

DEFAULT_LOSS = "dpo"
"""The loss of a run config that names none (``loss.name``)."""
DEFAULT_REWARD_LOSS = "bradley_terry"
"""The loss of a reward-model job that names none."""
ARENA_LOSS = "bradley_terry"
"""The loss that fits arena ratings from battles (``prefkit.eval.arena``); its tie models are the
``reward_pair`` losses with a tie head parameter (``head_params``)."""

__all__ = ["LOSSES", "DEFAULT_LOSS", "DEFAULT_REWARD_LOSS", "ARENA_LOSS", "LossSpec", "LossOutput", "PairLogps", "ListLogps", "UnpairedLogps", "Paper", "Param",
           "PairScores", "ListScores", "RatingScores", "get_loss", "validate_loss_params", "names_of",
           "reward_losses", "reference_free_pair_losses"]
