"""The typed result of an audit and the comparison of two audits.

An :class:`AuditReport` holds one :class:`AttackSummary` per attack (top-1 over all seeds with its
identity-bootstrap interval, the per-seed spread, top-5, other figures such as verification AUC), the
floors, the **worst case chosen without peeking** (the attack strongest on a validation split of the
enrolment photos, reported with its query figure) beside the plain maximum over attacks (optimistic
for the attacker: picking the best of several noisy figures after seeing them inflates it), paired
tests between the worst attack and each other, the gate verdict and the provenance.

Per-query hits are kept in memory (not in ``to_dict``) so :func:`compare_audits` can run a paired test
between two defences audited on the same queries -- the test behind any sentence "A leaks less than B".
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor

from privsplit.attacks.base import Figure
from privsplit.audit.floors import Floors
from privsplit.metrics.intervals import PairedTest, paired_bootstrap

__all__ = ["AttackSummary", "WorstCase", "GateResult", "AuditReport", "compare_audits", "leak_sentence"]


@dataclass
class AttackSummary:
    """One attack over all seeds.

    ``top1`` pools the hits of every seed (its value is the mean over seeds; its interval resamples
    identities, all seeds of one identity together); ``per_seed_top1`` gives the spread.
    ``validation_top1`` is its top-1 on the validation split of the enrolment photos (selection only).
    ``figures`` holds any further figure the attack reported (e.g. verification ``auc``): the mean over
    seeds with the envelope of the per-seed intervals.
    """

    name: str
    top1: Figure | None
    top5: Figure | None
    per_seed_top1: list[float]
    validation_top1: float | None
    figures: dict[str, Figure] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    hits: list[Tensor] = field(default_factory=list, repr=False)
    groups: list[Tensor] = field(default_factory=list, repr=False)

    @property
    def spread(self) -> tuple[float, float]:
        """Lowest and highest per-seed top-1."""
        return (min(self.per_seed_top1), max(self.per_seed_top1)) if self.per_seed_top1 else (float("nan"),) * 2

    def pooled(self) -> tuple[Tensor, Tensor]:
        """Per-query top-1 hits of every seed, concatenated, and each row's identity."""
        return torch.cat(self.hits), torch.cat(self.groups)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (intervals, per-seed values, figures, details) for audit.json."""
        return {"name": self.name, "top1": None if self.top1 is None else asdict(self.top1),
                "top5": None if self.top5 is None else asdict(self.top5), "per_seed_top1": self.per_seed_top1,
                "spread": list(self.spread), "validation_top1": self.validation_top1,
                "figures": {k: asdict(v) for k, v in self.figures.items()}, "details": self.details,
                "seconds": self.seconds}


@dataclass(frozen=True)
class WorstCase:
    """An attack's query top-1 named as the worst case, and how it was chosen."""

    attack: str
    top1: Figure
    times_floor: float
    selection: str  # "validation" (no peeking) or "maximum" (optimistic for the attacker)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form of the worst case."""
        return {**asdict(self), "top1": asdict(self.top1)}


@dataclass(frozen=True)
class GateResult:
    """``passed`` is False when the worst case (point estimate, or upper bound when ``strict``) exceeds
    ``factor`` x floor."""

    factor: float
    strict: bool
    floor: float
    threshold: float
    value: float
    passed: bool

    @property
    def reason(self) -> str:
        """One sentence saying why the gate passed or failed (value, bound used, threshold)."""
        what = "upper 95% bound" if self.strict else "point estimate"
        verb = "exceeds" if not self.passed else "is within"
        return (f"worst-case identity top-1 ({what}) {self.value:.1%} {verb} {self.factor:g} x floor "
                f"{self.floor:.1%} = {self.threshold:.1%}")


@dataclass
class AuditReport:
    """Everything an audit measured; :meth:`to_dict` is what ``audit.json`` holds."""

    embedding: str
    profile: str
    seeds: list[int]
    sensitive: str
    primary: str | None
    attacks: list[AttackSummary]
    floors: Floors
    worst: WorstCase
    optimistic: WorstCase
    comparisons: dict[str, PairedTest]
    gate: GateResult | None
    provenance: dict[str, Any]
    queries: dict[str, Any]
    seconds: float
    query_keys: list[str] = field(default_factory=list, repr=False)

    def attack(self, name: str) -> AttackSummary:
        """The summary of the attack named ``name``; ``KeyError`` naming the attacks that ran otherwise."""
        for a in self.attacks:
            if a.name == name:
                return a
        raise KeyError(f"no attack '{name}' in this audit; it ran {', '.join(a.name for a in self.attacks)}")

    def headline(self) -> str:
        """One sentence: the worst case (chosen on validation) against the floor and chance, and the optimistic one."""
        w, o = self.worst, self.optimistic
        text = (f"worst case: {w.attack} {w.top1} identity top-1 ({w.times_floor:.2f} x floor "
                f"{self.floors.reference:.1%}; chance {self.floors.chance_top1:.1%}), chosen on validation")
        if o.attack != w.attack:
            text += f"; plain maximum {o.attack} {o.top1} (optimistic for the attacker)"
        return text

    def to_dict(self) -> dict[str, Any]:
        """The whole report as JSON-able data (``privsplit.audit/1``): what ``audit.json`` holds."""
        comps = {k: {**asdict(v), "separated": v.separated} for k, v in self.comparisons.items()}
        return {"format": "privsplit.audit/1", "embedding": self.embedding, "profile": self.profile,
                "seeds": self.seeds, "sensitive": self.sensitive, "primary": self.primary,
                "headline": self.headline(), "worst_case": self.worst.to_dict(),
                "maximum_optimistic": self.optimistic.to_dict(), "floors": self.floors.to_dict(),
                "attacks": [a.to_dict() for a in self.attacks], "paired_tests_vs_worst": comps,
                "gate": None if self.gate is None else {**asdict(self.gate), "reason": self.gate.reason},
                "queries": self.queries, "provenance": self.provenance, "seconds": self.seconds,
                "per_query": self.per_query()}

    def per_query(self) -> dict[str, Any]:
        """Per-query top-1 hits of every attack (a 0/1 string per seed) and each query's identity, so two
        audits written to JSON can still be compared with a paired test (:func:`compare_audits`)."""
        with_hits = [a for a in self.attacks if a.hits]
        groups = [g.tolist() for g in with_hits[0].groups] if with_hits else []
        return {"query_keys": self.query_keys, "groups": groups, "worst": self.worst.attack,
                "top1_hits": {a.name: ["".join("1" if v else "0" for v in h.tolist()) for h in a.hits]
                              for a in with_hits}}


def _hits(report: AuditReport | dict[str, Any], attack: str | None) -> tuple[list[str], Tensor, Tensor]:
    """(query keys, pooled top-1 hits, pooled identities) of an in-memory report or its ``to_dict()``."""
    if isinstance(report, AuditReport):
        h, g = report.attack(attack or report.worst.attack).pooled()
        return report.query_keys, h, g
    pq = report["per_query"]
    name = attack or pq["worst"]
    if name not in pq["top1_hits"]:
        raise KeyError(f"no per-query hits of attack '{name}' in this audit; it has {', '.join(pq['top1_hits'])}")
    hits = torch.tensor([c == "1" for s in pq["top1_hits"][name] for c in s], dtype=torch.float64)
    return pq["query_keys"], hits, torch.tensor([i for g in pq["groups"] for i in g])


def compare_audits(a: AuditReport | dict[str, Any], b: AuditReport | dict[str, Any], *, attack: str | None = None,
                   n_boot: int = 2000, seed: int = 0) -> PairedTest:
    """Paired bootstrap of ``a`` minus ``b`` (identity top-1) on the same queries.

    ``a`` and ``b`` are reports or their ``to_dict()`` (the content of ``audit.json``). By default each
    side's worst case (chosen on validation) is compared; ``attack`` compares one named attack on both.
    Both audits must have used the same data, seeds and enrolment draws (checked through the query
    keys), so per-query hits line up.
    """
    keys_a, ha, ga = _hits(a, attack)
    keys_b, hb, _ = _hits(b, attack)
    if not keys_a or keys_a != keys_b:
        raise ValueError("the two audits did not use the same queries (data, seeds or enrolment draws differ); "
                         "audit both defences with the same --data and --seeds")
    return paired_bootstrap(ha, hb, ga, n_boot=n_boot, seed=seed)


def leak_sentence(name_a: str, name_b: str, test: PairedTest) -> str:
    """The sentence a report may print about two defences, backed by ``test`` (A minus B)."""
    if not test.separated:
        return f"the data do not separate {name_a} and {name_b} ({test})"
    more, less = (name_a, name_b) if test.difference > 0 else (name_b, name_a)
    return f"{less} leaks less identity than {more} ({test})"
