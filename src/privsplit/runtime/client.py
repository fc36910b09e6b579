"""The device side: preprocess, extract, add noise (fresh or keyed per photo), send only the features, get predictions.

:class:`Client` talks the Open Inference Protocol v2 (REST) to any compliant server: ``privsplit
serve``, Triton Inference Server, KServe. It needs only the standard library, numpy, torch and the
client bundle (no web framework), keeps one HTTP/1.1 keep-alive connection per thread, and is
safe to share between threads.

Failures:

* 4xx: the request itself is wrong, so it is never retried; :class:`ClientError` carries the
  status and the server's ``error`` text.
* connection errors (refused, reset, timeout) and 5xx: retried ``retries`` times with exponential
  backoff ``backoff * 2**attempt`` seconds; then :class:`ServerUnavailable`. Every attempt of one
  call carries the same request ``id``, so the server recognises a retry (``privsplit serve``
  answers it from its idempotency cache) and the client checks that the answer is for its request.
"""
from __future__ import annotations

import http.client
import json
import ssl
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Union
from urllib.parse import quote, urlsplit

import numpy as np
import torch

from privsplit.data.align import FaceDetector
from privsplit.data.transforms import Preprocess, decode_image, normalize, prepare_image
from privsplit.defenses.bundles import INPUT_NAME, OUTPUT_NAMES, ClientBundle, load_client_bundle
from privsplit.defenses.keyed import KeyStore, crop_hash
from privsplit.errors import MissingDependency
from privsplit.runtime.errors import ClientError, ServerUnavailable
from privsplit.runtime.wire import (
    InferRequest, InferResponse, InferTensor, ModelMetadata, RequestedOutput, WireError, decode_error, decode_response,
    encode_request,
)

__all__ = ["Client", "ClientError", "ServerUnavailable", "Prediction", "load_images", "ImageInput", "wait_ready"]

ImageInput = Union[str, Path, np.ndarray]


@dataclass(frozen=True)
class Prediction:
    """One image's result: the predicted ``label`` and the class ``probabilities`` (server order)."""

    label: str
    probabilities: np.ndarray

    @property
    def probability(self) -> float:
        """Probability of the predicted label (the largest one)."""
        return float(np.max(self.probabilities))


# ============================================================================ images

def load_images(images: ImageInput | Sequence[ImageInput], pre: Preprocess, *, detector: FaceDetector | str | None = None) -> np.ndarray:
    """Image paths and/or uint8 arrays (HxWx3, or one NxHxWx3 array) -> uint8 ``N x size x size x 3``.

    Every image goes through :func:`privsplit.data.transforms.prepare_image`, the path training used
    (centre crop, or face detection + alignment when the bundle's preprocess says ``align``); an image
    without a face raises ``NoFaceError: no face found in IMG``.
    """
    if isinstance(images, (str, Path)):
        images = [images]
    elif isinstance(images, np.ndarray):
        images = list(images) if images.ndim == 4 else [images]
    out = []
    for i, img in enumerate(images):
        if isinstance(img, (str, Path)):
            out.append(decode_image(img, pre, detector=detector))
        elif isinstance(img, np.ndarray):
            out.append(prepare_image(img, pre, what=f"image {i}", detector=detector))
        else:
            raise TypeError(f"image {i}: expected a path or a uint8 array, got {type(img).__name__}")
    if not out:
        raise ValueError("no images given")
    return np.stack(out)


# ============================================================================ the client

class Client:
    """Send noised features to an OIP v2 analyzer and get predictions back.

    Args:
        client_bundle: a loaded :class:`ClientBundle` or its folder.
        url: the server, e.g. ``http://127.0.0.1:8000`` or ``https://host/prefix``.
        api_key: sent as ``Authorization: Bearer KEY``.
        binary: send features and receive outputs with the binary-tensor extension (smaller, exact).
        timeout: seconds per HTTP attempt (connect and read).
        retries: extra attempts after a connection error or 5xx (0 = no retry).
        backoff: first retry delay in seconds; doubles every attempt.
        extractor: ``"torch"`` (the bundle's extractor) or ``"onnx"`` (with ``onnx_path``).
        onnx_path: the exported extractor for ``extractor="onnx"``, run by
            :class:`privsplit.edge.onnx_runtime.OnnxExtractor` (one thread) after checking that it was exported
            from this client bundle (embedding id and tensor SHA-256; ``BundleError`` otherwise).
        detector: a face detector (registry name such as ``"dlib-hog"``, or an instance: a test stub, a mobile
            port) to detect + align faces even when the bundle's preprocess centre-crops (photos that are not
            LFW-style crops; the alignment reproduces the training framing), or to replace its ``align`` detector.
        key_store: where the device noise key lives, for bundles whose noise spec is ``keyed-gaussian``
            (default: :class:`privsplit.defenses.keyed.FileKeyStore`, a 0600 file created on first use).
            The key never leaves the device. Bundles with ``gaussian`` noise draw fresh noise per call.
        model_name: the served model's name (default: the bundle's).
        batch_size: most images per request in :meth:`infer`.
        ssl_context: for ``https`` URLs (default: the system's verified context).
        protocol: ``"rest"`` (OIP v2 over HTTP/1.1) or ``"grpc"`` (OIP v2 over gRPC, the ``grpc`` extra;
            ``url`` then looks like ``grpc://host:port`` or ``grpcs://host:port``), with the same
            retries, request ids and errors (:mod:`privsplit.runtime.grpc_client`).
    """

    def __init__(self, client_bundle: ClientBundle | str | Path, url: str, *, api_key: str | None = None,
                 binary: bool = True, timeout: float = 10.0, retries: int = 3, backoff: float = 0.2,
                 extractor: str = "torch", onnx_path: str | Path | None = None, model_name: str | None = None,
                 batch_size: int = 64, ssl_context: ssl.SSLContext | None = None, protocol: str = "rest",
                 detector: FaceDetector | str | None = None, key_store: KeyStore | None = None) -> None:
        if protocol not in ("rest", "grpc"):
            raise ValueError(f"protocol must be 'rest' or 'grpc', got {protocol!r}")
        if retries < 0 or backoff < 0 or timeout <= 0 or batch_size < 1:
            raise ValueError("need retries >= 0, backoff >= 0, timeout > 0 and batch_size >= 1")
        self._grpc: Any = None
        if protocol == "grpc":
            try:
                from privsplit.runtime.grpc_client import GrpcTransport
            except ImportError as exc:
                raise MissingDependency(f"protocol='grpc' ({exc})", extra="grpc") from None
            self._grpc = GrpcTransport(url, api_key=api_key, timeout=timeout, retries=retries, backoff=backoff)
            url = f"http://{self._grpc.target}"  # only for messages; REST is never used
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"server URL must look like http://host:port or https://host, got {url!r}")
        self.url = url.rstrip("/")
        self._scheme, self._host = parts.scheme, parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._prefix = parts.path.rstrip("/")
        self.api_key, self.binary, self.timeout = api_key, bool(binary), float(timeout)
        self.retries, self.backoff, self.batch_size = int(retries), float(backoff), int(batch_size)
        self._ssl = ssl_context
        self._local = threading.local()
        if extractor not in ("torch", "onnx"):
            raise ValueError(f"extractor must be 'torch' or 'onnx', got {extractor!r}")
        if extractor == "onnx" and onnx_path is None:
            raise ValueError("extractor='onnx' needs onnx_path=... (the exported extractor file)")
        self.bundle = client_bundle if isinstance(client_bundle, ClientBundle) else load_client_bundle(client_bundle)
        self.model_name = model_name or self.bundle.model_name
        if extractor == "torch":
            self._extract: Any = self.bundle.extractor
        else:
            from privsplit.edge.onnx_runtime import OnnxExtractor

            onnx = OnnxExtractor(onnx_path, threads=1)  # type: ignore[arg-type]
            onnx.check_bundle(self.bundle)
            self._extract = onnx
        self.bundle.extractor.eval()
        self.detector = detector
        if key_store is not None:
            if not getattr(self.bundle.noise, "identical_repeats", False):
                raise ValueError("key_store is only used with keyed noise; this bundle's noise is "
                                 f"{self.bundle.noise.spec()['kind']!r} (fresh per call)")
            self.bundle.noise.key_store = key_store

    # ------------------------------------------------------------------ device-side computation
    def features(self, images: ImageInput | Sequence[ImageInput], *, prepared: bool = False) -> np.ndarray:
        """Preprocess, run the extractor locally and add fresh noise: float32 ``N x feature_shape``.

        This is all that leaves the device. ``prepared=True``: ``images`` are already model inputs (uint8
        ``N x size x size x 3`` from :func:`privsplit.data.transforms.prepare_faces`), used as they are.
        """
        pre = self.bundle.preprocess
        if prepared:
            pixels = np.asarray(images)
            if pixels.dtype != np.uint8 or pixels.shape[1:] != (pre.size, pre.size, 3):
                raise ValueError(f"prepared images must be uint8 N x {pre.size} x {pre.size} x 3, got "
                                 f"{pixels.dtype} {tuple(pixels.shape)}")
        else:
            pixels = load_images(images, pre, detector=self.detector)
        x = normalize(torch.from_numpy(np.ascontiguousarray(pixels)).permute(0, 3, 1, 2), pre)
        with torch.inference_mode():
            z = self._extract(x)
            if getattr(self.bundle.noise, "identical_repeats", False):  # keyed: noise from this crop's hash
                z = self.bundle.noise(z, crop_hashes=[crop_hash(p) for p in pixels])
            else:
                z = self.bundle.noise(z)
        return np.ascontiguousarray(z.numpy(), dtype=np.float32)

    def infer(self, images: ImageInput | Sequence[ImageInput], *, prepared: bool = False) -> list[Prediction]:
        """One :class:`Prediction` per image, in order (``batch_size`` images per request)."""
        return self.infer_features(self.features(images, prepared=prepared))

    def infer_features(self, features: np.ndarray) -> list[Prediction]:
        """Send already extracted (and noised) features ``N x feature_shape``; one prediction per row."""
        features = np.ascontiguousarray(features, dtype=np.float32)
        if features.ndim != 1 + len(self.bundle.feature_shape) or \
                list(features.shape[1:]) != list(self.bundle.feature_shape):
            raise ValueError(f"features must have shape [N, {', '.join(map(str, self.bundle.feature_shape))}], "
                             f"got {list(features.shape)}")
        out: list[Prediction] = []
        for start in range(0, features.shape[0], self.batch_size):
            out += self._infer_chunk(features[start:start + self.batch_size])
        return out

    # ------------------------------------------------------------------ protocol
    def request_for(self, features: np.ndarray, request_id: str | None = None) -> InferRequest:
        """The OIP request this client sends for ``features`` (exposed for tests and tools)."""
        return InferRequest(
            inputs=[InferTensor.from_numpy(INPUT_NAME, features)], id=request_id or uuid.uuid4().hex,
            outputs=[RequestedOutput(name, binary_data=self.binary) for name in OUTPUT_NAMES],
            parameters={"embedding_id": self.bundle.embedding_id})

    def _infer_chunk(self, features: np.ndarray) -> list[Prediction]:
        req = self.request_for(features)
        resp = self._grpc.infer(req, self.model_name) if self._grpc is not None else self._rest_infer(req)
        if resp.id is not None and resp.id != req.id:
            raise ClientError(f"response id {resp.id!r} does not match request id {req.id!r}")
        outputs = {t.name: t.data for t in resp.outputs}
        missing = [n for n in OUTPUT_NAMES if n not in outputs]
        if missing:
            raise ClientError(f"response from {self.url} lacks outputs {missing}")
        n = features.shape[0]
        probs = np.asarray(outputs[OUTPUT_NAMES[0]], dtype=np.float32).reshape(n, -1)
        labels = outputs[OUTPUT_NAMES[1]].reshape(-1)
        if labels.shape[0] != n:
            raise ClientError(f"response has {labels.shape[0]} labels for {n} rows")
        return [Prediction(bytes(lab).decode("utf-8", "replace"), probs[i]) for i, lab in enumerate(labels)]

    def _rest_infer(self, req: InferRequest) -> InferResponse:
        body, headers = encode_request(req, binary=self.binary)
        _, resp_headers, data = self._call("POST", f"/v2/models/{quote(self.model_name, safe='')}/infer",
                                           body, headers)
        try:
            return decode_response(data, resp_headers)
        except WireError as exc:
            raise ClientError(f"malformed response from {self.url}: {exc}") from None

    def server_live(self) -> bool:
        """True when ``/v2/health/live`` (gRPC: ServerLive) says so (no retries)."""
        try:
            return self._grpc.live() if self._grpc is not None else \
                self._call("GET", "/v2/health/live", retries=0)[0] == 200
        except ClientError:
            return False

    def server_ready(self) -> bool:
        """True when ``/v2/health/ready`` (gRPC: ServerReady) says so (no retries)."""
        try:
            return self._grpc.ready() if self._grpc is not None else \
                self._call("GET", "/v2/health/ready", retries=0)[0] == 200
        except ClientError:
            return False

    def model_metadata(self) -> ModelMetadata:
        """The served model's metadata (``GET /v2/models/{name}``, gRPC: ModelMetadata)."""
        if self._grpc is not None:
            return self._grpc.model_metadata(self.model_name)
        _, _, data = self._call("GET", f"/v2/models/{quote(self.model_name, safe='')}")
        try:
            return ModelMetadata.from_json(json.loads(data))
        except (ValueError, WireError) as exc:
            raise ClientError(f"malformed model metadata from {self.url}: {exc}") from None

    # ------------------------------------------------------------------ HTTP with retries
    def _connection(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            if self._scheme == "https":
                conn = http.client.HTTPSConnection(self._host, self._port, timeout=self.timeout,
                                                   context=self._ssl or ssl.create_default_context())
            else:
                conn = http.client.HTTPConnection(self._host, self._port, timeout=self.timeout)
            self._local.conn = conn
        return conn

    def _drop_connection(self) -> None:
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            conn.close()

    def close(self) -> None:
        """Close this thread's connection (others close when their threads end) or the gRPC channel."""
        self._drop_connection()
        if self._grpc is not None:
            self._grpc.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None,
              *, retries: int | None = None) -> tuple[int, dict[str, str], bytes]:
        headers = dict(headers or {})
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        retries = self.retries if retries is None else retries
        last, attempt, stale_retry = "no attempt made", 0, False
        while attempt <= retries:
            reused = getattr(self._local, "conn", None) is not None
            try:
                conn = self._connection()
                conn.request(method, self._prefix + path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
            except ssl.SSLError as exc:  # certificate problems do not fix themselves
                self._drop_connection()
                raise ClientError(f"TLS error talking to {self.url}: {exc}") from None
            except (OSError, http.client.HTTPException) as exc:
                self._drop_connection()
                last = f"{type(exc).__name__}: {exc}"
                if reused and not stale_retry and isinstance(exc, _STALE):
                    stale_retry = True  # the server closed an idle keep-alive connection: reconnect now
                    continue
            else:
                if resp.will_close:
                    self._drop_connection()
                resp_headers = {k: v for k, v in resp.getheaders()}
                if resp.status < 400:
                    return resp.status, resp_headers, data
                message = _error_text(data)
                if resp.status < 500:
                    raise ClientError(message, resp.status)
                last = f"HTTP {resp.status}: {message}"
            if attempt < retries:
                time.sleep(self.backoff * 2 ** attempt)
            attempt += 1
        raise ServerUnavailable(f"{method} {self.url}{path} failed after {retries + 1} attempt(s); last: {last}")


_STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError, ConnectionAbortedError)


def _error_text(data: bytes) -> str:
    try:
        return decode_error(data).error
    except WireError:
        text = data.decode("utf-8", "replace").strip()
        return text[:500] or "(empty body)"


class _Process(Protocol):
    """What :func:`wait_ready` needs of a server process (``subprocess.Popen`` has it)."""

    returncode: int | None

    def poll(self) -> int | None: ...


def wait_ready(url: str, *, model: str | None = None, timeout: float = 60.0, alive: _Process | None = None) -> None:
    """Return once the OIP server at ``url`` is ready (``model``'s ready route, else the server's).

    For scripts and tests that start a server and must not send before it listens. ``alive`` (e.g. a
    ``subprocess.Popen``) is polled: if it has exited, waiting stops at once.

    Raises:
        ServerUnavailable: not ready after ``timeout`` seconds, or ``alive`` exited (its code is given).
    """
    import urllib.request

    route = f"{url}/v2/models/{quote(model)}/ready" if model else f"{url}/v2/health/ready"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if alive is not None and alive.poll() is not None:
            raise ServerUnavailable(f"the server process exited with {alive.returncode} before {url} was ready")
        try:
            with urllib.request.urlopen(route, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise ServerUnavailable(f"{url} not ready after {timeout} s: is `privsplit serve` running there?")
