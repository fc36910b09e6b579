"""``privsplit attack``: run an identity attack or the rank metric against a client/server bundle pair."""
from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from privsplit.attacks.data import attack_data, identity_attacks
from privsplit.attacks.transfer import TransferConfig
from privsplit.cli.common import console, friendly_errors
from privsplit.defenses.bundles import embedding_from_bundles, load_client_bundle, load_server_bundle
from privsplit.metrics.rank import primary_label_ceiling
from privsplit.report.experiments import rank_privacy_of
from privsplit.train.run import attack_group, load_run

KINDS = ("transfer", "nn", "rank", "reconstruction")


def register(app: typer.Typer) -> None:
    app.command("attack")(attack)


@friendly_errors
def attack(
    bundle: Path = typer.Argument(..., help="Bundle folder from `privsplit embed` (holding client/ and server/)."),
    kind: str = typer.Option("transfer", help=" | ".join(KINDS)),
    run: Path = typer.Option(None, help="Run folder with the data and splits (default: the bundle's run)."),
    epochs: int = typer.Option(40, help="Training epochs of the attacker's head (transfer) or decoder (reconstruction)."),
    head: str = typer.Option("analyzer", help="Transfer attack head: analyzer (paper's N2) | mlp"),
    out: Path = typer.Option(None, "--out", "-o", help="Folder for JSON results (default BUNDLE/attacks)."),
    data_root: str = typer.Option(None),
) -> None:
    """Attack what the server receives: identity (transfer, nn), rank privacy, or reconstruction."""
    if kind not in KINDS:
        raise ValueError(f"unknown attack '{kind}'; choose one of {', '.join(KINDS)}")
    client, server = load_client_bundle(bundle / "client"), load_server_bundle(bundle / "server")
    emb = embedding_from_bundles(client, server)
    run = run or Path(client.manifest["info"].get("run", ""))
    art, p = load_run(run, data_root=data_root)
    if not len(p.attack):
        raise ValueError(f"run {run} has no attack identities (identities with enough images)")
    data = attack_data(p.attack, group=attack_group(art))
    primary, out = art.primary, out or bundle / "attacks"
    out.mkdir(parents=True, exist_ok=True)
    table = Table(title=f"{kind} attack on {client.kind} at {client.layer} ({art.manifest['dataset']['label']})")
    if kind in ("transfer", "nn"):
        cfg = TransferConfig(epochs=epochs, head=head) if kind == "transfer" else None
        row = identity_attacks(emb, data, primary=primary, transfer=cfg)
        for col in ("attack", "top-1", "top-5", "chance", "primary-label floor"):
            table.add_column(col)
        chance, floor = f"{row['chance_top1']:.1%}", f"{row['primary_floor_top1']:.1%}"
        table.add_row("1-NN", f"{row['nn_top1']:.1%}", f"{row['nn_top5']:.1%}", chance, floor)
        if cfg is not None:
            lo, hi = row["transfer_top1_ci95"]
            table.add_row("transfer", f"{row['transfer_top1']:.1%} [{lo:.1%}, {hi:.1%}]", f"{row['transfer_top5']:.1%}",
                          chance, floor)
    elif kind == "rank":
        value = rank_privacy_of(emb, data.all, sensitive=art.manifest["sensitive"])
        if value is None:
            raise ValueError("rank privacy needs a noisy embedding (noisy-reduced-simple or advanced)")
        ident = data.all.labels[art.manifest["sensitive"]]
        ceiling = primary_label_ceiling(ident, data.all.labels[primary])
        row = {"rank_privacy": value, "primary_label_ceiling": ceiling, "identities": len(set(ident.tolist()))}
        table.add_column("rank privacy")
        table.add_column("primary-label ceiling")
        table.add_row(f"{value:.3f}", f"{ceiling:.3f}")
    else:
        from privsplit.attacks.reconstruction import ReconConfig, ReconstructionAttack, save_reconstruction_grid

        attack = ReconstructionAttack(emb, config=ReconConfig(epochs=epochs)).fit(p.train)
        res = attack.evaluate(p.attack, column=art.manifest["sensitive"], primary=primary)
        originals, recon = attack.reconstructions(p.attack.subset(range(0, len(p.attack), max(1, len(p.attack) // 8))), 8)
        save_reconstruction_grid(originals, {client.kind: recon}, out / "reconstruction.png")
        row = res.to_dict()
        table.add_column("figure")
        table.add_column("value [95% CI]")
        for name, fig in res.figures.items():
            fmt = (lambda v: f"{v:.3f}") if name in ("ssim", "psnr") else (lambda v: f"{v:.1%}")
            table.add_row(name, f"{fmt(fig.value)} [{fmt(fig.ci95[0])}, {fmt(fig.ci95[1])}]")
    (out / f"{kind}.json").write_text(json.dumps(row, indent=1))
    console.print(table)
    console.print(f"results: {out / (kind + '.json')}")
