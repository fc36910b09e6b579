"""The gRPC front end on a native HTTP/2 engine (``privsplit serve --grpc-engine native``).

Same RPCs, checks, statuses, metrics and idempotency as :class:`~privsplit.runtime.grpc_server.GrpcServer`
(both call :class:`~privsplit.runtime.grpc_server.GrpcCalls` and one
:class:`~privsplit.runtime.service.AnalyzerService`); only the engine differs. Here HTTP/2, gRPC
framing, flow control and deadlines run in Rust threads outside the GIL (`pygrpc-native
<https://pypi.org/project/pygrpc-native/>`_'s low-level ``NativeGrpcFront``), and calls reach Python
in batches: one thread takes a batch of calls, parses and validates each, and queues the inference
requests on the service's micro-batcher; the batcher's thread answers each call by id.

Why: with grpcio's asyncio server the gRPC worker spent 280-460 us of event-loop time per request,
almost all of it in grpcio's own Python/Cython layer (our handler is ~33 us), and that one GIL was the
limit at concurrency 64 (docs/runtime.md). No event loop is involved here: Python pays for our parsing,
validation and encoding and one crossing per batch of calls.

What differs from grpcio (pygrpc-native's README lists the rest): no TLS (terminate it in front, as
for REST); a message over ``max_message_bytes`` is refused with RESOURCE_EXHAUSTED after it arrived
rather than from its length prefix; on shutdown, calls still waiting after the grace period get
UNAVAILABLE. Needs the ``grpc-native`` extra.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from concurrent.futures import Future
from typing import Any

from privsplit.runtime.auth import KeyCheck
from privsplit.runtime.grpc_server import SERVICE_NAME, STATUS_CODES, GrpcCalls
from privsplit.runtime.service import INTERNAL_ERROR, AnalyzerService, ServiceError

__all__ = ["NativeGrpcServer"]

log = logging.getLogger("privsplit.serve")
_NAMES = list(GrpcCalls.RPCS)
_CODES = {status: code.value[0] for status, code in STATUS_CODES.items()}


class NativeGrpcServer:
    """A pygrpc-native gRPC server for ``service`` (use as a context manager or start/stop).

    Args:
        service: the shared :class:`AnalyzerService`.
        api_keys: accepted keys (empty: no auth).
        host, port: where to listen (``port=0`` picks a free port; see :attr:`port`). SO_REUSEPORT is
            set, so several worker processes can listen on one port (as grpcio does on Linux).
        max_message_bytes: larger messages are refused with RESOURCE_EXHAUSTED.
        io_threads: the engine's HTTP/2 threads (they hold no GIL); one suits a worker per core.
        max_events: most calls taken from the engine at once.
    """

    def __init__(self, service: AnalyzerService, *, api_keys: Iterable[str] = (), host: str = "127.0.0.1",
                 port: int = 0, max_message_bytes: int = 8 * 2**20, io_threads: int = 1, max_events: int = 256) -> None:
        self.service, self.calls = service, GrpcCalls(service, KeyCheck(list(api_keys)))
        self.host, self.port, self.max_message_bytes = host, port, max_message_bytes
        self.io_threads, self.max_events = io_threads, max_events
        self._front: Any = None
        self._thread: threading.Thread | None = None
        self._pending: dict[int, Future | None] = {}  # call id -> its batcher future: calls not yet answered
        self._lock = threading.Lock()  # _pending is written by this thread and the batcher's
        self._stopping = False

    @property
    def target(self) -> str:
        """``host:port`` the server listens on."""
        return f"{self.host}:{self.port}"

    def start(self) -> NativeGrpcServer:
        """Start serving; returns once the port is bound."""
        from pygrpc_native import NativeGrpcFront

        if self._thread is not None:
            raise RuntimeError("gRPC server already running")
        self.service.start()
        try:
            self._front = NativeGrpcFront(f"{self.host}:{self.port}", [(f"/{SERVICE_NAME}/{n}", False) for n in _NAMES],
                                          io_threads=self.io_threads, call_details=True, reuse_port=True)
        except OSError as exc:
            raise RuntimeError(f"the gRPC server could not listen on {self.target}: {exc}") from None
        self.port = self._front.bound_port
        self._front.start()
        self._stopping = False
        self._thread = threading.Thread(target=self._serve, name=f"grpc-native-{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self, grace: float = 5.0) -> None:
        """Refuse new calls with UNAVAILABLE, wait up to ``grace`` s for the ones in flight, close."""
        if self._front is None:
            return
        self._stopping = True
        deadline = time.monotonic() + grace
        while self._pending and time.monotonic() < deadline:
            time.sleep(0.01)
        self._front.close()  # calls still open get UNAVAILABLE; recv_batch returns None
        if self._thread is not None:
            self._thread.join(5.0)
        self._front, self._thread = None, None

    def __enter__(self) -> NativeGrpcServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ calls
    def _serve(self) -> None:
        from pygrpc_native import EVENT_CANCEL

        front = self._front
        while (events := front.recv_batch_details(self.max_events)) is not None:
            for kind, call_id, method_id, payload, _client, details in events:
                if kind == EVENT_CANCEL:  # the client went away or its deadline passed
                    with self._lock:
                        future = self._pending.pop(call_id, None)
                    if future is not None:
                        future.cancel()  # dropped by the batcher unless already running
                    continue
                try:
                    self._call(front, call_id, _NAMES[method_id], payload, details[0])
                except Exception as exc:  # noqa: BLE001 - one bad call must not stop the server
                    log.error("unhandled error in gRPC %s", _NAMES[method_id], exc_info=exc)
                    with self._lock:
                        self._pending.pop(call_id, None)
                    front.fail(call_id, _CODES[500], INTERNAL_ERROR)

    def _call(self, front: Any, call_id: int, name: str, payload: bytes, metadata: Any) -> None:
        kind, endpoint, _ = GrpcCalls.RPCS[name]
        t0 = time.perf_counter()

        def done(answer: bytes | None, error: ServiceError | None) -> None:
            with self._lock:
                self._pending.pop(call_id, None)
            status = 200 if error is None else error.status if error.status in _CODES else 500
            if error is None:
                front.respond(call_id, answer)
            else:
                front.fail(call_id, _CODES[status], error.message)
            self.service.metrics.record_request(endpoint, status, time.perf_counter() - t0)

        try:
            if self._stopping:
                raise ServiceError(503, "the server is shutting down; retry")
            if len(payload) > self.max_message_bytes:
                raise ServiceError(413, f"message of {len(payload)} bytes exceeds the limit of "
                                        f"{self.max_message_bytes} bytes")
            self.calls.authorize(name, metadata)
            if name != "ModelInfer":
                try:
                    request = kind.FromString(payload)
                except Exception:  # noqa: BLE001 - protobuf's DecodeError and friends
                    raise ServiceError(400, f"the message is not a valid {kind.DESCRIPTOR.full_name} "
                                            "protobuf") from None
                done(self.calls.answer(name, request).SerializeToString(), None)
                return
            req, key = self.calls.parse_infer(payload)
            with self._lock:
                self._pending[call_id] = None  # before queueing: the batcher may answer at once
            future = self.service.infer_then(req, key, self.calls.encode, done)
            with self._lock:
                if future is not None and call_id in self._pending:  # not answered yet: keep it for a cancel
                    self._pending[call_id] = future
        except ServiceError as exc:
            done(None, exc)
