"""The ``prefkit`` command: a dict of subcommand groups over library functions.

Each group lives in its own module (``prefkit.cli.data``, ``prefkit.cli.losses``...) and exposes a
``click`` command or group named ``command``. Expected user mistakes (``PrefkitError``) print one line
and exit 1, with no traceback.
"""

from __future__ import annotations

import importlib
import sys

import click

import prefkit
from prefkit.errors import PrefkitError

# name -> module holding ``command``; the single list of subcommands.
COMMANDS: dict[str, str] = {
    "data": "prefkit.cli.data",
    "losses": "prefkit.cli.losses",
    "train": "prefkit.cli.train",
    "demo": "prefkit.cli.train",
    "rm": "prefkit.cli.rm",
    "bon": "prefkit.cli.rm",
    "testing": "prefkit.cli.testing",
    "online": "prefkit.cli.online",
    "report": "prefkit.cli.report",
    "arena": "prefkit.cli.arena",
    "eval": "prefkit.cli.evaluate",
}


class _Group(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        try:
            module = importlib.import_module(COMMANDS[name])
        except ImportError as err:  # a broken install or a missing dependency, not "no such command"
            raise click.ClickException(f"command {name!r} cannot load: {err}; reinstall prefkit "
                                       "(pip install -e .) or install the missing package") from err
        return getattr(module, "commands", {}).get(name)


@click.command(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(prefkit.__version__, prog_name="prefkit")
def cli() -> None:
    """prefkit: learning from preference feedback."""


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the CLI, turning PrefkitError into one line on stderr and exit code 1."""
    try:
        rv = cli.main(args=argv, prog_name="prefkit", standalone_mode=False)
    except PrefkitError as err:
        click.echo(f"error: {err}", err=True)
        return 1
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 1
    except click.ClickException as err:
        err.show()
        return err.exit_code
    except click.exceptions.Exit as err:
        return err.exit_code
    except (FileNotFoundError, IsADirectoryError, PermissionError) as err:
        click.echo(f"error: {err}", err=True)
        return 1
    return rv if isinstance(rv, int) else 0


if __name__ == "__main__":
    sys.exit(main())
