"""Desired and recorded state: SQLAlchemy models, repository, secrets at rest.

Names are loaded on first use (PEP 562), so `xfrmctl.store.secrets` alone does not pull in
SQLAlchemy: the daemon in file mode starts faster.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "Database": ".db", "make_engine": ".db", "Conflict": ".repo", "InvalidField": ".repo",
    "NotFound": ".repo", "SecretBox": ".secrets",
}

__all__ = ["Conflict", "Database", "InvalidField", "NotFound", "SecretBox", "make_engine"]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name], __name__), name)
