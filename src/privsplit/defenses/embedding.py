"""The composed pipeline of an embedding: extractor -> reduce -> noise | reconstruct -> analyzer.

An :class:`Embedding` behaves like the model it came from (``embedding(x)`` gives logits), while
exposing the two halves that run on the device (:meth:`client_features`) and in the cloud
(:meth:`analyze`). Building one (Siamese fine-tuning, fitting PCA) lives in
:mod:`privsplit.defenses.build`; this module has no training code so the runtime can import it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from privsplit.defenses.noise import NoNoise
from privsplit.defenses.reduction import Reduction
from privsplit.registry import Registry

__all__ = ["EmbeddingKind", "EMBEDDINGS", "ZOO_KINDS", "Embedding", "embedding_kind"]


@dataclass(frozen=True)
class EmbeddingKind:
    """The paper's ingredients of a named embedding (Section III)."""

    name: str
    siamese: bool
    reduced: bool
    noisy: bool


def _kinds(kind: str, help_ref: str, table: str) -> Registry[EmbeddingKind]:
    """A registry of :class:`EmbeddingKind` from ``name S R N`` lines (1 = Siamese / reduced / noisy)."""
    reg: Registry[EmbeddingKind] = Registry(kind, help_ref=help_ref)
    for line in table.split(";"):
        name, *flags = line.split()
        reg.register(name, EmbeddingKind(name, *(f == "1" for f in flags)))
    return reg


#: The paper's named embeddings; ``advanced`` is the noisy reduced Siamese embedding. A registry like
#: every other named concept (``EMBEDDINGS.register(kind.name, kind)`` adds one; building it is
#: :func:`privsplit.defenses.build.build_embedding`'s job).
EMBEDDINGS = _kinds("embedding", "help(privsplit.defenses)",
                    "simple 0 0 0; reduced-simple 0 1 0; siamese 1 0 0; reduced-siamese 1 1 0;"
                    "noisy-reduced-simple 0 1 1; advanced 1 1 1")

#: Kinds of the defences and baselines of :mod:`privsplit.defenses.zoo` (built there, listed here so their
#: embeddings and bundles load without importing the training code).
ZOO_KINDS = _kinds("defence embedding", "help(privsplit.defenses.zoo)",
                   "nopeek 0 0 0; adversarial 0 0 0; siamese-adversarial 1 0 0; gaussian-split 0 0 1;"
                   "learned-noise 0 0 1; calibrated-noise 1 1 1; robust-advanced 1 1 1; blur 0 0 0; pixelate 0 0 0; send-image 0 0 0")


def embedding_kind(name: str) -> EmbeddingKind:
    """The :class:`EmbeddingKind` of a paper embedding or a zoo defence; an unknown name lists both."""
    if name in ZOO_KINDS:
        return ZOO_KINDS[name]
    if name not in EMBEDDINGS:
        raise ValueError(f"unknown embedding '{name}'; choose one of {', '.join(EMBEDDINGS)} "
                         f"(or a defence of privsplit.defenses.zoo: {', '.join(ZOO_KINDS)})")
    return EMBEDDINGS[name]


class Embedding(nn.Module):
    """Extractor, optional reduction and noise (device), reconstruction and analyzer (cloud).

    ``reduce``/``reconstruct`` are ``nn.Identity`` for unreduced embeddings and ``noise`` is
    :class:`~privsplit.defenses.noise.NoNoise` for noiseless ones, so every embedding has one shape.
    """

    def __init__(self, *, kind: str, layer: str, extractor: nn.Module, analyzer: nn.Module,
                 reduction: Reduction | None = None, noise: nn.Module | None = None) -> None:
        super().__init__()
        self.kind, self.layer = embedding_kind(kind).name, layer
        self.extractor, self.analyzer = extractor, analyzer
        self.reduce: nn.Module = reduction.reduce if reduction is not None else nn.Identity()
        self.reconstruct: nn.Module = reduction.reconstruct if reduction is not None else nn.Identity()
        self.reduction_config = dict(reduction.config) if reduction is not None else None
        self.noise = noise if noise is not None else NoNoise()

    @classmethod
    def from_parts(cls, *, kind: str, layer: str, extractor: nn.Module, analyzer: nn.Module, reduce: nn.Module,
                   reconstruct: nn.Module, noise: nn.Module, reduction_config: dict | None = None) -> Embedding:
        """Reassemble an embedding from loaded halves (e.g. a client and a server bundle)."""
        emb = cls(kind=kind, layer=layer, extractor=extractor, analyzer=analyzer, noise=noise)
        emb.reduce, emb.reconstruct, emb.reduction_config = reduce, reconstruct, reduction_config
        return emb

    def with_noise(self, noise: nn.Module) -> Embedding:
        """The same layers (shared, not copied) with another noise module: for noise sweeps.

        The copy keeps ``self``'s train/eval mode: a new module starts in training mode, and running a
        shared extractor in training mode (even one forward pass) rewrites its BatchNorm statistics
        for every embedding that shares it."""
        return Embedding.from_parts(kind=self.kind, layer=self.layer, extractor=self.extractor, analyzer=self.analyzer,
                                    reduce=self.reduce, reconstruct=self.reconstruct, noise=noise,
                                    reduction_config=self.reduction_config).train(self.training)

    def client_features(self, x: Tensor, *, noisy: bool = True) -> Tensor:
        """What leaves the device: extractor -> reduction -> (noise)."""
        z = self.reduce(self.extractor(x))
        return self.noise(z) if noisy else z

    def analyze(self, z: Tensor) -> Tensor:
        """What the cloud does with received features: reconstruction -> remaining layers."""
        return self.analyzer(self.reconstruct(z))

    def forward(self, x: Tensor) -> Tensor:
        return self.analyze(self.client_features(x))

    @torch.no_grad()
    def transmitted_shape(self, input_size: int) -> tuple[int, ...]:
        """Per-image shape of the transmitted features for ``input_size`` x ``input_size`` images."""
        was = self.training
        self.eval()
        shape = tuple(self.client_features(torch.zeros(1, 3, input_size, input_size), noisy=False).shape[1:])
        self.train(was)
        return shape
