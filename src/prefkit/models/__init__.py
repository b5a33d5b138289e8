"""prefkit.models: loading policies/references (``load``) and the log-prob engine (``logprobs``)."""

from prefkit.models.load import adapters_disabled, add_lora, frozen, frozen_copy, load_model, load_tokenizer
from prefkit.models.logprobs import SequenceLogps, sequence_logps

__all__ = ["load_model", "load_tokenizer", "add_lora", "frozen", "frozen_copy", "adapters_disabled",
           "SequenceLogps", "sequence_logps"]
