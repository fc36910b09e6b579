"""Benchmark of the heavy identity attacks (transfer, reconstruction -> dlib, inversion -> dlib) on a bundle.

The attacker enrols ``--n-enrol`` photos of each target identity of the run's ``attack`` split (seeded
choice) and queries the others; its auxiliary photos of other people are the run's ``train`` split.
Transfer queries every other image; the image attacks (decoder or inversion, then one dlib description
per query) query up to ``--query-per-identity`` images of each identity, to fit the CPU budget. Every
attack is built through ``ATTACKS.build(name, embedding, aux=..., seed=...)`` like the audit does.

Prints a markdown table (top-1 with the identity-bootstrap 95% interval, top-5, chance, primary-label
floor, times) and writes ``--json``. The inversion's CPU time per query is ``image_seconds_per_query``.

Run (from the repository root)::

    PYTHONPATH=src python3 benchmarks/bench_attacks_heavy.py --bundle runs/lfw-gender/bundles/advanced-conv5_3
    PYTHONPATH=src python3 benchmarks/bench_attacks_heavy.py --bundle ... --attacks inversion --query-per-identity 4
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from privsplit.attacks import ATTACKS  # noqa: E402
from privsplit.attacks.decoder import ReconConfig  # noqa: E402
from privsplit.defenses.bundles import embedding_from_bundles, load_client_bundle, load_server_bundle  # noqa: E402
from privsplit.train.run import load_run  # noqa: E402


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def split(identities: torch.Tensor, n_enrol: int, per_identity: int | None, seed: int):
    """(enrol rows, query rows) per identity; identities with <= n_enrol images are left out."""
    gen = torch.Generator().manual_seed(seed)
    enrol, query = [], []
    for c in torch.unique(identities).tolist():
        rows = torch.nonzero(identities == c).flatten()
        if len(rows) <= n_enrol:
            continue
        rows = rows[torch.randperm(len(rows), generator=gen)]
        enrol.append(rows[:n_enrol])
        query.append(rows[n_enrol:] if per_identity is None else rows[n_enrol : n_enrol + per_identity])
    return torch.cat(enrol).sort().values, torch.cat(query).sort().values


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--run", type=Path, default=None, help="run folder (default: the bundle's run)")
    ap.add_argument("--attacks", default="transfer,reconstruction,inversion")
    ap.add_argument("--n-enrol", type=int, default=15)
    ap.add_argument("--query-per-identity", type=int, default=4, help="image attacks only (dlib cost)")
    ap.add_argument("--recon-epochs", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    client, server = load_client_bundle(args.bundle / "client"), load_server_bundle(args.bundle / "server")
    emb = embedding_from_bundles(client, server)
    art, p = load_run(args.run or Path(client.manifest["info"].get("run", "")), progress=False)
    column, primary = art.manifest["sensitive"], art.primary
    rows: list[dict] = []
    for name in args.attacks.split(","):
        cap = None if name == "transfer" else args.query_per_identity
        enrol_rows, query_rows = split(p.attack.labels[column], args.n_enrol, cap, args.seed)
        enrol, query = p.attack.subset(enrol_rows), p.attack.subset(query_rows)
        options = {"config": ReconConfig(epochs=args.recon_epochs)} if name == "reconstruction" else {}
        attack = ATTACKS.build(name, emb, aux=p.train, seed=args.seed, embedding_name=client.kind, **options)
        log(f"{name}: enrol {len(enrol)}, query {len(query)}, aux {len(p.train)}")
        t0 = time.perf_counter()
        attack.fit(enrol, column=column)
        t1 = time.perf_counter()
        res = attack.evaluate(query, column=column, primary=primary)
        t2 = time.perf_counter()
        d = res.details
        row = {"attack": name, "top1": res.figures["top1"].value, "top1_ci95": list(res.figures["top1"].ci95),
               "top5": res.figures["top5"].value, "queries": len(query), "enrol": len(enrol),
               "chance": res.references["chance_top1"], "floor": res.references.get("primary_floor_top1"),
               "fit_s": t1 - t0, "evaluate_s": t2 - t1,
               "choice": d.get("head"), "members": d.get("members"),
               "image_s_per_query": d.get("image_seconds_per_query"),
               "describe_s_per_query": d.get("describe_seconds_per_query"),
               "ssim": res.figures["ssim"].value if "ssim" in res.figures else None,
               "ssim_mean_face": res.references.get("ssim_mean_face"), "details": d}
        rows.append(row)
        log(f"{name}: top-1 {res.figures['top1']} (chance {row['chance']:.1%}, floor {row['floor']:.1%}); "
            f"fit {row['fit_s']:.0f} s, evaluate {row['evaluate_s']:.0f} s")
    print(f"\nBundle `{args.bundle}` ({client.kind} at {client.layer}); {os.cpu_count()} CPUs, {args.threads} thread(s), "
          f"load {os.getloadavg()[0]:.1f}; torch {torch.__version__}; {platform.python_version()}\n")
    print("| attack | queries | top-1 [95% CI] | top-5 | chance | primary floor | chosen | fit | evaluate | per query |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        per = "" if r["image_s_per_query"] is None else (f"{r['image_s_per_query']:.2f} s image + "
                                                         f"{r['describe_s_per_query']:.2f} s dlib")
        lo, hi = r["top1_ci95"]
        print(f"| {r['attack']} | {r['queries']} | {r['top1']:.1%} [{lo:.1%}, {hi:.1%}] | {r['top5']:.1%} | "
              f"{r['chance']:.1%} | {r['floor']:.1%} | {r['choice'] or ''} | {r['fit_s']:.0f} s | {r['evaluate_s']:.0f} s | "
              f"{per} |")
    if args.json:
        args.json.write_text(json.dumps({"bundle": str(args.bundle), "rows": rows}, indent=1, default=str))


if __name__ == "__main__":
    main()
