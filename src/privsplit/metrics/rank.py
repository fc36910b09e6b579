"""Rank privacy metric of Osia et al. 2017, Section IV-C (eqs. 2-4).

Setting. Clean features ``f_i`` (N x d) carry a sensitive class ``c_i`` (e.g. identity) out of ``T``
classes. The device sends noisy points ``z_i = f_i + eps_i`` with ``eps ~ N(0, Sigma)``, where
``Sigma = diag(sigma^2)`` (isotropic when ``sigma`` is a scalar). An attacker who knows every clean
feature and its class estimates the class-conditional likelihood of a noisy point by a kernel density
(eq. 4)::

    P^(z | c) = 1/N_c * sum_{f_j in class c} N(z; f_j, Sigma)

and ranks the ``T`` classes by it. For each noisy point ``z_i``::

    rank_i    = #{c != c_i : P^(z_i|c) > P^(z_i|c_i)} + 1/2 * #{c != c_i : P^(z_i|c) == P^(z_i|c_i)}
    privacy_i = rank_i / T                           (paper)
    privacy   = mean_i privacy_i                     (paper's Privacy_total)

so ``privacy == 0`` means the true class is always ranked strictly first. The paper's ranks are
1-based (best rank 1, privacy >= 1/T); ours are 0-based, so the paper's value = ours + 1/T. The
enrolment form (clean enrolment references, noisy held-out queries) is
:mod:`privsplit.metrics.rank_enrolment`. Exact ties are counted half,
so a uniformly random ranking gives ``E[rank] = (T-1)/2`` and ``privacy -> (T-1)/(2T)`` (about 0.5).

Levels:

* ``level="class"`` (the paper): classes are the given sensitive labels.
* ``level="sample"``: each sample is its own class (``T = N``), as in the authors' released code: each
  ``z_i`` is compared with *all* clean ``f_j``, its own ``f_i`` included, and the "true class" of
  ``z_i`` is ``f_i``.

In both levels the reference set contains the clean feature of the point being ranked (the paper
uses "all the intermediate features"); this favours the attacker, most for small classes.

Log variant (``log=True``): ``privacy_i = log(1 + rank_i) / log(T)``, also in [0, 1]; it spreads out
the low-rank end, where a strong attacker sits. With ``T == 1`` the privacy is defined as 0.

Computation (``rank_privacy``): exact, in float64 and in log space. Constant Gaussian normalisers and
``-|z|^2/2`` are the same for every class of a given ``z`` and are dropped; the remaining score is
``s_ij = z'_i . f'_j - |f'_j|^2 / 2`` with ``x' = (x - mean(f)) / sigma`` (one matrix product per
chunk of query points). The per-class log-mean-exp is a segment reduction: per-class max via
``scatter_reduce(amax)``, then ``index_add_`` of ``exp(s - max)``, ``/ N_c``, ``log``, ``+ max``.
Memory is about ``2 * chunk_size * N + 2 * chunk_size * T`` float64 values beyond the inputs.

``rank_privacy_naive`` is a direct, slow test reference (explicit densities, a Python loop over
points); it underflows for large distances / high ``d`` and is not meant for real use.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from collections.abc import Hashable
from typing import Any, Literal, Sequence, TypeAlias

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "RankPrivacy",
    "RankPrivacyResult",
    "primary_label_ceiling",
    "rank_privacy",
    "rank_privacy_naive",
]

Level = Literal["class", "sample"]
#: class labels of the feature rows: a tensor or array of labels, any sequence of hashable labels, or ``None``
Labels: TypeAlias = "Tensor | np.ndarray | Sequence[Hashable] | None"
_Z95 = 1.959963984540054  # two-sided 95% normal quantile


@dataclass(frozen=True)
class RankPrivacyResult:
    """Result of a rank privacy evaluation.

    Attributes:
        privacy: mean privacy over points (the paper's ``Privacy_total``; log variant if ``log``).
        ranks: (N,) float64 rank of each point's true class, in input order; half-integers on ties.
        per_point: (N,) float64 privacy of each point (``rank / T`` or ``log1p(rank) / log(T)``).
        num_classes: ``T``, the number of classes ranked (``N`` at sample level).
        num_points: ``N``.
        std_error: standard error of ``privacy`` (sample std of ``per_point`` / sqrt(N); NaN if N < 2).
            It treats points as independent, which ignores that they also form the reference set.
        ci95: normal-approximation 95% interval ``privacy -/+ 1.96 * std_error``.
        level: ``"class"`` or ``"sample"``.
        log: whether the log-rank variant was used.
    """

    privacy: float
    ranks: Tensor
    per_point: Tensor
    num_classes: int
    num_points: int
    std_error: float
    ci95: tuple[float, float]
    level: str
    log: bool


# ----------------------------------------------------------------------------------------- helpers
def _encode_labels(labels: Any, n: int | None = None, what: str = "classes") -> tuple[Tensor, int]:
    """Map arbitrary labels (tensor, ndarray or sequence of hashables) to codes 0..K-1 (sorted)."""
    if isinstance(labels, Tensor):
        if labels.dim() != 1:
            raise ValueError(f"{what} must be 1-D, got shape {tuple(labels.shape)}")
        if labels.is_floating_point() or labels.is_complex():
            raise ValueError(f"{what} must be integer labels, got dtype {labels.dtype}")
        uniq, codes = torch.unique(labels.cpu(), sorted=True, return_inverse=True)
        codes, k = codes.to(torch.int64), int(uniq.numel())
    else:
        arr = np.asarray(labels)
        if arr.ndim != 1:
            raise ValueError(f"{what} must be 1-D, got shape {arr.shape}")
        if arr.dtype.kind == "f":
            raise ValueError(f"{what} must be integer or string labels, got dtype {arr.dtype}")
        uniq, inv = np.unique(arr, return_inverse=True)
        codes, k = torch.from_numpy(inv.reshape(-1).astype(np.int64)), int(len(uniq))
    if n is not None and codes.numel() != n:
        raise ValueError(f"{what} has {codes.numel()} entries, features have {n} rows")
    return codes, k


def _sigma_vector(sigma: float | Tensor | Sequence[float], d: int, device: torch.device) -> Tensor:
    s = torch.as_tensor(sigma, dtype=torch.float64, device=device)
    if s.dim() == 0 or s.numel() == 1:
        s = s.reshape(1).expand(d)
    elif s.dim() != 1 or s.numel() != d:
        raise ValueError(f"sigma must be a scalar or a vector of length d={d}, got shape {tuple(s.shape)}")
    if not bool(torch.isfinite(s).all()) or not bool((s > 0).all()):
        raise ValueError("sigma must be finite and > 0 (the attacker's kernel is N(f_j, diag(sigma^2)))")
    return s.contiguous()


def _prepare(features: Tensor, classes: Any, sigma: Any, noise: Tensor | None,
             generator: torch.Generator | None, level: str) -> tuple[Tensor, Tensor, Tensor, Tensor, int]:
    """Validate inputs; return (f, z, sigma_vec, codes, T) with f, z float64."""
    if level not in ("class", "sample"):
        raise ValueError(f"level must be 'class' or 'sample', got {level!r}")
    if not isinstance(features, Tensor):
        features = torch.as_tensor(features)
    if features.dim() != 2 or features.shape[0] < 1 or features.shape[1] < 1:
        raise ValueError(f"features must be a non-empty (N, d) tensor, got shape {tuple(features.shape)}")
    f = features.detach().to(torch.float64)
    if not bool(torch.isfinite(f).all()):
        raise ValueError("features contain non-finite values")
    n, d = f.shape
    sig = _sigma_vector(sigma, d, f.device)
    if level == "class":
        if classes is None:
            raise ValueError("classes are required at level='class'")
        codes, t = _encode_labels(classes, n)
    else:  # each sample its own class; classes (if given) only checked for length
        if classes is not None:
            _encode_labels(classes, n)
        codes, t = torch.arange(n, dtype=torch.int64), n
    codes = codes.to(f.device)
    if noise is None:
        eps = torch.randn(n, d, generator=generator, dtype=torch.float64, device=f.device)
        z = f + eps * sig
    else:
        z = torch.as_tensor(noise).detach().to(device=f.device, dtype=torch.float64)
        if z.shape != f.shape:
            raise ValueError(f"noise (the noisy points z) must have shape {tuple(f.shape)}, got {tuple(z.shape)}")
        if not bool(torch.isfinite(z).all()):
            raise ValueError("noise (noisy points) contains non-finite values")
    return f, z, sig, codes, t


def _finish(ranks: Tensor, t: int, level: str, log: bool) -> RankPrivacyResult:
    n = ranks.numel()
    if log:
        per_point = torch.log1p(ranks) / math.log(t) if t > 1 else torch.zeros_like(ranks)
    else:
        per_point = ranks / t
    mean = float(per_point.mean())
    se = float(per_point.std(unbiased=True)) / math.sqrt(n) if n > 1 else float("nan")
    return RankPrivacyResult(privacy=mean, ranks=ranks, per_point=per_point, num_classes=t, num_points=n,
                             std_error=se, ci95=(mean - _Z95 * se, mean + _Z95 * se), level=level, log=log)


def _ranks_from_scores(scores: Tensor, true_rows: Tensor) -> Tensor:
    """scores: (T, C) class scores per query column; true_rows: (C,) true class row. -> (C,) ranks."""
    true_score = scores.gather(0, true_rows.unsqueeze(0))  # (1, C)
    greater = (scores > true_score).sum(0)
    equal = (scores == true_score).sum(0) - 1  # minus the true class itself
    return greater.to(torch.float64) + 0.5 * equal.to(torch.float64)


# -------------------------------------------------------------------------------------- public API
def rank_privacy(features: Tensor, classes: Labels = None, *, sigma: float | Tensor | Sequence[float],
                 noise: Tensor | None = None, generator: torch.Generator | None = None,
                 level: Level = "class", log: bool = False, chunk_size: int = 1024) -> RankPrivacyResult:
    """Rank privacy (Osia et al. 2017, IV-C), exact, chunked over query points.

    Args:
        features: (N, d) clean features ``f``; computed in float64.
        classes: (N,) sensitive labels (ints tensor/array or hashables); may be None at sample level.
        sigma: noise std, a scalar (isotropic) or a length-d vector (diagonal covariance). Used both to
            draw the noise and as the attacker's kernel width.
        noise: optional precomputed **noisy points z** (N, d) (not the noise increment); when None,
            ``z = f + sigma * randn(generator)`` (float64 draw).
        generator: torch.Generator for the noise draw.
        level: ``"class"`` (paper) or ``"sample"`` (each sample its own class, T = N).
        log: use ``log(1 + rank) / log(T)`` instead of ``rank / T``.
        chunk_size: query points per chunk; memory ~ ``2 * chunk_size * (N + T)`` float64 values.
    """
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    f, z, sig, codes, t = _prepare(features, classes, sigma, noise, generator, level)
    n = f.shape[0]
    mu = f.mean(0)
    fs = (f - mu) / sig
    zs = (z - mu) / sig
    ranks = torch.empty(n, dtype=torch.float64, device=f.device)
    if level == "class":
        order = torch.argsort(codes, stable=True)  # members of a class contiguous: cache-friendly
        fs = fs[order].contiguous()
        idx = codes[order]
        counts = torch.bincount(codes, minlength=t).to(torch.float64).unsqueeze(1)  # (T, 1)
    bias = (-0.5 * (fs * fs).sum(1)).unsqueeze(1)  # (N, 1)
    for start in range(0, n, chunk_size):
        stop = min(start + chunk_size, n)
        c = stop - start
        # (N, C): s_jc = f'_j . z'_c - |f'_j|^2 / 2 = log N(z_c; f_j, Sigma) + const(z_c)
        s = torch.addmm(bias, fs, zs[start:stop].T)
        if level == "sample":
            scores = s
            true_rows = torch.arange(start, stop, device=f.device)
        else:
            cmax = torch.full((t, c), -math.inf, dtype=torch.float64, device=f.device)
            cmax.scatter_reduce_(0, idx.unsqueeze(1).expand(n, c), s, reduce="amax", include_self=True)
            s.sub_(torch.index_select(cmax, 0, idx)).exp_()  # in place: s <- exp(s - classmax)
            scores = torch.zeros((t, c), dtype=torch.float64, device=f.device)
            scores.index_add_(0, idx, s)
            del s
            # log-mean-exp per class; dividing before the log keeps exact ties exact (N_c / N_c == 1)
            scores.div_(counts).log_().add_(cmax)
            true_rows = codes[start:stop]
        ranks[start:stop] = _ranks_from_scores(scores, true_rows)
    return _finish(ranks, t, level, log)


def rank_privacy_naive(features: Tensor, classes: Labels = None, *, sigma: float | Tensor | Sequence[float],
                       noise: Tensor | None = None, generator: torch.Generator | None = None,
                       level: Level = "class", log: bool = False) -> RankPrivacyResult:
    """Direct implementation of eqs. 2-4 (test reference only).

    Loops over noisy points; for each, evaluates the explicit Gaussian densities
    ``(2 pi)^{-d/2} |Sigma|^{-1/2} exp(-|z - f_j|^2_Sigma / 2)`` in float64, averages them per class
    and counts the classes with a strictly larger (or equal) likelihood. Densities underflow to 0 for
    large Mahalanobis distances (roughly > 1400 in squared units, less for large d), which creates
    spurious ties; use small ``d`` and moderate distances. Same noise draw as ``rank_privacy`` for the
    same generator state.
    """
    f, z, sig, codes, t = _prepare(features, classes, sigma, noise, generator, level)
    n, d = f.shape
    var = sig * sig
    norm = (2.0 * math.pi) ** (-d / 2) / float(torch.sqrt(var.prod()))
    counts = torch.bincount(codes, minlength=t).to(torch.float64)
    ranks = torch.empty(n, dtype=torch.float64)
    for i in range(n):
        diff = z[i] - f
        dens = norm * torch.exp(-0.5 * (diff * diff / var).sum(1))  # N(z_i; f_j, Sigma), all j
        if level == "sample":
            like = dens
        else:
            like = torch.zeros(t, dtype=torch.float64, device=f.device).index_add_(0, codes, dens) / counts
        true = like[codes[i]]
        greater = int((like > true).sum())
        equal = int((like == true).sum()) - 1
        ranks[i] = greater + 0.5 * equal
    return _finish(ranks.to(f.device), t, level, log)


def primary_label_ceiling(classes: Labels, primary: Labels, *, log: bool = False) -> float:
    """Rank privacy of an attacker who only knows each point's primary label (e.g. gender).

    Such an attacker ranks all classes carrying the point's primary label first, in uniformly random
    order, then the other classes. The true class's expected rank is ``(K_p - 1) / 2``, with ``K_p`` the
    number of classes whose primary label is ``p``; the returned value is the mean over points of
    ``((K_p - 1) / 2) / T`` (log variant: ``E[log(1 + R)] / log(T)`` with ``R`` uniform on
    ``0..K_p-1``, i.e. ``lgamma(K_p + 1) / K_p / log(T)``). This is the privacy an embedding attains
    if it leaks the primary label perfectly and nothing else about the class.

    ``classes`` and ``primary`` are per-point labels (same length). A class may carry several primary
    labels (CK+: one person shows several expressions): ``K_p`` then counts the classes with at least
    one point labelled ``p``, the identities such an attacker must choose among. A missing primary
    label must be given as an explicit value (e.g. ``""`` or ``-1``); it is a group of its own.
    """
    codes, t = _encode_labels(classes, None, "classes")
    pcodes, p = _encode_labels(primary, codes.numel(), "primary")
    if codes.numel() == 0:
        raise ValueError("no points")
    pairs = torch.unique(codes * p + pcodes)  # distinct (class, primary label) combinations
    k_per_primary = torch.bincount(pairs % p, minlength=p).to(torch.float64)  # classes per primary label
    k = k_per_primary[pcodes]  # K_p per point
    if log:
        if t == 1:
            return 0.0
        per_point = (torch.lgamma(k + 1.0) / k) / math.log(t)
    else:
        per_point = (k - 1.0) / 2.0 / t
    return float(per_point.mean())


class RankPrivacy:
    """Accumulating rank privacy metric (torchmetrics-style API, no torchmetrics dependency).

    ``update`` stores features and labels (the metric is not decomposable: every point is ranked
    against the whole accumulated reference set); ``compute`` runs :func:`rank_privacy` on everything
    accumulated and returns a :class:`RankPrivacyResult`; ``reset`` clears the state.

    Noise: with ``seed`` set, each ``compute`` draws with a fresh ``torch.Generator`` seeded with it
    (reproducible, same as ``rank_privacy(..., generator=torch.Generator().manual_seed(seed))``); with
    ``generator``, that generator is used (its state advances); with neither, the global RNG.
    Alternatively pass the noisy points to every ``update`` (``noise=``; all or none).
    """

    def __init__(self, *, sigma: float | Tensor | Sequence[float], level: Level = "class", log: bool = False,
                 chunk_size: int = 1024, seed: int | None = None,
                 generator: torch.Generator | None = None) -> None:
        if seed is not None and generator is not None:
            raise ValueError("give seed or generator, not both")
        if level not in ("class", "sample"):
            raise ValueError(f"level must be 'class' or 'sample', got {level!r}")
        self.sigma = sigma
        self.level: Level = level
        self.log = log
        self.chunk_size = chunk_size
        self.seed = seed
        self.generator = generator
        self.reset()

    def reset(self) -> None:
        """Forget every batch seen so far."""
        self._features: list[Tensor] = []
        self._classes: list[np.ndarray] = []
        self._noise: list[Tensor | None] = []

    def update(self, features: Tensor, classes: Labels = None, noise: Tensor | None = None) -> None:
        """Add a batch of features ``(B, d)`` with their classes (class level) and the noise drawn, if known."""
        feats = torch.as_tensor(features).detach()
        if feats.dim() != 2:
            raise ValueError(f"features must be (B, d), got shape {tuple(feats.shape)}")
        if self._features and feats.shape[1] != self._features[0].shape[1]:
            raise ValueError("feature dimension changed between updates")
        if self._noise and (noise is None) != (self._noise[0] is None):
            raise ValueError("pass noise (noisy points) to every update or to none")
        if classes is None:
            if self.level == "class":
                raise ValueError("classes are required at level='class'")
            labels = np.zeros(feats.shape[0], dtype=np.int64)
        else:
            labels = classes.detach().cpu().numpy() if isinstance(classes, Tensor) else np.asarray(classes)
            if labels.ndim != 1 or labels.shape[0] != feats.shape[0]:
                raise ValueError("classes must be 1-D with one label per feature row")
        if noise is not None:
            noise = torch.as_tensor(noise).detach()
            if noise.shape != feats.shape:
                raise ValueError("noise (noisy points) must have the shape of features")
        self._features.append(feats.to(torch.float64))
        self._classes.append(labels)
        self._noise.append(noise)

    @property
    def num_points(self) -> int:
        """Feature rows accumulated so far."""
        return sum(int(x.shape[0]) for x in self._features)

    def compute(self) -> RankPrivacyResult:
        """The rank privacy of everything passed to :meth:`update` (see :func:`rank_privacy`)."""
        if not self._features:
            raise RuntimeError("compute() called before update()")
        feats = torch.cat(self._features)
        classes = np.concatenate(self._classes) if self.level == "class" else None
        noise = None if self._noise[0] is None else torch.cat([x.to(torch.float64) for x in self._noise])  # type: ignore[union-attr]
        gen = self.generator
        if self.seed is not None:
            gen = torch.Generator(device=feats.device).manual_seed(self.seed)
        return rank_privacy(feats, classes, sigma=self.sigma, noise=noise, generator=gen, level=self.level,
                            log=self.log, chunk_size=self.chunk_size)
