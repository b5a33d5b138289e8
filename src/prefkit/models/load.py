"""Loading policies and references from local files: Hugging Face directories or GGUF files, plus LoRA.

- :func:`load_model` / :func:`load_tokenizer`: a local directory (safetensors weights) or a ``.gguf``
  file (``transformers``' ``gguf_file=`` loader; needs the ``gguf`` package, dequantises to
  ``dtype``). Never a hub id, never ``trust_remote_code``, no network.
- :func:`add_lora`: wrap a model with a fresh (or saved) LoRA adapter (peft).
- :func:`frozen`: a model switched to eval mode with gradients off (a reference).
- :func:`adapters_disabled`: context manager that runs a PEFT model without its adapters, the
  "reference = same model, adapters off" mode (no second copy).

``load_count`` counts :func:`load_model` calls (tests use it to assert a cache hit loaded nothing).
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prefkit.errors import ConfigError

load_count = 0
"""How many models :func:`load_model` has loaded in this process."""

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _split_gguf(path: str | Path) -> tuple[Path, str | None]:
    """(directory, gguf file name or None) for a local model path; ConfigError if it is not local."""
    p = Path(path).expanduser()
    if not str(path):
        raise ConfigError("no model path given; set model.path to a local model directory or .gguf file")
    if p.is_file() and p.suffix == ".gguf":
        if importlib.util.find_spec("gguf") is None:  # transformers' GGUF loader needs it
            raise ConfigError(f"{p} is a GGUF file; install the gguf package: pip install gguf")
        return p.parent, p.name
    if p.is_dir():
        return p, None
    raise ConfigError(f"model path {str(path)!r} is not a local directory or .gguf file "
                      "(prefkit never downloads: point it at a local copy)")


def local_dir(path: str | Path, what: str) -> Path:
    """``path`` as a local directory, or a ConfigError saying ``what`` must be one."""
    p = Path(path).expanduser()
    if not p.is_dir():
        raise ConfigError(f"{what} {str(path)!r} is not a local directory; prefkit loads models only from "
                          "disk (download it first, then pass its folder)")
    return p


def load_model(path: str | Path, *, dtype: str = "float32") -> nn.Module:
    """A ``*ForCausalLM`` from a local directory or ``.gguf`` file, in ``dtype``."""
    global load_count
    from transformers import AutoModelForCausalLM

    directory, gguf_file = _split_gguf(path)
    if dtype not in DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}; choose from {sorted(DTYPES)}")
    kwargs: dict[str, Any] = {"dtype": DTYPES[dtype], "trust_remote_code": False, "local_files_only": True}
    if gguf_file is None:
        kwargs["use_safetensors"] = True
    else:
        kwargs["gguf_file"] = gguf_file
    model = AutoModelForCausalLM.from_pretrained(str(directory), **kwargs)
    load_count += 1
    return model


def load_tokenizer(path: str | Path) -> Any:
    """The tokenizer of a local directory or ``.gguf`` file."""
    from transformers import AutoTokenizer

    directory, gguf_file = _split_gguf(path)
    kwargs: dict[str, Any] = {"trust_remote_code": False, "local_files_only": True}
    if gguf_file is not None:
        kwargs["gguf_file"] = gguf_file
    return AutoTokenizer.from_pretrained(str(directory), **kwargs)


def add_lora(model: nn.Module, *, r: int, alpha: float, dropout: float = 0.0,
             target_modules: Sequence[str] | str = ("q_proj", "k_proj", "v_proj", "o_proj"),
             adapter: str | Path | None = None, task_type: str | None = "CAUSAL_LM") -> nn.Module:
    """``model`` wrapped as a PEFT LoRA model; only the adapter is trainable.

    ``target_modules``: module names, or ``"all-linear"`` (peft: every linear layer but the output
    layer). ``task_type``: ``"CAUSAL_LM"`` for a policy, None for a bare backbone (reward models).
    With ``adapter``, the saved adapter in that directory is loaded (trainable) instead of a fresh one.
    A fresh adapter's B matrix is zero, so at step 0 the policy equals the base model.
    """
    from peft import LoraConfig, PeftModel, get_peft_model

    if adapter is not None:
        if not Path(adapter).expanduser().is_dir():
            raise ConfigError(f"lora.adapter {str(adapter)!r} is not a directory")
        return PeftModel.from_pretrained(model, str(Path(adapter).expanduser()), is_trainable=True)
    targets = target_modules if isinstance(target_modules, str) else list(target_modules)
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets,
                        task_type=task_type, bias="none")
    return get_peft_model(model, config)


def is_peft(model: nn.Module) -> bool:
    """True for a PEFT-wrapped model."""
    return hasattr(model, "disable_adapter") and hasattr(model, "get_base_model")


def frozen(model: nn.Module) -> nn.Module:
    """``model`` in eval mode with every parameter's ``requires_grad`` off (returned for chaining)."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def frozen_copy(model: nn.Module) -> nn.Module:
    """A frozen deep copy of ``model`` (the "reference = frozen copy" mode for in-memory models)."""
    return frozen(copy.deepcopy(model))


@contextlib.contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Run a PEFT model with its adapters off (the base model); a plain model runs unchanged."""
    if is_peft(model):
        with model.disable_adapter():
            yield model
    else:
        yield model


__all__ = ["local_dir", "load_model", "load_tokenizer", "add_lora", "frozen", "frozen_copy", "adapters_disabled",
           "is_peft", "load_count", "DTYPES"]
