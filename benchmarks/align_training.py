"""LFW gender: the alignment-trained model vs the centre-crop model, on the same held-out images.

The two runs have slightly different identity-disjoint splits (the aligned run skips the photos where dlib
finds no face, which changes the split's draw), so each run's own test accuracy is over a different set.
This script compares them on the images in BOTH test splits (paired: same photos, each model with its own
preprocessing), with 95% intervals from a bootstrap over people (cluster_bootstrap_ci) for each accuracy and
for the paired difference.

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/align_training.py --centre runs/lfw-gender \
        --aligned /tmp/device-runs/lfw-align --out docs/align_training.json
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from privsplit.metrics.intervals import cluster_bootstrap_ci
from privsplit.train.loops import predict
from privsplit.train.run import load_run


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--centre", type=Path, required=True)
    ap.add_argument("--aligned", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
    runs = {name: load_run(folder) for name, folder in (("centre_crop", args.centre), ("aligned", args.aligned))}
    tests = {name: p.test for name, (_, p) in runs.items()}
    common = sorted(set(tests["centre_crop"].manifest.paths) & set(tests["aligned"].manifest.paths))
    out: dict = {"common_images": len(common)}
    hits = {}
    for name, (art, _) in runs.items():
        data = tests[name]
        index = {p: i for i, p in enumerate(data.manifest.paths)}
        sub = data.subset([index[p] for p in common])
        with torch.inference_mode():
            pred = predict(art.model, sub.inputs, len(sub)).argmax(1)
        y = sub.labels[art.primary]
        hit = (pred == y).double()
        people = sub.manifest.column("identity")
        ids = torch.tensor([sorted(set(people)).index(v) for v in people])
        per_class = {c: float(hit[y == k].mean()) for k, c in enumerate(art.classes)}
        out[name] = {"own_test": art.manifest["metrics"]["test"], "accuracy": float(hit.mean()),
                     "accuracy_ci95": cluster_bootstrap_ci(hit, ids), "balanced_accuracy": float(np.mean(list(per_class.values()))),
                     "per_class": per_class, "people": int(len(set(sub.manifest.column("identity"))))}
        hits[name] = hit
    diff = hits["aligned"] - hits["centre_crop"]
    out["aligned_minus_centre"] = {"accuracy": float(diff.mean()), "ci95": cluster_bootstrap_ci(diff, ids)}
    args.out.write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
