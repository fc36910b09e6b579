"""``privsplit serve --workers N``: N server processes on one port, a supervisor that replaces dead ones.

Why processes: one Python process serves with one event loop and one batcher thread on one core,
so under load a request waits behind the parsing of every other request and behind several
batches; that queue is the p99 tail. N workers each own an event loop, a micro-batcher and one
torch thread (N x 1 threads, no oversubscription of the cores), and the kernel spreads connections
over them: every worker binds the REST port with SO_REUSEPORT (gRPC sets it on Linux by itself), so
there is no accept lock and no proxy hop. A worker that dies is replaced (started within a second, serving once loaded); its
in-flight requests fail with a connection error, which :class:`~privsplit.runtime.client.Client`
retries on the next connection (another worker). ``/metrics`` sums all workers (see
:mod:`privsplit.runtime.metrics`).

gRPC may listen on fewer workers than REST (``grpc_workers``): a gRPC process is not bound by its GIL
the way a REST one is -- either engine (grpcio's C core, or the native engine's Rust threads) moves
bytes, frames HTTP/2 and polls on threads of its own -- so one gRPC process keeps more than a core
busy. On the 2-core benchmark machine, grpcio on both workers oversubscribed the cores and doubled the
p99 at concurrency 64 (134-188 ms) against one gRPC worker (73-103 ms) at the same throughput; the
native engine on both served 2,514-3,042 req/s at p99 44-58 ms against 2,412-2,800 and 37-43 ms on one
(docs/runtime.md). The default stays "every worker", which keeps
gRPC up when a worker dies; with one gRPC worker, gRPC is refused until that worker is replaced.
"""
from __future__ import annotations

import logging
import socket
import multiprocessing as mp
import shutil
import signal
import tempfile
import time
from pathlib import Path
from collections.abc import Callable
from typing import Any

from privsplit.defenses.bundles import ServerBundle

__all__ = ["serve_workers", "bind_socket", "worker_pids", "grpc_worker_count"]

log = logging.getLogger("privsplit.serve")


def bind_socket(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """A bound TCP socket for uvicorn; ``reuse_port`` lets several worker processes bind one port."""
    # proto=IPPROTO_TCP matters: asyncio only sets TCP_NODELAY on sockets that say so, and without
    # it Nagle + delayed ACKs add ~40 ms to every keep-alive response
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def worker_pids(supervisor: int) -> list[int]:
    """The process ids of a running supervisor's workers (Linux ``/proc``; not multiprocessing's
    resource tracker): for tests and load benchmarks that kill one and watch it being replaced."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if ppid == supervisor and b"spawn_main" in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue
    return sorted(found)


def _worker(serve_one: Callable[..., None], bundle: ServerBundle | str | Path, options: dict[str, Any]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the supervisor decides
    serve_one(bundle, workers=1, reuse_port=True, **options)


def grpc_worker_count(workers: int, grpc_workers: int | None) -> int:
    """How many of ``workers`` serve gRPC: ``grpc_workers``, or all of them when None (checked)."""
    if grpc_workers is None:
        return workers
    if isinstance(grpc_workers, bool) or not isinstance(grpc_workers, int) or not 1 <= grpc_workers <= workers:
        raise ValueError(f"grpc_workers must be an integer from 1 to workers ({workers}), got {grpc_workers!r}; "
                         "leave it unset for gRPC on every worker")
    return grpc_workers


def serve_workers(bundle: ServerBundle | str | Path, *, serve_one: Callable[..., None], workers: int, host: str, port: int,
                  grpc_port: int | None = None, grpc_workers: int | None = None, torch_threads: int | None = None,
                  **options: Any) -> None:
    """Run ``workers`` processes of :func:`~privsplit.runtime.server.serve` until SIGINT/SIGTERM.

    The ports are reserved first by bound, non-listening SO_REUSEPORT sockets (so ``port=0`` means
    one port for all, and nobody else takes it between restarts); connections only ever go to the
    workers' listening sockets. Workers ``0 .. grpc_workers - 1`` also serve gRPC (default: all; see
    the module docstring for when fewer is faster); a replaced worker keeps its index and so its role.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    grpc_workers = grpc_worker_count(workers, grpc_workers)
    holders = [bind_socket(host, port, reuse_port=True)]
    port = holders[0].getsockname()[1]
    if grpc_port is not None:
        holders.append(bind_socket(host, grpc_port, reuse_port=True))
        grpc_port = holders[1].getsockname()[1]
    metrics_dir = tempfile.mkdtemp(prefix="privsplit-metrics-")
    child = dict(options, host=host, port=port, grpc_port=grpc_port, torch_threads=torch_threads or 1,
                 metrics_dir=metrics_dir)
    ctx = mp.get_context("spawn")  # no fork of a process that holds torch's thread pools
    stopping = []

    def start(index: int) -> Any:
        grpc = grpc_port if index < grpc_workers else None
        proc = ctx.Process(target=_worker, args=(serve_one, bundle, dict(child, grpc_port=grpc)),
                           name=f"privsplit-worker-{index}", daemon=False)
        proc.start()
        log.warning("worker %d started (pid %d) on %s:%d%s", index, proc.pid, host, port,
                    f", gRPC {grpc}" if grpc is not None else "")
        return proc

    def stop(*_: Any) -> None:
        stopping.append(True)

    old = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    procs = [start(i) for i in range(workers)]
    try:
        while not stopping:
            time.sleep(0.2)
            for i, proc in enumerate(procs):
                if not proc.is_alive() and not stopping:
                    log.warning("worker %d (pid %d) exited with %s; starting a new one", i, proc.pid, proc.exitcode)
                    procs[i] = start(i)
    finally:
        for proc in procs:
            proc.terminate()  # SIGTERM: uvicorn finishes in-flight requests, then exits
        for proc in procs:
            proc.join(15)
            if proc.is_alive():
                proc.kill()
        for sig, handler in old.items():
            signal.signal(sig, handler)
        for sock in holders:
            sock.close()
        shutil.rmtree(metrics_dir, ignore_errors=True)
