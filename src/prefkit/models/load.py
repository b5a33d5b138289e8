"""Loading policies and references: local Hugging Face folders, GGUF files or hub ids, plus LoRA.

- :func:`load_model` / :func:`load_tokenizer`: a local directory (safetensors weights), a ``.gguf``
  file (``transformers``' ``gguf_file=`` loader; needs the ``gguf`` package, dequantises to
  ``dtype``), or a Hugging Face hub id ``org/name`` / ``org/name@revision`` (:func:`hub_id`). Never
  ``trust_remote_code``; safetensors only. Loads show no weight-loading progress bar.
- Hub ids (models, tokenizers, reference models, reward backbones, LoRA adapters) resolve through
  ``huggingface_hub.snapshot_download`` to a folder of the local hub cache (:func:`hub_snapshot`):
  downloaded when online (only safetensors, JSON and tokenizer files), read from the cache when offline
  (``HF_HUB_OFFLINE=1``, read when called). A local file or folder of the same name always wins.
- :func:`check_model_path` / :func:`check_tokenizer_path` / :func:`check_adapter_dir`: what those
  loaders need, checked without loading anything (``load_config`` calls them at parse time; the
  loaders call them too), each problem one ``ConfigError`` line naming the path and the missing file.
  At parse time (:func:`check_model_files`) a hub id is checked in its cached snapshot; one not cached
  is an error when offline and left to the load (which downloads it) when online.
- :func:`add_lora`: wrap a model with a fresh (or saved) LoRA adapter (peft).
- :func:`frozen`: a model switched to eval mode with gradients off (a reference).
- :func:`disable_dropout`: the model's own dropout off (the trainer's default, ``model.dropout``).
- :func:`adapters_disabled`: context manager that runs a PEFT model without its adapters, the
  "reference = same model, adapters off" mode (no second copy).

``load_count`` counts :func:`load_model` calls (tests use it to assert a cache hit loaded nothing).
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import json
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prefkit.errors import ConfigError
from prefkit.models.heads import RewardHead

load_count = 0
"""How many models :func:`load_model` has loaded in this process."""

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


MODEL_CONFIG = "config.json"
SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
PICKLED_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json", "tf_model.h5", "flax_model.msgpack")
"""Weights ``transformers`` can read but prefkit does not (pickle and other non-safetensors formats)."""
TOKENIZER_VOCABS = ("vocab.json", "vocab.txt", "tokenizer.model", "spiece.model", "sentencepiece.bpe.model")
"""Vocabulary files a tokenizer without ``tokenizer.json`` is built from (with ``tokenizer_config.json``)."""
ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
CONVERT = ("convert it once: AutoModelForCausalLM.from_pretrained(folder, use_safetensors=False)"
           ".save_pretrained(new_folder)")


def _named(path: str | Path, what: str) -> str:
    return f"{what} {str(path)!r}"


HUB_ID = re.compile(r"([A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)(?:@([\w./-]+))?")
"""``org/name`` or ``org/name@revision`` (a branch, tag or commit hash)."""
HUB_FILES = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken", "*.jinja"]
"""What a hub snapshot download fetches: configs, safetensors weights, tokenizer files (no pickles, no code)."""
_FILE_SUFFIXES = (".gguf", ".safetensors", ".bin", ".json", ".jsonl", ".yaml", ".yml")


def hub_id(path: str | Path) -> tuple[str, str | None] | None:
    """(repo id, revision or None) when ``path`` is a hub id (``org/name[@revision]``) and no local file or
    folder of that name exists; None for anything else (a local path, whether it exists or not)."""
    if isinstance(path, Path) or os.path.lexists(os.path.expanduser(str(path))):
        return None
    m = HUB_ID.fullmatch(str(path))
    if m is None or m[1].lower().endswith(_FILE_SUFFIXES) or m[1].split("/")[0] in (".", ".."):
        return None
    return m[1], m[2]


def hub_offline() -> bool:
    """True when the hub is offline: ``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE`` set now (or at import)."""
    from huggingface_hub import constants

    flags = (os.environ.get(var, "") for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return constants.HF_HUB_OFFLINE or any(f.upper() in ("1", "ON", "YES", "TRUE") for f in flags)


def hub_cache() -> str:
    """The hub cache folder: ``HF_HUB_CACHE``, else ``$HF_HOME/hub``, read when called (huggingface_hub's
    own default otherwise)."""
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if not env and os.environ.get("HF_HOME"):
        env = os.path.join(os.environ["HF_HOME"], "hub")
    return os.path.expandvars(os.path.expanduser(env)) if env else constants.HF_HUB_CACHE


def hub_snapshot(path: str | Path, what: str, *, download: bool = True) -> Path | None:
    """The local snapshot folder of hub id ``path`` (:func:`hub_id`) in the hub cache: downloaded when
    online and ``download``. Not cached: a one-line ConfigError when offline, None when online and not
    ``download`` (the load will download it). Hub errors (unknown repo or revision, gated, no network)
    are one ConfigError line each."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    hub = hub_id(path)
    if hub is None:
        raise ConfigError(f"{_named(path, what)} is not a hub id (org/name or org/name@revision)")
    repo, revision = hub
    offline, cache = hub_offline(), hub_cache()
    local_only = offline or not download
    try:
        return Path(snapshot_download(repo, revision=revision, cache_dir=cache, allow_patterns=HUB_FILES,
                                      local_files_only=local_only))
    except LocalEntryNotFoundError as err:
        rev = f" at revision {revision!r}" if revision else ""
        if offline:
            raise ConfigError(f"{what} {repo!r}{rev} is not in the local Hugging Face cache ({cache}) and the "
                              "hub is offline (HF_HUB_OFFLINE=1); download it first (hf download "
                              f"{repo}) or pass a local folder") from None
        if local_only:
            return None
        reason = str(err.__cause__ or err).strip().splitlines()[0][:200]
        raise ConfigError(f"{what} {repo!r}{rev} could not be downloaded from the Hugging Face hub ({reason}) "
                          f"and is not in the local cache ({cache}); check the network or pass a local "
                          "folder") from None
    except GatedRepoError:
        raise ConfigError(f"{what} {repo!r} is a gated hub repository: accept its terms on huggingface.co "
                          "and log in (hf auth login), or pass a local folder") from None
    except RepositoryNotFoundError:
        raise ConfigError(f"{what} {repo!r} is neither a local folder nor a Hugging Face hub repository (or "
                          "it is private: log in with hf auth login)") from None
    except RevisionNotFoundError:
        raise ConfigError(f"{what} {repo!r} has no revision {revision!r} on the Hugging Face hub") from None
    except (HfHubHTTPError, OSError) as err:
        raise ConfigError(f"{what} {repo!r}: the Hugging Face hub failed ({type(err).__name__}: "
                          f"{str(err).strip().splitlines()[0][:200] if str(err).strip() else ''})") from None


def _local(path: str | Path, what: str, download: bool = True) -> Path | None:
    """``path`` expanded, or a hub id's snapshot folder (downloaded if need be; ``download=False``: None when
    online and not cached); ConfigError when it is empty or does not exist."""
    if not str(path):
        raise ConfigError(f"no {what} given; set it to a local model folder, .gguf file or hub id (org/name)")
    if hub_id(path) is not None:
        return hub_snapshot(path, what, download=download)
    p = Path(path).expanduser()
    if not p.exists():
        raise ConfigError(f"{_named(path, what)} is not a local folder or file, nor a hub id (org/name)")
    return p


def _checked(path: str | Path, what: str, problem_of: Any, download: bool) -> Path:
    """``path`` resolved (:func:`_local`) when ``problem_of(folder)`` is None, else one ConfigError line. A
    hub id checked without ``download`` while online passes when not cached or incomplete (the load
    downloads it and checks again)."""
    p = _local(path, what, download)
    if p is None:
        return Path(path)
    problem = problem_of(p)
    if problem is not None:
        hub = hub_id(path) is not None
        if hub and not download and not hub_offline():
            return p
        raise ConfigError(f"{_named(path, what)}{f' (hub snapshot {str(p)!r})' if hub else ''} {problem}")
    return p


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """No ``transformers`` weight-loading progress bar inside (the previous setting is restored)."""
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars
    from transformers.utils import logging as hf_logging

    was, hub_was_off = hf_logging.is_progress_bar_enabled(), are_progress_bars_disabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()
            if hub_was_off:
                disable_progress_bars()


def _json_object(file: Path) -> dict[str, Any] | None:
    """The JSON object in regular file ``file``, or None when it is missing, unreadable or not an object."""
    if not file.is_file():
        return None
    try:
        value = json.loads(file.read_bytes())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _safetensors_problem(file: Path) -> str | None:
    """Why regular file ``file`` is not a safetensors file (its header is checked), or None."""
    if not file.is_file():
        return f"lacks {file.name}" + (" (not a regular file)" if file.exists() else "")
    try:
        with file.open("rb") as f:
            size = f.seek(0, 2)
            f.seek(0)
            n = int.from_bytes(f.read(8), "little") if size >= 8 else 0
            if not 1 < n <= min(size - 8, 100_000_000):
                return f"has a {file.name} that is not a safetensors file (empty or cut short)"
            if not isinstance(json.loads(f.read(n)), dict):
                raise ValueError
    except OSError as err:
        return f"can't read {file.name} ({err.strerror or type(err).__name__})"
    except ValueError:
        return f"has a {file.name} that is not a safetensors file (its header is not JSON)"
    return None


def _gguf_problem(p: Path) -> str | None:
    """Why ``p`` (a ``.gguf`` file) can't be loaded, or None."""
    try:
        with p.open("rb") as f:
            if f.read(4) != b"GGUF":
                return "is not a GGUF file (it does not start with 'GGUF')"
    except OSError as err:
        return f"can't be read ({err.strerror or type(err).__name__})"
    if importlib.util.find_spec("gguf") is None:  # transformers' GGUF loader needs it
        return "is a GGUF file; install the gguf package: pip install gguf"
    return None


def _model_type_problem(cfg: dict[str, Any] | None, causal: bool) -> str | None:
    """Why a ``config.json`` object names no model ``transformers`` can build without remote code."""
    if cfg is None:
        return f"has a {MODEL_CONFIG} that is not a JSON object"
    model_type = cfg.get("model_type")
    if not isinstance(model_type, str) or not model_type:
        return f"has a {MODEL_CONFIG} without a model_type"
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if model_type not in CONFIG_MAPPING_NAMES:
        import transformers

        return (f"is a {model_type!r} model, which transformers {transformers.__version__} does not know "
                "(prefkit never runs custom model code: trust_remote_code is off)")
    if causal and model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return f"is a {model_type!r} model, which has no causal-LM class in transformers (a policy needs one)"
    return None


def _weights_problem(p: Path) -> str | None:
    """Why model folder ``p`` holds no loadable safetensors weights, or None."""
    if (p / SAFETENSORS).exists():
        return _safetensors_problem(p / SAFETENSORS)
    if (p / SAFETENSORS_INDEX).exists():
        index = _json_object(p / SAFETENSORS_INDEX)
        shards = index.get("weight_map") if index is not None else None
        if not isinstance(shards, dict) or not shards or not all(isinstance(v, str) for v in shards.values()):
            return f"has a {SAFETENSORS_INDEX} without a weight_map"
        for shard in sorted(set(shards.values())):
            if "/" in shard or "\\" in shard or shard in (".", ".."):
                return f"has a {SAFETENSORS_INDEX} naming {shard!r}, which is not a file name in the folder"
            if (problem := _safetensors_problem(p / shard)) is not None:
                return f"{problem} (a shard listed in {SAFETENSORS_INDEX})"
        return None
    pickled = [name for name in PICKLED_WEIGHTS if (p / name).exists()]
    if pickled:
        return f"holds only {pickled[0]}; prefkit loads safetensors only ({CONVERT})"
    ggufs = sorted(p.glob("*.gguf"))
    if ggufs:
        return f"holds no {SAFETENSORS} but a GGUF file: point it at {str(ggufs[0])!r}"
    return f"holds no {SAFETENSORS} (or {SAFETENSORS_INDEX})"


def model_path_problem(path: str | Path, *, gguf: bool = True, causal: bool = True) -> str | None:
    """Why ``path`` is not a model :func:`load_model` can load (or, ``causal=False``, ``AutoModel``), or None.

    A model is a folder holding ``config.json`` (a ``model_type`` built into ``transformers``) and
    safetensors weights (``model.safetensors``, or ``model.safetensors.index.json`` and its shards), or,
    with ``gguf``, a ``.gguf`` file (and the ``gguf`` package installed).
    """
    p = Path(path).expanduser()
    if p.is_file():
        if gguf and p.suffix == ".gguf":
            return _gguf_problem(p)
        return "is a file, not a model folder" + (" or .gguf file" if gguf else "")
    if not p.is_dir():
        return "is not a regular file or folder"
    if not (p / MODEL_CONFIG).exists():
        if (p / ADAPTER_CONFIG).exists():
            return "holds a LoRA adapter, not a model: set it as lora.adapter, and model.path to its base model"
        ggufs = sorted(p.glob("*.gguf")) if gguf else []
        hint = f"; it holds a GGUF file: point at {str(ggufs[0])!r}" if ggufs else ""
        return f"holds no {MODEL_CONFIG}, so it is not a Hugging Face model folder{hint}"
    return _model_type_problem(_json_object(p / MODEL_CONFIG), causal) or _weights_problem(p)


def check_model_path(path: str | Path, what: str = "model", *, gguf: bool = True, causal: bool = True,
                     download: bool = True) -> Path:
    """``path`` expanded (a hub id: its snapshot folder, :func:`hub_snapshot`), or a one-line ConfigError
    naming ``what`` (e.g. ``"model.path"``) and the problem (:func:`model_path_problem`)."""
    return _checked(path, what, lambda p: model_path_problem(p, gguf=gguf, causal=causal), download)


def tokenizer_path_problem(path: str | Path) -> str | None:
    """Why ``path`` holds no tokenizer :func:`load_tokenizer` can load, or None: a ``.gguf`` file, or a folder
    with ``tokenizer.json`` (a JSON object), or ``tokenizer_config.json`` plus a vocabulary file."""
    p = Path(path).expanduser()
    if p.is_file():
        return _gguf_problem(p) if p.suffix == ".gguf" else "is a file, not a tokenizer folder or .gguf file"
    if not p.is_dir():
        return "is not a regular file or folder"
    if (p / "tokenizer.json").exists():
        try:
            text = (p / "tokenizer.json").read_bytes().strip() if (p / "tokenizer.json").is_file() else b""
        except OSError:
            text = b""
        return None if text[:1] == b"{" and text[-1:] == b"}" else "has a tokenizer.json that is not a JSON object"
    if (p / "tokenizer_config.json").is_file() and any((p / name).is_file() for name in TOKENIZER_VOCABS):
        return None
    return ("holds no tokenizer files (tokenizer.json, or tokenizer_config.json with vocabulary files); "
            "set model.tokenizer to the folder that has them")


def check_tokenizer_path(path: str | Path, what: str = "tokenizer", *, download: bool = True) -> Path:
    """``path`` expanded (a hub id: its snapshot folder), or a one-line ConfigError naming ``what``
    (:func:`tokenizer_path_problem`)."""
    return _checked(path, what, tokenizer_path_problem, download)


def adapter_dir_problem(p: Path) -> str | None:
    """Why folder ``p`` is not a LoRA adapter folder (peft's ``save_pretrained``: ``adapter_config.json`` and
    ``adapter_model.safetensors``), or None."""
    if not p.is_dir():
        return "is not a folder (a LoRA adapter folder written by save_pretrained)"
    if _json_object(p / ADAPTER_CONFIG) is None:
        full = " (it looks like a full model: use it as model.path)" if (p / MODEL_CONFIG).exists() else ""
        problem = "is not a JSON object" if (p / ADAPTER_CONFIG).exists() else "is missing"
        return f"is not a LoRA adapter folder: {ADAPTER_CONFIG} {problem}{full}"
    if not (p / ADAPTER_WEIGHTS).exists() and (p / "adapter_model.bin").exists():
        return "holds only adapter_model.bin; prefkit loads safetensors only (load it with peft and save_pretrained it again)"
    return _safetensors_problem(p / ADAPTER_WEIGHTS)


def check_adapter_dir(path: str | Path, what: str = "lora.adapter", *, download: bool = True) -> Path:
    """``path`` expanded (a hub id: its snapshot folder), or a one-line ConfigError naming ``what``
    (:func:`adapter_dir_problem`)."""
    if str(path) and hub_id(path) is None and not Path(path).expanduser().exists():
        raise ConfigError(f"{_named(path, what)} does not exist (a local LoRA adapter folder or a hub id, org/name)")
    return _checked(path, what, adapter_dir_problem, download)


def check_model_files(path: str, tokenizer: str | None = None, reference: str | None = None,
                      adapter: str | None = None, *, backbone: bool = False) -> None:
    """A run config's model files, each checked when set (a one-line ConfigError naming its key):
    ``model.path`` (``backbone``: a reward model's, a folder loaded with ``AutoModel``) and the tokenizer
    files in it unless ``model.tokenizer`` names another folder, ``model.tokenizer``, ``reference.path``,
    ``lora.adapter``. Nothing is downloaded: a hub id is checked in the local hub cache; one not cached is
    an error when the hub is offline and is left to the load (which downloads it) when online."""
    if path:
        check_model_path(path, "model.path", gguf=not backbone, causal=not backbone, download=False)
        if tokenizer is None or backbone:  # a reward model reads its backbone's tokenizer first
            check_tokenizer_path(path, "model.path", download=False)
    for key, value, check in (("model.tokenizer", tokenizer, check_tokenizer_path),
                              ("reference.path", reference, check_model_path),
                              ("lora.adapter", adapter, check_adapter_dir)):
        if value:
            check(value, key, download=False)


def _split_gguf(path: str | Path) -> tuple[Path, str | None]:
    """(directory, gguf file name or None) for a model path already checked."""
    p = Path(path).expanduser()
    if p.is_file() and p.suffix == ".gguf":
        return p.parent, p.name
    return p, None


def local_dir(path: str | Path, what: str) -> Path:
    """``path`` as a local directory (a hub id: its snapshot folder in the hub cache, downloaded when online
    and not cached), or a ConfigError saying ``what`` must be one."""
    if hub_id(path) is not None:
        return hub_snapshot(path, what) or Path(path)  # download=True: never None
    p = Path(path).expanduser()
    if not p.is_dir():
        raise ConfigError(f"{what} {str(path)!r} is not a local directory nor a hub id (org/name); pass a "
                          "model folder")
    return p


def load_model(path: str | Path, *, dtype: str = "float32") -> nn.Module:
    """A ``*ForCausalLM`` from a local directory, a ``.gguf`` file or a hub id (:func:`hub_snapshot`), in
    ``dtype``; no weight-loading progress bar."""
    global load_count
    from transformers import AutoModelForCausalLM

    if dtype not in DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}; choose from {sorted(DTYPES)}")
    directory, gguf_file = _split_gguf(check_model_path(path, "model"))
    kwargs: dict[str, Any] = {"dtype": DTYPES[dtype], "trust_remote_code": False, "local_files_only": True}
    if gguf_file is None:
        kwargs["use_safetensors"] = True
    else:
        kwargs["gguf_file"] = gguf_file
    with quiet_loading():
        model = AutoModelForCausalLM.from_pretrained(str(directory), **kwargs)
    load_count += 1
    return model


def load_tokenizer(path: str | Path) -> Any:
    """The tokenizer of a local directory, a ``.gguf`` file or a hub id (:func:`hub_snapshot`)."""
    from transformers import AutoTokenizer

    directory, gguf_file = _split_gguf(check_tokenizer_path(path, "tokenizer"))
    kwargs: dict[str, Any] = {"trust_remote_code": False, "local_files_only": True}
    if gguf_file is not None:
        kwargs["gguf_file"] = gguf_file
    with quiet_loading():
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
    import warnings

    from peft import LoraConfig, PeftModel, get_peft_model

    with warnings.catch_warnings():  # peft reads transformers' deprecated `is_gradient_checkpointing`
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        if adapter is not None:
            folder = check_adapter_dir(adapter, "lora.adapter")
            return PeftModel.from_pretrained(model, str(folder), is_trainable=True, local_files_only=True)
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


DROPOUTS = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)


def disable_dropout(model: nn.Module) -> int:
    """Turn off ``model``'s own dropout, as TRL's ``disable_dropout=True`` does; returns how many
    dropout sites were turned off.

    Every ``nn.Dropout`` gets ``p = 0`` (BERT's hidden and attention dropout: its SDPA path reads the
    attention ``nn.Dropout``'s ``p``), and so does every float module attribute whose name contains
    ``drop`` (``attention_dropout`` of Llama / Qwen / Mistral attention layers, which they pass to the
    attention function; ``dropout``, ``activation_dropout``, ``layerdrop``). The dropout prefkit adds on
    request is kept: LoRA's (``lora.dropout``, peft's ``lora_dropout`` modules) and a reward head's
    (``reward.dropout``). The model's config is left as loaded, so a saved model keeps its settings; the
    few architectures that read ``config.*dropout`` at forward time (Persimmon, ProphetNet, BLT) keep
    that dropout.
    """
    kept = {id(m) for head in model.modules() if isinstance(head, RewardHead) for m in head.modules()}
    count = 0
    for name, module in model.named_modules():
        if id(module) in kept or ".lora_dropout." in f".{name}.":
            continue
        if isinstance(module, DROPOUTS):
            count += int(module.p > 0)
            module.p = 0.0
            continue
        for attr, value in list(vars(module).items()):
            if "drop" in attr and isinstance(value, float) and value > 0:
                setattr(module, attr, 0.0)
                count += 1
    return count


@contextlib.contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Run a PEFT model with its adapters off (the base model); a plain model runs unchanged."""
    if is_peft(model):
        with model.disable_adapter():
            yield model
    else:
        yield model


__all__ = ["check_model_files", "check_model_path", "check_tokenizer_path", "check_adapter_dir", "model_path_problem",
           "adapter_dir_problem", "hub_id", "hub_offline", "hub_cache", "hub_snapshot", "quiet_loading", "HUB_FILES",
           "tokenizer_path_problem", "local_dir", "load_model", "load_tokenizer", "add_lora", "frozen", "frozen_copy", "adapters_disabled", "disable_dropout",
           "is_peft", "load_count", "DTYPES"]
