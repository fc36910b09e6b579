"""``privsplit audit``: the worst-case privacy audit of a bundle, with a gate for CI."""
from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

import privsplit.attacks  # noqa: F401  (registers the built-in attacks, listed in --help)
from privsplit.attacks.base import ATTACKS
from privsplit.cli.common import console, friendly_errors

DATASETS = "lfw | ckplus | celeba | synthetic | path/to/labels.csv"


def register(app: typer.Typer) -> None:
    app.command("audit")(audit_command)


def _run_dataset(bundle: Path) -> tuple[Path | None, str | None]:
    """The bundle's run folder and its dataset name (None, None when the run is gone)."""
    from privsplit.audit.inputs import bundle_run

    try:
        run = bundle_run(bundle)
        return run, json.loads((run / "model.json").read_text())["run"]["dataset"]
    except (ValueError, OSError, KeyError):
        return None, None


def _use_run(bundle: Path, data: str | None) -> Path | None:
    """The run to audit on when ``data`` is unset or names the run's own dataset; else None."""
    run, dataset = _run_dataset(bundle)
    if data is None:
        if run is None:
            raise ValueError(f"cannot find the run of bundle {bundle}; pass --data ({DATASETS})")
        return run
    return run if data == dataset else None


def load_inputs(bundle: Path, data: str | None, *, sensitive: str | None = None, primary: str | None = None,
                n_enrol: int = 15, aux: bool = True, data_root: str | None = None) -> tuple[Any, Any, Any]:
    """(client bundle, embedding, :class:`~privsplit.audit.inputs.AuditInputs`) for ``bundle`` and ``data``.

    The auditor's own data is checked (columns, images per identity) before the bundle or any image
    is loaded, so bad input fails fast with one line.
    """
    from privsplit.audit.inputs import check_dataset, dataset_inputs, known_dataset, run_inputs
    from privsplit.data.transforms import Preprocess
    from privsplit.defenses.bundles import embedding_from_bundles, load_client_bundle, load_server_bundle

    run = _use_run(bundle, data)
    default_primary = known_dataset(data or "").get("primary", "gender")
    cols = {"sensitive": sensitive or "identity", "primary": primary or default_primary}
    if run is None:
        check_dataset(data, **cols, n_enrol=n_enrol, data_root=data_root)
    client, server = load_client_bundle(bundle / "client"), load_server_bundle(bundle / "server")
    emb = embedding_from_bundles(client, server)
    if run is not None:
        return client, emb, run_inputs(run, sensitive=sensitive, primary=primary, data_root=data_root, aux=aux)
    return client, emb, dataset_inputs(data, Preprocess.from_dict(client.manifest["preprocess"]), **cols,
                                       n_enrol=n_enrol, aux=aux, data_root=data_root)


def _table(report) -> Table:
    table = Table(title=f"identity attacks on {report.embedding} ({report.profile}, seeds {report.seeds})")
    for col in ("attack", "top-1 [95% CI]", "spread", "x floor", "top-5", "validation", "time"):
        table.add_column(col)
    floor = report.floors.reference
    for a in report.attacks:
        mark = " (worst)" if a.name == report.worst.attack else ""
        top1 = "-" if a.top1 is None else str(a.top1)
        lo, hi = a.spread
        table.add_row(a.name + mark, top1, f"{lo:.1%}-{hi:.1%}",
                      "-" if a.top1 is None else f"{a.top1.value / floor:.2f}",
                      "-" if a.top5 is None else f"{a.top5.value:.1%}",
                      "-" if a.validation_top1 is None else f"{a.validation_top1:.1%}", f"{a.seconds:.0f}s")
    f = report.floors
    refs = [("chance", f.chance_top1, f.chance_top5), (f"{report.primary}-label floor", f.primary_top1, f.primary_top5)]
    if f.structure_top1 is not None:
        refs.append((f"{f.structure_name} floor", f.structure_top1, f.structure_top5))
    for name, top1, top5 in refs:
        table.add_row(f"[dim]{name}[/]", f"{top1:.1%}", "", f"{top1 / floor:.2f}", f"{top5:.1%}", "", "")
    return table


@friendly_errors
def audit_command(
    bundle: Path = typer.Argument(..., help="Bundle folder from `privsplit embed` (holding client/ and server/)."),
    data: str = typer.Option(None, help=f"Images to attack: {DATASETS} (default: the bundle's run: its attack "
                                        "split as targets, its training split as the attacker's other people)."),
    sensitive: str = typer.Option(None, help="Column to protect (default: the run's, or identity)."),
    primary: str = typer.Option(None, help="Primary label column, for the floor (default: the run's or "
                                           "dataset's, else gender)."),
    attacks: str = typer.Option("all", help="all (the profile's attacks) or comma-separated names of: "
                                            f"{', '.join(ATTACKS.names()) or '(none registered)'}."),
    profile: str = typer.Option("fast", help="fast (curves, sweeps) | full (every attack)."),
    seeds: int = typer.Option(3, min=1, help="Seeds (enrolment draw + device noise)."),
    out: Path = typer.Option(None, "--out", "-o", help="Folder for audit.json/.md/.png (default BUNDLE/audit)."),
    gate: float = typer.Option(None, help="Exit 1 when the worst case's top-1 exceeds GATE x floor (e.g. 1.25)."),
    gate_strict: bool = typer.Option(False, "--gate-strict", help="Gate on the upper 95% bound instead."),
    n_enrol: int = typer.Option(15, min=2, help="Enrolment photos per target."),
    per_identity: int = typer.Option(None, min=1, help="Cap queries per target (default: all its other photos; "
                                                      "LFW's most photographed person has ~500)."),
    repeats: int = typer.Option(1, min=1, help="Each query photo sent this many times (fresh noise), averaged."),
    aux: bool = typer.Option(True, "--aux/--no-aux", help="Give attacks images of other people."),
    compare: Path = typer.Option(None, help="audit.json of another bundle audited on the same --data and --seeds: "
                                            "a paired test says whether this one leaks less."),
    data_root: str = typer.Option(None, help="Folder holding the datasets (default $PRIVSPLIT_DATA)."),
) -> None:
    """Worst-case identity leakage of a bundle over every attack, with 95% intervals and an optional gate."""
    from privsplit.audit import (audit, bundle_provenance, compare_audits, leak_sentence, plot_rows, select_attacks,
                                 write_json, write_markdown)
    from privsplit.report.plots import plot_audit

    select_attacks(attacks, profile)  # unknown attack or profile: fail before any loading
    client, emb, inp = load_inputs(bundle, data, sensitive=sensitive, primary=primary, n_enrol=n_enrol, aux=aux,
                                   data_root=data_root)
    console.print(f"auditing {client.kind} at {client.layer} on {inp.source}: {len(inp.targets)} target images, "
                  f"{0 if inp.aux is None else len(inp.aux)} auxiliary")
    report = audit(emb, inp.targets, aux=inp.aux, attacks=attacks, profile=profile, seeds=seeds,
                   sensitive=inp.sensitive, primary=inp.primary, group=inp.group, n_enrol=n_enrol,
                   per_identity=per_identity, repeats=repeats, gate=gate, gate_strict=gate_strict,
                   provenance={**bundle_provenance(bundle), "data_source": inp.source})
    out = out or bundle / "audit"
    out.mkdir(parents=True, exist_ok=True)
    write_json(report, out / "audit.json")
    write_markdown(report, out / "audit.md", command="privsplit " + shlex.join(sys.argv[1:]))
    plot_audit(plot_rows(report), out / "audit.png")
    console.print(_table(report))
    console.print(report.headline())
    console.print(f"written: {out / 'audit.json'}, {out / 'audit.md'}, {out / 'audit.png'}")
    if compare is not None:
        other = json.loads(Path(compare).read_text())
        name = other.get("provenance", {}).get("bundle") or str(compare)
        console.print(leak_sentence(str(bundle), name, compare_audits(report, other)))
    if report.gate is not None:
        verdict = "[bold green]gate passed[/]" if report.gate.passed else "[bold red]gate FAILED[/]"
        console.print(f"{verdict}: {report.gate.reason}")
        if not report.gate.passed:
            raise typer.Exit(1)
