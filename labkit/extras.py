"""The optional parts of labkit and the one line that says how to install a missing one.

The core (`pip install labkit-decoding`) runs the engine, every method, the CLI and the benchmark; the app, the
notebooks' widgets and the second embedded model are extras (pyproject.toml).
"""
from __future__ import annotations

import importlib
from types import ModuleType

DIST = "labkit-decoding"


class MissingExtra(ImportError):
    """An optional dependency that is not installed; the message names the extra to install."""


def install_hint(extra: str) -> str:
    return f"pip install '{DIST}[{extra}]'"


def require(module: str, extra: str, what: str) -> ModuleType:
    """Import `module` or fail with one line: `what` needs it, and the command that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtra(f"{what} needs {module.split('.')[0]}: {install_hint(extra)}") from None
