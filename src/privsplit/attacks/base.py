"""The common shape of every attack: ``fit`` on the attacker's data, ``evaluate`` on held-out data.

An attack receives the *client side* of an embedding (what the server would receive: extractor,
reduction and fresh noise per image) -- never the defence's internals beyond that -- and returns an
:class:`AttackResult` with its figures and 95% confidence intervals, plus the two references every
identity figure must be read against: chance (1/T) and the primary-label floor.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["Attack", "AttackResult", "Figure", "wilson_interval"]


def wilson_interval(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion (well-behaved near 0 and 1, unlike the normal one)."""
    if n <= 0:
        return (float("nan"), float("nan"))
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


@dataclass(frozen=True)
class Figure:
    """One reported number with its 95% confidence interval; ``percent`` says how to print it."""

    value: float
    ci95: tuple[float, float]
    n: int
    percent: bool = True

    def __str__(self) -> str:
        fmt = "{:.1%}" if self.percent else "{:.3f}"
        return f"{fmt.format(self.value)} [{fmt.format(self.ci95[0])}, {fmt.format(self.ci95[1])}]"

    @classmethod
    def proportion(cls, successes: float, n: int) -> Figure:
        return cls(successes / n if n else float("nan"), wilson_interval(successes, n), n)


@dataclass
class AttackResult:
    """Figures of one attack on one embedding, with the references they must be read against."""

    attack: str
    embedding: str
    figures: dict[str, Figure]
    references: dict[str, float] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"attack": self.attack, "embedding": self.embedding,
                "figures": {k: asdict(v) for k, v in self.figures.items()},
                "references": self.references, "details": self.details}


class Attack(ABC):
    """Base class: ``fit(train)`` then ``evaluate(test) -> AttackResult``."""

    name: str = "attack"

    @abstractmethod
    def fit(self, *args: Any, **kwargs: Any) -> Attack: ...

    @abstractmethod
    def evaluate(self, *args: Any, **kwargs: Any) -> AttackResult: ...
