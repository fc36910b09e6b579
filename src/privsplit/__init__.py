"""privsplit: privacy-preserving hybrid (split) deep inference, after Osia et al. 2017.

The device runs the first layers of a CNN (the *feature extractor*), the cloud runs the rest (the
*analyzer*); the paper's embeddings make the features that cross the network useful for the primary
task (gender, emotion) and poor for identity.

The names a user needs first are here, imported **lazily** (on first use), so ``import privsplit`` -- and
the device client, which imports it -- loads no training, attack or report code::

    import privsplit

    model = privsplit.vgg16(width=0.25, input_size=64)
    extractor, analyzer = privsplit.split(model, at="conv5_3")
    emb = privsplit.build_embedding("advanced", model, layer="conv5_3", train=faces, column="gender", sigma=0.5)
    report = privsplit.audit(emb, faces_of_targets, profile="fast")      # worst case over privsplit.ATTACKS
    client = privsplit.Client("bundles/advanced/client", server="http://127.0.0.1:8000")

Everything else lives in the subpackages (``privsplit.models``, ``data``, ``train``, ``defenses``,
``attacks``, ``audit``, ``metrics``, ``edge``, ``runtime``, ``report``).
"""
from __future__ import annotations

import importlib
from typing import Any

from privsplit.lazy import lazy_exports

__version__ = "0.1.0"

#: public name -> the module that defines it (imported on first access)
_LAZY: dict[str, str] = {
    "split": "privsplit.models.split", "split_points": "privsplit.models.split",
    "vgg16": "privsplit.models.vgg", "vgg_s": "privsplit.models.vgg", "VGGConfig": "privsplit.models.vgg",
    "load_faces": "privsplit.data.faces", "load_manifest": "privsplit.data.loaders",
    "build_embedding": "privsplit.defenses.build", "Embedding": "privsplit.defenses.embedding",
    "save_bundles": "privsplit.defenses.bundles", "load_client_bundle": "privsplit.defenses.bundles",
    "load_server_bundle": "privsplit.defenses.bundles",
    "Client": "privsplit.runtime.client",
    "ATTACKS": "privsplit.attacks.base", "AuditReport": "privsplit.audit.report",
    "rank_privacy": "privsplit.metrics.rank",
    "Registry": "privsplit.registry", "MissingDependency": "privsplit.errors",
}

__all__ = ["__version__", "audit", *_LAZY]
_lazy_getattr, _ = lazy_exports(__name__, _LAZY)


def __getattr__(name: str) -> Any:
    if name == "audit":
        # the subpackage privsplit.audit is itself callable (it forwards to privsplit.audit.audit), so the
        # attribute stays the same object whether or not something imported the subpackage first
        return importlib.import_module("privsplit.audit")
    return _lazy_getattr(name)


def __dir__() -> list[str]:
    return sorted(__all__)
