"""The REST front end of :class:`~privsplit.runtime.service.AnalyzerService` (OIP v2 over HTTP).

:func:`oip_router` holds the routes, :func:`install_error_handlers` turns every failure into
``{"error": "..."}`` with its status, :class:`MetricsMiddleware` counts every reply. Further routers
(e.g. a browser page) are added beside :func:`oip_router` in their own modules.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from privsplit.runtime.auth import KeyCheck
from privsplit.runtime.metrics import ServiceMetrics
from privsplit.runtime.service import INTERNAL_ERROR, AnalyzerService, ServiceError
from privsplit.runtime.wire import WireError, decode_request, encode_error, encode_response

__all__ = ["oip_router", "install_error_handlers", "MetricsMiddleware", "encode_json"]

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


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it (or its declared length) exceeds ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.strip().isdigit() and int(declared) > limit:
        raise ServiceError(413, f"request body of {int(declared)} bytes exceeds the limit of "
                                f"{limit} bytes; send fewer rows per request")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ServiceError(413, f"request body exceeds the limit of {limit} bytes; send fewer rows per request")
        chunks.append(chunk)
    return b"".join(chunks)


def oip_router(service: AnalyzerService, check_key: KeyCheck, *, max_body_bytes: int) -> APIRouter:
    """Health (no key), metadata, inference and ``/metrics`` routes for ``service``."""
    router = APIRouter()
    _health_routes(router, service)
    _metadata_routes(router, service, check_key)
    _infer_route(router, service, check_key, max_body_bytes)
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


def _infer_route(router: APIRouter, service: AnalyzerService, check_key: KeyCheck, max_body_bytes: int) -> None:
    @router.post("/v2/models/{name}/infer")
    @router.post("/v2/models/{name}/versions/{version}/infer")
    async def infer(name: str, request: Request, version: str | None = None) -> Response:
        check_key(request.headers)
        service.check_model(name, version)
        body = await read_body(request, max_body_bytes)
        try:
            req = decode_request(body, request.headers)
        except WireError as exc:
            raise ServiceError(400, str(exc)) from None
        key = None if req.id is None else ("rest", req.id, hashlib.sha256(body).digest())

        def encode(resp: Any) -> tuple[bytes, dict[str, str]]:
            try:
                return encode_response(resp, binary_outputs=req.binary_outputs())
            except WireError as exc:
                raise ServiceError(400, str(exc)) from None

        out, headers = await service.infer_encoded(req, key, encode)
        return Response(out, headers=headers)


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
