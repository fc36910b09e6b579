"""The one image path of the package: decode -> (detect + align | centre crop) -> resize -> normalise.

Training (:mod:`privsplit.data.images`), the device client (:mod:`privsplit.runtime.client`, ``privsplit
infer``) and the benchmarks all call :func:`prepare_image` / :func:`decode_image`, and the
:class:`Preprocess` that drives it is stored in model and client-bundle manifests, so training and serving
cannot prepare images differently. Decoding happens once per dataset and is cached as uint8 (see
:mod:`privsplit.data.images`); normalisation and augmentation run on batches of tensors.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from privsplit.data.errors import DataError
from privsplit.data.align import DETECTORS, FaceDetector, align_crop, detect

__all__ = ["Preprocess", "decode_image", "prepare_image", "prepare_faces", "to_rgb", "resize_square",
           "normalize", "augment", "read_rgb"]


@dataclass(frozen=True)
class Preprocess:
    """How an image file becomes a model input.

    Args:
        size: output side in pixels (64 is the CPU default; up to 224 like the paper).
        crop: the framing: fraction of an LFW-style frame kept around the face (LFW: faces are centred in
            250x250 frames, so 0.6 keeps face and hair and drops most background). Without ``align`` it is
            a centre crop of the shorter side; with it, the same square located by the face's landmarks.
        mean, std: per-channel normalisation applied to [0, 1] pixels.
        align: ``"none"`` (centre crop: for pre-aligned datasets like LFW) or a face detector from
            :data:`privsplit.data.align.DETECTORS` (``"dlib-hog"``): detect the largest face, align its
            5 landmarks to LFW's mean positions and crop the framing above.
    """

    size: int = 64
    crop: float = 1.0
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.25, 0.25, 0.25)
    align: str = "none"

    def __post_init__(self) -> None:
        if not 8 <= self.size <= 512:
            raise ValueError(f"size={self.size} is out of range; use 8..512 (64 for CPU work, 224 like the paper)")
        if not 0.1 <= self.crop <= 1.0:
            raise ValueError(f"crop={self.crop} must be a fraction in [0.1, 1.0]")
        if self.align != "none" and self.align not in DETECTORS:
            raise ValueError(f"align={self.align!r}: use 'none' (centre crop) or a face detector: "
                             f"{', '.join(DETECTORS.names())}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form for manifests (``align`` omitted when ``none``, so older keys stay valid)."""
        d = asdict(self)
        if self.align == "none":  # unchanged manifests and decode-cache keys for centre-crop runs
            del d["align"]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocess:
        """Inverse of :meth:`to_dict` (a bundle's or a run's manifest entry)."""
        return cls(size=int(d["size"]), crop=float(d["crop"]), mean=tuple(d["mean"]), std=tuple(d["std"]),
                   align=str(d.get("align", "none")))


def to_rgb(image: np.ndarray, what: str = "image") -> np.ndarray:
    """Check a uint8 HxWx3 (or HxW grayscale) array; grayscale becomes 3 channels."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        got = f"dtype {image.dtype}" if isinstance(image, np.ndarray) else type(image).__name__
        raise TypeError(f"{what}: image arrays must be uint8 HxWx3, got {got}")
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"{what}: image arrays must be HxWx3 (RGB), got shape {image.shape}")
    return np.ascontiguousarray(image)


def resize_square(img: Image.Image, size: int) -> np.ndarray:
    """The one resize: PIL bilinear (antialiased, support widened by the scale) after a box reduce by
    ``floor(scale / 2)`` (``reducing_gap=2``) -> uint8 size x size x 3. The browser page reproduces it."""
    return np.asarray(img.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=2.0), dtype=np.uint8)


def _centre_crop(img: Image.Image, crop: float) -> Image.Image:
    w, h = img.size
    side = max(1, round(min(w, h) * crop))
    left, top = (w - side) // 2, (h - side) // 2
    return img.crop((left, top, left + side, top + side))


def prepare_faces(image: np.ndarray, pre: Preprocess, *, what: str = "image", all_faces: bool = False,
                  detector: FaceDetector | None = None) -> list[np.ndarray]:
    """uint8 photo -> model-sized uint8 crops: one (the largest face; or the centre crop without ``align``),
    or every detected face, largest first, with ``all_faces``.

    Args:
        detector: overrides ``pre.align``'s registered detector (an instance, e.g. a filled ``StubDetector``).

    Raises:
        NoFaceError: ``no face found in {what}`` (``--skip-bad`` skips it in training).
    """
    image = to_rgb(image, what)
    if pre.align == "none" and detector is None:
        h, w = image.shape[:2]
        if (h, w) == (pre.size, pre.size) and pre.crop == 1.0:
            return [image]
        return [resize_square(_centre_crop(Image.fromarray(image, "RGB"), pre.crop), pre.size)]
    faces = detect(image, detector or pre.align, what=what, all_faces=all_faces)
    return [resize_square(align_crop(image, f, pre.crop), pre.size) for f in faces]


def prepare_image(image: np.ndarray, pre: Preprocess, *, what: str = "image", detector: FaceDetector | None = None) -> np.ndarray:
    """uint8 photo -> the model's uint8 size x size x 3 input (see :func:`prepare_faces`)."""
    return prepare_faces(image, pre, what=what, detector=detector)[0]


def read_rgb(path: str | Path) -> np.ndarray:
    """An image file as uint8 HxWx3 (EXIF orientation ignored, like training); :class:`DataError` naming it."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except FileNotFoundError:
        raise DataError(f"image not found: {path}") from None
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"cannot decode image {path}: {exc}") from None


def decode_image(path: str | Path, pre: Preprocess, *, detector: FaceDetector | None = None) -> np.ndarray:
    """Read one image file and prepare it: uint8 size x size x 3.

    Raises:
        DataError: naming the file when it is missing, cannot be decoded or (with ``align``) shows no face.
    """
    return prepare_image(read_rgb(path), pre, what=str(path), detector=detector)


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
