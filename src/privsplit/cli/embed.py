"""``privsplit embed``: build one of the paper's embeddings from a trained run and export its bundles."""
from __future__ import annotations

from pathlib import Path

import typer

from privsplit.cli.common import console, friendly_errors, report_table
from privsplit.defenses import EMBEDDINGS, save_bundles
from privsplit.defenses.embedding import ZOO_KINDS
from privsplit.defenses.build import SiameseConfig, build_embedding, cached_siamese
from privsplit.defenses.zoo import DEFENCES
from privsplit.models.presets import paper_dim
from privsplit.train.loops import TrainConfig, evaluate
from privsplit.train.run import load_run


def register(app: typer.Typer) -> None:
    app.command("embed")(embed)


@friendly_errors
def embed(
    run: Path = typer.Argument(..., help="Run folder written by `privsplit train`."),
    kind: str = typer.Option("advanced", help=" | ".join([*EMBEDDINGS, *ZOO_KINDS]) + " (the paper's, then the "
                             "defences of privsplit.defenses.zoo: see docs/defences.md)"),
    knob: float = typer.Option(None, help="The main knob of a zoo defence (nopeek/adversarial weight, gaussian-split "
                               "sigma, blur radius, ...; default: its middle sweep value)."),
    layer: str = typer.Option("conv5_3", help="Split layer (see `privsplit train` output for the list)."),
    dim: int = typer.Option(None, help="Reduced dimension (default: the paper's 8/6/4 for conv5_1/2/3, 10 for conv5)."),
    noise: float = typer.Option(0.5, help="Noise sigma for noisy embeddings, in units of each feature's std."),
    noise_scale: str = typer.Option("std", help="std | isotropic"),
    noise_mode: str = typer.Option("fresh", help="fresh (new noise every call) | keyed (same photo -> same noise, "
                                   "so repeated sends cannot average it away; see docs/keyed_noise.md)"),
    reduction: str = typer.Option("pca", help="pca | autoencoder"),
    siamese_epochs: int = typer.Option(2, min=1),
    siamese_weight: float = typer.Option(1.0, help="Weight of the contrastive term."),
    margin: float = typer.Option(1.0, help="Contrastive margin (on L2-normalised features)."),
    trainable: str = typer.Option("all", help="all | extractor"),
    out: Path = typer.Option(None, "--out", "-o", help="Bundle folder (default RUN/bundles/KIND-LAYER)."),
    data_root: str = typer.Option(None),
) -> None:
    """Build KIND at LAYER, print the composed client->server accuracy, write client and server bundles."""
    art, p = load_run(run, data_root=data_root)
    cfg = SiameseConfig(weight=siamese_weight, margin=margin, trainable=trainable,
                        train=TrainConfig(epochs=siamese_epochs, lr=5e-4, warmup_fraction=0.0))
    built_here = kind in DEFENCES and kind not in ("calibrated-noise", "send-image")
    # the paper's Siamese kinds, and zoo defences built on it (robust-advanced), share the cached Siamese model
    siamese = DEFENCES.get(kind).takes("tuned") if built_here else \
        kind in EMBEDDINGS and EMBEDDINGS[kind].siamese and kind not in DEFENCES
    tuned = cached_siamese(run, art, p.train, layer=layer, cfg=cfg) if siamese else None
    if built_here:
        entry = DEFENCES.get(kind)
        value = entry.knobs[len(entry.knobs) // 2] if knob is None else knob
        emb = entry(art.model, layer=layer, train=p.train, column=art.primary, knob=value,
                    **entry.options(tuned=tuned, dim=dim, noise_mode=noise_mode))
        console.print(f"{kind}: {entry.knob} = {value} ({entry.paper})")
    elif kind in ("calibrated-noise", "send-image"):
        raise typer.BadParameter(f"'{kind}' is built by benchmarks/defences_pareto.py (it needs the audit / has no "
                                 "device side to export)")
    else:
        emb = build_embedding(kind, art.model, layer=layer, train=p.train, column=art.primary, dim=dim, sigma=noise,
                              scale=noise_scale, reduction=reduction, tuned=tuned, noise_mode=noise_mode)
    rows = {"test (held-out identities)": evaluate(emb, p.test, column=art.primary).to_dict()}
    if len(p.attack):
        rows["attack identities"] = evaluate(emb, p.attack, column=art.primary).to_dict()
    from privsplit.train import distributed as ddp

    if not ddp.is_main():  # under torchrun (Siamese fine-tuning on N processes) only rank 0 writes
        return
    out = out or run / "bundles" / f"{kind}-{layer}"
    info = {"run": str(run), "metrics": rows, "dim": dim or paper_dim(layer) if emb.reduction_config else None}
    client, server = save_bundles(emb, out, config=art.config, preprocess=art.preprocess, classes=art.classes,
                                  primary=art.primary, info=info, backbone=art.manifest.get("backbone"))
    label = art.manifest["dataset"]["label"]
    console.print(report_table(f"{kind} embedding at {layer}: {art.primary} on {label} (client -> server)", rows))
    console.print(f"sends {list(emb.transmitted_shape(art.preprocess.size))} floats per image; "
                  f"client bundle: {client}; server bundle: {server}")
