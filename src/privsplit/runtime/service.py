"""The protocol-independent analyzer service: validation, micro-batched analyzer calls, responses.

Both front ends (REST in :mod:`~privsplit.runtime.routes`, gRPC in :mod:`~privsplit.runtime.grpc_server`)
decode their wire format into an :class:`~privsplit.runtime.wire.InferRequest` and call one
:class:`AnalyzerService`; everything they must agree on lives here: which inputs are valid, the
embedding-id check, micro-batching, the idempotency cache, metrics, and what a failure tells the
caller. Refusals raise :class:`ServiceError` carrying an HTTP status; the gRPC front end maps it
to a status code. An analyzer failure is logged with its traceback and answered with a generic
500 (its text may describe the model, which is the provider's business, not the caller's).
"""
from __future__ import annotations

import hmac
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from privsplit import __version__
from privsplit.defenses.bundles import OUTPUT_NAMES, ServerBundle, load_server_bundle
from privsplit.runtime.batching import BatcherClosed, MicroBatcher
from privsplit.runtime.metrics import ServiceMetrics
from privsplit.runtime.wire import InferRequest, InferResponse, InferTensor, ModelMetadata, ServerMetadata, TensorMetadata

__all__ = ["AnalyzerService", "ServiceError", "IdempotencyCache", "MODEL_VERSION", "SERVER_NAME", "EXTENSIONS",
           "INTERNAL_ERROR"]

MODEL_VERSION = "1"
SERVER_NAME = "privsplit"
EXTENSIONS = ["binary_tensor_data"]
ACCEPTED_DATATYPES = ("FP32", "FP16")
INTERNAL_ERROR = "internal server error: the analyzer failed on this request; the details are in the server log"

log = logging.getLogger("privsplit.serve")
T = TypeVar("T")


class ServiceError(Exception):
    """A request the service refuses: ``status`` (HTTP) and the message sent as ``{"error": message}``."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, dict(headers or {})


class IdempotencyCache:
    """The last ``size`` answers, keyed by request id and body digest (a retry is answered from here).

    Locked: the REST and gRPC front ends run on two event loops (threads) of one process.
    """

    def __init__(self, size: int = 1024) -> None:
        self.size = int(size)
        self._items: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable | None) -> Any | None:
        if key is None:
            return None
        with self._lock:
            hit = self._items.get(key)
            if hit is not None:
                self._items.move_to_end(key)
            return hit

    def put(self, key: Hashable | None, value: Any) -> None:
        if key is None or self.size <= 0:
            return
        with self._lock:
            self._items[key] = value
            while len(self._items) > self.size:
                self._items.popitem(last=False)


class AnalyzerService:
    """One served server bundle; the object every front end calls.

    Args:
        bundle: a loaded :class:`ServerBundle` or its folder.
        max_batch, max_delay_ms: micro-batching limits (see :class:`MicroBatcher`).
        metrics: where requests and batch sizes are recorded (a fresh :class:`ServiceMetrics` by default).
        idempotency_cache: how many answered request ids to remember per front end (0 disables).
    """

    def __init__(self, bundle: ServerBundle | str | Path, *, max_batch: int = 32, max_delay_ms: float = 2.0,
                 metrics: ServiceMetrics | None = None, idempotency_cache: int = 1024) -> None:
        self.bundle = bundle if isinstance(bundle, ServerBundle) else load_server_bundle(bundle)
        self.bundle.analyzer.eval()
        self.model_name = self.bundle.model_name
        self.input_name = self.bundle.input_name
        self.input_shape = tuple(int(d) for d in self.bundle.input_shape)
        self.classes = list(self.bundle.classes)
        self._labels = np.array([c.encode("utf-8") for c in self.classes], dtype=object)
        self.metrics = metrics or ServiceMetrics()
        self.max_batch, self.max_delay_ms = max_batch, max_delay_ms
        self.cache = IdempotencyCache(idempotency_cache)
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
        """True while the service can answer (its batcher is running)."""
        return self.batcher.running

    # ------------------------------------------------------------------ model and metadata
    def run_batch(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Analyzer on a float32 batch ``(N, *input_shape)``: (probabilities FP32 [N, C], class index [N])."""
        with torch.inference_mode():
            logits = self.bundle.analyzer(torch.from_numpy(x))
            probs = torch.softmax(logits.float(), dim=1)
        p = probs.numpy()
        return p, p.argmax(axis=1)

    def check_model(self, name: str, version: str | None = None) -> None:
        """:class:`ServiceError` 404 unless ``name`` (and ``version``, when given) is the served model."""
        if name != self.model_name:
            raise ServiceError(404, f"unknown model {name!r}; this server serves {self.model_name!r}")
        if version not in (None, "", MODEL_VERSION):
            raise ServiceError(404, f"model {name!r} has no version {version!r}; available: {MODEL_VERSION}")

    def metadata(self) -> ModelMetadata:
        """OIP model metadata from the bundle."""
        return ModelMetadata(
            name=self.model_name, platform="privsplit_pytorch", versions=[MODEL_VERSION],
            inputs=[TensorMetadata(self.input_name, "FP32", [-1, *self.input_shape])],
            outputs=[TensorMetadata(OUTPUT_NAMES[0], "FP32", [-1, len(self.classes)]),
                     TensorMetadata(OUTPUT_NAMES[1], "BYTES", [-1])])

    @staticmethod
    def server_metadata() -> ServerMetadata:
        """The OIP v2 server metadata (name, version, extensions)."""
        return ServerMetadata(SERVER_NAME, __version__, list(EXTENSIONS))

    # ------------------------------------------------------------------ validation
    def _describe_input(self) -> str:
        return f"{self.input_name!r} (FP32, shape [N, {', '.join(map(str, self.input_shape))}])"

    def check_embedding(self, parameters: dict[str, Any]) -> None:
        """409 when the request names another embedding than the server bundle's (constant-time compare)."""
        if "embedding_id" not in parameters:
            return
        emb = parameters["embedding_id"]
        if not isinstance(emb, str):
            raise ServiceError(400, f"parameter 'embedding_id' must be a string, got {emb!r}")
        if not hmac.compare_digest(emb.encode("utf-8", "replace"), self.bundle.embedding_id.encode()):
            raise ServiceError(409, (
                f"client bundle does not match this server: the client's embedding id {emb[:12]!r} "
                f"differs from the server bundle's {self.bundle.embedding_id[:12]!r}; use the client and "
                "server bundles exported together"))

    def check_input(self, name: str, datatype: str, shape: tuple[int, ...]) -> None:
        """400 unless one tensor ``name`` of ``datatype`` and ``shape`` is what the model takes.

        Split from :meth:`prepare` so the gRPC front end can refuse a huge declared shape before
        it looks at the raw bytes.
        """
        if name != self.input_name:
            raise ServiceError(400, f"unknown input {name!r}: model {self.model_name!r} takes exactly one input "
                                    f"{self._describe_input()}")
        if datatype not in ACCEPTED_DATATYPES:
            raise ServiceError(400, f"input {name!r} has datatype {datatype}; expected FP32 (or FP16)")
        if len(shape) != 1 + len(self.input_shape) or tuple(shape[1:]) != self.input_shape or shape[0] < 1:
            raise ServiceError(400, f"input {name!r} has shape {list(shape)}; expected "
                                    f"[N, {', '.join(map(str, self.input_shape))}] with N >= 1")

    def check_outputs(self, names: list[str]) -> None:
        """``ServiceError`` 400 for a requested output this model does not have."""
        for name in names:
            if name not in OUTPUT_NAMES:
                raise ServiceError(400, f"unknown output {name!r}; model {self.model_name!r} has outputs "
                                        f"{', '.join(map(repr, OUTPUT_NAMES))}")

    def prepare(self, req: InferRequest) -> np.ndarray:
        """Validate a decoded request; the float32 features ``(N, *input_shape)`` or :class:`ServiceError`."""
        self.check_embedding(req.parameters)
        names = [t.name for t in req.inputs]
        if names != [self.input_name]:
            unknown = [n for n in names if n != self.input_name]
            why = f"unknown input {unknown[0]!r}" if unknown else f"got inputs {names}"
            raise ServiceError(400, f"{why}: model {self.model_name!r} takes exactly one input "
                                    f"{self._describe_input()}")
        t = req.inputs[0]
        self.check_input(t.name, t.datatype, tuple(t.shape))
        x = np.ascontiguousarray(t.data, dtype=np.float32)
        finite = np.isfinite(x).reshape(x.shape[0], -1).all(axis=1)
        if not finite.all():
            row = int(np.flatnonzero(~finite)[0])
            raise ServiceError(400, f"input {t.name!r} contains NaN or Inf (first in row {row}); "
                                    "features must be finite")
        self.check_outputs([o.name for o in req.outputs])
        return x

    # ------------------------------------------------------------------ inference
    def response(self, req: InferRequest, probs: np.ndarray, index: np.ndarray) -> InferResponse:
        """The OIP response for ``req`` (only the requested outputs, in the requested order)."""
        tensors = {
            OUTPUT_NAMES[0]: InferTensor(OUTPUT_NAMES[0], probs.shape, "FP32", probs.astype(np.float32, copy=False)),
            OUTPUT_NAMES[1]: InferTensor(OUTPUT_NAMES[1], index.shape, "BYTES", self._labels[index]),
        }
        wanted = [o.name for o in req.outputs] or list(OUTPUT_NAMES)
        return InferResponse(model_name=self.model_name, model_version=MODEL_VERSION, id=req.id,
                             outputs=[tensors[n] for n in wanted])

    async def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Run validated features through the batcher; 503 when shutting down, a generic 500 on failure."""
        try:
            probs, index = await self.batcher.submit_async(x)
        except Exception as exc:  # noqa: BLE001 - turned into the caller's status (CancelledError passes)
            raise self._failure(exc, x.shape[0]) from None
        return probs, index

    def _failure(self, exc: BaseException, rows: int) -> ServiceError:
        """The caller's view of a failed analyzer call: 503 when shutting down, else a generic 500 (logged)."""
        if isinstance(exc, BatcherClosed):
            return ServiceError(503, str(exc))
        log.error("analyzer failed on a batch holding a request of %d row(s)", rows, exc_info=exc)
        return ServiceError(500, INTERNAL_ERROR)

    def _begin(self, req: InferRequest, key: Hashable | None) -> tuple[np.ndarray, Any]:
        """Validated features and the cached answer to a retry (None when there is none)."""
        x = self.prepare(req)
        hit = self.cache.get(key)
        if hit is not None:
            self.metrics.duplicates.inc()
        return x, hit

    def _finish(self, req: InferRequest, key: Hashable | None, outputs: tuple[np.ndarray, np.ndarray],
                encode: Callable[[InferResponse], T]) -> T:
        out = encode(self.response(req, *outputs))
        self.cache.put(key, out)
        return out

    async def infer_encoded(self, req: InferRequest, key: Hashable | None,
                            encode: Callable[[InferResponse], T]) -> T:
        """Validate, answer a retry from the cache, else predict and ``encode`` the response (cached).

        ``key`` identifies the request including its bytes and wire format (None: not cached).
        """
        x, hit = self._begin(req, key)
        if hit is not None:
            return hit
        return self._finish(req, key, await self.predict(x), encode)

    def infer_then(self, req: InferRequest, key: Hashable | None, encode: Callable[[InferResponse], T],
                   done: Callable[[T | None, ServiceError | None], None]) -> Future | None:
        """:meth:`infer_encoded` for front ends without an event loop: calls ``done(answer, None)`` or
        ``done(None, error)`` once, from the batcher's thread (at once for a cached answer).

        Validation errors are raised here, before anything is queued. Returns the batcher's future
        (cancel it when the caller goes away, and the request is dropped if not yet running), or
        None for a cached answer. ``done`` must not block: it runs on the batcher's thread.
        """
        x, hit = self._begin(req, key)
        if hit is not None:
            done(hit, None)
            return None

        def settle(fut: Future) -> None:
            if fut.cancelled():
                return
            exc = fut.exception()
            if exc is not None:
                done(None, self._failure(exc, x.shape[0]))
                return
            try:
                out = self._finish(req, key, fut.result(), encode)
            except Exception as err:  # noqa: BLE001 - an encoding bug is a generic 500, as on the event loops
                log.error("answering a request of %d row(s) failed", x.shape[0], exc_info=err)
                done(None, ServiceError(500, INTERNAL_ERROR))
                return
            done(out, None)

        try:
            future = self.batcher.submit(x)
        except BatcherClosed as exc:
            raise self._failure(exc, x.shape[0]) from None
        future.add_done_callback(settle)
        return future

    def infer(self, req: InferRequest) -> InferResponse:
        """Synchronous in-process inference through the batcher (validation included)."""
        self.start()
        probs, index = self.batcher(self.prepare(req))
        return self.response(req, probs, index)
