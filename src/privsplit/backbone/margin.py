"""Identity training with a margin-based softmax: CosFace (Wang et al. 2018) and ArcFace (Deng et al. 2019).

For users with a dataset of many people (CelebA: 10,177) and the hardware. The VGG's ``fc8`` becomes
a ``Linear(fc7, dim)`` embedding; a :class:`MarginHead` holds one unit-norm weight per identity and
scores ``s * cos`` with the true class penalised by the margin:

* ``cosface``: ``s * (cos(theta_y) - m)`` (default ``s=30, m=0.35``);
* ``arcface``: ``s * cos(theta_y + m)`` (default ``s=30, m=0.5``), with the usual fallback
  ``cos(theta) - m sin(m)`` past ``theta > pi - m`` so the logit stays monotonic.

Why margins instead of plain softmax: the embedding is later read with cosine/L2 nearest neighbours
(and, in our threat model, by an attacker on *unseen* people), which margin losses optimise directly.
The wrapper :class:`MarginModel` keeps backbone and head in one module so checkpoints/resume (and
DDP) cover both.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from privsplit.data.faces import FaceData
from privsplit.models.vgg import VGGConfig, build_model
from privsplit.registry import Registry
from privsplit.train.loops import LossFn, TrainConfig, TrainResult, train_classifier

__all__ = ["MarginHead", "MarginModel", "MARGINS", "margin_loss", "train_identity", "embed"]

MARGINS: Registry[tuple[float, float]] = Registry("margin loss", help_ref="help(privsplit.backbone.margin)")
MARGINS.register("cosface", (30.0, 0.35))
MARGINS.register("arcface", (30.0, 0.5))


class MarginHead(nn.Module):
    """``num_classes`` unit-norm class weights; ``forward(emb, y)`` gives margin-penalised logits."""

    def __init__(self, dim: int, num_classes: int, *, kind: str = "cosface", s: float | None = None,
                 m: float | None = None) -> None:
        super().__init__()
        s0, m0 = MARGINS.get(kind)
        self.kind, self.s, self.m = kind, float(s if s is not None else s0), float(m if m is not None else m0)
        self.weight = nn.Parameter(torch.randn(num_classes, dim) * 0.01)

    def cosine(self, emb: Tensor) -> Tensor:
        """Cosine similarity of each embedding to each class centre, ``(N, num_classes)``."""
        return F.normalize(emb, dim=1) @ F.normalize(self.weight, dim=1).T

    def forward(self, emb: Tensor, y: Tensor) -> Tensor:
        cos = self.cosine(emb).clamp(-1 + 1e-7, 1 - 1e-7)
        true = cos.gather(1, y.view(-1, 1))
        if self.kind == "cosface":
            target = true - self.m
        else:
            theta_m = torch.cos(torch.acos(true) + self.m)
            target = torch.where(true > math.cos(math.pi - self.m), theta_m, true - self.m * math.sin(self.m))
        return self.s * cos.scatter(1, y.view(-1, 1), target)


class MarginModel(nn.Module):
    """Backbone + margin head in one module; ``forward`` is the backbone's embedding."""

    def __init__(self, backbone: nn.Module, head: MarginHead) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, x: Tensor) -> Tensor:
        return self.backbone(x)


def margin_loss() -> LossFn:
    """Cross-entropy on the head's margin logits (works on a DDP-wrapped :class:`MarginModel` too)."""
    def loss_fn(model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, float]]:
        inner = getattr(model, "module", model)
        loss = F.cross_entropy(inner.head(model(x), y), y)
        return loss, {"ce": float(loss.detach())}
    return loss_fn


def train_identity(train: FaceData, *, column: str = "identity", kind: str = "cosface", dim: int = 128,
                   arch: str = "vgg16", width: float = 0.25, batch_norm: bool = True,
                   config: TrainConfig = TrainConfig(epochs=10, class_weight="none"),
                   checkpoint: str | Path | None = None, resume: bool = False,
                   progress: bool = True) -> tuple[nn.Sequential, VGGConfig, TrainResult]:
    """Train ``arch`` (fc8 = ``dim``-d embedding) to recognise ``train[column]`` with a margin softmax."""
    cfg = VGGConfig(arch=arch, num_classes=dim, width=width, input_size=train.preprocess.size, batch_norm=batch_norm)
    torch.manual_seed(config.seed)
    backbone = build_model(cfg)
    wrapper = MarginModel(backbone, MarginHead(dim, len(train.classes[column]), kind=kind))
    result = train_classifier(wrapper, train, column=column, config=config, loss_fn=margin_loss(),
                              checkpoint=checkpoint, resume=resume, progress=progress)
    return backbone.eval(), cfg, result


@torch.no_grad()
def embed(model: nn.Module, data: FaceData, *, batch_size: int = 256) -> Tensor:
    """L2-normalised embeddings of ``data`` (eval mode)."""
    model.eval()
    out = [model(data.inputs(torch.arange(s, min(len(data), s + batch_size)))) for s in range(0, len(data), batch_size)]
    return F.normalize(torch.cat(out), dim=1)
