"""privsplit.edge: export bundles for devices and servers, run the extractor with ONNX Runtime, measure cost.

* :mod:`privsplit.edge.export` -- client bundle -> ONNX / ExecuTorch file, server bundle -> ONNX in a
  Triton model repository; every export is verified against torch (``privsplit export``).
* :mod:`privsplit.edge.onnx_runtime` -- :class:`OnnxExtractor`, the client runtime's ``extractor="onnx"``.
  The targets: :mod:`~privsplit.edge.triton_export`, :mod:`~privsplit.edge.executorch_export`.
* :mod:`privsplit.edge.cost` -- file size, load time, memory, latency, FLOPs and upload bytes per split
  (the paper's Figs. 13-15) and the partition view (``privsplit cost``), built from
  :mod:`~privsplit.edge.specs`, :mod:`~privsplit.edge.flops`, :mod:`~privsplit.edge.measure` and
  :mod:`~privsplit.edge.partition`; :mod:`~privsplit.edge.cost_report` writes its tables and figures.

Names are imported lazily, so ``import privsplit.edge.onnx_runtime`` on a device pulls in neither torch's
exporter nor the benchmark.
"""
from __future__ import annotations

from privsplit.lazy import lazy_exports

_LAZY = {
    "export": ("ExportError", "MissingDependency", "ExportReport", "bundle_side", "export_bundle",
               "export_client_onnx", "export_server_onnx", "export_client_executorch", "export_module_onnx",
               "verify_onnx", "triton_config", "executorch_available"),
    "onnx_runtime": ("OnnxExtractor", "make_session", "onnxruntime_available"),
    "specs": ("ModelSpec", "ClientSpec", "PRESETS", "default_clients"),
    "flops": ("count_macs", "count_flops", "upload_bytes"),
    "measure": ("measure_client",),
    "partition": ("partition_table",),
    "cost": ("run_cost", "render", "acceptance"),
}
_WHERE = {name: mod for mod, names in _LAZY.items() for name in names}

__all__ = sorted(_WHERE)
__getattr__, __dir__ = lazy_exports(__name__, {name: f".{mod}" for name, mod in _WHERE.items()})
