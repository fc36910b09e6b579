"""Contrastive (Siamese) losses for privacy fine-tuning, after Osia et al. 2017, Section III-A, eq. (1).

The paper fine-tunes the feature extractor with a two-tower Siamese network: a pair of images goes
through the same (weight-shared) layers, and the intermediate features ``f1, f2`` are pulled together
when the pair is *similar* (same primary class, e.g. same gender, whatever the identity) and pushed at
least ``margin`` apart when *dissimilar*::

    L(f1, f2) = ||f1 - f2||^2                     similar
              = max(0, margin - ||f1 - f2||)^2    dissimilar

A two-tower network is equivalent to one tower applied to a batch, so :func:`contrastive_loss` forms
the pairs *inside* the batch from one forward pass: all ``i < j`` pairs (or a balanced sample of them),
read off a pairwise distance matrix. :class:`SiameseObjective` adds the task cross-entropy, giving the
multi-objective of the paper's Fig. 4b.

Choices made here, and why
--------------------------
* **Features are flattened per sample** (``(N, C, H, W) -> (N, C*H*W)``): eq. (1) uses the Euclidean
  norm of the whole intermediate feature.
* **Numerically safe distance.** ``||f1 - f2||`` is ``sqrt(clamp(d2, min=1e-12))``; the sqrt's gradient
  is infinite at 0, and the clamp makes it exactly 0 there instead of NaN. The *similar* term uses the
  squared distance directly (no sqrt), so its gradient is exact everywhere. Half-precision inputs are
  computed in float32 (``1e-12`` is not representable in float16).
* **Distance matrix by the Gram identity** ``d2_ij = |x_i|^2 + |x_j|^2 - 2 x_i.x_j`` (memory ``N x N``,
  not ``pairs x D``; split-layer features can be 25k wide). The batch mean is subtracted first
  (distances are translation invariant) to limit cancellation error, and ``d2`` is clamped at 0.
* **Weighting: mean of the two per-type means.** With ``S`` the similar-pair losses and ``D`` the
  dissimilar-pair losses actually used::

      loss = 0.5 * mean(S) + 0.5 * mean(D)

  so the balance between pulling and pushing does not depend on how many pairs of each type the batch
  happens to contain (with two balanced classes about half of all pairs are similar; with ten emotion
  classes only ~10% are). A type with **no pairs contributes 0**: its half-weight is *not* given to the
  other type, so each type's gradient scale is the same in every batch. A batch with no pairs at all
  (``N < 2``) gives a zero loss that is still connected to the graph (``backward()`` works).
* ``pairs="all"`` uses every ``i < j`` pair, or ``max_pairs`` of them drawn uniformly without
  replacement. ``pairs="balanced"`` draws ``m = min(n_similar, n_dissimilar)`` pairs of *each* type
  (``m <= max_pairs // 2`` when ``max_pairs`` is set); if one type is absent it draws up to that cap of
  the other. Draws use ``generator`` (``torch.randperm``); ``None`` means torch's global RNG.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "contrastive_pair_loss",
    "contrastive_loss",
    "contrastive_loss_terms",
    "ContrastiveTerms",
    "SiameseObjective",
    "DISTANCE_EPS",
]

#: Lower clamp on squared distances before ``sqrt`` (gradient finite at zero distance).
DISTANCE_EPS: float = 1e-12

PairMode = Literal["all", "balanced"]
NormalizeMode = Literal["l2", "sqrt_dim", "none"]


def _check_margin(margin: float) -> float:
    if isinstance(margin, bool) or not isinstance(margin, (int, float)):
        raise TypeError(f"margin must be a positive number, got {type(margin).__name__}")
    margin = float(margin)
    if not (margin > 0.0 and margin != float("inf")):
        raise ValueError(f"margin must be positive and finite, got {margin}: pass e.g. margin=1.0")
    return margin


def _as_compute_dtype(x: Tensor) -> Tensor:
    if not x.is_floating_point():
        raise TypeError(f"features must be a floating-point tensor, got {x.dtype}: call .float() first")
    if x.dtype in (torch.float16, torch.bfloat16):
        return x.float()
    return x


def _safe_norm_from_sq(d2: Tensor) -> Tensor:
    """sqrt with the argument clamped at ``DISTANCE_EPS``: finite (zero) gradient at zero distance."""
    return torch.sqrt(torch.clamp(d2, min=DISTANCE_EPS))


def _per_pair_terms(d2: Tensor, similar: Tensor, margin: float) -> Tensor:
    dissimilar_term = torch.clamp(margin - _safe_norm_from_sq(d2), min=0.0) ** 2
    return torch.where(similar, d2, dissimilar_term)


def contrastive_pair_loss(f1: Tensor, f2: Tensor, similar: Tensor | bool, *, margin: float) -> Tensor:
    """Eq. (1) of the paper on explicit pairs, averaged over pairs.

    Args:
        f1, f2: features of the two members of each pair, shape ``(P, *feature_shape)`` (flattened per
            pair to ``(P, D)``). A 1-D pair of vectors is *not* accepted: add the pair axis with
            ``f[None]``.
        similar: bool tensor of shape ``(P,)`` (or one bool for all pairs); True = similar pair.
        margin: dissimilar pairs are penalised while closer than this distance.

    Returns:
        Scalar: ``mean_p L(f1[p], f2[p])``. This is the plain per-pair mean of eq. (1) (no per-type
        re-weighting; that is :func:`contrastive_loss`'s job). ``P == 0`` gives 0.
    """
    margin = _check_margin(margin)
    if f1.shape != f2.shape:
        raise ValueError(f"f1 and f2 must have the same shape, got {tuple(f1.shape)} and {tuple(f2.shape)}")
    if f1.dim() < 2:
        raise ValueError(
            f"f1/f2 need a leading pair axis, shape (P, *feature_shape); got {tuple(f1.shape)}: "
            "for a single pair pass f1[None], f2[None]"
        )
    a = _as_compute_dtype(f1).flatten(1)
    b = _as_compute_dtype(f2).flatten(1)
    n = a.shape[0]
    sim = torch.as_tensor(similar, device=a.device)
    if sim.dtype != torch.bool:
        raise TypeError(f"similar must be bool (True = similar pair), got dtype {sim.dtype}")
    if sim.dim() == 0:
        sim = sim.expand(n)
    if sim.shape != (n,):
        raise ValueError(f"similar must have shape ({n},) to match {n} pairs, got {tuple(sim.shape)}")
    if n == 0:
        return (a.sum() + b.sum()) * 0.0
    d2 = ((a - b) ** 2).sum(dim=1)
    return _per_pair_terms(d2, sim, margin).mean()


class ContrastiveTerms:
    """What :func:`contrastive_loss_terms` returns (plain class; tensors keep their graph).

    Attributes:
        loss: ``0.5 * similar + 0.5 * dissimilar`` (the value :func:`contrastive_loss` returns).
        similar: mean loss over the similar pairs used (0 when none).
        dissimilar: mean loss over the dissimilar pairs used (0 when none).
        n_similar, n_dissimilar: number of pairs of each type used.
    """

    __slots__ = ("loss", "similar", "dissimilar", "n_similar", "n_dissimilar")

    def __init__(self, loss: Tensor, similar: Tensor, dissimilar: Tensor, n_similar: int, n_dissimilar: int):
        self.loss = loss
        self.similar = similar
        self.dissimilar = dissimilar
        self.n_similar = n_similar
        self.n_dissimilar = n_dissimilar

    def __repr__(self) -> str:
        return (f"ContrastiveTerms(loss={float(self.loss):.6g}, similar={float(self.similar):.6g}, "
                f"dissimilar={float(self.dissimilar):.6g}, n_similar={self.n_similar}, "
                f"n_dissimilar={self.n_dissimilar})")


def _pairwise_sq_dists(x: Tensor) -> Tensor:
    """(N, D) -> (N, N) squared Euclidean distances by the Gram identity, clamped at 0."""
    x = x - x.mean(dim=0, keepdim=True).detach()  # translation invariant; reduces cancellation
    sq = (x * x).sum(dim=1)
    d2 = sq[:, None] + sq[None, :] - 2.0 * (x @ x.T)
    return torch.clamp(d2, min=0.0)


def _sample(idx: Tensor, k: int, generator: torch.Generator | None) -> Tensor:
    if k >= idx.numel():
        return idx
    dev = generator.device if generator is not None else torch.device("cpu")
    perm = torch.randperm(idx.numel(), generator=generator, device=dev)[:k].to(idx.device)
    return idx[torch.sort(perm).values]  # keep pair order stable (i<j order), easier to debug


def _check_pair_args(features: Tensor, labels: Tensor, pairs: str, max_pairs: int | None) -> Tensor:
    """Validate :func:`contrastive_loss_terms`' arguments; the labels as a tensor."""
    if pairs not in ("all", "balanced"):
        raise ValueError(f"pairs must be 'all' or 'balanced', got {pairs!r}")
    if max_pairs is not None:
        if isinstance(max_pairs, bool) or not isinstance(max_pairs, int) or max_pairs < 1:
            raise ValueError(f"max_pairs must be a positive int or None, got {max_pairs!r}")
        if pairs == "balanced" and max_pairs < 2:
            raise ValueError("pairs='balanced' draws max_pairs // 2 pairs of each type: use max_pairs >= 2")
    if features.dim() < 2:
        raise ValueError(
            f"features must be (N, *feature_shape) with a batch axis, got shape {tuple(features.shape)}"
        )
    labels = torch.as_tensor(labels)
    if labels.dim() != 1 or labels.shape[0] != features.shape[0]:
        raise ValueError(
            f"labels must be 1-D with one primary label per sample ({features.shape[0]}), "
            f"got shape {tuple(labels.shape)}"
        )
    if labels.is_floating_point():
        raise TypeError("labels must be integer class ids (similar = equal labels), got a float tensor")
    return labels


def _select_pairs(same: Tensor, pairs: str, max_pairs: int | None,
                  generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """Indices (into the upper-triangle pair list) of the similar and dissimilar pairs the loss uses."""
    sim_idx = torch.nonzero(same).flatten()
    dis_idx = torch.nonzero(~same).flatten()

    if pairs == "all":
        if max_pairs is not None and max_pairs < same.numel():
            keep = _sample(torch.arange(same.numel(), device=same.device), max_pairs, generator)
            keep_same = same[keep]
            sim_idx, dis_idx = keep[keep_same], keep[~keep_same]
    else:
        cap = max_pairs // 2 if max_pairs is not None else None
        if sim_idx.numel() and dis_idx.numel():
            m = min(sim_idx.numel(), dis_idx.numel())
        else:
            m = max(sim_idx.numel(), dis_idx.numel())
        if cap is not None:
            m = min(m, cap)
        sim_idx = _sample(sim_idx, m, generator)
        dis_idx = _sample(dis_idx, m, generator)

    return sim_idx, dis_idx


def contrastive_loss_terms(
    features: Tensor,
    labels: Tensor,
    *,
    margin: float,
    pairs: PairMode = "all",
    max_pairs: int | None = None,
    generator: torch.Generator | None = None,
) -> ContrastiveTerms:
    """:func:`contrastive_loss` with its parts (per-type means and pair counts); same arguments."""
    margin = _check_margin(margin)
    labels = _check_pair_args(features, labels, pairs, max_pairs)
    x = _as_compute_dtype(features).flatten(1)
    n = x.shape[0]
    zero = x.sum() * 0.0  # keeps the graph connected for batches without pairs
    if n < 2:
        return ContrastiveTerms(zero, zero, zero, 0, 0)

    labels = labels.to(x.device)
    i, j = torch.triu_indices(n, n, offset=1, device=x.device)
    same = labels[i] == labels[j]
    sim_idx, dis_idx = _select_pairs(same, pairs, max_pairs, generator)

    d2 = _pairwise_sq_dists(x)
    if sim_idx.numel():
        sim_mean = d2[i[sim_idx], j[sim_idx]].mean()
    else:
        sim_mean = zero
    if dis_idx.numel():
        dist = _safe_norm_from_sq(d2[i[dis_idx], j[dis_idx]])
        dis_mean = (torch.clamp(margin - dist, min=0.0) ** 2).mean()
    else:
        dis_mean = zero
    loss = 0.5 * sim_mean + 0.5 * dis_mean
    return ContrastiveTerms(loss, sim_mean, dis_mean, int(sim_idx.numel()), int(dis_idx.numel()))


def contrastive_loss(
    features: Tensor,
    labels: Tensor,
    *,
    margin: float,
    pairs: PairMode = "all",
    max_pairs: int | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Eq. (1) over pairs formed inside one batch; ``0.5 * mean(similar) + 0.5 * mean(dissimilar)``.

    Args:
        features: ``(N, *feature_shape)`` intermediate features of one forward pass (flattened per
            sample).
        labels: ``(N,)`` integer *primary* labels (gender, emotion). Similar = equal labels; the
            identity is deliberately not used, so different identities of one class are pulled together.
        margin: distance below which dissimilar pairs are penalised.
        pairs: ``"all"`` (every ``i < j`` pair) or ``"balanced"`` (equal numbers of each type; see the
            module docstring for the exact rule).
        max_pairs: optional cap on the pairs used (uniform draw; balanced: ``max_pairs // 2`` per type).
        generator: RNG for the draws (only used when pairs are sampled); ``None`` = global RNG.

    Returns:
        Scalar tensor. A type with no pairs in the batch contributes 0 (see module docstring).
    """
    return contrastive_loss_terms(
        features, labels, margin=margin, pairs=pairs, max_pairs=max_pairs, generator=generator
    ).loss


class SiameseObjective(nn.Module):
    """Cross-entropy on the primary task plus ``weight * contrastive_loss`` on the split-layer features.

    This is the multi-objective of the paper's Fig. 4b: the analyzer keeps predicting the primary
    variable while the intermediate features of one primary class collapse together (identities blur).

    Args:
        weight: multiplier of the contrastive term (default 1.0; 0 disables it, CE only).
        margin: contrastive margin in the *normalised* feature space (default 1.0, see ``normalize``).
        pairs, max_pairs: pair selection, as in :func:`contrastive_loss` (default all pairs).
        normalize: how features are scaled *for the contrastive term only* (the analyzer still gets the
            raw features):

            * ``"l2"`` (default): each sample's flattened feature is divided by its L2 norm, so the
              distances lie in ``[0, 2]`` (``[0, sqrt(2)]`` for non-negative ReLU features) and the
              margin means the same thing at every layer and training stage. It also removes the
              degenerate way to shrink the similar-pair term, scaling every feature towards 0 (which
              the next layers can undo). ``margin=1.0`` is about a 60 degree angle: reachable by ReLU
              features and far from the near-zero distances of a collapsed class.
            * ``"sqrt_dim"``: divide by ``sqrt(D)``; distances become root-mean-square per unit,
              comparable across layer widths but still in the activations' own scale.
            * ``"none"``: the paper's eq. (1) on raw features; pick the margin from the feature scale.
        seed: seeds a private generator for pair sampling (``None`` = global RNG).

    ``forward(logits, features, labels)`` returns ``(total, parts)``; ``total`` carries the graph and
    ``parts`` holds *detached* values for logging: ``ce``, ``contrastive``, ``contrastive_similar``,
    ``contrastive_dissimilar``, ``total`` (0-d float tensors) and ``n_similar``, ``n_dissimilar``
    (0-d int64 tensors).
    """

    def __init__(
        self,
        *,
        weight: float = 1.0,
        margin: float = 1.0,
        pairs: PairMode = "all",
        max_pairs: int | None = None,
        normalize: NormalizeMode = "l2",
        seed: int | None = None,
        class_weight: Tensor | None = None,
    ) -> None:
        super().__init__()
        # per-class cross-entropy weights (e.g. balanced for LFW's 78% male images)
        self.register_buffer("class_weight", None if class_weight is None else class_weight.float())
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0.0 <= float(weight) < float("inf"):
            raise ValueError(f"weight must be a finite number >= 0, got {weight!r}")
        if normalize not in ("l2", "sqrt_dim", "none"):
            raise ValueError(f"normalize must be 'l2', 'sqrt_dim' or 'none', got {normalize!r}")
        if pairs not in ("all", "balanced"):
            raise ValueError(f"pairs must be 'all' or 'balanced', got {pairs!r}")
        self.weight = float(weight)
        self.margin = _check_margin(margin)
        self.pairs: PairMode = pairs
        self.max_pairs = max_pairs
        self.normalize: NormalizeMode = normalize
        self.seed = seed
        self._generator: torch.Generator | None = None
        if seed is not None:
            self._generator = torch.Generator().manual_seed(int(seed))

    def extra_repr(self) -> str:
        return (f"weight={self.weight}, margin={self.margin}, pairs={self.pairs!r}, "
                f"max_pairs={self.max_pairs}, normalize={self.normalize!r}")

    def _normalized(self, features: Tensor) -> Tensor:
        x = _as_compute_dtype(features).flatten(1)
        if self.normalize == "l2":
            return F.normalize(x, p=2.0, dim=1, eps=1e-12)
        if self.normalize == "sqrt_dim":
            return x / (x.shape[1] ** 0.5)
        return x

    def forward(self, logits: Tensor, features: Tensor, labels: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        if logits.dim() != 2 or logits.shape[0] != features.shape[0]:
            raise ValueError(
                f"logits must be (N, num_classes) with N = features.shape[0] = {features.shape[0]}, "
                f"got {tuple(logits.shape)}"
            )
        ce = F.cross_entropy(logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits,
                             labels, weight=self.class_weight)
        terms = contrastive_loss_terms(
            self._normalized(features), labels, margin=self.margin, pairs=self.pairs,
            max_pairs=self.max_pairs, generator=self._generator,
        )
        total = ce + self.weight * terms.loss
        parts = {
            "ce": ce.detach(),
            "contrastive": terms.loss.detach(),
            "contrastive_similar": terms.similar.detach(),
            "contrastive_dissimilar": terms.dissimilar.detach(),
            "n_similar": torch.tensor(terms.n_similar),
            "n_dissimilar": torch.tensor(terms.n_dissimilar),
            "total": total.detach(),
        }
        return total, parts
