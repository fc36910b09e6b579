"""The paper's facts about where to split and how far to reduce, in one place (Osia et al. 2017, VI-A..C).

* :data:`PAPER_DIMS` -- the PCA dimension the paper used after each split layer (8/6/4 after VGG-16's
  conv5_1/2/3, 10 after VGG-S conv5);
* :data:`PAPER_SPLIT_LAYERS` -- the split layers of its mobile evaluation, per architecture;
* :data:`DEFAULT_SPLIT_LAYER` -- the split the paper recommends per architecture (the deepest one).

Everything else (``privsplit embed``'s default dim, ``privsplit cost``, ``privsplit reproduce``) reads
them from here, so a fact is changed once.
"""
from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

__all__ = ["PAPER_DIMS", "PAPER_SPLIT_LAYERS", "DEFAULT_SPLIT_LAYER", "FALLBACK_DIM", "paper_dim", "default_split_layer"]

#: reduced dimension the paper used per split layer (Section VI-A, VI-B)
PAPER_DIMS: Mapping[str, int] = MappingProxyType({"conv5_1": 8, "conv5_2": 6, "conv5_3": 4, "conv5": 10})
#: used for a layer the paper did not reduce after (its mid-range choice)
FALLBACK_DIM = 8
#: split layers of the paper's mobile evaluation, per architecture
PAPER_SPLIT_LAYERS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {"vgg16": ("conv5_1", "conv5_2", "conv5_3"), "vgg_s": ("conv5",)})
#: the recommended split per architecture: the deepest evaluated layer
DEFAULT_SPLIT_LAYER: Mapping[str, str] = MappingProxyType({a: ls[-1] for a, ls in PAPER_SPLIT_LAYERS.items()})


def paper_dim(layer: str) -> int:
    """The paper's reduced dimension for ``layer`` (:data:`FALLBACK_DIM` when it did not use that layer)."""
    return PAPER_DIMS.get(layer, FALLBACK_DIM)


def default_split_layer(arch: str) -> str:
    """The paper's recommended split layer for ``arch``; ``ValueError`` naming the known ones otherwise."""
    try:
        return DEFAULT_SPLIT_LAYER[arch]
    except KeyError:
        raise ValueError(f"no default split layer for '{arch}'; known: {', '.join(DEFAULT_SPLIT_LAYER)}") from None
