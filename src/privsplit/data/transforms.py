"""Preprocessing (decode, face crop, resize, normalise) and light training augmentation.

Decoding happens once per dataset and is cached as uint8 (see :mod:`privsplit.data.images`);
normalisation and augmentation run on batches of tensors, so epochs never touch JPEGs.
The same :class:`Preprocess` is stored in model and client-bundle manifests so the device
preprocesses exactly as training did.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from privsplit.data.errors import DataError

__all__ = ["Preprocess", "decode_image", "normalize", "augment"]


@dataclass(frozen=True)
class Preprocess:
    """How an image file becomes a model input.

    Args:
        size: output side in pixels (64 is the CPU default; up to 224 like the paper).
        crop: centre-crop fraction of the shorter side, applied before resizing (LFW: faces are
            centred in 250x250 frames, so 0.6 keeps face and hair and drops most background).
        mean, std: per-channel normalisation applied to [0, 1] pixels.
    """

    size: int = 64
    crop: float = 1.0
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.25, 0.25, 0.25)

    def __post_init__(self) -> None:
        if not 8 <= self.size <= 512:
            raise ValueError(f"size={self.size} is out of range; use 8..512 (64 for CPU work, 224 like the paper)")
        if not 0.1 <= self.crop <= 1.0:
            raise ValueError(f"crop={self.crop} must be a fraction in [0.1, 1.0]")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocess:
        return cls(size=int(d["size"]), crop=float(d["crop"]), mean=tuple(d["mean"]), std=tuple(d["std"]))


def decode_image(path: str | Path, pre: Preprocess) -> np.ndarray:
    """Read one image as uint8 HxWx3: grayscale becomes 3 channels, centre crop, resize.

    Raises:
        DataError: naming the file when it is missing or cannot be decoded.
    """
    path = Path(path)
    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
            w, h = img.size
            side = max(1, round(min(w, h) * pre.crop))
            left, top = (w - side) // 2, (h - side) // 2
            img = img.crop((left, top, left + side, top + side))
            img = img.resize((pre.size, pre.size), Image.Resampling.BILINEAR, reducing_gap=2.0)
            return np.asarray(img, dtype=np.uint8)
    except FileNotFoundError:
        raise DataError(f"image not found: {path}") from None
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"cannot decode image {path}: {exc}") from None


def normalize(images: torch.Tensor, pre: Preprocess) -> torch.Tensor:
    """uint8 N×3×H×W (or float in [0, 255]) -> normalised float32."""
    x = images.to(torch.float32).div_(255.0)
    mean = torch.tensor(pre.mean, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(pre.std, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


def augment(x: torch.Tensor, generator: torch.Generator, *, shift: int = 4, jitter: float = 0.2) -> torch.Tensor:
    """Light augmentation of a normalised batch: horizontal flip, small shift, brightness/contrast.

    Faces are already aligned, so only geometric changes that keep alignment roughly intact are used.
    All randomness comes from ``generator`` so a resumed run continues bit-exactly.
    """
    n, _, h, w = x.shape
    flip = torch.rand(n, generator=generator) < 0.5
    x = torch.where(flip.view(n, 1, 1, 1), x.flip(3), x)
    if shift > 0:
        padded = torch.nn.functional.pad(x, (shift, shift, shift, shift), mode="replicate")
        dx = torch.randint(0, 2 * shift + 1, (n,), generator=generator)
        dy = torch.randint(0, 2 * shift + 1, (n,), generator=generator)
        rows = (dy.view(n, 1) + torch.arange(h).view(1, h)).view(n, 1, h, 1).expand(n, x.shape[1], h, padded.shape[3])
        x = padded.gather(2, rows)
        cols = (dx.view(n, 1) + torch.arange(w).view(1, w)).view(n, 1, 1, w).expand(n, x.shape[1], h, w)
        x = x.gather(3, cols)
    if jitter > 0:
        contrast = 1 + (torch.rand(n, 1, 1, 1, generator=generator) * 2 - 1) * jitter
        bright = (torch.rand(n, 1, 1, 1, generator=generator) * 2 - 1) * jitter
        x = x * contrast + bright
    return x
