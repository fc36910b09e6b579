"""The gRPC front end of :class:`~privsplit.runtime.service.AnalyzerService` (OIP v2, KServe's
``grpc_predict_v2.proto``; ``tritonclient.grpc`` talks to it).

It shares everything with the REST front end through the one service object: validation, the
embedding-id check, micro-batching, the idempotency cache (keyed by request id and message digest),
metrics (``endpoint="grpc_<kind>"``, ``status`` the HTTP status of the same outcome, so one alert
rule covers both) and API keys (metadata ``authorization: Bearer KEY`` or ``x-api-key: KEY``; health
calls need none). Refusals map to status codes:

=====  ======================  ============================================
HTTP   gRPC                    when
=====  ======================  ============================================
400    INVALID_ARGUMENT        malformed message, wrong name/datatype/shape/size
401    UNAUTHENTICATED         missing or wrong API key
404    NOT_FOUND               unknown model or version
409    FAILED_PRECONDITION     client bundle from another embedding
413    RESOURCE_EXHAUSTED      message over ``max_message_bytes`` (refused by gRPC itself)
500    INTERNAL                analyzer failure (generic text; details in the log)
503    UNAVAILABLE             shutting down
=====  ======================  ============================================

:class:`GrpcServer` runs a ``grpc.aio`` server on its own thread and event loop (grpc.aio and
uvloop do not share a loop), so it sits beside uvicorn in one process. Needs the ``grpc`` extra.
"""
from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Hashable, Iterable
from typing import Any

import grpc

from privsplit.runtime.auth import KeyCheck
from privsplit.runtime.grpc_wire import SERVICE_NAME, STATUS_CODES, pb, request_from_proto, response_to_proto
from privsplit.runtime.service import INTERNAL_ERROR, AnalyzerService, ServiceError
from privsplit.runtime.wire import InferRequest, InferResponse, WireError

__all__ = ["GrpcServer", "GrpcCalls", "GRPC_ENGINES", "grpc_server_class", "STATUS_CODES", "SERVICE_NAME"]

Handler = Callable[[Any, Any], Awaitable[Any]]
log = logging.getLogger("privsplit.serve")


class GrpcCalls:
    """The six RPCs, whichever gRPC engine carries them (:class:`GrpcServer` or
    :class:`~privsplit.runtime.grpc_native.NativeGrpcServer`); each raises :class:`ServiceError`."""

    #: RPC name -> (request message type, metrics endpoint, needs an API key)
    RPCS: dict[str, tuple[Any, str, bool]] = {
        "ServerLive": (pb.ServerLiveRequest, "grpc_health", False),
        "ServerReady": (pb.ServerReadyRequest, "grpc_health", False),
        "ModelReady": (pb.ModelReadyRequest, "grpc_health", False),
        "ServerMetadata": (pb.ServerMetadataRequest, "grpc_server", True),
        "ModelMetadata": (pb.ModelMetadataRequest, "grpc_model", True),
        "ModelInfer": (pb.ModelInferRequest, "grpc_infer", True),
    }

    def __init__(self, service: AnalyzerService, check_key: KeyCheck) -> None:
        self.service, self.check_key = service, check_key

    def authorize(self, name: str, metadata: Iterable[tuple[str, Any]] | None) -> None:
        """401 unless ``name`` needs no key or the metadata pairs carry an accepted one."""
        if self.RPCS[name][2] and self.check_key.keys:
            self.check_key({k.lower(): v for k, v in metadata or ()})

    def answer(self, name: str, request: Any) -> Any:
        """The response message of every RPC but ModelInfer."""
        service = self.service
        if name == "ServerLive":
            return pb.ServerLiveResponse(live=True)
        if name == "ServerReady":
            return pb.ServerReadyResponse(ready=service.ready)
        if name == "ServerMetadata":
            meta = service.server_metadata()
            return pb.ServerMetadataResponse(name=meta.name, version=meta.version, extensions=meta.extensions)
        service.check_model(request.name, request.version)
        if name == "ModelReady":
            return pb.ModelReadyResponse(ready=service.ready)
        meta = service.metadata()
        tensors = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=meta.name, versions=meta.versions, platform=meta.platform,
            inputs=[tensors(name=t.name, datatype=t.datatype, shape=t.shape) for t in meta.inputs],
            outputs=[tensors(name=t.name, datatype=t.datatype, shape=t.shape) for t in meta.outputs])

    def parse_infer(self, body: bytes) -> tuple[InferRequest, Hashable | None]:
        """A ModelInfer message's request and its idempotency key (None without a request id)."""
        try:
            msg = pb.ModelInferRequest.FromString(body)
        except Exception:  # noqa: BLE001 - protobuf's DecodeError and friends
            raise ServiceError(400, "the message is not a valid inference.ModelInferRequest protobuf") from None
        self.service.check_model(msg.model_name, msg.model_version)
        try:
            req = request_from_proto(msg)
        except WireError as exc:
            raise ServiceError(400, str(exc)) from None
        return req, None if req.id is None else ("grpc", req.id, hashlib.sha256(body).digest())

    @staticmethod
    def encode(resp: InferResponse) -> bytes:
        return response_to_proto(resp).SerializeToString()


def _rpc(calls: GrpcCalls, name: str) -> Handler:
    """The grpc.aio handler of one RPC: ModelInfer takes raw bytes (parsed by :meth:`GrpcCalls.parse_infer`,
    so a garbled message is INVALID_ARGUMENT, not INTERNAL), the others their request message."""
    if name == "ModelInfer":
        async def infer(body: bytes, context: Any) -> bytes:
            calls.authorize(name, context.invocation_metadata())
            req, key = calls.parse_infer(body)
            return await calls.service.infer_encoded(req, key, calls.encode)
        return infer

    async def unary(request: Any, context: Any) -> Any:
        calls.authorize(name, context.invocation_metadata())
        return calls.answer(name, request)
    return unary


def _wrap(rpc: Handler, endpoint: str, metrics: Any) -> Handler:
    """Time and count the call; a :class:`ServiceError` becomes its status code and message."""

    @functools.wraps(rpc)
    async def call(request: Any, context: Any) -> Any:
        t0, status = time.perf_counter(), 200
        try:
            return await rpc(request, context)
        except ServiceError as exc:
            status = exc.status if exc.status in STATUS_CODES else 500
            await context.abort(STATUS_CODES[status], exc.message)
        except Exception as exc:
            if isinstance(exc, grpc.aio.AbortError):
                raise
            status = 500
            log.error("unhandled error in gRPC %s", endpoint, exc_info=exc)
            await context.abort(grpc.StatusCode.INTERNAL, INTERNAL_ERROR)
        finally:
            metrics.record_request(endpoint, status, time.perf_counter() - t0)

    return call


def _handler(service: AnalyzerService, check_key: KeyCheck) -> grpc.GenericRpcHandler:
    calls, handlers = GrpcCalls(service, check_key), {}
    for name, (kind, endpoint, _) in GrpcCalls.RPCS.items():
        rpc = _wrap(_rpc(calls, name), endpoint, service.metrics)
        if name == "ModelInfer":
            handlers[name] = grpc.unary_unary_rpc_method_handler(rpc)
        else:
            handlers[name] = grpc.unary_unary_rpc_method_handler(
                rpc, request_deserializer=kind.FromString, response_serializer=lambda m: m.SerializeToString())
    return grpc.method_handlers_generic_handler(SERVICE_NAME, handlers)


class GrpcServer:
    """A ``grpc.aio`` server for ``service`` on its own thread (use as a context manager or start/stop).

    Args:
        service: the shared :class:`AnalyzerService`.
        api_keys: accepted keys (empty: no auth).
        host, port: where to listen (``port=0`` picks a free port; see :attr:`port`). Linux gRPC sets
            SO_REUSEPORT, so several worker processes can listen on one port.
        max_message_bytes: larger messages are refused with RESOURCE_EXHAUSTED.
    """

    def __init__(self, service: AnalyzerService, *, api_keys: list[str] | tuple[str, ...] = (), host: str = "127.0.0.1",
                 port: int = 0, max_message_bytes: int = 8 * 2**20) -> None:
        self.service, self.check_key = service, KeyCheck(list(api_keys))
        self.host, self.port, self.max_message_bytes = host, port, max_message_bytes
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._stopped: asyncio.Event | None = None

    @property
    def target(self) -> str:
        """``host:port`` the server listens on."""
        return f"{self.host}:{self.port}"

    async def _main(self, started: threading.Event, errors: list[BaseException]) -> None:
        try:
            self._server = grpc.aio.server(options=[("grpc.max_receive_message_length", self.max_message_bytes),
                                                    ("grpc.max_send_message_length", self.max_message_bytes)])
            self._server.add_generic_rpc_handlers((_handler(self.service, self.check_key),))
            self.port = self._server.add_insecure_port(f"{self.host}:{self.port}")
            await self._server.start()
            self._stopped = asyncio.Event()
        except BaseException as exc:  # noqa: BLE001 - reported to start()
            errors.append(exc)
            return
        finally:
            started.set()
        await self._stopped.wait()
        await self._server.stop(grace=5)

    def start(self, timeout: float = 15.0) -> GrpcServer:
        """Start serving; returns once the port is bound."""
        if self._thread is not None:
            raise RuntimeError("gRPC server already running")
        self.service.start()
        started, errors = threading.Event(), []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_until_complete, args=(self._main(started, errors),),
                                        name=f"grpc-{self.port}", daemon=True)
        self._thread.start()
        if not started.wait(timeout) or errors or not self.port:
            self.stop()
            raise RuntimeError(f"the gRPC server could not listen on {self.target}: {errors[0] if errors else 'timeout'}")
        return self

    def stop(self, timeout: float = 15.0) -> None:
        """Stop accepting calls, finish the running ones (5 s grace), join the thread."""
        if self._loop is not None and self._stopped is not None:
            self._loop.call_soon_threadsafe(self._stopped.set)
        if self._thread is not None:
            self._thread.join(timeout)
        if self._loop is not None and not (self._thread and self._thread.is_alive()):
            self._loop.close()
        self._thread, self._stopped, self._loop = None, None, None

    def __enter__(self) -> GrpcServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


#: ``privsplit serve --grpc-engine`` name -> (module, class, the extra it needs)
GRPC_ENGINES = {"grpcio": ("privsplit.runtime.grpc_server", "GrpcServer", "grpc"),
                "native": ("privsplit.runtime.grpc_native", "NativeGrpcServer", "grpc-native")}


def grpc_server_class(engine: str) -> type:
    """The gRPC server class of ``engine`` (see :data:`GRPC_ENGINES`); a clear error when it is unknown or
    its extra is not installed."""
    import importlib

    if engine not in GRPC_ENGINES:
        raise ValueError(f"unknown gRPC engine {engine!r}; choose one of {', '.join(GRPC_ENGINES)}")
    module, name, extra = GRPC_ENGINES[engine]
    try:
        cls = getattr(importlib.import_module(module), name)
        if engine == "native":
            importlib.import_module("pygrpc_native")
    except ImportError as exc:
        raise ValueError(f"gRPC engine {engine!r} needs the {extra} extra ({exc}): "
                         f"pip install 'privsplit[{extra}]'") from None
    return cls
