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
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from privsplit.models.split import split, split_points
from privsplit.models.vgg import VGGConfig, build_model

__all__ = [
    "ModelSpec", "ClientSpec", "PRESETS", "DEFAULT_LAYERS", "paper_dim", "default_clients", "count_macs",
    "count_flops", "upload_bytes", "measure_client", "partition_table", "run_cost", "acceptance",
    "load_privacy", "summarize_times", "render",
]

#: split layers of the paper's mobile evaluation, per architecture
DEFAULT_LAYERS: dict[str, tuple[str, ...]] = {"vgg16": ("conv5_1", "conv5_2", "conv5_3"), "vgg_s": ("conv5",)}
_PAPER_DIMS = {"conv5_1": 8, "conv5_2": 6, "conv5_3": 4, "conv5": 10}  # = privsplit.defenses.build.PAPER_DIMS


def paper_dim(layer: str) -> int:
    """The paper's reduced dimension for ``layer`` (8 when it did not use that layer)."""
    return _PAPER_DIMS.get(layer, 8)


# ------------------------------------------------------------------------------------------- specs


@dataclass(frozen=True)
class ModelSpec:
    """An architecture at a size: ``ModelSpec.parse("vgg16:0.25:64")``, ``"vgg16:1:224:nobn"``."""

    arch: str = "vgg16"
    width: float = 0.25
    input_size: int = 64
    batch_norm: bool = True
    num_classes: int = 2

    @classmethod
    def parse(cls, text: str) -> ModelSpec:
        parts = text.strip().split(":")
        if len(parts) not in (3, 4) or (len(parts) == 4 and parts[3] not in ("bn", "nobn")):
            raise ValueError(f"model spec {text!r} must be ARCH:WIDTH:SIZE[:bn|nobn], e.g. vgg16:0.25:64 or "
                             "vgg16:1:224:nobn")
        try:
            spec = cls(arch=parts[0], width=float(parts[1]), input_size=int(parts[2]),
                       batch_norm=(parts[3] == "bn") if len(parts) == 4 else True)
        except ValueError:
            raise ValueError(f"model spec {text!r}: WIDTH must be a number and SIZE an integer") from None
        spec.config()  # validates arch
        return spec

    def config(self) -> VGGConfig:
        cfg = VGGConfig(arch=self.arch, num_classes=self.num_classes, width=self.width,
                        input_size=self.input_size, batch_norm=self.batch_norm)
        from privsplit.models.vgg import ARCHITECTURES

        if cfg.arch not in ARCHITECTURES:
            raise ValueError(f"unknown architecture '{cfg.arch}'; choose one of {', '.join(ARCHITECTURES)}")
        return cfg

    def build(self) -> nn.Sequential:
        return build_model(self.config()).eval()

    @property
    def label(self) -> str:
        name = {"vgg16": "VGG-16", "vgg_s": "VGG-S"}.get(self.arch, self.arch)
        return f"{name} w{self.width:g} {self.input_size}px" + ("" if self.batch_norm else " (no BN)")

    @property
    def key(self) -> str:
        return f"{self.arch}-w{self.width:g}-{self.input_size}" + ("" if self.batch_norm else "-nobn")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


#: model sets of ``privsplit cost --preset``: CPU-sized (as trained here) and the paper's VGG-16 224x224
PRESETS: dict[str, tuple[ModelSpec, ...]] = {
    "cpu": (ModelSpec("vgg16", 0.25, 64), ModelSpec("vgg_s", 0.25, 48)),
    "paper": (ModelSpec("vgg16", 1.0, 224, batch_norm=False),),
}
PRESETS["all"] = PRESETS["cpu"] + PRESETS["paper"]


@dataclass(frozen=True)
class ClientSpec:
    """What runs on the device: the full model, or the extractor up to ``layer`` (+ reduction)."""

    model: ModelSpec
    layer: str | None = None
    embedding: str = "full"  # "full" | "simple" | "reduced"
    dim: int | None = None

    def __post_init__(self) -> None:
        if self.embedding not in ("full", "simple", "reduced"):
            raise ValueError(f"embedding must be full, simple or reduced, got {self.embedding!r}")
        if (self.layer is None) != (self.embedding == "full"):
            raise ValueError("the full model has no split layer; simple/reduced clients need one")
        if self.embedding == "reduced" and not self.dim:
            object.__setattr__(self, "dim", paper_dim(self.layer or ""))

    @property
    def name(self) -> str:
        if self.embedding == "full":
            return "full model"
        return f"{self.layer} {self.embedding}" + (f" ({self.dim})" if self.embedding == "reduced" else "")

    @property
    def key(self) -> str:
        if self.embedding == "full":
            return "full"
        return f"{self.layer}-{self.embedding}" + (str(self.dim) if self.embedding == "reduced" else "")

    def build(self) -> nn.Module:
        """The device module (eval mode, fresh random weights; honours ``torch.device`` contexts, e.g. meta).

        Clients are ``nn.Sequential(extractor, reduction-or-Identity)``, the layout of
        ``ClientBundle.extractor``; the full model is the model itself.
        """
        model = self.model.build()
        if self.layer is None:
            return model
        extractor, _ = split(model, at=self.layer)
        if self.embedding == "simple":
            return nn.Sequential(extractor, nn.Identity()).eval()
        from privsplit.defenses.reduction import build_reduction

        size = self.model.input_size
        with torch.no_grad():
            shape = list(extractor(torch.zeros(1, 3, size, size)).shape[1:])
        red = build_reduction({"kind": "pca", "dim": int(self.dim or 0), "feature_shape": shape, "hidden": None})
        return nn.Sequential(extractor, red.reduce).eval()

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model.to_dict(), "layer": self.layer, "embedding": self.embedding, "dim": self.dim}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ClientSpec:
        return cls(ModelSpec(**d["model"]), d.get("layer"), d.get("embedding", "full"), d.get("dim"))


def default_clients(model: ModelSpec, layers: Sequence[str] | None = None) -> list[ClientSpec]:
    """Full model, then ``simple`` and ``reduced`` (paper dims) at each layer (default: the paper's)."""
    layers = list(layers or DEFAULT_LAYERS.get(model.arch, ()))
    if not layers:
        raise ValueError(f"no default split layers for {model.arch}: pass layers")
    valid = split_points(model.build())
    bad = [la for la in layers if la not in valid]
    if bad:
        raise ValueError(f"{', '.join(bad)} not a split point of {model.label}; valid: {', '.join(valid)}")
    out = [ClientSpec(model)]
    for layer in layers:
        out += [ClientSpec(model, layer, "simple"), ClientSpec(model, layer, "reduced", paper_dim(layer))]
    return out


# ------------------------------------------------------------------------------------- FLOPs, bytes


def count_macs(module: nn.Module, input_shape: Sequence[int]) -> int:
    """Multiply-adds of conv and linear layers for one forward pass at ``input_shape`` (with batch axis).

    Conv: ``out.numel() * in_channels / groups * prod(kernel)``; linear: ``out.numel() * in_features``.
    Biases, BN, ReLU, pooling and LRN are not counted (they are < 1% for these nets).
    """
    total = 0

    def conv_hook(m: nn.modules.conv._ConvNd, _inp: Any, out: torch.Tensor) -> None:
        nonlocal total
        total += out.numel() * (m.in_channels // m.groups) * math.prod(m.kernel_size)

    def linear_hook(m: nn.Linear, _inp: Any, out: torch.Tensor) -> None:
        nonlocal total
        total += out.numel() * m.in_features

    handles = []
    for m in module.modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    first = next(iter(module.parameters()), None)
    device = first.device if first is not None else torch.device("cpu")  # works on the meta device too
    try:
        was = module.training
        module.eval()
        with torch.no_grad():
            module(torch.zeros(*input_shape, device=device))
        module.train(was)
    finally:
        for h in handles:
            h.remove()
    return int(total)


def count_flops(module: nn.Module, input_shape: Sequence[int]) -> int:
    """FLOPs as counted by ``torch.utils.flop_counter.FlopCounterMode`` (2 per multiply-add of conv/matmul)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        module.eval()(torch.zeros(*input_shape))
    return int(counter.get_total_flops())


def upload_bytes(feature_shape: Sequence[int], itemsize: int = 4) -> int:
    """Bytes one image's features take on the wire as raw float32 (``prod(shape) * 4``)."""
    return int(math.prod(int(s) for s in feature_shape)) * int(itemsize)


# ------------------------------------------------------------------------------------- measuring


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


# ------------------------------------------------------------------------------------- partition


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
    model = model.eval()
    priv = _privacy_for(privacy, arch)
    points = split_points(model)
    x = torch.zeros(1, 3, input_size, input_size)
    per_point: dict[str, np.ndarray] = {}
    per_point_cpu: dict[str, np.ndarray] = {}
    shapes: dict[str, list[int]] = {}
    macs: dict[str, int] = {}
    with _single_thread(), torch.inference_mode():
        if isinstance(model, nn.Sequential):
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
            h, total = x, 0
            for j, (name, layer) in enumerate(children):
                total += count_macs(layer, tuple(h.shape))
                h = layer(h)
                if name in points:
                    per_point[name], shapes[name], macs[name] = cum[:, j], list(h.shape[1:]), total
                    per_point_cpu[name] = cum_cpu[:, j]
        else:
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
                macs[name] = count_macs(ext, (1, 3, input_size, input_size))
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


# ------------------------------------------------------------------------------------------- driver


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
