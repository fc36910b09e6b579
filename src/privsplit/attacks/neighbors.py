"""Clean-bank identity attacks: 1-nearest-neighbour and a noise-aware Gaussian likelihood classifier.

What the attacker knows and uses (the threat model of :mod:`privsplit.attacks`):

* its own copy of the client (the app ships extractor, PCA basis and noise spec), so it computes the
  **clean** (noise-free) features of its enrolment photos -- a clean reference bank;
* the public noise spec: ``sigma``, ``scale`` and the per-feature ``std`` (:func:`noise_variance`);
* the received (noisy) features of each query, possibly the average of ``repeats`` sends of one photo.

Neither attack learns from auxiliary people; both fit in a second on the enrolment photos.
"""
from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from privsplit.attacks.base import ATTACKS, IdentityAttack
from privsplit.attacks.common import clean_features, relabel
from privsplit.data.faces import FaceData
from privsplit.defenses.noise import GaussianNoise, NoNoise

__all__ = ["NearestNeighborAttack", "LikelihoodAttack", "noise_variance", "shrunk_covariance"]


def noise_variance(noise: nn.Module, shape: tuple[int, ...], *, repeats: int = 1) -> Tensor:
    """Per-feature variance (flattened, float64) of the device noise after averaging ``repeats`` sends.

    ``GaussianNoise``: ``(sigma * std)^2`` for ``scale="std"``, ``sigma^2`` when isotropic; ``NoNoise``: 0.
    """
    d = int(torch.tensor(shape).prod()) if shape else 1
    if isinstance(noise, NoNoise) or (isinstance(noise, GaussianNoise) and noise.sigma == 0):
        return torch.zeros(d, dtype=torch.float64)
    if not isinstance(noise, GaussianNoise):
        raise ValueError(f"noise-aware attacks need the public spec of a GaussianNoise or NoNoise, got "
                         f"{type(noise).__name__}; use the '1-nn' or 'metric' attack for other noises")
    if noise.scale == "std":
        if noise.std is None:
            raise ValueError("the noise has scale='std' but no fitted std: load the client bundle's noise spec")
        var = (noise.sigma * noise.std.double().flatten()) ** 2
    else:
        var = torch.full((d,), noise.sigma ** 2, dtype=torch.float64)
    return var / max(1, int(repeats))


def shrunk_covariance(residuals: Tensor, *, dof: int | None = None,
                      shrinkage: float | None = None) -> tuple[Tensor, float]:
    """Covariance of ``residuals`` (rows already centred) shrunk towards its diagonal.

    Works on the correlation scale: ``R = D^-1/2 S D^-1/2`` becomes ``a I + (1 - a) R``, then is scaled
    back, so every feature keeps its own variance and only the correlations shrink. ``a`` is the
    analytic Ledoit-Wolf (2004) intensity unless ``shrinkage`` fixes it. Why: reduced features have
    variances spanning orders of magnitude (PCA) and spatial features have more dimensions than the
    ~900 enrolment photos, where the sample covariance is singular. ``dof`` is the denominator of ``S``
    (rows minus classes for a pooled within-class covariance). Returns the covariance and ``a``.
    """
    x = residuals.double()
    n, d = x.shape
    dof = dof or n
    scale = ((x * x).sum(0) / dof).clamp(min=1e-12).sqrt()
    xs = x / scale
    r = xs.T @ xs / dof
    eye = torch.eye(d, dtype=torch.float64)
    if shrinkage is None:
        r_n = xs.T @ xs / n  # Ledoit-Wolf's intensity, computed on the 1/n sample covariance
        m = float(torch.diagonal(r_n).mean())
        delta2 = float(((r_n - m * eye) ** 2).sum())
        beta2 = float(((xs * xs).sum(1) ** 2).sum() - n * (r_n * r_n).sum()) / (n * n)
        shrinkage = 1.0 if delta2 <= 0 else min(1.0, max(0.0, beta2 / delta2))
    r = shrinkage * eye + (1 - shrinkage) * r
    return r * scale.view(-1, 1) * scale.view(1, -1), float(shrinkage)


@ATTACKS.register("1-nn")
class NearestNeighborAttack(IdentityAttack):
    """1-nearest-neighbour on standardised features: clean enrolment bank, received (noisy) queries.

    Assumes: the attacker's client copy gives the clean features of its enrolment photos. Features are
    standardised by the bank's per-feature std (so no dimension dominates by scale); an identity's score
    is minus the distance to its nearest enrolment photo. Not noise-aware: it is the baseline the
    likelihood attack must beat.
    """

    name: ClassVar[str] = "1-nn"

    def fit(self, train: FaceData, *, column: str = "identity") -> NearestNeighborAttack:
        feats = clean_features(self.embedding, train)[0].flatten(1).double()
        self.mean, self.std = feats.mean(0), feats.std(0).clamp(min=1e-6)
        self.bank = (feats - self.mean) / self.std
        self.bank_y, self.classes = relabel(train.labels[column])
        return self

    @torch.no_grad()
    def score(self, received: Tensor, *, repeats: int = 1) -> Tensor:
        q = (received.flatten(1).double() - self.mean) / self.std
        out = []
        for s in range(0, len(q), 1024):  # chunks keep the (queries x bank) distance matrix small
            d = torch.cdist(q[s : s + 1024], self.bank)
            best = torch.full((len(d), len(self.classes)), float("inf"), dtype=torch.float64)
            out.append(-best.scatter_reduce(1, self.bank_y.expand(len(d), -1), d, reduce="amin"))
        return torch.cat(out)


@ATTACKS.register("likelihood")
class LikelihoodAttack(IdentityAttack):
    """Noise-aware Gaussian likelihood classifier (LDA with the device noise added to the covariance).

    Model: the clean feature of a photo of identity ``c`` is ``N(mu_c, W)``; the server receives it plus
    ``N(0, Sigma_noise / repeats)``. So ``z ~ N(mu_c, W * (1 + 1/n) + Sigma_noise / repeats)``, where

    * ``mu_c`` is the mean of the clean enrolment features of ``c`` (``n`` photos; the ``1 + 1/n``
      factor is the posterior-predictive inflation for an estimated mean, ``n`` the mean enrolment count);
    * ``W`` is the pooled within-class covariance of the clean enrolment features, Ledoit-Wolf shrunk
      towards its diagonal (:func:`shrunk_covariance`; ``shrinkage=float`` fixes the intensity instead);
    * ``Sigma_noise`` is diagonal, from the public noise spec (:func:`noise_variance`).

    The score is the log-likelihood (constants shared by every identity dropped), so scores are
    log-probabilities up to a per-query constant -- what per-user evidence sums. Assumes the noise is
    Gaussian with a public spec (it is in privsplit) and a shared within-class covariance.
    """

    name: ClassVar[str] = "likelihood"

    def __init__(self, embedding: nn.Module, *, aux: FaceData | None = None, seed: int = 0,
                 embedding_name: str | None = None, shrinkage: float | None = None) -> None:
        super().__init__(embedding, aux=aux, seed=seed, embedding_name=embedding_name)
        if shrinkage is not None and not 0 <= shrinkage <= 1:
            raise ValueError(f"shrinkage={shrinkage} must be in [0, 1] (or None for Ledoit-Wolf)")
        self.shrinkage = shrinkage
        self._solved: dict[int, tuple[Tensor, Tensor]] = {}

    def fit(self, train: FaceData, *, column: str = "identity") -> LikelihoodAttack:
        feats = clean_features(self.embedding, train)[0]
        self.shape = tuple(feats.shape[1:])
        x = feats.flatten(1).double()
        y, self.classes = relabel(train.labels[column])
        t = len(self.classes)
        counts = torch.bincount(y, minlength=t).double()
        self.means = torch.zeros(t, x.shape[1], dtype=torch.float64).index_add_(0, y, x) / counts.view(-1, 1)
        cov, lw = shrunk_covariance(x - self.means[y], dof=max(1, len(x) - t), shrinkage=self.shrinkage)
        self.within, self.shrinkage_used = cov * (1 + 1 / float(counts.mean())), lw
        self._solved = {}
        return self

    def _solve(self, repeats: int) -> tuple[Tensor, Tensor]:
        """``C^-1 mu_c`` (d, T) and ``-mu_c' C^-1 mu_c / 2`` (T,) for the covariance at ``repeats``."""
        if repeats not in self._solved:
            cov = self.within + torch.diag(noise_variance(self.embedding.noise, self.shape, repeats=repeats))
            jitter = 1e-9 * float(torch.diagonal(cov).mean())
            chol = torch.linalg.cholesky(cov + jitter * torch.eye(len(cov), dtype=torch.float64))
            w = torch.cholesky_solve(self.means.T, chol)
            self._solved[repeats] = (w, -0.5 * (self.means.T * w).sum(0))
        return self._solved[repeats]

    @torch.no_grad()
    def score(self, received: Tensor, *, repeats: int = 1) -> Tensor:
        w, bias = self._solve(repeats)
        return received.flatten(1).double() @ w + bias
