"""Time every registered loss, forward + backward, at B = 4096 on CPU; print a table, slowest first.

    python bench/loss_timing.py [--batch 4096] [--repeats 20] [--rounds 3] [--threads 1] [--dtype float32]

Inputs are built per ``spec.kind`` / ``spec.needs`` exactly as in ``tests/test_losses_contract.py``
(pairs with T = 5 per-token log-probs, lists of K = 3, A = 3 rating attributes). Each loss gets
``--rounds`` interleaved rounds of ``--repeats`` timed calls of ``fn(...).losses.sum().backward()``
(after 3 warm-up calls per round); the table gives the min and the median per call. On a shared,
loaded machine the min is the stable number; the median shows the contention.
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


def time_loss(name: str, dtype: torch.dtype, repeats: int) -> list[float]:
    """Seconds per forward + backward call of loss ``name``, ``repeats`` calls after 3 warm-up calls."""
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
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64", "bfloat16"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)  # process-wide, fine in a script
    contract.B = args.batch
    dtype = getattr(torch, args.dtype)
    times: dict[str, list[float]] = {name: [] for name in LOSSES}
    for _ in range(args.rounds):  # interleaved rounds, so a burst of load on a shared machine hits all
        for name in LOSSES:
            times[name] += time_loss(name, dtype, args.repeats)
    rows = sorted(((min(t), statistics.median(t), name) for name, t in times.items()), reverse=True)
    print(f"{len(LOSSES)} losses, B={args.batch}, {args.dtype}, CPU threads={args.threads}, "
          f"torch {torch.__version__}; {args.rounds} interleaved rounds x {args.repeats} forward+backward "
          "calls; sorted by min")
    print(f"{'loss':<22}{'kind':<15}{'min ms':>10}{'median ms':>11}")
    for low, mid, name in rows:
        print(f"{name:<22}{LOSSES[name].kind:<15}{low * 1e3:>10.3f}{mid * 1e3:>11.3f}")


if __name__ == "__main__":
    main()
