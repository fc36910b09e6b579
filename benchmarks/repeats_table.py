"""Repeated queries (issue 10): the same photo sent k times (fresh device noise each send, as the
client does), features averaged, against one attack -- the audit's ``repeats=k`` -- with a paired test
of k = 16 vs k = 1 on the same queries.

    OMP_NUM_THREADS=1 nice -n 5 python benchmarks/repeats_table.py \\
        --bundles runs/lfw-gender/bundles/advanced-conv5_3 runs/lfw-gender/bundles/advanced-conv5_3-s1 \\
        --attack likelihood --repeats 1 4 16 --seeds 3 --out reports/repeats

For each bundle, ``privsplit.audit.audit(bundle, run data, attacks=[ATTACK], seeds=S, repeats=k)`` for
each k with one shared feature cache, so clean features and the aux-only models (the metric network)
are computed once per seed and every k is scored on the same enrolment draws and queries (the paired
test needs that). Writes OUT/<bundle>-k<k>/audit.{json,md} and OUT/repeats_table.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

import privsplit.attacks  # noqa: F401  (registers the built-in attacks)
from privsplit.audit import audit, bundle_provenance, compare_audits, write_json, write_markdown
from privsplit.audit.cache import FeatureCache
from privsplit.audit.inputs import bundle_run, run_inputs


def _fig(f) -> str:
    return f"{f.value:.1%} [{f.ci95[0]:.1%}, {f.ci95[1]:.1%}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundles", type=Path, nargs="+", required=True)
    ap.add_argument("--attack", default="likelihood")
    ap.add_argument("--repeats", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
    command = "python " + " ".join(sys.argv)
    inp = run_inputs(bundle_run(args.bundles[0]))
    rows, lines = [], [f"Command: `{command}`", "", f"| bundle | attack | k | top-1 [95% CI] | seeds' top-1 | top-5 | seconds |",
                       "|---|---|---|---|---|---|---|"]
    tests = []
    for bundle in args.bundles:
        cache, reps = FeatureCache(), {}
        for k in args.repeats:
            t0 = time.perf_counter()
            rep = audit(bundle, inp.targets, aux=inp.aux, group=inp.group, sensitive=inp.sensitive, primary=inp.primary,
                        attacks=[args.attack], seeds=args.seeds, repeats=k, cache=cache,
                        provenance=bundle_provenance(bundle), progress=False)
            sec = time.perf_counter() - t0
            out = args.out / f"{bundle.name}-k{k}"
            out.mkdir(parents=True, exist_ok=True)
            write_json(rep, out / "audit.json")
            write_markdown(rep, out / "audit.md", command=command)
            s = rep.attacks[0]
            reps[k] = rep
            rows.append({"bundle": bundle.name, "attack": s.name, "k": k, "top1": s.top1.value, "ci95": list(s.top1.ci95),
                         "per_seed": s.per_seed_top1, "top5": None if s.top5 is None else s.top5.value, "seconds": sec,
                         "chance": rep.floors.chance_top1, "primary_floor": rep.floors.primary_top1})
            lines.append(f"| {bundle.name} | {s.name} | {k} | {_fig(s.top1)} | "
                         f"{', '.join(f'{v:.1%}' for v in s.per_seed_top1)} | {'' if s.top5 is None else f'{s.top5.value:.1%}'} | {sec:.0f} |")
            print(lines[-1], flush=True)
        hi, lo = max(args.repeats), min(args.repeats)
        test = compare_audits(reps[hi], reps[lo], attack=args.attack)
        tests.append(f"* {bundle.name}, {args.attack}: k={hi} minus k={lo}: {test}")
        print(tests[-1], flush=True)
    f = reps[min(args.repeats)].floors
    lines += ["", f"Chance {f.chance_top1:.1%}, primary-label floor {f.primary_top1:.1%} (top-1).", "",
              "Paired bootstrap over identities (same enrolment draws and queries):", "", *tests]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "repeats_table.json").write_text(json.dumps({"rows": rows, "tests": tests, "command": command}, indent=1))
    (args.out / "repeats_table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
