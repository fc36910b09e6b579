"""Client bundle -> ExecuTorch ``.pte`` lowered to XNNPACK, verified with the ExecuTorch runtime.

Needs ``executorch`` (e.g. ``pip install executorch==1.5.1`` for torch 2.13; check with ``pip install --dry-run``
that it keeps your torch).
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from privsplit.defenses.bundles import ClientBundle
from privsplit.edge.onnx_export import (
    CLIENT_INPUT,
    CLIENT_OUTPUT,
    DEFAULT_ATOL,
    ExportError,
    ExportReport,
    _as_client,
    _batch_dim,
    _client_metadata,
    _fail,
    _quiet_export,
    _samples,
)
from privsplit.errors import MissingDependency

__all__ = ["export_client_executorch", "executorch_available"]

_ET_HINT = ("pip install executorch==1.5.1  (the release built for torch 2.13; run `pip install --dry-run "
            "executorch==1.5.1` first and make sure it does not replace your torch)")


def executorch_available() -> bool:
    """True when ``executorch`` (with its XNNPACK backend) imports."""
    try:
        import executorch.exir  # noqa: F401
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner  # noqa: F401
    except Exception:  # noqa: BLE001 - any import failure means "not usable here"
        return False
    return True



def export_client_executorch(bundle: ClientBundle | str | Path, out: str | Path, *, atol: float = DEFAULT_ATOL,
                             batch_sizes: Sequence[int] = (1, 3), max_batch: int = 64, seed: int = 0) -> ExportReport:
    """Client bundle -> ExecuTorch ``.pte`` (XNNPACK-delegated), dynamic batch ``1..max_batch``, verified."""
    if not executorch_available():
        raise MissingDependency("--format executorch needs the executorch package", hint=_ET_HINT)
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
