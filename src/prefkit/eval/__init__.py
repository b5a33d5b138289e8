"""prefkit.eval: metrics and reports.

- ``prefkit.eval.metrics``: generic metrics (pairwise accuracy, calibration bins, ECE, buckets);
- ``prefkit.eval.reward``: the reward-model report (accuracy tables beside length baselines,
  calibration, margins, ties) with ``print_report`` / ``write_report``;
- ``prefkit.eval.plots``: reliability diagram and margin histogram PNGs;
- ``prefkit.eval.best_of_n``: best-of-N selection with a reward model;
- ``prefkit.eval.personal``: personalized reward models: the user-blind ceiling, accuracy per user and
  per group, unseen users' accuracy against shots, group recovery (ARI), the shots-curve plot.
"""

from prefkit.eval.metrics import (
    calibration_bins,
    expected_calibration_error,
    pair_confidence,
    pairwise_accuracy,
)
from prefkit.eval.reward import (
    RewardEvalReport,
    evaluate_margins,
    evaluate_reward_model,
    print_report,
    write_report,
)

__all__ = ["pairwise_accuracy", "calibration_bins", "expected_calibration_error", "pair_confidence",
           "RewardEvalReport", "evaluate_margins", "evaluate_reward_model", "print_report", "write_report"]
