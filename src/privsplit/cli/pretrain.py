"""``privsplit pretrain``: build an identity-bearing backbone (distillation, margin softmax, VGG-Face)."""
from __future__ import annotations

from pathlib import Path

import torch
import typer

from privsplit.cli.common import console, friendly_errors


def register(app: typer.Typer) -> None:
    app.command("pretrain")(pretrain)


@friendly_errors
def pretrain(
    out: Path = typer.Option(Path("runs/backbone"), "--out", "-o", help="Backbone folder (model artifact)."),
    method: str = typer.Option("distill", help="distill (teacher's descriptors) | margin (ArcFace/CosFace) | vggface"),
    dataset: str = typer.Option("lfw", help="Auxiliary data: its primary training split is used (never attack people)."),
    data_root: str = typer.Option(None, help="Dataset folder (default: $PRIVSPLIT_DATA/<dataset>)."),
    teacher: str = typer.Option("dlib", help="Distillation teacher (registered in privsplit.backbone.TEACHERS)."),
    max_images: int = typer.Option(None, help="Distil on at most this many auxiliary images (~80 ms each for dlib)."),
    kind: str = typer.Option("cosface", help="Margin loss for --method margin: cosface | arcface."),
    dim: int = typer.Option(128, help="Embedding size for --method margin."),
    weights: Path = typer.Option(None, help="Converted VGG-Face weights for --method vggface."),
    bgr: bool = typer.Option(False, help="The VGG-Face file expects BGR input (Caffe conversions)."),
    arch: str = typer.Option(None, help="vgg16 | vgg_s (default per dataset)."),
    width: float = typer.Option(0.25, help="Channel width multiplier."),
    size: int = typer.Option(None, help="Input size (must match the later `train --init` run)."),
    epochs: int = typer.Option(10, min=1),
    batch_size: int = typer.Option(64, min=2, help="Global batch (split across processes under torchrun)."),
    lr: float = typer.Option(2e-3),
    seed: int = typer.Option(0),
    resume: bool = typer.Option(False, help="Continue from the folder's last checkpoint (teacher cache is always reused)."),
    threads: int = typer.Option(0, help="Torch CPU threads (0 = all cores)."),
) -> None:
    """Build a backbone that knows faces; fine-tune it with `privsplit train --init OUT`."""
    from privsplit.backbone.pretrain import PretrainOptions
    from privsplit.backbone.pretrain import pretrain as run
    from privsplit.train.loops import TrainConfig
    from privsplit.train.run import RunSpec

    if threads:
        torch.set_num_threads(threads)
    spec = RunSpec(dataset=dataset, data_root=data_root, arch=arch, width=width, size=size,
                   train=TrainConfig(seed=seed))
    options = PretrainOptions(teacher=teacher, max_images=max_images, kind=kind, dim=dim,
                              weights=str(weights) if weights else None, bgr=bgr,
                              train=TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, class_weight="none"))
    folder = run(method, spec, out, options=options, resume=resume)
    from privsplit.train import distributed as ddp

    if ddp.is_main():  # under torchrun only rank 0 wrote the backbone
        _show(folder)


def _show(folder: Path) -> None:
    import json

    man = json.loads((folder / "model.json").read_text())
    bb = man["backbone"]
    console.print(f"backbone ({bb['method']}) written to {folder}: {man['architecture']['arch']} width "
                  f"{man['architecture']['width']}, {man['preprocess']['size']} px")
    if "cosine_agreement" in bb:
        console.print("student/teacher cosine: " + ", ".join(f"{k} {v:.3f}" for k, v in bb["cosine_agreement"].items()))
    if bb.get("training_data"):
        console.print(f"[yellow]note:[/] {bb['training_data']}. With this teacher the reconstruction attack's dlib "
                      "identity check is NOT independent of the model.")
    console.print(f"next: privsplit train --init {folder}")
