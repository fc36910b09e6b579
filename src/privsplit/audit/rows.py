"""Flat rows of an audit for tables and curves (``privsplit reproduce``, ``privsplit demo``, benchmarks).

Only figures go into a row (no timings or clock times), so rerunning a stage reproduces it exactly.
"""
from __future__ import annotations

from typing import Any

from privsplit.attacks.base import ATTACKS
from privsplit.attacks.data import AttackData
from privsplit.audit.report import AuditReport
from privsplit.data.faces import FaceData
from privsplit.defenses.embedding import Embedding

__all__ = ["audit_row", "report_row", "profile_available"]


def profile_available(profile: str) -> bool:
    """Whether any registered attack runs in ``profile`` (False only on a build without the attack suite)."""
    return any(profile in getattr(f, "profiles", ()) for _, f in ATTACKS.items())


def report_row(report: AuditReport) -> dict[str, Any]:
    """The headline figures of an audit: the worst case (chosen on validation) with its interval and
    attack, the optimistic maximum, the floor, and each attack's top-1."""
    w, o = report.worst, report.optimistic
    row: dict[str, Any] = {
        "worst_attack": w.attack, "worst_top1": w.top1.value, "worst_top1_ci95": list(w.top1.ci95),
        "worst_times_floor": w.times_floor, "max_attack": o.attack, "max_top1": o.top1.value,
        "audit_floor_top1": report.floors.reference, "audit_chance_top1": report.floors.chance_top1,
        "audit_profile": report.profile, "audit_seeds": len(report.seeds), "audit_queries": sum(report.queries["per_seed"]),
    }
    for a in report.attacks:
        if a.top1 is not None:
            row[f"audit_{a.name}_top1"] = a.top1.value
    return row


def audit_row(embedding: Embedding, data: FaceData | AttackData, **options: Any) -> dict[str, Any]:
    """Audit ``embedding`` (see :func:`privsplit.audit.audit` for ``options``) quietly and return its row."""
    from privsplit.audit.run import audit

    return report_row(audit(embedding, data, progress=False, **options))
