"""The analyzer service over real HTTP (uvicorn on 127.0.0.1): protocol, batching, errors, auth, metrics."""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from runtime_support import (  # noqa: F401 - bundles, model, pair: shared module fixtures
    API_KEY, Raw, analyze, bundles, client_bundle, face_images, infer_body, model, pair, reference, running,
    seeded_client_bundle, server_bundle,
)

from privsplit.runtime.client import Client, ClientError
from privsplit.runtime.metrics import parse_prometheus
from privsplit.runtime.server import AnalyzerService, load_api_keys
from privsplit.runtime.wire import InferRequest, InferTensor, decode_response, encode_request


@pytest.fixture(scope="module")
def server(pair):
    with running(server_bundle(pair[1]), max_body_bytes=64 * 1024) as srv:
        yield srv


@pytest.fixture
def raw(server):
    r = Raw(server.port)
    yield r
    r.close()


def test_health_and_metadata(raw, model, pair):
    assert raw.json("GET", "/v2/health/live") == (200, {"live": True})
    assert raw.json("GET", "/v2/health/ready") == (200, {"ready": True})
    assert raw.json("GET", f"/v2/models/{model}/ready") == (200, {"name": model, "ready": True})
    status, meta = raw.json("GET", "/v2")
    assert status == 200 and meta["name"] == "privsplit" and meta["extensions"] == ["binary_tensor_data"]
    status, meta = raw.json("GET", f"/v2/models/{model}")
    assert status == 200
    assert meta == {"name": model, "versions": ["1"], "platform": "privsplit_pytorch",
                    "inputs": [{"name": "features", "datatype": "FP32", "shape": [-1, 4]}],
                    "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 2]},
                                {"name": "label", "datatype": "BYTES", "shape": [-1]}]}
    assert raw.json("GET", f"/v2/models/{model}/versions/1")[1] == meta
    status, err = raw.json("GET", "/v2/models/nope")
    assert status == 404 and err["error"] == f"unknown model 'nope'; this server serves '{model}'"
    assert raw.json("GET", "/v2/models/nope/ready")[0] == 404


@pytest.mark.parametrize("binary", [True, False])
def test_infer_matches_in_process_pipeline(server, pair, binary):
    images = face_images(6)
    client = Client(seeded_client_bundle(pair[0]), server.url, binary=binary)
    preds = client.infer(images)
    expected = reference(*pair, images)
    got = np.stack([p.probabilities for p in preds])
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    assert [p.label for p in preds] == [["F", "M"][i] for i in expected.argmax(1)]
    assert preds[0].probability == pytest.approx(float(expected[0].max()), abs=1e-6)
    client.close()


def test_outputs_requested_by_name_and_binary_flags(raw, model):
    x = np.arange(8, dtype=np.float32).reshape(2, 4) / 10
    req = InferRequest(inputs=[InferTensor.from_numpy("features", x)], id="r1",
                       parameters={"binary_data_output": True})
    body, headers = encode_request(req, binary=False)
    status, h, data = raw("POST", f"/v2/models/{model}/infer", body)
    assert status == 200 and "inference-header-content-length" in h
    resp = decode_response(data, h)
    assert [t.name for t in resp.outputs] == ["probabilities", "label"] and resp.id == "r1"
    # only the label, as JSON
    body = json.dumps(infer_body(x, outputs=[{"name": "label", "parameters": {"binary_data": False}}]))
    status, h, data = raw("POST", f"/v2/models/{model}/infer", body)
    out = json.loads(data)["outputs"]
    assert status == 200 and [o["name"] for o in out] == ["label"] and out[0]["shape"] == [2]
    # probabilities binary, label JSON
    body = json.dumps(infer_body(x, outputs=[{"name": "probabilities", "parameters": {"binary_data": True}},
                                             {"name": "label"}]))
    status, h, data = raw("POST", f"/v2/models/{model}/infer", body)
    resp = decode_response(data, h)
    header = json.loads(data[:int(h["inference-header-content-length"])])
    assert "data" not in header["outputs"][0] and header["outputs"][1]["data"] == [t.decode() for t in
                                                                                 resp.outputs[1].data]
    np.testing.assert_allclose(resp.outputs[0].data.sum(1), 1.0, atol=1e-6)


def test_fp16_features_and_no_content_type(raw, model, pair):
    x = (np.arange(12, dtype=np.float32).reshape(3, 4) / 7).astype(np.float16)
    body, headers = encode_request(InferRequest(inputs=[InferTensor.from_numpy("features", x)]), binary=True)
    headers.pop("Content-Type")
    status, h, data = raw("POST", f"/v2/models/{model}/infer", body, headers)
    assert status == 200
    got = decode_response(data, h).outputs[0].data
    np.testing.assert_allclose(got, analyze(pair[1], x.astype(np.float32)), atol=1e-6)


def test_micro_batching_merges_concurrent_requests(pair):
    rows = [1 + i % 3 for i in range(16)]  # 32 rows in 16 requests
    rng = np.random.default_rng(0)
    feats = [rng.normal(size=(n, 4)).astype(np.float32) for n in rows]
    results: list = [None] * 16
    with running(server_bundle(pair[1]), max_batch=64, max_delay_ms=100) as srv:
        client = Client(client_bundle(pair[0]), srv.url)
        barrier = threading.Barrier(16)

        def worker(i: int) -> None:
            client.server_live()  # connect first so the requests really arrive together
            barrier.wait()
            results[i] = client.infer_features(feats[i])

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        metrics = parse_prometheus(Raw(srv.port)("GET", "/metrics")[2].decode())
    expected = analyze(pair[1], np.concatenate(feats))
    start = 0
    for f, res in zip(feats, results):
        assert res is not None and len(res) == len(f)
        np.testing.assert_allclose(np.stack([p.probabilities for p in res]), expected[start:start + len(f)],
                                   atol=1e-5)
        start += len(f)
    assert metrics["privsplit_batch_size_sum"] == sum(rows)
    assert metrics["privsplit_batch_requests_sum"] == 16
    assert metrics["privsplit_batch_size_count"] < 16  # some analyzer call served several requests
    assert metrics['privsplit_batch_size_bucket{le="1"}'] < metrics["privsplit_batch_size_count"]
    assert metrics['privsplit_requests_total{endpoint="infer",status="200"}'] == 16


def _binary_request(x: np.ndarray) -> tuple[bytes, dict[str, str]]:
    return encode_request(InferRequest(inputs=[InferTensor.from_numpy("features", x)]), binary=True)


GOOD = np.ones((2, 4), dtype=np.float32)


def _error_cases(model: str, other_id: str):
    path = f"/v2/models/{model}/infer"
    body, headers = _binary_request(GOOD)
    hlen = int(headers["Inference-Header-Content-Length"])
    renamed = {"inputs": [{**infer_body(GOOD)["inputs"][0], "name": "feats"}]}
    yield "wrong input name", path, renamed, None, 400, "unknown input 'feats': model"
    yield "two inputs", path, {"inputs": infer_body(GOOD)["inputs"] * 2}, None, 400, "duplicate names in 'inputs'"
    yield "wrong shape", path, infer_body(np.ones((2, 5), np.float32)), None, 400, \
        "input 'features' has shape [2, 5]; expected [N, 4] with N >= 1"
    yield "no batch dim", path, infer_body(np.ones(4, np.float32)), None, 400, "has shape [4]; expected [N, 4]"
    yield "empty batch", path, infer_body(np.ones((0, 4), np.float32)), None, 400, "with N >= 1"
    yield "wrong datatype", path, {"inputs": [{"name": "features", "shape": [1, 4], "datatype": "INT32",
                                               "data": [1, 2, 3, 4]}]}, None, 400, \
        "input 'features' has datatype INT32; expected FP32"
    yield "NaN", path, '{"inputs":[{"name":"features","shape":[1,4],"datatype":"FP32","data":[1,NaN,3,4]}]}', \
        None, 400, "contains NaN or Inf (first in row 0)"
    inf = GOOD.copy()
    inf[1, 2] = np.inf
    yield "Inf binary", path, *_binary_request(inf), 400, "contains NaN or Inf (first in row 1)"
    yield "malformed JSON", path, '{"inputs": [', None, 400, "malformed JSON"
    yield "not an object", path, "[1, 2]", None, 400, "request must be a JSON object"
    yield "empty body", path, "", None, 400, "malformed JSON"
    yield "header length too big", path, body, {**headers, "Inference-Header-Content-Length": "99999"}, 400, \
        "Inference-Header-Content-Length 99999 is larger than the body"
    yield "header length not a number", path, body, {**headers, "Inference-Header-Content-Length": "x1"}, 400, \
        "Inference-Header-Content-Length must be a non-negative integer"
    yield "truncated binary", path, body[:-3], headers, 400, "binary_data_size 32 exceeds the 29 bytes left"
    yield "trailing bytes", path, body + b"xx", headers, 400, "2 trailing bytes after the last binary tensor"
    yield "header cut short", path, body, {**headers, "Inference-Header-Content-Length": str(hlen - 5)}, 400, \
        "malformed JSON"
    yield "huge declared shape", path, {"inputs": [{"name": "features", "shape": [2**40, 4], "datatype": "FP32",
                                                    "data": [1]}]}, None, 400, "more than the limit"
    yield "unknown output", path, infer_body(GOOD, outputs=[{"name": "logits"}]), None, 400, \
        "unknown output 'logits'"
    yield "unknown model", "/v2/models/other/infer", infer_body(GOOD), None, 404, "unknown model 'other'"
    yield "unknown version", f"/v2/models/{model}/versions/7/infer", infer_body(GOOD), None, 404, \
        "has no version '7'"
    yield "body too large", path, infer_body(np.ones((4000, 4), np.float32)), None, 413, \
        "exceeds the limit of 65536 bytes"
    yield "embedding mismatch", path, infer_body(GOOD, parameters={"embedding_id": other_id}), None, 409, \
        "client bundle does not match this server"
    yield "embedding id type", path, infer_body(GOOD, parameters={"embedding_id": 5}), None, 400, \
        "parameter 'embedding_id' must be a string"
    yield "gzip", path, infer_body(GOOD), {"Content-Encoding": "gzip"}, 400, "unsupported Content-Encoding"


@pytest.mark.parametrize("case", range(24))
def test_bad_requests_get_4xx_with_reason(raw, model, bundles, case):
    cases = list(_error_cases(model, server_bundle(bundles[1][1]).embedding_id))
    assert len(cases) == 24
    name, path, body, headers, status, text = cases[case]
    if isinstance(body, dict):
        body = json.dumps(body)
    got, h, data = raw("POST", path, body, headers)
    assert got == status, (name, data)
    assert h["content-type"] == "application/json"
    assert text in json.loads(data)["error"], (name, data)
    assert raw.json("GET", "/v2/health/ready") == (200, {"ready": True})


def test_wrong_method_and_route(raw, model):
    status, err = raw.json("GET", f"/v2/models/{model}/infer")
    assert status == 405 and err["error"] == f"method GET is not allowed on /v2/models/{model}/infer"
    status, err = raw.json("GET", "/v3/whatever")
    assert status == 404 and "no such endpoint: GET /v3/whatever" in err["error"]


def test_idempotent_retry_answered_from_cache(raw, model, server):
    body = json.dumps(infer_body(GOOD, id="same-id"))
    before = parse_prometheus(raw("GET", "/metrics")[2].decode()).get("privsplit_duplicate_requests_total", 0)
    first = raw("POST", f"/v2/models/{model}/infer", body)
    second = raw("POST", f"/v2/models/{model}/infer", body)
    assert first[0] == second[0] == 200 and first[2] == second[2]
    other = raw("POST", f"/v2/models/{model}/infer", json.dumps(infer_body(GOOD * 2, id="same-id")))
    assert other[2] != first[2]  # same id, different body: computed, not served from the cache
    after = parse_prometheus(raw("GET", "/metrics")[2].decode())["privsplit_duplicate_requests_total"]
    assert after == before + 1


def test_metrics_count_errors_and_latency(pair):
    with running(server_bundle(pair[1])) as srv:
        raw = Raw(srv.port)
        model = server_bundle(pair[1]).model_name
        for _ in range(3):
            assert raw("POST", f"/v2/models/{model}/infer", json.dumps(infer_body(GOOD)))[0] == 200
        assert raw("POST", f"/v2/models/{model}/infer", "{")[0] == 400
        assert raw("GET", "/v2/models/x")[0] == 404
        status, headers, text = raw("GET", "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    m = parse_prometheus(text.decode())
    assert m['privsplit_requests_total{endpoint="infer",status="200"}'] == 3
    assert m['privsplit_requests_total{endpoint="infer",status="400"}'] == 1
    assert m['privsplit_errors_total{endpoint="infer",status="400"}'] == 1
    assert m['privsplit_errors_total{endpoint="model",status="404"}'] == 1
    assert m['privsplit_request_latency_seconds_count{endpoint="infer"}'] == 4
    assert m['privsplit_request_latency_seconds_bucket{endpoint="infer",le="+Inf"}'] == 4
    assert 0 < m['privsplit_request_latency_seconds_sum{endpoint="infer"}'] < 10
    assert m["privsplit_batch_size_count"] == 3 and m["privsplit_batch_size_sum"] == 6
    assert "# TYPE privsplit_request_latency_seconds histogram" in text.decode()


def test_api_keys(pair, tmp_path, monkeypatch):
    model = server_bundle(pair[1]).model_name
    path = f"/v2/models/{model}/infer"
    body = json.dumps(infer_body(GOOD))
    with running(server_bundle(pair[1]), api_keys=[API_KEY, "second-key-abcdef"]) as srv:
        raw = Raw(srv.port)
        assert raw("GET", "/v2/health/live")[0] == 200 and raw("GET", "/v2/health/ready")[0] == 200
        assert raw("GET", f"/v2/models/{model}/ready")[0] == 200
        status, h, data = raw("POST", path, body)
        assert status == 401 and h["www-authenticate"] == "Bearer"
        assert json.loads(data)["error"] == "missing API key: send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'"
        status, _, data = raw("POST", path, body, {"Authorization": "Bearer wrong-key-123"})
        assert status == 401 and json.loads(data)["error"] == "invalid API key"
        assert raw("GET", "/metrics")[0] == raw("GET", f"/v2/models/{model}")[0] == 401
        assert raw("POST", path, body, {"Authorization": f"Bearer {API_KEY}"})[0] == 200
        assert raw("POST", path, body, {"X-API-Key": "second-key-abcdef"})[0] == 200
        assert raw("GET", "/metrics", headers={"Authorization": f"Bearer {API_KEY}"})[0] == 200
        with pytest.raises(ClientError) as err:
            Client(client_bundle(pair[0]), srv.url).infer_features(GOOD)
        assert err.value.status == 401 and err.value.message == "missing API key: send 'Authorization: Bearer KEY' " \
                                                                "or 'X-API-Key: KEY'"
        assert len(Client(client_bundle(pair[0]), srv.url, api_key=API_KEY).infer_features(GOOD)) == 2
    # keys from a file and from the environment
    keyfile = tmp_path / "keys.txt"
    keyfile.write_text("# comment\nfile-key-123456\n\n")
    assert load_api_keys(keyfile, env={"PRIVSPLIT_API_KEYS": "env-key-1234567, env-key-7654321"}) == [
        "file-key-123456", "env-key-1234567", "env-key-7654321"]
    with pytest.raises(FileNotFoundError, match="API key file not found"):
        load_api_keys(tmp_path / "missing.txt")
    monkeypatch.setenv("PRIVSPLIT_API_KEYS", "env-key-1234567")
    with running(server_bundle(pair[1]), api_keys=None) as srv:  # None: read the environment
        raw = Raw(srv.port)
        assert raw("POST", path, body)[0] == 401
        assert raw("POST", path, body, {"X-API-Key": "env-key-1234567"})[0] == 200
    with pytest.raises(ValueError, match="at least 8 characters"):
        from privsplit.runtime.server import create_app
        create_app(pair[1], api_keys=["short"])


def test_embedding_mismatch_refused(server, bundles):
    other_client = client_bundle(bundles[1][0])
    with pytest.raises(ClientError) as err:
        Client(other_client, server.url, model_name=server_bundle(bundles[0][1]).model_name).infer(
            face_images(2))
    assert err.value.status == 409
    assert "client bundle does not match this server" in err.value.message


def test_service_in_process(pair):
    service = AnalyzerService(pair[1], max_delay_ms=0)
    try:
        x = np.random.default_rng(1).normal(size=(3, 4)).astype(np.float32)
        resp = service.infer(InferRequest(inputs=[InferTensor.from_numpy("features", x)], id="a"))
        np.testing.assert_allclose(resp.outputs[0].data, analyze(pair[1], x), atol=1e-6)
        assert resp.id == "a" and resp.outputs[1].data.tolist() == [b"FM"[int(i):int(i) + 1]
                                                                    for i in resp.outputs[0].data.argmax(1)]
    finally:
        service.stop()


def test_runtime_imports_no_training_code():
    code = ("import sys\n"
            "import privsplit.runtime, privsplit.runtime.wire, privsplit.runtime.client, privsplit.runtime.server\n"
            "import privsplit.runtime.batching, privsplit.runtime.metrics, privsplit.runtime.triton\n"
            "import privsplit.runtime.service, privsplit.runtime.auth, privsplit.runtime.routes\n"
            "import privsplit.runtime.workers, importlib.util\n"
            "if importlib.util.find_spec('grpc'):\n"
            "    import privsplit.runtime.grpc_server, privsplit.runtime.grpc_client\n"
            "bad = [m for m in sys.modules if m.startswith(('privsplit.train', 'privsplit.attacks', "
            "'privsplit.report')) or m == 'privsplit.defenses.build']\n"
            "print(repr(bad))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_micro_batcher_unit():
    from privsplit.runtime.batching import BatcherClosed, MicroBatcher

    calls: list[int] = []
    gate, entered = threading.Event(), threading.Event()

    def fn(x: np.ndarray):
        entered.set()
        gate.wait(5)
        calls.append(len(x))
        if (x < 0).any():
            raise ValueError("negative input")
        return x * 2, x.sum(axis=1)

    seen: list[tuple[int, int]] = []
    with MicroBatcher(fn, max_batch=4, max_delay_ms=0, on_batch=lambda r, n: seen.append((r, n))) as batcher:
        first = batcher.submit(np.ones((1, 2)))            # taken alone; the worker then waits on the gate
        assert entered.wait(5)
        queued = [batcher.submit(np.full((n, 2), float(n))) for n in (1, 2, 1, 3)]  # 1+2+1 fit in 4, 3 waits
        big = batcher.submit(np.ones((6, 2)))              # more than max_batch: runs alone, never split
        gate.set()
        assert first.result(5)[1].tolist() == [2.0]
        for n, fut in zip((1, 2, 1, 3), queued):
            doubled, sums = fut.result(5)
            assert doubled.shape == (n, 2) and (doubled == 2 * n).all() and sums.tolist() == [2.0 * n] * n
        assert big.result(5)[0].shape == (6, 2)
        bad = batcher.submit(-np.ones((1, 2)))
        with pytest.raises(ValueError, match="negative input"):
            bad.result(5)
        with pytest.raises(ValueError, match="at least one row"):
            batcher.submit(np.ones((0, 2)))
    assert calls == [1, 4, 3, 6, 1]
    assert seen == [(1, 1), (4, 3), (3, 1), (6, 1)]  # failed calls are not recorded
    with pytest.raises(BatcherClosed):
        batcher.submit(np.ones((1, 2)))
    with pytest.raises(ValueError, match="max_batch must be an integer >= 1"):
        MicroBatcher(fn, max_batch=0)


def test_micro_batcher_sleeps_once_per_window_and_skips_it_when_full(monkeypatch):
    """The worker sleeps the window out once per batch (no wake-up per arriving request), takes what
    arrived meanwhile, and does not wait at all when the requests already queued fill the batch."""
    from privsplit.runtime import batching
    from privsplit.runtime.batching import MicroBatcher

    real_sleep, naps = time.sleep, []
    monkeypatch.setattr(batching.time, "sleep", lambda s: (naps.append(s), real_sleep(s)))
    gate, entered, calls = threading.Event(), threading.Event(), []

    def fn(x: np.ndarray):
        entered.set()
        gate.wait(5)
        calls.append(len(x))
        return (x,)

    with MicroBatcher(fn, max_batch=4, max_delay_ms=300) as batcher:
        futs = [batcher.submit(np.ones((1, 1)))]
        real_sleep(0.05)  # the worker is asleep in the first request's window
        futs += [batcher.submit(np.ones((1, 1))) for _ in range(2)]
        gate.set()
        [f.result(5) for f in futs]
        assert calls == [3] and len(naps) == 1 and 0.2 < naps[0] <= 0.3
        gate.clear()
        entered.clear()
        blocker = batcher.submit(np.ones((1, 1)))  # sleeps its window, then blocks in fn
        assert entered.wait(5)
        full = [batcher.submit(np.ones((2, 1))) for _ in range(2)]  # queued behind it: a full batch of 4 rows
        gate.set()
        t0 = time.monotonic()
        [f.result(5) for f in (blocker, *full)]
        assert calls == [3, 1, 4] and len(naps) == 2  # no window for the full batch
        assert time.monotonic() - t0 < 0.2


def test_metrics_text_format():
    from privsplit.runtime.metrics import ServiceMetrics

    m = ServiceMetrics()
    m.record_request("infer", 200, 0.003)
    m.record_request("infer", 413, 0.0001)
    m.record_batch(5, 3)
    text = m.render()
    assert text.endswith("\n") and "# TYPE privsplit_requests_total counter" in text
    parsed = parse_prometheus(text)
    assert parsed['privsplit_requests_total{endpoint="infer",status="413"}'] == 1
    assert parsed['privsplit_errors_total{endpoint="infer",status="413"}'] == 1
    assert 'privsplit_errors_total{endpoint="infer",status="200"}' not in parsed
    assert parsed['privsplit_request_latency_seconds_bucket{endpoint="infer",le="0.0005"}'] == 1
    assert parsed['privsplit_request_latency_seconds_bucket{endpoint="infer",le="0.005"}'] == 2
    assert parsed['privsplit_batch_size_bucket{le="4"}'] == 0 and parsed['privsplit_batch_size_bucket{le="8"}'] == 1
    assert parsed["privsplit_batch_requests_sum"] == 3 and parsed["privsplit_duplicate_requests_total"] == 0


def test_freeze_startup_objects_takes_them_out_of_full_collections():
    """serve() freezes what start-up created (the GC pauses that were the p99 tail, docs/runtime.md)."""
    import gc

    from privsplit.runtime.server import freeze_startup_objects

    try:
        frozen = freeze_startup_objects()
        # frozen objects that other tests' threads free by refcount leave the count, so compare within 1%
        assert frozen > 10_000 and 0.99 * frozen <= gc.get_freeze_count() <= frozen  # torch, FastAPI, bundles
        cycle: list = []
        cycle.append(cycle)  # garbage made after the freeze is still collected
        del cycle
        assert gc.collect() >= 1 and 0.99 * frozen <= gc.get_freeze_count() <= frozen  # a collection does not thaw
    finally:
        gc.unfreeze()
    assert gc.get_freeze_count() == 0


def test_micro_batcher_async_wakes_each_loop_once_per_batch():
    """``submit_async``: right rows per request, one ``call_soon_threadsafe`` per batch, a cancelled
    request dropped before the call, the batch's exception to each, BatcherClosed after close."""
    from privsplit.runtime.batching import BatcherClosed, MicroBatcher

    gate, entered, calls = threading.Event(), threading.Event(), []

    def fn(x: np.ndarray):
        entered.set()
        gate.wait(5)
        calls.append(x[:, 0].tolist())
        if (x < 0).any():
            raise ValueError("negative input")
        return x * 2, x.sum(axis=1)

    async def scenario(batcher: MicroBatcher) -> tuple[list, int]:
        loop, wakes = asyncio.get_running_loop(), []
        real = loop.call_soon_threadsafe

        def counting(cb, *args, **kw):
            wakes.append(cb)
            return real(cb, *args, **kw)

        loop.call_soon_threadsafe = counting  # type: ignore[method-assign]
        first = batcher.submit_async(np.zeros((1, 2)))
        await asyncio.to_thread(entered.wait, 5)
        futs = [batcher.submit_async(np.full((1, 2), float(n))) for n in (1, 2, 3)]
        gone = batcher.submit_async(np.full((1, 2), 9.0))
        gone.cancel()
        gate.set()
        results = [await f for f in (first, *futs)]
        assert calls == [[0.0], [1.0, 2.0, 3.0]]  # the cancelled request never reached fn
        bad = batcher.submit_async(-np.ones((1, 2)))
        with pytest.raises(ValueError, match="negative input"):
            await bad
        return results, len([w for w in wakes if getattr(w, "__name__", "") == "_settle"])

    batcher = MicroBatcher(fn, max_batch=8, max_delay_ms=0)
    with batcher:
        results, settles = asyncio.run(scenario(batcher))
    for n, (doubled, sums) in zip((0, 1, 2, 3), results):
        assert doubled.tolist() == [[2.0 * n] * 2] and sums.tolist() == [2.0 * n]
    assert settles == 3  # batches [0], [1, 2, 3], [-1]: one wake-up each, not one per request

    async def after_close() -> None:
        batcher.submit_async(np.ones((1, 2)))

    with pytest.raises(BatcherClosed):
        asyncio.run(after_close())
