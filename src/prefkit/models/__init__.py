"""prefkit.models: loading policies/references (``load``) and the log-prob engine.

The engine: ``logprobs`` (the dispatcher :func:`sequence_logps`, the padded path, loss-input helpers)
over ``packing`` (planning and running the padding-free path), ``attention`` (segment attention),
``chunked`` (the output layer) and ``decoder`` (the result type and model parts both paths share); each
imports only the modules after it, with no import cycle.
"""

from prefkit.models.load import adapters_disabled, add_lora, frozen, frozen_copy, load_model, load_tokenizer
from prefkit.models.logprobs import SequenceLogps, sequence_logps

__all__ = ["load_model", "load_tokenizer", "add_lora", "frozen", "frozen_copy", "adapters_disabled",
           "SequenceLogps", "sequence_logps"]
