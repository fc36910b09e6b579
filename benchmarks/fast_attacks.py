"""The fast attack profile (1-NN, likelihood, metric) on real bundles, with repeated queries and rank privacy.

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/fast_attacks.py --run runs/lfw-gender \
        --bundles runs/lfw-gender/bundles/simple-conv5_3 runs/lfw-gender/bundles/advanced-conv5_3 \
        runs/lfw-gender/bundles/advanced-conv5_3-s1 --out docs/lfw

Protocol (issue 10): 15 enrolment photos per target, every other photo of the targets queried, the
primary training split as the metric attacker's auxiliary people, top-1 with identity-bootstrap 95%
intervals; repeated queries k = 1, 4, 16 for the likelihood attack; enrolment rank privacy (clean
enrolment references, noisy held-out queries) beside the paper's form (every image its own reference).
Writes ``OUT/fast_attacks.{json,md}``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from privsplit.attacks import ATTACKS
from privsplit.attacks.data import attack_data, enrolment_rank_privacy_of
from privsplit.defenses.bundles import embedding_from_bundles, load_client_bundle, load_server_bundle
from privsplit.metrics.intervals import paired_bootstrap
from privsplit.report.experiments import rank_privacy_of
from privsplit.train.run import attack_group, load_run


def _fig(f) -> str:
    return f"{f.value:.1%} [{f.ci95[0]:.1%}, {f.ci95[1]:.1%}]"


def attack_bundle(bundle: Path, data, primary: str, *, epochs: int, repeats: list[int], seed: int) -> dict:
    emb = embedding_from_bundles(load_client_bundle(bundle / "client"), load_server_bundle(bundle / "server"))
    row: dict = {"bundle": bundle.name, "kind": emb.kind, "attacks": {}, "seconds": {}, "vs_1nn": {}}
    nn_hits = None
    for name in ("1-nn", "likelihood", "metric"):
        t0 = time.perf_counter()
        opts = {"epochs": epochs} if name == "metric" else {}
        attack = ATTACKS.build(name, emb, aux=data.aux, seed=seed, embedding_name=bundle.name, **opts).fit(data.enrol)
        for k in repeats if name == "likelihood" else [1]:
            res = attack.evaluate(data.query, primary=primary, repeats=k)
            row["attacks"][f"{name}@k={k}"] = {n: {"value": f.value, "ci95": list(f.ci95)} for n, f in res.figures.items()}
            row["references"] = res.references
            if nn_hits is None:
                nn_hits = res.hits["top1"]
            else:  # same query photos, so a paired bootstrap over identities
                test = paired_bootstrap(res.hits["top1"], nn_hits, res.groups, seed=seed)
                row["vs_1nn"][f"{name}@k={k}"] = str(test)
                print(f"  {name} k={k} minus 1-NN: {test}", flush=True)
            print(f"{bundle.name} {name} k={k}: " + ", ".join(f"{n} {_fig(f) if f.percent else f}"
                                                               for n, f in res.figures.items()), flush=True)
        row["seconds"][name] = time.perf_counter() - t0
    enrol = enrolment_rank_privacy_of(emb, data, seed=seed)
    if enrol is not None:
        row["rank_privacy_enrolment"] = {"value": enrol.privacy, "ci95": list(enrol.ci95), "queries": enrol.num_points}
        row["rank_privacy_paper"] = rank_privacy_of(emb, data.all, seed=seed)
        print(f"{bundle.name} rank privacy: enrolment {enrol.privacy:.3f} [{enrol.ci95[0]:.3f}, {enrol.ci95[1]:.3f}], "
              f"paper form {row['rank_privacy_paper']:.3f}", flush=True)
    return row


def markdown(rows: list[dict], command: str, data) -> str:
    names = sorted({a for r in rows for a in r["attacks"]}, key=lambda a: (a.split("@")[0], int(a.split("=")[1])))
    lines = [f"# Fast attack profile on LFW bundles\n\n```\n{command}\n```\n",
             f"{len(data.enrol)} enrolment / {len(data.query)} query photos of {len(set(data.enrol.labels['identity'].tolist()))}"
             f" targets; aux (metric attacker) {len(data.aux)} photos of other people. Top-1 with identity-bootstrap 95%"
             " intervals.\n", "| attack | " + " | ".join(r["bundle"] for r in rows) + " |",
             "|---" * (len(rows) + 1) + "|"]
    for a in names:
        cells = [(lambda f: f"{f['value']:.1%} [{f['ci95'][0]:.1%}, {f['ci95'][1]:.1%}]")(r["attacks"][a]["top1"])
                 if a in r["attacks"] else "" for r in rows]
        lines.append(f"| {a} top-1 | " + " | ".join(cells) + " |")
    for fig in ("verification_auc", "tar_at_far"):
        cells = [(lambda f: f"{f['value']:.3f} [{f['ci95'][0]:.3f}, {f['ci95'][1]:.3f}]")(r["attacks"]["metric@k=1"][fig])
                 for r in rows]
        lines.append(f"| metric {fig} | " + " | ".join(cells) + " |")
    refs = rows[0]["references"]
    lines.append(f"| chance / primary floor | {refs['chance_top1']:.1%} / {refs.get('primary_floor_top1', 0):.1%} |"
                 + " |" * (len(rows) - 1))
    for key in ("rank_privacy_enrolment", "rank_privacy_paper"):
        cells = []
        for r in rows:
            v = r.get(key)
            cells.append("" if v is None else f"{v['value']:.3f} [{v['ci95'][0]:.3f}, {v['ci95'][1]:.3f}]"
                         if isinstance(v, dict) else f"{v:.3f}")
        lines.append(f"| {key.replace('_', ' ')} | " + " | ".join(cells) + " |")
    lines.append("\nPaired bootstrap over identities, attack minus 1-NN (top-1, same query photos):\n")
    for r in rows:
        lines.extend(f"* {r['bundle']} {a}: {t}" for a, t in r["vs_1nn"].items())
    lines.append("\nSeconds per attack (fit + evaluate): " + "; ".join(
        f"{r['bundle']}: " + ", ".join(f"{k} {v:.0f}" for k, v in r["seconds"].items()) for r in rows))
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--bundles", type=Path, nargs="+", required=True)
    ap.add_argument("--epochs", type=int, default=40, help="metric attacker's training epochs")
    ap.add_argument("--repeats", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
    art, p = load_run(args.run, progress=False)
    data = attack_data(p.attack, aux=p.train, group=attack_group(art), seed=args.seed)
    rows = [attack_bundle(b, data, art.primary, epochs=args.epochs, repeats=args.repeats, seed=args.seed)
            for b in args.bundles]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fast_attacks.json").write_text(json.dumps(rows, indent=1))
    command = "python " + " ".join(sys.argv)
    (args.out / "fast_attacks.md").write_text(markdown(rows, command, data))
    print((args.out / "fast_attacks.md").read_text())


if __name__ == "__main__":
    main()
