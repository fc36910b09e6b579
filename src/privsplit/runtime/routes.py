"""The REST front end of :class:`~privsplit.runtime.service.AnalyzerService` (OIP v2 over HTTP).

:func:`oip_router` holds the routes, :func:`install_error_handlers` turns every failure into
``{"error": "..."}`` with its status, :class:`InferEndpoint` answers inference (pure ASGI, in
front of FastAPI), :class:`MetricsMiddleware` counts every reply. Further routers
(e.g. a browser page) are added beside :func:`oip_router` in their own modules.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException

from privsplit.runtime.auth import KeyCheck
from privsplit.runtime.metrics import ServiceMetrics
from privsplit.runtime.service import INTERNAL_ERROR, AnalyzerService, ServiceError
from privsplit.runtime.wire import WireError, decode_request, encode_error, encode_response

__all__ = ["oip_router", "InferEndpoint", "install_error_handlers", "MetricsMiddleware", "encode_json"]

log = logging.getLogger("privsplit.serve")
JSON = "application/json"


def encode_json(obj: Any) -> bytes:
    """Compact JSON bytes (for the few non-inference bodies)."""
    return json.dumps(obj, separators=(",", ":")).encode("utf-8")


def error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return Response(encode_error(message), status_code=status, media_type=JSON, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    """Every failure answers ``{"error": ...}``; unexpected exceptions a generic 500 (detail to the log)."""

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
    async def _internal_error(req: Request, exc: Exception) -> Response:
        log.error("unhandled error on %s %s", req.method, req.url.path, exc_info=exc)
        return error(500, INTERNAL_ERROR)


def oip_router(service: AnalyzerService, check_key: KeyCheck) -> APIRouter:
    """Health (no key), metadata and ``/metrics`` routes for ``service`` (inference: :class:`InferEndpoint`)."""
    router = APIRouter()
    _health_routes(router, service)
    _metadata_routes(router, service, check_key)
    return router


def _health_routes(router: APIRouter, service: AnalyzerService) -> None:
    def not_ready(what: str) -> Response | None:
        return None if service.ready else error(503, f"{what} is not ready (starting or shutting down)")

    @router.get("/v2/health/live")
    async def live() -> Response:
        return Response(b'{"live":true}', media_type=JSON)

    @router.get("/v2/health/ready")
    async def ready() -> Response:
        return not_ready("the analyzer") or Response(b'{"ready":true}', media_type=JSON)

    @router.get("/v2/models/{name}/ready")
    @router.get("/v2/models/{name}/versions/{version}/ready")
    async def model_ready(name: str, version: str | None = None) -> Response:
        service.check_model(name, version)
        return not_ready(f"model {name!r}") or Response(encode_json({"name": name, "ready": True}), media_type=JSON)


def _metadata_routes(router: APIRouter, service: AnalyzerService, check_key: KeyCheck) -> None:
    @router.get("/v2")
    async def server_metadata(request: Request) -> Response:
        check_key(request.headers)
        return Response(encode_json(service.server_metadata().to_json()), media_type=JSON)

    @router.get("/v2/models/{name}")
    @router.get("/v2/models/{name}/versions/{version}")
    async def model_metadata(name: str, request: Request, version: str | None = None) -> Response:
        check_key(request.headers)
        service.check_model(name, version)
        return Response(encode_json(service.metadata().to_json()), media_type=JSON)

    @router.get("/metrics")
    async def metrics(request: Request) -> Response:
        check_key(request.headers)
        return Response(service.metrics.render().encode(), media_type="text/plain; version=0.0.4")


class _Disconnected(Exception):
    """The client went away before its request body arrived: nothing to answer."""


class InferEndpoint:
    """``POST /v2/models/{name}[/versions/{v}]/infer`` as pure ASGI middleware; every other request
    goes on to the FastAPI app.

    Why not a FastAPI route: under load the REST worker's event loop is the bottleneck (it holds the
    GIL ~70% of the time), and FastAPI's routing, dependency solving and exception layers were about
    a fifth of that per request (py-spy, docs/runtime.md). Doing the one hot route here keeps the
    same checks, messages and statuses (key, model, body limit, wire errors, service errors, generic
    500) and leaves metadata, health, metrics and added routers to FastAPI. Sits inside
    :class:`MetricsMiddleware`, so replies are counted as before.
    """

    def __init__(self, app: Any, service: AnalyzerService, check_key: KeyCheck, max_body_bytes: int) -> None:
        self.app, self.service, self.check_key, self.limit = app, service, check_key, max_body_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        match = _INFER_PATH.fullmatch(scope.get("path", "")) if scope["type"] == "http" else None
        if match is None:
            await self.app(scope, receive, send)
            return
        try:
            if scope["method"] != "POST":
                raise ServiceError(405, f"method {scope['method']} is not allowed on {scope['path']}",
                                   {"Allow": "POST"})
            status, (body, headers) = 200, await self._infer(match, Headers(scope=scope), receive)
        except _Disconnected:
            return
        except ServiceError as exc:
            status, body, headers = exc.status, encode_error(exc.message), {"content-type": JSON, **exc.headers}
        except Exception:  # noqa: BLE001 - a generic 500; the detail goes to the log only
            log.exception("unhandled error on %s %s", scope["method"], scope["path"])
            status, body, headers = 500, encode_error(INTERNAL_ERROR), {"content-type": JSON}
        raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-length", str(len(body)).encode()), *raw]})
        await send({"type": "http.response.body", "body": body})

    async def _infer(self, match: re.Match, headers: Headers, receive: Any) -> tuple[bytes, dict[str, str]]:
        self.check_key(headers)
        self.service.check_model(match["name"], match["version"])
        body = await self._body(headers, receive)
        try:
            req = decode_request(body, headers)
        except WireError as exc:
            raise ServiceError(400, str(exc)) from None
        key = None if req.id is None else ("rest", req.id, hashlib.sha256(body).digest())

        def encode(resp: Any) -> tuple[bytes, dict[str, str]]:
            try:
                return encode_response(resp, binary_outputs=req.binary_outputs())
            except WireError as exc:
                raise ServiceError(400, str(exc)) from None

        return await self.service.infer_encoded(req, key, encode)

    async def _body(self, headers: Headers, receive: Any) -> bytes:
        """The body, refused with 413 as soon as it (or its declared length) exceeds the limit."""
        declared = headers.get("content-length")
        if declared is not None and declared.strip().isdigit() and int(declared) > self.limit:
            raise ServiceError(413, f"request body of {int(declared)} bytes exceeds the limit of "
                                    f"{self.limit} bytes; send fewer rows per request")
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Disconnected
            chunk, more = message.get("body", b""), message.get("more_body", False)
            size += len(chunk)
            if size > self.limit:
                raise ServiceError(413, f"request body exceeds the limit of {self.limit} bytes; "
                                        "send fewer rows per request")
            chunks.append(chunk)
        return b"".join(chunks)


_INFER_PATH = re.compile(r"/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?/infer")


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


class MetricsMiddleware:
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
