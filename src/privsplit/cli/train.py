"""``privsplit train``: train the primary-task model on identity-disjoint splits."""
from __future__ import annotations

from pathlib import Path

import torch
import typer

from privsplit.cli.common import console, friendly_errors, report_table
from privsplit.data.loaders import default_dataset
from privsplit.train.loops import TrainConfig
from privsplit.train.run import RunSpec, run_training


def register(app: typer.Typer) -> None:
    app.command("train")(train)


@friendly_errors
def train(
    out: Path = typer.Option(Path("runs/primary"), "--out", "-o", help="Run folder (artifact, splits, checkpoint)."),
    dataset: str = typer.Option("auto", help="lfw | ckplus | celeba | synthetic | path/to/labels.csv | auto"),
    data_root: str = typer.Option(None, help="Dataset folder (default: $PRIVSPLIT_DATA/<dataset>)."),
    primary: str = typer.Option(None, help="Primary label column (default per dataset: gender, expression)."),
    arch: str = typer.Option(None, help="vgg16 | vgg_s (default per dataset)."),
    width: float = typer.Option(0.25, help="Channel width multiplier (1.0 = the paper's VGG)."),
    size: int = typer.Option(None, help="Input size in pixels (default 64; 48 for CK+)."),
    epochs: int = typer.Option(6, min=1),
    batch_size: int = typer.Option(64, min=2),
    lr: float = typer.Option(2e-3),
    seed: int = typer.Option(0),
    class_weight: str = typer.Option("balanced", help="balanced | none"),
    attack_min_images: int = typer.Option(None, help="Identities with at least this many images form the attack split."),
    attack_count: int = typer.Option(None, help="Use only this many (random) of them (default per dataset)."),
    skip_bad: bool = typer.Option(False, help="Skip unreadable images (reported) instead of failing."),
    align: str = typer.Option("none", help="none (centre crop, for pre-aligned data like LFW) | dlib-hog: detect "
                                           "and align each face to LFW's framing (photos without a face are "
                                           "skipped); recorded in the run and the client bundle."),
    resume: bool = typer.Option(False, help="Continue from the run folder's last checkpoint."),
    threads: int = typer.Option(0, help="Torch CPU threads (0 = all cores)."),
    init: Path = typer.Option(None, "--init", help="Fine-tune from this backbone (`privsplit pretrain`) instead of "
                              "training from scratch (the paper's path); architecture and size come from it."),
    freeze: str = typer.Option(None, help="Keep this layer and all below it fixed (weights and BatchNorm "
                               "statistics), e.g. conv5_3 with --init: a full fine-tune washes identity out "
                               "of the backbone's conv5 (docs/backbone.md)."),
) -> None:
    """Train the primary model (e.g. gender) and report accuracy on held-out identities."""
    if threads:
        torch.set_num_threads(threads)
    if dataset == "auto":
        dataset, why = default_dataset()
        console.print(f"[cyan]{why}[/]")
    spec = RunSpec(dataset=dataset, data_root=data_root, primary=primary, arch=arch, width=width, size=size,
                   attack_min_images=attack_min_images, attack_count=attack_count, skip_bad=skip_bad, align=align,
                   init=str(init) if init else None, train=TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                                                        class_weight=class_weight, freeze=freeze))
    result = run_training(spec, out, resume=resume)
    from privsplit.train import distributed as ddp

    if ddp.is_main():  # under torchrun the other processes have nothing to show (rank 0 wrote the run)
        show_run(result.metrics, result.folder)


def show_run(metrics: dict, folder: Path) -> None:
    import json

    man = json.loads((folder / "model.json").read_text())
    rows = {"test (held-out identities)": metrics["test"]}
    if "attack_identities" in metrics:
        rows["attack identities"] = metrics["attack_identities"]
    console.print(report_table(f"{man['primary']} on {man['dataset']['label']} ({man['architecture']['arch']}, "
                               f"width {man['architecture']['width']}, {man['preprocess']['size']} px)", rows))
    console.print(f"training time: {metrics['train_seconds']:.0f} s; artifact: {folder}/model.safetensors")
    console.print(f"split points: {', '.join(man['split_points'])}")
