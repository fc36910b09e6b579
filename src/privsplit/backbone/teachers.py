"""Teachers for distillation: off-the-shelf face recognizers that give identity descriptors.

A :class:`Teacher` maps uint8 face crops (N x 3 x H x W) to descriptors (N x ``dim``). They are slow
(dlib: ~80 ms per image on one core), so :func:`teacher_descriptors` computes each image's
descriptor once and keeps it in the cache folder, keyed by the SHA-1 of the image's pixels and the
teacher's :attr:`Teacher.cache_id` (which includes every setting that changes the output).

Teachers are registered by name in :data:`TEACHERS` (``privsplit pretrain --teacher NAME``); a user
registers another recognizer (e.g. an ONNX ArcFace) with ``@TEACHERS.register("mine")``.
"""
from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from privsplit.config import cache_dir
from privsplit.data import dlib_models
from privsplit.progress import progress_bar
from privsplit.registry import Registry

__all__ = ["Teacher", "DlibTeacher", "TEACHERS", "teacher_descriptors", "image_keys"]

TEACHERS: Registry[type["Teacher"]] = Registry("teacher", help_ref="help(privsplit.backbone.teachers)")


class Teacher(ABC):
    """An identity descriptor: ``describe(uint8 N x 3 x H x W) -> float32 N x dim``."""

    name: str = "teacher"
    dim: int = 0

    @property
    def cache_id(self) -> str:
        """Name plus every setting that changes the descriptors (part of the cache key)."""
        return self.name

    @abstractmethod
    def describe(self, images: Tensor) -> Tensor:
        """The teacher's descriptor of each image, ``(N, dim)``."""

    def provenance(self) -> dict[str, str]:
        """What the teacher is and where it came from (stored in the backbone manifest)."""
        return {"teacher": self.cache_id}


@TEACHERS.register("dlib")
class DlibTeacher(Teacher):
    """dlib's ResNet face recognizer (128-d), aligned by the 5-point predictor on a fixed rectangle.

    LFW crops are pre-centred, so instead of the HOG detector (which misses many 64 px faces even
    upscaled) every image uses the same rectangle, as :mod:`privsplit.attacks.face_match` does when the
    detector fails; the landmark predictor then aligns within it. Images are upscaled ``upsample`` x
    (bicubic) first because dlib's models expect faces of ~150 px.

    Args:
        upsample: integer upscaling before landmarks/description (64 px -> 256 px).
        box: the rectangle as fractions (left, top, right, bottom) of the side; the default is the
            median HOG-detector box on 300 of LFW's 64 px training crops (crop 0.6; 299 detected).
    """

    name, dim = "dlib", 128

    def __init__(self, *, upsample: int = 4, box: tuple[float, float, float, float] = (0.137, 0.211, 0.840, 0.918)):
        self.upsample, self.box = int(upsample), tuple(float(b) for b in box)
        self._dlib = dlib_models.require_dlib()[0]

    @property
    def cache_id(self) -> str:
        return f"dlib-resnet-v1-up{self.upsample}-box" + "-".join(f"{b:.3f}" for b in self.box)

    def provenance(self) -> dict[str, str]:
        return {"teacher": self.cache_id, "model": dlib_models.RECOGNIZER, "landmarks": dlib_models.LANDMARKS_5,
                "training_data": dlib_models.DLIB_TRAINING_DATA}

    def describe(self, images: Tensor) -> Tensor:
        from PIL import Image

        predictor, recognizer = dlib_models.shape_predictor(), dlib_models.face_recognizer()
        out = []
        for img in images.permute(0, 2, 3, 1).contiguous().numpy():
            h, w = img.shape[:2]
            big = np.ascontiguousarray(np.asarray(Image.fromarray(img).resize(
                (w * self.upsample, h * self.upsample), Image.Resampling.BICUBIC)))
            H, W = big.shape[:2]
            l, t, r, b = self.box
            rect = self._dlib.rectangle(round(l * W), round(t * H), round(r * W) - 1, round(b * H) - 1)
            out.append(np.asarray(recognizer.compute_face_descriptor(big, predictor(big, rect), 1)))
        return torch.tensor(np.stack(out), dtype=torch.float32) if out else torch.zeros(0, self.dim)


def image_keys(images: Tensor) -> list[bytes]:
    """SHA-1 of each image's uint8 pixels (the cache key, with the teacher id)."""
    arr = images.contiguous().numpy()
    return [hashlib.sha1(a.tobytes()).digest() for a in arr]


def _cache_path(teacher: Teacher, folder: Path | None) -> Path:
    return (folder or cache_dir() / "teachers") / f"{teacher.cache_id}.safetensors"


def _load_cache(path: Path) -> dict[bytes, Tensor]:
    if not path.exists():
        return {}
    t = load_file(str(path))
    return {bytes(k.tolist()): v for k, v in zip(t["keys"], t["vectors"])}


def _save_cache(path: Path, cache: dict[bytes, Tensor]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = torch.tensor([list(k) for k in cache], dtype=torch.uint8)
    tmp = path.with_suffix(".tmp")
    save_file({"keys": keys, "vectors": torch.stack(list(cache.values())).float()}, str(tmp))
    tmp.replace(path)  # atomic: an interrupted run keeps what it had saved


def teacher_descriptors(teacher: Teacher, images: Tensor, *, folder: Path | None = None, chunk: int = 256,
                        progress: bool = True) -> Tensor:
    """Descriptors of ``images`` (uint8 N x 3 x H x W), computing only those not cached yet.

    The cache is saved every ``chunk`` new images, so an interrupted run resumes where it stopped.
    """
    if images.dtype != torch.uint8:
        raise ValueError("teacher_descriptors needs uint8 images (FaceData.images), got " + str(images.dtype))
    path = _cache_path(teacher, folder)
    cache, keys = _load_cache(path), image_keys(images)
    todo = sorted({keys.index(k) for k in set(keys) - set(cache)})
    with progress_bar(f"{teacher.name} descriptors", total=len(todo), enabled=progress and bool(todo)) as advance:
        for s in range(0, len(todo), chunk):
            idx = todo[s : s + chunk]
            for i, v in zip(idx, teacher.describe(images[idx])):
                cache[keys[i]] = v
            _save_cache(path, cache)
            advance(len(idx))
    return torch.stack([cache[k] for k in keys]) if keys else torch.zeros(0, teacher.dim)
