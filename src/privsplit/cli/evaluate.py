"""``privsplit evaluate``: re-evaluate a trained run on its saved identity-disjoint splits."""
from __future__ import annotations

from pathlib import Path

import typer

from privsplit.cli.common import console, friendly_errors, report_table
from privsplit.data.faces import load_faces
from privsplit.data.loaders import load_manifest
from privsplit.data.splits import Splits
from privsplit.train.artifacts import load_model
from privsplit.train.loops import evaluate as evaluate_model


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate)


@friendly_errors
def evaluate(
    run: Path = typer.Argument(..., help="Run folder written by `privsplit train`."),
    split: str = typer.Option("test", help="test | attack | train | all"),
    data_root: str = typer.Option(None, help="Dataset folder if it moved since training."),
) -> None:
    """Accuracy, balanced accuracy and per-class recall of a trained model."""
    art = load_model(run)
    ds = art.manifest["dataset"]
    manifest = load_manifest(ds["name"], data_root or art.manifest["run"].get("data_root"))
    if manifest.fingerprint() != ds["fingerprint"]:
        console.print("[yellow]warning: the dataset changed since training (fingerprint differs)[/]")
    sens = art.manifest["sensitive"]
    data = load_faces(manifest, art.preprocess, columns=[art.primary, sens], required=[art.primary])
    if data.classes[art.primary] != art.classes:
        raise ValueError(f"label map of '{art.primary}' differs from the model's: {data.classes[art.primary]} "
                         f"vs {art.classes}")
    splits = Splits.from_json(run / art.manifest["splits"], data.manifest.column(sens))
    parts = ["train", "test", "attack"] if split == "all" else [split]
    rows = {p: evaluate_model(art.model, data.subset(getattr(splits, p)), column=art.primary).to_dict()
            for p in parts if len(getattr(splits, p))}
    console.print(report_table(f"{art.primary} on {ds['label']}", rows))
