"""Multi-process closed-loop load generator for OIP v2 servers (REST keep-alive or gRPC), loopback only.

``run_load`` forks ``procs`` processes holding ``concurrency`` client threads in all; each thread keeps
one connection (REST) or one channel with its own connection (gRPC: a local subchannel pool, so
connections spread over server workers as separate devices would) and sends pre-encoded one-image
requests back to back, each with a fresh request id (swapped into the encoded bytes, same length) so
no idempotency-cache hit flatters the numbers.
Several processes keep the generator's own GIL from being the bottleneck. Every client connects and
sends one untimed request before the clock starts: connection setup is not request latency (64 connects
at once would otherwise be ~2% of the samples and decide the p99).

Also the benchmarks' server-process helpers: ``free_port``, ``wait_ready``, ``tree_cpu_seconds``.
"""
from __future__ import annotations

import http.client
import multiprocessing as mp
import os
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"  # never anything else


def free_port() -> int:
    """A loopback TCP port free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, model: str, proc: subprocess.Popen, timeout: float = 180) -> None:
    """Return once ``model`` is ready at ``url`` (OIP REST); fail if ``proc`` exits or ``timeout`` passes."""
    from privsplit.runtime.client import wait_ready as client_wait_ready

    client_wait_ready(url, model=model, timeout=timeout, alive=proc)


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its descendants (Triton runs in child processes)."""
    tick = os.sysconf("SC_CLK_TCK")
    children: dict[int, list[int]] = {}
    stats: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
        stats[int(entry.name)] = (int(fields[11]) + int(fields[12])) / tick
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        total += stats.get(p, 0.0)
        todo += children.get(p, [])
    return total


def _rest_thread(port: int, model: str, bodies: list, k: int, step: int, start: Any, stop: threading.Event,
                 out: list, errors: list) -> None:
    path = f"/v2/models/{model}/infer"
    conn = http.client.HTTPConnection(HOST, port, timeout=30)
    rid, body, headers = bodies[k % len(bodies)]
    conn.request("POST", path, body=body.replace(rid, uuid.uuid4().hex.encode(), 1), headers=headers)
    conn.getresponse().read()  # connected and warm
    start[0].wait()
    start[1].wait()
    i = k
    while not stop.is_set():
        rid, body, headers = bodies[i % len(bodies)]
        body = body.replace(rid, uuid.uuid4().hex.encode(), 1)
        i += step
        t0 = time.perf_counter()
        try:
            conn.request("POST", path, body=body, headers=headers)
            resp = conn.getresponse()
            resp.read()
            ok = resp.status == 200
        except (OSError, http.client.HTTPException):
            ok = False
            conn.close()
            conn = http.client.HTTPConnection(HOST, port, timeout=30)
        out.append(time.perf_counter() - t0)
        errors[0] += not ok
    conn.close()


def _grpc_thread(port: int, model: str, bodies: list, k: int, step: int, start: Any, stop: threading.Event,
                 out: list, errors: list) -> None:
    import grpc

    # its own connection: gRPC otherwise shares one subchannel among a process's channels to one target,
    # so 64 "clients" were 4 connections (one per process), all hashed to one or two server workers
    channel = grpc.insecure_channel(f"{HOST}:{port}", [("grpc.use_local_subchannel_pool", 1)])
    rpc = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
    rid, body = bodies[k % len(bodies)]
    rpc(body.replace(rid, uuid.uuid4().hex.encode(), 1), timeout=30)  # connected and warm
    start[0].wait()
    start[1].wait()
    i = k
    while not stop.is_set():
        rid, body = bodies[i % len(bodies)]
        body = body.replace(rid, uuid.uuid4().hex.encode(), 1)
        i += step
        t0 = time.perf_counter()
        try:
            rpc(body, timeout=30)
            ok = True
        except grpc.RpcError:
            ok = False
        out.append(time.perf_counter() - t0)
        errors[0] += not ok
    channel.close()


def _process(kind: str, port: int, model: str, bodies: list, first: int, threads: int, step: int,
             ready: Any, go: Any, seconds: float, results: Any) -> None:
    target = _rest_thread if kind == "rest" else _grpc_thread
    stop = threading.Event()
    # (every client connected and warm, the clock starts in every process at once)
    start = (threading.Barrier(threads + 1), threading.Event())
    outs = [[] for _ in range(threads)]
    errs = [[0] for _ in range(threads)]
    pool = [threading.Thread(target=target, args=(port, model, bodies, first + j, step, start, stop, outs[j],
                                                  errs[j]), daemon=True) for j in range(threads)]
    for t in pool:
        t.start()
    start[0].wait(timeout=120)
    ready.release()
    go.wait()
    start[1].set()
    time.sleep(seconds)
    stop.set()
    for t in pool:
        t.join(60)
    results.put(([v for o in outs for v in o], sum(e[0] for e in errs)))


def run_load(kind: str, port: int, model: str, bodies: list, concurrency: int, seconds: float,
             procs: int = 4) -> dict[str, float]:
    """Requests/s, p50/p99 latency (ms) and errors of ``concurrency`` closed-loop clients for ``seconds``."""
    ctx = mp.get_context("fork")  # instant start; the children create their own connections and channels
    procs = max(1, min(procs, concurrency))
    ready, go, results = ctx.Semaphore(0), ctx.Event(), ctx.Queue()
    split = [concurrency // procs + (p < concurrency % procs) for p in range(procs)]
    children, first = [], 0
    for n in split:
        children.append(ctx.Process(target=_process, args=(kind, port, model, bodies, first, n, concurrency,
                                                            ready, go, seconds, results), daemon=True))
        first += n
    for c in children:
        c.start()
    for _ in children:
        ready.acquire()
    go.set()
    lat, errors = [], 0
    for _ in children:
        got, err = results.get(timeout=seconds + 120)
        lat += got
        errors += err
    for c in children:
        c.join(10)
    elapsed = seconds  # every client thread ran for exactly this long
    lat.sort()
    if not lat:
        return {"requests": 0, "rps": 0.0, "p50_ms": float("nan"), "p99_ms": float("nan"), "errors": errors}
    return {"requests": len(lat), "rps": len(lat) / elapsed, "p50_ms": 1000 * lat[len(lat) // 2],
            "p99_ms": 1000 * lat[min(len(lat) - 1, int(len(lat) * 0.99))], "errors": errors}
