"""Metric-learning attacker: face recognition trained on what the server receives, then enrolment.

What the attacker knows and does:

1. **Train** a small embedding network on the *auxiliary* people (``aux``: other people, never the
   targets; in privsplit's experiments the primary training split's people with >= ``min_images``
   photos, ~1,400 on LFW). Inputs are features exactly as the server receives them: the attacker's
   client copy computes clean features of ``copies`` augmented versions of each photo once, and *fresh*
   device noise is drawn at every step. Loss: normalised softmax with an additive cosine margin
   (CosFace / AM-softmax: ``s * (cos(e, w_y) - margin)`` for the true class), the standard recipe for
   open-set face recognition. Budget: ``epochs`` passes over the aux photos (stated, never cut for time).
2. **Enrol** the targets: each enrolment photo's embedding is averaged over ``enrol_draws`` noisy
   sends (the network was trained on noisy inputs), L2-normalised, averaged per identity.
3. **Score** a received feature by cosine similarity to each identity's mean embedding.

Networks: an MLP for vector features, a small conv net for spatial ``(C, H, W)`` features. Beyond
top-1/top-5 the attack reports **verification** figures (:func:`verification_figures`): ROC AUC and
TAR at FAR = 1e-3 for deciding whether two received queries show the same person -- figures that do
not depend on the gallery size.
"""
from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from privsplit.attacks.base import ATTACKS, AttackResult, Figure, IdentityAttack
from privsplit.attacks.common import aux_key, clean_features, optimizer_step, relabel, shared
from privsplit.data.faces import FaceData

__all__ = ["MetricAttack", "embedding_net", "verification_figures"]


def embedding_net(shape: tuple[int, ...], dim: int = 64, hidden: int = 256) -> nn.Module:
    """MLP (vector features) or small conv net (spatial ``(C, H, W)``) mapping features to ``dim``."""
    if len(shape) == 3:
        c = shape[0]
        return nn.Sequential(nn.BatchNorm2d(c), nn.Conv2d(c, hidden // 2, 3, padding=1), nn.BatchNorm2d(hidden // 2),
                             nn.ReLU(), nn.Conv2d(hidden // 2, hidden // 2, 3, padding=1), nn.BatchNorm2d(hidden // 2),
                             nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(hidden * 8, dim))
    d = int(torch.tensor(shape).prod())
    return nn.Sequential(nn.Flatten(), nn.BatchNorm1d(d), nn.Linear(d, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
                         nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, dim))


@ATTACKS.register("metric")
class MetricAttack(IdentityAttack):
    """Embedding network trained on auxiliary people's received features, then targets enrolled.

    Keyword options (the training budget is part of the attack's definition): ``epochs`` (40),
    ``dim`` (64), ``hidden`` (256), ``lr`` (3e-3, AdamW, cosine schedule), ``batch_size`` (128),
    ``scale`` (16) and ``margin`` (0.2) of the cosine-margin softmax, ``min_images`` (2: aux people
    with fewer photos are dropped), ``copies`` (2 augmented copies), ``enrol_draws`` (8).
    """

    name: ClassVar[str] = "metric"

    def __init__(self, embedding: nn.Module, *, aux: FaceData | None = None, seed: int = 0,
                 embedding_name: str | None = None, epochs: int = 40, dim: int = 64, hidden: int = 256,
                 lr: float = 3e-3, batch_size: int = 128, scale: float = 16.0, margin: float = 0.2,
                 min_images: int = 2, copies: int = 2, enrol_draws: int = 8) -> None:
        super().__init__(embedding, aux=aux, seed=seed, embedding_name=embedding_name)
        if aux is None:
            raise ValueError("the metric attack learns face recognition from auxiliary people: pass aux=FaceData "
                             "of other people (e.g. the primary training split), never the targets")
        if epochs < 1 or copies < 1 or enrol_draws < 1:
            raise ValueError("epochs, copies and enrol_draws must be >= 1")
        self.options = dict(epochs=epochs, dim=dim, hidden=hidden, lr=lr, batch_size=batch_size, scale=scale,
                            margin=margin, min_images=min_images, copies=copies, enrol_draws=enrol_draws)
        self.net: nn.Module | None = None
        self.last_embedded: Tensor | None = None

    def _aux_rows(self, column: str) -> FaceData:
        labels = self.aux.labels[column]  # type: ignore[union-attr]
        counts = torch.bincount(labels)
        keep = torch.nonzero(counts[labels] >= self.options["min_images"]).flatten()
        if len(torch.unique(labels[keep])) < 2:
            raise ValueError(f"the aux data has fewer than 2 people with >= {self.options['min_images']} photos "
                             f"in column '{column}'; the metric attack needs many people to learn from")
        return self.aux.subset(keep)  # type: ignore[union-attr]

    def train_network(self, column: str = "identity") -> nn.Module:
        """Train the embedding network on the aux people (cosine-margin softmax, fresh noise per step)."""
        o = self.options
        aux = self._aux_rows(column)
        y, people = relabel(aux.labels[column])
        feats = clean_features(self.embedding, aux, copies=o["copies"], seed=self.seed)
        torch.manual_seed(self.seed)
        net = embedding_net(tuple(feats.shape[2:]), o["dim"], o["hidden"])
        proxies = nn.Parameter(torch.randn(len(people), o["dim"]) * 0.01)
        opt = torch.optim.AdamW([*net.parameters(), proxies], lr=o["lr"], weight_decay=5e-4)
        n, bs = feats.shape[1], o["batch_size"]
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=o["epochs"] * ((n + bs - 1) // bs))
        gen = torch.Generator().manual_seed(self.seed)
        net.train()
        for _ in range(o["epochs"]):
            order = torch.randperm(n, generator=gen)
            for s in range(0, n - 1, bs):
                idx = order[s : s + bs]
                if len(idx) < 2:
                    continue
                with torch.no_grad():  # what the server receives: fresh device noise every step
                    x = self.embedding.noise(feats[torch.randint(0, len(feats), (len(idx),), generator=gen), idx])
                cos = F.normalize(net(x), dim=1) @ F.normalize(proxies, dim=1).T
                margin = F.one_hot(y[idx], len(people)) * o["margin"]
                loss = F.cross_entropy(o["scale"] * (cos - margin), y[idx])
                optimizer_step(opt, loss, sched)
        return net.eval()

    @torch.no_grad()
    def embed(self, received: Tensor) -> Tensor:
        """L2-normalised embeddings of received features."""
        assert self.net is not None
        return torch.cat([F.normalize(self.net(received[s : s + 1024].float()), dim=1)
                          for s in range(0, len(received), 1024)])

    def fit(self, train: FaceData, *, column: str = "identity") -> MetricAttack:
        # the network depends on the aux people only: an audit's validation and query fits of one seed share it
        opts = tuple(sorted((k, v) for k, v in self.options.items() if k != "enrol_draws"))
        key = ("metric-net", aux_key(self.embedding, self.aux), column, self.seed, opts)
        self.net = shared(self.embedding, key, lambda: self.train_network(column))
        y, self.classes = relabel(train.labels[column])
        clean = clean_features(self.embedding, train)[0]
        with torch.no_grad():
            e = torch.stack([self.embed(self.embedding.noise(clean)) for _ in range(self.options["enrol_draws"])])
        e = F.normalize(e.mean(0), dim=1)
        protos = torch.zeros(len(self.classes), e.shape[1]).index_add_(0, y, e)
        self.prototypes = F.normalize(protos, dim=1)
        return self

    @torch.no_grad()
    def score(self, received: Tensor, *, repeats: int = 1) -> Tensor:
        self.last_embedded = self.embed(received)
        return self.last_embedded @ self.prototypes.T

    def evaluate(self, test: FaceData, *, column: str = "identity", primary: str | None = None,
                 repeats: int = 1, per_user: int = 1) -> AttackResult:
        """Top-1/top-5 (as every identity attack) plus verification AUC and TAR at FAR = 1e-3 on the
        queries (impostor pairs matched on ``primary`` when given)."""
        result = super().evaluate(test, column=column, primary=primary, repeats=repeats, per_user=per_user)
        assert self.last_embedded is not None
        ver = verification_figures(self.last_embedded, test.labels[column], seed=self.seed,
                                   primary=None if primary is None else test.labels[primary])
        result.figures.update(ver)
        result.details["options"] = dict(self.options)
        result.details["loss"] = "normalised softmax with additive cosine margin (CosFace)"
        return result


def _pairs(emb: Tensor, groups: Tensor, primary: Tensor | None, max_impostors: int,
           gen: torch.Generator) -> tuple[Tensor, ...]:
    """Cosine similarity of every genuine pair and of up to ``max_impostors`` random impostor pairs
    (impostors share the primary label when ``primary`` is given)."""
    n = len(emb)
    i, j = torch.triu_indices(n, n, offset=1)
    same = groups[i] == groups[j]
    impostor = ~same if primary is None else ~same & (primary[i] == primary[j])
    gi, gj = i[same], j[same]
    ii, ij = i[impostor], j[impostor]
    if len(ii) > max_impostors:
        pick = torch.randperm(len(ii), generator=gen)[:max_impostors]
        ii, ij = ii[pick], ij[pick]
    a, b = torch.cat([gi, ii]), torch.cat([gj, ij])
    genuine = torch.cat([torch.ones(len(gi), dtype=torch.bool), torch.zeros(len(ii), dtype=torch.bool)])
    return (emb[a] * emb[b]).sum(1).double(), groups[a], groups[b], genuine


def _weighted_verification(scores: Tensor, genuine: Tensor, weight: Tensor, far: float) -> tuple[float, float]:
    """AUC and TAR at ``far`` of pair scores sorted ascending, each pair weighted."""
    wg, wi = weight * genuine, weight * ~genuine
    tot_g, tot_i = float(wg.sum()), float(wi.sum())
    if tot_g <= 0 or tot_i <= 0:
        return float("nan"), float("nan")
    imp_below = torch.cumsum(wi, 0) - wi  # impostor weight strictly below each pair (ties are rare)
    auc = float((wg * imp_below).sum()) / (tot_g * tot_i)
    tail = tot_i - torch.cumsum(wi, 0)  # impostor weight above each position
    ok = torch.nonzero(tail <= far * tot_i).flatten()
    cut = int(ok[0]) if len(ok) else len(scores) - 1
    tar = float(wg[cut + 1 :].sum()) / tot_g
    return auc, tar


def verification_figures(embedded: Tensor, groups: Tensor, *, primary: Tensor | None = None, far: float = 1e-3,
                         max_impostors: int = 200_000, n_boot: int = 200, seed: int = 0) -> dict[str, Figure]:
    """Verification of query pairs (same person or not) from L2-normalised embeddings.

    Genuine pairs: every pair of queries of one identity; impostor pairs: up to ``max_impostors`` random
    pairs of different identities -- with ``primary`` (labels per query) only pairs that share the
    primary label, so an embedding that carries the primary label and nothing else scores the chance
    floor (AUC 0.5, TAR = FAR) instead of looking like a face verifier. Figures: ``verification_auc``
    (ROC AUC) and ``tar_at_far`` (true accept rate at false accept rate ``far``), with 95% intervals by
    bootstrap over identities (a pair is weighted by how often its identities are drawn: genuine by
    ``w_a``, impostor by ``w_a * w_b``).
    """
    gen = torch.Generator().manual_seed(seed)
    scores, ga, gb, genuine = _pairs(embedded.double(), groups, primary, max_impostors, gen)
    order = torch.argsort(scores)
    ga, gb, genuine = ga[order], gb[order], genuine[order]
    _, inv = torch.unique(torch.cat([ga, gb]), return_inverse=True)
    ia, ib = inv[: len(ga)], inv[len(ga) :]
    n_ids = int(inv.max()) + 1

    def figures(w: Tensor) -> tuple[float, float]:
        weight = torch.where(genuine, w[ia], w[ia] * w[ib])
        return _weighted_verification(scores[order], genuine, weight, far)

    auc, tar = figures(torch.ones(n_ids, dtype=torch.float64))
    boot = torch.tensor([figures(torch.bincount(torch.randint(0, n_ids, (n_ids,), generator=gen),
                                                minlength=n_ids).double()) for _ in range(n_boot)], dtype=torch.float64)
    q = torch.nanquantile(boot, torch.tensor([0.025, 0.975], dtype=torch.float64), dim=0)
    n = int(genuine.sum())
    return {"verification_auc": Figure(auc, (float(q[0, 0]), float(q[1, 0])), n, percent=False,
                                       method="identity bootstrap"),
            "tar_at_far": Figure(tar, (float(q[0, 1]), float(q[1, 1])), n, method=f"identity bootstrap; FAR={far:g}")}
