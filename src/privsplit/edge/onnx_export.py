"""The ONNX core every export shares: :class:`ExportReport`, :class:`ExportError`, exporting a module to one
verified ONNX file (:func:`export_module_onnx`, :func:`verify_onnx`) and the client bundle's ONNX export
(see :mod:`privsplit.edge.export` for the formats)."""
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

from privsplit.errors import MissingDependency
from privsplit.defenses.bundles import (
    ClientBundle,
    ServerBundle,
    load_client_bundle,
    load_server_bundle,
)

__all__ = ["ExportError", "ExportReport", "export_module_onnx", "verify_onnx", "export_client_onnx",
           "CLIENT_INPUT", "CLIENT_OUTPUT", "DEFAULT_ATOL"]

CLIENT_INPUT = "image"
CLIENT_OUTPUT = "features"
DEFAULT_ATOL = 1e-4


class ExportError(ValueError):
    """An export that cannot be done or that does not reproduce torch within tolerance."""


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
        """JSON-able form (paths as strings) for ``privsplit export --json`` and logs."""
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
        raise MissingDependency(f"ONNX export needs onnx, onnxscript and onnxruntime ({exc.name} is missing)",
                                extra="edge", packages=("onnx", "onnxscript", "onnxruntime")) from None


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


