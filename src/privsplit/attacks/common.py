"""Helpers shared by attacks: what the server receives, label remapping, the primary-label floor."""
from __future__ import annotations

from typing import Callable, TypeVar

import torch
from torch import nn

from privsplit.data.faces import FaceData
from privsplit.data.transforms import augment

T = TypeVar("T")

__all__ = ["received_features", "clean_features", "relabel", "primary_label_floor", "topk_hits", "shared",
           "aux_key", "optimizer_step"]


def shared(embedding: nn.Module, key: tuple, make: Callable[[], T]) -> T:
    """``make()``, memoised in the artifact store an audit attaches to ``embedding`` (``_artifacts``; see
    :func:`privsplit.audit.cache.with_cache`), else computed afresh.

    Why: what an attack learns from the auxiliary people alone (the metric network, the decoder, the
    dlib matcher's enrolments) does not depend on the targets, so the audit's validation fit and query
    fit of one seed -- and two attacks sharing a recognizer -- can reuse it instead of training it twice.
    ``key`` must hold everything the artifact depends on besides the targets (aux, seed, options,
    noise and layers); :func:`aux_key` covers the aux data and the layers.
    """
    store = getattr(embedding, "_artifacts", None)
    if store is None:
        return make()
    if key not in store:
        store[key] = make()
    return store[key]


def aux_key(embedding: nn.Module, aux: FaceData | None) -> tuple:
    """What an aux-trained artifact depends on besides its own options: the aux photos (object and size;
    an audit keeps them alive throughout), the shipped layers and the noise spec."""
    noise = getattr(embedding, "noise", None)
    std = getattr(noise, "std", None)
    layers = tuple(id(getattr(embedding, a, None)) for a in ("extractor", "reduce"))
    return (id(aux), 0 if aux is None else len(aux), layers, type(noise).__name__, getattr(noise, "sigma", None),
            getattr(noise, "scale", None), None if std is None else tuple(std.flatten().tolist()))


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
