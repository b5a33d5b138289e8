"""Checkpoints: written atomically, the last k kept, everything needed to continue exactly.

Layout of ``<run>/checkpoints/step-00000012/``:

- ``model.safetensors``: the trainable parameters (all weights, or only the LoRA adapter);
- ``optimizer.pt``, ``scheduler.pt``: ``state_dict()`` s of our own objects, read back with
  ``torch.load(weights_only=True)``;
- ``rng-<rank>.safetensors``: torch CPU (and CUDA) generator states of each process;
- ``trainer_state.json``: step, data position (epoch, batch), Python and NumPy RNG states per rank;
- ``rank-<rank>.json``: each process's own loop state (the metric sums since the last logged line);
- ``prefkit-checkpoint.json``: the stamp ``{"step": N}``, written first: what marks the folder as
  prefkit's own.

A checkpoint is written into ``checkpoints/.tmp-step-...`` and renamed to ``step-...`` only when
complete (rename is atomic), so a process killed mid-write leaves a ``.tmp-step-*`` directory that
:func:`latest_checkpoint` never picks up (and the next save removes). Cleanup (stale temporary folders,
``keep_last``) deletes only folders that carry prefkit's stamp, never follows links, and leaves anything
else in ``checkpoints/`` alone; a ``checkpoints/`` that is a link is refused.
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

from prefkit.errors import PrefkitError

STEP_DIR = re.compile(r"^step-(\d+)$")
TMP_DIR = re.compile(r"^\.tmp-step-(\d+)$")
STAMP = "prefkit-checkpoint.json"


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first (``step-N`` directories holding ``trainer_state.json``)."""
    root = checkpoint_dir(run_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir()
             if (m := STEP_DIR.match(p.name)) and not p.is_symlink() and (p / "trainer_state.json").is_file()]
    return [p for _, p in sorted(found)]


def is_prefkit_checkpoint(path: str | Path) -> bool:
    """True for a real folder (not a link) named ``step-N`` or ``.tmp-step-N`` that holds prefkit's stamp
    for step N: the only folders checkpoint cleanup deletes."""
    path = Path(path)
    m = STEP_DIR.match(path.name) or TMP_DIR.match(path.name)
    stamp = path / STAMP
    if m is None or path.is_symlink() or not path.is_dir() or stamp.is_symlink() or not stamp.is_file():
        return False
    try:
        return json.loads(stamp.read_text()).get("step") == int(m.group(1))
    except (OSError, ValueError, AttributeError):
        return False


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
                    state: dict[str, Any], keep_last: int, accelerator: Any = None,
                    rank_state: dict[str, Any] | None = None) -> Path | None:
    """Write ``checkpoints/step-<step>`` atomically and prune to the last ``keep_last`` of prefkit's own.

    Every process calls this (each saves its RNG state and ``rank_state``); the main process writes the
    rest and renames. Returns the checkpoint path on the main process.
    """
    rank = accelerator.process_index if accelerator is not None else 0
    main = rank == 0
    root = checkpoint_dir(run_dir)
    final = root / f"step-{step:08d}"
    tmp = root / f".tmp-step-{step:08d}"
    if main:
        if root.is_symlink():
            raise PrefkitError(f"{root} is a link; prefkit does not write checkpoints through links out of its "
                               "run folder: remove the link")
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.iterdir():  # left by a killed run: only prefkit's own temporary folders
            if TMP_DIR.match(stale.name) and is_prefkit_checkpoint(stale):
                shutil.rmtree(stale)
        if tmp.is_symlink() or tmp.is_file():
            tmp.unlink()
        elif tmp.is_dir():  # our own temporary folder, killed before its stamp was written
            shutil.rmtree(tmp)
        tmp.mkdir()
        (tmp / STAMP).write_text(json.dumps({"step": step}))
    _barrier(accelerator)
    tensors, plain = rng_state()
    save_file(tensors, str(tmp / f"rng-{rank}.safetensors"))
    (tmp / f"rng-{rank}.json").write_text(json.dumps(plain))
    (tmp / f"rank-{rank}.json").write_text(json.dumps(rank_state or {}))
    _barrier(accelerator)
    if main:
        save_file(trainable_state(model), str(tmp / "model.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        (tmp / "trainer_state.json").write_text(json.dumps({**state, "step": step}, indent=1))
        _fsync_dir(tmp)
        if final.is_symlink():
            final.unlink()
        elif final.exists():
            if not is_prefkit_checkpoint(final):
                shutil.rmtree(tmp)
                raise PrefkitError(f"{final} was not written by prefkit; move it away (prefkit will not replace it)")
            shutil.rmtree(final)
        os.rename(tmp, final)
        ours = [p for p in list_checkpoints(run_dir) if is_prefkit_checkpoint(p)]
        for old in ours[:-keep_last]:
            shutil.rmtree(old)
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
    state = json.loads((path / "trainer_state.json").read_text())
    rank_file = path / f"rank-{rank}.json"
    state["rank_state"] = json.loads(rank_file.read_text()) if rank_file.is_file() else {}
    return state


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
           "trainable_state", "is_prefkit_checkpoint", "STAMP"]
