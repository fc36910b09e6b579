"""The references every identity figure is read against: chance, the primary-label floor and, where the
data's structure gives the attacker extra knowledge, a structure floor (CK+'s expression-matched floor).

Why a structure floor: on CK+ every (subject, expression) pair has exactly one sequence, and enrolment
and query never share a sequence (they would share near-identical frames). So a query showing
expression *e* can only come from a target whose enrolment photos do *not* show *e*. An attacker who
knows the query's expression (the service outputs it: it is the primary label) and this rule guesses
uniformly among the targets lacking *e* in their enrolment -- with no identity information in the
features at all. That rate is :func:`excluded_pair_floor`; the audit reports it beside the attack
figures. On data without such structure (LFW) the rule excludes nothing useful and it is not reported.

Which floor the gate uses (:attr:`Floors.reference`): the structure floor when there is one, else the
primary-label floor. Why not the larger of the two: :func:`~privsplit.attacks.common.primary_label_floor`
guesses among the identities that have *a query* with the image's label. For a label fixed per person
(gender) that is knowledge about the person; for a label that varies per photo (CK+'s expression,
one query sequence per subject) it is knowledge of the query set's make-up, which no attacker has: on
CK+ it reads ~33% top-1 against an expression-matched floor of ~11% (``benchmarks/ckplus_floors.py``).
Both are reported; the gate uses the floor an attacker can actually reach.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from privsplit.attacks.common import primary_label_floor

__all__ = ["Floors", "excluded_pair_floor", "floors_of"]


@dataclass(frozen=True)
class Floors:
    """Chance (1/T), the primary-label floor and the optional structure floor (top-1 and top-5)."""

    chance_top1: float
    chance_top5: float
    primary_top1: float
    primary_top5: float
    identities: int
    structure_top1: float | None = None
    structure_top5: float | None = None
    structure_name: str | None = None

    @property
    def reference(self) -> float:
        """The floor the gate compares with: the structure floor if any, else the primary-label floor."""
        return self.primary_top1 if self.structure_top1 is None else self.structure_top1

    def to_dict(self) -> dict[str, float | int | str | None]:
        """JSON-able form, with the reference floor the gate compares against."""
        return {**asdict(self), "reference": self.reference}


def excluded_pair_floor(query_ids: Tensor, query_primary: Tensor, enrol_ids: Tensor, enrol_primary: Tensor,
                        *, k: int = 1) -> float:
    """Top-k rate of an attacker who knows each query's primary label and that a target never has a
    query with a primary label seen in its own enrolment photos (CK+: one sequence per subject and
    expression). Candidates of a query = targets whose enrolment lacks its label; the attacker guesses k
    of them uniformly: mean over queries of ``[true in C] * min(k, |C|) / |C|``.
    """
    targets = sorted(set(enrol_ids.tolist()))
    seen = set(zip(enrol_ids.tolist(), enrol_primary.tolist()))
    rates = []
    for ident, label in zip(query_ids.tolist(), query_primary.tolist()):
        cands = [t for t in targets if (t, label) not in seen]
        rates.append(min(k, len(cands)) / len(cands) if ident in cands else 0.0)
    return float(torch.tensor(rates, dtype=torch.float64).mean()) if rates else float("nan")


def floors_of(enrol: object, query: object, *, sensitive: str, primary: str | None,
              structure: bool = False) -> Floors:
    """The floors of one enrolment/query draw (``FaceData``-like: ``labels[column]`` tensors)."""
    q_ids = query.labels[sensitive]  # type: ignore[attr-defined]
    t = len(set(enrol.labels[sensitive].tolist()))  # type: ignore[attr-defined]
    k = min(5, t)
    p1 = p5 = 1 / t
    s1 = s5 = None
    if primary is not None:
        q_p = query.labels[primary]  # type: ignore[attr-defined]
        p1, p5 = primary_label_floor(q_ids, q_p, k=1), primary_label_floor(q_ids, q_p, k=5)
        if structure:
            e_ids, e_p = enrol.labels[sensitive], enrol.labels[primary]  # type: ignore[attr-defined]
            s1 = excluded_pair_floor(q_ids, q_p, e_ids, e_p, k=1)
            s5 = excluded_pair_floor(q_ids, q_p, e_ids, e_p, k=5)
    return Floors(1 / t, k / t, p1, p5, t, s1, s5, f"{primary}-matched" if structure else None)


def mean_floors(per_seed: list[Floors]) -> Floors:
    """Average the floors of several draws (they differ only through the query set)."""
    def avg(name: str) -> float | None:
        vals = [getattr(f, name) for f in per_seed]
        return None if vals[0] is None else float(sum(vals) / len(vals))

    first = per_seed[0]
    return Floors(avg("chance_top1"), avg("chance_top5"), avg("primary_top1"), avg("primary_top5"),  # type: ignore[arg-type]
                  first.identities, avg("structure_top1"), avg("structure_top5"), first.structure_name)
