"""Reference log-probs: from a model (frozen copy or adapters off) or from an on-disk cache.

A *reference source* is a callable ``(batch, indices) -> SequenceLogps`` giving the reference model's
(N,) summed completion log-probs for the batch's rows; ``indices`` (B,) are the examples' positions in
the (prepared) dataset. Three sources, one per ``reference.mode``:

- :class:`ModelReference` over a frozen copy (``frozen``), or over the policy itself run with its LoRA
  adapters disabled (``adapters_off``), under ``torch.no_grad``;
- :class:`CachedReference` over a precomputed (num_examples, G) table (``precomputed``).

The cache (:class:`ReferenceCache`) stores one table per fingerprint in ``<cache_dir>/<key>.safetensors``.
The fingerprint has four parts, each a SHA-256: ``weights`` (the reference weight files, or tensors of
an in-memory model, plus dtype and mixed precision), ``tokenizer`` (its vocabulary/merges, template and
special tokens), ``data`` (the records, plus how derived sequences such as KTO's mismatched pairs are
built) and ``encoding`` (the ``EncodeConfig``). A run whose fingerprint matches reuses the table
without loading any reference model; otherwise the table is recomputed, and the closest existing entry
tells which parts changed. Files are written atomically (temporary file, then rename). With several
processes each computes every ``world_size``-th batch (:func:`compute_shard`) and the main process writes
the gathered, sorted table (:func:`assemble_table`): the same file one process writes, under the same
fingerprint (which does not depend on the number of processes).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from prefkit.data.batch import Batch
from prefkit.data.encode import EncodedExample, collate
from prefkit.models.feature_cache import hash_json, hash_tokenizer, update_with_tensors
from prefkit.models.load import adapters_disabled
from prefkit.models.logprobs import SequenceLogps, sequence_logps

PARTS = ("weights", "tokenizer", "data", "encoding")


class ReferenceSource(Protocol):
    """Reference log-probs for a batch: ``(batch, indices (B,)) -> SequenceLogps`` with (N,) entries."""

    def __call__(self, batch: Batch, indices: Tensor) -> SequenceLogps: ...


@dataclass
class ModelReference:
    """Reference log-probs from a model run without gradients.

    ``adapters_off=True`` runs a PEFT policy with its adapters disabled: the "same model, adapters
    off" reference, with no second copy of the weights.
    """

    model: nn.Module
    adapters_off: bool = False
    chunk_size: int = 1024
    token_logps: bool = False
    packing: bool = True
    share_prefix: bool = True

    def __call__(self, batch: Batch, indices: Tensor) -> SequenceLogps:
        options = {"chunk_size": self.chunk_size, "token_logps": self.token_logps, "packing": self.packing,
                   "share_prefix": self.share_prefix}
        with torch.no_grad():
            if self.adapters_off:
                with adapters_disabled(self.model):
                    return sequence_logps(self.model, batch, **options)
            return sequence_logps(self.model, batch, **options)


@dataclass
class CachedReference:
    """Reference log-probs looked up in a precomputed ``table`` (num_examples, G), fp32."""

    table: Tensor

    def __call__(self, batch: Batch, indices: Tensor) -> SequenceLogps:
        values = self.table[indices.cpu()]  # (B, G)
        logps = values.T.reshape(-1).to(batch.input_ids.device)  # (N,) row g*B+b
        tokens = batch.completion_mask[:, 1:].sum(1).float()  # (N,)
        return SequenceLogps(logps, tokens)


def compute_shard(source: ReferenceSource, examples: Sequence[EncodedExample], pad_id: int, *,
                  batch_size: int, rank: int = 0, world_size: int = 1, device: torch.device | str = "cpu",
                  autocast: Callable[[], Any] | None = None) -> list[tuple[int, Tensor]]:
    """This process's part of the table: ``(start, rows (B, G) fp32)`` for every ``world_size``-th batch.

    Process ``rank`` runs batches ``rank``, ``rank + world_size``, ... of the ones one process would run
    (``batch_size`` consecutive examples from ``start``), so each row comes out of the same padded batch
    whatever the number of processes, and :func:`assemble_table` over all shards gives the
    single-process table bit for bit.
    """
    rows = []
    for start in range(rank * batch_size, len(examples), world_size * batch_size):
        chunk = examples[start:start + batch_size]
        batch = collate(chunk, pad_id).to(device)
        idx = torch.arange(start, start + len(chunk))
        if autocast is not None:
            with autocast():
                seq = source(batch, idx)
        else:
            seq = source(batch, idx)
        rows.append((start, batch.group(seq.logps.float()).cpu()))  # (B, G)
    return rows


def assemble_table(shards: Iterable[Sequence[tuple[int, Tensor]]]) -> Tensor:
    """Shards from :func:`compute_shard` (any order) -> the (num_examples, G) table, rows sorted by example."""
    parts = sorted((part for shard in shards for part in shard), key=lambda part: part[0])
    return torch.cat([rows for _, rows in parts]) if parts else torch.zeros(0, 1)


def compute_table(source: ReferenceSource, examples: Sequence[EncodedExample], pad_id: int, *,
                  batch_size: int, device: torch.device | str = "cpu",
                  autocast: Callable[[], Any] | None = None) -> Tensor:
    """(len(examples), G) fp32 reference log-probs of every sequence, in dataset order (one process)."""
    return assemble_table([compute_shard(source, examples, pad_id, batch_size=batch_size, device=device,
                                         autocast=autocast)])


# -- fingerprints --------------------------------------------------------------------------------------


def _sha() -> Any:
    return hashlib.sha256()


def hash_weights(source: str | Path | nn.Module, *extra: Any) -> str:
    """SHA-256 of a model's weights: its files (directory or .gguf), or an in-memory model's tensors.

    LoRA tensors (``lora_`` in the name) are left out: the reference is the base model.
    """
    h = _sha()
    if isinstance(source, nn.Module):
        update_with_tensors(h, source, skip="lora_")
    else:
        path = Path(source).expanduser()
        files = [path] if path.is_file() else sorted(
            p for p in path.iterdir()
            if p.suffix in (".safetensors", ".gguf", ".bin") or p.name == "config.json")
        for f in files:
            h.update(f"{f.name};".encode())
            with f.open("rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
    h.update(repr(extra).encode())
    return h.hexdigest()


def hash_records(records: Iterable[Any], *extra: Any) -> str:
    """SHA-256 of the records (their full repr, in order) and any ``extra`` derivation settings."""
    h = _sha()
    for r in records:
        h.update(repr(r).encode())
        h.update(b"\n")
    h.update(repr(extra).encode())
    return h.hexdigest()


def hash_settings(settings: Any) -> str:
    """SHA-256 of a settings dataclass or mapping."""
    return hash_json(asdict(settings) if is_dataclass(settings) else settings)


def cache_key(parts: Mapping[str, str]) -> str:
    """The entry name for a fingerprint."""
    return hashlib.sha256("|".join(parts[p] for p in PARTS).encode()).hexdigest()[:24]


# -- the cache -------------------------------------------------------------------------------------------


class ReferenceCache:
    """Precomputed reference log-prob tables in a directory, one safetensors file per fingerprint."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory).expanduser()

    def path(self, parts: Mapping[str, str]) -> Path:
        return self.directory / f"{cache_key(parts)}.safetensors"

    def load(self, parts: Mapping[str, str]) -> Tensor | None:
        """The table for this fingerprint, or None."""
        from safetensors.torch import load_file

        path = self.path(parts)
        return load_file(str(path))["logps"] if path.is_file() else None

    def store(self, parts: Mapping[str, str], table: Tensor) -> Path:
        """Write the table atomically; returns its path."""
        from safetensors.torch import save_file

        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.path(parts)
        tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
        save_file({"logps": table.float().contiguous()}, str(tmp),
                  metadata={"fingerprint": json.dumps(dict(parts))})
        os.replace(tmp, path)
        return path

    def explain_miss(self, parts: Mapping[str, str]) -> str:
        """Why there is no entry: the parts in which the closest existing entry differs."""
        from safetensors import safe_open

        best: list[str] | None = None
        for f in sorted(self.directory.glob("*.safetensors")) if self.directory.is_dir() else []:
            try:
                with safe_open(str(f), framework="pt") as fh:
                    other = json.loads((fh.metadata() or {}).get("fingerprint", "{}"))
            except Exception:  # unreadable entry: ignore it
                continue
            changed = [p for p in PARTS if other.get(p) != parts[p]]
            if best is None or len(changed) < len(best):
                best = changed
        if best is None:
            return "no cached reference log-probs yet"
        return f"cached reference log-probs are for different {', '.join(best)}"


__all__ = ["ReferenceSource", "ModelReference", "CachedReference", "ReferenceCache", "compute_table",
           "compute_shard", "assemble_table",
           "hash_weights", "hash_tokenizer", "hash_records", "hash_settings", "cache_key", "PARTS"]
