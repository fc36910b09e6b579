"""Load benchmark of the analyzer service (``privsplit serve``) on loopback, and bytes on the wire.

(a) Throughput: ``privsplit serve --workers W --grpc-port G`` runs in its own process(es) for each W of
    ``--workers`` (default 1 and 2); a multi-process load generator (``loadgen.py``, ``--load-procs``
    processes) runs C closed-loop clients (C = 1, 16, 64), each with one keep-alive REST connection or
    one gRPC channel with its own connection, sending one-image requests (binary tensors / raw_input_contents, a fresh request id
    each, like :class:`privsplit.runtime.client.Client`) back to back for ``--seconds``, first over REST,
    then over gRPC. Reported: requests/s, p50/p99 latency, errors (must be 0), server CPU µs per request
    (all server processes, from /proc), the mean analyzer batch (from ``/metrics``), and the ratio of the
    served images/s to the raw in-process analyzer (``AnalyzerService.run_batch``) at batch size C.
    With ``--triton`` (default when its interpreter exists: ``PRIVSPLIT_TRITON_PYTHON``, else
    ``.venv-triton/bin/python``) the same load also goes to the same analyzer on Triton Inference Server
    via PyTriton (``python -m privsplit.runtime.triton``), REST and gRPC. All servers of a run start
    together and are measured interleaved (for each protocol and level, each server right after the
    other), so a drift of the shared machine's speed hits them alike. ``--runs N`` repeats the whole
    set N times (every server restarted) and reports per server and level the median of each figure, each
    run's p99 and the range of the 1-min load average (read before and after every level), plus issue 14's
    acceptance checks against Triton.
(b) Bytes on the wire per image: OIP request and response bodies for PCA-4/6/8 features (binary and JSON;
    one image per request and 64 per request), vs the face as a 64x64 JPEG (quality 75/90, the model's
    crop) and the original LFW JPEG.

The analyzer: VGG-16 at width 0.25, 64 px input (the CLI defaults), split at conv5_3, PCA-k + noise;
untrained weights (speed does not depend on them). Results depend on the machine and its load: the
load average is printed with them.

Run (from the repository root)::

    PYTHONPATH=src python3 benchmarks/bench_serve.py --workers 2 --runs 3   # ~8 min; updates docs/runtime.md
    PYTHONPATH=src python3 benchmarks/bench_serve.py --seconds 3 --no-docs
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from privsplit.data import FaceData, Manifest, Preprocess
from privsplit.data.loaders import LFW_CROP
from privsplit.data.transforms import decode_image
from privsplit.defenses import build_embedding, load_client_bundle, save_bundles
from privsplit.models import vgg16
from privsplit.runtime.client import Client
from privsplit.runtime.grpc_wire import request_to_proto
from privsplit.runtime.metrics import parse_prometheus
from privsplit.runtime.server import AnalyzerService
from privsplit.runtime.wire import InferResponse, InferTensor, encode_request, encode_response

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loadgen import free_port, run_load, tree_cpu_seconds, wait_ready  # noqa: E402
from serve_report import median_rows, render  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "runtime.md"
START, END = "<!-- bench:start -->", "<!-- bench:end -->"
SIZE, WIDTH, LAYER = 64, 0.25, "conv5_3"


# ----------------------------------------------------------------------------- setup

def synthetic_faces(n: int = 96, size: int = SIZE, seed: int = 0) -> FaceData:
    """Random face-like images (only to fit the PCA; throughput does not depend on them)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.arange(n) % 8
    imgs = (60 + torch.rand(8, 3, size, size, generator=g)[ids] * 80 + torch.rand(n, 3, size, size, generator=g) * 40)
    imgs[:, 0] += (ids % 2).view(n, 1, 1).float() * 60
    manifest = Manifest(root=Path("."), paths=tuple(f"{i}.png" for i in range(n)),
                        columns={"gender": tuple("FM"[int(v) % 2] for v in ids),
                                 "identity": tuple(f"id{int(v)}" for v in ids)}, name="synthetic")
    return FaceData(images=imgs.clamp(0, 255).to(torch.uint8), labels={"gender": ids % 2, "identity": ids},
                    classes={"gender": ["F", "M"], "identity": [f"id{i}" for i in range(8)]}, manifest=manifest,
                    preprocess=Preprocess(size=size, crop=LFW_CROP))


def build_bundles(folder: Path, dims: tuple[int, ...]) -> dict[int, tuple[Path, Path]]:
    torch.manual_seed(0)
    faces = synthetic_faces()
    model = vgg16(width=WIDTH, input_size=SIZE).eval()
    out = {}
    for dim in dims:
        emb = build_embedding("noisy-reduced-simple", model, layer=LAYER, train=faces, column="gender", dim=dim,
                              sigma=0.5, progress=False)
        out[dim] = save_bundles(emb, folder / f"pca{dim}", config=model.config, preprocess=faces.preprocess,
                                classes=["F", "M"], primary="gender")
    return out


def has_module(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


# ----------------------------------------------------------------------------- (a) throughput

def raw_throughput(server_dir: Path, batch: int, seconds: float) -> float:
    """Images/s of the analyzer called in process on batches of ``batch`` rows (no HTTP, no batcher)."""
    service = AnalyzerService(server_dir)
    x = np.random.default_rng(0).normal(size=(batch, *service.input_shape)).astype(np.float32)
    for _ in range(20):
        service.run_batch(x)
    calls, t0 = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - t0) < seconds:
        service.run_batch(x)
        calls += 1
    return calls * batch / elapsed


def metrics(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return parse_prometheus(r.read().decode())


def request_bodies(client_dir: Path, n: int = 512) -> dict[str, list]:
    """Per protocol, one-image requests with distinct features as the Client sends them: REST ``(id, body,
    headers)`` (binary tensors), gRPC ``(id, ModelInferRequest bytes)``; the load loop swaps in a fresh id."""
    client = Client(load_client_bundle(client_dir), "http://127.0.0.1:1")
    feats = np.random.default_rng(1).normal(size=(n, *client.bundle.feature_shape)).astype(np.float32)
    out: dict[str, list] = {"rest": [], "grpc": []}
    for i in range(n):
        rid = uuid.uuid4().hex
        req = client.request_for(feats[i:i + 1], rid)
        out["rest"].append((rid.encode(), *encode_request(req, binary=True)))
        out["grpc"].append((rid.encode(), request_to_proto(req, client.model_name).SerializeToString()))
    return out


def measure(kind: str, port: int, model: str, bodies: list, concurrency: int, args, pid: int,
            metrics_port: int | None) -> dict[str, float]:
    """One load run at one level: the load generator's numbers, server CPU µs/request (all processes
    under ``pid``), the mean analyzer batch (privsplit's ``/metrics``) and the 1-min load average
    before and after."""
    load0 = os.getloadavg()[0]
    before = metrics(metrics_port) if metrics_port else {}
    cpu0 = tree_cpu_seconds(pid)
    res = run_load(kind, port, model, bodies, concurrency, args.seconds, args.load_procs)
    res["cpu_us"] = 1e6 * (tree_cpu_seconds(pid) - cpu0) / max(1, res["requests"])
    res["load_before"], res["load_after"] = load0, os.getloadavg()[0]
    if metrics_port:
        time.sleep(1.2)  # workers publish their metrics once a second
        after = metrics(metrics_port)
        calls = after["privsplit_batch_size_count"] - before["privsplit_batch_size_count"]
        res["mean_batch"] = (after["privsplit_batch_size_sum"] - before["privsplit_batch_size_sum"]) / max(1, calls)
    return {"concurrency": concurrency, **res}


@contextlib.contextmanager
def running(specs: list[tuple], env: dict[str, str], model: str):
    """Start every server of ``specs`` at once and yield their processes once all are ready; stop them after.

    Why all at once: the servers are then measured level by level, one right after the other
    (interleaved), so a drift of this shared machine's speed over minutes hits each of them alike
    instead of whichever ran last. An idle server costs next to nothing while another one is measured.
    """
    procs = []
    try:
        for _name, cmd, *_ in specs:
            procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                          start_new_session=True))
        for proc, (_name, _cmd, ports, *_) in zip(procs, specs):
            wait_ready(f"http://127.0.0.1:{ports['rest']}", model, proc)
        time.sleep(3.0)  # with several workers, let the last ones finish loading before the clock runs
        yield procs
    finally:
        for proc in procs:
            proc.send_signal(2)
        for proc in procs:
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait(10)


def bench_run(specs: list[tuple], env: dict[str, str], model: str, bodies, args) -> dict[str, list[dict[str, float]]]:
    """One run: every server up, then per protocol and level each server in turn; rows per 'name, protocol'."""
    out: dict[str, list[dict[str, float]]] = {}
    with running(specs, env, model) as procs:
        for kind in ("rest", "grpc"):
            measured = [(proc, spec) for proc, spec in zip(procs, specs) if kind in spec[4]]
            for _proc, (name, _cmd, ports, _ours, _kinds) in measured:  # warm-up
                run_load(kind, ports[kind], model, bodies[kind], 4, 1.0, args.load_procs)
            for c in args.level_list:
                for proc, (name, _cmd, ports, ours, _kinds) in measured:
                    label = f"{name}, {'REST' if kind == 'rest' else 'gRPC'}"
                    res = measure(kind, ports[kind], model, bodies[kind], c, args, proc.pid,
                                  ports["rest"] if ours else None)
                    out.setdefault(label, []).append(res)
                    batch = f"  mean batch {res['mean_batch']:.1f}" if "mean_batch" in res else ""
                    print(f"  {label}  c={c:>2}: {res['rps']:7.0f} req/s  p50 {res['p50_ms']:.2f} ms  p99 "
                          f"{res['p99_ms']:.2f} ms  errors {res['errors']}  server CPU {res['cpu_us']:.0f} us/req"
                          f"{batch}  load {res['load_before']:.1f}->{res['load_after']:.1f}", flush=True)
    return out


def server_commands(args, server_dir: Path) -> list[tuple]:
    """(name, command, ports, privsplit metrics?, protocols) of every server to measure, with fresh ports.

    One privsplit server per gRPC engine (``--grpc-engines``); REST is measured on the first only (the
    engine does not touch REST), gRPC on each."""
    specs = []
    for workers in [int(w) for w in args.workers.split(",")]:
        for name, extra in [("httptools + uvloop", ["--http", "httptools", "--loop", "uvloop"]),
                            *([("h11 + asyncio", ["--http", "h11", "--loop", "asyncio"])] if args.h11 else [])]:
            for i, engine in enumerate(args.grpc_engines.split(",")):
                ports = {"rest": free_port(), "grpc": free_port()}
                flags = (["--grpc-workers", str(args.grpc_workers)] if args.grpc_workers else []) + (
                    ["--grpc-engine", engine] if engine != "grpcio" else [])
                specs.append((f"privsplit serve --workers {workers}{' ' + ' '.join(flags) if flags else ''} ({name})",
                              [sys.executable, "-c", "from privsplit.cli import main; main()", "serve",
                               str(server_dir), "--port", str(ports["rest"]), "--grpc-port", str(ports["grpc"]),
                               "--workers", str(workers), "--log-level", "warning", "--threads", "1",
                               "--max-delay-ms", str(args.max_delay_ms), *flags, *extra],
                              ports, True, ("rest", "grpc") if i == 0 else ("grpc",)))
    if args.triton_python:
        ports = [free_port() for _ in range(3)]
        specs.append(("Triton (PyTriton), max-delay 2 ms",
                      [args.triton_python, "-m", "privsplit.runtime.triton", str(server_dir), "--http-port",
                       str(ports[0]), "--grpc-port", str(ports[1]), "--metrics-port", str(ports[2]),
                       "--max-delay-us", "2000"], {"rest": ports[0], "grpc": ports[1]}, False, ("rest", "grpc")))
    return specs


def triton_python(choice: str) -> str | None:
    """The PyTriton interpreter: ``PRIVSPLIT_TRITON_PYTHON`` or ``.venv-triton`` (as tests/test_interop.py)."""
    path = os.environ.get("PRIVSPLIT_TRITON_PYTHON", str(ROOT / ".venv-triton" / "bin" / "python"))
    if choice == "no" or (choice == "auto" and not Path(path).exists()):
        print(f"Triton skipped: no {path} (see docs/runtime.md for the PyTriton environment)", flush=True)
        return None
    return path


# ----------------------------------------------------------------------------- (b) bytes on the wire

def wire_bytes(bundles: dict[int, tuple[Path, Path]]) -> list[dict[str, object]]:
    rows = []
    for dim, (client_dir, _) in bundles.items():
        client = Client(load_client_bundle(client_dir), "http://127.0.0.1:1")
        for per_request in (1, 64):
            feats = np.random.default_rng(2).normal(size=(per_request, dim)).astype(np.float32)
            for binary in (True, False):
                client.binary = binary
                req = client.request_for(feats, uuid.uuid4().hex)
                body, _ = encode_request(req, binary=binary)
                probs = np.full((per_request, 2), 0.123456789, np.float32)
                resp = InferResponse(client.bundle.model_name, model_version="1", id=req.id, outputs=[
                    InferTensor.from_numpy("probabilities", probs),
                    InferTensor("label", (per_request,), "BYTES", [b"M"] * per_request)])
                rbody, _ = encode_response(resp, binary_outputs=req.binary_outputs())
                rows.append({"features": f"PCA-{dim}", "images/request": per_request,
                             "encoding": "binary" if binary else "JSON",
                             "request B/image": len(body) / per_request, "response B/image": len(rbody) / per_request})
    return rows


def jpeg_bytes(sample: int = 400) -> dict[str, float] | None:
    from privsplit.config import data_root

    base = data_root()
    if base is None:
        return None
    root = base / "lfw_gender" / "images"
    files = sorted(root.rglob("*.jpg"))
    if not files:
        return None
    pre = Preprocess(size=SIZE, crop=LFW_CROP)
    picked = files[:: max(1, len(files) // sample)][:sample]
    q75, q90 = [], []
    for f in picked:
        img = Image.fromarray(decode_image(f, pre))
        for q, out in ((75, q75), (90, q90)):
            buf = io.BytesIO()
            img.save(buf, format="JPEG", quality=q)
            out.append(len(buf.getvalue()))
    return {"files": len(files), "original_mean": statistics.mean(f.stat().st_size for f in files),
            "jpeg64_q75": statistics.mean(q75), "jpeg64_q90": statistics.mean(q90), "sample": len(picked)}


def update_doc(text: str) -> None:
    doc = DOC.read_text()
    if START not in doc or END not in doc:
        raise SystemExit(f"{DOC} lacks the {START} ... {END} markers")
    head, rest = doc.split(START, 1)
    DOC.write_text(head + START + "\n" + text + "\n" + END + rest.split(END, 1)[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="per concurrency level")
    parser.add_argument("--runs", type=int, default=1, help="runs (each server restarted); the table shows medians")
    parser.add_argument("--raw-seconds", type=float, default=3.0)
    parser.add_argument("--levels", default="1,16,64")
    parser.add_argument("--workers", default="1,2", help="privsplit serve --workers values to measure")
    parser.add_argument("--grpc-workers", type=int, default=0, help="privsplit serve --grpc-workers (0: all workers)")
    parser.add_argument("--grpc-engines", default="grpcio,native" if has_module("pygrpc_native") else "grpcio",
                        help="privsplit serve --grpc-engine values to measure (one server each)")
    parser.add_argument("--load-procs", type=int, default=4, help="load-generator processes")
    parser.add_argument("--h11", action="store_true", help="also measure uvicorn with h11 + asyncio")
    parser.add_argument("--max-delay-ms", type=float, default=2.0)
    parser.add_argument("--triton", choices=("auto", "yes", "no"), default="auto")
    parser.add_argument("--no-docs", action="store_true")
    args = parser.parse_args()
    args.command = " ".join(["PYTHONPATH=src python3 benchmarks/bench_serve.py", *sys.argv[1:]])
    levels = args.level_list = [int(v) for v in args.levels.split(",")]
    args.triton_python = triton_python(args.triton)
    torch.set_num_threads(1)  # the raw baseline gets one core, like the server's batching worker below
    with tempfile.TemporaryDirectory() as tmp:
        bundles = build_bundles(Path(tmp), (4, 6, 8))
        client_dir, server_dir = bundles[8]
        model = json.loads((server_dir / "server.json").read_text())["model_name"]
        print("raw analyzer (images/s):", flush=True)
        raw = {c: raw_throughput(server_dir, c, args.raw_seconds) for c in levels}
        print("  " + ", ".join(f"batch {c}: {v:.0f}" for c, v in raw.items()), flush=True)
        bodies = request_bodies(client_dir)
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "PRIVSPLIT_API_KEYS": "", "OMP_NUM_THREADS": "1"}
        runs = []
        for run in range(args.runs):
            print(f"--- run {run + 1} of {args.runs}", flush=True)
            runs.append(bench_run(server_commands(args, server_dir), env, model, bodies, args))
        wire = wire_bytes(bundles)
    jpeg = jpeg_bytes()
    env_line = (f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, load average (1 min) before the benchmark "
                f"{LOAD_BEFORE:.1f}, after it {os.getloadavg()[0]:.1f}; load generator: {args.load_procs} processes "
                f"on the same CPUs; Python {platform.python_version()}, torch {torch.__version__} (1 thread per "
                f"analyzer); {args.seconds:g} s per level; {time.strftime('%Y-%m-%d %H:%M %Z')}.")
    text = render(args, raw, median_rows(runs), wire, jpeg, env_line)
    print(text)
    if not args.no_docs:
        update_doc(text)
        print(f"updated {DOC}")


LOAD_BEFORE = os.getloadavg()[0]

if __name__ == "__main__":
    main()
