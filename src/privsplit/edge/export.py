"""Export bundles for the edge (ONNX, ExecuTorch) and the cloud (ONNX in a Triton model repository).

Client bundle -> one self-contained ``.onnx`` file (weights inside, no external data) computing

    image (N, 3, S, S) float32, normalised as the bundle's ``preprocess``  ->  features (N, *feature_shape)

i.e. extractor layers followed by the reduction (for reduced embeddings). The noise is *not* part of
the graph: the client runtime draws it (from the OS CSPRNG) and adds it after the extractor, so no
seed or noise sample is ever baked into a file. The batch axis is dynamic (named ``batch``).

Server bundle -> ``<repo>/<model_name>/<version>/model.onnx`` + ``<repo>/<model_name>/config.pbtxt``:

    features (N, *input_shape) float32  ->  probabilities (N, C) float32, label (N, 1) string

(reconstruction + remaining layers + softmax; ``label`` is the class name of the arg-max, added as
ONNX ``ArgMax`` + ``Gather`` over a string constant), the same tensors as the server bundle's
Open-Inference-Protocol description, so Triton (and KServe's Triton runtime) can serve the repository
as it is, with dynamic batching.

Every export is checked: the file is run with ONNX Runtime (or the ExecuTorch runtime) on seeded
sample inputs at several batch sizes and compared with torch; a max abs difference above ``atol``
(default 1e-4) raises :class:`ExportError` and deletes the file.

``--format executorch`` writes a ``.pte`` program lowered to XNNPACK (needs ``executorch``, e.g.
``pip install executorch==1.5.1`` for torch 2.13; check with ``pip install --dry-run`` that it keeps
your torch). ONNX needs the ``edge`` extra: ``pip install 'privsplit[edge]'``.
"""
from __future__ import annotations

import contextlib
import json
import logging
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from privsplit.defenses.bundles import (
    BundleError,
    ClientBundle,
    ServerBundle,
    load_client_bundle,
    load_server_bundle,
)

__all__ = [
    "ExportError", "MissingDependency", "ExportReport", "bundle_side", "export_bundle", "export_client_onnx",
    "export_server_onnx", "export_client_executorch", "export_module_onnx", "verify_onnx", "triton_config",
    "executorch_available", "CLIENT_INPUT", "CLIENT_OUTPUT", "DEFAULT_ATOL",
]

CLIENT_INPUT = "image"
CLIENT_OUTPUT = "features"
DEFAULT_ATOL = 1e-4
_ONNX_HINT = "pip install 'privsplit[edge]'  (or: pip install onnx onnxscript onnxruntime)"
_ET_HINT = ("pip install executorch==1.5.1  (the release built for torch 2.13; run `pip install --dry-run "
            "executorch==1.5.1` first and make sure it does not replace your torch)")


class ExportError(ValueError):
    """An export that cannot be done or that does not reproduce torch within tolerance."""


class MissingDependency(ExportError):
    """An optional package (onnx/onnxruntime, executorch) is not installed; the message says how to get it."""


@dataclass
class ExportReport:
    """What was written and how well it matches torch."""

    path: Path                      # the model file (.onnx / .pte)
    format: str                     # "onnx" | "executorch"
    side: str                       # "client" | "server" | "module"
    model_name: str
    input_name: str
    input_shape: list[int]          # per sample (no batch axis)
    outputs: dict[str, list[int]]   # name -> per-sample shape
    max_abs_diff: float             # over all checked batch sizes (and outputs)
    diffs: dict[int, float]         # batch size -> max abs diff
    bytes: int
    triton_config: Path | None = None
    metadata: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = str(self.path)
        d["triton_config"] = None if self.triton_config is None else str(self.triton_config)
        d["diffs"] = {str(k): v for k, v in self.diffs.items()}
        return d


# ------------------------------------------------------------------------------------------ helpers


def _require_onnx() -> None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as exc:
        raise MissingDependency(f"ONNX export needs onnx, onnxscript and onnxruntime ({exc.name} is missing): "
                                f"{_ONNX_HINT}") from None


def executorch_available() -> bool:
    """True when ``executorch`` (with its XNNPACK backend) imports."""
    try:
        import executorch.exir  # noqa: F401
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner  # noqa: F401
    except Exception:  # noqa: BLE001 - any import failure means "not usable here"
        return False
    return True


@contextlib.contextmanager
def _quiet_export() -> Iterator[None]:
    """Silence the exporter's chatter (progress lines, 'torchvision is not installed' warnings)."""
    names = ["torch.onnx", "torch.onnx._internal.exporter._registration", "torch._export", "torch.export",
             "torch._dynamo", "torch.utils._pytree", "onnxscript"]
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lvl in zip(loggers, levels):
            lg.setLevel(lvl)


def _samples(shape: Sequence[int], batch: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed + 7919 * batch)
    return torch.randn((batch, *shape), generator=g, dtype=torch.float32)


def _batch_dim(max_batch: int | None = None) -> Any:
    return torch.export.Dim("batch", min=1, max=max_batch) if max_batch else torch.export.Dim("batch", min=1)


def _per_sample_shape(module: nn.Module, shape: Sequence[int]) -> list[int]:
    with torch.no_grad():
        return list(module(torch.zeros(2, *shape)).shape[1:])


def _ort_session(path: Path, threads: int = 0) -> Any:
    from privsplit.edge.onnx_runtime import make_session

    return make_session(path, threads=threads)


def _fail(path: Path, what: str, diffs: dict[int, float], atol: float) -> None:
    with contextlib.suppress(OSError):
        path.unlink()
    raise ExportError(f"{what} does not reproduce torch: max abs diff {max(diffs.values()):.3g} > {atol:g} "
                      f"(per batch size: {', '.join(f'{b}: {d:.3g}' for b, d in diffs.items())}); "
                      f"the file was deleted so it cannot be deployed by mistake")


# --------------------------------------------------------------------------------------------- ONNX


def export_module_onnx(module: nn.Module, input_shape: Sequence[int], out: str | Path, *,
                       input_name: str = CLIENT_INPUT, output_name: str = CLIENT_OUTPUT,
                       metadata: dict[str, str] | None = None, atol: float = DEFAULT_ATOL,
                       batch_sizes: Sequence[int] = (1, 3), seed: int = 0, opset: int | None = None) -> ExportReport:
    """Export ``module`` (one float32 input ``(N, *input_shape)`` -> one output) to a single ONNX file.

    The batch axis is dynamic. The file is verified with ONNX Runtime at ``batch_sizes`` against torch.
    """
    _require_onnx()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    module = module.eval()
    example = (_samples(input_shape, 2, seed),)
    kwargs: dict[str, Any] = {"opset_version": opset} if opset else {}
    with _quiet_export(), torch.no_grad():
        program = torch.onnx.export(module, example, dynamo=True, input_names=[input_name],
                                    output_names=[output_name], dynamic_shapes=({0: _batch_dim()},),
                                    external_data=False, verbose=False, **kwargs)
        if program is None:  # pragma: no cover - only the legacy exporter returns None
            raise ExportError("torch.onnx.export returned no program; torch >= 2.6 with dynamo=True is required")
        for k, v in (metadata or {}).items():
            program.model.metadata_props[k] = str(v)
        program.save(str(out), external_data=False)
    diffs = verify_onnx(out, module, input_shape, batch_sizes=batch_sizes, seed=seed, input_name=input_name)
    if max(diffs.values()) > atol:
        _fail(out, f"ONNX export {out}", diffs, atol)
    return ExportReport(path=out, format="onnx", side="module", model_name=out.stem, input_name=input_name,
                        input_shape=list(input_shape),
                        outputs={output_name: _per_sample_shape(module, input_shape)},
                        max_abs_diff=max(diffs.values()), diffs=diffs, bytes=out.stat().st_size,
                        metadata={k: str(v) for k, v in (metadata or {}).items()})


def verify_onnx(path: str | Path, module: nn.Module, input_shape: Sequence[int], *,
                batch_sizes: Sequence[int] = (1, 3), seed: int = 0, input_name: str | None = None,
                output: int = 0) -> dict[int, float]:
    """Max abs difference between ONNX Runtime and torch on seeded inputs, per batch size."""
    session = _ort_session(Path(path))
    name = input_name or session.get_inputs()[0].name
    diffs: dict[int, float] = {}
    for b in batch_sizes:
        x = _samples(input_shape, b, seed)
        with torch.no_grad():
            ref = module.eval()(x)
        got = session.run(None, {name: x.numpy()})[output]
        if tuple(got.shape) != tuple(ref.shape):
            raise ExportError(f"ONNX output shape {tuple(got.shape)} != torch {tuple(ref.shape)} at batch {b}")
        diffs[int(b)] = float(np.max(np.abs(got - ref.numpy()))) if got.size else 0.0
    return diffs


def _client_metadata(bundle: ClientBundle) -> dict[str, str]:
    man = bundle.manifest
    return {
        "privsplit.format": "privsplit.client-onnx/1",
        "privsplit.embedding_id": bundle.embedding_id,
        "privsplit.model_name": bundle.model_name,
        "privsplit.kind": bundle.kind,
        "privsplit.layer": bundle.layer,
        "privsplit.feature_shape": json.dumps(bundle.feature_shape),
        "privsplit.preprocess": json.dumps(bundle.preprocess.to_dict()),
        "privsplit.tensors_sha256": str(man.get("tensors_sha256", "")),
        "privsplit.noise": "added by the client runtime after this graph (not included)",
    }


def _as_client(bundle: ClientBundle | str | Path) -> ClientBundle:
    return bundle if isinstance(bundle, ClientBundle) else load_client_bundle(bundle)


def _as_server(bundle: ServerBundle | str | Path) -> ServerBundle:
    return bundle if isinstance(bundle, ServerBundle) else load_server_bundle(bundle)


def export_client_onnx(bundle: ClientBundle | str | Path, out: str | Path, *, atol: float = DEFAULT_ATOL,
                       batch_sizes: Sequence[int] = (1, 3), seed: int = 0, opset: int | None = None) -> ExportReport:
    """Client bundle -> single-file ONNX ``image -> features`` (extractor + reduction, no noise)."""
    bundle = _as_client(bundle)
    size = bundle.preprocess.size
    rep = export_module_onnx(bundle.extractor, (3, size, size), out, input_name=CLIENT_INPUT,
                             output_name=CLIENT_OUTPUT, metadata=_client_metadata(bundle), atol=atol,
                             batch_sizes=batch_sizes, seed=seed, opset=opset)
    if rep.outputs[CLIENT_OUTPUT] != list(bundle.feature_shape):
        raise ExportError(f"exported features have shape {rep.outputs[CLIENT_OUTPUT]} but the bundle declares "
                          f"{bundle.feature_shape}")
    rep.side, rep.model_name = "client", bundle.model_name
    return rep


class _Probabilities(nn.Module):
    """Server graph body: features -> reconstruction + analyzer -> softmax."""

    def __init__(self, analyzer: nn.Module) -> None:
        super().__init__()
        self.analyzer = analyzer

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.analyzer(features), dim=1)


def _add_label_output(path: Path, probabilities: str, label: str, classes: Sequence[str]) -> None:
    """Append ``label = classes[argmax(probabilities, axis=1)]`` (N, 1) string output to an ONNX file."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(path))
    g = model.graph
    g.initializer.append(numpy_helper.from_array(np.array(list(classes), dtype=object), "privsplit_classes"))
    g.node.extend([
        helper.make_node("ArgMax", [probabilities], ["privsplit_argmax"], axis=1, keepdims=1, name="privsplit_argmax"),
        helper.make_node("Gather", ["privsplit_classes", "privsplit_argmax"], [label], axis=0, name="privsplit_label"),
    ])
    g.output.append(helper.make_value_info(label, helper.make_tensor_type_proto(TensorProto.STRING, ["batch", 1])))
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


_TRITON_TYPES = {"FP32": "TYPE_FP32", "FP16": "TYPE_FP16", "FP64": "TYPE_FP64", "INT64": "TYPE_INT64",
                 "INT32": "TYPE_INT32", "UINT8": "TYPE_UINT8", "BOOL": "TYPE_BOOL", "BYTES": "TYPE_STRING"}


def triton_config(name: str, *, input_name: str, input_dims: Sequence[int], outputs: Sequence[tuple[str, str, Sequence[int]]],
                  max_batch_size: int = 64, input_datatype: str = "FP32", instance_kind: str = "KIND_CPU",
                  instance_count: int = 1, max_queue_delay_us: int = 100) -> str:
    """A Triton ``config.pbtxt`` for an ONNX Runtime model with a batch axis and dynamic batching.

    ``outputs`` are ``(name, datatype, dims)`` with Open-Inference-Protocol datatypes (``FP32``, ``BYTES``...);
    dims exclude the batch axis (Triton adds it because ``max_batch_size > 0``).
    """
    if max_batch_size < 1:
        raise ValueError(f"max_batch_size must be >= 1 for dynamic batching, got {max_batch_size}")
    if instance_kind not in ("KIND_CPU", "KIND_GPU", "KIND_AUTO"):
        raise ValueError(f"instance_kind must be KIND_CPU, KIND_GPU or KIND_AUTO, got {instance_kind!r}")

    def dtype(dt: str) -> str:
        if dt not in _TRITON_TYPES:
            raise ValueError(f"datatype {dt!r} has no Triton equivalent here; use one of {', '.join(_TRITON_TYPES)}")
        return _TRITON_TYPES[dt]

    def dims(d: Sequence[int]) -> str:
        return "[ " + ", ".join(str(int(v)) for v in d) + " ]"

    def tensor(n: str, dt: str, d: Sequence[int]) -> str:
        return f"  {{\n    name: \"{n}\"\n    data_type: {dtype(dt)}\n    dims: {dims(d)}\n  }}"

    outs = ",\n".join(tensor(n, dt, d) for n, dt, d in outputs)
    return (f"name: \"{name}\"\n"
            f"platform: \"onnxruntime_onnx\"\n"
            f"max_batch_size: {int(max_batch_size)}\n"
            f"input [\n{tensor(input_name, input_datatype, input_dims)}\n]\n"
            f"output [\n{outs}\n]\n"
            f"dynamic_batching {{\n  max_queue_delay_microseconds: {int(max_queue_delay_us)}\n}}\n"
            f"instance_group [\n  {{\n    count: {int(instance_count)}\n    kind: {instance_kind}\n  }}\n]\n")


def export_server_onnx(bundle: ServerBundle | str | Path, repo: str | Path, *, name: str | None = None,
                       version: int = 1, max_batch_size: int = 64, instance_kind: str = "KIND_CPU",
                       atol: float = DEFAULT_ATOL, batch_sizes: Sequence[int] = (1, 3), seed: int = 0,
                       opset: int | None = None) -> ExportReport:
    """Server bundle -> Triton model repository ``repo/<name>/<version>/model.onnx`` + ``config.pbtxt``.

    ``name`` defaults to the bundle's ``model_name``. Outputs are the bundle's declared outputs
    (``probabilities`` FP32 ``[C]``, ``label`` BYTES ``[1]``).
    """
    _require_onnx()
    bundle = _as_server(bundle)
    name = name or bundle.model_name
    if not name or "/" in name or name.startswith("."):
        raise ExportError(f"invalid Triton model name {name!r}")
    outputs = bundle.manifest.get("outputs") or [{"name": "probabilities", "datatype": "FP32",
                                                   "shape": [len(bundle.classes)]},
                                                  {"name": "label", "datatype": "BYTES", "shape": [1]}]
    out_names = [o["name"] for o in outputs]
    if len(outputs) != 2 or outputs[0]["datatype"] != "FP32" or outputs[1]["datatype"] != "BYTES":
        raise ExportError(f"server bundle declares outputs {out_names}; this exporter writes (probabilities FP32, "
                          "label BYTES)")
    model_dir = Path(repo) / name
    path = model_dir / str(int(version)) / "model.onnx"
    module = _Probabilities(bundle.analyzer).eval()
    meta = {"privsplit.format": "privsplit.server-onnx/1", "privsplit.embedding_id": bundle.embedding_id,
            "privsplit.model_name": bundle.model_name, "privsplit.kind": bundle.kind,
            "privsplit.layer": bundle.layer, "privsplit.classes": json.dumps(bundle.classes),
            "privsplit.primary": bundle.primary,
            "privsplit.tensors_sha256": str(bundle.manifest.get("tensors_sha256", ""))}
    rep = export_module_onnx(module, bundle.input_shape, path, input_name=bundle.input_name,
                             output_name=out_names[0], metadata=meta, atol=atol, batch_sizes=batch_sizes,
                             seed=seed, opset=opset)
    _add_label_output(path, out_names[0], out_names[1], bundle.classes)
    # re-verify the final file: probabilities within atol, labels = torch arg-max (where not a near tie)
    session = _ort_session(path)
    diffs: dict[int, float] = {}
    for b in batch_sizes:
        x = _samples(bundle.input_shape, b, seed)
        with torch.no_grad():
            ref = module(x).numpy()
        probs, labels = session.run(out_names, {bundle.input_name: x.numpy()})
        diffs[int(b)] = float(np.max(np.abs(probs - ref)))
        top2 = np.sort(ref, axis=1)[:, -2:] if ref.shape[1] > 1 else np.zeros((len(ref), 2))
        clear = (top2[:, 1] - top2[:, 0]) > 10 * atol
        want = np.array(bundle.classes, dtype=object)[ref.argmax(1)]
        got = np.array([v.decode() if isinstance(v, bytes) else v for v in labels[:, 0]], dtype=object)
        if labels.shape != (b, 1) or not np.array_equal(got[clear], want[clear]):
            with contextlib.suppress(OSError):
                path.unlink()
            raise ExportError(f"ONNX labels {got.tolist()} differ from torch {want.tolist()} at batch {b}")
    if max(diffs.values()) > atol:
        _fail(path, f"server ONNX {path}", diffs, atol)
    config = model_dir / "config.pbtxt"
    config.write_text(triton_config(
        name, input_name=bundle.input_name, input_dims=bundle.input_shape,
        outputs=[(o["name"], o["datatype"], o["shape"]) for o in outputs],
        max_batch_size=max_batch_size, instance_kind=instance_kind))
    rep.side, rep.model_name, rep.triton_config = "server", name, config
    rep.outputs = {o["name"]: list(o["shape"]) for o in outputs}
    rep.max_abs_diff, rep.diffs, rep.bytes = max(diffs.values()), diffs, path.stat().st_size
    return rep


# --------------------------------------------------------------------------------------- ExecuTorch


def export_client_executorch(bundle: ClientBundle | str | Path, out: str | Path, *, atol: float = DEFAULT_ATOL,
                             batch_sizes: Sequence[int] = (1, 3), max_batch: int = 64, seed: int = 0) -> ExportReport:
    """Client bundle -> ExecuTorch ``.pte`` (XNNPACK-delegated), dynamic batch ``1..max_batch``, verified."""
    if not executorch_available():
        raise MissingDependency(f"--format executorch needs the executorch package: {_ET_HINT}")
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    bundle = _as_client(bundle)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    size = bundle.preprocess.size
    shape = (3, size, size)
    module = bundle.extractor.eval()
    if max(batch_sizes) > max_batch:
        raise ExportError(f"batch sizes {list(batch_sizes)} exceed max_batch={max_batch}")
    with _quiet_export(), torch.no_grad():
        ep = torch.export.export(module, (_samples(shape, 2, seed),), dynamic_shapes=({0: _batch_dim(max_batch)},))
        program = to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()]).to_executorch()
    out.write_bytes(program.buffer)
    diffs = _verify_pte(out, module, shape, batch_sizes=batch_sizes, seed=seed)
    if max(diffs.values()) > atol:
        _fail(out, f"ExecuTorch export {out}", diffs, atol)
    return ExportReport(path=out, format="executorch", side="client", model_name=bundle.model_name,
                        input_name=CLIENT_INPUT, input_shape=list(shape),
                        outputs={CLIENT_OUTPUT: list(bundle.feature_shape)}, max_abs_diff=max(diffs.values()),
                        diffs=diffs, bytes=out.stat().st_size, metadata=_client_metadata(bundle))


def _verify_pte(path: Path, module: nn.Module, shape: Sequence[int], *, batch_sizes: Sequence[int],
                seed: int) -> dict[int, float]:
    from executorch.runtime import Runtime

    method = Runtime.get().load_program(str(path)).load_method("forward")
    diffs: dict[int, float] = {}
    for b in batch_sizes:
        x = _samples(shape, b, seed)
        with torch.no_grad():
            ref = module(x)
        got = method.execute([x])[0]
        if tuple(got.shape) != tuple(ref.shape):
            raise ExportError(f"ExecuTorch output shape {tuple(got.shape)} != torch {tuple(ref.shape)} at batch {b}")
        diffs[int(b)] = float((got - ref).abs().max())
    return diffs


# ------------------------------------------------------------------------------------------ dispatch


def bundle_side(folder: str | Path) -> str:
    """``"client"`` or ``"server"`` for a bundle folder; a clear error for anything else."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"bundle folder not found: {folder}")
    sides = [s for s in ("client", "server") if (folder / f"{s}.json").exists()]
    if len(sides) == 1:
        return sides[0]
    subs = [s for s in ("client", "server") if (folder / s / f"{s}.json").exists()]
    if subs:
        raise BundleError(f"{folder} holds {' and '.join(f'{s}/' for s in subs)} bundles: export each one, "
                          f"e.g. `privsplit export {folder / subs[0]} ...`")
    raise BundleError(f"{folder} is not a privsplit bundle (no client.json or server.json)")


def export_bundle(folder: str | Path, out: str | Path, *, format: str = "onnx", **options: Any) -> ExportReport:
    """Export a client bundle (``out`` = model file) or a server bundle (``out`` = Triton repository folder)."""
    side = bundle_side(folder)
    if format not in ("onnx", "executorch"):
        raise ExportError(f"unknown format {format!r}: use onnx or executorch")
    if side == "server":
        if format != "onnx":
            raise ExportError("the server bundle runs in the cloud: export it with --format onnx (Triton repository)")
        return export_server_onnx(folder, out, **options)
    server_only = {"name", "version", "max_batch_size", "instance_kind"}
    opts = {k: v for k, v in options.items() if k not in server_only}
    if format == "executorch":
        return export_client_executorch(folder, out, **opts)
    return export_client_onnx(folder, out, **opts)
