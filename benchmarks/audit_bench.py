"""Time ``privsplit.audit.audit`` per profile on one bundle (the acceptance goal: fast <= 2 min, full
<= 30 min per bundle on the 2-core machine). A benchmark, not a test: results go to docs/ with the
command beside them.

    nice -n 10 python benchmarks/audit_bench.py runs/lfw-gender/bundles/advanced-conv5_3 \\
        [--profiles fast,full] [--seeds 3] [--threads 2] [--out docs/lfw/audit]

Each profile writes OUT/<bundle>-<profile>/audit.{json,md,png}; a summary table (attack, top-1, time
per attack, total) is printed and written to OUT/bench-<bundle>.md. Data = the bundle's run (its
attack split as targets, its training split as the attacker's other people), loaded once.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

import privsplit.attacks  # noqa: F401  (registers the built-in attacks)
from privsplit.audit import audit, bundle_provenance, plot_rows, write_json, write_markdown
from privsplit.audit.inputs import bundle_run, run_inputs
from privsplit.audit.run import load_target
from privsplit.report.plots import plot_audit


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--profiles", default="fast,full")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("docs/lfw/audit"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    inp = run_inputs(bundle_run(args.bundle))
    emb, _ = load_target(args.bundle)
    load_s = time.perf_counter() - t0
    lines = [f"# audit timing: {args.bundle.name}", "", f"Command: `python {' '.join(sys.argv)}` "
             f"(torch threads {args.threads}; data loading {load_s:.0f} s, not counted below)", "",
             "| profile | attacks | worst case (validation-chosen) | time per attack | total |", "|---|---|---|---|---|"]
    for profile in args.profiles.split(","):
        t = time.perf_counter()
        rep = audit(emb, inp.targets, aux=inp.aux, group=inp.group, sensitive=inp.sensitive, primary=inp.primary,
                    profile=profile, seeds=args.seeds, provenance=bundle_provenance(args.bundle))
        total = time.perf_counter() - t
        out = args.out / f"{args.bundle.name}-{profile}"
        out.mkdir(parents=True, exist_ok=True)
        write_json(rep, out / "audit.json")
        write_markdown(rep, out / "audit.md", command=f"python {' '.join(sys.argv)}")
        plot_audit(plot_rows(rep), out / "audit.png")
        per = ", ".join(f"{a.name} {a.seconds:.0f} s" for a in rep.attacks)
        lines.append(f"| {profile} | {len(rep.attacks)} | {rep.worst.attack} {rep.worst.top1} | {per} | {total:.0f} s |")
        print(lines[-1], flush=True)
    (args.out / f"bench-{args.bundle.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
