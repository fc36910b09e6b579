"""``privsplit reproduce``: the paper's Section VI tables and figures from one command."""
from __future__ import annotations

from pathlib import Path

import typer

from privsplit.cli.common import console, friendly_errors


def register(app: typer.Typer) -> None:
    app.command("reproduce")(reproduce)


@friendly_errors
def reproduce(
    dataset: str = typer.Option("lfw", help="lfw | ckplus | synthetic"),
    out: Path = typer.Option(..., "--out", "-o", help="Report folder (rerun to resume)."),
    quick: bool = typer.Option(False, help="Fewer layers, epochs and noise levels."),
    config: Path = typer.Option(None, help="TOML config (default: the shipped defaults.toml)."),
    stop_after: str = typer.Option(None, help="Stop after this stage (resume later)."),
    align: str = typer.Option("none", help="none (centre crop) | dlib-hog: train on detected + aligned faces "
                                           "(photos that are not pre-aligned); recorded in the run and bundles."),
    backbone: str = typer.Option(None, help="identity (fine-tune a dlib-distilled backbone, the paper's path) | "
                                 "scratch; default: the config's `backbone`."),
) -> None:
    """Train, build every embedding, run every attack and write OUT/report.md + report.html."""
    from privsplit.report.pipeline import reproduce as run

    report = run(dataset, out, quick=quick, config=config, stop_after=stop_after, align=align, backbone=backbone)
    console.print(f"report: {report}")
