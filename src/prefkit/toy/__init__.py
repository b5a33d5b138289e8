"""prefkit.toy: a built-in toy world with a hidden, checkable reward, and the demo job.

- :mod:`prefkit.toy.world`: the digit tasks, their hidden reward, the fixed-vocabulary tokenizer and
  the data generators (SFT responses, preference pairs labelled by the hidden reward);
- :func:`run_demo`: SFT warm-up then preference tuning of a tiny Llama with the project's Trainer,
  printing before/after held-out preference accuracy, generation reward and KL (``prefkit demo``).
"""

from prefkit.toy.demo import DemoResult, Snapshot, ToySettings, is_toy_config, run_config, run_demo

__all__ = ["run_demo", "run_config", "is_toy_config", "DemoResult", "Snapshot", "ToySettings"]
