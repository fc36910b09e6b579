"""Reports: the experiments behind the paper's tables and figures (``privsplit reproduce``), and plots.

Names are imported lazily: ``import privsplit.report`` loads nothing heavy until one is used.
"""
from __future__ import annotations

from privsplit.lazy import lazy_exports

_EXPORTS = {
    "reproduce": "pipeline", "load_config": "pipeline", "Context": "context", "Stage": "context",
    "STAGES": "stages", "render_report": "render", "PAPER": "render", "Document": "document",
    "rank_privacy_of": "experiments", "noise_tradeoff": "experiments", "embedding_table": "experiments",
    "plot_attack_bars": "plots", "plot_tradeoff": "plots", "plot_audit": "plots",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, {name: f".{mod}" for name, mod in _EXPORTS.items()})
