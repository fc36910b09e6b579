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

This module holds the shared report/verification pieces, the client ONNX export and the dispatch;
the targets live in :mod:`privsplit.edge.triton_export` and :mod:`privsplit.edge.executorch_export`.
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

from privsplit.errors import MissingDependency
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
_ET_HINT = ("pip install executorch==1.5.1  (the release built for torch 2.13; run `pip install --dry-run "
            "executorch==1.5.1` first and make sure it does not replace your torch)")


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
        if not executorch_available():
            raise MissingDependency("--format executorch needs the executorch package", hint=_ET_HINT)
        return export_client_executorch(folder, out, **opts)
    return export_client_onnx(folder, out, **opts)


# the targets, after everything they import from here is defined
from privsplit.edge.executorch_export import export_client_executorch  # noqa: E402
from privsplit.edge.triton_export import export_server_onnx, triton_config  # noqa: E402
