"""On-device cost of split inference per split layer and embedding (Osia et al. 2017, VI-C, Figs. 13-15).

For each *client configuration* -- the full model on the device ("on-premise"), or the extractor up to a
split layer with the ``simple`` embedding (raw activations sent) or the ``reduced`` one (extractor + a
dense PCA-shaped ``D -> dim`` layer, the paper's dims 8/6/4 for conv5_1/2/3 and 10 for VGG-S conv5) --
:func:`measure_client` reports

* ``onnx_bytes`` / ``safetensors_bytes``: model file sizes;
* ``load``: time to make the model runnable in a fresh process (ONNX Runtime: create the session,
  graph optimisation included; torch: ``safetensors`` load, reading every byte of the memory-mapped
  tensors so the weights are resident, + build the modules on the ``meta`` device and assign the
  loaded tensors), median over ``load_repeats`` fresh processes, the model file in the page cache
  (warm); with ``cold_repeats`` also after evicting the file from the page cache (``posix_fadvise``),
  so the load reads storage (cold);
* ``memory``: RSS growth of a fresh process from just before loading (libraries imported and started
  by running a tiny model of the same architecture, input allocated) to its peak after loading and one inference (``VmHWM``, reset through
  ``/proc/self/clear_refs``), and to the steady RSS after that inference;
* ``latency``: single-thread (one intra-op thread, ``OMP_NUM_THREADS=1``) batch-1 inference time, median
  and p90 over ``runs`` (>= 60, the paper's protocol) after ``warmup`` runs, as wall time and as the
  process's CPU time (``latency_cpu``: what an otherwise idle core would take; robust to other work
  sharing the machine);
* ``macs``: conv/linear multiply-adds of one image (:func:`count_macs`; FLOPs ~ 2 x MACs);
* ``upload_bytes``: float32 bytes of the features one image sends (``C*H*W*4`` simple, ``dim*4``
  reduced; 0 for the full model, which sends nothing);
* ``onnx_max_abs_diff``: ONNX Runtime vs torch on seeded inputs at batch 1 and 3 (export fails above 1e-4).

Weights are random (seeded): cost does not depend on training. :func:`partition_table` gives, for every
candidate split point of a model, bytes uploaded vs device latency (torch, single thread, one pass
timing each layer so all prefixes come from the same ``runs``), plus a privacy column from
``{layer: value}`` results when given. :func:`run_cost` runs everything and writes ``cost.json``,
``cost.md`` and the figures (:mod:`privsplit.edge.cost_report`).

The parts live in :mod:`~privsplit.edge.specs` (what runs), :mod:`~privsplit.edge.flops` (work, bytes),
:mod:`~privsplit.edge.measure` (fresh-process measurement), :mod:`~privsplit.edge.partition` (partition view);
this module orchestrates them and re-exports their names.
"""
from __future__ import annotations

import contextlib
import json
import os
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from privsplit.edge.flops import count_flops, count_macs, upload_bytes
from privsplit.edge.measure import measure_client, summarize_times
from privsplit.edge.partition import load_privacy, partition_table
from privsplit.edge.specs import DEFAULT_LAYERS, PRESETS, ClientSpec, ModelSpec, default_clients, paper_dim

__all__ = [
    "ModelSpec", "ClientSpec", "PRESETS", "DEFAULT_LAYERS", "paper_dim", "default_clients", "count_macs",
    "count_flops", "upload_bytes", "measure_client", "partition_table", "run_cost", "acceptance",
    "load_privacy", "summarize_times", "render",
]



def _environment() -> dict[str, Any]:
    cpu = platform.processor() or ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    env = {"cpu": cpu, "cpu_count": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
           "platform": platform.platform()}
    with contextlib.suppress(ImportError):
        import onnxruntime

        env["onnxruntime"] = onnxruntime.__version__
    with contextlib.suppress(OSError):
        env["loadavg_start"] = list(os.getloadavg())
    return env


def acceptance(result: Mapping[str, Any], model_key: str = "vgg16-w1-224-nobn", split_key: str = "conv5_3-reduced4",
               ) -> dict[str, Any] | None:
    """Full model vs a split client (default: the paper's VGG-16 224 vs conv5_3 reduced): ratios full/split."""
    recs = {(r["model_key"], r["key"]): r for r in result.get("configs", [])}
    full, part = recs.get((model_key, "full")), recs.get((model_key, split_key))
    if full is None or part is None:
        return None
    out: dict[str, Any] = {"model": full["model"], "split": part["config"], "upload_bytes": part["upload_bytes"],
                           "macs_ratio": full["macs"] / part["macs"], "onnx_bytes_ratio": full["onnx_bytes"] / part["onnx_bytes"]}
    for rt in ("onnx", "torch"):
        if rt in full and rt in part:
            out[rt] = {
                "memory_ratio": full[rt]["peak_bytes"] / part[rt]["peak_bytes"],
                "steady_memory_ratio": full[rt]["steady_bytes"] / part[rt]["steady_bytes"],
                "load_ratio": full[rt]["load_ms"] / part[rt]["load_ms"],
                "cold_load_ratio": (full[rt]["cold_load_ms"] / part[rt]["cold_load_ms"]
                                    if full[rt].get("cold_load_ms") and part[rt].get("cold_load_ms") else None),
                "latency_ratio": full[rt]["latency"]["median_ms"] / part[rt]["latency"]["median_ms"],
                "latency_cpu_ratio": (full[rt]["latency_cpu"]["median_ms"] / part[rt]["latency_cpu"]["median_ms"]
                                      if full[rt].get("latency_cpu") and part[rt].get("latency_cpu") else None),
                "load_cpu_ratio": (full[rt]["load_cpu_ms"] / part[rt]["load_cpu_ms"]
                                   if full[rt].get("load_cpu_ms") and part[rt].get("load_cpu_ms") else None),
                "full": {"peak_bytes": full[rt]["peak_bytes"], "steady_bytes": full[rt]["steady_bytes"],
                         "load_ms": full[rt]["load_ms"], "cold_load_ms": full[rt].get("cold_load_ms"),
                         "latency_ms": full[rt]["latency"]["median_ms"],
                         "latency_cpu_ms": (full[rt].get("latency_cpu") or {}).get("median_ms")},
                "split": {"peak_bytes": part[rt]["peak_bytes"], "steady_bytes": part[rt]["steady_bytes"],
                          "load_ms": part[rt]["load_ms"], "cold_load_ms": part[rt].get("cold_load_ms"),
                          "latency_ms": part[rt]["latency"]["median_ms"],
                          "latency_cpu_ms": (part[rt].get("latency_cpu") or {}).get("median_ms")},
            }
            out[rt]["meets_goal"] = out[rt]["memory_ratio"] >= 3.0 and out[rt]["load_ratio"] >= 5.0
    return out


def run_cost(models: Sequence[ModelSpec], out: str | Path, *, layers: Mapping[str, Sequence[str]] | None = None,
             runtimes: Sequence[str] = ("onnx", "torch"), runs: int = 60, warmup: int = 5, load_repeats: int = 3,
             cold_repeats: int = 0, partition: bool = True, partition_runs: int | None = None, privacy: Mapping[str, Any] | None = None,
             figures: str | Path | None = None, seed: int = 0, keep_models: bool = False,
             log: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Measure every client configuration of every model, the partition views, and write the reports.

    Writes ``out/cost.json``, ``out/cost.md`` and ``out/figures/*.png`` (or ``figures``); model files go
    to ``out/models`` (deleted after measuring unless ``keep_models``). Returns the JSON-able result.
    """
    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "protocol": {"runs": runs, "warmup": warmup, "load_repeats": load_repeats, "cold_repeats": cold_repeats,
                     "threads": 1, "batch": 1,
                     "runtimes": list(runtimes), "seed": seed, "partition_runs": partition_runs or runs},
        "environment": _environment(), "configs": [], "partition": {},
    }
    started = time.time()
    for model in models:
        clients = default_clients(model, (layers or {}).get(model.arch))
        for spec in clients:
            log(f"{model.label}: {spec.name}")
            result["configs"].append(measure_client(spec, out / "models", runtimes=runtimes, runs=runs, warmup=warmup,
                                                    load_repeats=load_repeats, cold_repeats=cold_repeats, seed=seed,
                                                    keep_models=keep_models,
                                                    log=log))
        if partition:
            log(f"{model.label}: partition view")
            result["partition"][model.key] = {"model": model.label, "input_size": model.input_size,
                                              "rows": partition_table(model, runs=partition_runs or runs,
                                                                      warmup=warmup, privacy=privacy, seed=seed)}
    if not keep_models:
        for tiny in (out / "models").glob("_warmup_ort.onnx"):
            tiny.unlink()
        with contextlib.suppress(OSError):
            (out / "models").rmdir()
    result["acceptance"] = acceptance(result)
    result["environment"]["seconds"] = time.time() - started
    with contextlib.suppress(OSError):
        result["environment"]["loadavg_end"] = list(os.getloadavg())
    (out / "cost.json").write_text(json.dumps(result, indent=1))
    return _write_reports(result, out, figures)


def _write_reports(result: dict[str, Any], out: Path, figures: str | Path | None) -> dict[str, Any]:
    from privsplit.edge import cost_report

    fig_dir = Path(figures) if figures else out / "figures"
    result["figures"] = cost_report.write_figures(result, fig_dir)
    (out / "cost.md").write_text(cost_report.markdown(result, figures_rel=os.path.relpath(fig_dir, out)))
    (out / "cost.json").write_text(json.dumps(result, indent=1))
    return result


def render(json_path: str | Path, out: str | Path, *, figures: str | Path | None = None) -> dict[str, Any]:
    """Re-write ``cost.md``/``cost.json`` and the figures in ``out`` from an earlier ``cost.json``."""
    json_path = Path(json_path)
    if not json_path.is_file():
        raise FileNotFoundError(f"no cost results at {json_path}")
    result = json.loads(json_path.read_text())
    if "configs" not in result or "protocol" not in result:
        raise ValueError(f"{json_path} is not a cost.json written by `privsplit cost`")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    result["acceptance"] = acceptance(result)
    return _write_reports(result, out, figures)
