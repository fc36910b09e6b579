"""Helpers shared by attacks: what the server receives, label remapping, the primary-label floor."""
from __future__ import annotations

import torch
from torch import nn

from privsplit.data.faces import FaceData
from privsplit.data.transforms import augment

__all__ = ["received_features", "clean_features", "relabel", "primary_label_floor", "topk_hits", "optimizer_step"]


@torch.no_grad()
def clean_features(embedding: nn.Module, data: FaceData, *, copies: int = 1, seed: int = 0,
                   batch_size: int = 256) -> torch.Tensor:
    """Noise-free client features ``(copies, N, *shape)``; copy 0 is un-augmented, others augmented.

    Noise is added later, fresh for every use, so an attacker's training sees new noise each epoch.
    """
    embedding.eval()
    gen = torch.Generator().manual_seed(seed)
    out = []
    for c in range(copies):
        parts = []
        for s in range(0, len(data), batch_size):
            x = data.inputs(torch.arange(s, min(len(data), s + batch_size)))
            if c > 0:
                x = augment(x, gen)
            parts.append(embedding.client_features(x.contiguous(memory_format=torch.channels_last), noisy=False))
        out.append(torch.cat(parts))
    return torch.stack(out)


@torch.no_grad()
def received_features(embedding: nn.Module, data: FaceData) -> torch.Tensor:
    """Exactly what the server would receive for ``data``: one fresh noise draw per image."""
    return embedding.noise(clean_features(embedding, data)[0])


def relabel(labels: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    """Map arbitrary class ids to 0..T-1; returns the new labels and the original ids in order."""
    uniq = sorted(set(labels.tolist()))
    lookup = {v: i for i, v in enumerate(uniq)}
    return torch.tensor([lookup[v] for v in labels.tolist()], dtype=torch.int64), uniq


def primary_label_floor(identity: torch.Tensor, primary: torch.Tensor, *, k: int = 1) -> float:
    """Top-k accuracy of an attacker who knows only each image's primary label and guesses k identities
    uniformly among those with that label: mean over images of min(k, K_p) / K_p."""
    groups: dict[int, set[int]] = {}
    for i, p in zip(identity.tolist(), primary.tolist()):
        groups.setdefault(p, set()).add(i)
    sizes = torch.tensor([len(groups[p]) for p in primary.tolist()], dtype=torch.float64)
    return float((sizes.clamp(max=k) / sizes).mean())


def topk_hits(scores: torch.Tensor, target: torch.Tensor, k: int) -> int:
    """How many rows have ``target`` among their ``k`` highest scores."""
    k = min(k, scores.shape[1])
    return int((scores.topk(k, dim=1).indices == target.view(-1, 1)).any(1).sum())


def optimizer_step(opt: torch.optim.Optimizer, loss: torch.Tensor,
                   scheduler: torch.optim.lr_scheduler.LRScheduler | None = None) -> None:
    """One gradient step on ``loss`` (gradients cleared first), then one scheduler step."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    if scheduler is not None:
        scheduler.step()
