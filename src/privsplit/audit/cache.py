"""Memoised noise-free client features, shared by every attack and seed of one audit.

Why: each attack computes the clean features of the same photos (enrolment, queries, other people)
with the attacker's copy of the client, for every seed and for the validation fit too; on LFW one pass
of the extractor over the attack and auxiliary photos is most of an attack's cost on 2 cores. The
extractor is deterministic (eval mode), so the audit gives each attack an embedding whose
``client_features`` looks its noise-free output up by the exact input batch; noise is still drawn
fresh on every call. Figures are those without the cache up to float rounding (a convolution's
result can differ in the last bits between batch compositions).

Safety: the cache is used only with gradients off (an attack that optimises through the extractor,
e.g. a white-box inversion, always runs it), and its key holds the identity and in-place version
counters of every extractor/reduction parameter, so an attack that fine-tunes the layers (or a copy of
them) never gets stale features.
"""
from __future__ import annotations

import hashlib
import types
from typing import TYPE_CHECKING, Any, TypeVar

import torch
from torch import Tensor

if TYPE_CHECKING:
    from privsplit.defenses.embedding import Embedding

__all__ = ["FeatureCache", "with_cache"]

E = TypeVar("E")


class FeatureCache:
    """Image (exact input tensor) -> noise-free features; ``hits``/``misses`` count images looked up.

    Keyed per image, not per batch: every seed draws other enrolment/query subsets of the same photos,
    so only per-image keys are shared across seeds (the other people's photos are shared by all).
    """

    def __init__(self) -> None:
        self.store: dict[tuple[object, ...], Tensor] = {}
        #: what attacks learn from the aux people alone, keyed by them (``privsplit.attacks.common.shared``)
        self.artifacts: dict[tuple[object, ...], object] = {}
        self.hits = self.misses = 0

    @staticmethod
    def prefix(embedding: Embedding) -> tuple[object, ...]:
        """What the features depend on besides the image: the layers and their in-place versions."""
        params = [p for m in (embedding.extractor, embedding.reduce) for p in m.parameters()]
        return (id(embedding.extractor), id(embedding.reduce), tuple((id(p), p._version) for p in params))

    def features(self, embedding: Embedding, x: Tensor) -> Tensor:
        """Noise-free features of the batch ``x``, computing only the images not seen before."""
        pre = self.prefix(embedding)
        rows = x.detach().contiguous().cpu().numpy()
        keys = [pre + (r.shape, str(r.dtype), hashlib.blake2b(r.tobytes(), digest_size=16).digest()) for r in rows]
        missing = [i for i, k in enumerate(keys) if k not in self.store]
        if missing:
            new = embedding.reduce(embedding.extractor(x[missing]))
            for j, i in enumerate(missing):
                self.store[keys[i]] = new[j]
        self.misses += len(missing)
        self.hits += len(keys) - len(missing)
        return torch.stack([self.store[k] for k in keys])


def _cached_client_features(self: Any, x: Tensor, *, noisy: bool = True) -> Tensor:
    if torch.is_grad_enabled() or self.extractor.training:
        z = self.reduce(self.extractor(x))
    else:
        z = self._feature_cache.features(self, x)
    return self.noise(z) if noisy else z


def with_cache(embedding: E, cache: FeatureCache) -> E:
    """A view of ``embedding`` (same layers and noise) whose ``client_features`` uses ``cache``; the
    embedding itself unchanged. Objects without the ``Embedding`` shape are returned as they are."""
    if not all(hasattr(embedding, a) for a in ("with_noise", "extractor", "reduce", "noise")):
        return embedding
    view = embedding.with_noise(embedding.noise)
    view._feature_cache = cache
    view._artifacts = cache.artifacts
    view.client_features = types.MethodType(_cached_client_features, view)
    return view
