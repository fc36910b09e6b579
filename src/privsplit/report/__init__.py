"""Reports: the experiments behind the paper's tables and figures (``privsplit reproduce``), and plots.

Names are imported lazily: ``import privsplit.report`` loads nothing heavy until one is used.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "reproduce": "pipeline", "load_config": "pipeline", "Context": "context", "Stage": "context",
    "STAGES": "stages", "render_report": "render", "PAPER": "render", "Document": "document",
    "rank_privacy_of": "experiments", "noise_tradeoff": "experiments", "embedding_table": "experiments",
    "plot_attack_bars": "plots", "plot_tradeoff": "plots", "plot_audit": "plots",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"privsplit.report.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'privsplit.report' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted(__all__)
