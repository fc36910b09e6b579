"""Face detection and 5-point alignment (device and training): photo -> the face, framed like the training data.

Detectors are pluggable (:data:`DETECTORS`, a :class:`~privsplit.registry.Registry`): ``"dlib-hog"`` (dlib's
HOG detector + its 5-point landmark model, both in pip packages, offline) is the default and ``"stub"``
(faces given in advance, keyed by the image's pixels) serves tests -- dlib does not fire on synthetic
faces. A mobile detector is one ``@DETECTORS.register("name")`` class away: it returns :class:`Face` objects
with the 5 landmarks in dlib's order (one eye's outer, inner corner; the other eye's outer, inner corner;
the base of the nose).

Alignment is a similarity transform (rotation, scale, shift: no shear, so faces keep their proportions)
fitted by least squares from the detected landmarks to :data:`LFW_LANDMARKS`, the mean landmark positions in
LFW's 250x250 frames (measured by ``benchmarks/lfw_framing.py`` on 1,000 LFW images; never tuned on other
data). The aligned crop is the square a centre crop of fraction ``crop`` would take from an LFW frame, so a
model trained on LFW's centre crop sees the framing it was trained on. Light module (numpy, PIL, the registry;
dlib lazily): part of the data layer, so training and the device client share it.
"""
from __future__ import annotations

import hashlib
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from privsplit.registry import Registry

__all__ = ["Face", "FaceDetector", "DETECTORS", "HogDetector", "StubDetector", "NoFaceError", "LFW_LANDMARKS",
           "get_detector", "set_detector", "pixel_key", "detect", "align_crop", "template"]

# Mean dlib 5-point landmarks in LFW frames, as fractions of the frame's width/height
# (benchmarks/lfw_framing.py: 1,000 random LFW images, seed 0, 997 detected; docs/lfw_framing.json).
LFW_LANDMARKS = np.array([
    [0.6134, 0.4513],  # outer corner of the eye on the image's right
    [0.5489, 0.4540],  # its inner corner
    [0.3848, 0.4559],  # outer corner of the eye on the image's left
    [0.4495, 0.4560],  # its inner corner
    [0.5024, 0.5791],  # base of the nose
])


class NoFaceError(ValueError):
    """The detector found no face in an image; the message names the image (``no face found in IMG``).

    Training's ``--skip-bad`` skips such images like unreadable ones (:mod:`privsplit.data.images`)."""


@dataclass(frozen=True)
class Face:
    """One detected face: ``box`` (left, top, right, bottom) and ``landmarks`` (5 x 2, x/y) in pixels."""

    box: tuple[float, float, float, float]
    landmarks: np.ndarray

    @property
    def area(self) -> float:
        l, t, r, b = self.box
        return max(0.0, r - l) * max(0.0, b - t)


class FaceDetector:
    """Base class: ``detector(rgb) -> list[Face]`` for a uint8 H x W x 3 image (any order)."""

    name = "base"

    def __call__(self, image: np.ndarray) -> list[Face]:
        raise NotImplementedError


DETECTORS: Registry[type[FaceDetector]] = Registry("face detector", help_ref="help(privsplit.data.align)")


@DETECTORS.register("dlib-hog")
class HogDetector(FaceDetector):
    """dlib's HOG detector + 5-point landmarks (``pip install 'privsplit[attacks]'``).

    Args:
        upsample: image doublings tried in turn until a face is found. HOG needs faces of ~80 px: ``(0, 1)``
            first looks at the photo as is (fast) and only doubles it when nothing was found.
    """

    name = "dlib-hog"

    def __init__(self, *, upsample: Sequence[int] = (0, 1)) -> None:
        from privsplit.data.dlib_models import face_detector, shape_predictor

        self._detector, self._landmarks = face_detector(), shape_predictor()
        self.upsample = tuple(int(u) for u in upsample)
        self._lock = threading.Lock()  # dlib's objects are not safe to call from two threads at once (segfaults)

    def __call__(self, image: np.ndarray) -> list[Face]:
        with self._lock:
            return self._detect(np.ascontiguousarray(image))

    def _detect(self, image: np.ndarray) -> list[Face]:
        for up in self.upsample:
            boxes = self._detector(image, up)
            if len(boxes):
                break
        faces = []
        for b in boxes:
            shape = self._landmarks(image, b)
            pts = np.array([[shape.part(k).x, shape.part(k).y] for k in range(5)], dtype=np.float64)
            faces.append(Face((float(b.left()), float(b.top()), float(b.right()), float(b.bottom())), pts))
        return faces


def pixel_key(image: np.ndarray) -> str:
    """SHA-1 of an image's shape and pixels: how :class:`StubDetector` recognises an image."""
    image = np.ascontiguousarray(image, dtype=np.uint8)
    return hashlib.sha1(repr(image.shape).encode() + image.tobytes()).hexdigest()


@DETECTORS.register("stub")
class StubDetector(FaceDetector):
    """Faces known in advance (tests, synthetic data): ``faces[pixel_key(image)]``; unknown images have none."""

    name = "stub"

    def __init__(self, faces: Mapping[str, Sequence[Face]] | None = None) -> None:
        self.faces = dict(faces or {})

    def __call__(self, image: np.ndarray) -> list[Face]:
        return list(self.faces.get(pixel_key(image), []))


_CACHE: dict[str, FaceDetector] = {}
_CACHE_LOCK = threading.Lock()


def get_detector(name: str | FaceDetector) -> FaceDetector:
    """A detector instance by registry name (one per process: dlib's models load once) or passed through."""
    if isinstance(name, FaceDetector):
        return name
    with _CACHE_LOCK:
        if name not in _CACHE:
            _CACHE[name] = DETECTORS.build(name)
        return _CACHE[name]


def set_detector(name: str, detector: FaceDetector) -> None:
    """Use ``detector`` wherever ``name`` is asked for in this process (tests: a filled :class:`StubDetector`)."""
    DETECTORS.get(name)
    _CACHE[name] = detector


def detect(image: np.ndarray, detector: str | FaceDetector = "dlib-hog", *, what: str = "image",
           all_faces: bool = False) -> list[Face]:
    """The largest face (``all_faces``: every face, largest first); :class:`NoFaceError` when none."""
    faces = sorted(get_detector(detector)(image), key=lambda f: -f.area)
    if not faces:
        raise NoFaceError(f"no face found in {what}")
    return faces if all_faces else faces[:1]


def template(crop: float) -> np.ndarray:
    """:data:`LFW_LANDMARKS` in the unit square of a centre crop of fraction ``crop`` of the LFW frame."""
    return (LFW_LANDMARKS - 0.5) / crop + 0.5


def _similarity(src: np.ndarray, dst: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Least-squares ``dst ~ s * R @ src + t`` (Umeyama 1991, no reflection): (s, R, t)."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    a, b = src - mu_s, dst - mu_d
    u, sig, vt = np.linalg.svd(b.T @ a / len(src))
    d = np.diag([1.0, np.sign(np.linalg.det(u @ vt))])
    rot = u @ d @ vt
    s = float(np.trace(np.diag(sig) @ d) / a.var(0).sum())
    return s, rot, mu_d - s * rot @ mu_s


def align_crop(image: np.ndarray, face: Face, crop: float, *, fill: int = 128) -> Image.Image:
    """The face's square, rotated upright and framed like LFW's centre crop of fraction ``crop``.

    Kept at the photo's own resolution (side = the crop's size in source pixels, at least 1) so the one
    resize of :func:`privsplit.data.transforms.resize_square` downsamples it exactly like a centre crop.
    Parts outside the photo are filled with mid-grey (0 after normalisation).
    """
    s, rot, t = _similarity(template(crop), np.asarray(face.landmarks, dtype=np.float64))
    side = max(1, int(round(s)))
    # PIL maps output pixel centres (x + 0.5, y + 0.5) through the matrix to input coordinates whose pixel i
    # spans [i, i + 1); landmarks use pixel i = its centre, hence the + 0.5.
    a = rot * (s / side)
    coeffs = (a[0, 0], a[0, 1], t[0] + 0.5, a[1, 0], a[1, 1], t[1] + 0.5)
    return Image.fromarray(image, "RGB").transform((side, side), Image.Transform.AFFINE, coeffs,
                                                    resample=Image.Resampling.BILINEAR, fillcolor=(fill,) * 3)
