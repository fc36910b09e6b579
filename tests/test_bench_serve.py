"""The serving benchmark's verdict logic (benchmarks/serve_report.py): medians over interleaved runs,
issue 14's bars, and the per-run pairs that show how reliable a median's verdict is; and which servers
benchmarks/bench_serve.py starts."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_serve  # noqa: E402
import serve_report  # noqa: E402


def _row(c: int, rps: float, p99: float) -> dict:
    return {"concurrency": c, "rps": rps, "p50_ms": p99 / 2, "p99_ms": p99, "errors": 0, "cpu_us": 500.0,
            "load_before": 1.0, "load_after": 2.0}


def _run(ours: tuple, triton: tuple) -> dict:
    (o16, o64), (t16, t64) = ours, triton
    return {"privsplit serve --workers 2, gRPC": [_row(16, *o16), _row(64, *o64)],
            "Triton (PyTriton), gRPC": [_row(16, *t16), _row(64, *t64)]}


def test_acceptance_uses_medians_and_lists_each_interleaved_pair():
    runs = [_run(((1500, 20), (1300, 90)), ((1000, 30), (1000, 80))),   # 1.30x at 64, p99 worse
            _run(((1600, 25), (1100, 70)), ((1000, 35), (1000, 100))),  # 1.10x, p99 better
            _run(((1400, 60), (1500, 60)), ((1000, 40), (1200, 75)))]   # 1.25x, p99 better
    rows = serve_report.median_rows(runs)
    mine = rows["privsplit serve --workers 2, gRPC"][1]
    assert mine["rps"] == 1300 and mine["p99_ms"] == 70 and mine["rps_runs"] == [1300, 1100, 1500]
    assert mine["load_min"] == 1.0 and mine["load_max"] == 2.0
    lines = serve_report.acceptance(rows)
    verdict = next(line for line in lines if line.startswith("* privsplit"))
    # medians: 1500/1000 at 16, 1300/1000 at 64 -> met; p99 at 64 70 vs 80 -> met; p99 at 16 25 ms -> met
    assert "req/s 1.50x at 16, 1.30x at 64 (met)" in verdict and "70.0 vs 80.0 ms (met)" in verdict
    assert "p99 at 16 25.0 ms (met)" in verdict
    assert "per run at 64 1.30x, 1.10x, 1.25x: >= 1.2x in 2 of 3, p99 no worse in 2 of 3" in verdict


def test_acceptance_says_missed():
    rows = serve_report.median_rows([_run(((1100, 60), (1100, 90)), ((1000, 30), (1000, 80)))])
    verdict = serve_report.acceptance(rows)[-1]
    assert "1.10x at 16, 1.10x at 64 (**missed**)" in verdict and "90.0 vs 80.0 ms (**missed**)" in verdict
    assert "p99 at 16 60.0 ms (**missed**)" in verdict and ">= 1.2x in 0 of 1, p99 no worse in 0 of 1" in verdict


def test_acceptance_has_a_verdict_per_grpc_engine():
    runs = [_run(((1100, 60), (1100, 90)), ((1000, 30), (1000, 80)))]
    runs[0]["privsplit serve --workers 2 --grpc-engine native, gRPC"] = [_row(16, 2000, 20), _row(64, 2600, 40)]
    lines = [line for line in serve_report.acceptance(serve_report.median_rows(runs)) if line.startswith("* ")]
    assert len(lines) == 2 and "**missed**" in lines[0]
    assert lines[1].startswith("* privsplit serve --workers 2 --grpc-engine native, gRPC vs Triton gRPC: req/s 2.00x "
                               "at 16, 2.60x at 64 (met); p99 at 64 40.0 vs 80.0 ms (met)")


def test_one_server_per_grpc_engine_and_rest_measured_once():
    from argparse import Namespace

    args = Namespace(workers="2", h11=False, grpc_engines="grpcio,native", grpc_workers=1, max_delay_ms=2.0,
                     triton_python=None)
    specs = bench_serve.server_commands(args, Path("srv"))
    assert [(name, kinds) for name, _cmd, _ports, _ours, kinds in specs] == [
        ("privsplit serve --workers 2 --grpc-workers 1 (httptools + uvloop)", ("rest", "grpc")),
        ("privsplit serve --workers 2 --grpc-workers 1 --grpc-engine native (httptools + uvloop)", ("grpc",))]
    cmd = specs[1][1]
    assert cmd[cmd.index("--grpc-engine") + 1] == "native" and "--grpc-engine" not in specs[0][1]
    assert specs[0][2] != specs[1][2]  # each server its own ports
