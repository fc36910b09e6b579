"""Worst-case privacy audit: every registered attack, intervals over identities, a gate.

``audit(bundle_or_embedding, data, profile="fast", seeds=3, gate=1.25)`` runs every attack registered
in :data:`privsplit.attacks.ATTACKS` for the profile, over several seeds (enrolment draw + device
noise), and returns an :class:`AuditReport`: per attack the top-1 with its identity-bootstrap
interval and the spread over seeds; the worst case chosen on a validation split of the enrolment
photos (no peeking at the queries) beside the plain maximum (optimistic for the attacker); paired
tests; chance, the primary-label floor and (CK+) the expression-matched floor; the gate verdict; and
provenance (bundle SHA-256s, embedding id, data hash, seeds, versions, git commit, time per attack).
:func:`compare_audits` is the paired test behind "defence A leaks less than B".

The threat model is :mod:`privsplit.attacks`'s. ``privsplit audit`` (``cli/audit.py``) is the command.

The package is callable: ``privsplit.audit(...)`` is :func:`audit` (so ``privsplit.audit`` means the same
thing whether it is read as the top-level name or as this subpackage).
"""
from __future__ import annotations

import sys
import types
from typing import Any

from privsplit.audit.floors import Floors, excluded_pair_floor, floors_of
from privsplit.audit.provenance import bundle_provenance, data_provenance, environment_provenance
from privsplit.audit.report import AttackSummary, AuditReport, GateResult, WorstCase, compare_audits, leak_sentence
from privsplit.audit.rows import audit_row, profile_available, report_row
from privsplit.audit.run import PROFILES, audit, load_target, select_attacks
from privsplit.audit.writers import markdown, plot_rows, write_json, write_markdown

__all__ = ["audit", "AuditReport", "AttackSummary", "WorstCase", "GateResult", "Floors", "PROFILES",
           "select_attacks", "load_target", "compare_audits", "leak_sentence", "excluded_pair_floor", "floors_of",
           "bundle_provenance", "data_provenance", "environment_provenance", "markdown", "plot_rows", "write_json",
           "write_markdown", "audit_row", "report_row", "profile_available"]


class _CallableModule(types.ModuleType):
    """This package's module type: calling it calls :func:`audit`."""

    def __call__(self, *args: Any, **kwargs: Any) -> AuditReport:
        return audit(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
