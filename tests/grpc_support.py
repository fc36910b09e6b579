"""Helpers for the gRPC tests: REST and gRPC front ends on one AnalyzerService, raw gRPC calls."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any

import pytest

grpc = pytest.importorskip("grpc", reason="the gRPC tests need the grpc extra: pip install -e '.[dev]'")

from runtime_support import running  # noqa: E402

from privsplit.runtime.grpc_server import grpc_server_class  # noqa: E402
from privsplit.runtime.service import AnalyzerService  # noqa: E402

try:
    import pygrpc_native  # noqa: F401
    _NATIVE = True
except ImportError:
    _NATIVE = False

#: every gRPC engine, for ``pytest.mark.parametrize`` / fixture ``params`` (native skips without its extra)
ENGINES = ["grpcio", pytest.param("native", marks=pytest.mark.skipif(
    not _NATIVE, reason="the native gRPC engine needs the grpc-native extra: pip install -e '.[dev]'"))]


@contextmanager
def running_both(bundle: Any, *, api_keys: list[str] | None = None, max_body_bytes: int = 64 * 1024,
                 max_delay_ms: float = 2.0, engine: str = "grpcio"):
    """(REST ServerThread, gRPC server of ``engine``) on 127.0.0.1 sharing one AnalyzerService; always stopped."""
    keys = list(api_keys or [])
    service = AnalyzerService(bundle, max_delay_ms=max_delay_ms)
    with running(service, api_keys=keys, max_body_bytes=max_body_bytes) as rest:
        with grpc_server_class(engine)(service, api_keys=keys, max_message_bytes=max_body_bytes) as g:
            yield rest, g


class RawGrpc:
    """Unary calls with hand-made bytes: returns (StatusCode, details, response bytes or None)."""

    def __init__(self, target: str) -> None:
        self.channel = grpc.insecure_channel(target)

    def __call__(self, method: str, body: bytes, metadata: tuple = ()) -> tuple[Any, str, bytes | None]:
        rpc = self.channel.unary_unary(f"/inference.GRPCInferenceService/{method}")
        try:
            return grpc.StatusCode.OK, "", rpc(body, timeout=10, metadata=metadata)
        except grpc.RpcError as exc:
            return exc.code(), exc.details() or "", None

    def close(self) -> None:
        self.channel.close()
