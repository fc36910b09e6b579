"""The cloud analyzer as an Open Inference Protocol v2 (REST) service: FastAPI + uvicorn.

``create_app(bundle)`` returns an ASGI app serving one server bundle:

========================================  ====================================================
``GET  /v2/health/live``                   200 while the process runs (no API key needed)
``GET  /v2/health/ready``                  200 when the analyzer accepts requests (no key)
``GET  /v2/models/{name}/ready``           200 for the served model, 404 otherwise (no key)
``GET  /v2``                               server metadata (name, version, extensions)
``GET  /v2/models/{name}[/versions/1]``    model metadata: input ``features`` FP32 [-1, k],
                                           outputs ``probabilities`` FP32 [-1, C], ``label`` BYTES [-1]
``POST /v2/models/{name}[/versions/1]/infer``  inference (JSON or binary-tensor bodies)
``GET  /metrics``                          Prometheus text (see :mod:`privsplit.runtime.metrics`)
========================================  ====================================================

Every body is read and written by :mod:`privsplit.runtime.wire`. Concurrent requests are merged by
a :class:`~privsplit.runtime.batching.MicroBatcher` into one analyzer call on a worker thread.
Every failure is answered ``{"error": "..."}`` with a status saying whose fault it is: 400 bad
input, 401 missing/wrong API key, 404 unknown model or route, 405 wrong method, 409 client bundle
from another embedding, 413 body over the limit, 500 analyzer failure, 503 shutting down. Requests
carrying an ``id`` are remembered (last ``idempotency_cache`` of them, keyed by id and body digest),
so a retried request is answered from the cache instead of being run again.

This module needs the ``serve`` extra (fastapi, uvicorn); it imports neither training nor attack code.
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from privsplit import __version__
from privsplit.defenses.bundles import OUTPUT_NAMES, ServerBundle, load_server_bundle
from privsplit.runtime.batching import BatcherClosed, MicroBatcher
from privsplit.runtime.metrics import ServiceMetrics
from privsplit.runtime.wire import (
    InferRequest, InferResponse, InferTensor, ModelMetadata, ServerMetadata, TensorMetadata, WireError,
    decode_request, encode_error, encode_response,
)

__all__ = ["AnalyzerService", "ServiceError", "create_app", "load_api_keys", "serve", "ServerThread",
           "API_KEYS_ENV", "DEFAULT_MAX_BODY_BYTES", "MODEL_VERSION", "SERVER_NAME"]

API_KEYS_ENV = "PRIVSPLIT_API_KEYS"
DEFAULT_MAX_BODY_BYTES = 8 * 2**20
MODEL_VERSION = "1"
SERVER_NAME = "privsplit"
EXTENSIONS = ["binary_tensor_data"]
ACCEPTED_DATATYPES = ("FP32", "FP16")


class ServiceError(Exception):
    """A request the service refuses: ``status`` and the message sent as ``{"error": message}``."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, dict(headers or {})


# ============================================================================ the analyzer

class AnalyzerService:
    """The protocol-independent part: validation, micro-batched analyzer calls, responses.

    Args:
        bundle: a loaded :class:`ServerBundle` or its folder.
        max_batch, max_delay_ms: micro-batching limits (see :class:`MicroBatcher`).
        metrics: where batch sizes are recorded (a fresh :class:`ServiceMetrics` by default).
    """

    def __init__(self, bundle: ServerBundle | str | Path, *, max_batch: int = 32, max_delay_ms: float = 2.0,
                 metrics: ServiceMetrics | None = None) -> None:
        self.bundle = bundle if isinstance(bundle, ServerBundle) else load_server_bundle(bundle)
        self.bundle.analyzer.eval()
        self.model_name = self.bundle.model_name
        self.input_name = self.bundle.input_name
        self.input_shape = tuple(int(d) for d in self.bundle.input_shape)
        self.classes = list(self.bundle.classes)
        self._labels = np.array([c.encode("utf-8") for c in self.classes], dtype=object)
        self.metrics = metrics or ServiceMetrics()
        self.max_batch, self.max_delay_ms = max_batch, max_delay_ms
        self.batcher = self._new_batcher()

    def _new_batcher(self) -> MicroBatcher:
        return MicroBatcher(self.run_batch, max_batch=self.max_batch, max_delay_ms=self.max_delay_ms,
                            on_batch=self.metrics.record_batch, name=f"privsplit-batcher-{self.model_name}")

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Start (or, after :meth:`stop`, restart) the batching worker."""
        if not self.batcher.running:
            if self.batcher._closed:  # noqa: SLF001 - a closed batcher cannot restart
                self.batcher = self._new_batcher()
            self.batcher.start()

    def stop(self) -> None:
        """Stop the batching worker; queued requests fail with 503."""
        self.batcher.close()

    @property
    def ready(self) -> bool:
        return self.batcher.running

    # ------------------------------------------------------------------ model
    def run_batch(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Analyzer on a float32 batch ``(N, *input_shape)``: (probabilities FP32 [N, C], class index [N])."""
        with torch.inference_mode():
            logits = self.bundle.analyzer(torch.from_numpy(x))
            probs = torch.softmax(logits.float(), dim=1)
        p = probs.numpy()
        return p, p.argmax(axis=1)

    def metadata(self) -> ModelMetadata:
        """OIP model metadata from the bundle."""
        return ModelMetadata(
            name=self.model_name, platform="privsplit_pytorch", versions=[MODEL_VERSION],
            inputs=[TensorMetadata(self.input_name, "FP32", [-1, *self.input_shape])],
            outputs=[TensorMetadata(OUTPUT_NAMES[0], "FP32", [-1, len(self.classes)]),
                     TensorMetadata(OUTPUT_NAMES[1], "BYTES", [-1])])

    def _describe_input(self) -> str:
        return f"{self.input_name!r} (FP32, shape [N, {', '.join(map(str, self.input_shape))}])"

    def prepare(self, req: InferRequest) -> np.ndarray:
        """Validate a decoded request; the float32 features ``(N, *input_shape)`` or :class:`ServiceError`."""
        if "embedding_id" in req.parameters:
            emb = req.parameters["embedding_id"]
            if not isinstance(emb, str):
                raise ServiceError(400, f"parameter 'embedding_id' must be a string, got {emb!r}")
            if not hmac.compare_digest(emb.encode("utf-8", "replace"), self.bundle.embedding_id.encode()):
                raise ServiceError(409, (
                    f"client bundle does not match this server: the client's embedding id {emb[:12]!r} "
                    f"differs from the server bundle's {self.bundle.embedding_id[:12]!r}; use the client and "
                    "server bundles exported together"))
        names = [t.name for t in req.inputs]
        if names != [self.input_name]:
            unknown = [n for n in names if n != self.input_name]
            why = f"unknown input {unknown[0]!r}" if unknown else f"got inputs {names}"
            raise ServiceError(400, f"{why}: model {self.model_name!r} takes exactly one input "
                                    f"{self._describe_input()}")
        t = req.inputs[0]
        if t.datatype not in ACCEPTED_DATATYPES:
            raise ServiceError(400, f"input {t.name!r} has datatype {t.datatype}; expected FP32 (or FP16)")
        shape = tuple(t.shape)
        if len(shape) != 1 + len(self.input_shape) or shape[1:] != self.input_shape or shape[0] < 1:
            raise ServiceError(400, f"input {t.name!r} has shape {list(shape)}; expected "
                                    f"[N, {', '.join(map(str, self.input_shape))}] with N >= 1")
        x = np.ascontiguousarray(t.data, dtype=np.float32)
        finite = np.isfinite(x).reshape(shape[0], -1).all(axis=1)
        if not finite.all():
            row = int(np.flatnonzero(~finite)[0])
            raise ServiceError(400, f"input {t.name!r} contains NaN or Inf (first in row {row}); "
                                    "features must be finite")
        for out in req.outputs:
            if out.name not in OUTPUT_NAMES:
                raise ServiceError(400, f"unknown output {out.name!r}; model {self.model_name!r} has outputs "
                                        f"{', '.join(map(repr, OUTPUT_NAMES))}")
        return x

    def response(self, req: InferRequest, probs: np.ndarray, index: np.ndarray) -> InferResponse:
        """The OIP response for ``req`` (only the requested outputs, in the requested order)."""
        tensors = {
            OUTPUT_NAMES[0]: InferTensor(OUTPUT_NAMES[0], probs.shape, "FP32", probs.astype(np.float32, copy=False)),
            OUTPUT_NAMES[1]: InferTensor(OUTPUT_NAMES[1], index.shape, "BYTES", self._labels[index]),
        }
        wanted = [o.name for o in req.outputs] or list(OUTPUT_NAMES)
        return InferResponse(model_name=self.model_name, model_version=MODEL_VERSION, id=req.id,
                             outputs=[tensors[n] for n in wanted])

    def infer(self, req: InferRequest) -> InferResponse:
        """Synchronous in-process inference through the batcher (validation included)."""
        self.start()
        probs, index = self.batcher(self.prepare(req))
        return self.response(req, probs, index)


# ============================================================================ API keys

def load_api_keys(file: str | Path | None = None, *, env: dict[str, str] | None = None) -> list[str]:
    """Keys from ``file`` (one per line; blank lines and ``#`` comments ignored) plus the
    comma/whitespace-separated ``PRIVSPLIT_API_KEYS`` variable of ``env`` (default ``os.environ``)."""
    keys: list[str] = []
    if file is not None:
        path = Path(file)
        if not path.is_file():
            raise FileNotFoundError(f"API key file not found: {path}")
        for line in path.read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                keys.append(line)
        if not keys:
            raise ValueError(f"API key file {path} holds no key (one key per line)")
    raw = (os.environ if env is None else env).get(API_KEYS_ENV, "")
    keys += [k for k in raw.replace(",", " ").split() if k]
    return keys


class _KeyCheck:
    """Constant-time API key check against every configured key."""

    def __init__(self, keys: Iterable[str]) -> None:
        self.keys = [k.encode("utf-8") for k in keys]
        if any(len(k) < 8 for k in self.keys):
            raise ValueError("API keys must be at least 8 characters long")

    def __call__(self, headers: Any) -> None:
        if not self.keys:
            return
        auth = headers.get("authorization")
        key = None
        if auth is not None:
            scheme, _, value = auth.strip().partition(" ")
            if scheme.lower() == "bearer" and value.strip():
                key = value.strip()
        if key is None:
            key = headers.get("x-api-key")
        if not key:
            raise ServiceError(401, "missing API key: send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'",
                               {"WWW-Authenticate": "Bearer"})
        given = key.encode("utf-8", "replace")
        ok = False
        for k in self.keys:  # no early exit: time does not depend on which key matched
            ok |= hmac.compare_digest(given, k)
        if not ok:
            raise ServiceError(401, "invalid API key", {"WWW-Authenticate": "Bearer"})


# ============================================================================ the app

def _endpoint(path: str) -> str:
    if path.startswith("/v2/health/"):
        return "health"
    if path.startswith("/v2/models/"):
        if path.endswith("/infer"):
            return "infer"
        return "health" if path.endswith("/ready") else "model"
    if path in ("/v2", "/v2/"):
        return "server"
    return "metrics" if path == "/metrics" else "other"


class _MetricsMiddleware:
    """Pure ASGI middleware: counts every HTTP reply by status and times it."""

    def __init__(self, app: Any, metrics: ServiceMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0, status = time.perf_counter(), [500]

        async def send_wrapper(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.metrics.record_request(_endpoint(scope.get("path", "")), status[0], time.perf_counter() - t0)


def create_app(bundle: ServerBundle | str | Path, *, api_keys: Iterable[str] | None = None, max_batch: int = 32,
               max_delay_ms: float = 2.0, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
               idempotency_cache: int = 1024) -> FastAPI:
    """The FastAPI app serving ``bundle`` over OIP v2 (see the module docstring).

    Args:
        bundle: a :class:`ServerBundle` or its folder.
        api_keys: accepted keys; ``None`` reads ``PRIVSPLIT_API_KEYS`` (no auth when unset), an empty
            list disables auth. Health endpoints never need a key.
        max_batch, max_delay_ms: dynamic micro-batching limits.
        max_body_bytes: larger request bodies get 413 (checked before reading them).
        idempotency_cache: how many answered request ids to remember (0 disables).
    """
    if isinstance(max_body_bytes, bool) or not isinstance(max_body_bytes, int) or max_body_bytes < 1:
        raise ValueError(f"max_body_bytes must be a positive integer, got {max_body_bytes!r}")
    service = AnalyzerService(bundle, max_batch=max_batch, max_delay_ms=max_delay_ms)
    check_key = _KeyCheck(load_api_keys() if api_keys is None else list(api_keys))
    cache: OrderedDict[tuple[str, bytes], tuple[bytes, dict[str, str]]] = OrderedDict()

    def error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
        return Response(encode_error(message), status_code=status, media_type="application/json",
                        headers=headers)

    @asynccontextmanager
    async def lifespan(_app: Any):  # type: ignore[no-untyped-def]
        service.start()
        try:
            yield
        finally:
            service.stop()

    app = FastAPI(title="privsplit analyzer", version=__version__, lifespan=lifespan, docs_url=None,
                  redoc_url=None, openapi_url=None)
    app.state.service = service
    app.state.metrics = service.metrics

    @app.exception_handler(ServiceError)
    async def _service_error(_req: Request, exc: ServiceError) -> Response:
        return error(exc.status, exc.message, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(req: Request, exc: StarletteHTTPException) -> Response:
        msg = str(exc.detail)
        if exc.status_code == 404:
            msg = f"no such endpoint: {req.method} {req.url.path} (see the OIP v2 routes under /v2)"
        elif exc.status_code == 405:
            msg = f"method {req.method} is not allowed on {req.url.path}"
        return error(exc.status_code, msg, getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_req: Request, exc: RequestValidationError) -> Response:
        return error(400, f"invalid request: {exc.errors()}")

    @app.exception_handler(Exception)
    async def _internal_error(_req: Request, exc: Exception) -> Response:
        return error(500, f"internal server error: {type(exc).__name__}: {exc}")

    def model_or_404(name: str, version: str | None) -> None:
        if name != service.model_name:
            raise ServiceError(404, f"unknown model {name!r}; this server serves {service.model_name!r}")
        if version is not None and version != MODEL_VERSION:
            raise ServiceError(404, f"model {name!r} has no version {version!r}; available: {MODEL_VERSION}")

    async def read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and declared.strip().isdigit() and int(declared) > max_body_bytes:
            raise ServiceError(413, f"request body of {int(declared)} bytes exceeds the limit of "
                                    f"{max_body_bytes} bytes; send fewer rows per request")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_body_bytes:
                raise ServiceError(413, f"request body exceeds the limit of {max_body_bytes} bytes; "
                                        "send fewer rows per request")
            chunks.append(chunk)
        return b"".join(chunks)

    # ---------------------------------------------------------------- health (no key)
    @app.get("/v2/health/live")
    async def live() -> Response:
        return Response(b'{"live":true}', media_type="application/json")

    @app.get("/v2/health/ready")
    async def ready() -> Response:
        if not service.ready:
            return error(503, "the analyzer is not ready (starting or shutting down)")
        return Response(b'{"ready":true}', media_type="application/json")

    async def model_ready(name: str, version: str | None = None) -> Response:
        model_or_404(name, version)
        if not service.ready:
            return error(503, f"model {name!r} is not ready (starting or shutting down)")
        return Response(encode_json({"name": name, "ready": True}), media_type="application/json")

    app.get("/v2/models/{name}/ready")(model_ready)
    app.get("/v2/models/{name}/versions/{version}/ready")(model_ready)

    # ---------------------------------------------------------------- metadata
    @app.get("/v2")
    async def server_metadata(request: Request) -> Response:
        check_key(request.headers)
        meta = ServerMetadata(SERVER_NAME, __version__, list(EXTENSIONS))
        return Response(encode_json(meta.to_json()), media_type="application/json")

    async def model_metadata(name: str, request: Request, version: str | None = None) -> Response:
        check_key(request.headers)
        model_or_404(name, version)
        return Response(encode_json(service.metadata().to_json()), media_type="application/json")

    app.get("/v2/models/{name}")(model_metadata)
    app.get("/v2/models/{name}/versions/{version}")(model_metadata)

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        check_key(request.headers)
        return Response(service.metrics.render().encode(), media_type="text/plain; version=0.0.4")

    # ---------------------------------------------------------------- inference
    async def infer(name: str, request: Request, version: str | None = None) -> Response:
        check_key(request.headers)
        model_or_404(name, version)
        body = await read_body(request)
        try:
            req = decode_request(body, request.headers)
        except WireError as exc:
            raise ServiceError(400, str(exc)) from None
        x = service.prepare(req)
        key = None
        if req.id is not None and idempotency_cache > 0:
            key = (req.id, hashlib.sha256(body).digest())
            hit = cache.get(key)
            if hit is not None:
                cache.move_to_end(key)
                service.metrics.duplicates.inc()
                return Response(hit[0], headers=hit[1])
        try:
            probs, index = await asyncio.wrap_future(service.batcher.submit(x))
        except BatcherClosed as exc:
            raise ServiceError(503, str(exc)) from None
        try:
            out, headers = encode_response(service.response(req, probs, index),
                                           binary_outputs=req.binary_outputs())
        except WireError as exc:
            raise ServiceError(400, str(exc)) from None
        if key is not None:
            cache[key] = (out, headers)
            while len(cache) > idempotency_cache:
                cache.popitem(last=False)
        return Response(out, headers=headers)

    app.post("/v2/models/{name}/infer")(infer)
    app.post("/v2/models/{name}/versions/{version}/infer")(infer)

    # counts every reply, 404s, 413s and 500s included
    app.add_middleware(_MetricsMiddleware, metrics=service.metrics)
    return app


def encode_json(obj: Any) -> bytes:
    """Compact JSON bytes (for the few non-inference bodies)."""
    import json

    return json.dumps(obj, separators=(",", ":")).encode("utf-8")


# ============================================================================ running it

def serve(bundle: ServerBundle | str | Path, *, host: str = "127.0.0.1", port: int = 8000,
          api_keys: Iterable[str] | None = None, max_batch: int = 32, max_delay_ms: float = 2.0,
          max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, ssl_keyfile: str | None = None,
          ssl_certfile: str | None = None, log_level: str = "info", access_log: bool = False,
          torch_threads: int | None = None, http: str = "auto", loop: str = "auto") -> None:
    """Serve ``bundle`` with uvicorn until interrupted (``privsplit serve`` calls this).

    ``http``/``loop`` are uvicorn's: ``auto`` takes httptools and uvloop when installed (faster), else
    h11 and asyncio.
    """
    import uvicorn

    if torch_threads:
        torch.set_num_threads(torch_threads)
    if (ssl_keyfile is None) != (ssl_certfile is None):
        raise ValueError("TLS needs both --ssl-keyfile and --ssl-certfile")
    app = create_app(bundle, api_keys=api_keys, max_batch=max_batch, max_delay_ms=max_delay_ms,
                     max_body_bytes=max_body_bytes)
    uvicorn.run(app, host=host, port=port, ssl_keyfile=ssl_keyfile, ssl_certfile=ssl_certfile,
                log_level=log_level, access_log=access_log, timeout_graceful_shutdown=10, http=http, loop=loop)


class ServerThread:
    """Run an ASGI app with uvicorn in a background thread (tests, notebooks, benchmarks).

    Binds ``host:port`` itself (``port=0`` picks a free port; see :attr:`port`), so a stopped
    server can be restarted on the same port. Use as a context manager or call :meth:`start` /
    :meth:`stop`.
    """

    def __init__(self, app: Any, *, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning",
                 graceful_timeout: int = 5, **uvicorn_options: Any) -> None:
        self.app, self.host, self.port = app, host, port
        self.log_level, self.graceful_timeout, self.options = log_level, graceful_timeout, uvicorn_options
        self._server: Any = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        scheme = "https" if self.options.get("ssl_certfile") else "http"
        return f"{scheme}://{self.host}:{self.port}"

    def start(self, timeout: float = 15.0) -> ServerThread:
        """Bind, start serving, and return once the server accepts connections."""
        import uvicorn

        if self._thread is not None:
            raise RuntimeError("server already running")
        # proto=IPPROTO_TCP matters: asyncio only sets TCP_NODELAY on sockets that say so, and without
        # it Nagle + delayed ACKs add ~40 ms to every keep-alive response
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(self.app, log_config=None, log_level=self.log_level, access_log=False,
                                lifespan="on", timeout_graceful_shutdown=self.graceful_timeout, **self.options)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]},
                                        name=f"uvicorn-{self.port}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"uvicorn did not start on {self.url}")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 15.0) -> None:
        """Ask uvicorn to exit (finishing in-flight requests) and wait for the thread."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                self._server.force_exit = True
                self._thread.join(timeout)
        self._server, self._thread = None, None

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
