"""Privacy objectives on the extractor: primary cross-entropy + ``weight`` x a privacy term, one loop.

Every trained defence of :mod:`privsplit.defenses.zoo` fine-tunes a copy of the primary model with

    loss = CE(analyzer(z), primary) + weight * privacy(x, z, identity),   z = extractor(x)

where ``privacy`` is one of:

* :class:`DistanceCorrelation` -- NoPeek (Vepakomma et al., "NoPeek: Information leakage reduction to
  share activations in distributed deep learning", ICDMW 2020): minimise the sample distance
  correlation between the raw input batch and the transmitted features.
* :class:`IdentityAdversary` -- adversarial obfuscation (Li et al., "DeepObfuscator", 2019/2021;
  Liu et al., "PAN: Privacy-preserving deep learning via Adversarial Networks", 2019): an identity
  classifier on the features, trained through a gradient-reversal layer (Ganin & Lempitsky, ICML 2015),
  so one backward pass trains the classifier to find identity and the extractor to remove it. The
  identities are those of the *training* (auxiliary) people, never the attack split.
* :class:`SiameseTerm` -- the paper's contrastive term (Osia et al. 2017), combinable with the adversary
  (``siamese-adversarial``).

Choices (documented because the papers leave them open): Adam, lr 5e-4, 2 epochs by default; the
adversary is a linear layer on the flattened, L2-normalised features (a stronger head gave the same
trend on tiny models and costs more); the distance correlation is computed per batch on the flattened
pixels and features (NoPeek's own estimator), batches of 64.
"""
from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from privsplit.data.faces import FaceData
from privsplit.models.split import split

__all__ = ["distance_correlation", "GradReverse", "DistanceCorrelation", "IdentityAdversary", "SiameseTerm",
           "FinetuneConfig", "privacy_finetune", "noise_trained_analyzer"]


def _centred_distances(x: Tensor) -> Tensor:
    d = torch.cdist(x, x)
    return d - d.mean(0, keepdim=True) - d.mean(1, keepdim=True) + d.mean()


def distance_correlation(x: Tensor, z: Tensor) -> Tensor:
    """Sample distance correlation (Szekely et al. 2007) between rows of ``x`` and ``z`` (any shapes, N rows)."""
    a, b = _centred_distances(x.flatten(1).double()), _centred_distances(z.flatten(1).double())
    dcov = (a * b).mean().clamp_min(0)
    denom = ((a * a).mean() * (b * b).mean()).sqrt().clamp_min(1e-12)
    return (dcov / denom).sqrt().to(z.dtype)


class GradReverse(torch.autograd.Function):
    """Identity forward, ``-scale * grad`` backward (Ganin & Lempitsky 2015)."""

    @staticmethod
    def forward(ctx, x: Tensor, scale: float) -> Tensor:  # type: ignore[override]
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return -ctx.scale * grad, None


class DistanceCorrelation(nn.Module):
    """NoPeek's term: distance correlation between the input batch and its features."""

    def forward(self, x: Tensor, z: Tensor, identity: Tensor) -> Tensor:
        return distance_correlation(x, z)


class IdentityAdversary(nn.Module):
    """A linear identity classifier behind gradient reversal; its CE is *added* to the loss (the reversal
    makes the extractor maximise it while the classifier minimises it)."""

    def __init__(self, n_features: int, n_identities: int) -> None:
        super().__init__()
        self.head = nn.Linear(n_features, n_identities)
        self.last_accuracy = 0.0

    def forward(self, x: Tensor, z: Tensor, identity: Tensor) -> Tensor:
        logits = self.head(GradReverse.apply(F.normalize(z.flatten(1), dim=1), 1.0))
        self.last_accuracy = float((logits.argmax(1) == identity).float().mean())
        return F.cross_entropy(logits, identity)


class SiameseTerm(nn.Module):
    """The paper's contrastive term on the primary label (delegates to ``privsplit.train.losses``)."""

    def __init__(self, margin: float = 1.0) -> None:
        super().__init__()
        from privsplit.train.losses import contrastive_loss

        self._loss, self.margin = contrastive_loss, margin

    def forward(self, x: Tensor, z: Tensor, primary: Tensor) -> Tensor:
        return self._loss(F.normalize(z.flatten(1), dim=1), primary, margin=self.margin)


@dataclass(frozen=True)
class FinetuneConfig:
    epochs: int = 2
    lr: float = 5e-4
    batch_size: int = 64
    seed: int = 0


Term = Callable[[Tensor, Tensor, Tensor], Tensor]


def privacy_finetune(model: nn.Sequential, train: FaceData, *, layer: str, column: str, terms: dict[str, tuple[nn.Module, float]],
                     identity: str = "identity", config: FinetuneConfig = FinetuneConfig()) -> tuple[nn.Sequential, dict[str, float]]:
    """A fine-tuned copy of ``model``: CE on ``column`` + sum of ``weight * term(x, z, labels)``.

    ``terms`` maps a name to ``(module, weight)``; the Siamese term gets the primary labels, the others the
    ``identity`` labels (relabelled 0..K-1). Returns the model (eval mode) and the last epoch's mean terms.
    """
    torch.manual_seed(config.seed)
    tuned = copy.deepcopy(model).train()
    extractor, analyzer = split(tuned, at=layer)
    params = list(tuned.parameters()) + [p for m, _ in terms.values() for p in m.parameters()]
    opt = torch.optim.Adam(params, lr=config.lr)
    ids = torch.unique(train.labels[identity], return_inverse=True)[1] if identity in train.labels else None
    gen = torch.Generator().manual_seed(config.seed)
    means: dict[str, float] = {}
    for _ in range(config.epochs):
        sums: dict[str, float] = {}
        count = 0
        for idx, x, y in train.batches(config.batch_size, column=column, shuffle=True, generator=gen):
            z = extractor(x)
            loss = F.cross_entropy(analyzer(z), y)
            for name, (term, weight) in terms.items():
                labels = y if isinstance(term, SiameseTerm) else ids[idx]  # type: ignore[index]
                value = term(x, z, labels)
                loss = loss + weight * value
                sums[name] = sums.get(name, 0.0) + float(value.detach())
            opt.zero_grad()
            loss.backward()
            opt.step()
            count += 1
        means = {k: v / max(count, 1) for k, v in sums.items()}
    return tuned.eval(), means


def noise_trained_analyzer(embedding: nn.Module, train: FaceData, *, column: str,
                           config: FinetuneConfig = FinetuneConfig(epochs=5, lr=1e-3)) -> dict[str, float]:
    """Fine-tune ``embedding``'s analyzer (server side only) on noisy transmitted features, in place.

    The paper does not retrain the analyzer after PCA and noise (Section III): its layers never saw
    noise, so accuracy falls with sigma faster than the information left in the features requires
    (measured in docs/defences.md). What leaves the device -- extractor, reduction and the noise
    distribution -- is untouched, so every attack on the *transmitted* features sees the same data;
    only the server learns to read it. The clean reduced features of ``train`` are computed once (eval
    mode, no augmentation); each step adds fresh N(0, (sigma * std)^2) from a seeded generator (the
    deployed noise's distribution, not its random source) and minimises CE(analyze(z + noise), y).
    Returns the first and last epoch's mean loss.
    """
    noise = embedding.noise
    scale = noise.sigma * (noise.std if noise.std is not None else torch.ones(()))
    from privsplit.defenses.build import extract_features

    with torch.no_grad():  # what client_features(noisy=False) gives, in batches
        z_all = embedding.reduce(extract_features(embedding.extractor, train))
    # the analyzer only: the reconstruction may share the device's PCA basis, which must not move
    opt = torch.optim.Adam(embedding.analyzer.parameters(), lr=config.lr)
    gen = torch.Generator().manual_seed(config.seed)
    labels, losses = train.labels[column], []
    embedding.analyzer.train()
    for _ in range(config.epochs):
        total, count = 0.0, 0
        for idx in torch.randperm(len(train), generator=gen).split(config.batch_size):
            z = z_all[idx] + scale * torch.randn(z_all[idx].shape, generator=gen)
            loss = F.cross_entropy(embedding.analyze(z), labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total, count = total + float(loss.detach()) * len(idx), count + len(idx)
        losses.append(total / max(count, 1))
    embedding.eval()
    return {"first_epoch_loss": losses[0], "last_epoch_loss": losses[-1]}
