"""Transfer-learning identity attack (Osia et al. 2017, Section IV-A, Fig. 6) and a 1-NN attack.

The attacker copies the device layers (extractor, reduction, noise: exactly what produces the
transmitted features), freezes them, and trains fresh upper layers to recognise identity on its own
labelled images of the attack identities. Made strong and honest on purpose (a weak attack makes
every defence look good):

* heads: ``"analyzer"`` (the paper's N2: the reconstruction layer, which the server knows, and the
  analyzer's architecture re-initialised with a T-way output), ``"conv"`` (a small conv net for
  spatial features), ``"mlp"`` (2 hidden layers); ``head="auto"`` (default) tries the analyzer head and
  the conv (spatial features) or MLP (vectors) head and keeps the best on validation;
* training sees the features exactly as the server would, with *fresh* noise at every step, and
  ``copies`` augmented versions of each image (flip/shift/brightness) computed once;
* the learning rate is chosen on a validation split (``val_per_identity`` images of each identity
  held out of the attacker's training images), then the head is retrained on all of them.

Figures: top-1 and top-5 accuracy with Wilson 95% intervals, beside chance (1/T) and the
primary-label floor (an attacker who knows only the primary label; with two balanced genders ~2/T).
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from privsplit.attacks.base import Attack, AttackResult, Figure
from privsplit.attacks.common import clean_features, primary_label_floor, relabel, topk_hits
from privsplit.data.faces import FaceData

__all__ = ["TransferConfig", "TransferAttack", "NearestNeighborAttack"]


@dataclass(frozen=True)
class TransferConfig:
    head: str = "auto"  # | "analyzer" | "conv" | "mlp"
    epochs: int = 40
    batch_size: int = 64
    lrs: tuple[float, ...] = (3e-4, 1e-3, 3e-3)
    weight_decay: float = 5e-4
    copies: int = 6
    val_per_identity: int = 3
    seed: int = 0


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


class TransferAttack(Attack):
    """Train fresh upper layers on the transmitted features to recognise identity."""

    name = "transfer"

    def __init__(self, embedding: nn.Module, *, config: TransferConfig = TransferConfig(),
                 embedding_name: str | None = None) -> None:
        self.embedding, self.config = embedding.eval(), config
        self.embedding_name = embedding_name or getattr(embedding, "kind", "embedding")
        self.head: nn.Module | None = None
        self.scores: dict[tuple[str, float], float] = {}

    def _heads(self, shape: tuple[int, ...]) -> list[str]:
        head = self.config.head
        if head == "auto":
            return ["analyzer", "conv" if len(shape) == 3 else "mlp"]
        if head not in ("analyzer", "conv", "mlp"):
            raise ValueError(f"head='{head}' unknown; use 'auto', 'analyzer', 'conv' or 'mlp'")
        if head == "conv" and len(shape) != 3:
            raise ValueError(f"head='conv' needs spatial (C, H, W) features, got shape {shape}; use 'mlp'")
        return [head]

    def _new_head(self, kind: str, shape: tuple[int, ...], num_classes: int) -> nn.Module:
        torch.manual_seed(self.config.seed)
        if kind == "analyzer":
            return _analyzer_head(self.embedding, num_classes)
        return _conv_head(shape, num_classes) if kind == "conv" else _mlp_head(shape, num_classes)

    def _train(self, feats: torch.Tensor, y: torch.Tensor, num_classes: int, choice: tuple[str, float]) -> nn.Module:
        cfg = self.config
        kind, lr = choice
        head = self._new_head(kind, tuple(feats.shape[2:]), num_classes)
        opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=cfg.weight_decay)
        gen = torch.Generator().manual_seed(cfg.seed)
        n, steps = feats.shape[1], 0
        total = cfg.epochs * ((n + cfg.batch_size - 1) // cfg.batch_size)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
        head.train()
        for _ in range(cfg.epochs):
            order = torch.randperm(n, generator=gen)
            for s in range(0, n, cfg.batch_size):
                idx = order[s : s + cfg.batch_size]
                if len(idx) < 2:
                    continue
                copy_idx = torch.randint(0, feats.shape[0], (len(idx),), generator=gen)
                with torch.no_grad():
                    x = self.embedding.noise(feats[copy_idx, idx])  # fresh noise, as the server would see
                loss = F.cross_entropy(head(x), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                steps += 1
        return head.eval()

    @torch.no_grad()
    def _scores(self, head: nn.Module, feats: torch.Tensor) -> torch.Tensor:
        return head(self.embedding.noise(feats))

    def fit(self, train: FaceData, *, column: str = "identity") -> TransferAttack:
        cfg = self.config
        y, self.classes = relabel(train.labels[column])
        feats = clean_features(self.embedding, train, copies=cfg.copies, seed=cfg.seed)
        # learning-rate choice on a per-identity validation split of the attacker's own images
        gen = torch.Generator().manual_seed(cfg.seed + 1)
        val = torch.zeros(len(y), dtype=torch.bool)
        for c in range(len(self.classes)):
            rows = torch.nonzero(y == c).flatten()
            val[rows[torch.randperm(len(rows), generator=gen)[: cfg.val_per_identity]]] = True
        choices = [(h, lr) for h in self._heads(tuple(feats.shape[2:])) for lr in cfg.lrs]
        if len(choices) > 1:
            for choice in choices:
                head = self._train(feats[:, ~val], y[~val], len(self.classes), choice)
                pred = self._scores(head, feats[0, val]).argmax(1)
                self.scores[choice] = float((pred == y[val]).float().mean())
            self.choice = max(self.scores, key=self.scores.get)
        else:
            self.choice = choices[0]
        self.head = self._train(feats, y, len(self.classes), self.choice)
        return self

    @property
    def lr(self) -> float:
        return self.choice[1]

    def evaluate(self, test: FaceData, *, column: str = "identity", primary: str | None = None) -> AttackResult:
        if self.head is None:
            raise RuntimeError("call fit() before evaluate()")
        lookup = {c: i for i, c in enumerate(self.classes)}
        y = torch.tensor([lookup[int(v)] for v in test.labels[column]])
        scores = self._scores(self.head, clean_features(self.embedding, test)[0])
        return _identity_result(self.name, self.embedding_name, scores, y, test, primary,
                                details={"config": asdict(self.config), "head": self.choice[0], "lr": self.lr,
                                         "validation_top1": {f"{h}@{lr:g}": v for (h, lr), v in self.scores.items()}})


class NearestNeighborAttack(Attack):
    """1-nearest-neighbour identity attack on the (noisy, standardised) transmitted features."""

    name = "1-nn"

    def __init__(self, embedding: nn.Module, *, embedding_name: str | None = None) -> None:
        self.embedding = embedding.eval()
        self.embedding_name = embedding_name or getattr(embedding, "kind", "embedding")

    def fit(self, train: FaceData, *, column: str = "identity") -> NearestNeighborAttack:
        with torch.no_grad():
            feats = self.embedding.noise(clean_features(self.embedding, train)[0]).flatten(1)
        self.mean, self.std = feats.mean(0), feats.std(0).clamp(min=1e-6)
        self.bank = (feats - self.mean) / self.std
        self.y, self.classes = relabel(train.labels[column])
        return self

    def evaluate(self, test: FaceData, *, column: str = "identity", primary: str | None = None) -> AttackResult:
        with torch.no_grad():
            q = (self.embedding.noise(clean_features(self.embedding, test)[0]).flatten(1) - self.mean) / self.std
        d = torch.cdist(q, self.bank)
        # score of an identity = minus the distance to its nearest stored image
        scores = torch.full((len(q), len(self.classes)), float("inf"))
        scores = scores.scatter_reduce(1, self.y.expand(len(q), -1), d, reduce="amin")
        lookup = {c: i for i, c in enumerate(self.classes)}
        y = torch.tensor([lookup[int(v)] for v in test.labels[column]])
        return _identity_result(self.name, self.embedding_name, -scores, y, test, primary)


def _identity_result(attack: str, embedding: str, scores: torch.Tensor, y: torch.Tensor, test: FaceData,
                     primary: str | None, details: dict | None = None) -> AttackResult:
    t, n = scores.shape[1], len(y)
    figures = {"top1": Figure.proportion(topk_hits(scores, y, 1), n),
               "top5": Figure.proportion(topk_hits(scores, y, 5), n)}
    refs = {"chance_top1": 1 / t, "chance_top5": min(5, t) / t, "identities": t}
    if primary is not None:
        refs["primary_floor_top1"] = primary_label_floor(y, test.labels[primary], k=1)
        refs["primary_floor_top5"] = primary_label_floor(y, test.labels[primary], k=5)
    return AttackResult(attack, embedding, figures, refs, details or {})
