"""Where a loaded ``privsplit serve`` worker loses time: GC pauses, stalls, connection spread, GIL holders.

Starts ``privsplit serve --workers W`` with a ``sitecustomize`` (written to a temporary folder put on
the workers' ``PYTHONPATH``) that, in every worker, times each garbage collection (``gc.callbacks``)
and runs a thread that sleeps 1 ms and records how late it wakes (a GIL or CPU stall shows as lag).
Then one load run (``loadgen.py``) at ``--concurrency`` for ``--seconds`` and prints: the client's
req/s, p50/p99; the server's own latency histogram for the run (``/metrics``); connections per worker
(``ss``); per worker, the full (gen-2) collections during the run (count, longest) and the lag's p99 and
maximum. ``--no-freeze`` turns ``gc.freeze`` into a no-op in the workers (the state before the fix);
``--py-spy PATH`` also samples each worker's GIL holder (``py-spy record --gil``) and prints its time by
layer. docs/runtime.md, "Where the tail came from", was found this way.

Run (from the repository root)::

    PYTHONPATH=src python3 benchmarks/serve_tail.py --kind rest --concurrency 64 --seconds 10 [--no-freeze]
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serve import build_bundles, metrics, request_bodies  # noqa: E402
from loadgen import free_port, run_load, wait_ready  # noqa: E402

from privsplit.runtime.workers import worker_pids  # noqa: E402

SITECUSTOMIZE = '''
import gc, json, os, threading, time
if os.environ.get("TAIL_NO_FREEZE"):
    gc.freeze = lambda: None
_gc, _lag, _t = [], [], [0.0]
def _timed(phase, info):
    if phase == "start":
        _t[0] = time.perf_counter()
    else:
        _gc.append((time.time(), info["generation"], time.perf_counter() - _t[0]))
gc.callbacks.append(_timed)
def _watch():
    path, last = os.path.join(os.environ["TAIL_DIR"], f"{os.getpid()}.json"), time.monotonic()
    while True:
        t0 = time.perf_counter()
        time.sleep(0.001)
        _lag.append((time.time(), time.perf_counter() - t0 - 0.001))
        if time.monotonic() - last > 0.5:
            last = time.monotonic()
            with open(path + ".tmp", "w") as f:
                json.dump({"gc": _gc, "lag": _lag[-20000:]}, f)
            os.replace(path + ".tmp", path)
threading.Thread(target=_watch, daemon=True).start()
'''
LAYERS = [("fastapi/", "FastAPI/Starlette"), ("starlette/", "FastAPI/Starlette"), ("uvicorn/", "uvicorn"),
          ("run_batch (privsplit/runtime/service", "analyzer"), ("privsplit/runtime/batching", "batcher"),
          ("privsplit/runtime/wire", "wire decode/encode"), ("privsplit/", "other privsplit"), ("grpc", "gRPC")]


def server_histogram(before: dict, after: dict, endpoint: str) -> dict[str, float]:
    """Fraction of the run's requests at or under each latency bucket, as the server timed them."""
    pat = re.compile(r'privsplit_request_latency_seconds_bucket\{endpoint="' + endpoint + r'",le="([^"]+)"\}')
    rows = sorted((float(m[1]), after[k] - before.get(k, 0.0)) for k in after if (m := pat.fullmatch(k)))
    total = rows[-1][1] if rows else 0
    return {f"<={le * 1000:g}ms": round(n / total, 4) for le, n in rows if le <= 0.5} if total else {}


def worker_report(folder: Path, pids: list[int], start: float, end: float) -> None:
    for pid in pids:
        path = folder / f"{pid}.json"
        if not path.exists():
            continue
        data = json.loads(path.read_text())
        full = [d for t, g, d in data["gc"] if g == 2 and start <= t <= end]
        lag = sorted(v for t, v in data["lag"] if start <= t <= end)
        if not lag:
            continue
        print(f"  worker {pid}: {len(full)} full collections in the run, longest "
              f"{1000 * max(full, default=0):.1f} ms; 1 ms sleeper late by p99 {1000 * lag[int(0.99 * len(lag))]:.1f} "
              f"ms, max {1000 * lag[-1]:.1f} ms")


def spy_report(path: Path) -> None:
    """Share of the GIL holder's samples by the deepest layer in its stack (py-spy raw format)."""
    by, total = collections.Counter(), 0
    for line in path.read_text().splitlines():
        stack, n = line.rsplit(" ", 1)
        total += int(n)
        frames = stack.split(";")[::-1]
        by[next((name for f in frames for key, name in LAYERS if key in f), "other")] += int(n)
    if total:
        print(f"  py-spy {path.stem}: " + ", ".join(f"{k} {v / total:.0%}" for k, v in by.most_common()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kind", choices=("rest", "grpc"), default="rest")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--no-freeze", action="store_true", help="workers skip gc.freeze (before the fix)")
    parser.add_argument("--py-spy", default=None, help="path of a py-spy binary: sample each worker's GIL holder")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "site").mkdir()
        (tmp / "site" / "sitecustomize.py").write_text(SITECUSTOMIZE)
        client_dir, server_dir = build_bundles(tmp, (8,))[8]
        model = json.loads((server_dir / "server.json").read_text())["model_name"]
        bodies = request_bodies(client_dir)[args.kind]
        port, gport = free_port(), free_port()
        env = {**os.environ, "PYTHONPATH": f"{tmp / 'site'}{os.pathsep}{Path(__file__).resolve().parents[1] / 'src'}",
               "TAIL_DIR": str(tmp), "PRIVSPLIT_API_KEYS": "", "OMP_NUM_THREADS": "1",
               **({"TAIL_NO_FREEZE": "1"} if args.no_freeze else {})}
        cmd = [sys.executable, "-c", "from privsplit.cli import main; main()", "serve", str(server_dir), "--port",
               str(port), "--grpc-port", str(gport), "--workers", str(args.workers), "--threads", "1",
               "--log-level", "warning"]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, start_new_session=True)
        try:
            wait_ready(f"http://127.0.0.1:{port}", model, proc)
            time.sleep(3.0)
            target = port if args.kind == "rest" else gport
            run_load(args.kind, target, model, bodies, 4, 1.0)  # warm-up
            spies = [subprocess.Popen([args.py_spy, "record", "-p", str(pid), "-d", str(int(args.seconds)), "-r",
                                       "200", "--gil", "--threads", "-f", "raw", "-o", str(tmp / f"{pid}.spy"),
                                       "--nonblocking"], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
                     for pid in (worker_pids(proc.pid) if args.py_spy else [])]
            conns: list[str] = []
            threading.Timer(2.0, lambda: conns.append(subprocess.run(
                ["ss", "-tnpH", "state", "established", f"( sport = :{target} )"], capture_output=True,
                text=True).stdout)).start()
            before, load0, start = metrics(port), os.getloadavg()[0], time.time()
            res = run_load(args.kind, target, model, bodies, args.concurrency, args.seconds)
            end = time.time()
            for spy in spies:
                spy.wait()
            time.sleep(1.2)  # workers publish their metrics once a second
            after = metrics(port)
            print(f"{args.kind} c={args.concurrency} workers={args.workers} freeze={not args.no_freeze}: "
                  f"{res['rps']:.0f} req/s, p50 {res['p50_ms']:.1f} ms, p99 {res['p99_ms']:.1f} ms, errors "
                  f"{res['errors']}; load {load0:.1f} -> {os.getloadavg()[0]:.1f}")
            print("  server-side latency (fraction at or under):",
                  server_histogram(before, after, "infer" if args.kind == "rest" else "grpc_infer"))
            print("  connections per worker pid:", dict(collections.Counter(re.findall(r"pid=(\d+)", "".join(conns)))))
            time.sleep(0.6)  # the workers' last snapshot of the run
            worker_report(tmp, worker_pids(proc.pid), start, end)
            for path in sorted(tmp.glob("*.spy")):
                spy_report(path)
        finally:
            proc.send_signal(2)
            proc.wait(60)


if __name__ == "__main__":
    main()
