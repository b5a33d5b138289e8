"""Checkpoints: written atomically, the last k kept, everything needed to continue exactly.

Layout of ``<run>/checkpoints/step-00000012/``:

- ``model.safetensors``: the trainable parameters (all weights, or only the LoRA adapter);
- ``optimizer.pt``, ``scheduler.pt``: ``state_dict()`` s of our own objects, read back with
  ``torch.load(weights_only=True)``;
- ``rng-<rank>.safetensors``: torch CPU (and CUDA) generator states of each process;
- ``trainer_state.json``: step, data position (epoch, batch), Python and NumPy RNG states per rank.

A checkpoint is written into ``checkpoints/.tmp-step-...`` and renamed to ``step-...`` only when
complete (rename is atomic), so a process killed mid-write leaves a ``.tmp-*`` directory that
:func:`latest_checkpoint` never picks up (and the next save removes).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

STEP_DIR = re.compile(r"^step-(\d+)$")


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first (``step-N`` directories holding ``trainer_state.json``)."""
    root = checkpoint_dir(run_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir()
             if (m := STEP_DIR.match(p.name)) and (p / "trainer_state.json").is_file()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint, or None."""
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The parameters that training changes (``requires_grad``), by name."""
    return {n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensor states for safetensors, JSON-able Python/NumPy states) of this process."""
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = s
    py = random.getstate()
    np_state = np.random.get_state()
    plain = {"python": [py[0], list(py[1]), py[2]],
             "numpy": [np_state[0], np_state[1].tolist(), *map(float, np_state[2:])]}
    return tensors, plain


def set_rng_state(tensors: dict[str, torch.Tensor], plain: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("cuda."))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    v, state, gauss = plain["python"]
    random.setstate((v, tuple(state), gauss))
    name, keys, pos, has_gauss, cached = plain["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), int(pos), int(has_gauss), cached))


def save_checkpoint(run_dir: str | Path, step: int, *, model: nn.Module, optimizer: Any, scheduler: Any,
                    state: dict[str, Any], keep_last: int, accelerator: Any = None) -> Path | None:
    """Write ``checkpoints/step-<step>`` atomically and prune to the last ``keep_last``.

    Every process calls this (each saves its RNG state); the main process writes the rest and renames.
    Returns the checkpoint path on the main process.
    """
    rank = accelerator.process_index if accelerator is not None else 0
    main = rank == 0
    root = checkpoint_dir(run_dir)
    final = root / f"step-{step:08d}"
    tmp = root / f".tmp-step-{step:08d}"
    if main:
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(".tmp-*"):  # left by a killed run
            shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir()
    _barrier(accelerator)
    tensors, plain = rng_state()
    save_file(tensors, str(tmp / f"rng-{rank}.safetensors"))
    (tmp / f"rng-{rank}.json").write_text(json.dumps(plain))
    _barrier(accelerator)
    if main:
        save_file(trainable_state(model), str(tmp / "model.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        (tmp / "trainer_state.json").write_text(json.dumps({**state, "step": step}, indent=1))
        _fsync_dir(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
        for old in list_checkpoints(run_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    _barrier(accelerator)
    return final if main else None


def load_checkpoint(path: str | Path, *, model: nn.Module, optimizer: Any, scheduler: Any,
                    accelerator: Any = None) -> dict[str, Any]:
    """Restore model, optimizer, scheduler and this process's RNG states; returns the trainer state."""
    path = Path(path)
    rank = accelerator.process_index if accelerator is not None else 0
    weights = load_file(str(path / "model.safetensors"))
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in weights]
    if missing or any(n not in params for n in weights):
        raise ValueError(f"checkpoint {path} does not match the model (missing {missing[:3]}); "
                         "resume with the same model and LoRA settings")
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value)
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True, map_location="cpu"))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    rng_file = path / f"rng-{rank}.safetensors"
    if rng_file.is_file():
        set_rng_state(load_file(str(rng_file)), json.loads((path / f"rng-{rank}.json").read_text()))
    return json.loads((path / "trainer_state.json").read_text())


def read_state(path: str | Path) -> dict[str, Any]:
    """The ``trainer_state.json`` of a checkpoint."""
    return json.loads((Path(path) / "trainer_state.json").read_text())


def _barrier(accelerator: Any) -> None:
    if accelerator is not None and accelerator.num_processes > 1:
        accelerator.wait_for_everyone()


def _fsync_dir(directory: Path) -> None:
    for f in directory.iterdir():
        with f.open("rb") as fh:
            os.fsync(fh.fileno())


__all__ = ["save_checkpoint", "load_checkpoint", "read_state", "latest_checkpoint", "list_checkpoints", "checkpoint_dir",
           "trainable_state"]
