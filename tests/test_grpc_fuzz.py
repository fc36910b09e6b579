"""The REST fuzz test's gRPC twin: >= 1,000 malformed ModelInfer messages, each answered with a proper
status code and a message, and the server healthy and right afterwards."""
from __future__ import annotations

import random

import numpy as np
import pytest

from grpc_support import ENGINES, RawGrpc, grpc, running_both
from runtime_support import Raw, analyze, build_bundles, server_bundle

from privsplit.runtime.grpc_wire import pb
from privsplit.runtime.metrics import parse_prometheus

LIMIT = 32 * 1024
DATATYPES = ["BOOL", "UINT8", "INT8", "INT16", "INT32", "INT64", "UINT64", "FP64", "BYTES", "fp32", "FLOAT", "",
             "FP8"]
ALLOWED = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION}


@pytest.fixture(scope="module", params=ENGINES)
def setup(tmp_path_factory, request):
    pair = build_bundles(tmp_path_factory.mktemp("bundles"))[0]
    with running_both(server_bundle(pair[1]), max_body_bytes=LIMIT, engine=request.param) as (rest, g):
        yield pair, rest, g


def _good(model: str, rng: random.Random) -> pb.ModelInferRequest:
    n = rng.randint(1, 3)
    msg = pb.ModelInferRequest(model_name=model, id=f"f{rng.random()}")
    msg.inputs.add(name="features", datatype="FP32", shape=[n, 4])
    msg.raw_input_contents.append(np.float32(rng.random()).tobytes() * 4 * n)
    return msg


def _mutate(msg: pb.ModelInferRequest, rng: random.Random, other_embedding: str) -> bytes:
    """``msg`` wrong in exactly one randomly chosen way, serialised (some ways are raw byte damage)."""
    t, kind = msg.inputs[0], rng.randrange(15)
    if kind == 0:
        t.name = rng.choice(["feature", "", "FEATURES", "x" * rng.randint(1, 300), "features "])
    elif kind == 1:
        t.datatype = rng.choice(DATATYPES)
    elif kind == 2:  # wrong rank or feature size
        t.ClearField("shape")
        t.shape.extend(rng.choice([[1], [1, 5], [1, 4, 1], [], [0, 4], [1, 3]]))
    elif kind == 3:  # huge declared shapes: refused without allocating anything
        t.ClearField("shape")
        t.shape.extend(rng.choice([[2**40, 4], [2**62, 4], [2**31, 2**31], [-1, 4], [1, -4], [2**20, 4]]))
    elif kind == 4:  # raw contents too short / too long / empty
        raw = msg.raw_input_contents[0]
        msg.raw_input_contents[0] = rng.choice([raw[:-1], raw + b"\0", b"", raw[: len(raw) // 2]])
    elif kind == 5:  # raw entry count differs from the inputs
        msg.raw_input_contents.append(b"\0" * 16)
    elif kind == 6:  # both typed contents and raw contents
        t.contents.fp32_contents.extend([0.0] * 4)
    elif kind == 7:  # typed contents of the wrong length (no raw)
        msg.ClearField("raw_input_contents")
        t.contents.fp32_contents.extend([0.5] * rng.choice([0, 3, 5, 400]))
    elif kind == 8:  # a second input
        msg.inputs.add(name=rng.choice(["features", "extra"]), datatype="FP32", shape=[1, 4])
        msg.raw_input_contents.append(b"\0" * 16)
    elif kind == 9:  # NaN / Inf features
        raw = bytearray(msg.raw_input_contents[0])
        raw[0:4] = np.float32(rng.choice([np.nan, np.inf, -np.inf])).tobytes()
        msg.raw_input_contents[0] = bytes(raw)
    elif kind == 10:  # unknown output
        msg.outputs.add(name=rng.choice(["prob", "", "labels", "features"]))
    elif kind == 11:  # unknown model or version
        if rng.random() < 0.5:
            msg.model_name = rng.choice(["nope", "", msg.model_name + "x"])
        else:
            msg.model_version = rng.choice(["2", "0", "latest"])
    elif kind == 12:  # embedding id: wrong type, unset, other embedding
        choice = rng.randrange(3)
        if choice == 0:
            msg.parameters["embedding_id"].int64_param = 7
        elif choice == 1:
            msg.parameters["embedding_id"].CopyFrom(pb.InferParameter())
        else:
            msg.parameters["embedding_id"].string_param = other_embedding
    elif kind == 13:  # garbled protobuf
        data = bytearray(msg.SerializeToString())
        for _ in range(rng.randint(1, 6)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        return bytes(data) + rng.choice([b"", b"\xff", b"\x0a\xff\xff\xff\xff\x0f"])
    else:  # BYTES input with broken length prefixes, or typed contents in the wrong field
        t.datatype = rng.choice(["BYTES", "FP32"])
        if t.datatype == "BYTES":
            msg.raw_input_contents[0] = rng.choice([b"\xff\xff\xff\x7f", b"\x01\0\0", b"\x02\0\0\0a"])
        else:
            msg.ClearField("raw_input_contents")
            t.contents.int_contents.extend([1] * 4 * t.shape[0])
    return msg.SerializeToString()


def test_grpc_fuzz_every_answer_a_proper_status(setup, tmp_path_factory):
    pair, rest, g = setup
    model = server_bundle(pair[1]).model_name
    other = server_bundle(build_bundles(tmp_path_factory.mktemp("other"))[0][1]).embedding_id
    rng, raw = random.Random(14), RawGrpc(g.target)
    codes: dict = {}
    ok = 0
    for _ in range(1200):
        code, details, _ = raw("ModelInfer", _mutate(_good(model, rng), rng, other))
        if code == grpc.StatusCode.OK:  # some byte damage leaves a still-valid request (e.g. inside the id)
            ok += 1
            continue
        assert code in ALLOWED and details, (code, details)
        codes[code] = codes.get(code, 0) + 1
    assert sum(codes.values()) >= 1000 and ok < 100
    assert codes[grpc.StatusCode.INVALID_ARGUMENT] > 800
    assert codes[grpc.StatusCode.NOT_FOUND] >= 50 and codes[grpc.StatusCode.FAILED_PRECONDITION] >= 10
    assert "not a valid inference.ModelInferRequest" in raw("ModelInfer", b"\xff\xff")[1]
    # over the message limit (few: gRPC takes ~0.3 s to refuse each one)
    big = _good(model, rng)
    for extra in (1, 4096):
        big.raw_input_contents[0] = b"\0" * (LIMIT + extra)
        assert raw("ModelInfer", big.SerializeToString())[0] == grpc.StatusCode.RESOURCE_EXHAUSTED
    # healthy and right afterwards
    assert pb.ServerReadyResponse.FromString(raw("ServerReady", b"")[2]).ready
    x = np.random.default_rng(5).normal(size=(2, 4)).astype(np.float32)
    good = pb.ModelInferRequest(model_name=model)
    good.inputs.add(name="features", datatype="FP32", shape=[2, 4])
    good.raw_input_contents.append(x.tobytes())
    code, _, data = raw("ModelInfer", good.SerializeToString())
    resp = pb.ModelInferResponse.FromString(data)
    np.testing.assert_allclose(np.frombuffer(resp.raw_output_contents[0], "<f4").reshape(2, 2), analyze(pair[1], x),
                               atol=1e-6)
    m = parse_prometheus(Raw(rest.port)("GET", "/metrics")[2].decode())
    assert not any(k.startswith("privsplit_errors_total") and 'status="5' in k for k in m)
    raw.close()


@pytest.mark.parametrize("shape,raw_len,expect", [
    ([2**40, 4], 16, "more than the limit"), ([2**20, 4], 16, "raw contents of 16 bytes do not match"), ([1, 4], 15, "raw contents of 15 bytes do not match"),
    ([1, 5], 20, "expected [N, 4]"), ([2**62, 2**62], 16, "more than the limit"),
])
def test_refusals_say_what_is_wrong(setup, shape, raw_len, expect):
    pair, _, g = setup
    msg = pb.ModelInferRequest(model_name=server_bundle(pair[1]).model_name)
    msg.inputs.add(name="features", datatype="FP32", shape=shape)
    msg.raw_input_contents.append(b"\0" * raw_len)
    code, details, _ = RawGrpc(g.target)("ModelInfer", msg.SerializeToString())
    assert code == grpc.StatusCode.INVALID_ARGUMENT and expect in details, details
