"""Checkpoints: written atomically, the last k kept, everything needed to continue exactly.

Layout of ``<run>/checkpoints/step-00000012/``:

- ``model.safetensors``: the trainable parameters (all weights, or only the LoRA adapter);
- ``optimizer.pt``, ``scheduler.pt``: ``state_dict()`` s of our own objects, read back with
  ``torch.load(weights_only=True)``;
- a sharded (FSDP) run writes ``sharded/`` instead of ``model.safetensors`` and ``optimizer.pt``: the
  trainable parameters and AdamW states, each process its own shards, with ``torch.distributed.checkpoint``
  (DCP; ``.metadata`` plus ``__<rank>_0.distcp`` files). It resumes on the same number of processes;
  the final model (``<run>/model``) is gathered into plain safetensors;
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
SHARDED = "sharded"


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
                    rank_state: dict[str, Any] | None = None, sharded: bool = False) -> Path | None:
    """Write ``checkpoints/step-<step>`` atomically and prune to the last ``keep_last`` of prefkit's own.

    Every process calls this (each saves its RNG state and ``rank_state``, and with ``sharded`` its
    shards of the model and optimizer); the main process writes the rest and renames. Returns the
    checkpoint path on the main process.
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
    if sharded:  # a collective: every process writes its shards
        import torch.distributed.checkpoint as dcp

        dcp.save(_sharded_state(model, optimizer), checkpoint_id=str(tmp / SHARDED))
    _barrier(accelerator)
    if main:
        if not sharded:
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
                    accelerator: Any = None, sharded: bool = False) -> dict[str, Any]:
    """Restore model, optimizer, scheduler and this process's RNG states; returns the trainer state.
    ``sharded``: every process calls it and reads its own shards (``sharded/``)."""
    path = Path(path)
    rank = accelerator.process_index if accelerator is not None else 0
    if sharded != (path / SHARDED).is_dir():
        raise PrefkitError(f"checkpoint {path} is {'' if (path / SHARDED).is_dir() else 'not '}sharded; resume with "
                           "the distributed.strategy and number of processes it was written with")
    if sharded:
        _load_sharded(path / SHARDED, model, optimizer)
    else:
        _load_full(path, model, optimizer)
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    rng_file = path / f"rng-{rank}.safetensors"
    if rng_file.is_file():
        set_rng_state(load_file(str(rng_file)), json.loads((path / f"rng-{rank}.json").read_text()))
    state = json.loads((path / "trainer_state.json").read_text())
    rank_file = path / f"rank-{rank}.json"
    state["rank_state"] = json.loads(rank_file.read_text()) if rank_file.is_file() else {}
    return state


def _load_full(path: Path, model: nn.Module, optimizer: Any) -> None:
    """Copy ``model.safetensors`` into the model's trainable parameters and load ``optimizer.pt``."""
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


_OPTIONS: dict[str, Any] = {"ignore_frozen_params": True}
"""What a sharded checkpoint holds: the trainable parameters (all, or the LoRA adapter) and their AdamW states."""


def _sharded_state(model: nn.Module, optimizer: Any) -> dict[str, Any]:
    """``{"model": ..., "optimizer": ...}``: this process's shards, keyed by parameter name (DCP's form)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    model_state, optim_state = get_state_dict(model, optimizer, options=StateDictOptions(**_OPTIONS))
    return {"model": model_state, "optimizer": optim_state}


def _load_sharded(folder: Path, model: nn.Module, optimizer: Any) -> None:
    """Read this process's shards from ``folder`` into the (sharded) model and optimizer: a collective."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    state = _sharded_state(model, optimizer)
    dcp.load(state, checkpoint_id=str(folder))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"],
                   options=StateDictOptions(**_OPTIONS))


def read_state(path: str | Path) -> dict[str, Any]:
    """The ``trainer_state.json`` of a checkpoint."""
    return json.loads((Path(path) / "trainer_state.json").read_text())


def _barrier(accelerator: Any) -> None:
    if accelerator is not None and accelerator.num_processes > 1:
        accelerator.wait_for_everyone()


def _fsync_dir(directory: Path) -> None:
    for f in directory.rglob("*"):
        if f.is_file():
            with f.open("rb") as fh:
                os.fsync(fh.fileno())


__all__ = ["save_checkpoint", "load_checkpoint", "read_state", "latest_checkpoint", "list_checkpoints", "checkpoint_dir",
           "trainable_state", "is_prefkit_checkpoint", "STAMP"]
