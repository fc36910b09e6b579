"""Classifier heads the transfer attack trains on transmitted features, and the loop that trains one.

Three heads, so no single architecture's inductive bias decides how much identity an embedding leaks:

* ``"analyzer"`` -- the paper's N2: the server's reconstruction layer (the attacker knows it) followed
  by the analyzer's architecture, re-initialised, with a T-way output;
* ``"conv"`` -- a small conv net (two 3x3 convs, global pooling) for spatial ``(C, H, W)`` features;
* ``"mlp"`` -- two hidden layers with batch-norm on the input, for any shape.

:func:`train_head` sees the features as the server would: clean features of each (augmented) image are
computed once and *fresh* device noise is added at every step.
"""
from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from privsplit.attacks.common import optimizer_step

__all__ = ["HEADS", "head_kinds", "build_head", "train_head"]

#: every head kind, in the order they are tried
HEADS = ("analyzer", "conv", "mlp")


def _reinit(module: nn.Module) -> None:
    for m in module.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()


def _analyzer_head(embedding: nn.Module, num_classes: int) -> nn.Module:
    head = nn.Sequential(copy.deepcopy(embedding.reconstruct), copy.deepcopy(embedding.analyzer))
    _reinit(head[1])
    last_name, last = list(head[1].named_children())[-1]
    if not isinstance(last, nn.Linear):
        raise ValueError("the 'analyzer' head needs an analyzer ending in nn.Linear; use head='mlp'")
    setattr(head[1], last_name, nn.Linear(last.in_features, num_classes))
    for p in head.parameters():
        p.requires_grad_(True)
    return head


def _conv_head(shape: tuple[int, ...], num_classes: int, width: int = 256) -> nn.Module:
    c = shape[0]
    return nn.Sequential(nn.Conv2d(c, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                         nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.3), nn.Linear(width, num_classes))


def _mlp_head(shape: tuple[int, ...], num_classes: int, hidden: int = 512) -> nn.Module:
    d = int(torch.tensor(shape).prod())
    return nn.Sequential(nn.Flatten(), nn.BatchNorm1d(d), nn.Linear(d, hidden), nn.ReLU(), nn.Dropout(0.3),
                         nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))


def head_kinds(head: str, shape: tuple[int, ...]) -> list[str]:
    """The head kinds ``head`` stands for on features of ``shape``: ``"auto"`` = every head that applies
    (analyzer, conv for spatial features, MLP)."""
    if head == "auto":
        return ["analyzer", "conv", "mlp"] if len(shape) == 3 else ["analyzer", "mlp"]
    if head not in HEADS:
        raise ValueError(f"head='{head}' unknown; use 'auto', 'analyzer', 'conv' or 'mlp'")
    if head == "conv" and len(shape) != 3:
        raise ValueError(f"head='conv' needs spatial (C, H, W) features, got shape {shape}; use 'mlp' or 'auto'")
    return [head]


def build_head(kind: str, embedding: nn.Module, shape: tuple[int, ...], num_classes: int, *, seed: int) -> nn.Module:
    """A freshly initialised head of ``kind`` (weights drawn from ``seed``)."""
    torch.manual_seed(seed)
    if kind == "analyzer":
        return _analyzer_head(embedding, num_classes)
    return _conv_head(shape, num_classes) if kind == "conv" else _mlp_head(shape, num_classes)


def train_head(head: nn.Module, feats: Tensor, y: Tensor, noise: Callable[[Tensor], Tensor], *, epochs: int,
               lr: float, batch_size: int, weight_decay: float, seed: int) -> nn.Module:
    """Train ``head`` on ``feats`` ``(copies, N, *shape)`` (clean) with labels ``y``; every batch takes a
    random copy of each image and a fresh ``noise`` draw. AdamW with a cosine schedule. Returns it in eval mode."""
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    n = feats.shape[1]
    total = max(1, epochs * ((n + batch_size - 1) // batch_size))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    head.train()
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        for s in range(0, n, batch_size):
            idx = order[s : s + batch_size]
            if len(idx) < 2:  # batch-norm needs two rows
                continue
            copy_idx = torch.randint(0, feats.shape[0], (len(idx),), generator=gen)
            with torch.no_grad():
                x = noise(feats[copy_idx, idx])  # fresh noise, as the server would see
            loss = F.cross_entropy(head(x), y[idx])
            optimizer_step(opt, loss, sched)
    return head.eval()
