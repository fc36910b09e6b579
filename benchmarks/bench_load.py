"""Load test: 100 concurrent clients against ``privsplit serve --workers 2`` on loopback, REST then gRPC,
one worker SIGKILLed a third of the way in; every request must be answered (the clients retry).

Each client is a :class:`privsplit.runtime.client.Client` (its own connection or channel, retries with
the same request id) sending one-image requests back to back. Reported per protocol: requests,
requests/s, p50/p99 latency (ms, retries included), errors (must be 0), and whether the supervisor
replaced the killed worker. ``tests/test_workers.py`` runs a 10 s version of this in CI.

Run (from the repository root)::

    PYTHONPATH=src python3 benchmarks/bench_load.py --seconds 60     # ~2.5 min
    PYTHONPATH=src python3 benchmarks/bench_load.py --seconds 60 --grpc-engine native --protocols grpc
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serve import build_bundles  # noqa: E402
from loadgen import free_port  # noqa: E402

from privsplit.defenses import load_client_bundle  # noqa: E402
from privsplit.runtime.client import Client  # noqa: E402
from privsplit.runtime.workers import worker_pids  # noqa: E402


def run(proto: str, target: str, bundle, supervisor: int, clients: int, seconds: float) -> dict:
    stop = threading.Event()
    lat: list[list[float]] = [[] for _ in range(clients)]
    errors: list[str] = []
    x = np.random.default_rng(0).normal(size=(1, *bundle.feature_shape)).astype(np.float32)

    def client(i: int) -> None:
        try:
            with Client(bundle, target, protocol=proto, retries=6, backoff=0.05, timeout=30) as c:
                while not stop.is_set():
                    t0 = time.perf_counter()
                    c.infer_features(x)
                    lat[i].append(time.perf_counter() - t0)
        except Exception as exc:  # noqa: BLE001 - a lost request
            errors.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    time.sleep(seconds / 3)
    victim = worker_pids(supervisor)[0]
    os.kill(victim, signal.SIGKILL)
    time.sleep(seconds * 2 / 3)
    stop.set()
    for t in threads:
        t.join(120)
    all_lat = sorted(v for per in lat for v in per)
    replaced = victim not in worker_pids(supervisor) and len(worker_pids(supervisor)) == 2
    return {"protocol": proto, "requests": len(all_lat), "rps": len(all_lat) / seconds,
            "p50_ms": 1000 * all_lat[len(all_lat) // 2], "p99_ms": 1000 * all_lat[int(len(all_lat) * 0.99)],
            "errors": len(errors), "first_error": errors[0] if errors else "", "worker_replaced": replaced}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--grpc-engine", default="grpcio", help="privsplit serve --grpc-engine")
    parser.add_argument("--protocols", default="rest,grpc", help="which to load, in order")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        client_dir, server_dir = build_bundles(Path(tmp), (8,))[8]
        rest, grpc_port = free_port(), free_port()
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PRIVSPLIT_API_KEYS": ""}
        proc = subprocess.Popen([sys.executable, "-c", "from privsplit.cli import main; main()", "serve",
                                 str(server_dir), "--port", str(rest), "--grpc-port", str(grpc_port), "--workers", "2",
                                 "--grpc-engine", args.grpc_engine, "--log-level", "warning"], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            while len(worker_pids(proc.pid)) < 2:
                time.sleep(0.5)
            while True:
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{rest}/v2/health/ready", timeout=2)
                    break
                except OSError:
                    time.sleep(0.5)
            time.sleep(5)
            bundle = load_client_bundle(client_dir)
            print(f"load average before: {os.getloadavg()}", flush=True)
            targets = {"rest": f"http://127.0.0.1:{rest}", "grpc": f"grpc://127.0.0.1:{grpc_port}"}
            for proto in args.protocols.split(","):
                target = targets[proto]
                while len(worker_pids(proc.pid)) < 2:  # the worker killed in the previous run is replaced
                    time.sleep(0.5)
                res = run(proto, target, bundle, proc.pid, args.clients, args.seconds)
                engine = args.grpc_engine if proto == "grpc" else "uvicorn"
                print(f"{proto} ({engine}): {args.clients} clients x {args.seconds:g} s, one worker killed at "
                      f"{args.seconds / 3:.0f} s: {res}", flush=True)
                time.sleep(15)  # a replaced worker loads its bundle before the next run
            print(f"load average after: {os.getloadavg()}", flush=True)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)


if __name__ == "__main__":
    main()
