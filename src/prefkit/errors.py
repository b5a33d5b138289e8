"""User-facing errors.

An expected user mistake (bad file, unknown loss, missing column, sequence too long...) raises a
``PrefkitError`` subclass whose message is one line saying what is wrong and how to fix it. The CLI
prints that line and exits 1 with no traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class PrefkitError(Exception):
    """An expected, user-fixable error. ``str(err)`` is a single line."""


class DataError(PrefkitError):
    """A problem in user data, located by source, line/row and field.

    ``str(err)`` reads e.g. ``data.jsonl line 17: field 'rejected' is empty``.
    """

    def __init__(self, message: str, *, source: str | None = None, line: int | None = None,
                 field: str | None = None, reason: str = "invalid"):
        self.source, self.line, self.field, self.reason = source, line, field, reason
        self.message = message
        where = " ".join(p for p in (source, f"line {line}" if line is not None else None) if p)
        super().__init__(f"{where}: {message}" if where else message)


class ConfigError(PrefkitError):
    """A bad configuration value or key, found before any model loads."""


def nearest(name: str, choices: Iterable[str]) -> str | None:
    """The closest valid name to ``name`` (for 'did you mean' hints), or None."""
    hits = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return hits[0] if hits else None


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` or an empty string."""
    hit = nearest(name, choices)
    return f" (did you mean {hit!r}?)" if hit else ""


def check_known_keys(values: Iterable[str], valid: Iterable[str], what: str) -> None:
    """Raise ConfigError for the first key of ``values`` not in ``valid``, naming the nearest one.

    ``what`` names the kind of key in the message, e.g. ``"encoding option"``.
    """
    names = list(valid)
    for key in values:
        if key not in names:
            raise ConfigError(f"unknown {what} {key!r}{did_you_mean(key, names)}; valid options: {names}")
