"""``audit.json`` and ``audit.md`` (the PNG is drawn by :func:`privsplit.report.plots.plot_audit` from
:func:`plot_rows`, so this package stays below ``report/``)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from privsplit.attacks.base import Figure
from privsplit.audit.report import AuditReport

__all__ = ["write_json", "write_markdown", "markdown", "plot_rows"]


def _pct(f: Figure | None) -> str:
    return "–" if f is None else f"{f.value:.1%}"


def _fig(f: Figure | None) -> str:
    if f is None:
        return "–"
    fmt = "{:.1%}" if f.percent else "{:.3f}"
    return f"{fmt.format(f.value)} [{fmt.format(f.ci95[0])}, {fmt.format(f.ci95[1])}]"


def write_json(report: AuditReport, path: str | Path) -> Path:
    """Write the report's :meth:`AuditReport.to_dict` to ``path`` as JSON; returns the path."""
    Path(path).write_text(json.dumps(report.to_dict(), indent=1, default=str))
    return Path(path)


def _attack_rows(report: AuditReport) -> list[str]:
    extra = sorted({k for a in report.attacks for k in a.figures})
    floor = report.floors.reference
    head = ["attack", "top-1 [95% CI], mean over seeds", "spread over seeds", "× floor", "top-5",
            "validation top-1", "worst − this attack (paired test)", "time"] + extra
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for a in report.attacks:
        lo, hi = a.spread
        times = "–" if a.top1 is None or floor <= 0 else f"{a.top1.value / floor:.2f}"
        test = report.comparisons.get(a.name)
        paired = "(worst)" if a.name == report.worst.attack else ("–" if test is None else str(test))
        val = "–" if a.validation_top1 is None else f"{a.validation_top1:.1%}"
        cells = [a.name, _fig(a.top1), f"{lo:.1%}–{hi:.1%}", times, _pct(a.top5), val, paired, f"{a.seconds:.0f} s"]
        lines.append("| " + " | ".join(cells + [_fig(a.figures.get(k)) for k in extra]) + " |")
    blank = [""] * (len(head) - 5)
    for name, top1, top5 in _references(report):
        lines.append("| " + " | ".join([f"*{name}*", f"{top1:.1%}", "", f"{top1 / floor:.2f}" if floor > 0 else "–",
                                          f"{top5:.1%}", *blank]) + " |")
    return lines


def _references(report: AuditReport) -> list[tuple[str, float, float]]:
    """(name, top-1, top-5) of chance and the floors, as rows of the attack table."""
    f = report.floors
    rows = [("chance", f.chance_top1, f.chance_top5), (f"{report.primary}-label floor", f.primary_top1, f.primary_top5)]
    if f.structure_top1 is not None:
        rows.append((f"{f.structure_name} floor", f.structure_top1, f.structure_top5 or 0.0))
    return rows


def _floor_lines(report: AuditReport) -> list[str]:
    f = report.floors
    lines = [f"- chance (1/{f.identities}): top-1 {f.chance_top1:.1%}, top-5 {f.chance_top5:.1%}",
             f"- primary-label floor ({report.primary}): top-1 {f.primary_top1:.1%}, top-5 {f.primary_top5:.1%}"]
    if f.structure_top1 is not None:
        lines.append(f"- {f.structure_name} floor (attacker knows the query's {report.primary} and that a target's "
                     f"enrolment never shares a group with its queries): top-1 {f.structure_top1:.1%}, "
                     f"top-5 {f.structure_top5:.1%}")
    lines.append(f"- floor used for × floor and the gate: {f.reference:.1%}")
    return lines


def markdown(report: AuditReport, *, command: str | None = None) -> str:
    """The audit as Markdown: headline, per-attack table, floors, gate, provenance."""
    p, q = report.provenance, report.queries
    w, o = report.worst, report.optimistic
    lines = [f"# Privacy audit: {report.embedding} ({p.get('layer') or ''})", ""]
    if command:
        lines += [f"Command: `{command}`", ""]
    lines += [f"**Worst case (chosen on a validation split of the enrolment photos): {w.attack}, identity top-1 "
              f"{_fig(w.top1)} = {w.times_floor:.2f} × floor.**", ""]
    if o.attack != w.attack:
        lines += [f"Plain maximum over attacks on the queries (optimistic for the attacker): {o.attack} "
                  f"{_fig(o.top1)} = {o.times_floor:.2f} × floor.", ""]
    lines += [f"Profile `{report.profile}`, seeds {report.seeds} (enrolment draw + device noise), "
              f"{q['enrol_per_identity']} enrolment photos per target, {q['identities']} targets, "
              f"queries per seed {q['per_seed']}, each sent {q['repeats']}×; auxiliary images of other people: "
              f"{q['aux_images']}. Intervals: bootstrap over identities (all seeds of one person resampled together).",
              "", *_attack_rows(report), "", "Floors:", "", *_floor_lines(report), ""]
    if report.gate is not None:
        lines += [f"Gate: **{'PASS' if report.gate.passed else 'FAIL'}**: {report.gate.reason}.", ""]
    lines += ["Provenance:", "", "```json", json.dumps(p, indent=1, default=str), "```", ""]
    return "\n".join(lines)


def write_markdown(report: AuditReport, path: str | Path, *, command: str | None = None) -> Path:
    """Write the report as markdown (with the command that produced it, if given); returns the path."""
    Path(path).write_text(markdown(report, command=command))
    return Path(path)


def plot_rows(report: AuditReport) -> dict[str, Any]:
    """Plain data for :func:`privsplit.report.plots.plot_audit`."""
    bars = [{"attack": a.name, "top1": a.top1.value, "ci95": list(a.top1.ci95), "worst": a.name == report.worst.attack}
            for a in report.attacks if a.top1 is not None]
    return {"bars": bars, "chance": report.floors.chance_top1, "floor": report.floors.reference,
            "title": f"{report.embedding}: identity top-1 ({report.profile}, {len(report.seeds)} seed(s))"}
