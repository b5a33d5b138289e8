"""Reading speed of ``prefkit.data.load`` on 50,000 valid rows (the validator's path), one core.

    taskset -c 0 python bench/read_speed.py [--rows 50000] [--repeats 5]

Writes two JSONL files to a temporary folder (text pairs; chat pairs with metadata), then reports rows/s
from the best process CPU time of ``--repeats`` loads. Issue 11's floor is 25,000 rows/s.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from prefkit.data import load


def _rows(kind: str, n: int):
    for i in range(n):
        if kind == "text":
            yield {"prompt": f"Question {i}? ", "chosen": f"Answer {2 * i}.", "rejected": f"Answer {2 * i + 1}."}
        else:
            yield {"prompt": [{"role": "user", "content": f"Question {i}?"}],
                   "chosen": [{"role": "assistant", "content": f"Answer {2 * i}."}],
                   "rejected": [{"role": "assistant", "content": f"Answer {2 * i + 1}."}], "metadata": {"k": i}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        print("| file | rows/s (best CPU time) |\n|---|---:|")
        for kind in ("text", "chat"):
            path = Path(tmp) / f"{kind}.jsonl"
            path.write_text("".join(json.dumps(r) + "\n" for r in _rows(kind, args.rows)))
            best = float("inf")
            for _ in range(args.repeats):
                t = time.process_time()
                records = load(path)
                best = min(best, time.process_time() - t)
                assert len(records) == args.rows
                del records
            print(f"| {kind} pairs | {args.rows / best:,.0f} |")


if __name__ == "__main__":
    main()
