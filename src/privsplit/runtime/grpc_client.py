"""The gRPC transport of :class:`~privsplit.runtime.client.Client` (``protocol="grpc"``).

Same contract as the REST transport: codes that mean "the request is wrong" (INVALID_ARGUMENT,
NOT_FOUND, UNAUTHENTICATED, FAILED_PRECONDITION, RESOURCE_EXHAUSTED, ...) raise
:class:`~privsplit.runtime.client.ClientError` at once, carrying the HTTP status of the same outcome
(400, 404, 401, 409, 413); UNAVAILABLE, INTERNAL, UNKNOWN and DEADLINE_EXCEEDED are retried with
the same exponential backoff, every attempt carrying the same request id (the server answers a
retry from its idempotency cache). Needs the ``grpc`` extra.
"""
from __future__ import annotations

import threading
import time
from typing import Any
from urllib.parse import urlsplit

import grpc

from privsplit.runtime.errors import ClientError, ServerUnavailable
from privsplit.runtime.grpc_wire import SERVICE_NAME, STATUS_CODES, pb, request_to_proto, response_from_proto
from privsplit.runtime.wire import InferRequest, InferResponse, ModelMetadata, TensorMetadata, WireError

__all__ = ["GrpcTransport", "parse_grpc_url"]

_HTTP = {code: status for status, code in STATUS_CODES.items()}
_RETRIED = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN,
            grpc.StatusCode.DEADLINE_EXCEEDED}


def parse_grpc_url(url: str) -> tuple[str, bool]:
    """``grpc://host:port`` (plain) or ``grpcs://host:port`` (TLS) or ``host:port`` -> (target, tls)."""
    parts = urlsplit(url if "://" in url else f"grpc://{url}")
    if parts.scheme not in ("grpc", "grpcs") or not parts.hostname or not parts.port:
        raise ValueError(f"a gRPC server address looks like grpc://host:port or grpcs://host:port, got {url!r}")
    return f"{parts.hostname}:{parts.port}", parts.scheme == "grpcs"


class GrpcTransport:
    """One channel (HTTP/2 multiplexes every thread's calls) and the six OIP calls with retries."""

    def __init__(self, url: str, *, api_key: str | None, timeout: float, retries: int, backoff: float,
                 root_certificates: bytes | None = None) -> None:
        self.target, tls = parse_grpc_url(url)
        self.url, self.timeout, self.retries, self.backoff = url, timeout, retries, backoff
        self.metadata = (("authorization", f"Bearer {api_key}"),) if api_key else ()
        self._lock = threading.Lock()
        self._tls = grpc.ssl_channel_credentials(root_certificates) if tls else None
        self._channel: Any = None

    def _rpc(self, name: str, serializer: Any, deserializer: Any) -> Any:
        with self._lock:
            if self._channel is None:
                # a local subchannel pool gives this Client its own connection, as a device has: gRPC
                # otherwise shares one among all channels of a process, putting every Client on one worker
                options = [("grpc.max_receive_message_length", 64 * 2**20), ("grpc.use_local_subchannel_pool", 1)]
                self._channel = (grpc.secure_channel(self.target, self._tls, options) if self._tls
                                 else grpc.insecure_channel(self.target, options))
            return self._channel.unary_unary(f"/{SERVICE_NAME}/{name}", request_serializer=serializer,
                                             response_deserializer=deserializer)

    def call(self, name: str, request: Any, response_type: Any, *, retries: int | None = None) -> Any:
        """One unary call with retries; ClientError / ServerUnavailable as the REST transport raises."""
        rpc = self._rpc(name, lambda m: m.SerializeToString(), response_type.FromString)
        retries = self.retries if retries is None else retries
        last = "no attempt made"
        for attempt in range(retries + 1):
            try:
                return rpc(request, timeout=self.timeout, metadata=self.metadata)
            except grpc.RpcError as exc:
                code, details = exc.code(), exc.details() or ""
                if code not in _RETRIED:
                    raise ClientError(f"{code.name}: {details}", _HTTP.get(code, 400)) from None
                last = f"{code.name}: {details}"
            if attempt < retries:
                time.sleep(self.backoff * 2 ** attempt)
        raise ServerUnavailable(f"gRPC {name} to {self.target} failed after {retries + 1} attempt(s); last: {last}")

    # ------------------------------------------------------------------ the OIP calls
    def infer(self, req: InferRequest, model_name: str) -> InferResponse:
        resp = self.call("ModelInfer", request_to_proto(req, model_name), pb.ModelInferResponse)
        try:
            return response_from_proto(resp)
        except WireError as exc:
            raise ClientError(f"malformed response from {self.target}: {exc}") from None

    def live(self) -> bool:
        return bool(self.call("ServerLive", pb.ServerLiveRequest(), pb.ServerLiveResponse, retries=0).live)

    def ready(self) -> bool:
        return bool(self.call("ServerReady", pb.ServerReadyRequest(), pb.ServerReadyResponse, retries=0).ready)

    def model_metadata(self, model_name: str) -> ModelMetadata:
        m = self.call("ModelMetadata", pb.ModelMetadataRequest(name=model_name), pb.ModelMetadataResponse)
        return ModelMetadata(name=m.name, platform=m.platform, versions=list(m.versions),
                             inputs=[TensorMetadata(t.name, t.datatype, list(t.shape)) for t in m.inputs],
                             outputs=[TensorMetadata(t.name, t.datatype, list(t.shape)) for t in m.outputs])

    def close(self) -> None:
        with self._lock:
            if self._channel is not None:
                self._channel.close()
            self._channel = None
