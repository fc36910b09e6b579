"""Distillation: train the VGG (up to fc7, plus fc8 as a projection) to reproduce a teacher's descriptors.

Only *auxiliary* images are used (the caller passes the primary training split: never the attack
identities, never the held-out test people). The loss is ``1 - cos(student(x), teacher(x))``: face
descriptors are compared by angle/distance after normalisation, so the scale is irrelevant. The
student's ``fc8`` is a ``Linear(fc7, teacher.dim)``, i.e. the projection to the teacher's space;
fine-tuning for the primary task later replaces it (:func:`privsplit.backbone.init.init_from_backbone`).

Training reuses :func:`privsplit.train.loops.train_classifier` (same schedule, augmentation,
checkpoint/resume and distributed support); the "labels" it feeds the loss are row numbers into the
descriptor table.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from privsplit.data.faces import FaceData
from privsplit.models.vgg import VGGConfig, build_model
from privsplit.train.loops import LossFn, TrainConfig, TrainResult, train_classifier

__all__ = ["cosine_distill_loss", "distill", "with_row_labels", "descriptor_agreement"]

ROW = "_row"


def cosine_distill_loss(targets: Tensor, *, center: bool = False) -> LossFn:
    """``1 - cos`` between the student's output and ``targets[rows]`` (rows come in as the labels).

    ``center`` subtracts the descriptors' mean first. dlib's descriptors share a large common
    direction (the plain loss is ~0.09 after 2 epochs), so centring looked like it should focus the
    loss on identity; on LFW (docs/backbone.md) the centred student reached cosine 0.14 and its gender
    fine-tune (2 epochs, lr 5e-4) failed (54%), so the default is the plain cosine of the issue's check.
    """
    targets = targets.float()
    if center:
        targets = targets - targets.mean(0, keepdim=True)
    targets = F.normalize(targets, dim=1)

    def loss_fn(model: nn.Module, x: Tensor, rows: Tensor) -> tuple[Tensor, dict[str, float]]:
        cos = F.cosine_similarity(model(x), targets[rows], dim=1)
        loss = (1 - cos).mean()
        return loss, {"cos": float(cos.detach().mean())}

    return loss_fn


def with_row_labels(data: FaceData) -> FaceData:
    """The same data with a ``_row`` label column (0..N-1) that indexes the descriptor table."""
    n = len(data)
    return FaceData(data.images, {**data.labels, ROW: torch.arange(n)}, {**data.classes, ROW: [str(i) for i in range(n)]},
                    data.manifest, data.preprocess, data.skipped)


def distill(train: FaceData, targets: Tensor, *, arch: str = "vgg16", width: float = 0.25, center: bool = False,
            batch_norm: bool = True, config: TrainConfig = TrainConfig(epochs=10, lr=1e-3, class_weight="none"),
            checkpoint: str | Path | None = None, resume: bool = False,
            progress: bool = True) -> tuple[nn.Sequential, VGGConfig, TrainResult]:
    """Train a student of ``arch`` whose fc8 output reproduces ``targets`` (N x D) for ``train``."""
    if len(targets) != len(train):
        raise ValueError(f"{len(targets)} descriptors for {len(train)} images: compute them for the same images")
    cfg = VGGConfig(arch=arch, num_classes=int(targets.shape[1]), width=width, input_size=train.preprocess.size,
                    batch_norm=batch_norm)
    torch.manual_seed(config.seed)
    model = build_model(cfg)
    result = train_classifier(model, with_row_labels(train), column=ROW, config=config,
                              loss_fn=cosine_distill_loss(targets, center=center), checkpoint=checkpoint, resume=resume,
                              progress=progress)
    return model, cfg, result


@torch.no_grad()
def descriptor_agreement(model: nn.Module, data: FaceData, targets: Tensor, *, mean: Tensor | None = None,
                         batch_size: int = 256) -> float:
    """Mean cosine between the student's outputs and the (``mean``-centred) teacher descriptors (eval mode)."""
    model.eval()
    outs = [model(data.inputs(torch.arange(s, min(len(data), s + batch_size)))) for s in range(0, len(data), batch_size)]
    targets = targets.float() - (mean if mean is not None else 0)
    return float(F.cosine_similarity(torch.cat(outs), targets, dim=1).mean())
