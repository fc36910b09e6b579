"""Independent identity check with dlib's face recognizer (optional ``attacks`` extra).

The question it answers about a reconstruction: *would an off-the-shelf face recognizer, never
trained on our data, name the right person from it?* dlib's ResNet descriptor (128-d, 99.38% on LFW
pairs at full resolution) is independent of everything in privsplit, so a high match rate is not an
artefact of our own models.

Protocol (:meth:`FaceMatcher.identity_match`), for T identities with several original images each:

* **enrolment**: each identity's template is the mean descriptor of its *original* images, leaving
  out the image being queried (so neither a reconstruction nor an original is ever compared with a
  template built from its own source image);
* **query**: each image (a reconstruction, or the original itself) is assigned to the nearest
  template (Euclidean distance, as dlib's descriptors are trained for); the figure is the top-1
  match rate, read against chance ``1/T``; the originals' own rate is the ceiling.

Small faces: dlib's HOG face detector needs faces of ~80 px, our inputs are 64 px. Every image is
upscaled (bicubic, ``upsample`` x, default 4) before detection and description. When the detector
still finds no face (common for blurry reconstructions) the descriptor is computed on a *fixed
rectangle* instead: ``fallback="calibrated"`` (default) uses the median detector box over the enrolled
originals -- the aligned crops put every face at about the same place, so this reproduces the
enrolment alignment; ``fallback="full"`` uses the whole upscaled frame. ``detect=False`` skips the
detector and uses the fixed rectangle for every image (identical treatment of originals and
reconstructions). The detection rate is reported with every result.

dlib and the model files are loaded lazily by :mod:`privsplit.data.dlib_models` (the package's one
dlib loader); :func:`dlib_available` says whether they can be. When dlib was the teacher of the
model's backbone (``privsplit pretrain --method distill``), this check is *not* independent of the
model: the model was trained to reproduce these very descriptors.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from privsplit.attacks.base import Figure
from privsplit.data.dlib_models import (  # re-exported: the old home of the loader
    dlib_available, dlib_model_dir, face_detector, face_recognizer, require_dlib, shape_predictor,
)

__all__ = ["FaceMatcher", "dlib_available", "dlib_model_dir"]

def _to_uint8_hwc(images: Tensor) -> np.ndarray:
    """N x 3 x H x W (uint8, or float in [0, 1]) -> N x H x W x 3 uint8."""
    if images.dtype != torch.uint8:
        images = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    return images.permute(0, 2, 3, 1).contiguous().cpu().numpy()


@dataclass
class Descriptors:
    """128-d descriptors, which images the detector found a face in, and the boxes used (in input px)."""

    vectors: Tensor          # (N, 128) float64
    detected: Tensor         # (N,) bool
    boxes: Tensor            # (N, 4) left, top, right, bottom in input pixels


class FaceMatcher:
    """dlib face descriptors on small images, and the identity-match protocol of the module docstring.

    Args:
        upsample: integer upscaling before detection/description (64 px -> 256 px by default).
        detect: run dlib's HOG face detector (else every image uses the fixed rectangle).
        fallback: ``"calibrated"`` (median detector box of the enrolled originals, else full frame) or
            ``"full"`` (the whole image).
        jitters: dlib's ``num_jitters`` (1 = no jittering).
    """

    def __init__(self, *, upsample: int = 4, detect: bool = True, fallback: str = "calibrated",
                 jitters: int = 1) -> None:
        if fallback not in ("calibrated", "full"):
            raise ValueError(f"fallback='{fallback}' unknown; use 'calibrated' or 'full'")
        self._dlib, _ = require_dlib()
        self.upsample, self.detect, self.fallback, self.jitters = int(upsample), detect, fallback, int(jitters)
        self.detector = face_detector() if detect else None
        self.landmarks, self.recognizer = shape_predictor(), face_recognizer()
        self.box: tuple[float, float, float, float] | None = None  # fixed rectangle, fractions of the side
        self._enrolled: dict[str, tuple[Descriptors, tuple[float, float, float, float] | None]] = {}

    def _upscale(self, img: np.ndarray) -> np.ndarray:
        from PIL import Image

        if self.upsample == 1:
            return np.ascontiguousarray(img)
        h, w = img.shape[:2]
        big = Image.fromarray(img).resize((w * self.upsample, h * self.upsample), Image.Resampling.BICUBIC)
        return np.ascontiguousarray(np.asarray(big))

    def _fixed_rect(self, h: int, w: int):
        left, top, right, bottom = self.box if self.box is not None else (0.0, 0.0, 1.0, 1.0)
        return self._dlib.rectangle(int(round(left * w)), int(round(top * h)),
                                    int(round(right * w)) - 1, int(round(bottom * h)) - 1)

    def describe(self, images: Tensor) -> Descriptors:
        """Descriptors of ``images`` (N x 3 x H x W, uint8 or float in [0, 1])."""
        vecs, found, boxes = [], [], []
        for img in _to_uint8_hwc(images):
            big = self._upscale(img)
            h, w = big.shape[:2]
            rect, hit = None, False
            if self.detector is not None:
                dets = self.detector(big, 0)
                if len(dets):
                    rect, hit = max(dets, key=lambda r: r.area()), True
            if rect is None:
                rect = self._fixed_rect(h, w)
            shape = self.landmarks(big, rect)
            vecs.append(np.asarray(self.recognizer.compute_face_descriptor(big, shape, self.jitters)))
            found.append(hit)
            boxes.append([rect.left() / self.upsample, rect.top() / self.upsample,
                          (rect.right() + 1) / self.upsample, (rect.bottom() + 1) / self.upsample])
        return Descriptors(torch.tensor(np.stack(vecs), dtype=torch.float64) if vecs else torch.zeros(0, 128,
                                                                                                   dtype=torch.float64),
                           torch.tensor(found, dtype=torch.bool), torch.tensor(boxes, dtype=torch.float64))

    def calibrate(self, originals: Descriptors, side: int) -> None:
        """Set the fixed rectangle from the detector boxes of the originals (``fallback="calibrated"``)."""
        if self.fallback == "full" or not bool(originals.detected.any()):
            self.box = (0.0, 0.0, 1.0, 1.0)
            return
        med = originals.boxes[originals.detected].median(0).values / side
        self.box = tuple(float(v) for v in med.clamp(0, 1))  # type: ignore[assignment]

    def enrol(self, originals: Tensor) -> Descriptors:
        """Descriptors of the originals, calibrating the fixed rectangle on them (memoised per image set)."""
        key = hashlib.sha1(_to_uint8_hwc(originals).tobytes()).hexdigest()
        if key in self._enrolled:
            enrol, self.box = self._enrolled[key]
            return enrol
        self.box = None
        enrol = self.describe(originals)
        self.calibrate(enrol, int(originals.shape[-1]))
        if self.detect:
            # redo the originals the detector missed with the calibrated box (describe used the full frame)
            missed = torch.nonzero(~enrol.detected).flatten()
            if len(missed):
                enrol.vectors[missed] = self.describe(originals[missed]).vectors
        self._enrolled[key] = (enrol, self.box)
        return enrol

    def identity_match(self, originals: Tensor, identities: Tensor,
                       queries: dict[str, Tensor]) -> dict[str, Any]:
        """Top-1 identity match of each query set against leave-one-out templates of the originals.

        Args:
            originals: N x 3 x H x W original images (uint8 or [0, 1] float) of the T identities.
            identities: (N,) identity of each original; every identity needs >= 2 images.
            queries: name -> N x 3 x H x W images, row i derived from original i (e.g. reconstructions).

        Returns:
            ``{"originals": Figure, name: Figure, ..., "chance": 1/T, "identities": T,
            "detected": {"originals": rate, name: rate, ...}, "box": fixed rectangle}``.
        """
        ids = torch.as_tensor(identities).long()
        uniq, y = torch.unique(ids, return_inverse=True)
        t, n = len(uniq), len(ids)
        counts = torch.bincount(y, minlength=t)
        if t < 2 or int(counts.min()) < 2:
            raise ValueError("identity_match needs >= 2 identities with >= 2 original images each")
        enrol = self.enrol(originals)
        sums = torch.zeros(t, enrol.vectors.shape[1], dtype=torch.float64).index_add_(0, y, enrol.vectors)
        rows = torch.arange(n)
        out: dict[str, Any] = {"chance": 1.0 / t, "identities": t, "detected": {}, "box": self.box}

        def rate(desc: Descriptors) -> Figure:
            # template of identity c for query i: mean of c's originals, leaving out original i
            templates = sums.unsqueeze(0).repeat(n, 1, 1)
            templates[rows, y] -= enrol.vectors
            cnt = counts.to(torch.float64).unsqueeze(0).repeat(n, 1)
            cnt[rows, y] -= 1
            templates /= cnt.unsqueeze(-1)
            dist = (templates - desc.vectors.unsqueeze(1)).norm(dim=-1)
            return Figure.proportion(int((dist.argmin(1) == y).sum()), n)

        out["originals"] = rate(enrol)
        out["detected"]["originals"] = float(enrol.detected.double().mean())
        for name, imgs in queries.items():
            if imgs.shape[0] != n:
                raise ValueError(f"query set '{name}' has {imgs.shape[0]} images, expected {n}")
            desc = self.describe(imgs)
            out[name] = rate(desc)
            out["detected"][name] = float(desc.detected.double().mean())
        return out
