"""KServe Open Inference Protocol v2 (REST) messages and ALL of their (de)serialisation.

Bodies are JSON, or, with the binary tensor extension, a JSON header of
``Inference-Header-Content-Length`` bytes followed by the raw little-endian tensor bytes in
tensor order, each tensor declaring ``parameters.binary_data_size``.  BYTES elements travel as a
4-byte little-endian length prefix plus the bytes (binary) or as UTF-8 strings (JSON); in numpy
they are object arrays of ``bytes``.  Non-finite floats in JSON data are written and read as
``NaN``/``Infinity`` (as Python and tritonclient do); use binary data for strict parsers.  Every malformed input raises :class:`WireError` with a
message that says what is wrong, so a server can answer 400 with ``encode_error(str(exc))``.
Only the standard library and numpy are imported: this module ships to phones and servers.
"""
from __future__ import annotations

import json
import math
import struct
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "HEADER_LENGTH", "MAX_ELEMENTS", "WireError", "datatype_to_numpy", "numpy_to_datatype",
    "InferTensor", "RequestedOutput", "InferRequest", "InferResponse", "TensorMetadata",
    "ModelMetadata", "ServerMetadata", "ErrorResponse", "encode_request", "decode_request",
    "encode_response", "decode_response", "encode_error", "decode_error",
]

HEADER_LENGTH = "Inference-Header-Content-Length"
MAX_ELEMENTS = 2**31
"""Largest element count a declared shape may have; checked before anything is allocated."""

_DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_), "UINT8": np.dtype(np.uint8), "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32), "UINT64": np.dtype(np.uint64), "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16), "INT32": np.dtype(np.int32), "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16), "FP32": np.dtype(np.float32), "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}
_JSON_TYPES = {"b": (bool,), "u": (int,), "i": (int,), "f": (int, float)}  # JSON value types
_TYPE_NAMES = {str: "a string", list: "a list", dict: "an object"}


class WireError(ValueError):
    """A message that does not follow the protocol; ``str(exc)`` says exactly what is wrong."""


def datatype_to_numpy(datatype: str) -> np.dtype:
    """The numpy dtype of an OIP datatype (BYTES -> object); unknown names raise WireError."""
    return _dtype(datatype, "")


def _dtype(datatype: Any, what: str) -> np.dtype:
    if not isinstance(datatype, str) or datatype not in _DATATYPES:
        raise WireError(f"{what}{': ' if what else ''}unknown datatype {datatype!r}; "
                        f"expected one of {', '.join(_DATATYPES)}")
    return _DATATYPES[datatype]


def numpy_to_datatype(dtype: Any) -> str:
    """The OIP datatype of a numpy dtype; object, bytes and str dtypes map to BYTES."""
    dt = np.dtype(dtype)
    if dt.kind in "OSU":
        return "BYTES"
    for name, known in _DATATYPES.items():
        if known == dt.newbyteorder("="):
            return name
    raise WireError(f"numpy dtype {dt} has no OIP datatype")


def _check_shape(shape: Any, what: str) -> tuple[int, ...]:
    if not isinstance(shape, (list, tuple)) or not all(
            isinstance(d, (int, np.integer)) and not isinstance(d, bool) for d in shape):
        raise WireError(f"{what}: shape must be a list of integers, got {shape!r}")
    dims = tuple(int(d) for d in shape)
    if any(d < 0 for d in dims):
        raise WireError(f"{what}: shape {list(dims)} has a negative dimension")
    if math.prod(dims) > MAX_ELEMENTS:
        raise WireError(f"{what}: shape {list(dims)} has {math.prod(dims)} elements, "
                        f"more than the limit {MAX_ELEMENTS}")
    return dims


def _as_bytes(x: Any, what: str) -> bytes:
    if isinstance(x, (bytes, np.bytes_)):
        return bytes(x)
    if isinstance(x, str):
        return x.encode("utf-8")
    raise WireError(f"{what}: BYTES element {x!r} is neither bytes nor str")


@dataclass(eq=False)
class InferTensor:
    """One named tensor: ``data`` is reshaped to ``shape`` and checked against ``datatype``.

    Transport parameters (``binary_data_size``) never appear in ``parameters``.
    Equality compares values, with NaN equal to NaN.
    """

    name: str
    shape: tuple[int, ...]
    datatype: str
    data: np.ndarray
    parameters: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        what = f"tensor {self.name!r}"
        self.shape = _check_shape(self.shape, what)
        dt = _dtype(self.datatype, what)
        data = self.data
        if dt.kind == "O":
            flat = np.asarray(data, dtype=object).reshape(-1)
            data = np.empty(flat.size, dtype=object)
            data[:] = [_as_bytes(x, what) for x in flat]
        elif isinstance(data, np.ndarray) and data.dtype.newbyteorder("=") != dt:
            raise WireError(f"{what}: data dtype {data.dtype} does not match datatype {self.datatype}")
        else:
            data = np.asarray(data, dtype=dt)
        if data.size != math.prod(self.shape):
            raise WireError(f"{what}: shape {list(self.shape)} needs {math.prod(self.shape)} "
                            f"elements but data has {data.size}")
        self.data = data.reshape(self.shape)

    @classmethod
    def from_numpy(cls, name: str, array: np.ndarray, parameters: dict[str, Any] | None = None,
                   ) -> InferTensor:
        """A tensor whose shape and datatype are taken from ``array``."""
        array = np.asarray(array)
        return cls(name, array.shape, numpy_to_datatype(array.dtype), array, dict(parameters or {}))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, InferTensor):
            return NotImplemented
        same = (self.name, self.shape, self.datatype, self.parameters) == (
            other.name, other.shape, other.datatype, other.parameters)
        if self.datatype == "BYTES" or not same:
            return same and self.data.tolist() == other.data.tolist()
        return bool(np.array_equal(self.data, other.data, equal_nan=self.data.dtype.kind == "f"))

    __hash__ = None  # type: ignore[assignment]


@dataclass
class RequestedOutput:
    """An output the client asks for; ``binary_data`` None means 'not said' (server default)."""

    name: str
    binary_data: bool | None = None
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass
class InferRequest:
    """An inference request: ``POST /v2/models/{name}[/versions/{v}]/infer``."""

    inputs: list[InferTensor]
    id: str | None = None
    outputs: list[RequestedOutput] = field(default_factory=list)
    parameters: dict[str, Any] = field(default_factory=dict)

    def binary_outputs(self) -> set[str] | bool:
        """What to pass as ``encode_response(binary_outputs=...)``: the requested outputs wanting
        binary data, or, with no outputs requested, the ``binary_data_output`` parameter."""
        default = self.parameters.get("binary_data_output", False) is True
        if not self.outputs:
            return default
        return {o.name for o in self.outputs if (default if o.binary_data is None else o.binary_data)}


@dataclass
class InferResponse:
    """An inference response."""

    model_name: str
    outputs: list[InferTensor]
    model_version: str | None = None
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass
class ErrorResponse:
    """The error body ``{"error": "..."}`` of any failed call."""

    error: str


def _get(obj: Mapping[str, Any], key: str, kind: type, what: str, default: Any = ...) -> Any:
    """``obj[key]`` checked to be a ``kind`` (str, list or dict); ``default`` when absent."""
    if key not in obj:
        if default is ...:
            raise WireError(f"{what}: missing {key!r}")
        return default
    if not isinstance(obj[key], kind):
        raise WireError(f"{what}: {key!r} must be {_TYPE_NAMES[kind]}, got {obj[key]!r}")
    return obj[key]


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise WireError(f"{what} must be a JSON object, got {type(value).__name__}")
    return value


@dataclass
class TensorMetadata:
    """Name, datatype and shape (-1 for a dynamic dimension) of a model input or output."""

    name: str
    datatype: str
    shape: list[int]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}

    @classmethod
    def from_json(cls, obj: Any) -> TensorMetadata:
        what = "tensor metadata"
        obj = _object(obj, what)
        name = _get(obj, "name", str, what)
        datatype = _get(obj, "datatype", str, f"{what} {name!r}")
        _dtype(datatype, f"{what} {name!r}")
        shape = _get(obj, "shape", list, f"{what} {name!r}")
        if not all(isinstance(d, int) and not isinstance(d, bool) and d >= -1 for d in shape):
            raise WireError(f"{what} {name!r}: shape must be integers >= -1, got {shape!r}")
        return cls(name, datatype, shape)


@dataclass
class ModelMetadata:
    """``GET /v2/models/{name}`` response."""

    name: str
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    versions: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "versions": list(self.versions), "platform": self.platform,
                "inputs": [t.to_json() for t in self.inputs],
                "outputs": [t.to_json() for t in self.outputs]}

    @classmethod
    def from_json(cls, obj: Any) -> ModelMetadata:
        obj = _object(obj, "model metadata")
        what = "model metadata"
        versions = _get(obj, "versions", list, what, [])
        if not all(isinstance(v, str) for v in versions):
            raise WireError(f"{what}: 'versions' must be a list of strings, got {versions!r}")
        return cls(_get(obj, "name", str, what), _get(obj, "platform", str, what),
                   [TensorMetadata.from_json(t) for t in _get(obj, "inputs", list, what)],
                   [TensorMetadata.from_json(t) for t in _get(obj, "outputs", list, what)], versions)


@dataclass
class ServerMetadata:
    """``GET /v2`` response."""

    name: str
    version: str
    extensions: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "extensions": list(self.extensions)}

    @classmethod
    def from_json(cls, obj: Any) -> ServerMetadata:
        what = "server metadata"
        obj = _object(obj, what)
        ext = _get(obj, "extensions", list, what, [])
        if not all(isinstance(e, str) for e in ext):
            raise WireError(f"{what}: 'extensions' must be a list of strings, got {ext!r}")
        return cls(_get(obj, "name", str, what), _get(obj, "version", str, what), ext)


# ----------------------------------------------------------------------------- encoding

def _tensor_json(t: InferTensor, binary: bool, chunks: list[bytes]) -> dict[str, Any]:
    obj: dict[str, Any] = {"name": t.name, "shape": list(t.shape), "datatype": t.datatype}
    params = {k: v for k, v in t.parameters.items() if k != "binary_data_size"}
    flat = t.data.reshape(-1)
    if binary:
        if t.datatype == "BYTES":
            raw = b"".join(struct.pack("<I", len(x)) + x for x in flat)
        else:
            raw = np.ascontiguousarray(flat, dtype=t.data.dtype.newbyteorder("<")).tobytes()
        chunks.append(raw)
        params["binary_data_size"] = len(raw)
    elif t.datatype == "BYTES":
        try:
            obj["data"] = [x.decode("utf-8") for x in flat]
        except UnicodeDecodeError as exc:
            raise WireError(f"tensor {t.name!r}: BYTES data is not UTF-8 ({exc}); send it as binary")
    else:
        obj["data"] = flat.tolist()
    if params:
        obj["parameters"] = params
    return obj


def _frame(obj: dict[str, Any], chunks: list[bytes]) -> tuple[bytes, dict[str, str]]:
    try:
        header = json.dumps(obj, separators=(",", ":")).encode("ascii")
    except (TypeError, ValueError) as exc:
        raise WireError(f"message is not JSON-serialisable: {exc}") from exc
    if not chunks:
        return header, {"Content-Type": "application/json"}
    return header + b"".join(chunks), {"Content-Type": "application/octet-stream",
                                       HEADER_LENGTH: str(len(header))}


def _is_binary(which: Collection[str] | bool, name: str) -> bool:
    return which if isinstance(which, bool) else name in which


def encode_request(req: InferRequest, *, binary: Collection[str] | bool) -> tuple[bytes, dict[str, str]]:
    """Body and headers of ``req``; ``binary`` is True/False for all inputs, or the input names
    to send as binary data (the rest go in the JSON)."""
    chunks: list[bytes] = []
    obj: dict[str, Any] = {} if req.id is None else {"id": req.id}
    if req.parameters:
        obj["parameters"] = req.parameters
    obj["inputs"] = [_tensor_json(t, _is_binary(binary, t.name), chunks) for t in req.inputs]
    if req.outputs:
        obj["outputs"] = []
        for out in req.outputs:
            params = dict(out.parameters)
            if out.binary_data is not None:
                params["binary_data"] = out.binary_data
            obj["outputs"].append({"name": out.name, **({"parameters": params} if params else {})})
    return _frame(obj, chunks)


def encode_response(resp: InferResponse, *, binary_outputs: Collection[str] | bool,
                    ) -> tuple[bytes, dict[str, str]]:
    """Body and headers of ``resp``; ``binary_outputs`` is True/False for all outputs or the
    output names to send as binary data (see :meth:`InferRequest.binary_outputs`)."""
    chunks: list[bytes] = []
    obj: dict[str, Any] = {"model_name": resp.model_name}
    for key in ("model_version", "id"):
        if getattr(resp, key) is not None:
            obj[key] = getattr(resp, key)
    if resp.parameters:
        obj["parameters"] = resp.parameters
    obj["outputs"] = [_tensor_json(t, _is_binary(binary_outputs, t.name), chunks)
                      for t in resp.outputs]
    return _frame(obj, chunks)


def encode_error(msg: str) -> bytes:
    """The JSON error body ``{"error": msg}``."""
    return json.dumps({"error": str(msg)}).encode("ascii")


# ----------------------------------------------------------------------------- decoding

class _Body:
    """The JSON header of a body plus a cursor over the binary tensor bytes after it."""

    def __init__(self, body: bytes, headers: Mapping[str, str]) -> None:
        lower = {k.lower(): str(v).strip() for k, v in headers.items()}
        encoding = lower.get("content-encoding", "identity").lower()
        if encoding not in ("", "identity"):
            raise WireError(f"unsupported Content-Encoding {encoding!r}; send an uncompressed body")
        raw = lower.get(HEADER_LENGTH.lower())
        self.body, self.pos = memoryview(body), len(body)
        self.framed = raw is not None
        if raw is not None:
            if not (raw.isascii() and raw.isdigit()):
                raise WireError(f"{HEADER_LENGTH} must be a non-negative integer, got {raw!r}")
            self.pos = int(raw)
            if self.pos > len(body):
                raise WireError(f"{HEADER_LENGTH} {self.pos} is larger than the body "
                                f"({len(body)} bytes)")
        try:
            self.json = json.loads(bytes(self.body[:self.pos]).decode("utf-8"))
        except (ValueError, RecursionError) as exc:  # bad UTF-8/JSON, >4300-digit integers
            raise WireError(f"malformed JSON: {exc}") from exc

    def take(self, size: Any, what: str) -> memoryview:
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise WireError(f"{what}: binary_data_size must be a non-negative integer, got {size!r}")
        if not self.framed:
            raise WireError(f"{what}: has binary_data_size but there is no {HEADER_LENGTH} header")
        if size > len(self.body) - self.pos:
            raise WireError(f"{what}: binary_data_size {size} exceeds the "
                            f"{len(self.body) - self.pos} bytes left in the body")
        self.pos += size
        return self.body[self.pos - size:self.pos]

    def finish(self) -> None:
        if self.pos != len(self.body):
            raise WireError(f"{len(self.body) - self.pos} trailing bytes after the last binary tensor")


def _flatten(data: list[Any]) -> list[Any]:
    if not any(isinstance(x, list) for x in data):
        return data
    out: list[Any] = []
    stack = [iter(data)]
    while stack:
        for x in stack[-1]:
            if isinstance(x, list):
                stack.append(iter(x))
                break
            out.append(x)
        else:
            stack.pop()
    return out


def _bytes_elements(raw: memoryview, count: int, what: str) -> list[bytes]:
    if 4 * count > len(raw):
        raise WireError(f"{what}: {len(raw)} bytes cannot hold {count} BYTES elements")
    out, pos = [], 0
    for i in range(count):
        if pos + 4 > len(raw):
            raise WireError(f"{what}: BYTES element {i} has a truncated length prefix")
        (n,) = struct.unpack_from("<I", raw, pos)
        if pos + 4 + n > len(raw):
            raise WireError(f"{what}: BYTES element {i} of length {n} runs past binary_data_size")
        out.append(bytes(raw[pos + 4:pos + 4 + n]))
        pos += 4 + n
    if pos != len(raw):
        raise WireError(f"{what}: {len(raw) - pos} bytes left over after {count} BYTES elements")
    return out


def _decode_tensor(obj: Any, kind: str, body: _Body) -> InferTensor:
    obj = _object(obj, f"each of '{kind}s'")
    name = _get(obj, "name", str, kind)
    what = f"{kind} {name!r}"
    datatype = _get(obj, "datatype", str, what)
    dt = _dtype(datatype, what)
    shape = _check_shape(_get(obj, "shape", list, what), what)
    count = math.prod(shape)
    params = dict(_get(obj, "parameters", dict, what, {}))
    if any(k.startswith("shared_memory") for k in params):
        raise WireError(f"{what}: shared-memory tensors are not supported")
    if "binary_data_size" in params:
        if "data" in obj:
            raise WireError(f"{what}: has both 'data' and binary_data_size")
        raw = body.take(params.pop("binary_data_size"), what)
        if datatype == "BYTES":
            return InferTensor(name, shape, datatype, _bytes_elements(raw, count, what), params)
        if len(raw) != count * dt.itemsize:
            raise WireError(f"{what}: binary_data_size {len(raw)} does not match shape "
                            f"{list(shape)} x {dt.itemsize}-byte {datatype} = {count * dt.itemsize}")
        data = np.frombuffer(raw, dtype=dt.newbyteorder("<")).astype(dt)
        if dt.kind == "b" and data.view(np.uint8).max(initial=0) > 1:
            raise WireError(f"{what}: BOOL bytes must be 0 or 1")
        return InferTensor(name, shape, datatype, data, params)
    flat = _flatten(_get(obj, "data", list, what))
    if len(flat) != count:
        raise WireError(f"{what}: shape {list(shape)} needs {count} elements but 'data' has {len(flat)}")
    if datatype == "BYTES":
        if not all(isinstance(x, str) for x in flat):
            raise WireError(f"{what}: BYTES 'data' must be strings")
        return InferTensor(name, shape, datatype, flat, params)
    ok = _JSON_TYPES[dt.kind]
    bad = next((x for x in flat if type(x) not in ok), ok)
    if bad is not ok:
        expected = {"b": "booleans", "u": "integers", "i": "integers"}.get(dt.kind, "numbers")
        raise WireError(f"{what}: 'data' for {datatype} must be {expected}, got {bad!r}")
    try:
        with np.errstate(over="raise"):
            arr = np.array(flat, dtype=dt)
    except (OverflowError, FloatingPointError) as exc:
        raise WireError(f"{what}: 'data' has a value outside the {datatype} range ({exc})") from exc
    return InferTensor(name, shape, datatype, arr, params)


def _decode_tensors(obj: dict[str, Any], key: str, body: _Body, what: str) -> list[InferTensor]:
    tensors = [_decode_tensor(t, key[:-1], body) for t in _get(obj, key, list, what)]
    names = [t.name for t in tensors]
    if len(set(names)) != len(names):
        raise WireError(f"duplicate names in {key!r}: {names}")
    body.finish()
    return tensors


def _decode_output_request(obj: Any) -> RequestedOutput:
    obj = _object(obj, "each of 'outputs'")
    name = _get(obj, "name", str, "requested output")
    params = dict(_get(obj, "parameters", dict, f"requested output {name!r}", {}))
    binary = params.pop("binary_data", None)
    if binary is not None and not isinstance(binary, bool):
        raise WireError(f"requested output {name!r}: binary_data must be a boolean, got {binary!r}")
    return RequestedOutput(name, binary, params)


def decode_request(body: bytes, headers: Mapping[str, str]) -> InferRequest:
    """Parse a request body; headers are matched case-insensitively, Content-Type is ignored."""
    parsed = _Body(body, headers)
    obj = _object(parsed.json, "request")
    return InferRequest(
        inputs=_decode_tensors(obj, "inputs", parsed, "request"), id=_get(obj, "id", str, "request", None),
        outputs=[_decode_output_request(o) for o in _get(obj, "outputs", list, "request", [])],
        parameters=_get(obj, "parameters", dict, "request", {}))


def decode_response(body: bytes, headers: Mapping[str, str]) -> InferResponse:
    """Parse a response body (an error body raises WireError carrying the server's message)."""
    parsed = _Body(body, headers)
    obj = _object(parsed.json, "response")
    if "error" in obj and "outputs" not in obj:
        raise WireError(f"server returned an error: {obj['error']}")
    return InferResponse(
        model_name=_get(obj, "model_name", str, "response"),
        outputs=_decode_tensors(obj, "outputs", parsed, "response"),
        model_version=_get(obj, "model_version", str, "response", None),
        id=_get(obj, "id", str, "response", None),
        parameters=_get(obj, "parameters", dict, "response", {}))


def decode_error(body: bytes) -> ErrorResponse:
    """Parse an error body ``{"error": "..."}``."""
    obj = _object(_Body(body, {}).json, "error response")
    return ErrorResponse(_get(obj, "error", str, "error response"))
