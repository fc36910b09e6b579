"""Defences: the paper's embeddings, reduction, noise and deployable bundles.

Names that need training code (``build_embedding``, ``siamese_finetune``...) are imported lazily so
that the device client and the server, which import bundles, never load the training package.
"""
from __future__ import annotations

from typing import Any

from privsplit.defenses.bundles import (
    BundleError, ClientBundle, ServerBundle, check_pair, embedding_from_bundles, load_client_bundle, load_server_bundle, save_bundles,
)
from privsplit.defenses.embedding import EMBEDDINGS, Embedding, EmbeddingKind, embedding_kind
from privsplit.defenses.noise import GaussianNoise, NoNoise, add_noise, noise_from_spec
from privsplit.defenses.keyed import FileKeyStore, KeyedGaussianNoise, MemoryKeyStore  # registers "keyed-gaussian"
from privsplit.defenses.reduction import (
    REDUCTIONS, Reduction, available_reductions, build_reduction, fit_reduction, register_reduction,
)

_LAZY = {"build_embedding", "siamese_finetune", "cached_siamese", "extract_features", "SiameseConfig", "PAPER_DIMS"}

__all__ = ["BundleError", "ClientBundle", "ServerBundle", "check_pair", "embedding_from_bundles", "load_client_bundle", "load_server_bundle",
           "save_bundles", "EMBEDDINGS", "Embedding", "EmbeddingKind", "embedding_kind", "GaussianNoise", "NoNoise",
           "add_noise", "noise_from_spec", "KeyedGaussianNoise", "FileKeyStore", "MemoryKeyStore", "Reduction",
           "build_reduction", "fit_reduction", "REDUCTIONS", "register_reduction", "available_reductions",
           *sorted(_LAZY)]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from privsplit.defenses import build

        return getattr(build, name)
    raise AttributeError(f"module 'privsplit.defenses' has no attribute '{name}'")
