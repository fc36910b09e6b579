"""Round-trip, validation and tritonclient cross-checks for privsplit.runtime.wire (OIP v2 REST)."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from privsplit.runtime.wire import (
    HEADER_LENGTH, ErrorResponse, InferRequest, InferResponse, InferTensor, ModelMetadata,
    RequestedOutput, ServerMetadata, TensorMetadata, WireError, datatype_to_numpy, decode_error,
    decode_request, decode_response, encode_error, encode_request, encode_response,
    numpy_to_datatype,
)

BINARY_MODES = [False, True, {"feat", "label"}]  # all JSON, all binary, mixed


def _tensors(note: bool = True) -> list[InferTensor]:
    rng = np.random.default_rng(0)
    return [
        InferTensor.from_numpy("feat", rng.standard_normal((2, 3, 4)).astype(np.float32)),
        InferTensor.from_numpy("half", np.array([[0.1, -2.5, np.inf]], dtype=np.float16)),
        InferTensor.from_numpy("idx", np.array([-(2**63), 0, 2**63 - 1], dtype=np.int64),
                               parameters={"note": "edge values"} if note else None),
        InferTensor.from_numpy("label", np.array([[b"cat", "d\u00e9j\u00e0"], [b"", b"x"]], dtype=object)),
    ]


def _request() -> InferRequest:
    return InferRequest(_tensors(), id="req-1", parameters={"priority": 1},
                        outputs=[RequestedOutput("logits", True), RequestedOutput("emb", None, {"k": 1})])


def _response() -> InferResponse:
    return InferResponse("analyzer", _tensors(), model_version="2", id="req-1", parameters={"t": 1.5})


def _split(body: bytes, headers: dict[str, str]) -> tuple[dict, bytes]:
    n = int(headers.get(HEADER_LENGTH, len(body)))
    return json.loads(body[:n]), body[n:]


@pytest.mark.parametrize("binary", BINARY_MODES, ids=["json", "binary", "mixed"])
def test_request_round_trip(binary) -> None:
    req = _request()
    body, headers = encode_request(req, binary=binary)
    assert decode_request(body, headers) == req
    header, rest = _split(body, headers)
    for t in header["inputs"]:
        sent_binary = binary if isinstance(binary, bool) else t["name"] in binary
        assert ("binary_data_size" in t.get("parameters", {})) == sent_binary
        assert ("data" in t) != sent_binary
    assert (HEADER_LENGTH in headers) == bool(binary)
    assert headers["Content-Type"] == ("application/octet-stream" if binary else "application/json")
    assert header["outputs"] == [{"name": "logits", "parameters": {"binary_data": True}},
                                 {"name": "emb", "parameters": {"k": 1}}]


@pytest.mark.parametrize("binary", BINARY_MODES, ids=["json", "binary", "mixed"])
def test_response_round_trip(binary) -> None:
    resp = _response()
    body, headers = encode_response(resp, binary_outputs=binary)
    out = decode_response(body, headers)
    assert out == resp
    assert out.outputs[0].data.dtype == np.float32 and out.outputs[0].data.flags.writeable
    assert out.outputs[3].data.tolist() == [[b"cat", "d\u00e9j\u00e0".encode()], [b"", b"x"]]


@pytest.mark.parametrize("transform", [str.lower, str.upper, lambda k: k.swapcase()])
def test_headers_case_insensitive_and_content_type_optional(transform) -> None:
    body, headers = encode_request(_request(), binary=True)
    headers = {transform(k): v for k, v in headers.items() if k != "Content-Type"}
    assert decode_request(body, headers) == _request()
    assert decode_request(*encode_request(_request(), binary=False)[:1], {}) == _request()


def test_nested_json_data_is_flattened() -> None:
    body = json.dumps({"inputs": [{"name": "x", "shape": [2, 2], "datatype": "INT32",
                                   "data": [[1, 2], [3, 4]]}]}).encode()
    (t,) = decode_request(body, {}).inputs
    assert t.data.dtype == np.int32 and t.data.tolist() == [[1, 2], [3, 4]]


def test_datatype_mapping() -> None:
    for name in ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
                 "FP16", "FP32", "FP64", "BYTES"]:
        assert numpy_to_datatype(datatype_to_numpy(name)) == name
    assert numpy_to_datatype(np.dtype(">f4")) == "FP32"
    assert numpy_to_datatype(np.dtype("S3")) == numpy_to_datatype(np.dtype("U3")) == "BYTES"
    with pytest.raises(WireError, match="unknown datatype 'BF16'"):
        datatype_to_numpy("BF16")
    with pytest.raises(WireError, match="has no OIP datatype"):
        numpy_to_datatype(np.complex64)


def test_binary_outputs_resolution() -> None:
    req = InferRequest([], outputs=[RequestedOutput("a", True), RequestedOutput("b", False),
                                    RequestedOutput("c")])
    assert req.binary_outputs() == {"a"}
    req.parameters["binary_data_output"] = True
    assert req.binary_outputs() == {"a", "c"}
    assert InferRequest([], parameters={"binary_data_output": True}).binary_outputs() is True
    assert InferRequest([]).binary_outputs() is False


def test_metadata_and_error_round_trip() -> None:
    model = ModelMetadata("analyzer", "privsplit_torch", [TensorMetadata("feat", "FP32", [-1, 64, 7, 7])],
                          [TensorMetadata("logits", "FP32", [-1, 2])], versions=["1"])
    assert ModelMetadata.from_json(json.loads(json.dumps(model.to_json()))) == model
    server = ServerMetadata("privsplit", "0.1.0", ["binary_tensor_data"])
    assert ServerMetadata.from_json(server.to_json()) == server
    assert decode_error(encode_error("bad 'x'")) == ErrorResponse("bad 'x'")
    with pytest.raises(WireError, match="server returned an error: boom"):
        decode_response(encode_error("boom"), {})
    for obj, msg in [({"name": "m", "platform": "p", "inputs": []}, "model metadata: missing 'outputs'"),
                     ({"name": "m", "platform": "p", "inputs": [{"name": "x", "datatype": "FP32",
                       "shape": [-2]}], "outputs": []}, "shape must be integers >= -1"),
                     ({"name": "m", "platform": "p", "inputs": [{"name": "x", "datatype": "F",
                       "shape": []}], "outputs": []}, "unknown datatype 'F'")]:
        with pytest.raises(WireError, match=msg):
            ModelMetadata.from_json(obj)
    with pytest.raises(WireError, match="'extensions' must be a list of strings"):
        ServerMetadata.from_json({"name": "s", "version": "1", "extensions": [1]})


def _inp(**kw) -> dict:
    return {"name": "x", "shape": [2, 2], "datatype": "FP32", **kw}


def _req(*inputs, **top) -> bytes:
    return json.dumps({"inputs": list(inputs), **top}).encode()


def _bin(inputs: list[dict], raw: bytes, header_len: int | None = None) -> tuple[bytes, dict]:
    head = _req(*inputs)
    return head + raw, {HEADER_LENGTH: str(len(head) if header_len is None else header_len)}


_SIZE16 = {"binary_data_size": 16}
MALFORMED = [
    (b'{"inputs": [', {}, "malformed JSON: Expecting value"),
    (b'\xff{}', {}, "malformed JSON: 'utf-8' codec can't decode"),
    (b"[]", {}, "request must be a JSON object, got list"),
    (b"{}", {}, "request: missing 'inputs'"),
    (b'{"inputs": {}}', {}, "request: 'inputs' must be a list, got {}"),
    (_req({"shape": [1], "datatype": "FP32", "data": [1]}), {}, "input: missing 'name'"),
    (_req(_inp(datatype="FP8", data=[1, 2, 3, 4])), {}, "input 'x': unknown datatype 'FP8'"),
    (_req(_inp(shape=[2, -2], data=[])), {}, r"input 'x': shape \[2, -2\] has a negative dimension"),
    (_req(_inp(shape=[2, 1.5], data=[])), {}, "input 'x': shape must be a list of integers"),
    (_req(_inp(shape=[2**20, 2**20], data=[])), {}, "has 1099511627776 elements, more than the limit"),
    (_req(_inp(data=[1, 2, 3])), {}, r"input 'x': shape \[2, 2\] needs 4 elements but 'data' has 3"),
    (_req(_inp(data=[1, 2, 3, "4"])), {}, "input 'x': 'data' for FP32 must be numbers, got '4'"),
    (_req(_inp(data=[1, 2, True, 4])), {}, "'data' for FP32 must be numbers, got True"),
    (_req(_inp(datatype="INT64", data=[1, 2, 1.5, 4])), {}, "'data' for INT64 must be integers, got 1.5"),
    (_req(_inp(datatype="BOOL", data=[1, 0, 1, 0])), {}, "'data' for BOOL must be booleans, got 1"),
    (_req(_inp(datatype="UINT8", data=[1, 2, 3, 300])), {}, "'data' has a value outside the UINT8 range"),
    (_req(_inp(datatype="FP16", data=[1, 2, 3, 1e300])), {}, "'data' has a value outside the FP16 range"),
    (_req(_inp(datatype="BYTES", data=["a", "b", 3, "d"])), {}, "BYTES 'data' must be strings"),
    (_req(_inp(data={"a": 1})), {}, "input 'x': 'data' must be a list"),
    (_req(_inp()), {}, "input 'x': missing 'data'"),
    (_req(_inp(data=[1, 2, 3, 4]), _inp(data=[1, 2, 3, 4])), {}, "duplicate names in 'inputs'"),
    (_req(_inp(parameters={"shared_memory_region": "r"})), {}, "shared-memory tensors are not supported"),
    (_req(_inp(data=[1, 2, 3, 4]), outputs=[{"name": "y", "parameters": {"binary_data": "yes"}}]),
     {}, "requested output 'y': binary_data must be a boolean, got 'yes'"),
    (_req(_inp(parameters=_SIZE16)), {}, "has binary_data_size but there is no Inference-Header"),
    (*_bin([_inp(parameters=_SIZE16)], bytes(16), header_len=10**6), "Inference-Header-Content-Length "
     r"1000000 is larger than the body \(\d+ bytes\)"),
    (_req(), {HEADER_LENGTH: "-3"}, "Inference-Header-Content-Length must be a non-negative integer, got '-3'"),
    (*_bin([_inp(parameters={"binary_data_size": 12})], bytes(12)),
     r"binary_data_size 12 does not match shape \[2, 2\] x 4-byte FP32 = 16"),
    (*_bin([_inp(parameters=_SIZE16)], bytes(10)), "binary_data_size 16 exceeds the 10 bytes left in the body"),
    (*_bin([_inp(parameters={"binary_data_size": -1})], b""), "binary_data_size must be a non-negative integer"),
    (*_bin([_inp(parameters=_SIZE16)], bytes(19)), "3 trailing bytes after the last binary tensor"),
    (*_bin([_inp(parameters=_SIZE16, data=[1, 2, 3, 4])], bytes(16)), "has both 'data' and binary_data_size"),
    (*_bin([_inp(shape=[2**31, 2], parameters={"binary_data_size": 0})], b""), "more than the limit 2147483648"),
    (*_bin([_inp(datatype="BYTES", shape=[2], parameters={"binary_data_size": 7})], b"\1\0\0\0a\5\0"),
     "7 bytes cannot hold 2 BYTES elements"),
    (*_bin([_inp(datatype="BYTES", shape=[1], parameters={"binary_data_size": 6})], b"\5\0\0\0ab"),
     "BYTES element 0 of length 5 runs past binary_data_size"),
    (*_bin([_inp(datatype="BYTES", shape=[1], parameters={"binary_data_size": 6})], b"\1\0\0\0ab"),
     "1 bytes left over after 1 BYTES elements"),
    (*_bin([_inp(datatype="BOOL", parameters={"binary_data_size": 4})], b"\1\0\2\0"),
     "BOOL bytes must be 0 or 1"),
    (_req(_inp(data=[1, 2, 3, 4])), {"content-encoding": "gzip"}, "unsupported Content-Encoding 'gzip'"),
]


@pytest.mark.parametrize("body,headers,message", MALFORMED, ids=[m[2][:40] for m in MALFORMED])
def test_malformed_request_raises_wire_error(body: bytes, headers: dict, message: str) -> None:
    start = time.perf_counter()
    with pytest.raises(WireError, match=message):
        decode_request(body, headers)
    assert time.perf_counter() - start < 1.0  # huge declared shapes must not allocate


def test_malformed_response_and_bad_tensors() -> None:
    with pytest.raises(WireError, match="response: missing 'model_name'"):
        decode_response(b'{"outputs": []}', {})
    with pytest.raises(WireError, match="response: missing 'outputs'"):
        decode_response(b'{"model_name": "m"}', {})
    bad = InferResponse("m", [InferTensor.from_numpy("b", np.array([b"\xff"], dtype=object))])
    with pytest.raises(WireError, match="tensor 'b': BYTES data is not UTF-8 .*send it as binary"):
        encode_response(bad, binary_outputs=False)
    assert decode_response(*encode_response(bad, binary_outputs=True)) == bad
    with pytest.raises(WireError, match="data dtype float64 does not match datatype FP32"):
        InferTensor("t", (2,), "FP32", np.zeros(2))
    with pytest.raises(WireError, match=r"shape \[3\] needs 3 elements but data has 2"):
        InferTensor("t", (3,), "FP32", np.zeros(2, np.float32))
    with pytest.raises(WireError, match="BYTES element 1 is neither bytes nor str"):
        InferTensor("t", (1,), "BYTES", [1])


_NUMERIC = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
            "FP16", "FP32", "FP64"]


@st.composite
def _tensor(draw, name: str, json_safe: bool) -> InferTensor:
    datatype = draw(st.sampled_from([*_NUMERIC, "BYTES"]))
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4))
    if datatype == "BYTES":
        elem = st.text(max_size=5).map(str.encode) if json_safe else st.binary(max_size=5)
        data = draw(st.lists(elem, min_size=int(np.prod(shape)), max_size=int(np.prod(shape))))
        return InferTensor(name, shape, datatype, data)
    return InferTensor(name, shape, datatype, draw(hnp.arrays(datatype_to_numpy(datatype), shape)))


@settings(max_examples=150, deadline=None)
@given(data=st.data(), n=st.integers(1, 3), mode=st.sampled_from(["json", "binary", "mixed"]))
def test_property_round_trip(data, n: int, mode: str) -> None:
    tensors = [data.draw(_tensor(f"t{i}", json_safe=mode == "json")) for i in range(n)]
    binary = {"json": False, "binary": True, "mixed": {t.name for t in tensors if t.datatype == "BYTES"}}[mode]
    req = InferRequest(tensors, id=data.draw(st.none() | st.text(max_size=4)))
    assert decode_request(*encode_request(req, binary=binary)) == req
    resp = InferResponse("m", tensors)
    assert decode_response(*encode_response(resp, binary_outputs=binary)) == resp


# --------------------------------------------------------------- tritonclient cross-checks
def _as_str(a: np.ndarray) -> list:
    return [x.decode() if isinstance(x, bytes) else x for x in a.reshape(-1).tolist()]


@pytest.mark.parametrize("binary", BINARY_MODES, ids=["json", "binary", "mixed"])
def test_tritonclient_request_decodes(binary) -> None:
    httpclient = pytest.importorskip("tritonclient.http")
    inputs = []
    for t in _tensors():
        inp = httpclient.InferInput(t.name, list(t.shape), t.datatype)
        inp.set_data_from_numpy(t.data, binary_data=binary if isinstance(binary, bool) else t.name in binary)
        inputs.append(inp)
    outputs = [httpclient.InferRequestedOutput("logits", binary_data=False)]
    body, json_size = httpclient.InferenceServerClient.generate_request_body(
        inputs, outputs=outputs, request_id="r\u00e9q")  # json_size counts characters; rapidjson escapes to ASCII
    headers = {} if json_size is None else {HEADER_LENGTH: str(json_size)}  # tritonclient: no Content-Type
    req = decode_request(body, headers)
    assert req.id == "r\u00e9q" and req.outputs == [RequestedOutput("logits", False)]
    assert req.inputs == _tensors(note=False)  # InferInput has no public per-tensor parameters
    no_outputs = decode_request(*[(b, {} if n is None else {HEADER_LENGTH: str(n)}) for b, n in
                                  [httpclient.InferenceServerClient.generate_request_body(inputs)]][0])
    assert no_outputs.binary_outputs() is True  # tritonclient asks for binary_data_output when no outputs


@pytest.mark.parametrize("binary", BINARY_MODES, ids=["json", "binary", "mixed"])
def test_tritonclient_parses_response(binary) -> None:
    httpclient = pytest.importorskip("tritonclient.http")
    body, headers = encode_response(_response(), binary_outputs=binary)
    length = headers.get(HEADER_LENGTH)
    result = httpclient.InferResult.from_response_body(body, header_length=length and int(length))
    assert result.get_response()["model_name"] == "analyzer" and result.get_response()["id"] == "req-1"
    for t in _tensors():
        got = result.as_numpy(t.name)
        assert got.shape == t.shape
        if t.datatype == "BYTES":  # tritonclient gives str for JSON BYTES, bytes for binary
            assert _as_str(got) == _as_str(t.data)
        else:
            assert got.dtype == t.data.dtype and np.array_equal(got, t.data, equal_nan=True)
