"""One fresh-process measurement for :mod:`privsplit.edge.cost` (not a public API).

``python -m privsplit.edge._cost_worker '<json job>'`` imports only the runtime it measures (the ONNX
Runtime path never imports torch), allocates the input, initialises the runtime with a tiny model of
the same architecture (so one-off library start-up is not billed to the model), then records the RSS, resets the peak RSS,
loads the model (timed), runs it once, reads the peak, and times ``runs`` single-thread inferences
after ``warmup``, each as wall time and as the process's CPU time. With ``cold`` the model file is first evicted from the page cache, so the
load reads it from storage. It prints one JSON line.
"""
from __future__ import annotations

import gc
import json
import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _status() -> dict[str, int]:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:  # not Linux: fall back to the peak RSS from getrusage (no reset, no current RSS)
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak = peak // 1024 if sys.platform == "darwin" else peak
        return {"VmRSS": peak, "VmHWM": peak}
    return {k: int(re.search(rf"^{k}:\s+(\d+)", text, re.MULTILINE).group(1)) for k in ("VmRSS", "VmHWM")}  # type: ignore[union-attr]


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _evict(path: str) -> None:
    """Drop ``path``'s pages from the OS page cache (only this file; Linux ``posix_fadvise``)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


Loader = Callable[[], Any]
Runner = Callable[[Any], Any]


def _onnx(job: dict[str, Any], x: Any) -> tuple[Loader, Runner]:
    """ONNX Runtime: load = create the session; the ORT environment is started off the clock first."""
    import numpy as np

    from privsplit.edge.onnx_runtime import make_session

    path = job["onnx_path"]
    if job.get("warmup_onnx"):  # initialise the ORT environment, thread pool and kernels off the clock
        tiny = make_session(job["warmup_onnx"], threads=1)
        tiny.run(None, {tiny.get_inputs()[0].name: np.zeros(job["warmup_shape"], dtype=np.float32)})
        del tiny
    feed_name = job.get("input_name", "image")
    return (lambda: make_session(path, threads=1)), (lambda sess: sess.run(None, {feed_name: x}))


def _torch(job: dict[str, Any], x: Any) -> tuple[Loader, Runner]:
    """torch: load = read the safetensors file + build on the meta device + assign the tensors."""
    import torch
    from safetensors.torch import load_file

    from privsplit.edge.specs import ClientSpec

    torch.set_num_threads(1)
    spec = ClientSpec.from_dict(job["spec"])
    xt = torch.from_numpy(x)
    # warm torch off the clock: meta-device build of this very spec (no data, loads every code path)
    # and one inference of a tiny model of the same architecture (oneDNN/ATen first-use init)
    with torch.device("meta"):
        spec.build()
    if job.get("warmup_spec"):
        with torch.inference_mode():
            tiny_spec = ClientSpec.from_dict(job["warmup_spec"])
            tiny_spec.build()(torch.zeros(job["warmup_shape"]))

    def load() -> Any:
        tensors = load_file(job["st_path"])  # memory-mapped: pages are read on first touch ...
        for t in tensors.values():  # ... so read every byte now, as loading a model file does
            t.sum()
        with torch.device("meta"):
            module = spec.build()
        module.load_state_dict(tensors, assign=True)
        return module.eval()

    def run(module: Any) -> Any:
        with torch.inference_mode():
            return module(xt)

    return load, run


def _measure(job: dict[str, Any], load: Loader, run: Runner) -> dict[str, Any]:
    """Load once (time, memory), run once (first run), then ``warmup`` + ``runs`` timed runs."""
    gc.collect()
    base = _status()["VmRSS"]
    reset = _reset_peak()
    wall, cpu = time.perf_counter, time.process_time  # cpu: this process's CPU time (all its threads)
    t0, c0 = wall(), cpu()
    model = load()
    load_s, load_cpu_s = wall() - t0, cpu() - c0
    peak_load = _status()["VmHWM"]
    t0 = wall()
    run(model)
    first = wall() - t0
    st = _status()
    times, cpu_times = [], []
    for _ in range(int(job.get("warmup", 0))):
        run(model)
    for _ in range(int(job.get("runs", 0))):
        t0, c0 = wall(), cpu()
        run(model)
        times.append(wall() - t0)
        cpu_times.append(cpu() - c0)
    return {"load_s": load_s, "load_cpu_s": load_cpu_s, "base_rss_kb": base,
            "peak_after_load_kb": peak_load, "peak_after_run_kb": st["VmHWM"], "rss_after_run_kb": st["VmRSS"],
            "first_run_s": first, "times_s": times, "cpu_times_s": cpu_times, "peak_reset": reset}


def main(job: dict[str, Any]) -> dict[str, Any]:
    """Run one measurement job (a dict from :func:`privsplit.edge.measure.measure_client`); returns the record."""
    import numpy as np

    x = np.random.default_rng(0).standard_normal(job["input_shape"], dtype=np.float32)
    runtime = job["runtime"]
    runtimes = {"onnx": _onnx, "torch": _torch}
    if runtime not in runtimes:
        raise SystemExit(f"unknown runtime {runtime!r}")
    load, run = runtimes[runtime](job, x)
    if job.get("cold"):  # evict this model file from the page cache: the load then reads the disk
        _evict(job["onnx_path"] if runtime == "onnx" else job["st_path"])
    return {"runtime": runtime, **_measure(job, load, run), "cold": bool(job.get("cold")),
            "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))))
