"""``serve(workers=2)``: two processes on one REST and one gRPC port, summed /metrics, a killed worker
replaced, and a 10 s load run at 100 concurrent clients (loopback) with a worker killed mid-run and no
request lost (the clients retry on the next connection)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("grpc", reason="needs the grpc extra")
from runtime_support import build_bundles, client_bundle, free_port  # noqa: E402

from privsplit.runtime.client import Client  # noqa: E402
from privsplit.runtime.metrics import parse_prometheus  # noqa: E402
from privsplit.runtime.workers import worker_pids  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


def _get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.status, r.read()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    client_dir, server_dir = build_bundles(tmp_path_factory.mktemp("bundles"))[0]
    rest, grpc_port = free_port(), free_port()
    code = (f"from privsplit.runtime.server import serve; serve({str(server_dir)!r}, port={rest}, "
            f"grpc_port={grpc_port}, workers=2, api_keys=[], log_level='warning', max_delay_ms=1.0)")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-c", code], env=env)
    url = f"http://127.0.0.1:{rest}"
    deadline = time.monotonic() + 120
    while True:  # both workers up: each answers on its own, so wait for two worker processes and readiness
        try:
            if _get(f"{url}/v2/health/ready")[0] == 200 and len(worker_pids(proc.pid)) == 2:
                break
        except OSError:
            pass
        assert proc.poll() is None and time.monotonic() < deadline, "the workers did not start"
        time.sleep(0.3)
    time.sleep(2.0)  # the second worker may still be loading its bundle
    try:
        yield proc, url, f"grpc://127.0.0.1:{grpc_port}", Path(client_dir)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_two_workers_one_port_summed_metrics(cluster):
    proc, url, grpc_url, client_dir = cluster
    assert len(worker_pids(proc.pid)) == 2
    before = parse_prometheus(_get(f"{url}/metrics")[1].decode())
    x = np.random.default_rng(0).normal(size=(1, 4)).astype(np.float32)
    for _ in range(30):  # a fresh connection each time: the kernel spreads them over both workers
        with Client(client_bundle(client_dir), url) as c:
            assert c.infer_features(x)[0].label in ("F", "M")
    with Client(client_bundle(client_dir), grpc_url, protocol="grpc") as c:
        for _ in range(10):
            c.infer_features(x)
    time.sleep(1.5)  # each worker writes its snapshot once a second
    key = 'privsplit_requests_total{endpoint="%s",status="200"}'
    for _ in range(6):  # whichever worker answers the scrape, the totals are the sum of both
        after = parse_prometheus(_get(f"{url}/metrics")[1].decode())
        assert after[key % "infer"] - before.get(key % "infer", 0) == 30
        assert after[key % "grpc_infer"] - before.get(key % "grpc_infer", 0) == 10


def test_load_100_clients_worker_killed_no_request_lost(cluster):
    """10 s, 100 concurrent clients (70 REST, 30 gRPC), one worker SIGKILLed after 3 s: 0 errors."""
    proc, url, grpc_url, client_dir = cluster
    bundle = client_bundle(client_dir)
    stop, errors, done = threading.Event(), [], [0] * 100
    x = np.random.default_rng(1).normal(size=(1, 4)).astype(np.float32)

    def run(i: int) -> None:
        proto, target = ("grpc", grpc_url) if i % 10 < 3 else ("rest", url)
        try:
            with Client(bundle, target, protocol=proto, retries=6, backoff=0.05, timeout=20) as c:
                while not stop.is_set():
                    assert c.infer_features(x)[0].label in ("F", "M")
                    done[i] += 1
        except Exception as exc:  # noqa: BLE001 - every failure is a lost request
            errors.append(f"{proto} client {i}: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(100)]
    for t in threads:
        t.start()
    time.sleep(3.0)
    victim = worker_pids(proc.pid)[0]
    os.kill(victim, signal.SIGKILL)
    time.sleep(7.0)
    stop.set()
    for t in threads:
        t.join(60)
    assert not errors, errors[:5]
    assert min(done) >= 1 and sum(done) >= 300, (min(done), sum(done))
    deadline = time.monotonic() + 60
    while len(worker_pids(proc.pid)) != 2 or victim in worker_pids(proc.pid):  # the supervisor replaced it
        assert time.monotonic() < deadline, "the killed worker was not replaced"
        time.sleep(0.5)
    assert _get(f"{url}/v2/health/ready")[0] == 200
