"""Measuring a client configuration in fresh worker processes: file sizes, load time, memory, latency
(the protocol is described in :mod:`privsplit.edge.cost`)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from privsplit.edge.flops import count_macs, upload_bytes
from privsplit.edge.specs import ClientSpec, ModelSpec

__all__ = ["measure_client", "summarize_times"]



def summarize_times(times: Sequence[float]) -> dict[str, float]:
    """Median, p90, mean, min, max of a list of seconds, in milliseconds."""
    a = np.asarray(times, dtype=np.float64) * 1e3
    if a.size == 0:
        return {}
    return {"median_ms": float(np.median(a)), "p90_ms": float(np.percentile(a, 90)), "mean_ms": float(a.mean()),
            "min_ms": float(a.min()), "max_ms": float(a.max()), "n": int(a.size)}


def _worker_env() -> dict[str, str]:
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])  # the folder holding the privsplit package
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = "1"
    return env


def _run_worker(job: dict[str, Any], timeout: float) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-m", "privsplit.edge._cost_worker", json.dumps(job)],
                          capture_output=True, text=True, env=_worker_env(), timeout=timeout)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"cost worker failed ({job['runtime']}, {job.get('label')}): rc={proc.returncode}\n"
                           f"{proc.stderr[-3000:]}")
    return json.loads(lines[-1])


def _summarize_runtime(results: list[dict[str, Any]], cold: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    kb = 1024.0
    cold_load = [r["load_s"] * 1e3 for r in cold or []]
    load = [r["load_s"] for r in results]
    peak = [(r["peak_after_run_kb"] - r["base_rss_kb"]) * kb for r in results]
    peak_load = [(r["peak_after_load_kb"] - r["base_rss_kb"]) * kb for r in results]
    steady = [(r["rss_after_run_kb"] - r["base_rss_kb"]) * kb for r in results]
    times = [t for r in results for t in r.get("times_s", [])]
    cpu_times = [t for r in results for t in r.get("cpu_times_s", [])]
    load_cpu = [r["load_cpu_s"] for r in results if "load_cpu_s" in r]
    return {
        "load_ms": float(np.median(load) * 1e3), "load_ms_all": [x * 1e3 for x in load],
        "load_cpu_ms": float(np.median(load_cpu) * 1e3) if load_cpu else None,
        "latency_cpu": summarize_times(cpu_times),
        "loadavg": [r.get("loadavg") for r in [*results, *(cold or [])]],
        "peak_bytes": float(np.median(peak)), "peak_after_load_bytes": float(np.median(peak_load)),
        "steady_bytes": float(np.median(steady)), "peak_bytes_all": peak,
        "first_run_ms": float(np.median([r["first_run_s"] for r in results]) * 1e3),
        "latency": summarize_times(times), "processes": len(results),
        "cold_load_ms": float(np.median(cold_load)) if cold_load else None, "cold_load_ms_all": cold_load,
    }


def _tiny(model: ModelSpec) -> ClientSpec:
    return ClientSpec(ModelSpec(model.arch, 0.0625, 32, model.batch_norm))


def _warmup_model(model: ModelSpec, folder: Path, seed: int) -> tuple[ClientSpec, Path]:
    """Tiny models each worker runs before its baseline, so one-off runtime start-up is not billed.

    torch: the same architecture at width 1/16 and 32 px. ONNX Runtime: a small conv-BN-ReLU-pool-LRN-linear
    graph written directly with ``onnx.helper`` (no exporter run), which initialises the ORT environment,
    thread pool and the CPU kernels the VGGs use.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    path = folder / "_warmup_ort.onnx"
    if not path.exists():
        rng = np.random.default_rng(seed)

        def init(name: str, *shape: int) -> onnx.TensorProto:
            return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32) * 0.1, name)

        nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
                 helper.make_node("BatchNormalization", ["c", "g", "b", "b", "g"], ["n"]),
                 helper.make_node("Relu", ["n"], ["r"]),
                 helper.make_node("LRN", ["r"], ["l"], size=3),
                 helper.make_node("MaxPool", ["l"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
                 helper.make_node("Flatten", ["p"], ["f"]),
                 helper.make_node("Gemm", ["f", "fw", "fb"], ["y"], transB=1)]
        graph = helper.make_graph(
            nodes, "privsplit_warmup", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
            [init("w", 4, 3, 3, 3), init("b", 4), numpy_helper.from_array(np.ones(4, np.float32), "g"),
             init("fw", 2, 4 * 16 * 16), init("fb", 2)])
        onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        onnx.checker.check_model(onnx_model)
        onnx.save(onnx_model, str(path))
    return _tiny(model), path


def measure_client(spec: ClientSpec, folder: str | Path, *, runtimes: Sequence[str] = ("onnx", "torch"),
                   runs: int = 60, warmup: int = 5, load_repeats: int = 3, seed: int = 0, atol: float = 1e-4,
                   cold_repeats: int = 0, keep_models: bool = False, timeout: float = 1800.0,
                   log: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Export ``spec``'s device module, then measure it in fresh processes per runtime (see module doc)."""
    from safetensors.torch import save_file

    from privsplit.edge.export import export_module_onnx

    bad = [r for r in runtimes if r not in ("onnx", "torch")]
    if bad:
        raise ValueError(f"unknown runtime(s) {bad}: use onnx and/or torch")
    if runs < 1 or load_repeats < 1 or warmup < 0:
        raise ValueError("runs and load_repeats must be >= 1 and warmup >= 0")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    module = spec.build().eval()
    size = spec.model.input_size
    in_shape = (3, size, size)
    with torch.no_grad():
        out_shape = list(module(torch.zeros(1, *in_shape)).shape[1:])
    stem = f"{spec.model.key}_{spec.key}"
    onnx_path, st_path = folder / f"{stem}.onnx", folder / f"{stem}.safetensors"
    t0 = time.perf_counter()
    rep = export_module_onnx(module, in_shape, onnx_path, metadata={"privsplit.cost": stem}, atol=atol, seed=seed)
    export_s = time.perf_counter() - t0
    save_file({k: v.detach().contiguous() for k, v in module.state_dict().items()}, str(st_path))
    rec: dict[str, Any] = {
        "model": spec.model.label, "model_key": spec.model.key, "config": spec.name, "key": spec.key,
        "spec": spec.to_dict(), "layer": spec.layer, "embedding": spec.embedding, "dim": spec.dim,
        "input_shape": [1, *in_shape], "feature_shape": out_shape,
        "upload_bytes": 0 if spec.embedding == "full" else upload_bytes(out_shape),
        "macs": count_macs(module, (1, *in_shape)), "params": int(sum(p.numel() for p in module.parameters())),
        "onnx_bytes": onnx_path.stat().st_size, "safetensors_bytes": st_path.stat().st_size,
        "onnx_max_abs_diff": rep.max_abs_diff, "onnx_diffs": {str(k): v for k, v in rep.diffs.items()},
        "export_s": export_s,
    }
    del module
    warm_spec, warm_onnx = _warmup_model(spec.model, folder, seed) if "onnx" in runtimes else (_tiny(spec.model), None)
    for rt in runtimes:
        results = []
        for i in range(load_repeats):
            job = {"runtime": rt, "onnx_path": str(onnx_path), "st_path": str(st_path), "spec": spec.to_dict(),
                   "input_shape": [1, *in_shape], "runs": runs if i == 0 else 0, "warmup": warmup if i == 0 else 0,
                   "label": f"{spec.model.label} {spec.name}", "warmup_spec": warm_spec.to_dict(),
                   "warmup_onnx": None if warm_onnx is None else str(warm_onnx), "warmup_shape": [1, 3, 32, 32],
                   "input_name": rep.input_name}
            results.append(_run_worker(job, timeout))
        cold = [_run_worker(job | {"runs": 0, "warmup": 0, "cold": True}, timeout) for _ in range(cold_repeats)]
        rec[rt] = _summarize_runtime(results, cold)
        r, cold_ms = rec[rt], rec[rt]["cold_load_ms"]
        cold_txt = "" if cold_ms is None else f" (cold {cold_ms:.1f})"
        log(f"  {rt:5s} load {r['load_ms']:.1f} ms{cold_txt}, peak {r['peak_bytes'] / 2**20:.1f} MiB, "
            f"steady {r['steady_bytes'] / 2**20:.1f} MiB, latency {r['latency']['median_ms']:.2f} ms "
            f"(p90 {r['latency']['p90_ms']:.2f}; CPU {r['latency_cpu']['median_ms']:.2f})")
    if not keep_models:
        onnx_path.unlink(missing_ok=True)
        st_path.unlink(missing_ok=True)
    return rec


