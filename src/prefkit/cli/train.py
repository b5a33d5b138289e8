"""``prefkit train`` and ``prefkit demo``: thin wrappers over ``prefkit.train.run`` and ``prefkit.toy``."""

from __future__ import annotations

import click

from prefkit.errors import ConfigError


@click.command(context_settings={"ignore_unknown_options": True})
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="YAML config file; without it, runs the built-in demo job.")
@click.option("--resume", is_flag=True, help="Continue from the run directory's latest checkpoint.")
@click.argument("overrides", nargs=-1)
def train(config_path: str | None, resume: bool, overrides: tuple[str, ...]) -> None:
    """Train a model: prefkit train --config FILE.yaml [key=value ...] [--resume].

    Overrides use dotted keys for nested sections, e.g. train.lr=1e-5 loss.beta=0.2 output.dir=runs/a;
    --key value and --key=value work too, and TRL's names (--learning_rate 1e-5, --max_steps 5) map to
    prefkit's keys with a note (docs/trl.md).
    """
    from prefkit.train.config import load_config
    from prefkit.train.trl import flags_to_overrides

    overrides = tuple(flags_to_overrides(overrides))
    if config_path is None and not overrides and not resume:
        _demo()
        return
    if config_path is None:
        raise ConfigError("overrides and --resume need --config FILE.yaml (plain `prefkit train` runs the demo)")
    cfg = load_config(config_path, overrides)  # every config error surfaces here, before any model loads
    from prefkit import toy

    if toy.is_toy_config(cfg):  # model.path: toy names the built-in toy world: the job is the demo
        if cfg.eval.enabled:
            raise ConfigError("the eval: section needs a model folder; the toy demo job does not run it")
        result = toy.run_config(cfg, resume=resume)
    else:
        from prefkit.eval.during_training import evaluator_factory
        from prefkit.train.run import run

        result = run(cfg, resume=resume, evaluators=evaluator_factory(cfg))  # checks eval: before models load
    click.echo(done_line(result, cfg.output.dir))


_SHOWN = (("step", "step", "{:d}"), ("loss", "loss", "{:.4f}"), ("rewards/accuracies", "accuracy", "{:.3f}"),
          ("eval/loss", "eval loss", "{:.4f}"), ("eval/rewards/accuracies", "eval accuracy", "{:.3f}"))


def done_line(result: dict, out_dir: str) -> str:
    """``done: step 3, loss 0.6928, accuracy 1.000; outputs in runs/dpo`` from a run's final metrics."""
    parts = []
    for key, label, fmt in _SHOWN:
        value = result.get(key)
        if isinstance(value, int | float) and value == value:  # NaN (no such metric this run) is left out
            parts.append(f"{label} {fmt.format(int(value) if fmt == '{:d}' else float(value))}")
    return f"done: {', '.join(parts) or 'no metrics'}; outputs in {out_dir}"


def _demo(**kwargs: object) -> None:
    from prefkit import toy

    run_demo = getattr(toy, "run_demo", None)
    if run_demo is None:
        raise ConfigError("the demo is not available in this build (prefkit.toy.run_demo missing)")
    run_demo(**kwargs)


@click.command()
def demo() -> None:
    """Run the built-in demo job (toy world, no downloads)."""
    _demo()


commands: dict[str, click.Command] = {"train": train, "demo": demo}
