"""The common shape of every attack: ``fit`` on the attacker's data, ``evaluate`` on held-out data.

An attack receives the *client side* of an embedding (what the server would receive: extractor,
reduction and noise) and returns an :class:`AttackResult` whose every figure carries a 95% interval,
plus the two references an identity figure must be read against: chance (1/T) and the primary-label
floor (an attacker who knows only the primary label).

Identity attacks share :class:`IdentityAttack`: they ``fit`` on the enrolment images of the target
identities (and may use auxiliary people given at construction), then ``score`` transmitted features
into a ``(queries, identities)`` matrix. :meth:`IdentityAttack.evaluate` turns scores into top-1/top-5
with intervals by bootstrap over identities (images of one person are not independent) and keeps the
per-query hits in :attr:`AttackResult.hits` so two attacks (or two defences) can be compared with a
paired test on the same queries. Repeated queries (``repeats=k``: the same photo sent k times, fresh
device noise each time, the features averaged) are part of ``evaluate`` so every attack gets them.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from privsplit.attacks.common import clean_features, primary_label_floor
from privsplit.attacks.evidence import combine_evidence
from privsplit.data.faces import FaceData
from privsplit.metrics.intervals import cluster_bootstrap_ci, wilson_interval
from privsplit.registry import Registry

__all__ = ["ATTACKS", "Attack", "IdentityAttack", "AttackResult", "Figure", "identity_result", "wilson_interval"]

try:  # Python 3.11+
    from typing import Self
except ImportError:  # pragma: no cover - 3.10
    from typing_extensions import Self


#: Every attack by name. A registered factory is called as
#: ``factory(embedding, *, aux=None, seed=0, embedding_name=None, **options)`` where ``aux`` is the
#: attacker's auxiliary face data of *other* people (never the targets); attacks that need none ignore it.
ATTACKS: Registry[Any] = Registry("attack", help_ref="help(privsplit.attacks)")


@dataclass(frozen=True)
class Figure:
    """One reported number with its 95% confidence interval; ``percent`` says how to print it.

    ``method`` names how the interval was made ("wilson", "identity bootstrap", "normal", ...).
    """

    value: float
    ci95: tuple[float, float]
    n: int
    percent: bool = True
    method: str = "wilson"

    def __str__(self) -> str:
        fmt = "{:.1%}" if self.percent else "{:.3f}"
        return f"{fmt.format(self.value)} [{fmt.format(self.ci95[0])}, {fmt.format(self.ci95[1])}]"

    @classmethod
    def proportion(cls, successes: float, n: int) -> Figure:
        """A proportion over independent rows, with the Wilson interval."""
        return cls(successes / n if n else float("nan"), wilson_interval(successes, n), n)

    @classmethod
    def clustered(cls, hits: Tensor, groups: Tensor, *, seed: int = 0, n_boot: int = 2000) -> Figure:
        """A proportion over rows that cluster by ``groups`` (identity), interval by bootstrap over groups."""
        value = float(hits.double().mean())
        return cls(value, cluster_bootstrap_ci(hits.double(), groups, seed=seed, n_boot=n_boot), len(hits),
                   method="identity bootstrap")


@dataclass
class AttackResult:
    """Figures of one attack on one embedding, with the references they must be read against.

    ``hits`` holds per-query 0/1 vectors (e.g. ``"top1"``) and ``groups`` each query's identity, for
    paired tests; they are not serialised by :meth:`to_dict` (they can be large).
    """

    attack: str
    embedding: str
    figures: dict[str, Figure]
    references: dict[str, float] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    hits: dict[str, Tensor] = field(default_factory=dict, repr=False)
    groups: Tensor | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (figures and details included) for reports and audit.json."""
        return {"attack": self.attack, "embedding": self.embedding,
                "figures": {k: asdict(v) for k, v in self.figures.items()},
                "references": self.references, "details": self.details}


class Attack(ABC):
    """Base class: ``fit(train)`` then ``evaluate(test) -> AttackResult``.

    ``name`` is the registry name; ``profiles`` says which audit profiles run it ("fast" for curves
    and sweeps, "full" for everything).
    """

    name: ClassVar[str] = "attack"
    profiles: ClassVar[frozenset[str]] = frozenset({"full"})

    @abstractmethod
    def fit(self, train: FaceData, *, column: str = "identity") -> Self:
        """Learn from the attacker's labelled images (enrolment photos of the targets)."""

    @abstractmethod
    def evaluate(self, test: FaceData, *, column: str = "identity", primary: str | None = None) -> AttackResult:
        """Attack held-out images; ``primary`` (a label column) adds the primary-label floor."""


class IdentityAttack(Attack):
    """An identity attack that scores transmitted features against the enrolled identities.

    Subclasses implement :meth:`fit` (setting ``self.classes``, the original identity ids in score
    column order) and :meth:`score`. ``embedding`` is the attacker's copy of the client (the app ships
    extractor, reduction and noise spec), used both to compute clean features of its own photos and to
    simulate what the server receives.
    """

    profiles: ClassVar[frozenset[str]] = frozenset({"fast", "full"})

    def __init__(self, embedding: nn.Module, *, aux: FaceData | None = None, seed: int = 0,
                 embedding_name: str | None = None) -> None:
        self.embedding, self.aux = embedding.eval(), aux
        self.embedding_name = embedding_name or getattr(embedding, "kind", "embedding")
        self.seed = seed
        self.classes: list[int] = []

    @abstractmethod
    def score(self, received: Tensor, *, repeats: int = 1) -> Tensor:
        """``(N, T)`` scores (higher = more likely) of received features ``(N, *shape)`` for each enrolled
        identity. ``repeats`` says how many noisy copies were averaged into each row (noise-aware attacks
        shrink the noise variance by it)."""

    def effective_repeats(self, repeats: int) -> int:
        """Independent noise draws in ``repeats`` sends of one photo: ``repeats`` for fresh noise, 1 when the
        noise says repeats are identical (keyed noise, :mod:`privsplit.defenses.keyed`)."""
        return 1 if getattr(self.embedding.noise, "identical_repeats", False) else int(repeats)

    @torch.no_grad()
    def received(self, data: FaceData, *, repeats: int = 1) -> Tensor:
        """What the server holds for ``data``: each image sent ``repeats`` times, averaged. Fresh device noise
        gives independent draws; keyed noise gives the same draw every time (so the average is one draw)."""
        clean = clean_features(self.embedding, data)[0]
        return torch.stack([self.embedding.noise(clean) for _ in range(self.effective_repeats(repeats))]).mean(0)

    def targets(self, data: FaceData, column: str) -> Tensor:
        """Score-column index of each row's identity; an identity never enrolled is an error."""
        lookup = {c: i for i, c in enumerate(self.classes)}
        missing = sorted({int(v) for v in data.labels[column].tolist()} - set(lookup))
        if missing:
            raise ValueError(f"{len(missing)} query identities were never enrolled (fit on them first): "
                             f"{[data.classes[column][m] for m in missing[:5]]}")
        return torch.tensor([lookup[int(v)] for v in data.labels[column].tolist()], dtype=torch.int64)

    def evaluate(self, test: FaceData, *, column: str = "identity", primary: str | None = None,
                 repeats: int = 1, per_user: int = 1) -> AttackResult:
        """``per_user=m`` scores disjoint sets of m query photos of one person together (summed
        log-probabilities, :func:`privsplit.attacks.evidence.combine_evidence`): one row per set."""
        if not self.classes:
            raise RuntimeError(f"call fit() before evaluate() on the {self.name} attack")
        y = self.targets(test, column)
        scores = self.score(self.received(test, repeats=repeats), repeats=self.effective_repeats(repeats))
        if per_user > 1:
            scores, y, first = combine_evidence(scores, y, per_user, seed=self.seed)
            test = test.subset(first)
        result = identity_result(self.name, self.embedding_name, scores, y, test, primary, seed=self.seed)
        result.details.update(repeats=repeats, per_user=per_user)
        return result


def identity_result(attack: str, embedding: str, scores: Tensor, y: Tensor, test: FaceData, primary: str | None,
                    *, seed: int = 0, details: dict[str, Any] | None = None) -> AttackResult:
    """Top-1/top-5 with identity-bootstrap intervals, chance and the primary-label floor."""
    t = scores.shape[1]
    k = min(5, t)
    top = scores.topk(k, dim=1).indices
    hits = {"top1": (top[:, 0] == y).double(), "top5": (top == y.view(-1, 1)).any(1).double()}
    figures = {name: Figure.clustered(h, y, seed=seed) for name, h in hits.items()}
    refs: dict[str, float] = {"chance_top1": 1 / t, "chance_top5": k / t, "identities": t}
    if primary is not None:
        refs["primary_floor_top1"] = primary_label_floor(y, test.labels[primary], k=1)
        refs["primary_floor_top5"] = primary_label_floor(y, test.labels[primary], k=5)
    return AttackResult(attack, embedding, figures, refs, dict(details or {}), hits=hits, groups=y)
