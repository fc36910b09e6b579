"""Per-user evidence: combine the predictions of several photos of one person.

An attacker who knows that m received feature vectors come from the same user (one account, one
device) adds their log-probabilities: ``log P(c | z_1..z_m) = sum_i log P(c | z_i) + const`` for photos
independent given the identity (and a uniform prior). Each attack's scores are treated as
log-probabilities up to a per-photo constant (exact for the likelihood attack); the per-photo
constant does not change the ranking of the sum, so top-k of the combined evidence is top-k of the
summed log-softmax scores.
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["combine_evidence"]


def combine_evidence(scores: Tensor, y: Tensor, m: int, *, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """Sum log-softmax scores over disjoint random sets of ``m`` query rows of one identity.

    Returns ``(combined scores (S, T), identity per set (S,), first row of each set (S,))``; an identity's
    leftover rows (fewer than ``m``) are dropped. ``m == 1`` returns the rows unchanged.
    """
    if m < 1:
        raise ValueError(f"per_user={m} must be >= 1 (photos combined per user)")
    if m == 1:
        return scores, y, torch.arange(len(y))
    logp = scores.double().log_softmax(1)
    gen = torch.Generator().manual_seed(seed)
    sets = []
    for c in torch.unique(y).tolist():
        rows = torch.nonzero(y == c).flatten()
        rows = rows[torch.randperm(len(rows), generator=gen)]
        k = len(rows) // m
        if k:
            sets.append(rows[: k * m].view(k, m))
    if not sets:
        raise ValueError(f"no identity has {m} query photos to combine; lower per_user")
    idx = torch.cat(sets)
    return logp[idx].sum(1), y[idx[:, 0]], idx[:, 0]
