"""The demo job: SFT warm-up then preference tuning of a tiny Llama in the toy world, with before/after.

``run_demo()`` (what ``prefkit demo`` and a bare ``prefkit train`` call) does, on CPU, with no files
read and nothing downloaded:

1. builds the toy tokenizer and a tiny Llama (hidden 128, 2 layers) from a seed;
2. SFT warm-up with the project's :class:`~prefkit.train.Trainer` and a small NLL objective on
   responses that mix the good and the bad mode half and half (no preference in the data);
3. measures the "before" numbers (below) with the SFT model as the policy and the reference;
4. preference-tunes it with the same Trainer on pairs labelled by the hidden reward, with the loss and
   optimisation of ``demo.yaml`` (RPO: DPO + a per-token NLL on the chosen response; the reference is
   a frozen copy of the SFT model);
5. measures the "after" numbers, writes ``results.json`` and ``plots/before_after.png`` into the run
   directory (the Trainer adds ``metrics.jsonl`` and ``plots/*.png`` under ``sft/`` and ``preference/``,
   and the tuned model under ``preference/model``).

The numbers, on held-out prompts and pairs the training never saw:

- preference accuracy of the implicit reward β·(log π − log π_ref): the fraction of held-out pairs
  whose chosen response gets the higher implicit reward, ties counted ½ (before tuning π = π_ref, so
  every margin is 0 and the accuracy is exactly 0.5);
- policy preference accuracy: the fraction where log π(chosen) > log π(rejected);
- mean hidden reward of greedy and of sampled (temperature 1) generations;
- KL(π‖π_ref): the mean over sampled responses of log π(y|x) − log π_ref(y|x) (a Monte-Carlo estimate
  of the sequence-level KL; 0 before tuning).
"""

from __future__ import annotations

import copy
import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from prefkit.data.encode import Encoder, collate
from prefkit.data.records import Pair, Unpaired
from prefkit.models.logprobs import pair_logps, sequence_logps
from prefkit.toy import world
from prefkit.train.config import RunConfig, load_config
from prefkit.train.objectives import StepOutput
from prefkit.train.rundir import claim_run_dir
from prefkit.train.trainer import Trainer

TOY_MARKER = "toy"
"""``model.path`` / ``data.train`` value that names the toy world in a run config."""
DEMO_ENTRIES = ("sft", "preference", "plots", "results.json")
"""What the demo creates in its run folder (``sft/`` and ``preference/`` are Trainer run folders)."""


@dataclass
class ToySettings:
    """Sizes of the toy world, the tiny model and the SFT warm-up (the preference stage is a RunConfig)."""

    hidden_size: int = 128
    """Width of the tiny Llama."""
    num_layers: int = 2
    """Decoder layers of the tiny Llama."""
    sft_steps: int = 300
    """SFT warm-up optimizer steps."""
    sft_batch_size: int = 64
    """SFT examples per step."""
    sft_lr: float = 1e-3
    """SFT learning rate (AdamW, constant after a short warmup)."""
    train_pairs: int = 4000
    """Preference pairs for the preference stage."""
    eval_pairs: int = 500
    """Held-out preference pairs (accuracy)."""
    eval_prompts: int = 400
    """Held-out prompts for the generation metrics."""
    pair_k: int = 2
    """Responses drawn per pair; the best and the worst by the hidden reward make the pair."""


QUICK = ToySettings(sft_steps=200, train_pairs=2400, eval_pairs=300, eval_prompts=200)
"""Smaller sizes for tests (``run_demo(quick=True)``, which also runs 150 preference steps)."""


@dataclass
class Snapshot:
    """The demo's numbers for one model (see the module docstring)."""

    implicit_reward_accuracy: float
    policy_accuracy: float
    greedy_reward: float
    sampled_reward: float
    kl: float
    sampled_reward_by_task: dict[str, float] = field(default_factory=dict)
    examples: list[tuple[str, str, float]] = field(default_factory=list)
    """A few (prompt, greedy response, hidden reward) triples."""


@dataclass
class DemoResult:
    """What :func:`run_demo` returns (also written to ``<run_dir>/results.json``)."""

    before: Snapshot
    after: Snapshot
    run_dir: Path
    plots: list[Path]
    seconds: float
    train_metrics: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"before": asdict(self.before), "after": asdict(self.after), "run_dir": str(self.run_dir),
                "plots": [str(p) for p in self.plots], "seconds": self.seconds,
                "train_metrics": self.train_metrics}


def demo_config_path() -> Path:
    """The packaged ``demo.yaml``."""
    return Path(str(resources.files("prefkit.toy").joinpath("demo.yaml")))


def is_toy_config(config: RunConfig) -> bool:
    """True when a run config names the toy world (``model.path: toy``)."""
    return config.model.path == TOY_MARKER


def build_model(tokenizer: Any, settings: ToySettings, seed: int) -> nn.Module:
    """A randomly initialised tiny ``LlamaForCausalLM`` for the toy vocabulary (global RNG untouched).

    Toy sequences are under 20 tokens. The position limit is nominal (rotary positions have no weights,
    so it changes nothing in the model); it is 1,024, ``encode.max_length``'s default, so that a toy
    config needs no ``encode`` section to pass the trainer's position-limit check.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    h = settings.hidden_size
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=h, intermediate_size=2 * h,
                         num_hidden_layers=settings.num_layers, num_attention_heads=4, num_key_value_heads=4,
                         max_position_embeddings=1024, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=None, tie_word_embeddings=True,
                         attn_implementation="eager")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LlamaForCausalLM(config)


# -- SFT objective ------------------------------------------------------------------------------------------


@dataclass
class SFTObjective:
    """Per-token NLL of the completion, −log π(y|x) / |y|, for the Trainer (no reference)."""

    needs_reference: bool = False
    token_logps: bool = False
    kl_pairs: bool = False
    tracks_reward_mean: bool = False
    packing: bool = True
    """Run the log-prob fast path (``sequence_logps(packing=...)``); the demo passes ``model.packing``."""

    def prepare(self, examples: list, seed: int, report: Any = None) -> list:
        return examples

    def __call__(self, model: nn.Module, batch: Any, reference: Any, *, reward_mean: float | None = None
                 ) -> StepOutput:
        seq = sequence_logps(model, batch, packing=self.packing)
        nll = -seq.logps / seq.tokens  # (N,) model log-likelihood is negated into a loss
        return StepOutput(nll, {"nll": nll.detach()})


# -- evaluation ---------------------------------------------------------------------------------------------


@torch.no_grad()
def pair_margins(policy: nn.Module, reference: nn.Module, pairs: list[Pair], tokenizer: Any,
                 batch_size: int = 256, **engine: bool) -> tuple[Tensor, Tensor]:
    """(policy log π(chosen) − log π(rejected), implicit-reward log-ratio margin h), both (P,).

    ``engine``: ``packing`` / ``share_prefix`` for :func:`sequence_logps`."""
    encoder = Encoder(tokenizer)
    examples = encoder.encode_all(pairs)[0]
    policy_margins, ratio_margins = [], []
    for s in range(0, len(examples), batch_size):
        batch = collate(examples[s:s + batch_size], encoder.pad_id)
        pol = pair_logps(sequence_logps(policy, batch, **engine), batch)
        ref = pair_logps(sequence_logps(reference, batch, **engine), batch)
        policy_margins.append(pol.chosen_logps - pol.rejected_logps)  # (B,)
        ratio_margins.append((pol.chosen_logps - ref.chosen_logps) - (pol.rejected_logps - ref.rejected_logps))
    return torch.cat(policy_margins), torch.cat(ratio_margins)


@torch.no_grad()
def generate(model: nn.Module, tokenizer: Any, prompts: list[str], *, sample: bool,
             generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Responses to same-length prompts: (ids (P, L) padded after EOS, completion mask (P, L)).

    A plain loop of up to ``MAX_LEN + 1`` new tokens (greedy, or sampling at temperature 1) with the
    model's key/value cache, stopping when every response has ended.
    """
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    ids = torch.tensor([tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts])  # (P, Tp)
    done = torch.zeros(len(prompts), dtype=torch.bool)
    new, mask = [], []
    step_ids, past = ids, None
    for _ in range(world.MAX_LEN + 1):
        if bool(done.all()):
            break
        out = model(input_ids=step_ids, cache=past, use_cache=True)  # transformers 5: `cache`, not `past_key_values`
        past = out.cache
        logits = out.logits[:, -1].float()  # (P, V)
        if sample:
            nxt = torch.multinomial(torch.softmax(logits, -1), 1, generator=generator)[:, 0]
        else:
            nxt = logits.argmax(-1)
        nxt = torch.where(done, torch.full_like(nxt, pad), nxt)
        mask.append(~done)
        new.append(nxt)
        done = done | (nxt == eos)
        step_ids = nxt[:, None]  # (P, 1): the cache holds everything before
    return torch.stack(new, 1), torch.stack(mask, 1)


@torch.no_grad()
def completion_logps(model: nn.Module, prompt_ids: Tensor, completion: Tensor, mask: Tensor) -> Tensor:
    """(P,) summed log-probs of ``completion`` (P, L) where ``mask`` (P, L) is set, after ``prompt_ids``."""
    ids = torch.cat([prompt_ids, completion], 1)  # (P, Tp + L)
    logits = model(input_ids=ids, use_cache=False).logits[:, prompt_ids.shape[1] - 1:-1].float()  # (P, L, V)
    token_logps = torch.log_softmax(logits, -1).gather(-1, completion[..., None])[..., 0]  # (P, L)
    return (token_logps * mask).sum(-1)


def snapshot(policy: nn.Module, reference: nn.Module, tokenizer: Any, pairs: list[Pair],
             prompts: list[world.Prompt], seed: int, **engine: bool) -> Snapshot:
    """The demo's numbers for ``policy`` against ``reference`` (see the module docstring); ``engine``:
    ``packing`` / ``share_prefix`` for the log-probs."""
    was_training = policy.training
    policy.eval()
    policy_m, ratio_m = pair_margins(policy, reference, pairs, tokenizer, **engine)
    texts = [p.text for p in prompts]
    prompt_ids = torch.tensor([tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts])
    greedy, _ = generate(policy, tokenizer, texts, sample=False)
    sampled, mask = generate(policy, tokenizer, texts, sample=True,
                             generator=torch.Generator().manual_seed(seed))
    kl = (completion_logps(policy, prompt_ids, sampled, mask)
          - completion_logps(reference, prompt_ids, sampled, mask)).mean()
    greedy_text = tokenizer.batch_decode(greedy, skip_special_tokens=True)
    sampled_text = tokenizer.batch_decode(sampled, skip_special_tokens=True)
    greedy_r = [world.reward(p, r) for p, r in zip(prompts, greedy_text, strict=True)]
    sampled_r = [world.reward(p, r) for p, r in zip(prompts, sampled_text, strict=True)]
    by_task = {t: _mean([r for p, r in zip(prompts, sampled_r, strict=True) if p.task == t])
               for t in world.TASKS}
    policy.train(was_training)
    # Rounded to 6 significant digits here, so the returned numbers equal those in results.json and
    # carry no float32 noise (0.44999998807907104 -> 0.45).
    return Snapshot(
        implicit_reward_accuracy=_rounded(float(((ratio_m > 0).float() + 0.5 * (ratio_m == 0).float()).mean())),
        policy_accuracy=_rounded(float((policy_m > 0).float().mean())),
        greedy_reward=_rounded(_mean(greedy_r)), sampled_reward=_rounded(_mean(sampled_r)),
        kl=_rounded(float(kl)), sampled_reward_by_task=_rounded(by_task),
        examples=[(t, g, r) for t, g, r in list(zip(texts, greedy_text, greedy_r, strict=True))[:6]])


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


# -- the job ------------------------------------------------------------------------------------------------


def sft_policy(tokenizer: Any, settings: ToySettings, seed: int, rng: random.Random, out_dir: str | Path, *,
               progress: bool = False, packing: bool = True, plots: bool = True) -> nn.Module:
    """The demo's SFT stage: :func:`build_model` with ``seed``, then the Trainer with :class:`SFTObjective`
    for ``settings.sft_steps`` steps over ``sft_steps · sft_batch_size`` responses drawn from ``rng``
    (:func:`world.sft_examples`: good and bad mode half and half, so no preference); its run folder is
    ``out_dir``. Returns the warmed-up model (the policy and reference of the preference stage)."""
    model = build_model(tokenizer, settings, seed)
    sft_records = [Unpaired(p, r, desirable=True) for p, r in world.sft_examples(
        settings.sft_steps * settings.sft_batch_size, rng)]
    sft_cfg = load_config(overrides=[
        f"output.dir={out_dir}", "output.overwrite=true", "output.tensorboard=false",
        "output.save_model=false", f"output.plots={str(plots).lower()}", f"train.seed={seed}",
        f"train.batch_size={settings.sft_batch_size}", f"train.max_steps={settings.sft_steps}",
        f"train.lr={settings.sft_lr}", "train.scheduler=constant", "train.warmup_steps=10",
        "train.log_every=50", f"train.progress={str(progress).lower()}"])
    Trainer(sft_cfg, model, tokenizer, sft_records, objective=SFTObjective(packing=packing)).train()
    return model


def run_demo(out_dir: str | Path | None = None, seed: int = 0, quick: bool = False, *,
             config: RunConfig | None = None, settings: ToySettings | None = None,
             progress: bool | None = None, show: bool = True, threads: int | None = 1) -> DemoResult:
    """Run the toy-world job end to end and return (and, with ``show``, print) the before/after numbers.

    Args:
        out_dir: run directory (default ``config.output.dir``, ``runs/demo``); ``sft/`` and ``preference/`` hold
            the two Trainer runs, ``results.json`` and ``plots/`` the demo's own outputs.
        seed: seeds the world, the model and both training stages.
        quick: smaller sizes (:data:`QUICK`) and 150 preference steps, for tests.
        config: the preference stage's run config (default: the packaged ``demo.yaml``); its ``model.path``
            and ``data.train`` must be ``toy``.
        settings: world / model / SFT sizes (default :class:`ToySettings`, or :data:`QUICK`).
        progress: show the Trainer's progress bars (default: ``train.progress`` of the config).
        show: print the rich before/after table.
        threads: torch intra-op threads while the demo runs, restored afterwards (None: leave as is).
            The tiny model's matrices are too small to gain from more than one, and extra threads
            only spin when the cores are busy.
    """
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _run_demo(out_dir, seed, quick, config, settings, progress, show)
    finally:
        torch.set_num_threads(previous)


def _run_demo(out_dir: str | Path | None, seed: int, quick: bool, config: RunConfig | None,
              settings: ToySettings | None, progress: bool | None, show: bool) -> DemoResult:
    t0 = time.perf_counter()
    if config is not None:
        config = copy.deepcopy(config)  # the stages below set output.dir and progress on it
    else:
        overrides = [f"train.seed={seed}"] + (["train.max_steps=150", "train.eval_every=0"] if quick else [])
        config = load_config(demo_config_path(), overrides)
    if not is_toy_config(config):
        from prefkit.errors import ConfigError

        raise ConfigError(f"run_demo needs model.path: {TOY_MARKER} (got {config.model.path!r})")
    settings = settings or (QUICK if quick else ToySettings())
    seed = config.train.seed
    run_dir = Path(out_dir if out_dir is not None else config.output.dir)
    # The demo writes only into its own run folder (absent, empty or marked by prefkit): a user folder is
    # refused before anything is built; with output.overwrite (demo.yaml's default) a second demo run
    # replaces what the first one wrote there, and nothing else.
    claim_run_dir(run_dir, overwrite=config.output.overwrite, kind="demo", entries=DEMO_ENTRIES)
    if progress is not None:
        config.train.progress = progress

    rng = random.Random(seed)
    tokenizer = world.build_tokenizer()
    # 1. SFT warm-up (it draws its responses from rng first, so the pairs below are the same as ever).
    model = sft_policy(tokenizer, settings, seed, rng, run_dir / "sft", progress=config.train.progress,
                       packing=config.model.packing)
    train_pairs = world.preference_pairs(settings.train_pairs, rng, k=settings.pair_k)
    eval_pairs = world.preference_pairs(settings.eval_pairs, rng, k=settings.pair_k)
    eval_prompts = world.sample_prompts(settings.eval_prompts, rng)
    # The config's model.packing / model.share_prefix switch the log-prob engine of every stage.
    engine = {"packing": config.model.packing, "share_prefix": config.model.share_prefix}

    # 2. Before: the SFT model is both the policy and the reference.
    from prefkit.models.load import frozen_copy

    reference = frozen_copy(model)
    before = snapshot(model, reference, tokenizer, eval_pairs, eval_prompts, seed, **engine)

    # 3. Preference stage, per the run config (reference: the frozen SFT copy).
    config.output.dir = str(run_dir / "preference")
    trainer = Trainer(config, model, tokenizer, train_pairs, eval_pairs, reference_model=reference)
    train_metrics = trainer.train()

    # 4. After.
    after = snapshot(model, reference, tokenizer, eval_pairs, eval_prompts, seed, **engine)
    plots = [plot_before_after(before, after, run_dir / "plots" / "before_after.png")]
    for stage in ("sft", "preference"):
        plots += sorted((run_dir / stage / "plots").glob("*.png"))
    result = DemoResult(before, after, run_dir, plots, time.perf_counter() - t0,
                        {k: float(v) for k, v in train_metrics.items()})
    (run_dir / "results.json").write_text(json.dumps(_rounded(result.to_dict()), indent=2) + "\n")
    if show:
        print_result(result)
    return result


def _rounded(value: Any, digits: int = 6) -> Any:
    """``value`` with every float rounded to ``digits`` significant digits (float32 noise such as
    0.44999998807907104 becomes 0.45), recursively through dicts and lists."""
    if isinstance(value, float):
        return float(f"{value:.{digits}g}") if math.isfinite(value) else value
    if isinstance(value, dict):
        return {k: _rounded(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_rounded(v, digits) for v in value]
    return value


def run_config(config: RunConfig, *, resume: bool = False) -> dict[str, float]:
    """``prefkit train --config`` entry for a toy config: the demo job; returns the "after" numbers."""
    if resume:
        from prefkit.errors import ConfigError

        raise ConfigError("the toy demo job does not resume; run it again (it takes about a minute)")
    result = run_demo(config=config)
    return {f"after/{k}": v for k, v in asdict(result.after).items() if isinstance(v, float)}


# -- output -------------------------------------------------------------------------------------------------

ROWS = (
    ("held-out preference accuracy (implicit reward)", "implicit_reward_accuracy", "{:.3f}"),
    ("held-out preference accuracy (policy log-prob)", "policy_accuracy", "{:.3f}"),
    ("mean hidden reward, greedy generations", "greedy_reward", "{:.3f}"),
    ("mean hidden reward, sampled generations", "sampled_reward", "{:.3f}"),
    ("KL(policy || reference), nats per response", "kl", "{:.3f}"),
)


def print_result(result: DemoResult) -> None:
    """The before/after table, a few generations, the run directory and the plots (rich)."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title="prefkit demo: toy world, SFT warm-up then preference tuning")
    table.add_column("metric")
    table.add_column("before", justify="right")
    table.add_column("after", justify="right")
    for label, key, fmt in ROWS:
        table.add_row(label, fmt.format(getattr(result.before, key)), fmt.format(getattr(result.after, key)))
    for task in world.TASKS:
        table.add_row(f"  sampled reward, task '{task}'", f"{result.before.sampled_reward_by_task[task]:.3f}",
                      f"{result.after.sampled_reward_by_task[task]:.3f}")
    console.print(table)
    console.print("greedy generations, before -> after (hidden reward):", highlight=False)
    for (prompt, b, rb), (_, a, ra) in zip(result.before.examples[:4], result.after.examples[:4], strict=True):
        console.print(f"  {prompt:10} {b:17} ({rb:.2f})  ->  {a:17} ({ra:.2f})", highlight=False)
    console.print(f"run directory: {result.run_dir}  ({result.seconds:.0f} s)", highlight=False)
    for path in result.plots:
        console.print(f"plot: {path}", highlight=False)


def plot_before_after(before: Snapshot, after: Snapshot, path: Path) -> Path:
    """A bar chart of the before/after numbers (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = ["pref. acc.\n(implicit)", "pref. acc.\n(log-prob)", "reward\ngreedy", "reward\nsampled"]
    keys = ["implicit_reward_accuracy", "policy_accuracy", "greedy_reward", "sampled_reward"]
    xs = range(len(keys))
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.bar([x - 0.2 for x in xs], [getattr(before, k) for k in keys], 0.4, label="before (SFT)")
    ax.bar([x + 0.2 for x in xs], [getattr(after, k) for k in keys], 0.4, label="after preference tuning")
    ax.set_xticks(list(xs), labels)
    ax.set_ylim(0, 1.05)
    ax.set_title(f"toy world, held out (KL to reference after: {after.kl:.2f} nats)")
    ax.legend(loc="lower right")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


__all__ = ["ToySettings", "QUICK", "Snapshot", "DemoResult", "run_demo", "run_config", "is_toy_config",
           "demo_config_path", "build_model", "sft_policy", "SFTObjective", "snapshot", "TOY_MARKER"]
