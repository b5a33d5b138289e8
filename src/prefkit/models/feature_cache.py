"""Pooled backbone features computed once per distinct token sequence: the frozen-backbone cache.

With a frozen backbone (``RewardModel.freeze_backbone``) a reward head trains on fixed features, so
each distinct sequence needs the backbone once. :class:`FeatureCache` maps the exact token id sequence
(after ``RewardTokens`` wrapping: special tokens and truncation included) to its pooled feature (H,):
a lookup of N rows finds the misses, runs them through the backbone in length-sorted batches of
``batch_size`` under ``torch.no_grad`` and returns (N, H) float32 features in row order.

On disk (``directory`` set) the cache is one safetensors file per fingerprint,
``<directory>/features-<key>.safetensors`` holding ``features`` (S, H), the concatenated token ``ids``
and their ``offsets`` (S + 1,); the fingerprint (four SHA-256 digests: backbone ``weights``,
``tokenizer``, ``settings`` = pooling, max_length, truncation side, dtype) is in the file's metadata
and names the file, so a changed backbone, tokenizer or pooling never reads stale features. Files are
written atomically (temporary file, then rename) by :meth:`FeatureCache.flush`.

:func:`hash_module_weights` and :func:`hash_tokenizer` are the fingerprint digests; they hash the same
way as the reference log-prob cache (``prefkit.train.refcache``), which may reuse them.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

PARTS = ("weights", "tokenizer", "settings")
"""The parts of a feature-cache fingerprint."""


def update_with_tensors(h: Any, module: nn.Module, skip: str | None = None) -> None:
    """Feed a model's tensors (names, dtypes, shapes, bytes; sorted by name) into the hash ``h``, leaving
    out names that contain ``skip``."""
    for name, t in sorted(module.state_dict().items()):
        if skip is not None and skip in name:
            continue
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())


def hash_module_weights(module: nn.Module, *extra: Any) -> str:
    """SHA-256 of an in-memory model's tensors (names, dtypes, shapes, bytes) and ``extra``."""
    h = hashlib.sha256()
    update_with_tensors(h, module)
    h.update(repr(extra).encode())
    return h.hexdigest()


def hash_tokenizer(tokenizer: Any) -> str:
    """SHA-256 of what decides a tokenizer's ids: vocabulary/merges, chat template, special tokens."""
    h = hashlib.sha256()
    if tokenizer is None:
        return h.hexdigest()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    h.update((backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items())))
             .encode())
    h.update(repr(getattr(tokenizer, "chat_template", None)).encode())
    h.update(repr(sorted((k, str(v)) for k, v in tokenizer.special_tokens_map.items())).encode())
    return h.hexdigest()


def hash_json(value: Any) -> str:
    """SHA-256 of a JSON-serialisable value (keys sorted)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


class FeatureCache:
    """Token id sequence -> pooled feature (H,), in memory and optionally on disk (module docstring).

    ``compute(rows)``: the features (n, H) of one batch of id lists (the backbone forward, pooled).
    ``hits`` counts the looked-up rows found in the cache, ``misses`` the distinct sequences computed.
    """

    def __init__(self, compute: Callable[[list[list[int]]], Tensor], fingerprint: Mapping[str, str], *,
                 directory: str | Path | None = None, batch_size: int = 256, flush_every: int = 8192):
        self.compute, self.fingerprint = compute, dict(fingerprint)
        self.directory = None if directory is None else Path(directory).expanduser()
        self.batch_size, self.flush_every = batch_size, flush_every
        self.hits = self.misses = 0
        self._index: dict[tuple[int, ...], int] = {}
        self._table: Tensor | None = None  # (capacity, H), the first len(self) rows used
        self._pending = 0  # entries not yet on disk
        if self.path is not None and self.path.is_file():
            self._read(self.path)

    def __len__(self) -> int:
        return len(self._index)

    @property
    def key(self) -> str:
        """The entry name of this fingerprint."""
        return hashlib.sha256("|".join(self.fingerprint[p] for p in PARTS).encode()).hexdigest()[:24]

    @property
    def path(self) -> Path | None:
        """The on-disk file (None: memory only)."""
        return None if self.directory is None else self.directory / f"features-{self.key}.safetensors"

    def lookup(self, rows: Sequence[Sequence[int]]) -> Tensor:
        """(N, H) float32 features of ``rows`` (id lists), computing the misses in length-sorted batches."""
        keys = [tuple(int(t) for t in r) for r in rows]
        absent = [k for k in keys if k not in self._index]
        missing = sorted(dict.fromkeys(absent), key=len)  # distinct, shortest first (little padding)
        self.hits += len(keys) - len(absent)
        self.misses += len(missing)
        for i in range(0, len(missing), self.batch_size):
            part = missing[i:i + self.batch_size]
            with torch.no_grad():
                feats = self.compute([list(k) for k in part]).detach().float().cpu()  # (n, H)
            self._append(part, feats)
        if self._pending >= self.flush_every:
            self.flush()
        if not keys:
            width = 0 if self._table is None else self._table.shape[1]
            return torch.zeros(0, width)
        assert self._table is not None
        return self._table[torch.tensor([self._index[k] for k in keys])]  # (N, H)

    def rows_of(self, rows: Sequence[Sequence[int]]) -> Tensor:
        """(N,) positions of ``rows`` in :meth:`table` (computing misses first)."""
        self.lookup(rows)
        return torch.tensor([self._index[tuple(int(t) for t in r)] for r in rows], dtype=torch.long)

    def table(self) -> Tensor:
        """(S, H) every cached feature, in insertion order (a view)."""
        assert self._table is not None
        return self._table[:len(self)]

    def _append(self, keys: Sequence[tuple[int, ...]], feats: Tensor) -> None:
        n, size = len(keys), len(self)
        if self._table is None:
            self._table = torch.empty(max(n, 1024), feats.shape[1])
        elif size + n > self._table.shape[0]:
            grown = torch.empty(max(2 * self._table.shape[0], size + n), self._table.shape[1])
            grown[:size] = self._table[:size]
            self._table = grown
        self._table[size:size + n] = feats
        for j, k in enumerate(keys):
            self._index[k] = size + j
        self._pending += n

    def flush(self) -> Path | None:
        """Write the cache to its file (atomically) when it holds entries not yet on disk; returns the path."""
        from safetensors.torch import save_file

        path = self.path
        if path is None or not self._pending or self._table is None:
            return path
        path.parent.mkdir(parents=True, exist_ok=True)
        keys = list(self._index)  # insertion order = row order
        lengths = torch.tensor([0] + [len(k) for k in keys], dtype=torch.long)
        ids = torch.tensor([t for k in keys for t in k], dtype=torch.long)
        tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
        save_file({"features": self.table().contiguous(), "ids": ids, "offsets": torch.cumsum(lengths, 0)},
                  str(tmp), metadata={"fingerprint": json.dumps(self.fingerprint)})
        os.replace(tmp, path)
        self._pending = 0
        return path

    def _read(self, path: Path) -> None:
        from safetensors.torch import load_file

        data = load_file(str(path))
        ids, offsets = data["ids"].tolist(), data["offsets"].tolist()
        keys = [tuple(ids[offsets[i]:offsets[i + 1]]) for i in range(len(offsets) - 1)]
        self._append(keys, data["features"].float())
        self._pending = 0


__all__ = ["FeatureCache", "hash_module_weights", "hash_tokenizer", "hash_json", "update_with_tensors", "PARTS"]
