"""CPU time of the demo job (``prefkit demo``) with and without the log-prob fast path.

Each run is its own subprocess running ``prefkit.toy.demo.run_demo`` on the packaged ``demo.yaml`` (same
seed), with ``model.packing`` / ``model.share_prefix`` on ("fast") or off ("padded"); the demo passes
these keys to every stage (SFT warm-up, preference stage, before/after evaluation). ``Trainer.train``
is wrapped to record the process CPU time of each stage: the SFT warm-up (first call) and the preference
stage (second call). The job's total CPU time comes from ``getrusage(RUSAGE_CHILDREN)``. Runs alternate
fast, padded, padded, fast, ... so that a drift in machine load cancels.

    OMP_NUM_THREADS=1 python bench/demo_fastpath.py --reps 2 --out bench/demo_fastpath.json

``--micro``: instead, one forward + backward of the log-probs of demo-shaped batches (32 toy pairs,
prompts of 4 tokens, responses of 2-9 digits plus EOS, the demo's untrained tiny Llama), in process, per
engine: padded, and the fast path forced on (``attention="segments"``, which bypasses the short-batch
dispatch) without / with prompt sharing, and the default dispatch.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile

CHILD = r"""
import json, sys, time
import torch
torch.set_num_threads(1)
from prefkit.toy import demo
from prefkit.train import trainer as T
from prefkit.train.config import load_config
stages = []
_train = T.Trainer.train
def timed(self, *a, **k):
    t0 = time.process_time()
    out = _train(self, *a, **k)
    stages.append(time.process_time() - t0)
    return out
T.Trainer.train = timed
config = load_config(demo.demo_config_path(), sys.argv[2:])
result = demo.run_demo(config=config, show=False)
print("RESULT " + json.dumps({"stages": stages, "after": result.to_dict()["after"]["implicit_reward_accuracy"]}))
"""

VARIANTS = {"fast": ["model.packing=true", "model.share_prefix=true"],
            "padded": ["model.packing=false", "model.share_prefix=false"]}


def run_once(variant: str, extra: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        overrides = [*VARIANTS[variant], "train.progress=false", f"output.dir={tmp}/demo", *extra]
        proc = subprocess.run([sys.executable, "-c", CHILD, "x", *overrides], capture_output=True, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1"}, check=True)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    res = json.loads(line[len("RESULT "):])
    total = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"variant": variant, "total_cpu_s": total, "sft_cpu_s": res["stages"][0],
            "preference_cpu_s": res["stages"][1], "after_accuracy": res["after"]}


def micro(reps: int) -> None:
    import random
    import time

    import torch

    from prefkit.data.encode import Encoder, collate
    from prefkit.models.logprobs import sequence_logps
    from prefkit.models.packing import packed_sequence_logps
    from prefkit.toy import world
    from prefkit.toy.demo import ToySettings, build_model

    torch.set_num_threads(1)
    tok = world.build_tokenizer()
    pairs = world.preference_pairs(256, random.Random(0))
    enc = Encoder(tok)
    examples = enc.encode_all(pairs)[0]
    model = build_model(tok, ToySettings(), 0)
    batches = [collate(examples[i:i + 32], enc.pad_id) for i in range(0, len(examples), 32)]
    engines = {
        "padded": lambda b: sequence_logps(model, b, packing=False),
        "packed": lambda b: packed_sequence_logps(model, b, attention="segments"),
        "packed+shared": lambda b: packed_sequence_logps(model, b, share_prefix=True, attention="segments"),
        "auto (default)": lambda b: sequence_logps(model, b),
    }
    times: dict[str, list[float]] = {k: [] for k in engines}
    for _ in range(reps):
        for name, run in engines.items():
            t0 = time.process_time()
            for b in batches:
                run(b).logps.sum().backward()
            times[name].append((time.process_time() - t0) / len(batches))
    shape = tuple(batches[0].input_ids.shape)
    print(f"batch {shape}, {int(batches[0].attention_mask.sum())} real tokens; CPU ms per batch (median of {reps}):")
    for name, ts in times.items():
        print(f"  {name:15s} {1e3 * statistics.median(ts):6.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--out", default=None)
    parser.add_argument("--micro", action="store_true", help="time demo-shaped batches in process")
    parser.add_argument("overrides", nargs="*", help="extra config overrides for both variants")
    args = parser.parse_args()
    if args.micro:
        micro(max(args.reps, 5))
        return
    runs = []
    for rep in range(args.reps):
        for variant in list(VARIANTS)[::1 if rep % 2 == 0 else -1]:  # ABBA: cancels a load drift
            runs.append(run_once(variant, args.overrides))
            print(json.dumps(runs[-1]), flush=True)
    summary = {}
    for variant in VARIANTS:
        rows = [r for r in runs if r["variant"] == variant]
        summary[variant] = {k: statistics.median(r[k] for r in rows)
                            for k in ("total_cpu_s", "sft_cpu_s", "preference_cpu_s")}
    summary["padded_over_fast"] = {k: summary["padded"][k] / summary["fast"][k]
                                   for k in ("total_cpu_s", "preference_cpu_s")}
    print(json.dumps(summary, indent=2))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"runs": runs, "summary": summary}, f, indent=2)


if __name__ == "__main__":
    main()
