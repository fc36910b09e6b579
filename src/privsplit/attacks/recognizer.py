"""Attacks that turn received features back into *images* and let an independent face recognizer name them.

Shared by the decoder attack (:mod:`privsplit.attacks.reconstruction`) and the white-box inversion
(:mod:`privsplit.attacks.inversion`). The recognizer is dlib's ResNet face descriptor
(:class:`~privsplit.attacks.face_match.FaceMatcher`), never trained on anything in privsplit:

* **enrolment** (``fit``): the attacker learns its image model from ``aux`` (photos of *other* people;
  required), then describes each target's *original* enrolment photos; an identity's template is the
  mean descriptor of its photos (the matcher's fixed fallback box is calibrated on them);
* **query** (``score``): received features -> image -> descriptor; the score of identity t is minus the
  Euclidean distance to t's template (dlib's descriptors are trained for Euclidean distance), so
  :meth:`~privsplit.attacks.base.IdentityAttack.evaluate` gives top-1/top-5 with identity-bootstrap
  intervals and per-query hits like every other identity attack.

``evaluate`` also reports the image quality of the produced images against the originals (mean SSIM and
PSNR with normal intervals, beside the mean aux face) when torchmetrics is installed.
"""
from __future__ import annotations

import math
import time
from abc import abstractmethod
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from privsplit.attacks.base import AttackResult, Figure, IdentityAttack
from privsplit.attacks.common import relabel, shared
from privsplit.data.faces import FaceData

if TYPE_CHECKING:
    from privsplit.attacks.face_match import FaceMatcher

__all__ = ["RecognizerAttack", "mean_figure"]

try:  # Python 3.11+
    from typing import Self
except ImportError:  # pragma: no cover - 3.10
    from typing_extensions import Self


def mean_figure(values: Tensor) -> Figure:
    """Mean with a normal 95% interval from the per-item std (``mean +- 1.96 std / sqrt(n)``)."""
    v = values.detach().double().flatten()
    v = v[torch.isfinite(v)]
    n = len(v)
    if n == 0:
        return Figure(float("nan"), (float("nan"), float("nan")), 0, percent=False)
    m = float(v.mean())
    half = 1.96 * float(v.std()) / math.sqrt(n) if n > 1 else float("nan")
    return Figure(m, (m - half, m + half), n, percent=False)


def _unit(images: Tensor) -> Tensor:
    return images.to(torch.float32).div(255.0) if images.dtype == torch.uint8 else images.float()


class RecognizerAttack(IdentityAttack):
    """Base class: subclasses learn from ``aux`` in :meth:`learn` and produce ``[0, 1]`` images in :meth:`images`.

    Args:
        matcher: the recognizer (default: a new :class:`~privsplit.attacks.face_match.FaceMatcher`, which
            needs the ``attacks`` extra); anything with ``enrol(images)`` and ``describe(images)`` returning
            :class:`~privsplit.attacks.face_match.Descriptors` and a ``box`` attribute will do.
    """

    profiles = frozenset({"full"})

    def __init__(self, embedding: nn.Module, *, aux: FaceData | None = None, seed: int = 0,
                 embedding_name: str | None = None, matcher: FaceMatcher | None = None) -> None:
        super().__init__(embedding, aux=aux, seed=seed, embedding_name=embedding_name)
        self.matcher = matcher
        self.templates: Tensor | None = None
        self.mean_face: Tensor | None = None
        self.last_images: Tensor | None = None
        self.stats: dict[str, Any] = {}
        self._box: Any = None

    @abstractmethod
    def learn(self, aux: FaceData) -> None:
        """Learn the image model from the attacker's photos of other people (set ``self.mean_face`` too)."""

    @abstractmethod
    def images(self, received: Tensor, *, repeats: int = 1) -> Tensor:
        """``(N, 3, S, S)`` images in ``[0, 1]`` from received features ``(N, *shape)``."""

    def fit(self, train: FaceData, *, column: str = "identity") -> Self:
        """Learn from ``aux``, then enrol the targets from their original photos ``train``."""
        if self.aux is None:
            raise ValueError(f"the {self.name} attack learns its image model from photos of other people: pass "
                             "aux=FaceData (the attacker's auxiliary faces, e.g. the primary training split; "
                             "never the targets)")
        t0 = time.perf_counter()
        self.learn(self.aux)
        self.stats["learn_seconds"] = time.perf_counter() - t0
        y, self.classes = relabel(train.labels[column])
        if self.matcher is None:
            from privsplit.attacks.face_match import FaceMatcher

            # one matcher per audit: it memoises the dlib enrolment per image set, shared by the image attacks
            self.matcher = shared(self.embedding, ("face-matcher",), FaceMatcher)
        t0 = time.perf_counter()
        desc = self.matcher.enrol(train.images)
        self._box = self.matcher.box
        sums = torch.zeros(len(self.classes), desc.vectors.shape[1], dtype=torch.float64).index_add_(0, y, desc.vectors)
        self.templates = sums / torch.bincount(y, minlength=len(self.classes)).clamp_min(1).unsqueeze(1)
        self.stats.update(enrol_seconds=time.perf_counter() - t0, enrol_detected=float(desc.detected.double().mean()))
        return self

    def score(self, received: Tensor, *, repeats: int = 1) -> Tensor:
        """Minus the descriptor distance of each produced image to each identity's template ``(N, T)``."""
        if self.templates is None or self.matcher is None:
            raise RuntimeError(f"call fit() before score() on the {self.name} attack")
        t0 = time.perf_counter()
        imgs = self.images(received, repeats=repeats)
        t1 = time.perf_counter()
        self.matcher.box = self._box  # the box calibrated on *our* enrolment (a shared matcher may have moved it)
        desc = self.matcher.describe(imgs)
        self.last_images = imgs
        self.stats.update(image_seconds_per_query=(t1 - t0) / max(1, len(imgs)),
                          describe_seconds_per_query=(time.perf_counter() - t1) / max(1, len(imgs)),
                          query_detected=float(desc.detected.double().mean()))
        return -torch.cdist(desc.vectors, self.templates)

    def image_figures(self, test: FaceData) -> tuple[dict[str, Figure], dict[str, float]]:
        """SSIM/PSNR of the last produced images against ``test``'s originals, and of the mean aux face."""
        try:
            from privsplit.metrics.image import psnr, ssim

            originals = _unit(test.images)
            mean = self.mean_face.expand_as(originals) if self.mean_face is not None else None
            figs = {"ssim": mean_figure(ssim(self.last_images, originals)),
                    "psnr": mean_figure(psnr(self.last_images, originals))}
            refs = {} if mean is None else {"ssim_mean_face": float(ssim(mean, originals).mean()),
                                            "psnr_mean_face": float(psnr(mean, originals).mean())}
        except ImportError:  # torchmetrics missing: the identity figures stand alone
            return {}, {}
        return figs, refs

    def evaluate(self, test: FaceData, *, column: str = "identity", primary: str | None = None,
                 repeats: int = 1) -> AttackResult:
        result = super().evaluate(test, column=column, primary=primary, repeats=repeats)
        figs, refs = self.image_figures(test)
        result.figures.update(figs)
        result.references.update(refs)
        result.details.update(self.details)
        return result

    @property
    def details(self) -> dict[str, Any]:
        """The recognizer used, the template rule and the fit statistics (stored with the attack result)."""
        return {"recognizer": type(self.matcher).__name__, "template": "mean descriptor of the enrolment originals",
                **self.stats}
