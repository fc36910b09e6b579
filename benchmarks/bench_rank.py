"""Benchmark of the rank privacy metric (privsplit.metrics.rank).

(a) LFW-sized problem: N = 13,233 points, T = 5,749 classes, d = 64, class-level, for a few chunk
    sizes; wall time and peak RSS, each run in a fresh subprocess (``resource.getrusage``).
(b) N = 3,000: naive reference vs fast implementation, time and speed ratio, ranks compared.

Class structure: the ``identity`` column of ``$PRIVSPLIT_DATA/lfw_gender/labels.csv`` (default
``../shared/data``) when present, else synthetic LFW-like class sizes. Features are synthetic
(class centre + within-class scatter); only the class structure comes from LFW.

Run (from the repository root)::

    PYTHONPATH=src python3 benchmarks/bench_rank.py            # prints the table, updates docs/rank_metric.md
    PYTHONPATH=src python3 benchmarks/bench_rank.py --no-docs  # print only
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "rank_metric.md"
START, END = "<!-- bench:start -->", "<!-- bench:end -->"
D = 64
SIGMA = 4.0  # large enough that the synthetic problem is not trivially identifiable (privacy > 0)


def _labels_csv() -> Path | None:
    env = os.environ.get("PRIVSPLIT_DATA")
    cands = [Path(env) / "lfw_gender" / "labels.csv"] if env else []
    cands += [ROOT.parent / "shared" / "data" / "lfw_gender" / "labels.csv",
              Path.cwd().parent / "shared" / "data" / "lfw_gender" / "labels.csv"]
    return next((p for p in cands if p.exists()), None)


def class_structure(n: int | None = None) -> tuple[torch.Tensor, list[str] | None, str]:
    """Per-point class codes (and gender when LFW is present), in labels.csv order."""
    path = _labels_csv()
    if path is not None:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
        if n is not None:
            rows = rows[:n]
        names = sorted({r["identity"] for r in rows})
        code = {name: i for i, name in enumerate(names)}
        return (torch.tensor([code[r["identity"]] for r in rows]), [r["gender"] or "?" for r in rows],
                f"LFW identities ({path})")
    # synthetic LFW-like: a few large classes, most of size 1-2
    g = torch.Generator().manual_seed(0)
    n = n or 13_233
    sizes = [530, 236, 144, 121, 109, 77, 71, 60, 55, 53]
    while sum(sizes) < n:
        u = float(torch.rand((), generator=g))
        sizes.append(1 if u < 0.7 else 2 if u < 0.85 else int(torch.randint(3, 30, (), generator=g)))
    codes = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))[:n]
    return codes, None, "synthetic LFW-like class sizes"


def features_for(codes: torch.Tensor, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = int(codes.max()) + 1
    centres = torch.randn(t, D, generator=g, dtype=torch.float64)
    return centres[codes] + 0.7 * torch.randn(len(codes), D, generator=g, dtype=torch.float64)


def _rss_mib() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def child_large(chunk: int, threads: int) -> dict:
    from privsplit.metrics.rank import rank_privacy

    torch.set_num_threads(threads)
    codes, _, source = class_structure()
    feats = features_for(codes)
    rss_before = _rss_mib()
    t0 = time.perf_counter()
    res = rank_privacy(feats, codes, sigma=SIGMA, generator=torch.Generator().manual_seed(1), chunk_size=chunk)
    wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {"threads": threads, "chunk": chunk, "n": len(codes), "t": res.num_classes, "wall_s": wall, "rss_before_mib": rss_before,
            "peak_rss_mib": peak, "delta_mib": peak - rss_before, "privacy": res.privacy,
            "ci95": res.ci95, "source": source}


def child_compare(n: int, threads: int) -> dict:
    from privsplit.metrics.rank import rank_privacy, rank_privacy_naive

    torch.set_num_threads(threads)
    codes, _, source = class_structure(n)
    feats = features_for(codes)
    fast_times = []
    for _ in range(3):
        t0 = time.perf_counter()
        fast = rank_privacy(feats, codes, sigma=SIGMA, generator=torch.Generator().manual_seed(1))
        fast_times.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    naive = rank_privacy_naive(feats, codes, sigma=SIGMA, generator=torch.Generator().manual_seed(1))
    naive_s = time.perf_counter() - t0
    fast_s = min(fast_times)
    return {"threads": threads, "n": n, "t": fast.num_classes, "fast_s": fast_s, "fast_all_s": fast_times, "naive_s": naive_s,
            "ratio": naive_s / fast_s, "ranks_equal": bool(torch.equal(fast.ranks, naive.ranks)),
            "n_mismatch": int((fast.ranks != naive.ranks).sum()), "privacy": fast.privacy, "source": source}


def _run_child(*args: str) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, __file__, *args], check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--child-large", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--child-compare", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--child-threads", type=int, default=2, help=argparse.SUPPRESS)
    ap.add_argument("--threads", default="2,1", help="torch.set_num_threads values to run (first = headline)")
    ap.add_argument("--chunks", default="256,1024,4096", help="chunk sizes for part (a)")
    ap.add_argument("--n-compare", type=int, default=3000)
    ap.add_argument("--no-docs", action="store_true", help="do not update docs/rank_metric.md")
    args = ap.parse_args()
    if args.child_large is not None:
        print(json.dumps(child_large(args.child_large, args.child_threads)))
        return
    if args.child_compare is not None:
        print(json.dumps(child_compare(args.child_compare, args.child_threads)))
        return

    from privsplit.metrics.rank import primary_label_ceiling

    threads = [int(x) for x in args.threads.split(",")]
    load0 = os.getloadavg()
    large = [_run_child("--child-large", c, "--child-threads", str(th)) for th in threads for c in args.chunks.split(",")]
    cmps = [_run_child("--child-compare", str(args.n_compare), "--child-threads", str(th)) for th in threads]
    load1 = os.getloadavg()
    cmp_ = cmps[0]
    codes, gender, source = class_structure()

    lines = [
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores visible (shared with other jobs: load average "
        f"{load0[0]:.1f} at start, {load1[0]:.1f} at end), torch {torch.__version__}, float64. Class structure: "
        f"{source.split(' (')[0]}; features synthetic (class centre ~ N(0, I), within-class scatter 0.7), "
        f"d = {D}, sigma = {SIGMA} (isotropic), class level. Each row ran in a fresh subprocess; "
        "`threads` is `torch.set_num_threads`.",
        "",
        "(a) N = 13,233, T = 5,749 (goal: <= 60 s, <= 2 GB)",
        "",
        "| threads | chunk_size | N | T | wall time (s) | peak RSS (MiB) | RSS delta during call (MiB) | privacy [95% CI] |",
        "|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in large:
        lo, hi = r["ci95"]
        lines.append(f"| {r['threads']} | {r['chunk']} | {r['n']:,} | {r['t']:,} | {r['wall_s']:.2f} | "
                     f"{r['peak_rss_mib']:.0f} | {r['delta_mib']:.0f} | {r['privacy']:.4f} [{lo:.4f}, {hi:.4f}] |")
    lines += [
        "",
        f"(b) naive reference vs fast, N = {cmp_['n']:,} (first {cmp_['n']:,} rows), T = {cmp_['t']:,} "
        "(goal: ratio >= 50x)",
        "",
        "| threads | N | T | naive (s) | fast (s, best of 3) | fast, all 3 runs (s) | speed ratio | ranks identical |",
        "|---:|---:|---:|---:|---:|---|---:|---|",
    ]
    for c in cmps:
        runs = ", ".join(f"{x:.3f}" for x in c["fast_all_s"])
        same = "yes" if c["ranks_equal"] else f"NO ({c['n_mismatch']} differ)"
        lines.append(f"| {c['threads']} | {c['n']:,} | {c['t']:,} | {c['naive_s']:.2f} | {c['fast_s']:.3f} | {runs} | "
                     f"{c['ratio']:.0f}x | {same} |")
    if gender is not None:
        ceil = primary_label_ceiling(codes, gender)
        ceil_log = primary_label_ceiling(codes, gender, log=True)
        lines += ["", f"LFW gender ceiling (`primary_label_ceiling`, unlabelled image as its own group): "
                      f"{ceil:.4f} (log-rank variant {ceil_log:.4f})."]
    table = "\n".join(lines)
    print(table)
    if not args.no_docs:
        cmd = "python benchmarks/bench_rank.py"
        block = f"{START}\nCommand: `{cmd}`\n\n{table}\n{END}"
        text = DOC.read_text() if DOC.exists() else f"# Rank privacy metric\n\n## Benchmark\n\n{START}\n{END}\n"
        if START in text and END in text:
            pre, rest = text.split(START, 1)
            post = rest.split(END, 1)[1]
            text = pre + block + post
        else:
            text = text.rstrip("\n") + "\n\n## Benchmark\n\n" + block + "\n"
        DOC.write_text(text)
        print(f"\nwrote {DOC}")


if __name__ == "__main__":
    main()
