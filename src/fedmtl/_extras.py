"""Optional dependencies, imported where they are used: a missing one names the extra to install.

``import fedmtl`` loads none of them (tests/test_imports.py checks it), and importing one never
changes the root logger: Opacus calls ``logging.basicConfig`` on import, which would put a handler
on the user's root logger; :func:`require` takes back any root handler the import added.
"""

from __future__ import annotations

import importlib
import logging
from types import ModuleType


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the message names the ``pip install`` that adds it."""


def install_hint(extra: str) -> str:
    """The command that installs one of fedmtl's extras."""
    return f"pip install 'fedmtl[{extra}]'"


def require(module: str, extra: str, feature: str) -> ModuleType:
    """Import ``module`` for ``feature`` or raise :class:`MissingExtraError` naming ``extra``.

    Args:
        module: the module to import (``"opacus.accountants"``).
        extra: fedmtl's extra that installs it (``"privacy"``).
        feature: what needs it, for the message (``"DP accounting"``).

    Returns:
        The imported module.
    """
    root = logging.getLogger()
    before = list(root.handlers)
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        package = module.split(".")[0]
        raise MissingExtraError(f"{feature} needs {package!r}, which is not installed: {install_hint(extra)}") from exc
    finally:
        for handler in root.handlers[:]:
            if handler not in before:
                root.removeHandler(handler)
