"""Server bundle -> ONNX in a Triton model repository (``<repo>/<model>/<version>/model.onnx`` +
``config.pbtxt``): reconstruction + analyzer + softmax, plus a string ``label`` output (see :mod:`privsplit.edge.export`)."""
from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from privsplit.defenses.bundles import ServerBundle
from privsplit.edge.onnx_export import (
    DEFAULT_ATOL,
    ExportError,
    ExportReport,
    _as_server,
    _fail,
    _ort_session,
    _require_onnx,
    _samples,
    export_module_onnx,
)

__all__ = ["export_server_onnx", "triton_config"]


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


def _server_outputs(bundle: ServerBundle) -> list[dict[str, Any]]:
    """The bundle's declared outputs; ``ExportError`` unless they are (probabilities FP32, label BYTES)."""
    outputs = bundle.manifest.get("outputs") or [{"name": "probabilities", "datatype": "FP32",
                                                   "shape": [len(bundle.classes)]},
                                                  {"name": "label", "datatype": "BYTES", "shape": [1]}]
    if len(outputs) != 2 or outputs[0]["datatype"] != "FP32" or outputs[1]["datatype"] != "BYTES":
        raise ExportError(f"server bundle declares outputs {[o['name'] for o in outputs]}; this exporter writes "
                          "(probabilities FP32, label BYTES)")
    return outputs


def _verify_server_onnx(path: Path, module: nn.Module, bundle: ServerBundle, out_names: Sequence[str], *,
                        atol: float, batch_sizes: Sequence[int], seed: int) -> dict[int, float]:
    """Max |ONNX - torch| probability per batch size of the written file; ``ExportError`` (and the file
    removed) when a label differs from torch's arg-max where that is not a near tie."""
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
    return diffs


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
    outputs = _server_outputs(bundle)
    out_names = [o["name"] for o in outputs]
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
    diffs = _verify_server_onnx(path, module, bundle, out_names, atol=atol, batch_sizes=batch_sizes, seed=seed)
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
