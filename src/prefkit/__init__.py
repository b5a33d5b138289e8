"""prefkit: learning from preference feedback."""

from __future__ import annotations

__version__ = "0.1.0"

from prefkit.errors import ConfigError, DataError, PrefkitError

__all__ = ["__version__", "PrefkitError", "DataError", "ConfigError"]
