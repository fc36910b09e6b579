"""Enrolment rank privacy beside the paper's rank privacy, for the Fig. 10a settings (issue 10).

    OMP_NUM_THREADS=1 nice -n 5 python benchmarks/rank_side_by_side.py --run runs/lfw-gender \\
        --bundles runs/lfw-gender/bundles/advanced-conv5_3 reports/bundles/noisy-reduced-simple-conv5_3 \\
        --sigmas 0.25 0.5 1 2 --seeds 0 1 2 --out docs/audit

Each bundle's layers (extractor, PCA to 4 dims, per-feature std) are kept and only sigma changes
(``Embedding.with_noise``): the PCA basis and the std do not depend on sigma, so this is the bundle
``privsplit embed --noise S`` would write. Per seed (enrolment draw + noise):

* enrolment form (:func:`privsplit.attacks.data.enrolment_rank_privacy_of`): references = clean
  features of the 15 enrolment photos per target (the attacker's client copy), queries = received
  (noisy) features of held-out photos, balanced per identity, identity-bootstrap 95% interval;
* paper form (:func:`privsplit.report.experiments.rank_privacy_of`): every target image ranked against
  the clean features of all target images, its own included; 0-based ranks (the paper's 1-based value
  is this + 1/T, T = 62).

0 = the attacker always ranks the true identity first; ~0.5 = no information. Writes
``OUT/rank_side_by_side.{json,md}``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from privsplit.attacks.data import attack_data, enrolment_rank_privacy_of
from privsplit.audit.cache import FeatureCache, with_cache
from privsplit.defenses.bundles import embedding_from_bundles, load_client_bundle, load_server_bundle
from privsplit.defenses.noise import GaussianNoise
from privsplit.report.experiments import rank_privacy_of
from privsplit.train.run import attack_group, load_run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--bundles", type=Path, nargs="+", required=True)
    ap.add_argument("--sigmas", type=float, nargs="+", default=[0.25, 0.5, 1.0, 2.0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
    art, p = load_run(args.run, progress=False)
    group = attack_group(art)
    rows = []
    for bundle in args.bundles:
        base = embedding_from_bundles(load_client_bundle(bundle / "client"), load_server_bundle(bundle / "server"))
        cache = FeatureCache()  # clean features computed once per bundle, shared by every sigma and seed
        for sigma in args.sigmas:
            t0 = time.perf_counter()
            row = {"bundle": bundle.name, "kind": base.kind, "sigma": sigma, "seeds": []}
            for seed in args.seeds:
                noise = GaussianNoise(sigma=sigma, scale="std", std=base.noise.std, deterministic=True, seed=seed)
                emb = with_cache(base.with_noise(noise), cache)
                data = attack_data(p.attack, group=group, seed=seed)
                enrol = enrolment_rank_privacy_of(emb, data, seed=seed)
                paper = rank_privacy_of(emb, data.all, seed=seed)
                row["seeds"].append({"seed": seed, "enrolment": enrol.privacy, "enrolment_ci95": list(enrol.ci95),
                                     "enrolment_queries": enrol.num_points, "paper": paper,
                                     "classes": enrol.num_classes})
            row["seconds"] = time.perf_counter() - t0
            rows.append(row)
            s0 = row["seeds"][0]
            print(f"{bundle.name} sigma={sigma}: enrolment {s0['enrolment']:.3f} {s0['enrolment_ci95']} "
                  f"paper {s0['paper']:.3f} ({row['seconds']:.0f} s)", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "rank_side_by_side.json").write_text(json.dumps(rows, indent=1))
    (args.out / "rank_side_by_side.md").write_text(markdown(rows, "python " + " ".join(sys.argv)))
    print((args.out / "rank_side_by_side.md").read_text())


def markdown(rows: list[dict], command: str) -> str:
    lines = [f"Command: `{command}`", "",
             "| bundle | sigma | enrolment rank privacy, seed 0 [95% CI] | enrolment, mean over seeds (min-max) "
             "| paper form, mean over seeds (min-max) | paper 1-based (+1/T) |", "|---|---|---|---|---|---|"]
    for r in rows:
        s = r["seeds"]
        e = [x["enrolment"] for x in s]
        pp = [x["paper"] for x in s]
        t = s[0]["classes"]
        lines.append(f"| {r['bundle']} | {r['sigma']:g} | {s[0]['enrolment']:.3f} [{s[0]['enrolment_ci95'][0]:.3f}, "
                     f"{s[0]['enrolment_ci95'][1]:.3f}] | {sum(e) / len(e):.3f} ({min(e):.3f}-{max(e):.3f}) | "
                     f"{sum(pp) / len(pp):.3f} ({min(pp):.3f}-{max(pp):.3f}) | {sum(pp) / len(pp) + 1 / t:.3f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
