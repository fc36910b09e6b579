"""Fitting a :class:`~privsplit.defenses.reduction_layers.Reduction` to split-layer features: PCA and a
small dense autoencoder."""
from __future__ import annotations

import math

import torch
from torch import Tensor

from privsplit.defenses.reduction_layers import Reduction, _check_dim

__all__ = ["fit_pca", "fit_autoencoder"]


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
    _check_training_options(epochs=epochs, batch_size=batch_size, seed=seed, lr=lr)
    dtype = _module_dtype(features)
    x = features.detach().flatten(1).to(dtype)
    n, d = x.shape
    _check_dim(dim, d)
    mean = x.mean(dim=0)
    scale = float((x - mean).pow(2).mean().sqrt())
    if scale == 0.0:
        raise ValueError("features are constant (zero variance): nothing for an autoencoder to learn")

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        red = Reduction(kind="autoencoder", dim=dim, feature_shape=tuple(features.shape[1:]), hidden=hidden)
        red = red.to(device=x.device, dtype=dtype)
        history = _train_autoencoder(red, (x - mean) / scale, epochs=epochs, lr=lr, batch_size=batch_size,
                                     weight_decay=weight_decay, seed=seed)
    history = [h * scale ** 2 for h in history]  # in the features' own units
    with torch.no_grad():
        _fold_standardisation(red, mean, scale)
        mse = float(((red(x).flatten(1) - x) ** 2).mean())
    red.info = {"loss_history": history, "mse": mse, "epochs": epochs, "lr": lr, "seed": seed,
                "batch_size": batch_size, "weight_decay": weight_decay, "n_samples": n}
    red.zero_grad(set_to_none=True)
    return red


def _check_training_options(*, epochs: int, batch_size: int, seed: int, lr: float) -> None:
    for name, val in (("epochs", epochs), ("batch_size", batch_size), ("seed", seed)):
        if isinstance(val, bool) or not isinstance(val, int) or val < (0 if name == "seed" else 1):
            raise ValueError(f"{name} must be a {'non-negative' if name == 'seed' else 'positive'} int, got {val!r}")
    if not (lr > 0 and math.isfinite(lr)):
        raise ValueError(f"lr must be positive and finite, got {lr!r}")


def _train_autoencoder(red: Reduction, xs: Tensor, *, epochs: int, lr: float, batch_size: int,
                       weight_decay: float, seed: int) -> list[float]:
    """Adam on the MSE of standardised features; returns the per-epoch mean loss (standardised units)."""
    n = xs.shape[0]
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(red.parameters(), lr=lr, weight_decay=weight_decay)
    history: list[float] = []
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen).to(xs.device)
        total = 0.0
        for start in range(0, n, batch_size):
            xb = xs[perm[start:start + batch_size]]
            loss = torch.mean((red.reconstruct(red.reduce(xb)).flatten(1) - xb) ** 2)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * xb.shape[0]
        history.append(total / n)
    return history


def _fold_standardisation(red: Reduction, mean: Tensor, scale: float) -> None:
    """Fold ``x_s = (x - mean) / scale`` into the outer layers, so the result runs on raw features."""
    first = red.reduce.hidden if red.reduce.hidden is not None else red.reduce.out
    first.bias.sub_(first.weight @ mean / scale)
    first.weight.div_(scale)
    last = red.reconstruct.out
    last.weight.mul_(scale)
    last.bias.mul_(scale).add_(mean)
