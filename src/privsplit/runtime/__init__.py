"""privsplit.runtime: the split deployed over the Open Inference Protocol v2 (REST and gRPC).

* :mod:`~privsplit.runtime.wire`: OIP v2 messages and all their (de)serialisation.
* :mod:`~privsplit.runtime.client`: :class:`Client` (device: extractor + noise, sends features).
* :mod:`~privsplit.runtime.server`: :func:`create_app` / :func:`serve` (cloud analyzer, FastAPI +
  uvicorn; needs the ``serve`` extra), built from :mod:`~privsplit.runtime.service` (the one
  :class:`AnalyzerService` every front end calls), :mod:`~privsplit.runtime.auth` (API keys) and
  :mod:`~privsplit.runtime.routes` (REST routes).
* :mod:`~privsplit.runtime.grpc_server` / :mod:`~privsplit.runtime.grpc_client`: OIP v2 over gRPC
  (the ``grpc`` extra); :mod:`~privsplit.runtime.grpc_native`: the same on a native HTTP/2 engine (the
  ``grpc-native`` extra); :mod:`~privsplit.runtime.workers`: several server processes on one port.
* :mod:`~privsplit.runtime.batching`, :mod:`~privsplit.runtime.metrics`: micro-batching, Prometheus.

Names are imported lazily, so a device that only uses the client never imports the web framework.
Nothing here imports training, attack or report code.
"""
from __future__ import annotations

from privsplit.lazy import lazy_exports

_EXPORTS = {
    "Client": "client", "ClientError": "client", "ServerUnavailable": "client", "Prediction": "client",
    "load_images": "client", "wait_ready": "client",
    "create_app": "server", "serve": "server", "ServerThread": "server",
    "AnalyzerService": "service", "ServiceError": "service", "load_api_keys": "auth", "KeyCheck": "auth",
    "GrpcServer": "grpc_server", "NativeGrpcServer": "grpc_native", "serve_workers": "workers",
    "MicroBatcher": "batching", "BatcherClosed": "batching",
    "ServiceMetrics": "metrics", "parse_prometheus": "metrics",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, {name: f".{mod}" for name, mod in _EXPORTS.items()})
