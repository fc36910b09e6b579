"""Dimensionality reduction of split-layer features (Osia et al. 2017, Section III-B, Fig. 3b).

The last layer of the on-device feature extractor is a dense *reduction* ``D -> k`` and the first layer
of the cloud analyzer a dense *reconstruction* ``k -> D``; only the ``k`` numbers cross the network
(less to send, and less identity information in them). They are fitted on split-layer activations
``(N, *feature_shape)`` of a training set, either by PCA or by a small autoencoder.

A :class:`Reduction` holds the two halves as plain ``nn.Linear``-based modules, so each half exports to
ONNX on its own and saves to safetensors through ``state_dict()``; ``config`` (kind, dim,
feature_shape, hidden) is all :func:`build_reduction` needs to rebuild empty modules to load weights
into::

    red = fit_reduction("pca", feats, dim=8)           # feats: (N, C, H, W)
    z = red.reduce(feats)                              # (N, 8)      -- on device
    x_hat = red.reconstruct(z)                         # (N, C, H, W) -- in the cloud
    fresh = build_reduction(red.config); fresh.load_state_dict(red.state_dict())

Module layout (state_dict keys): ``reduce.out.{weight,bias}``, plus ``reduce.hidden.*`` when
``hidden`` is set; ``reconstruct.out.*`` plus ``reconstruct.hidden.*``. Both halves accept or return
``(N, *feature_shape)``; ``reduce`` also accepts already-flattened ``(N, D)`` input.

New kinds register into :data:`REDUCTIONS` (a :class:`privsplit.registry.Registry`), from inside the package
or from user code, with :func:`register_reduction` (also a decorator); :func:`available_reductions` lists them::

    @register_reduction("random")
    def fit_random(features, *, dim, seed=0): ...   # -> Reduction(kind="random", ...)

The deployable halves live in :mod:`privsplit.defenses.reduction_layers`, the fitters in
:mod:`privsplit.defenses.reduction_fit`; this module is the registry and re-exports both.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor

from privsplit.defenses.reduction_fit import fit_autoencoder, fit_pca
from privsplit.defenses.reduction_layers import CONFIG_KEYS, DenseReconstruct, DenseReduce, Reduction
from privsplit.registry import Registry

__all__ = [
    "Reduction",
    "DenseReduce",
    "DenseReconstruct",
    "REDUCTIONS",
    "fit_reduction",
    "build_reduction",
    "register_reduction",
    "available_reductions",
    "fit_pca",
    "fit_autoencoder",
    "CONFIG_KEYS",
]

#: ``fitter(features, *, dim, **options) -> Reduction`` per reduction kind
Fitter = Callable[..., Reduction]
#: kind -> fitter; ``REDUCTIONS.register("mine", fit_mine)`` or :func:`register_reduction`
REDUCTIONS: Registry[Fitter] = Registry("reduction", help_ref="help(privsplit.defenses.reduction)")
REDUCTIONS.register("pca", fit_pca)
REDUCTIONS.register("autoencoder", fit_autoencoder)


def register_reduction(kind: str, fitter: Fitter | None = None, *, overwrite: bool = False) -> Any:
    """Register ``fitter(features, *, dim, **options) -> Reduction`` under ``kind`` (a decorator without ``fitter``).

    The fitted :class:`Reduction` should carry ``kind`` so :func:`build_reduction` rebuilds it from a bundle.
    Registering a taken name raises :class:`~privsplit.registry.RegistryError` (a ``ValueError``) unless
    ``overwrite=True``.
    """
    return REDUCTIONS.register(kind, replace=overwrite) if fitter is None else \
        REDUCTIONS.register(kind, fitter, replace=overwrite)


def available_reductions() -> list[str]:
    """Registered reduction kinds, sorted (``['autoencoder', 'pca']`` by default)."""
    return sorted(REDUCTIONS.names())


def fit_reduction(kind: str, features: Tensor, *, dim: int, **options: Any) -> Reduction:
    """Fit a reduction of kind ``kind`` (``"pca"`` or ``"autoencoder"``) to ``(N, *feature_shape)`` features.

    ``options`` go to the fitter: :func:`fit_pca` (``whiten``) or :func:`fit_autoencoder` (``hidden``,
    ``epochs``, ``lr``, ``batch_size``, ``weight_decay``, ``seed``).
    """
    fitter = REDUCTIONS.get(kind)  # unknown: RegistryError (a ValueError) listing the choices
    try:
        return fitter(features, dim=dim, **options)
    except TypeError as exc:
        if "unexpected keyword argument" in str(exc):
            raise TypeError(f"{exc}; see help(privsplit.defenses.reduction.{fitter.__name__}) for the "
                            f"options of kind {kind!r}") from None
        raise


def build_reduction(config: Mapping[str, Any]) -> Reduction:
    """Rebuild an *unfitted* :class:`Reduction` from ``config`` (e.g. a manifest) to load weights into.

    ``config`` needs exactly the keys of :data:`CONFIG_KEYS`; ``kind`` must be registered. The modules
    come out freshly initialised (float32, CPU): call ``load_state_dict`` (and ``.to(...)``) next.
    """
    if not isinstance(config, Mapping):
        raise TypeError(f"config must be a mapping like Reduction.config, got {type(config).__name__}")
    missing = [k for k in CONFIG_KEYS if k not in config]
    unknown = [k for k in config if k not in CONFIG_KEYS]
    if missing or unknown:
        raise ValueError(
            f"reduction config must have exactly the keys {list(CONFIG_KEYS)}: missing {missing}, unknown {unknown}"
        )
    kind = config["kind"]
    REDUCTIONS.get(kind)  # unknown: RegistryError (a ValueError) listing the choices
    if kind == "pca" and config["hidden"] is not None:
        raise ValueError("a 'pca' reduction has no hidden layer: set hidden to None in the config")
    return Reduction(kind=kind, dim=config["dim"], feature_shape=config["feature_shape"], hidden=config["hidden"])
