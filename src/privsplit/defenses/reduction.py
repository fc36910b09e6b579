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

New kinds register with :func:`register_reduction`; :func:`available_reductions` lists them.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "Reduction",
    "DenseReduce",
    "DenseReconstruct",
    "fit_reduction",
    "build_reduction",
    "register_reduction",
    "available_reductions",
    "fit_pca",
    "fit_autoencoder",
    "CONFIG_KEYS",
]

#: Keys of :attr:`Reduction.config` (all required by :func:`build_reduction`).
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
        return int(self.config["dim"])

    @property
    def feature_shape(self) -> tuple[int, ...]:
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


def _check_features(features: Tensor) -> Tensor:
    if not isinstance(features, Tensor):
        raise TypeError(f"features must be a torch.Tensor of shape (N, *feature_shape), got {type(features).__name__}")
    if features.dim() < 2:
        raise ValueError(
            f"features must be (N, *feature_shape) with a sample axis, got shape {tuple(features.shape)}: "
            "for one feature vector per sample use (N, D)"
        )
    if features.shape[0] < 2:
        raise ValueError(f"need at least 2 feature samples to fit a reduction, got {features.shape[0]}")
    if not features.is_floating_point():
        raise TypeError(f"features must be floating point, got {features.dtype}: call .float() first")
    if not torch.isfinite(features).all():
        raise ValueError("features contain NaN or inf: check the extractor (or drop those samples) before fitting")
    return features


def _module_dtype(features: Tensor) -> torch.dtype:
    return torch.float64 if features.dtype == torch.float64 else torch.float32


# ----------------------------------------------------------------------------------------- PCA


def _pca_components(x: Tensor, dim: int, chunk: int = 4096) -> tuple[Tensor, Tensor, Tensor]:
    """Exact top-``dim`` PCA of ``x`` (N, D) in float64: (mean (D,), components (dim, D), variances (dim,)).

    Thin SVD of the centred data when ``N <= D`` (cost ~N^2 D), else ``eigh`` of the D x D scatter
    matrix accumulated in row chunks (cost ~N D^2 + D^3, memory D^2 rather than N D in float64).
    Signs follow scikit-learn's ``svd_flip(u_based_decision=False)``: in each component the entry of
    largest magnitude is positive, which depends only on the component, so both paths agree.
    """
    n, d = x.shape
    mean = torch.zeros(d, dtype=torch.float64, device=x.device)
    for start in range(0, n, chunk):
        mean += x[start:start + chunk].to(torch.float64).sum(dim=0)
    mean /= n
    if n <= d:
        xc = x.to(torch.float64) - mean
        _, s, vt = torch.linalg.svd(xc, full_matrices=False)
        comps, var = vt[:dim], (s[:dim] ** 2) / (n - 1)
    else:
        scatter = torch.zeros(d, d, dtype=torch.float64, device=x.device)
        for start in range(0, n, chunk):
            xc = x[start:start + chunk].to(torch.float64) - mean
            scatter += xc.T @ xc
        evals, evecs = torch.linalg.eigh(scatter)
        comps = evecs[:, -dim:].flip(1).T.contiguous()
        var = torch.clamp(evals[-dim:].flip(0), min=0.0) / (n - 1)
    pivot = comps.abs().argmax(dim=1)
    signs = torch.sign(comps.gather(1, pivot[:, None]))
    signs[signs == 0] = 1.0
    return mean, comps * signs, var


def fit_pca(features: Tensor, *, dim: int, whiten: bool = False) -> Reduction:
    """PCA reduction, numerically the same as ``sklearn.decomposition.PCA(n_components=dim)``.

    ``reduce(x) = components @ (x - mean)`` is stored as ``weight = components``,
    ``bias = -components @ mean``; ``reconstruct(z) = components.T @ z + mean`` as ``weight =
    components.T``, ``bias = mean``. With ``dim = D`` (and ``N > D``) reduce -> reconstruct is the
    identity. Fitting runs in float64; the modules are float32 (float64 if ``features`` are).

    Args:
        features: ``(N, *feature_shape)`` split-layer activations.
        dim: number of components, ``1 <= dim <= min(N, D)``.
        whiten: divide each component by its standard deviation (``sklearn`` ``whiten=True``), so the
            reduced features have unit variance; reconstruct multiplies it back. Default False (the
            paper's plain PCA projection).
    """
    features = _check_features(features)
    shape = tuple(features.shape[1:])
    x = features.detach().flatten(1)
    n, d = x.shape
    _check_dim(dim, d)
    if dim > n:
        raise ValueError(f"PCA dim={dim} exceeds the number of samples {n}: use dim <= {min(n, d)} or more samples")
    mean, comps, var = _pca_components(x, dim)
    enc_w, dec_w = comps, comps.T
    if whiten:
        if float(var.max()) <= 0.0 or bool((var <= 1e-12 * float(var.max())).any()):
            raise ValueError(
                "whiten=True but some kept components have ~zero variance (the features have rank < dim): "
                "lower dim or use whiten=False"
            )
        sd = var.sqrt()
        enc_w, dec_w = comps / sd[:, None], comps.T * sd[None, :]
    total_var = float(((x.to(torch.float64) - mean) ** 2).sum() / (n - 1))
    info = {
        "explained_variance": var.tolist(),
        "explained_variance_ratio": (var / total_var).tolist() if total_var > 0 else [0.0] * dim,
        "whiten": bool(whiten),
        "n_samples": n,
    }
    red = Reduction(kind="pca", dim=dim, feature_shape=shape, hidden=None, info=info)
    dtype = _module_dtype(features)
    with torch.no_grad():
        red.reduce.out.weight.copy_(enc_w)
        red.reduce.out.bias.copy_(-(enc_w @ mean))
        red.reconstruct.out.weight.copy_(dec_w)
        red.reconstruct.out.bias.copy_(mean)
    return red.to(device=features.device, dtype=dtype)


# ---------------------------------------------------------------------------------- autoencoder


def fit_autoencoder(
    features: Tensor,
    *,
    dim: int,
    hidden: int | None = None,
    epochs: int = 100,
    lr: float = 1e-2,
    batch_size: int = 64,
    weight_decay: float = 0.0,
    seed: int = 0,
) -> Reduction:
    """Dense autoencoder reduction trained with MSE on the features (Adam, full passes, CPU-quick).

    ``hidden=None`` gives a linear autoencoder (one ``Linear`` each way, like PCA but learned);
    ``hidden=h`` adds one ReLU hidden layer of width ``h`` on each side.

    Choices: inputs are standardised during training by the data mean and one global standard
    deviation (so ``lr`` does not depend on the activations' scale); afterwards that affine map is
    folded into the first encoder and last decoder ``Linear``, so the result is still plain ``Linear``
    layers on raw features. Initialisation and batch order come from ``seed`` inside
    ``torch.random.fork_rng`` (the global RNG is untouched); fitting is deterministic for a given seed
    on one machine. ``info["loss_history"]`` holds the per-epoch mean MSE in the features' own units
    and ``info["mse"]`` the final full-data reconstruction MSE.

    Args:
        features: ``(N, *feature_shape)`` split-layer activations.
        dim: bottleneck size ``k``.
        hidden: width of the optional hidden layer.
        epochs, lr, batch_size, weight_decay: Adam training settings.
        seed: RNG seed for initialisation and shuffling.
    """
    features = _check_features(features)
    shape = tuple(features.shape[1:])
    for name, val in (("epochs", epochs), ("batch_size", batch_size), ("seed", seed)):
        if isinstance(val, bool) or not isinstance(val, int) or val < (0 if name == "seed" else 1):
            raise ValueError(f"{name} must be a {'non-negative' if name == 'seed' else 'positive'} int, got {val!r}")
    if not (lr > 0 and math.isfinite(lr)):
        raise ValueError(f"lr must be positive and finite, got {lr!r}")
    dtype = _module_dtype(features)
    x = features.detach().flatten(1).to(dtype)
    n, d = x.shape
    _check_dim(dim, d)
    mean = x.mean(dim=0)
    scale = float((x - mean).pow(2).mean().sqrt())
    if scale == 0.0:
        raise ValueError("features are constant (zero variance): nothing for an autoencoder to learn")
    xs = (x - mean) / scale

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        red = Reduction(kind="autoencoder", dim=dim, feature_shape=shape, hidden=hidden)
        red = red.to(device=x.device, dtype=dtype)
        gen = torch.Generator().manual_seed(seed)
        opt = torch.optim.Adam(red.parameters(), lr=lr, weight_decay=weight_decay)
        history: list[float] = []
        for _ in range(epochs):
            perm = torch.randperm(n, generator=gen).to(x.device)
            total = 0.0
            for start in range(0, n, batch_size):
                xb = xs[perm[start:start + batch_size]]
                loss = torch.mean((red.reconstruct(red.reduce(xb)).flatten(1) - xb) ** 2)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * xb.shape[0]
            history.append(total / n * scale ** 2)

    # Fold the standardisation x_s = (x - mean) / scale into the outer layers.
    with torch.no_grad():
        first = red.reduce.hidden if red.reduce.hidden is not None else red.reduce.out
        first.bias.sub_(first.weight @ mean / scale)
        first.weight.div_(scale)
        last = red.reconstruct.out
        last.weight.mul_(scale)
        last.bias.mul_(scale).add_(mean)
        mse = float(((red(x).flatten(1) - x) ** 2).mean())
    red.info = {"loss_history": history, "mse": mse, "epochs": epochs, "lr": lr, "seed": seed,
                "batch_size": batch_size, "weight_decay": weight_decay, "n_samples": n}
    red.zero_grad(set_to_none=True)
    return red


# ------------------------------------------------------------------------------------- registry

Fitter = Callable[..., Reduction]
_REGISTRY: dict[str, Fitter] = {"pca": fit_pca, "autoencoder": fit_autoencoder}


def register_reduction(kind: str, fitter: Fitter, *, overwrite: bool = False) -> None:
    """Register ``fitter(features, *, dim, **options) -> Reduction`` under ``kind``."""
    if not isinstance(kind, str) or not kind:
        raise ValueError("kind must be a non-empty string")
    if kind in _REGISTRY and not overwrite:
        raise ValueError(f"reduction kind {kind!r} is already registered: pass overwrite=True to replace it")
    _REGISTRY[kind] = fitter


def available_reductions() -> list[str]:
    """Registered reduction kinds, sorted (``['autoencoder', 'pca']`` by default)."""
    return sorted(_REGISTRY)


def fit_reduction(kind: str, features: Tensor, *, dim: int, **options: Any) -> Reduction:
    """Fit a reduction of kind ``kind`` (``"pca"`` or ``"autoencoder"``) to ``(N, *feature_shape)`` features.

    ``options`` go to the fitter: :func:`fit_pca` (``whiten``) or :func:`fit_autoencoder` (``hidden``,
    ``epochs``, ``lr``, ``batch_size``, ``weight_decay``, ``seed``).
    """
    try:
        fitter = _REGISTRY[kind]
    except (KeyError, TypeError):
        raise ValueError(f"unknown reduction kind {kind!r}: choose one of {available_reductions()}") from None
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
    if kind not in _REGISTRY:
        raise ValueError(f"unknown reduction kind {kind!r} in config: choose one of {available_reductions()}")
    if kind == "pca" and config["hidden"] is not None:
        raise ValueError("a 'pca' reduction has no hidden layer: set hidden to None in the config")
    return Reduction(kind=kind, dim=config["dim"], feature_shape=config["feature_shape"], hidden=config["hidden"])
