"""``privsplit demo``: the whole pipeline, quickly, on the default data (LFW if present, else synthetic).

1. train the primary model; 2. build the simple and advanced embeddings at conv5_3 and export
bundles; 3. serve the advanced analyzer on loopback (OIP v2) and send a few held-out faces through
the device client; 4. run the identity attacks on a small budget; 5. print a summary and write
``OUT/demo.md``.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import typer
from rich.table import Table

from privsplit.cli.common import console, friendly_errors
from privsplit.cli.train import show_run
from privsplit.data.loaders import default_dataset

#: per-dataset demo budget (synthetic must finish in a few minutes on 2 cores)
BUDGET = {"synthetic": {"epochs": 4, "siamese_epochs": 1, "attack_epochs": 15},
          "lfw": {"epochs": 4, "siamese_epochs": 1, "attack_epochs": 20}}


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)


@friendly_errors
def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", "-o"),
    dataset: str = typer.Option("auto", help="auto (LFW if present, else synthetic) or a dataset name."),
    epochs: int = typer.Option(None, min=1, help="Primary training epochs (default: 4)."),
    layer: str = typer.Option("conv5_3"),
    noise: float = typer.Option(0.5, help="Noise sigma of the advanced embedding (units of feature std)."),
) -> None:
    """Train, embed, serve, infer through the client, attack: the whole pipeline in a few minutes."""
    from privsplit.attacks.transfer import TransferConfig
    from privsplit.defenses.bundles import load_client_bundle, save_bundles
    from privsplit.defenses.build import SiameseConfig, build_embedding, cached_siamese
    from privsplit.report.experiments import attack_data, identity_attacks
    from privsplit.runtime.client import Client

    try:
        from privsplit.runtime.server import ServerThread, create_app
    except ImportError as exc:  # the analyzer service is an extra
        raise ValueError(f"privsplit demo serves the analyzer and needs the serve extra ({exc.name} is missing): "
                         "pip install -e '.[serve]'") from None
    from privsplit.train.loops import TrainConfig, evaluate
    from privsplit.train.run import RunSpec, run_training

    t_start = time.perf_counter()
    if dataset == "auto":
        dataset, why = default_dataset()
        console.print(f"[cyan]{why}[/]")
    budget = BUDGET.get(dataset, BUDGET["lfw"])
    console.rule("1/4 primary model")
    result = run_training(RunSpec(dataset=dataset, train=TrainConfig(epochs=epochs or budget["epochs"])), out)
    show_run(result.metrics, result.folder)

    console.rule("2/4 embeddings")
    from privsplit.train.run import attack_group, load_run

    art, p = load_run(out, progress=False)
    tuned = cached_siamese(out, art, p.train, layer=layer, cfg=SiameseConfig(
        train=TrainConfig(epochs=budget["siamese_epochs"], lr=5e-4, warmup_fraction=0.0)))
    embs = {kind: build_embedding(kind, art.model, layer=layer, train=p.train, column=art.primary, sigma=noise,
                                  tuned=tuned, progress=False) for kind in ("simple", "advanced")}
    client_dir, server_dir = save_bundles(embs["advanced"], out / "bundles" / f"advanced-{layer}", config=art.config,
                                          preprocess=art.preprocess, classes=art.classes, primary=art.primary,
                                          info={"run": str(out)}, backbone=art.manifest.get("backbone"))

    console.rule("3/4 device client -> OIP v2 analyzer service (loopback)")
    picks = [round(i * (len(p.test) - 1) / 7) for i in range(8)]  # spread over different people
    images = [p.test.manifest.root / p.test.manifest.paths[i] for i in picks]
    truth = [art.classes[int(p.test.labels[art.primary][i])] for i in picks]
    with ServerThread(create_app(server_dir, api_keys=[])) as server:
        preds = Client(load_client_bundle(client_dir), server.url).infer(images)
    sent = Table(title=f"sent {len(images)} held-out faces; only {embs['advanced'].transmitted_shape(art.preprocess.size)[0]}"
                       f" noisy floats per face left the 'device' ({server.url})")
    for col in ("image", "true", "predicted", "probability"):
        sent.add_column(col)
    for path, t, pr in zip(images, truth, preds):
        sent.add_row(Path(path).name, t, pr.label, f"{pr.probability:.2f}")
    console.print(sent)

    console.rule("4/4 identity attacks (small budget)")
    data = attack_data(p.attack, group=attack_group(art))
    transfer = TransferConfig(epochs=budget["attack_epochs"], lrs=(1e-3,))
    rows = {}
    for kind, emb in embs.items():
        row = identity_attacks(emb, data, primary=art.primary, transfer=transfer)
        row["accuracy"] = evaluate(emb, p.test, column=art.primary).accuracy
        rows[kind] = row
    summary = Table(title=f"{art.primary} vs identity on {art.manifest['dataset']['label']} at {layer}")
    for col in ("embedding", f"{art.primary} accuracy", "identity attack (transfer)", "identity attack (1-NN)",
                "chance", "primary-label floor"):
        summary.add_column(col)
    for kind, r in rows.items():
        summary.add_row(kind, f"{r['accuracy']:.1%}", f"{r['transfer_top1']:.1%}", f"{r['nn_top1']:.1%}",
                        f"{r['chance_top1']:.1%}", f"{r['primary_floor_top1']:.1%}")
    console.print(summary)
    (out / "demo.json").write_text(json.dumps({"rows": rows, "served": [pr.label for pr in preds], "truth": truth,
                                               "seconds": time.perf_counter() - t_start}, indent=1))
    _write_markdown(out, art, rows, layer, time.perf_counter() - t_start)
    console.print(f"done in {(time.perf_counter() - t_start) / 60:.1f} min; report: {out / 'demo.md'}; "
                  f"full paper-style report: privsplit reproduce --dataset {dataset} --out reports/{dataset}")


def _write_markdown(out: Path, art, rows: dict, layer: str, seconds: float) -> None:
    lines = [f"# privsplit demo on {art.manifest['dataset']['label']}", "",
             f"Command: `privsplit demo --out {out}` ({seconds / 60:.1f} min). Split at {layer}.", "",
             "| embedding | accuracy | transfer attack top-1 | 1-NN top-1 | chance | primary-label floor |",
             "|---|---|---|---|---|---|"]
    for kind, r in rows.items():
        lines.append(f"| {kind} | {r['accuracy']:.1%} | {r['transfer_top1']:.1%} | {r['nn_top1']:.1%} | "
                     f"{r['chance_top1']:.1%} | {r['primary_floor_top1']:.1%} |")
    (out / "demo.md").write_text("\n".join(lines) + "\n")
