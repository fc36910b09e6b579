"""Transfer-learning identity attack (Osia et al. 2017, Section IV-A, Fig. 6), made strong on purpose.

The attacker copies the device layers (extractor, reduction, noise: exactly what produces the
transmitted features), freezes them, and trains fresh upper layers to recognise identity from its
enrolment photos of the targets. A weak attack makes every defence look good, so:

* **every head** (:mod:`privsplit.attacks.heads`): the paper's N2 (``"analyzer"``), a conv net for
  spatial features (``"conv"``) and an MLP (``"mlp"``);
* **restarts**: each head is trained ``restarts`` times (different initialisation and batch order), and
  the restarts of one head form that head's ensemble; the **ensemble** of every member of every head is
  a further candidate. Members are combined by *averaging their softmax probabilities* (not logits:
  heads of different architectures have differently scaled logits, probabilities are comparable);
* **chosen without peeking**: the learning rate (per head, on its first restart) and the candidate
  (one head's ensemble, or the all-heads ensemble) are chosen by top-1 on a validation split of the
  attacker's enrolment photos (``val_per_identity`` per identity, each seen with ``val_draws`` fresh noise
  draws); the chosen members are then retrained on all the enrolment photos;
* training sees the features exactly as the server would, with *fresh* noise at every step, and
  ``copies`` augmented versions of each image (flip/shift/brightness) computed once.

:meth:`TransferAttack.score` works on averaged repeated queries (``repeats=k``): the heads, trained on
single noisy queries, are applied to the k-averaged features, which carry ``1/sqrt(k)`` of the noise.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from privsplit.attacks.base import ATTACKS, AttackResult, IdentityAttack
from privsplit.attacks.common import clean_features, relabel
from privsplit.attacks.heads import build_head, head_kinds, train_head
from privsplit.data.faces import FaceData

__all__ = ["TransferConfig", "TransferAttack"]

try:  # Python 3.11+
    from typing import Self
except ImportError:  # pragma: no cover - 3.10
    from typing_extensions import Self


@dataclass(frozen=True)
class TransferConfig:
    """Training budget and choices of the transfer attack.

    Budget (defaults): ``epochs=40`` per member, ``restarts=3`` per head, heads = analyzer + conv (spatial
    features) or analyzer + MLP (vectors) for ``head="auto"``. Trainings per fit: one per (head, lr) for the
    learning-rate search, ``restarts - 1`` more per head on the validation split, then the chosen members
    again on all enrolment photos: with 2 heads, 3 lrs and 3 restarts at most 6 + 4 + 6 = 16 trainings.

    Args:
        head: ``"auto"`` (every head that applies, and their ensemble) or one of analyzer | conv | mlp
            (that head's restarts and their ensemble).
        epochs: passes over the enrolment photos per member.
        restarts: members per head (different seeds); >= 1, 3 by default.
        lrs: learning rates tried (per head, on its first restart).
        copies: augmented versions of each enrolment photo (copy 0 is the photo itself).
        val_per_identity: enrolment photos per identity held out to choose lr and candidate.
        val_draws: fresh noise draws of each validation photo (steadies the choice on noisy embeddings).
        seed: added to the attack's ``seed`` (so either may be set).
    """

    head: str = "auto"
    epochs: int = 40
    restarts: int = 3
    batch_size: int = 64
    lrs: tuple[float, ...] = (3e-4, 1e-3, 3e-3)
    weight_decay: float = 5e-4
    copies: int = 6
    val_per_identity: int = 3
    val_draws: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        if self.restarts < 1 or self.epochs < 1 or not self.lrs:
            raise ValueError("TransferConfig needs restarts >= 1, epochs >= 1 and at least one learning rate")
        if self.val_per_identity < 1:
            raise ValueError("val_per_identity must be >= 1: the head and lr are chosen on held-out enrolment photos")


@dataclass(frozen=True)
class Member:
    """One trained head of the ensemble."""

    head: str
    lr: float
    seed: int

    @property
    def key(self) -> str:
        return f"{self.head}@{self.lr:g}#{self.seed}"


def _top1(probs: Tensor, y: Tensor) -> float:
    return float((probs.argmax(1) == y).double().mean())


@ATTACKS.register("transfer")
class TransferAttack(IdentityAttack):
    """Train fresh upper layers (every head, several restarts, their ensemble) on transmitted features."""

    name = "transfer"
    profiles = frozenset({"full"})

    def __init__(self, embedding: nn.Module, *, aux: FaceData | None = None, seed: int = 0,
                 embedding_name: str | None = None, config: TransferConfig = TransferConfig()) -> None:
        super().__init__(embedding, aux=aux, seed=seed + config.seed, embedding_name=embedding_name)
        self.config = config
        self.members: list[tuple[Member, nn.Module]] = []
        self.validation: dict[str, float] = {}     # member key or candidate name -> validation top-1
        self.chosen_lr: dict[str, float] = {}
        self.choice = ""
        self.fit_seconds = 0.0

    # -- fitting ------------------------------------------------------------------------------------
    def _split(self, y: Tensor) -> Tensor:
        """Validation mask: ``val_per_identity`` photos of each identity, always leaving one to train on."""
        gen = torch.Generator().manual_seed(self.seed + 1)
        val = torch.zeros(len(y), dtype=torch.bool)
        for c in torch.unique(y).tolist():
            rows = torch.nonzero(y == c).flatten()
            k = min(self.config.val_per_identity, len(rows) - 1)
            val[rows[torch.randperm(len(rows), generator=gen)[:k]]] = True
        return val

    def _train(self, m: Member, feats: Tensor, y: Tensor, t: int) -> nn.Module:
        cfg = self.config
        head = build_head(m.head, self.embedding, tuple(feats.shape[2:]), t, seed=m.seed)
        return train_head(head, feats, y, self.embedding.noise, epochs=cfg.epochs, lr=m.lr,
                          batch_size=cfg.batch_size, weight_decay=cfg.weight_decay, seed=m.seed)

    @torch.no_grad()
    def _probs(self, heads: list[nn.Module], x: Tensor) -> Tensor:
        return torch.stack([h(x).softmax(1) for h in heads]).mean(0)

    def _search(self, feats: Tensor, y: Tensor, t: int) -> dict[str, list[Member]]:
        """Train every head on the training part, choose lrs and the candidate on validation; returns
        the candidates (name -> members) after filling ``self.validation`` and ``self.choice``."""
        cfg = self.config
        val = self._split(y)
        with torch.no_grad():  # each validation photo seen with several fresh noise draws, as sent
            xv = torch.cat([self.embedding.noise(feats[0, val]) for _ in range(cfg.val_draws)])
        yv = y[val].repeat(cfg.val_draws)
        tr_feats, tr_y = feats[:, ~val], y[~val]
        members: dict[str, list[Member]] = {}
        probs: dict[str, Tensor] = {}

        def run(m: Member) -> Tensor:
            p = self._probs([self._train(m, tr_feats, tr_y, t)], xv)
            self.validation[m.key] = _top1(p, yv)
            return p

        for kind in head_kinds(cfg.head, tuple(feats.shape[2:])):
            first = {lr: run(Member(kind, lr, self.seed)) for lr in cfg.lrs}
            lr = max(cfg.lrs, key=lambda v: self.validation[Member(kind, v, self.seed).key])
            self.chosen_lr[kind] = lr
            members[kind] = [Member(kind, lr, self.seed + r) for r in range(cfg.restarts)]
            probs[kind] = torch.stack([first[lr]] + [run(m) for m in members[kind][1:]]).mean(0)
        candidates = dict(members)
        if len(members) > 1:
            candidates = {"ensemble": [m for ms in members.values() for m in ms], **members}
            probs["ensemble"] = torch.stack([probs[k] for k in members]).mean(0)
        for name in candidates:
            self.validation[name] = _top1(probs[name], yv)
        self.choice = max(candidates, key=lambda k: self.validation[k])  # first on ties: the ensemble
        return candidates

    def fit(self, train: FaceData, *, column: str = "identity") -> Self:
        """Choose and train the heads on the enrolment photos ``train`` (see the module docstring)."""
        cfg = self.config
        t0 = time.perf_counter()
        y, self.classes = relabel(train.labels[column])
        if int(torch.bincount(y).min()) < 2:
            raise ValueError("the transfer attack needs >= 2 enrolment photos per identity (one to validate on)")
        feats = clean_features(self.embedding, train, copies=cfg.copies, seed=self.seed)
        self.validation, self.chosen_lr = {}, {}
        chosen = self._search(feats, y, len(self.classes))[self.choice]
        self.members = [(m, self._train(m, feats, y, len(self.classes))) for m in chosen]
        self.fit_seconds = time.perf_counter() - t0
        return self

    # -- scoring ------------------------------------------------------------------------------------
    @torch.no_grad()
    def score(self, received: Tensor, *, repeats: int = 1) -> Tensor:
        """Log of the members' mean softmax probability per identity ``(N, T)``."""
        if not self.members:
            raise RuntimeError("call fit() before score() on the transfer attack")
        return self._probs([h for _, h in self.members], received).clamp_min(1e-12).log()

    @property
    def lr(self) -> float | dict[str, float]:
        """The chosen learning rate (one head) or per head (ensemble)."""
        heads = sorted({m.head for m, _ in self.members})
        return self.chosen_lr[heads[0]] if len(heads) == 1 else {h: self.chosen_lr[h] for h in heads}

    @property
    def details(self) -> dict:
        """What was fitted: config, chosen head, learning rate, ensemble members, validation top-1, fit time."""
        return {"config": asdict(self.config), "head": self.choice, "lr": self.lr,
                "members": [m.key for m, _ in self.members], "validation_top1": dict(self.validation),
                "combine": "mean of softmax probabilities", "fit_seconds": self.fit_seconds}

    def evaluate(self, test: FaceData, *, column: str = "identity", primary: str | None = None,
                 repeats: int = 1) -> AttackResult:
        result = super().evaluate(test, column=column, primary=primary, repeats=repeats)
        result.details.update(self.details)
        return result
