"""The partition view: for every candidate split point, upload bytes vs device latency (vs privacy)."""
from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from privsplit.edge.flops import count_macs, upload_bytes
from privsplit.edge.specs import ModelSpec
from privsplit.models.split import split, split_points

__all__ = ["partition_table", "load_privacy"]



@contextlib.contextmanager
def _single_thread() -> Iterator[None]:
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def load_privacy(path: str | Path | None) -> dict[str, Any] | None:
    """Read per-layer privacy results: ``{layer: value}`` or ``{arch: {layer: value}}`` (JSON)."""
    if path is None:
        return None
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"privacy results not found: {path}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold an object {{layer: value}} or {{arch: {{layer: value}}}}")
    return data


def _privacy_for(privacy: Mapping[str, Any] | None, arch: str | None) -> dict[str, float]:
    if not privacy:
        return {}
    if arch is not None and isinstance(privacy.get(arch), Mapping):
        privacy = privacy[arch]
    out: dict[str, float] = {}
    for k, v in privacy.items():
        if isinstance(v, Mapping):
            continue  # another architecture's block
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ValueError(f"privacy value for {k!r} must be a number, got {v!r}")
        out[str(k)] = float(v)
    return out


def partition_table(model: nn.Module | ModelSpec, input_size: int | None = None, *, runs: int = 60,
                    warmup: int = 5, privacy: Mapping[str, Any] | None = None, seed: int = 0) -> list[dict[str, Any]]:
    """One row per candidate split point: upload bytes vs device latency (vs privacy, when known).

    Latency is torch, single thread, batch 1: for ``nn.Sequential`` models one pass times every layer,
    so the prefix latency of split point ``l`` in run ``r`` is the sum of that run's first ``l`` layer
    times (median and p90 over ``runs``; also the median of the process CPU time); other models time
    each extractor separately. ``upload_bytes``
    is float32 ``C*H*W*4`` of the split layer's output (a reduced embedding sends ``dim*4`` instead);
    ``upload_vs_image`` compares it with the raw uint8 ``3*S*S`` image. ``privacy`` is looked up by layer
    name in ``{layer: value}`` (or ``{arch: {layer: value}}``); ``None`` where absent.
    """
    model, arch, input_size = _resolve(model, input_size, seed)
    priv = _privacy_for(privacy, arch)
    points = split_points(model)
    x = torch.zeros(1, 3, input_size, input_size)
    with _single_thread(), torch.inference_mode():
        timer = _time_sequential if isinstance(model, nn.Sequential) else _time_extractors
        per_point, per_point_cpu, shapes, macs = timer(model, points, x, runs=runs, warmup=warmup)
    image_bytes = 3 * input_size * input_size
    rows = []
    for i, name in enumerate(points):
        t = per_point[name] * 1e3
        ub = upload_bytes(shapes[name])
        rows.append({"index": i, "layer": name, "output_shape": shapes[name], "upload_bytes": ub,
                     "upload_vs_image": ub / image_bytes, "macs": macs[name],
                     "latency_ms_median": float(np.median(t)), "latency_ms_p90": float(np.percentile(t, 90)),
                     "latency_cpu_ms_median": float(np.median(per_point_cpu[name] * 1e3)),
                     "privacy": priv.get(name)})
    return rows


def _resolve(model: nn.Module | ModelSpec, input_size: int | None, seed: int) -> tuple[nn.Module, str | None, int]:
    """The eval-mode module, its architecture name (if known) and its input size."""
    arch = None
    if isinstance(model, ModelSpec):
        arch, input_size = model.arch, model.input_size
        torch.manual_seed(seed)
        model = model.build()
    elif getattr(model, "config", None) is not None:
        arch = getattr(model.config, "arch", None)
        input_size = input_size or getattr(model.config, "input_size", None)
    if not input_size:
        raise ValueError("pass input_size for a model without a VGGConfig")
    return model.eval(), arch, int(input_size)


#: per split point: wall times (s) per run, CPU times per run, output shape, MACs up to it
_Timings = tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, list[int]], dict[str, int]]


def _time_sequential(model: nn.Module, points: list[str], x: torch.Tensor, *, runs: int, warmup: int) -> _Timings:
    """One pass times every layer; the prefix latency of a split point is the sum of its layers' times."""
    children = list(model.named_children())
    times = np.zeros((runs, len(children)))
    cpus = np.zeros((runs, len(children)))
    for r in range(warmup + runs):
        h = x
        for j, (_, layer) in enumerate(children):
            t0, c0 = time.perf_counter(), time.process_time()
            h = layer(h)
            if r >= warmup:
                times[r - warmup, j] = time.perf_counter() - t0
                cpus[r - warmup, j] = time.process_time() - c0
    cum, cum_cpu = times.cumsum(axis=1), cpus.cumsum(axis=1)
    per_point: dict[str, np.ndarray] = {}
    per_point_cpu: dict[str, np.ndarray] = {}
    shapes: dict[str, list[int]] = {}
    macs: dict[str, int] = {}
    h, total = x, 0
    for j, (name, layer) in enumerate(children):
        total += count_macs(layer, tuple(h.shape))
        h = layer(h)
        if name in points:
            per_point[name], shapes[name], macs[name] = cum[:, j], list(h.shape[1:]), total
            per_point_cpu[name] = cum_cpu[:, j]
    return per_point, per_point_cpu, shapes, macs


def _time_extractors(model: nn.Module, points: list[str], x: torch.Tensor, *, runs: int, warmup: int) -> _Timings:
    """Models that are not ``nn.Sequential``: time each split's extractor on its own."""
    per_point: dict[str, np.ndarray] = {}
    per_point_cpu: dict[str, np.ndarray] = {}
    shapes: dict[str, list[int]] = {}
    macs: dict[str, int] = {}
    for name in points:
        ext = split(model, at=name)[0]
        for _ in range(warmup):
            ext(x)
        ts, cs = [], []
        for _ in range(runs):
            t0, c0 = time.perf_counter(), time.process_time()
            h = ext(x)
            ts.append(time.perf_counter() - t0)
            cs.append(time.process_time() - c0)
        per_point[name], shapes[name] = np.asarray(ts), list(h.shape[1:])
        per_point_cpu[name] = np.asarray(cs)
        macs[name] = count_macs(ext, tuple(x.shape))
    return per_point, per_point_cpu, shapes, macs
