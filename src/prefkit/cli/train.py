"""``prefkit train`` and ``prefkit demo``: thin wrappers over ``prefkit.train.run`` and ``prefkit.toy``."""

from __future__ import annotations

import click

from prefkit.errors import ConfigError


@click.command(context_settings={"ignore_unknown_options": False})
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="YAML config file; without it, runs the built-in demo job.")
@click.option("--resume", is_flag=True, help="Continue from the run directory's latest checkpoint.")
@click.argument("overrides", nargs=-1)
def train(config_path: str | None, resume: bool, overrides: tuple[str, ...]) -> None:
    """Train a model: prefkit train --config FILE.yaml [key=value ...] [--resume].

    Overrides use dotted keys for nested sections, e.g. train.lr=1e-5 loss.beta=0.2 output.dir=runs/a.
    """
    from prefkit.train.config import load_config

    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"bad argument {item!r}; overrides are key=value (e.g. train.lr=1e-5)")
    if config_path is None and not overrides and not resume:
        _demo()
        return
    if config_path is None:
        raise ConfigError("overrides and --resume need --config FILE.yaml (plain `prefkit train` runs the demo)")
    cfg = load_config(config_path, overrides)  # every config error surfaces here, before any model loads
    from prefkit import toy

    if toy.is_toy_config(cfg):  # model.path: toy names the built-in toy world: the job is the demo
        result = toy.run_config(cfg, resume=resume)
    else:
        from prefkit.train.run import run

        result = run(cfg, resume=resume)
    shown = {k: round(v, 4) for k, v in result.items() if k in ("step", "loss", "rewards/accuracies",
                                                                   "eval/loss", "eval/rewards/accuracies")}
    click.echo(f"done: {shown or result}; outputs in {cfg.output.dir}")


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
