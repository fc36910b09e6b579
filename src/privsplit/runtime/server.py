"""The cloud analyzer as an Open Inference Protocol v2 service (REST: FastAPI + uvicorn).

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

The parts: :mod:`~privsplit.runtime.service` (:class:`AnalyzerService`: validation, micro-batching,
idempotency cache, shared by REST and gRPC), :mod:`~privsplit.runtime.auth` (API keys),
:mod:`~privsplit.runtime.routes` (the REST routes and error replies), :mod:`~privsplit.runtime.grpc_server`
(the gRPC twin). Every failure is answered ``{"error": "..."}`` with a status saying whose fault it
is: 400 bad input, 401 missing/wrong API key, 404 unknown model or route, 405 wrong method, 409
client bundle from another embedding, 413 body over the limit, 500 analyzer failure (generic text;
the traceback goes to the log), 503 shutting down. Requests carrying an ``id`` are remembered (last
``idempotency_cache`` of them, keyed by id and body digest), so a retried request is answered from
the cache instead of being run again.

This module needs the ``serve`` extra (fastapi, uvicorn); it imports neither training nor attack code.
"""
from __future__ import annotations

import gc
import threading
import time
from collections.abc import Callable, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import torch
from fastapi import FastAPI
from starlette.types import ASGIApp

from privsplit import __version__
from privsplit.defenses.bundles import ServerBundle
from privsplit.runtime.auth import API_KEYS_ENV, KeyCheck, load_api_keys
from privsplit.runtime.routes import (
    InferEndpoint, MetricsMiddleware, encode_json, install_error_handlers, oip_router,
)
from privsplit.runtime.service import MODEL_VERSION, SERVER_NAME, AnalyzerService, ServiceError
from privsplit.runtime.workers import bind_socket, serve_workers

__all__ = ["AnalyzerService", "ServiceError", "create_app", "load_api_keys", "serve", "ServerThread",
           "API_KEYS_ENV", "DEFAULT_MAX_BODY_BYTES", "MODEL_VERSION", "SERVER_NAME", "encode_json"]

DEFAULT_MAX_BODY_BYTES = 8 * 2**20
_KeyCheck = KeyCheck  # the old private name


def create_app(bundle: ServerBundle | str | Path | AnalyzerService, *, api_keys: Iterable[str] | None = None,
               max_batch: int = 32, max_delay_ms: float = 2.0, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
               idempotency_cache: int = 1024) -> FastAPI:
    """The FastAPI app serving ``bundle`` over OIP v2 (see the module docstring).

    Args:
        bundle: a :class:`ServerBundle` or its folder, or a ready :class:`AnalyzerService` (to share it
            with a gRPC front end; the batching options are then its own).
        api_keys: accepted keys; ``None`` reads ``PRIVSPLIT_API_KEYS`` (no auth when unset), an empty
            list disables auth. Health endpoints never need a key.
        max_batch, max_delay_ms: dynamic micro-batching limits.
        max_body_bytes: larger request bodies get 413 (checked before reading them).
        idempotency_cache: how many answered request ids to remember (0 disables).
    """
    if isinstance(max_body_bytes, bool) or not isinstance(max_body_bytes, int) or max_body_bytes < 1:
        raise ValueError(f"max_body_bytes must be a positive integer, got {max_body_bytes!r}")
    service = bundle if isinstance(bundle, AnalyzerService) else AnalyzerService(
        bundle, max_batch=max_batch, max_delay_ms=max_delay_ms, idempotency_cache=idempotency_cache)
    check_key = KeyCheck(load_api_keys() if api_keys is None else list(api_keys))

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
    install_error_handlers(app)
    app.include_router(oip_router(service, check_key))
    # the hot route in front of FastAPI's layers (see InferEndpoint); added first, so it sits inside
    # the metrics middleware, which counts every reply, 404s and 500s too
    app.add_middleware(InferEndpoint, service=service, check_key=check_key, max_body_bytes=max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=service.metrics)
    return app


# ============================================================================ running it

def serve(bundle: ServerBundle | str | Path, *, host: str = "127.0.0.1", port: int = 8000,
          api_keys: Iterable[str] | None = None, max_batch: int = 32, max_delay_ms: float = 2.0,
          max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, ssl_keyfile: str | None = None,
          ssl_certfile: str | None = None, log_level: str = "info", access_log: bool = False,
          torch_threads: int | None = None, http: str = "auto", loop: str = "auto",
          grpc_port: int | None = None, workers: int = 1, grpc_workers: int | None = None,
          grpc_engine: str = "grpcio", metrics_dir: str | Path | None = None,
          reuse_port: bool = False, configure: Callable[[FastAPI], object] | None = None) -> None:
    """Serve ``bundle`` until interrupted (``privsplit serve`` calls this): REST on ``port`` and, with
    ``grpc_port``, gRPC beside it, both calling one :class:`AnalyzerService`.

    ``workers > 1`` hands over to :func:`privsplit.runtime.workers.serve_workers` (N processes on
    the same ports; gRPC on the first ``grpc_workers`` of them, default all). ``grpc_engine`` is a name of
    :data:`~privsplit.runtime.grpc_server.GRPC_ENGINES` (``native`` takes grpcio's Python layer out of
    each call; see :mod:`privsplit.runtime.grpc_native`). ``http``/``loop`` are uvicorn's: ``auto`` takes
    httptools and uvloop when installed (faster), else h11 and asyncio. ``metrics_dir`` and ``reuse_port`` are set by the
    worker supervisor. ``configure(app)`` runs on each process's app before it serves (e.g. the
    browser page's :func:`privsplit.runtime.ui.mount_ui`); with workers it must pickle (a
    ``functools.partial`` of a module-level function does).
    """
    import uvicorn

    if (ssl_keyfile is None) != (ssl_certfile is None):
        raise ValueError("TLS needs both --ssl-keyfile and --ssl-certfile")
    keys = load_api_keys() if api_keys is None else list(api_keys)
    grpc_class = None
    if grpc_port is not None:
        from privsplit.runtime.grpc_server import grpc_server_class

        grpc_class = grpc_server_class(grpc_engine)  # unknown or not installed: fails before any worker starts
    options = dict(host=host, port=port, api_keys=keys, max_batch=max_batch, max_delay_ms=max_delay_ms,
                   max_body_bytes=max_body_bytes, ssl_keyfile=ssl_keyfile, ssl_certfile=ssl_certfile,
                   log_level=log_level, access_log=access_log, torch_threads=torch_threads, http=http, loop=loop,
                   grpc_port=grpc_port, grpc_engine=grpc_engine, configure=configure)
    if workers > 1:
        serve_workers(bundle, serve_one=serve, workers=workers, grpc_workers=grpc_workers, **options)
        return
    if torch_threads:
        torch.set_num_threads(torch_threads)
    from privsplit.runtime.metrics import ServiceMetrics

    service = AnalyzerService(bundle, max_batch=max_batch, max_delay_ms=max_delay_ms,
                              metrics=ServiceMetrics(shared_dir=metrics_dir))
    app = create_app(service, api_keys=keys, max_body_bytes=max_body_bytes)
    if configure is not None:
        configure(app)
    grpc_server = None
    if grpc_class is not None:
        grpc_server = grpc_class(service, api_keys=keys, host=host, port=grpc_port,
                                 max_message_bytes=max_body_bytes).start()
    config = uvicorn.Config(app, ssl_keyfile=ssl_keyfile, ssl_certfile=ssl_certfile, log_level=log_level,
                            access_log=access_log, timeout_graceful_shutdown=10, http=http, loop=loop)
    freeze_startup_objects()
    try:
        uvicorn.Server(config).run(sockets=[bind_socket(host, port, reuse_port=reuse_port)])
    finally:
        if grpc_server is not None:
            grpc_server.stop()


def freeze_startup_objects() -> int:
    """Move every object alive now (torch, FastAPI, gRPC, the model) out of the garbage collector's reach.

    Why: this was the serving tail. A worker holds ~200,000 GC-tracked objects after start-up, and
    every request leaves a few that survive long enough to be promoted (the idempotency cache keeps
    the last 1,024 answers), so CPython runs a full collection every second or two; each one walks
    all those objects with the GIL held, stalling the event loop, the batcher and the gRPC threads at
    once for 60 ms (idle) to 330 ms (cores shared with the load). Every request in flight in that
    worker waits it out: ~2% of requests, i.e. the p99. Start-up objects live as long as the process,
    so freezing them (``gc.freeze``, CPython >= 3.7) loses nothing; later full collections only walk
    what requests created (well under a millisecond). Returns the number of frozen objects.
    """
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


class ServerThread:
    """Run an ASGI app with uvicorn in a background thread (tests, notebooks, benchmarks).

    Binds ``host:port`` itself (``port=0`` picks a free port; see :attr:`port`), so a stopped
    server can be restarted on the same port. Use as a context manager or call :meth:`start` /
    :meth:`stop`.
    """

    def __init__(self, app: ASGIApp, *, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning",
                 graceful_timeout: int = 5, **uvicorn_options: Any) -> None:
        self.app, self.host, self.port = app, host, port
        self.log_level, self.graceful_timeout, self.options = log_level, graceful_timeout, uvicorn_options
        self._server: Any = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """Base URL the server answers on (``https`` when started with a certificate)."""
        scheme = "https" if self.options.get("ssl_certfile") else "http"
        return f"{scheme}://{self.host}:{self.port}"

    def start(self, timeout: float = 15.0) -> ServerThread:
        """Bind, start serving, and return once the server accepts connections."""
        import uvicorn

        if self._thread is not None:
            raise RuntimeError("server already running")
        sock = bind_socket(self.host, self.port)
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
