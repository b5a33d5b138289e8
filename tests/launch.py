"""Running a script on 1 process (plain Python) or several (``accelerate launch``, DDP over gloo on CPU),
for the multi-process tests."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ACCELERATE = Path(sys.executable).with_name("accelerate")
needs_launcher = pytest.mark.skipif(shutil.which("accelerate") is None and not ACCELERATE.exists(),
                                    reason="accelerate CLI not installed")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"}  # a crashing rank prints its stack


def free_port() -> str:
    """A TCP port nothing listens on now (a fixed port can still be held by an earlier run)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return str(sock.getsockname()[1])


def launch(args: list[str], processes: int, *, ok: bool = True) -> subprocess.CompletedProcess[str]:
    """``args`` (a script or ``-m module ...``) on ``processes`` processes; with ``ok``, asserts it exited 0."""
    head = [sys.executable] if processes == 1 else [
        str(ACCELERATE), "launch", "--multi_gpu", "--num_processes", str(processes), "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", free_port()]
    proc = subprocess.run(head + args, env=ENV, timeout=300, capture_output=True, text=True)
    if ok:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc
