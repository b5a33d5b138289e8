"""``prefkit train`` subcommands (placeholder until implemented)."""

from __future__ import annotations

import click

commands: dict[str, click.Command] = {}
