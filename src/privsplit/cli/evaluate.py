"""``privsplit evaluate``: re-evaluate a trained run on its saved identity-disjoint splits."""
from __future__ import annotations

from pathlib import Path

import typer

from privsplit.cli.common import console, friendly_errors, report_table
from privsplit.train.loops import evaluate as evaluate_model
from privsplit.train.run import load_run


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate)


@friendly_errors
def evaluate(
    run: Path = typer.Argument(..., help="Run folder written by `privsplit train`."),
    split: str = typer.Option("test", help="test | attack | train | all"),
    data_root: str = typer.Option(None, help="Dataset folder if it moved since training."),
) -> None:
    """Accuracy, balanced accuracy and per-class recall of a trained model."""
    if split not in ("test", "attack", "train", "all"):
        raise ValueError(f"unknown split '{split}'; use test, attack, train or all")
    art, p = load_run(run, data_root=data_root)
    ds = art.manifest["dataset"]
    if p.data.manifest.fingerprint() != ds["fingerprint"]:
        console.print("[yellow]warning: the dataset changed since training (fingerprint differs)[/]")
    parts = ["train", "test", "attack"] if split == "all" else [split]
    rows = {name: evaluate_model(art.model, getattr(p, name), column=art.primary).to_dict()
            for name in parts if len(getattr(p, name))}
    console.print(report_table(f"{art.primary} on {ds['label']}", rows))
