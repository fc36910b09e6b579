"""Image similarity: SSIM and PSNR per image, backed by ``torchmetrics`` (the ``attacks`` extra).

Pure functions of two batches ``N x C x H x W`` of float images in ``[0, 1]`` (``data_range=1``).
They return one value per image (``reduction="none"``, the default) so callers can report a mean
with its confidence interval, or the batch mean (``reduction="mean"``).

* :func:`ssim` -- torchmetrics' ``structural_similarity_index_measure`` with the usual settings of
  Wang et al. (2004): 11x11 Gaussian window, sigma 1.5, K1 = 0.01, K2 = 0.03, population (co)variances,
  computed per channel, averaged over channels and the *valid* window positions (as Wang et al.'s
  reference code and ``skimage.metrics.structural_similarity(..., gaussian_weights=True,
  use_sample_covariance=False)``; torchmetrics' own mean includes a reflection-padded border).
  ``ssim(x, x) == 1``.
* :func:`psnr` -- ``10 log10(data_range^2 / MSE)`` over each image's pixels and channels;
  ``+inf`` for identical images.

torchmetrics is imported lazily, so importing :mod:`privsplit.metrics` works without it.
"""
from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from privsplit.errors import MissingDependency

__all__ = ["ssim", "psnr"]

Reduction = Literal["none", "mean"]
_WINDOW = 11  # torchmetrics' Gaussian window for sigma 1.5: 2 * int(3.5 * 1.5 + 0.5) + 1


def _functional():
    try:
        from torchmetrics.functional import image as tmf
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingDependency("SSIM/PSNR need torchmetrics", extra="attacks", packages=("torchmetrics",)) from exc
    return tmf


def _check(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    if a.ndim != 4:
        raise ValueError(f"expected a batch N x C x H x W, got shape {tuple(a.shape)}")
    dtype = torch.float64 if torch.float64 in (a.dtype, b.dtype) else torch.float32
    return a.detach().to(dtype), b.detach().to(dtype)


def _reduce(values: Tensor, reduction: Reduction) -> Tensor:
    if reduction == "none":
        return values
    if reduction == "mean":
        return values.mean()
    raise ValueError(f"reduction='{reduction}' unknown; use 'none' or 'mean'")


def ssim(a: Tensor, b: Tensor, *, data_range: float = 1.0, reduction: Reduction = "none") -> Tensor:
    """Structural similarity of each image pair (``(N,)``), Gaussian 11x11 window, sigma 1.5.

    The SSIM map comes from torchmetrics; it is averaged over the *valid* window positions (those
    whose window lies inside the image), like Wang et al.'s reference code and scikit-image, rather
    than over torchmetrics' reflection-padded border. Images need sides >= 11.
    """
    a, b = _check(a, b)
    if min(a.shape[-2:]) < _WINDOW:
        raise ValueError(f"SSIM needs images of at least {_WINDOW}x{_WINDOW} pixels, got {tuple(a.shape[-2:])}")
    _, full = _functional().structural_similarity_index_measure(
        a, b, gaussian_kernel=True, sigma=1.5, reduction="none", data_range=data_range, k1=0.01, k2=0.03,
        return_full_image=True)
    pad = (_WINDOW - 1) // 2
    values = full[..., pad:-pad, pad:-pad].mean(dim=(1, 2, 3))
    return _reduce(values, reduction)


def psnr(a: Tensor, b: Tensor, *, data_range: float = 1.0, reduction: Reduction = "none") -> Tensor:
    """Peak signal-to-noise ratio of each image pair in dB (``(N,)``)."""
    a, b = _check(a, b)
    values = _functional().peak_signal_noise_ratio(a, b, data_range=data_range, reduction="none", dim=(1, 2, 3))
    return _reduce(values.reshape(-1), reduction)
