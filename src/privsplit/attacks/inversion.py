"""White-box model inversion: optimise an input image until the shipped client produces the received features.

The attacker has the client bundle (extractor, reduction), so it can differentiate the client's clean
features with respect to the input pixels (Mahendran & Vedaldi 2015). For each received vector ``r``:

    minimise over x in [0, 1]^(3 x S x S):   mean_j ((f_j(x) - r_j) / s_j)^2  +  tv_weight * TV2(x)

* ``f`` = extractor -> reduction of the attacker's copy of the client (no noise; eval mode), applied to
  the image normalised like the dataset (``Preprocess`` mean/std);
* ``s`` = per-feature std of the clean features of the attacker's ``aux`` photos, floored at 10% of the
  typical std (units that never fire would otherwise get an infinite weight): puts every feature on one
  scale, and for noise scaled by the feature std (``scale="std"``, the advanced embedding) it is the
  Gaussian likelihood's own weighting;
* ``TV2`` = mean squared difference of horizontally and vertically adjacent pixels: the smoothness prior
  (natural images are smooth; without it the optimum is high-frequency noise the extractor ignores);
* Adam on the pixels, cosine-decayed learning rate, projected back to ``[0, 1]`` after each step, starting
  from the mean face of the ``aux`` photos (:func:`invert` also accepts any start); optionally at a lower
  ``resolution``, upsampled bilinearly (a second smoothness prior: deep features are otherwise matched
  by high-frequency patterns that look like no one).

Queries are optimised in batches (``batch_size``): the loss is a sum over images and Adam is elementwise,
so batching does not couple them. The budget is stated in :class:`InversionConfig`; the measured CPU
time per query is in ``docs/attacks_heavy.md``. The images then go to the dlib recognizer enrolled on the
targets' original photos (:mod:`privsplit.attacks.recognizer`).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from privsplit.attacks.base import ATTACKS
from privsplit.attacks.common import clean_features, optimizer_step
from privsplit.attacks.recognizer import RecognizerAttack
from privsplit.attacks.face_match import FaceMatcher
from privsplit.data.faces import FaceData
from privsplit.progress import progress_bar

__all__ = ["InversionConfig", "InversionAttack", "invert", "total_variation"]


@dataclass(frozen=True)
class InversionConfig:
    """Budget of the inversion: ``steps`` Adam steps per query at ``lr`` (pixel units, cosine-decayed),
    smoothness weight ``tv_weight``, optimised at ``resolution`` (``None``: the input size), ``batch_size``
    queries optimised together.

    Defaults: 50 steps, lr 0.02, tv_weight 3, resolution 32, batches of 64. Chosen on 24 photos of *other*
    people (the aux split, never targets) through the LFW simple conv5_3 client, by dlib descriptor
    distance between inversion and original: lr 0.05 or tv_weight <= 0.3 gave images rougher than the
    originals (features matched by high-frequency patterns, further from the person than the mean face);
    100-200 steps did not help and cost 2-4x. Budget on this 2-core machine: see ``docs/attacks_heavy.md``.
    """

    steps: int = 50
    lr: float = 0.02
    tv_weight: float = 3.0
    resolution: int | None = 32
    batch_size: int = 64
    progress: bool = True

    def __post_init__(self) -> None:
        if self.steps < 1 or self.lr <= 0 or self.tv_weight < 0 or self.batch_size < 1:
            raise ValueError("InversionConfig needs steps >= 1, lr > 0, tv_weight >= 0 and batch_size >= 1")
        if self.resolution is not None and self.resolution < 4:
            raise ValueError("InversionConfig.resolution must be >= 4 pixels (or None for the input size)")


def total_variation(x: Tensor) -> Tensor:
    """Per-image squared total variation ``(N,)``: mean squared difference of adjacent pixels (both axes)."""
    dh = (x[..., 1:, :] - x[..., :-1, :]).pow(2).flatten(1).mean(1)
    dw = (x[..., :, 1:] - x[..., :, :-1]).pow(2).flatten(1).mean(1)
    return dh + dw


def invert(features: Callable[[Tensor], Tensor], target: Tensor, init: Tensor, *, steps: int = 100, lr: float = 0.05,
           tv_weight: float = 0.3, scale: Tensor | None = None, resolution: int | None = None) -> Tensor:
    """Images ``(N, 3, S, S)`` in ``[0, 1]`` whose ``features`` match ``target`` ``(N, *shape)``.

    Args:
        features: differentiable map from ``[0, 1]`` images to features (the client without noise).
        target: received features, one row per image.
        init: starting images ``(N, 3, S, S)`` in ``[0, 1]`` (e.g. the mean face, expanded).
        scale: per-feature scale ``s`` (shape of one feature row); 1 when omitted.
        resolution: optimise an ``R x R`` image upsampled (bilinear) to ``S`` (a further smoothness prior:
            no detail finer than ``S / R`` pixels); ``None`` = full resolution.
    """
    size = init.shape[-1]
    start = init.detach().float().clamp(0, 1)
    if resolution is not None and resolution < size:
        start = F.interpolate(start, size=(resolution, resolution), mode="area")
    x = start.clone().requires_grad_(True)

    def render(v: Tensor) -> Tensor:
        if v.shape[-1] == size:
            return v
        return F.interpolate(v, size=(size, size), mode="bilinear", align_corners=False)

    inv_scale = 1.0 if scale is None else 1.0 / scale.clamp_min(1e-8)
    opt = torch.optim.Adam([x], lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    with torch.enable_grad():
        for _ in range(steps):
            img = render(x)
            data = ((features(img) - target) * inv_scale).pow(2).flatten(1).mean(1)
            loss = (data + tv_weight * total_variation(img)).sum()  # a sum: images stay independent
            optimizer_step(opt, loss, sched)
            with torch.no_grad():
                x.clamp_(0, 1)
    return render(x.detach()).clamp(0, 1)


@ATTACKS.register("inversion")
class InversionAttack(RecognizerAttack):
    """White-box inversion through the shipped extractor and reduction -> dlib recognizer (module docstring)."""

    name = "inversion"

    def __init__(self, embedding: nn.Module, *, aux: FaceData | None = None, seed: int = 0,
                 embedding_name: str | None = None, config: InversionConfig = InversionConfig(),
                 matcher: FaceMatcher | None = None) -> None:
        super().__init__(embedding, aux=aux, seed=seed, embedding_name=embedding_name, matcher=matcher)
        self.config = config
        self.scale: Tensor | None = None
        self.pixel_mean = self.pixel_std = torch.zeros(1, 3, 1, 1)

    def learn(self, aux: FaceData) -> None:
        """Mean face and per-feature scale from the aux photos; the input normalisation from their preprocessing."""
        self.mean_face = aux.images.float().div(255.0).mean(0, keepdim=True)
        std = clean_features(self.embedding, aux)[0].std(0)
        # dead units (std 0, common after ReLU) would get an infinite weight: floor at 10% of the typical std
        self.scale = (std.pow(2) + (0.1 * std.pow(2).mean().sqrt()).pow(2)).sqrt()
        self.pixel_mean = torch.tensor(aux.preprocess.mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.pixel_std = torch.tensor(aux.preprocess.std, dtype=torch.float32).view(1, 3, 1, 1)

    def _features(self, x: Tensor) -> Tensor:
        # channels-last: about 1.5x faster convolutions on CPU (measured at 64 px on VGG-16 x0.25)
        x = ((x - self.pixel_mean) / self.pixel_std).contiguous(memory_format=torch.channels_last)
        return self.embedding.client_features(x, noisy=False)

    def images(self, received: Tensor, *, repeats: int = 1) -> Tensor:
        """Invert ``received`` batch by batch (the extractor's weights frozen meanwhile)."""
        if self.mean_face is None:
            raise RuntimeError("call fit() before images() on the inversion attack")
        cfg = self.config
        frozen = [p for p in self.embedding.parameters() if p.requires_grad]
        for p in frozen:  # gradients for the pixels only: half the backward cost
            p.requires_grad_(False)
        out = []
        try:
            with progress_bar("inversion", total=len(received), enabled=cfg.progress) as advance:
                for s in range(0, len(received), cfg.batch_size):
                    target = received[s : s + cfg.batch_size]
                    init = self.mean_face.expand(len(target), -1, -1, -1)
                    out.append(invert(self._features, target, init, steps=cfg.steps, lr=cfg.lr,
                                      tv_weight=cfg.tv_weight, scale=self.scale, resolution=cfg.resolution))
                    advance(len(target))
        finally:
            for p in frozen:
                p.requires_grad_(True)
        size = self.mean_face.shape[-1]
        return torch.cat(out) if out else torch.zeros(0, 3, size, size)

    @property
    def details(self) -> dict[str, Any]:
        """The base details plus this run's config and the objective, for the report."""
        return {**super().details, "config": asdict(self.config),
                "objective": "mean squared feature error / aux feature std + tv_weight * squared TV; Adam on pixels "
                             "(at config.resolution) from the aux mean face"}
