"""Ownership of run folders: prefkit writes only into a folder that is absent, empty, or its own.

A folder becomes prefkit's when a job first writes into it: it gets a marker file ``.prefkit-run.json``::

    {"prefkit": "run folder", "format": 1, "kind": "train",
     "created": "2025-01-01T12:00:00Z", "updated": "2025-01-01T12:00:00Z",
     "entries": ["checkpoints", "config.yaml", "eval", "metrics.jsonl", "model", "plots", "tensorboard"]}

``entries`` are the top-level names prefkit creates in that folder (the union over every job that
claimed it). Rules (:func:`check_run_dir` checks them, read-only; :func:`claim_run_dir` also acts):

- a path that is a file, or a dangling link, is refused;
- an absent or empty folder is taken (created and marked);
- a marked folder is prefkit's. A new run there (no resume) is refused while any listed entry exists,
  unless ``overwrite``: then exactly the listed entries are removed, without following links (a link is
  removed, never its target's contents), so the new run starts with no old checkpoints. Files
  prefkit did not list are left alone. A listed entry that is a link is refused unless it is being
  removed (prefkit does not write through links out of its folder);
- anything else (a non-empty folder without the marker, or with an unreadable one) is refused with one
  line, with or without ``overwrite``: it is not prefkit's to write into or clear.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from prefkit.errors import ConfigError

MARKER = ".prefkit-run.json"
"""The marker file of a prefkit run folder."""
RUN_ENTRIES = ("config.yaml", "metrics.jsonl", "tensorboard", "checkpoints", "model", "plots", "eval")
"""What a training job (policy or reward model) may create in its run folder."""
_TAG = "run folder"


def read_marker(run_dir: str | Path) -> dict[str, Any] | None:
    """The marker of ``run_dir`` (a dict with a valid ``entries`` list), or None when it has none or an
    unreadable one."""
    path = Path(run_dir) / MARKER
    if path.is_symlink() or not path.is_file():
        return None
    try:
        marker = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not isinstance(marker, dict) or marker.get("prefkit") != _TAG:
        return None
    entries = marker.get("entries")
    if not isinstance(entries, list) or not all(isinstance(e, str) and _plain_name(e) for e in entries):
        return None
    return marker


def check_run_dir(run_dir: str | Path, *, resume: bool = False, overwrite: bool = False,
                  entries: Iterable[str] = RUN_ENTRIES, key: str = "output.dir") -> str:
    """Raise ``ConfigError`` (one line) unless a job that creates ``entries`` may write into ``run_dir``;
    returns its state: ``"absent"``, ``"empty"`` or ``"ours"``. Reads only."""
    path = Path(run_dir)
    shown = str(path)
    if path.is_symlink() and not path.exists():
        raise ConfigError(f"{key} {shown!r} is a link to nothing; choose another {key}")
    if not path.exists():
        return "absent"
    if not path.is_dir():
        raise ConfigError(f"{key} {shown!r} is a file, not a folder; choose another {key}")
    try:
        # (a marker being written by a job killed at that moment does not make the folder anyone else's)
        names = sorted(p.name for p in path.iterdir() if not p.name.startswith(f"{MARKER}.tmp-"))
    except OSError as err:
        raise ConfigError(f"{key} {shown!r} cannot be read ({err.strerror}); choose another {key}") from None
    if not names:
        return "empty"
    marker = read_marker(path)
    if marker is None:
        if MARKER in names:
            raise ConfigError(f"{key} {shown!r} has an unreadable {MARKER}; prefkit will not write there: "
                              f"choose another {key}")
        listed = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
        raise ConfigError(f"{key} {shown!r} is not empty and not a prefkit run folder (no {MARKER}; it holds "
                          f"{listed}); prefkit writes only into a new or empty folder or its own run folder "
                          f"(output.overwrite does not apply): choose another {key}")
    present = [e for e in marker["entries"] if _occupied(path / e)]
    foreign = [e for e in entries if e not in marker["entries"] and _occupied(path / e)]
    if foreign:
        raise ConfigError(f"{shown}/{foreign[0]} was not written by prefkit (the folder's {MARKER} does not list "
                          f"it); prefkit will not write over it: move it away or choose another {key}")
    clearing = overwrite and not resume
    if not clearing:
        linked = [e for e in present if (path / e).is_symlink()]
        if linked:
            raise ConfigError(f"{shown}/{linked[0]} is a link; prefkit does not write through links out of its "
                              "run folder: remove the link (or set output.overwrite=true to remove it)")
        if not resume and present:
            raise ConfigError(f"{key} {shown!r} already holds a run ({', '.join(present[:3])}); pass --resume to "
                              f"continue it, set output.overwrite=true, or choose another {key}")
    return "ours"


def claim_run_dir(run_dir: str | Path, *, resume: bool = False, overwrite: bool = False, kind: str = "train",
                  entries: Iterable[str] = RUN_ENTRIES, key: str = "output.dir") -> Path:
    """Check ``run_dir`` (:func:`check_run_dir`), then make it this job's: create and mark it, and with
    ``overwrite`` (and no ``resume``) remove what earlier prefkit jobs listed in its marker.

    Call it on one process only (the main one), after every process ran :func:`check_run_dir`.
    """
    path = Path(run_dir)
    entries = list(entries)
    if not all(_plain_name(e) for e in entries):
        raise ValueError(f"run folder entries must be plain names: {entries}")
    state = check_run_dir(path, resume=resume, overwrite=overwrite, entries=entries, key=key)
    old = read_marker(path) if state == "ours" else None
    if old is not None and overwrite and not resume:
        for name in old["entries"]:
            _remove(path / name)
    path.mkdir(parents=True, exist_ok=True)
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    marker = {"prefkit": _TAG, "format": 1, "kind": (old or {}).get("kind", kind),
              "created": (old or {}).get("created", now), "updated": now,
              "entries": sorted(set((old or {}).get("entries", [])) | set(entries))}
    tmp = path / f"{MARKER}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(marker, indent=1) + "\n")
    os.replace(tmp, path / MARKER)
    return path


def _plain_name(name: str) -> bool:
    """A single path component naming something inside the folder (not ``.``, ``..``, the marker)."""
    return bool(name) and name not in (".", "..", MARKER) and "/" not in name and "\\" not in name \
        and "\0" not in name


def _occupied(path: Path) -> bool:
    return path.is_symlink() or path.exists()


def _remove(path: Path) -> None:
    """Remove a file, a link (only the link) or a folder tree (links inside removed, never followed)."""
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


__all__ = ["MARKER", "RUN_ENTRIES", "check_run_dir", "claim_run_dir", "read_marker"]
