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

This module is the dispatch (:func:`export_bundle`) and the facade; the parts live in
:mod:`privsplit.edge.onnx_export` (report, verification, client ONNX), :mod:`privsplit.edge.triton_export`
and :mod:`privsplit.edge.executorch_export`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from privsplit.defenses.bundles import BundleError
from privsplit.edge.executorch_export import _ET_HINT, executorch_available, export_client_executorch
from privsplit.edge.onnx_export import (
    CLIENT_INPUT,
    CLIENT_OUTPUT,
    DEFAULT_ATOL,
    ExportError,
    ExportReport,
    export_client_onnx,
    export_module_onnx,
    verify_onnx,
)
from privsplit.edge.triton_export import export_server_onnx, triton_config
from privsplit.errors import MissingDependency

__all__ = [
    "ExportError", "MissingDependency", "ExportReport", "bundle_side", "export_bundle", "export_client_onnx",
    "export_server_onnx", "export_client_executorch", "export_module_onnx", "verify_onnx", "triton_config",
    "executorch_available", "CLIENT_INPUT", "CLIENT_OUTPUT", "DEFAULT_ATOL",
]


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
