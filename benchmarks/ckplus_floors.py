"""CK+'s identity floors: chance, the expression (primary-label) floor and the expression-matched floor.

Every (subject, expression) pair of CK+ has exactly one sequence, and the attacker's enrolment and query
images never share a sequence (near-identical frames), so a query's expression is never among its own
subject's enrolment expressions. An attacker who knows the query's expression (the service outputs it)
and this rule guesses among the subjects *lacking* that expression in their enrolment: the
expression-matched floor (``privsplit.audit.floors.excluded_pair_floor``). No image is decoded.

    python benchmarks/ckplus_floors.py [--draws 20] [--per-identity 12] [--n-enrol 9]
"""
from __future__ import annotations

import argparse
from types import SimpleNamespace

import numpy as np
import torch

from privsplit.audit.floors import floors_of
from privsplit.data.loaders import load_manifest
from privsplit.data.splits import identity_disjoint_split, per_identity_split
from privsplit.train.run import DATASET_DEFAULTS


def _labels(manifest, rows, columns):
    out = {}
    for col in columns:
        values = [manifest.columns[col][i] for i in rows]
        lookup = {v: k for k, v in enumerate(sorted(set(manifest.columns[col])))}
        out[col] = torch.tensor([lookup[v] for v in values])
    return SimpleNamespace(labels=out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--draws", type=int, default=20)
    ap.add_argument("--per-identity", type=int, default=12)
    ap.add_argument("--n-enrol", type=int, default=9)
    ap.add_argument("--seed", type=int, default=0, help="the run's split seed (privsplit train default 0)")
    args = ap.parse_args()
    m = load_manifest("ckplus")
    d = DATASET_DEFAULTS["ckplus"]
    split = identity_disjoint_split(m.column("identity"), attack_min_images=d["attack_min_images"],
                                    attack_count=d["attack_count"], test_fraction=0.15, seed=args.seed)
    attack = m.subset(split.attack)
    rows = []
    for draw in range(args.draws):
        tr, te = per_identity_split(attack.column("identity"), per_identity=args.per_identity, n_train=args.n_enrol,
                                    seed=draw, groups=attack.column("sequence"))
        enrol = _labels(attack, tr, ("identity", "expression"))
        query = _labels(attack, te, ("identity", "expression"))
        rows.append(floors_of(enrol, query, sensitive="identity", primary="expression", structure=True))
    f = {k: float(np.mean([getattr(r, k) for r in rows])) for k in ("chance_top1", "primary_top1", "structure_top1",
                                                                      "chance_top5", "primary_top5", "structure_top5")}
    n = len(set(attack.column("identity")))
    print(f"CK+ attack split: {n} subjects, {len(attack)} images; enrol {args.n_enrol}, query "
          f"{args.per_identity - args.n_enrol}+ per subject, never sharing a sequence; mean over {args.draws} draws")
    print("| floor | top-1 | top-5 |\n|---|---|---|")
    print(f"| chance (1/{n}) | {f['chance_top1']:.1%} | {f['chance_top5']:.1%} |")
    print(f"| expression (primary-label) floor | {f['primary_top1']:.1%} | {f['primary_top5']:.1%} |")
    print(f"| expression-matched floor | {f['structure_top1']:.1%} | {f['structure_top5']:.1%} |")


if __name__ == "__main__":
    main()
