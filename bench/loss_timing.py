"""Time every registered loss, forward + backward, at B = 4096 on CPU; print a table, slowest first.

    python bench/loss_timing.py [--batch 4096] [--repeats 20] [--threads 1] [--dtype float32]

Inputs are built per ``spec.kind`` / ``spec.needs`` exactly as in ``tests/test_losses_contract.py``
(pairs with T = 5 per-token log-probs, lists of K = 3, A = 3 rating attributes). The time is the median
of ``--repeats`` calls of ``fn(...).losses.sum().backward()`` after 3 warm-up calls.
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import time
from pathlib import Path

import torch

from prefkit.losses import LOSSES, validate_loss_params

# The contract test's input builder, so the benchmark times exactly what the tests check.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
contract = importlib.import_module("test_losses_contract")


def time_loss(name: str, dtype: torch.dtype, repeats: int) -> float:
    """Median seconds per forward + backward call of loss ``name``."""
    spec = LOSSES[name]
    case = contract.make_case(spec, dtype)
    params = validate_loss_params(name, {})
    times = []
    for i in range(repeats + 3):
        for leaf in case.leaves:
            leaf.grad = None
        fresh = contract._with_leaves(spec, case, case.leaves)  # rebuild sums so the graph is new
        start = time.perf_counter()
        out = spec.fn(fresh.policy, fresh.reference, **fresh.inputs, **params)
        out.losses.sum().backward()
        if i >= 3:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64", "bfloat16"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)  # process-wide, fine in a script
    contract.B = args.batch
    dtype = getattr(torch, args.dtype)
    rows = sorted(((time_loss(name, dtype, args.repeats), name) for name in LOSSES), reverse=True)
    print(f"{len(LOSSES)} losses, B={args.batch}, {args.dtype}, CPU threads={args.threads}, "
          f"torch {torch.__version__}; median of {args.repeats} forward+backward calls")
    print(f"{'loss':<22}{'kind':<15}{'ms/call':>10}")
    for seconds, name in rows:
        print(f"{name:<22}{LOSSES[name].kind:<15}{seconds * 1e3:>10.3f}")


if __name__ == "__main__":
    main()
