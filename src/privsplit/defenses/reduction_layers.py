"""The deployable halves of a reduction: plain ``nn.Linear`` modules that ship in the bundles
(see :mod:`privsplit.defenses.reduction` for the whole story). Nothing here fits anything."""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["Reduction", "DenseReduce", "DenseReconstruct", "CONFIG_KEYS"]

#: Keys of :attr:`Reduction.config` (all required by :func:`~privsplit.defenses.reduction.build_reduction`).
CONFIG_KEYS: tuple[str, ...] = ("kind", "dim", "feature_shape", "hidden")


class DenseReduce(nn.Module):
    """Flatten, then ``[Linear(D, hidden) -> ReLU ->] Linear(-, dim)``: the extractor's last layer."""

    def __init__(self, feature_shape: Sequence[int], dim: int, *, hidden: int | None = None) -> None:
        super().__init__()
        self.feature_shape = tuple(int(s) for s in feature_shape)
        self.in_features = math.prod(self.feature_shape)
        self.dim = int(dim)
        self.hidden = nn.Linear(self.in_features, hidden) if hidden else None
        self.out = nn.Linear(hidden if hidden else self.in_features, self.dim)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() < 2 or math.prod(x.shape[1:]) != self.in_features:
            raise ValueError(
                f"reduce expects (N, *{self.feature_shape}) or (N, {self.in_features}) features, got "
                f"{tuple(x.shape)}: fit the reduction on activations of this split layer"
            )
        h = x.flatten(1)
        if self.hidden is not None:
            h = torch.relu(self.hidden(h))
        return self.out(h)


class DenseReconstruct(nn.Module):
    """``[Linear(dim, hidden) -> ReLU ->] Linear(-, D)``, then unflatten: the analyzer's first layer."""

    def __init__(self, dim: int, feature_shape: Sequence[int], *, hidden: int | None = None) -> None:
        super().__init__()
        self.feature_shape = tuple(int(s) for s in feature_shape)
        self.out_features = math.prod(self.feature_shape)
        self.dim = int(dim)
        self.hidden = nn.Linear(self.dim, hidden) if hidden else None
        self.out = nn.Linear(hidden if hidden else self.dim, self.out_features)

    def forward(self, z: Tensor) -> Tensor:
        if z.dim() != 2 or z.shape[1] != self.dim:
            raise ValueError(f"reconstruct expects reduced features of shape (N, {self.dim}), got {tuple(z.shape)}")
        h = z
        if self.hidden is not None:
            h = torch.relu(self.hidden(h))
        return self.out(h).reshape(-1, *self.feature_shape)


class Reduction(nn.Module):
    """A fitted (or freshly built) reduction: ``reduce`` (device side) and ``reconstruct`` (cloud side).

    Attributes:
        reduce: :class:`DenseReduce`, ``(N, *feature_shape) -> (N, dim)``.
        reconstruct: :class:`DenseReconstruct`, ``(N, dim) -> (N, *feature_shape)``.
        config: ``{"kind", "dim", "feature_shape", "hidden"}`` (JSON-friendly) for :func:`build_reduction`.
        info: fit diagnostics, not needed to rebuild (PCA: explained variance; autoencoder: loss
            history). Empty for a built-but-not-fitted reduction.

    ``forward(x)`` is ``reconstruct(reduce(x))`` (handy to measure reconstruction error).
    """

    def __init__(self, *, kind: str, dim: int, feature_shape: Sequence[int], hidden: int | None = None,
                 info: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        feature_shape = _check_shape(feature_shape)
        dim = _check_dim(dim, math.prod(feature_shape))
        if hidden is not None:
            if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1:
                raise ValueError(f"hidden must be a positive int or None, got {hidden!r}")
        self.reduce = DenseReduce(feature_shape, dim, hidden=hidden)
        self.reconstruct = DenseReconstruct(dim, feature_shape, hidden=hidden)
        self.config: dict[str, Any] = {
            "kind": str(kind), "dim": dim, "feature_shape": list(feature_shape), "hidden": hidden,
        }
        self.info: dict[str, Any] = dict(info or {})

    @property
    def dim(self) -> int:
        """The reduced size ``k`` (numbers sent per image)."""
        return int(self.config["dim"])

    @property
    def feature_shape(self) -> tuple[int, ...]:
        """The split layer's activation shape ``(C, H, W)`` that is reduced and reconstructed."""
        return tuple(self.config["feature_shape"])

    def forward(self, x: Tensor) -> Tensor:
        return self.reconstruct(self.reduce(x))

    def extra_repr(self) -> str:
        c = self.config
        return f"kind={c['kind']!r}, dim={c['dim']}, feature_shape={tuple(c['feature_shape'])}, hidden={c['hidden']}"


def _check_shape(feature_shape: Sequence[int]) -> tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in feature_shape)
    except TypeError as exc:
        raise TypeError(f"feature_shape must be a sequence of ints, got {feature_shape!r}") from exc
    if not shape or any(s < 1 for s in shape):
        raise ValueError(f"feature_shape must be non-empty with positive sizes, got {feature_shape!r}")
    return shape


def _check_dim(dim: Any, in_features: int) -> int:
    if isinstance(dim, bool) or not isinstance(dim, int):
        raise TypeError(f"dim must be an int, got {type(dim).__name__}")
    if not 1 <= dim <= in_features:
        raise ValueError(f"dim must be between 1 and the flattened feature size {in_features}, got {dim}")
    return dim


