"""``serve(workers=2)``: two processes on one REST and one gRPC port, summed /metrics, a killed worker
replaced, and a 10 s load run at 100 concurrent clients (loopback) with a worker killed mid-run and no
request lost (the clients retry on the next connection)."""
from __future__ import annotations

import contextlib
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
from grpc_support import ENGINES  # noqa: E402
from runtime_support import build_bundles, client_bundle, free_port  # noqa: E402

from privsplit.runtime.client import Client  # noqa: E402
from privsplit.runtime.metrics import parse_prometheus  # noqa: E402
from privsplit.runtime.workers import grpc_worker_count, worker_pids  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


def _get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.status, r.read()


@contextlib.contextmanager
def _cluster(server_dir: Path, extra: str = ""):
    """``serve(workers=2, ...)`` in a subprocess; yields (process, REST url, gRPC port) once both workers serve."""
    rest, grpc_port = free_port(), free_port()
    code = (f"from privsplit.runtime.server import serve; serve({str(server_dir)!r}, port={rest}, "
            f"grpc_port={grpc_port}, workers=2, api_keys=[], log_level='warning', max_delay_ms=1.0{extra})")
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
        yield proc, url, grpc_port
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module", params=ENGINES)
def cluster(tmp_path_factory, request):
    """Two workers on each gRPC engine (the load test's acceptance holds for both)."""
    client_dir, server_dir = build_bundles(tmp_path_factory.mktemp("bundles"))[0]
    with _cluster(server_dir, f", grpc_engine={request.param!r}") as (proc, url, grpc_port):
        yield proc, url, f"grpc://127.0.0.1:{grpc_port}", Path(client_dir)


def _listening_pids(port: int, pids: list[int]) -> set[int]:
    """Which of ``pids`` hold a TCP socket listening on ``port`` (Linux /proc; no ss needed)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            cols = line.split()
            if cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                inodes.add(cols[9])
    links, found = {f"socket:[{i}]" for i in inodes}, set()
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                if os.readlink(fd) in links:
                    found.add(pid)
            except OSError:
                continue
    return found


def test_grpc_worker_count_checks_its_range():
    assert grpc_worker_count(2, None) == 2
    assert grpc_worker_count(2, 1) == 1
    for bad in (0, 3, True, 1.0):
        with pytest.raises(ValueError, match=r"grpc_workers must be an integer from 1 to workers \(2\)"):
            grpc_worker_count(2, bad)


def test_grpc_on_one_worker_of_two(tmp_path):
    """``grpc_workers=1``: REST listens in both workers, gRPC in one, and gRPC answers."""
    client_dir, server_dir = build_bundles(tmp_path)[0]
    with _cluster(server_dir, ", grpc_workers=1") as (proc, url, grpc_port):
        workers = worker_pids(proc.pid)
        rest_port = int(url.rsplit(":", 1)[1])
        assert len(_listening_pids(rest_port, workers)) == 2
        assert len(_listening_pids(grpc_port, workers)) == 1
        x = np.random.default_rng(0).normal(size=(1, 4)).astype(np.float32)
        with Client(client_bundle(Path(client_dir)), f"grpc://127.0.0.1:{grpc_port}", protocol="grpc") as c:
            assert c.infer_features(x)[0].label in ("F", "M")


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


def test_cli_grpc_workers_needs_grpc_port_and_at_most_workers(tmp_path):
    from typer.testing import CliRunner

    from privsplit.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["serve", str(tmp_path), "--grpc-workers", "1"])
    assert res.exit_code != 0 and "--grpc-workers needs --grpc-port" in res.output
    res = runner.invoke(app, ["serve", str(tmp_path), "--grpc-port", "0", "--workers", "2", "--grpc-workers", "3"])
    assert res.exit_code != 0 and "--grpc-workers (3) cannot exceed --workers (2)" in res.output
    res = runner.invoke(app, ["serve", str(tmp_path), "--grpc-port", "0", "--grpc-engine", "rust"])
    assert res.exit_code != 0 and "unknown gRPC engine 'rust'; choose one of grpcio, native" in res.output
