"""Lazy facades: a package lists ``name -> module`` and gets a module ``__getattr__`` and ``__dir__`` for them.

Foundation (imports nothing of privsplit). Used by the package root, ``edge``, ``runtime`` and ``report`` so that
importing a facade loads none of the modules behind it -- the device client imports ``privsplit`` but must
not load training code, and ``privsplit.edge`` must not load the exporter on a phone.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(package: str, exports: Mapping[str, str]) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``: ``exports`` maps a public name to the module defining it
    (absolute, or relative to ``package`` with a leading dot)."""
    exports = dict(exports)

    def __getattr__(name: str) -> Any:
        if name in exports:
            return getattr(importlib.import_module(exports[name], package), name)
        raise AttributeError(f"module '{package}' has no attribute '{name}'")

    def __dir__() -> list[str]:
        return sorted(exports)

    return __getattr__, __dir__
