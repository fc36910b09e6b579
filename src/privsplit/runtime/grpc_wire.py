"""OIP v2 gRPC messages <-> the protocol-neutral :mod:`~privsplit.runtime.wire` dataclasses.

Tensors travel in ``raw_input_contents`` / ``raw_output_contents`` (flat little-endian bytes; BYTES
elements with a 4-byte little-endian length prefix, as Triton does) or in the typed ``contents``
fields. Every malformed message raises :class:`~privsplit.runtime.wire.WireError` saying what is wrong;
sizes are checked against the declared shape before any array is built, so a huge declared shape
costs nothing. Needs protobuf (the ``grpc`` extra); used by both the gRPC server and client.
"""
from __future__ import annotations

import math
import struct
from typing import Any

import grpc
import numpy as np

from privsplit.runtime.proto import grpc_predict_v2_pb2 as pb
from privsplit.runtime.wire import (
    InferRequest, InferResponse, InferTensor, RequestedOutput, WireError, _bytes_elements, _check_shape, _dtype,
)

__all__ = ["SERVICE_NAME", "STATUS_CODES", "pb", "params_from_proto", "params_to_proto", "request_from_proto", "request_to_proto",
           "response_from_proto", "response_to_proto"]

# the typed-contents field of each datatype (FP16 has none: raw bytes only)
_CONTENTS = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
             "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
             "UINT32": "uint_contents", "UINT64": "uint64_contents", "FP32": "fp32_contents",
             "FP64": "fp64_contents", "BYTES": "bytes_contents"}

#: the OIP v2 gRPC service, and the gRPC code of each HTTP status the service raises
SERVICE_NAME = "inference.GRPCInferenceService"
STATUS_CODES = {400: grpc.StatusCode.INVALID_ARGUMENT, 401: grpc.StatusCode.UNAUTHENTICATED,
                404: grpc.StatusCode.NOT_FOUND, 409: grpc.StatusCode.FAILED_PRECONDITION,
                413: grpc.StatusCode.RESOURCE_EXHAUSTED, 500: grpc.StatusCode.INTERNAL,
                503: grpc.StatusCode.UNAVAILABLE}


def params_from_proto(params: Any) -> dict[str, Any]:
    """A ``map<string, InferParameter>`` as a plain dict (an unset parameter is refused)."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        which = value.WhichOneof("parameter_choice")
        if which is None:
            raise WireError(f"parameter {key!r} has no value (set bool_param, int64_param or string_param)")
        out[key] = getattr(value, which)
    return out


def params_to_proto(params: dict[str, Any], target: Any) -> None:
    for key, value in params.items():
        if isinstance(value, bool):
            target[key].bool_param = value
        elif isinstance(value, int):
            target[key].int64_param = value
        elif isinstance(value, str):
            target[key].string_param = value
        else:
            raise WireError(f"parameter {key!r}: gRPC parameters are bool, int or str, got {type(value).__name__}")


def _from_raw(raw: bytes, datatype: str, shape: tuple[int, ...], what: str) -> Any:
    count, dt = math.prod(shape), _dtype(datatype, what)
    if datatype == "BYTES":
        return _bytes_elements(memoryview(raw), count, what)
    if len(raw) != count * dt.itemsize:
        raise WireError(f"{what}: raw contents of {len(raw)} bytes do not match shape {list(shape)} x "
                        f"{dt.itemsize}-byte {datatype} = {count * dt.itemsize} bytes")
    data = np.frombuffer(raw, dtype=dt.newbyteorder("<")).astype(dt)  # a writable copy (torch wants one)
    if dt.kind == "b" and data.view(np.uint8).max(initial=0) > 1:
        raise WireError(f"{what}: BOOL bytes must be 0 or 1")
    return data


def _from_contents(contents: Any, datatype: str, shape: tuple[int, ...], what: str) -> Any:
    field = _CONTENTS.get(datatype)
    if field is None:
        raise WireError(f"{what}: {datatype} data must travel in raw_input_contents")
    values = getattr(contents, field)
    if len(values) != math.prod(shape):
        raise WireError(f"{what}: shape {list(shape)} needs {math.prod(shape)} elements but {field} has {len(values)}")
    if datatype == "BYTES":
        return list(values)
    dt = _dtype(datatype, what)
    wide = np.array(values, dtype=np.float64 if dt.kind == "f" else np.int64 if dt.kind == "i" else
                    np.uint64 if dt.kind == "u" else dt)
    data = wide.astype(dt)
    if dt.kind in "iu" and not np.array_equal(data.astype(wide.dtype), wide):
        raise WireError(f"{what}: {field} holds a value outside the {datatype} range")
    return data


def request_from_proto(msg: pb.ModelInferRequest) -> InferRequest:
    """Decode a ``ModelInferRequest`` (raw or typed contents)."""
    raw = list(msg.raw_input_contents)
    if raw and len(raw) != len(msg.inputs):
        raise WireError(f"raw_input_contents has {len(raw)} entries for {len(msg.inputs)} inputs; "
                        "send one per input, in order")
    inputs = []
    for i, t in enumerate(msg.inputs):
        what = f"input {t.name!r}"
        shape = _check_shape(list(t.shape), what)
        _dtype(t.datatype, what)
        if raw and t.HasField("contents"):
            raise WireError(f"{what}: has both contents and raw_input_contents")
        data = _from_raw(raw[i], t.datatype, shape, what) if raw else _from_contents(t.contents, t.datatype, shape, what)
        inputs.append(InferTensor(t.name, shape, t.datatype, data, params_from_proto(t.parameters)))
    outputs = [RequestedOutput(o.name, parameters=params_from_proto(o.parameters)) for o in msg.outputs]
    return InferRequest(inputs=inputs, id=msg.id or None, outputs=outputs, parameters=params_from_proto(msg.parameters))


def _raw(t: InferTensor) -> bytes:
    if t.datatype == "BYTES":
        return b"".join(struct.pack("<I", len(x)) + x for x in t.data.reshape(-1))
    return np.ascontiguousarray(t.data, dtype=t.data.dtype.newbyteorder("<")).tobytes()


def request_to_proto(req: InferRequest, model_name: str, model_version: str = "") -> pb.ModelInferRequest:
    """Encode ``req`` with raw input contents."""
    msg = pb.ModelInferRequest(model_name=model_name, model_version=model_version, id=req.id or "")
    params_to_proto(req.parameters, msg.parameters)
    for t in req.inputs:
        params_to_proto(t.parameters, msg.inputs.add(name=t.name, datatype=t.datatype, shape=t.shape).parameters)
        msg.raw_input_contents.append(_raw(t))
    for o in req.outputs:
        params_to_proto(o.parameters, msg.outputs.add(name=o.name).parameters)
    return msg


def response_to_proto(resp: InferResponse) -> pb.ModelInferResponse:
    """Encode ``resp`` with raw output contents."""
    msg = pb.ModelInferResponse(model_name=resp.model_name, model_version=resp.model_version or "", id=resp.id or "")
    params_to_proto(resp.parameters, msg.parameters)
    for t in resp.outputs:
        params_to_proto(t.parameters, msg.outputs.add(name=t.name, datatype=t.datatype, shape=t.shape).parameters)
        msg.raw_output_contents.append(_raw(t))
    return msg


def response_from_proto(msg: pb.ModelInferResponse) -> InferResponse:
    """Decode a ``ModelInferResponse`` (raw or typed contents)."""
    raw = list(msg.raw_output_contents)
    if raw and len(raw) != len(msg.outputs):
        raise WireError(f"raw_output_contents has {len(raw)} entries for {len(msg.outputs)} outputs")
    outputs = []
    for i, t in enumerate(msg.outputs):
        what, shape = f"output {t.name!r}", _check_shape(list(t.shape), f"output {t.name!r}")
        data = _from_raw(raw[i], t.datatype, shape, what) if raw else _from_contents(t.contents, t.datatype, shape, what)
        outputs.append(InferTensor(t.name, shape, t.datatype, data, params_from_proto(t.parameters)))
    return InferResponse(model_name=msg.model_name, outputs=outputs, model_version=msg.model_version or None,
                         id=msg.id or None, parameters=params_from_proto(msg.parameters))
