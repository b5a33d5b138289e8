"""What an online run keeps on disk to resume exactly: the run identity and the round checkpoints.

``<out>/online.json`` (written when a run starts, before round 0) holds what decides the run's results:
the online config, the trainer config (flattened), a hash of the prompt list and the judge's name. A
resume compares them with the current call's (:func:`check_same_run`); only ``online.rounds`` (a run can
be extended), ``output.*`` and ``train.progress`` may change.

``<out>/checkpoints/round-NNNN`` (``NNNN`` = rounds finished = the next round) is written after every
finished round, into ``checkpoints/.tmp-round-NNNN`` first and then renamed, so a kill never leaves a
half checkpoint under a final name; the last two are kept. It holds:

- ``policy.safetensors``: the policy's trainable parameters by name (for a PEFT model the adapter
  weights; the frozen base is the caller's to reload);
- ``reference.safetensors``: the same parameters of the current reference, only when it is no longer the
  policy the run started from (``reference: refresh_every_k`` after a refresh);
- ``optimizer.pt``: the AdamW state carried between rounds (``online.keep_optimizer``), tensors and plain
  values only, read back with ``torch.load(weights_only=True)``;
- ``state.json``: the next round and the metrics of the finished rounds.

No RNG state is saved: every random draw of a round is seeded from ``(online.seed, round, tag)``
(sampler, record building, and the torch global RNG the trainer's dropout uses), so re-running a round
from its start reproduces it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from prefkit.errors import ConfigError

IDENTITY_FILE = "online.json"
CHECKPOINTS = "checkpoints"
KEEP = 2
MAY_CHANGE = ("online.rounds", "run.output.", "run.train.progress")


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename (a kill leaves the old or the new)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _flat(tree: Any, prefix: str) -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(_flat(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: tree}


def run_identity(online: dict[str, Any], run: dict[str, Any], prompts: Sequence[Any], judge: str) -> dict[str, Any]:
    """The flat ``{key: value}`` that decides a run's results (module docstring)."""
    digest = hashlib.sha256(json.dumps(list(prompts), sort_keys=True, default=str).encode()).hexdigest()[:16]
    return {**_flat(online, "online."), **_flat(run, "run."), "prompts": digest, "judge": judge}


def check_same_run(out: Path, identity: dict[str, Any]) -> None:
    """A one-line ConfigError naming the first setting that differs from the run in ``out``."""
    saved = json.loads((out / IDENTITY_FILE).read_text())
    now = json.loads(json.dumps(identity, default=str))
    for key in sorted(set(saved) | set(now)):
        if saved.get(key) != now.get(key) and not key.startswith(MAY_CHANGE):
            raise ConfigError(f"resume: {key} differs from the run in {out} ({saved.get(key)!r} -> {now.get(key)!r}); "
                              "resume with the same settings (or start a new run)")


def trainable_state(model: nn.Module, names: Sequence[str] | None = None) -> dict[str, Tensor]:
    """The trainable parameters of ``model`` (or its parameters called ``names``) as CPU tensors by name."""
    params = dict(model.named_parameters())
    keep = names if names is not None else [n for n, p in params.items() if p.requires_grad]
    return {n: params[n].detach().to("cpu", copy=True).contiguous() for n in keep}


def load_trainable(model: nn.Module, path: Path) -> None:
    """Copy the tensors of ``path`` into ``model``'s parameters of the same names (all must exist)."""
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    params = dict(model.named_parameters())
    missing = sorted(set(tensors) - set(params))
    if missing:
        raise ConfigError(f"resume: {path} holds {missing[0]!r}, which the model does not have; resume with the "
                          "same model")
    with torch.no_grad():
        for name, value in tensors.items():
            params[name].copy_(value)


def latest_checkpoint(out: Path) -> Path | None:
    """The newest complete round checkpoint of ``out``, or None."""
    folder = out / CHECKPOINTS
    done = sorted(p for p in folder.glob("round-*") if (p / "state.json").is_file()) if folder.is_dir() else []
    return done[-1] if done else None


def save_checkpoint(out: Path, next_round: int, policy: nn.Module, reference: nn.Module | None,
                    optimizer_state: dict[str, Any] | None, history: list[dict[str, Any]], *,
                    judge_state: dict[str, Any] | None = None) -> Path:
    """Write ``checkpoints/round-NNNN`` atomically and keep the last :data:`KEEP` (module docstring);
    ``judge_state`` is a judge's JSON-friendly round state (a :class:`~prefkit.online.rewards.RewardMix`'s
    Lagrange multipliers), kept in ``state.json``."""
    from safetensors.torch import save_file

    folder = out / CHECKPOINTS
    folder.mkdir(exist_ok=True)
    final = folder / f"round-{next_round:04d}"
    tmp = folder / f".tmp-round-{next_round:04d}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    weights = trainable_state(policy)
    save_file(weights, str(tmp / "policy.safetensors"))
    if reference is not None:
        save_file(trainable_state(reference, list(weights)), str(tmp / "reference.safetensors"))
    if optimizer_state is not None:
        torch.save(optimizer_state, tmp / "optimizer.pt")
    state: dict[str, Any] = {"next_round": next_round, "history": history}
    if judge_state is not None:
        state["judge"] = judge_state
    (tmp / "state.json").write_text(json.dumps(state))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in sorted(p for p in folder.glob("round-*") if p != final)[:-(KEEP - 1) or None]:
        shutil.rmtree(old)
    return final


def load_checkpoint(path: Path, policy: nn.Module, reference: nn.Module | None
                    ) -> tuple[int, dict[str, Any] | None, list[dict[str, Any]]]:
    """Load a round checkpoint into ``policy`` (and ``reference`` when it holds one); returns the next round,
    the optimizer state and the metrics history."""
    load_trainable(policy, path / "policy.safetensors")
    if reference is not None and (path / "reference.safetensors").is_file():
        load_trainable(reference, path / "reference.safetensors")
    opt = path / "optimizer.pt"
    optimizer_state = torch.load(opt, weights_only=True) if opt.is_file() else None
    state = json.loads((path / "state.json").read_text())
    return int(state["next_round"]), optimizer_state, list(state["history"])


def load_judge_state(path: Path) -> dict[str, Any] | None:
    """The judge's round state saved in a round checkpoint (None when it saved none)."""
    return json.loads((path / "state.json").read_text()).get("judge")


def clean_partial(out: Path) -> None:
    """Remove the temporary folders a killed checkpoint write left (they are this module's own)."""
    folder = out / CHECKPOINTS
    if folder.is_dir():
        for tmp in folder.glob(".tmp-round-*"):
            shutil.rmtree(tmp)


__all__ = ["run_identity", "check_same_run", "save_checkpoint", "load_checkpoint", "latest_checkpoint",
           "clean_partial", "load_judge_state", "trainable_state", "load_trainable", "write_atomic", "IDENTITY_FILE"]
