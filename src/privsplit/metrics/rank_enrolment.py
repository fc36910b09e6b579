"""Enrolment rank privacy: the paper's rank privacy measured on identity, not on image matching.

The paper's form (:func:`privsplit.metrics.rank.rank_privacy`) ranks each noisy point against a
reference set that holds its *own* clean feature, so it mostly measures whether a point is matched back
to its own image. The enrolment form keeps the paper's definition of the score and the rank but
separates the sets the way a real attacker meets them:

* **references** = the attacker's enrolment images of each identity, **clean** (it owns the app and
  computes noise-free features of its own photos);
* **queries** = held-out images of the same identities, **noisy** (what the server receives), never
  among the references;
* queries are **balanced per identity** (each identity contributes the same number, drawn with
  ``seed``), so an identity with many photos does not dominate.

For a query ``z`` the class likelihood is the paper's kernel density (eq. 4) over the identity's
references, ``P^(z|c) = 1/N_c sum_j N(z; f_j, diag(sigma^2))``; ``rank`` counts the identities with a
strictly larger likelihood than the true one, ties counted half.

The 1/T offset: the paper's ranks are 1-based (the true class ranked first has rank 1, so its privacy
is ``1/T`` at best); privsplit's ranks are 0-based (``privacy = rank / T``, 0 when the true class is
always first), so **paper value = privsplit value + 1/T**. Chance is ``(T - 1) / (2T)`` here.

The 95% interval is a bootstrap over identities (a person's queries are not independent;
:func:`privsplit.metrics.intervals.cluster_bootstrap_ci`). :func:`enrolment_rank_privacy_naive` is the
slow test twin (explicit densities, a loop over queries).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor

from privsplit.metrics.intervals import cluster_bootstrap_ci
from privsplit.metrics.rank import Labels, _encode_labels, _ranks_from_scores, _sigma_vector

__all__ = ["EnrolmentRankPrivacy", "enrolment_rank_privacy", "enrolment_rank_privacy_naive"]


@dataclass(frozen=True)
class EnrolmentRankPrivacy:
    """Mean privacy over the balanced queries, its identity-bootstrap 95% interval, per-query ranks
    (0-based, half-integers on ties; ``rows`` = the query rows kept by balancing, in that order)."""

    privacy: float
    ci95: tuple[float, float]
    ranks: Tensor
    per_point: Tensor
    rows: Tensor
    groups: Tensor
    num_classes: int
    num_points: int
    log: bool


def _prepare(references: Tensor, ref_classes: Any, queries: Tensor, query_classes: Any, sigma: Any,
             per_identity: int | None, seed: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, int]:
    """Validate, encode classes jointly, balance the queries. Returns f, ref codes, z, query codes, rows, sigma, T."""
    f = torch.as_tensor(references).detach().double().flatten(1)
    z = torch.as_tensor(queries).detach().double().flatten(1)
    if f.shape[1] != z.shape[1] or len(f) < 1 or len(z) < 1:
        raise ValueError(f"references {tuple(f.shape)} and queries {tuple(z.shape)} need rows and one feature size")
    rc = ref_classes.tolist() if isinstance(ref_classes, Tensor) else list(ref_classes)
    qc = query_classes.tolist() if isinstance(query_classes, Tensor) else list(query_classes)
    if len(rc) != len(f) or len(qc) != len(z):
        raise ValueError("one class label per reference row and per query row is needed")
    unknown = set(qc) - set(rc)
    if unknown:
        raise ValueError(f"{len(unknown)} query identities have no enrolment reference (e.g. {sorted(unknown)[:3]})")
    codes, t = _encode_labels(rc + qc, None)
    fc, qcodes = codes[: len(rc)], codes[len(rc) :]
    counts = torch.bincount(qcodes, minlength=t)
    k = int(counts[counts > 0].min()) if per_identity is None else per_identity
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for c in torch.unique(qcodes).tolist():
        members = torch.nonzero(qcodes == c).flatten()
        if len(members) < k:
            raise ValueError(f"an identity has {len(members)} queries, fewer than per_identity={k}")
        rows.append(members[torch.randperm(len(members), generator=gen)[:k]])
    rows_t = torch.sort(torch.cat(rows)).values
    return f, fc, z[rows_t], qcodes[rows_t], rows_t, _sigma_vector(sigma, f.shape[1], f.device), t


def _finish(ranks: Tensor, groups: Tensor, rows: Tensor, t: int, log: bool, seed: int,
            n_boot: int) -> EnrolmentRankPrivacy:
    per_point = torch.log1p(ranks) / math.log(t) if log and t > 1 else (ranks * 0 if log else ranks / t)
    ci = cluster_bootstrap_ci(per_point, groups, seed=seed, n_boot=n_boot)
    return EnrolmentRankPrivacy(float(per_point.mean()), ci, ranks, per_point, rows, groups, t, len(ranks), log)


def enrolment_rank_privacy(references: Tensor, ref_classes: Labels, queries: Tensor, query_classes: Labels, *,
                           sigma: float | Tensor | Sequence[float], per_identity: int | None = None,
                           log: bool = False, seed: int = 0, n_boot: int = 2000,
                           chunk_size: int = 1024) -> EnrolmentRankPrivacy:
    """Rank privacy of noisy ``queries`` against clean enrolment ``references`` (see module docstring).

    Args:
        references: (M, ...) clean enrolment features; ``ref_classes`` their identities.
        queries: (Q, ...) received (noisy) features of held-out images; ``query_classes`` their identities.
        sigma: the noise std (scalar or per-feature), the kernel width of the paper's density.
        per_identity: queries kept per identity (default: the fewest any identity has).
        log: ``log(1 + rank) / log(T)`` instead of ``rank / T``.
        seed: balancing draw and bootstrap.
    """
    f, fc, z, qc, rows, sig, t = _prepare(references, ref_classes, queries, query_classes, sigma, per_identity, seed)
    mu = f.mean(0)
    fs, zs = (f - mu) / sig, (z - mu) / sig
    bias = (-0.5 * (fs * fs).sum(1)).unsqueeze(1)
    counts = torch.bincount(fc, minlength=t).double().clamp(min=1).unsqueeze(1)
    ranks = torch.empty(len(z), dtype=torch.float64)
    for s in range(0, len(z), chunk_size):
        block = torch.addmm(bias, fs, zs[s : s + chunk_size].T)  # (M, C) log-kernel + per-query constant
        cmax = torch.full((t, block.shape[1]), -math.inf, dtype=torch.float64)
        cmax.scatter_reduce_(0, fc.unsqueeze(1).expand_as(block), block, reduce="amax", include_self=True)
        dens = torch.zeros_like(cmax).index_add_(0, fc, (block - cmax[fc]).exp())
        scores = (dens / counts).log() + cmax  # identities without references get -inf
        ranks[s : s + chunk_size] = _ranks_from_scores(scores, qc[s : s + chunk_size])
    return _finish(ranks, qc, rows, t, log, seed, n_boot)


def enrolment_rank_privacy_naive(references: Tensor, ref_classes: Labels, queries: Tensor, query_classes: Labels, *,
                                 sigma: float | Tensor | Sequence[float], per_identity: int | None = None,
                                 log: bool = False, seed: int = 0, n_boot: int = 2000) -> EnrolmentRankPrivacy:
    """Slow twin of :func:`enrolment_rank_privacy` (explicit normalised densities, a loop over queries);
    underflows for large distances -- a test reference only."""
    f, fc, z, qc, rows, sig, t = _prepare(references, ref_classes, queries, query_classes, sigma, per_identity, seed)
    var = sig * sig
    norm = (2 * math.pi) ** (-f.shape[1] / 2) / float(var.prod().sqrt())
    ranks = torch.empty(len(z), dtype=torch.float64)
    for i in range(len(z)):
        dens = norm * torch.exp(-0.5 * ((z[i] - f) ** 2 / var).sum(1))
        like = [float(dens[fc == c].mean()) if bool((fc == c).any()) else 0.0 for c in range(t)]
        true = like[int(qc[i])]
        ranks[i] = sum(v > true for v in like) + 0.5 * (sum(v == true for v in like) - 1)
    return _finish(ranks, qc, rows, t, log, seed, n_boot)
