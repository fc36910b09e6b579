"""Table I/II and Fig. 9/12a analogues: primary accuracy and identity attacks per embedding and layer.

Run by hand (tens of minutes on 2 cores), e.g.:

    python benchmarks/paper_embeddings.py --run runs/lfw-gender --layers conv5_1 conv5_2 conv5_3 --out docs/lfw
    python benchmarks/paper_embeddings.py --run runs/ckplus-expr --layers conv5 --out docs/ckplus

Writes ``OUT/embeddings.json``, ``OUT/embeddings.md`` (tables) and ``OUT/fig_attack.png``.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from privsplit.attacks.data import attack_data
from privsplit.attacks.transfer import TransferConfig
from privsplit.defenses.build import SiameseConfig
from privsplit.report.experiments import embedding_table
from privsplit.report.plots import plot_attack_bars
from privsplit.train.loops import TrainConfig
from privsplit.train.run import load_run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--layers", nargs="+", default=["conv5_1", "conv5_2", "conv5_3"])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--siamese-epochs", type=int, default=2)
    ap.add_argument("--attack-epochs", type=int, default=40)
    ap.add_argument("--per-identity", type=int, default=20)
    ap.add_argument("--n-train", type=int, default=15)
    ap.add_argument("--no-transfer", action="store_true", help="only the 1-NN attack (fast)")
    ap.add_argument("--head", default="auto", help="transfer-attack head: auto | analyzer | conv | mlp")
    ap.add_argument("--group", default=None, help="column grouping near-duplicates (CK+: sequence)")
    args = ap.parse_args()
    torch.manual_seed(0)
    args.out.mkdir(parents=True, exist_ok=True)
    art, p = load_run(args.run)
    data = attack_data(p.attack, per_identity=args.per_identity, n_enrol=args.n_train, group=args.group)
    transfer = None if args.no_transfer else TransferConfig(epochs=args.attack_epochs, head=args.head)
    siamese = SiameseConfig(train=TrainConfig(epochs=args.siamese_epochs, lr=5e-4, warmup_fraction=0.0))
    t0 = time.perf_counter()

    def show(row: dict) -> None:
        print(json.dumps({k: v for k, v in row.items() if not isinstance(v, list)}), flush=True)

    rows = embedding_table(args.run, art, p, layers=args.layers, data=data, siamese=siamese, transfer=transfer,
                           on_row=show)
    (args.out / "embeddings.json").write_text(json.dumps(rows, indent=1))
    metric = "nn_top1" if transfer is None else "transfer_top1"
    label = art.manifest["dataset"]["label"]
    plot_attack_bars(rows, args.out / "fig_attack.png", metric=metric,
                     title=f"Identity attack on {label} ({metric.replace('_', ' ')})")
    lines = [f"# Embeddings on {label}: primary accuracy and identity attacks", "",
             f"Command: `python benchmarks/paper_embeddings.py --run {args.run} --layers {' '.join(args.layers)} "
             f"--out {args.out} --siamese-epochs {args.siamese_epochs} --per-identity {args.per_identity} "
             f"--n-train {args.n_train} --head {args.head}{' --group ' + args.group if args.group else ''}`{' --no-transfer' if transfer is None else ''} "
             f"({time.perf_counter() - t0:.0f} s on 2 shared cores)", "",
             f"Primary task `{art.primary}`, evaluated on held-out identities ({len(p.test)} images). "
             f"Attacks: {data.train.images.shape[0]} attacker images / {data.test.images.shape[0]} test images of "
             f"{rows[0]['identities']} identities; chance {rows[0]['chance_top1']:.1%}, primary-label floor "
             f"{rows[0].get('primary_floor_top1', float('nan')):.1%}.", "",
             "| layer | embedding | dim | accuracy | balanced acc. | transfer top-1 | transfer top-5 | 1-NN top-1 |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        dim = r["dim"] or "-"
        tr1 = f"{r['transfer_top1']:.1%}" if "transfer_top1" in r else "-"
        tr5 = f"{r['transfer_top5']:.1%}" if "transfer_top5" in r else "-"
        lines.append(f"| {r['layer']} | {r['embedding']} | {dim} | {r['accuracy']:.2%} | {r['balanced_accuracy']:.2%} "
                     f"| {tr1} | {tr5} | {r['nn_top1']:.1%} |")
    lines += ["", "![identity attack](fig_attack.png)", ""]
    (args.out / "embeddings.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
