"""``privsplit demo``: the main job on the default data (LFW if present, else synthetic faces).

For now: train the primary model quickly, print its accuracy and the split points; later parts
extend the demo to the whole client -> server pipeline and attacks.
"""
from __future__ import annotations

from pathlib import Path

import typer

from privsplit.cli.common import console, friendly_errors
from privsplit.cli.train import show_run
from privsplit.data.loaders import default_dataset
from privsplit.train.loops import TrainConfig
from privsplit.train.run import RunSpec, run_training


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)


@friendly_errors
def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", "-o"),
    dataset: str = typer.Option("auto", help="auto (LFW if present, else synthetic) or a dataset name."),
    epochs: int = typer.Option(4, min=1),
) -> None:
    """Train the primary model on the default data and show accuracy and split points."""
    if dataset == "auto":
        dataset, why = default_dataset()
        console.print(f"[cyan]{why}[/]")
    result = run_training(RunSpec(dataset=dataset, train=TrainConfig(epochs=epochs)), out)
    show_run(result.metrics, result.folder)
