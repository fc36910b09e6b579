"""Fuzzing the live server: thousands of malformed requests, every reply 4xx JSON with an error, still healthy."""
from __future__ import annotations

import json
import random
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtime_support import (
    Raw, build_bundles, running, server_bundle,
)

from privsplit.runtime.metrics import parse_prometheus
from privsplit.runtime.wire import HEADER_LENGTH, InferRequest, InferTensor, encode_request

LIMIT = 32 * 1024  # the fuzzed server's body limit (keeps the 413 cases cheap)
DATATYPES = ["BOOL", "UINT8", "INT8", "INT16", "INT32", "INT64", "UINT64", "FP16", "FP32", "FP64", "BYTES",
             "fp32", "FLOAT", "", "FP8", None, 3]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return build_bundles(tmp_path_factory.mktemp("bundles"))[0]


@pytest.fixture(scope="module")
def server(pair):
    with running(server_bundle(pair[1]), max_body_bytes=LIMIT) as srv:
        yield srv


@pytest.fixture(scope="module")
def model(pair):
    return server_bundle(pair[1]).model_name


def _good_tensor(rng: random.Random) -> dict:
    n = rng.randint(1, 3)
    return {"name": "features", "shape": [n, 4], "datatype": "FP32", "data": [rng.random() for _ in range(4 * n)]}


def _binary(rows: int = 2, dtype=np.float32, name: str = "features") -> tuple[bytes, dict[str, str]]:
    x = np.linspace(-1, 1, rows * 4, dtype=dtype).reshape(rows, 4)
    return encode_request(InferRequest(inputs=[InferTensor.from_numpy(name, x)], id="f"), binary=True)


def _mutate_tensor(rng: random.Random) -> dict:
    """A request whose one tensor is wrong in exactly one randomly chosen way."""
    t = _good_tensor(rng)
    n = t["shape"][0]
    kind = rng.randrange(16)
    if kind == 0:
        t["name"] = rng.choice(["feature", "", "FEATURES", "x" * rng.randint(1, 300), "features "])
    elif kind == 1:
        t["datatype"] = rng.choice([d for d in DATATYPES if d not in ("FP32", "FP16")])
    elif kind == 2:
        t["shape"] = rng.choice([[n, 5], [n], [4], [n, 4, 1], [], [0, 4], [n, -4], [-1, 4], [n, 2, 2]])
        if t["shape"] == [n, 2, 2]:
            t["data"] = t["data"][:4 * n]
    elif kind == 3:
        t["shape"] = [rng.choice([2**31, 2**40, 10**12, 2**63]), 4]
    elif kind == 4:
        t["shape"] = rng.choice(["[1, 4]", [1.0, 4], [True, 4], None, {"a": 1}, [[1], 4], ["1", "4"]])
    elif kind == 5:
        t["data"] = t["data"][:rng.randrange(4 * n)]
    elif kind == 6:
        t["data"] = t["data"] + [0.5] * rng.randint(1, 5)
    elif kind == 7:
        t["data"][rng.randrange(4 * n)] = rng.choice(["a", None, [], {}, True, "1.0"])
    elif kind == 8:
        t["data"][rng.randrange(4 * n)] = rng.choice([float("nan"), float("inf"), float("-inf"), 1e39, -1e400])
    elif kind == 9:
        del t[rng.choice(["name", "shape", "datatype", "data"])]
    elif kind == 10:
        t["data"] = rng.choice([None, "data", 1.5, {"0": 1}])
    elif kind == 11:
        t["parameters"] = {"binary_data_size": rng.choice([-1, 0, 16, 2**40, "16", True, 1.5, None])}
    elif kind == 12:
        t["parameters"] = rng.choice([[], "p", 7, {"shared_memory_region": "r"}])
    elif kind == 13:
        t["data"] = [[t["data"][:4]] * n, 5]  # ragged nesting
    elif kind == 14:
        t["data"] = [10**rng.randint(40, 5000)] + t["data"][1:]  # integers too large for FP32 / JSON
    else:
        t["datatype"] = "FP16"
        t["data"][0] = 1e6  # finite in JSON, inf as FP16
    return {"inputs": [t]}


def _mutate_request(rng: random.Random, other_id: str) -> dict | list | str | int | None:
    kind = rng.randrange(12)
    good = {"inputs": [_good_tensor(rng)]}
    if kind == 0:
        return rng.choice([[], None, 3, "inputs", True, [good]])
    if kind == 1:
        return {}
    if kind == 2:
        return {"inputs": rng.choice([[], {}, "x", None, [None], [1, 2], [[]]])}
    if kind == 3:
        return {"inputs": good["inputs"] * 2}
    if kind == 4:
        return {**good, "outputs": [{"name": rng.choice(["logits", "", "probs", "LABEL"])}]}
    if kind == 5:
        return {**good, "outputs": rng.choice(["probabilities", [1], [None], {"name": "label"},
                                               [{"name": "label", "parameters": {"binary_data": "yes"}}],
                                               [{"parameters": {}}]])}
    if kind == 6:
        return {**good, "id": rng.choice([1, None, [], {}, True])}
    if kind == 7:
        return {**good, "parameters": rng.choice([[], "p", 1, None])}
    if kind == 8:
        return {**good, "parameters": {"embedding_id": rng.choice([other_id, "0" * 32, "", 5, None, ["a"]])}}
    if kind == 9:
        return {"inputs": [_good_tensor(rng), {**_good_tensor(rng), "name": "extra"}]}
    if kind == 10:
        return {"inputs": [{**_good_tensor(rng), "datatype": "FP32", "data": None,
                            "parameters": {"binary_data_size": 16}}]}
    return _mutate_tensor(rng)


def corpus(model: str, other_id: str, n: int = 2400, seed: int = 2024):
    """``n`` malformed requests: (description, method, path, body, headers)."""
    rng = random.Random(seed)
    path = f"/v2/models/{model}/infer"
    body, headers = _binary()
    hlen = int(headers[HEADER_LENGTH])
    for i in range(n):
        kind = i % 12
        if kind == 0:  # random bytes, no headers
            yield "random bytes", "POST", path, rng.randbytes(rng.randint(0, 300)), {}
        elif kind == 1:  # random bytes with a binary header length
            raw = rng.randbytes(rng.randint(0, 300))
            yield "random binary", "POST", path, raw, {HEADER_LENGTH: str(rng.randint(0, len(raw) + 5))}
        elif kind == 2:  # truncated binary body
            yield "truncated", "POST", path, body[:rng.randrange(hlen, len(body))], dict(headers)
        elif kind == 3:  # bad header lengths
            value = rng.choice([str(len(body) + rng.randint(1, 10**6)), str(rng.randint(0, hlen - 1)), "-1", "0x10",
                                "1e3", " ", "", "١٢".encode(), "+5", str(2**70)])
            yield f"header length {value!r}", "POST", path, body, {**headers, HEADER_LENGTH: value}
        elif kind == 4:  # garbage appended / binary size lies
            if rng.random() < 0.5:
                yield "trailing", "POST", path, body + rng.randbytes(rng.randint(1, 20)), dict(headers)
            else:
                header = json.loads(body[:hlen])
                header["inputs"][0]["parameters"]["binary_data_size"] = rng.choice([0, 4, 31, 33, 64, 2**40])
                h = json.dumps(header).encode()
                yield "binary size lie", "POST", path, h + body[hlen:], {**headers, HEADER_LENGTH: str(len(h))}
        elif kind == 5:  # huge declared shapes in binary
            header = json.loads(body[:hlen])
            header["inputs"][0]["shape"] = [rng.choice([2**31, 2**33, 2**62]), 4]
            h = json.dumps(header).encode()
            yield "huge binary shape", "POST", path, h + body[hlen:], {**headers, HEADER_LENGTH: str(len(h))}
        elif kind == 6:  # wrong dtype / name in binary
            dtype = rng.choice([np.float64, np.int32, np.int64, np.uint8, np.int16])
            b, h = _binary(2, dtype, rng.choice(["features", "feats"]))
            yield "binary dtype", "POST", path, b, h
        elif kind in (7, 8, 9):  # structured JSON mutations
            text = json.dumps(_mutate_request(rng, other_id))
            if rng.random() < 0.1:
                text = text[:rng.randrange(max(1, len(text)))]  # and cut
            yield "json mutation", "POST", path, text.encode(), {}
        elif kind == 10:  # wrong place
            choice = rng.randrange(5)
            if choice == 0:
                yield "unknown model", "POST", f"/v2/models/m{rng.randint(0, 99)}/infer", body, dict(headers)
            elif choice == 1:
                yield "bad version", "POST", f"/v2/models/{model}/versions/{rng.randint(2, 9)}/infer", body, \
                    dict(headers)
            elif choice == 2:
                yield "wrong method", rng.choice(["GET", "PUT", "DELETE", "PATCH"]), path, b"", {}
            elif choice == 3:
                yield "no route", "POST", rng.choice(["/v2/models", "/v1/models/x:predict", "/v2/infer", "/"]), body, {}
            else:
                yield "encoding", "POST", path, body, {**headers, "Content-Encoding": rng.choice(["gzip", "br", "x"])}
        else:  # oversized bodies, declared or not
            big = b"{" + b" " * (LIMIT + rng.randint(1, 5000)) + b"}"
            yield "too large", "POST", path, big, {}


def _check(raw: Raw, case: tuple) -> tuple[int, str]:
    desc, method, path, body, headers = case
    status, h, data = raw(method, path, body, headers)
    assert 400 <= status < 500, (desc, status, body[:200], data[:300])
    assert h.get("content-type") == "application/json", (desc, h)
    err = json.loads(data)
    assert isinstance(err, dict) and isinstance(err.get("error"), str) and err["error"], (desc, data)
    return status, err["error"]


def test_fuzz_corpus_all_4xx_json(server, model, pair, tmp_path_factory):
    other = build_bundles(tmp_path_factory.mktemp("other"))[0]
    cases = list(corpus(model, server_bundle(other[1]).embedding_id))
    assert len(cases) >= 2000
    raw = Raw(server.port)
    statuses: dict[int, int] = {}
    for case in cases:
        status, _ = _check(raw, case)
        statuses[status] = statuses.get(status, 0) + 1
    assert set(statuses) <= {400, 404, 405, 409, 413} and statuses[400] > 1500 and statuses[413] >= 150
    # still healthy and still right
    assert raw.json("GET", "/v2/health/ready") == (200, {"ready": True})
    good, headers = _binary(3)
    status, _, _ = raw("POST", f"/v2/models/{model}/infer", good, headers)
    assert status == 200
    m = parse_prometheus(raw("GET", "/metrics")[2].decode())
    assert sum(v for k, v in m.items() if k.startswith("privsplit_errors_total")) >= len(cases)
    assert not any(k.startswith("privsplit_errors_total") and 'status="5' in k for k in m)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.sampled_from(
        ["inputs", "outputs", "name", "shape", "datatype", "data", "parameters", "id", "binary_data_size"]),
        kids, max_size=5), max_leaves=20)


@settings(max_examples=300, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(value=json_values, binary_tail=st.binary(max_size=40), framed=st.booleans())
def test_fuzz_hypothesis_json_shapes(server, model, value, binary_tail, framed):
    text = json.dumps(value).encode()
    headers = {HEADER_LENGTH: str(len(text))} if framed else {}
    _check(Raw(server.port), ("hypothesis", "POST", f"/v2/models/{model}/infer",
                              text + (binary_tail if framed else b""), headers))


def test_still_healthy_after_fuzzing(server, model):
    raw = Raw(server.port)
    assert raw.json("GET", "/v2/health/live") == (200, {"live": True})
    assert raw.json("GET", f"/v2/models/{model}/ready")[0] == 200
    x = struct.pack("<4f", 0.1, 0.2, 0.3, 0.4)
    status, _, data = raw("POST", f"/v2/models/{model}/infer",
                          json.dumps({"inputs": [{"name": "features", "shape": [1, 4], "datatype": "FP32",
                                                  "data": list(struct.unpack("<4f", x))}]}))
    assert status == 200 and json.loads(data)["outputs"][1]["data"][0] in ("F", "M")
