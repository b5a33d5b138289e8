"""The online loop and its parts (issue 12): generation (``sampler``), judges (``judges``) and the
loop (``loop``: sample, judge, build records, train with the one ``Trainer``).

Floor between ``train`` and ``eval | toy``: it may import ``train``, ``models``, ``data``, ``losses``,
``errors`` and ``kinds``; ``eval``, ``toy`` and ``cli`` may import it.
"""

from prefkit.online.algorithms import (
    ALGORITHMS,
    EGPO,
    SPPO,
    XPO,
    Algorithm,
    NashMD,
    OnlineDPO,
    make_algorithm,
)
from prefkit.online.config import OnlineConfig
from prefkit.online.context import RoundContext
from prefkit.online.judges import (
    DEFAULT_TEMPLATE,
    PAIRWISE_NOTE,
    POINTWISE_NOTE,
    FunctionJudge,
    Judge,
    LMJudge,
    Preferences,
    RewardModelJudge,
    Verdicts,
    exact_match_judge,
    judge_scores,
    preference_matrix,
    preference_probs,
    regex_judge,
)
from prefkit.online.loop import run_online
from prefkit.online.rewards import RewardComponent, RewardMix, RoundHooks, kl_penalized_rewards
from prefkit.online.sampler import (
    Completion,
    SampleBatch,
    Sampler,
    SamplingSettings,
    TorchSampler,
    mixture_logps,
    sampling_logits,
)

__all__ = [
    # sampler
    "Sampler", "SamplingSettings", "Completion", "SampleBatch", "TorchSampler", "sampling_logits",
    "mixture_logps",
    # judges
    "Judge", "Verdicts", "Preferences", "POINTWISE_NOTE", "PAIRWISE_NOTE", "judge_scores", "preference_probs",
    "preference_matrix", "FunctionJudge", "regex_judge", "exact_match_judge", "RewardModelJudge", "LMJudge",
    "DEFAULT_TEMPLATE",
    # loop
    "OnlineConfig", "run_online", "RoundContext", "Algorithm", "ALGORITHMS", "make_algorithm", "OnlineDPO", "XPO",
    "SPPO", "NashMD", "EGPO",
    # rewards
    "RewardMix", "RewardComponent", "RoundHooks", "kl_penalized_rewards",
]
