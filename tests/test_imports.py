"""Every module of the package imports (catches NameErrors and broken imports before users do)."""

import importlib
import pkgutil

import pytest

import prefkit

MODULES = sorted(m.name for m in pkgutil.walk_packages(prefkit.__path__, prefix="prefkit."))


@pytest.mark.parametrize("name", MODULES)
def test_module_imports(name: str) -> None:
    importlib.import_module(name)


def test_version() -> None:
    assert prefkit.__version__


@pytest.mark.parametrize("name", sorted(prefkit._EXPORTS))
def test_public_api_resolves(name: str) -> None:
    assert getattr(prefkit, name) is not None
