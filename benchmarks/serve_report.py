"""The serving benchmark's report (benchmarks/bench_serve.py): medians over interleaved runs, the table,
and issue 14's verdicts with the per-run pairs that show how reliable a median's verdict is.

Pure functions of the measured rows (no servers, no torch), so tests/test_bench_serve.py checks them directly.
"""
from __future__ import annotations

import statistics


def median_rows(runs: list[dict[str, list[dict]]]) -> dict[str, list[dict]]:
    """Per (server, level), the median over runs of every measured figure; errors summed, the load
    average's range over the runs kept, and each run's req/s and p99 listed (the runs are interleaved, so
    run k of privsplit and run k of Triton form a pair)."""
    out: dict[str, list[dict]] = {}
    for label in runs[0]:
        out[label] = []
        for i, first in enumerate(runs[0][label]):
            rows = [run[label][i] for run in runs]
            row = {k: statistics.median(r[k] for r in rows) for k in first
                   if k not in ("concurrency", "errors", "load_before", "load_after")}
            row.update(concurrency=first["concurrency"], errors=sum(r["errors"] for r in rows),
                       load_min=min(min(r["load_before"], r["load_after"]) for r in rows),
                       load_max=max(max(r["load_before"], r["load_after"]) for r in rows),
                       p99_runs=[r["p99_ms"] for r in rows], rps_runs=[r["rps"] for r in rows])
            out[label].append(row)
    return out


def render(args, raw: dict[int, float], serve_rows: dict[str, list], wire: list, jpeg: dict | None,
           env_line: str) -> str:
    lines = [f"Command: `{args.command}`", "", env_line, "",
             f"**(a) Throughput**, one image per request, binary tensors, keep-alive, loopback; every figure the "
             f"median of {args.runs} run(s) (p99 of each run in brackets); load = the 1-min load average's range "
             f"over those runs; raw = the analyzer in process at batch = concurrency (images/s); ratio = served "
             f"images/s / raw.", "",
             "| server | concurrency | req/s | p50 ms | p99 ms (runs) | errors | server CPU µs/req | mean batch "
             "| load | ratio |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, rows in serve_rows.items():
        for r in rows:
            mb = f"{r['mean_batch']:.1f}" if "mean_batch" in r else "n/a"
            runs = ", ".join(f"{v:.0f}" for v in r["p99_runs"])
            lines.append(f"| {name} | {r['concurrency']} | {r['rps']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.1f} "
                         f"({runs}) | {r['errors']} | {r['cpu_us']:.0f} | {mb} | {r['load_min']:.1f}–"
                         f"{r['load_max']:.1f} | {r['rps'] / raw[r['concurrency']]:.1%} |")
    lines += ["", "Raw analyzer (images/s): " + ", ".join(f"batch {c}: {v:.0f}" for c, v in raw.items()) + "."]
    lines += acceptance(serve_rows)
    lines += ["", "**(b) Bytes on the wire per image** (HTTP bodies; the HTTP headers add about 200 B per request).",
              "", "| features | images/request | encoding | request B/image | response B/image |",
              "|---|---:|---|---:|---:|"]
    for r in wire:
        lines.append(f"| {r['features']} | {r['images/request']} | {r['encoding']} | {r['request B/image']:.0f} | "
                     f"{r['response B/image']:.0f} |")
    if jpeg:
        lines += ["", f"Sending the image instead (LFW, {jpeg['files']} files; 64x64 JPEGs of the model's face crop "
                      f"over {jpeg['sample']} of them): original JPEG {jpeg['original_mean']:.0f} B on average, "
                      f"64x64 JPEG {jpeg['jpeg64_q75']:.0f} B at quality 75 and {jpeg['jpeg64_q90']:.0f} B at "
                      f"quality 90."]
    return "\n".join(lines)


def paired_runs(mine: dict, theirs: dict) -> str:
    """Each interleaved run at one level: req/s ratio and whether our p99 was the lower, and the counts."""
    pairs = list(zip(mine["rps_runs"], theirs["rps_runs"], mine["p99_runs"], theirs["p99_runs"]))
    ratios = ", ".join(f"{a / b:.2f}x" for a, b, _, _ in pairs)
    fast = sum(a >= 1.2 * b for a, b, _, _ in pairs)
    tail = sum(pa <= pb for _, _, pa, pb in pairs)
    return (f"per run at {mine['concurrency']} {ratios}: >= 1.2x in {fast} of {len(pairs)}, "
            f"p99 no worse in {tail} of {len(pairs)}")


def acceptance(serve_rows: dict[str, list]) -> list[str]:
    """Issue 14's bars, every privsplit row (each workers value and gRPC engine) vs Triton over the same protocol."""
    triton = {k.rsplit(", ", 1)[1]: v for k, v in serve_rows.items() if k.startswith("Triton")}
    ours = [(k.rsplit(", ", 1)[1], k, v) for k, v in serve_rows.items() if k.startswith("privsplit")]
    if not triton:
        return []
    out = []
    for proto, label, rows in ours:
        mine, theirs = ({r["concurrency"]: r for r in rs} for rs in (rows, triton.get(proto, [])))
        if not {16, 64} <= mine.keys() & theirs.keys():
            continue
        verdict = lambda ok: "met" if ok else "**missed**"  # noqa: E731
        ratios = [mine[c]["rps"] / theirs[c]["rps"] for c in (16, 64)]
        out.append(f"* {label} vs Triton {proto}: req/s {ratios[0]:.2f}x at 16, {ratios[1]:.2f}x at 64 "
                   f"({verdict(min(ratios) >= 1.2)}); p99 at 64 {mine[64]['p99_ms']:.1f} vs "
                   f"{theirs[64]['p99_ms']:.1f} ms ({verdict(mine[64]['p99_ms'] <= theirs[64]['p99_ms'])}); "
                   f"p99 at 16 {mine[16]['p99_ms']:.1f} ms ({verdict(mine[16]['p99_ms'] <= 50)}); "
                   + paired_runs(mine[64], theirs[64]) + ".")
    head = ["", "Acceptance (issue 14; medians above): req/s >= 1.2x Triton's at 16 and 64, p99 at 64 <= Triton's, "
                "p99 at 16 <= 50 ms.", ""]
    return head + out if out else []


