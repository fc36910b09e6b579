"""OIP v2 over gRPC: tritonclient.grpc interop, Client(protocol="grpc"), status codes, shared state."""
from __future__ import annotations

import importlib.util
import sys
import threading
import time

import numpy as np
import pytest
import torch

from grpc_support import ENGINES, RawGrpc, grpc, running_both
from runtime_support import (  # noqa: F401 - bundles, model, pair: shared module fixtures
    API_KEY, Raw, analyze, bundles, client_bundle, face_images, model, pair, reference, seeded_client_bundle,
    server_bundle,
)

from privsplit.defenses import load_server_bundle
from privsplit.runtime.client import Client, ClientError, ServerUnavailable
from privsplit.runtime.grpc_wire import pb, request_to_proto
from privsplit.runtime.metrics import parse_prometheus
from privsplit.runtime.wire import InferRequest, InferTensor

tg = pytest.importorskip("tritonclient.grpc", reason="needs tritonclient[grpc] (the dev extra)")


@pytest.fixture(scope="module", params=ENGINES)
def engine(request):
    """Every test here runs on each gRPC engine: the same calls, statuses and messages."""
    return request.param


@pytest.fixture(scope="module")
def servers(pair, engine):
    with running_both(server_bundle(pair[1]), engine=engine) as both:
        yield both


def test_tritonclient_grpc_interop(servers, pair, model):
    rest, g = servers
    triton = tg.InferenceServerClient(g.target)
    assert triton.is_server_live() and triton.is_server_ready() and triton.is_model_ready(model)
    assert triton.get_server_metadata().name == "privsplit"
    meta = triton.get_model_metadata(model, as_json=True)
    assert meta["inputs"] == [{"name": "features", "datatype": "FP32", "shape": ["-1", "4"]}]
    assert [o["name"] for o in meta["outputs"]] == ["probabilities", "label"]
    x = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    for dtype in (np.float32, np.float16):  # FP16 only travels as raw bytes
        inp = tg.InferInput("features", list(x.shape), "FP32" if dtype == np.float32 else "FP16")
        inp.set_data_from_numpy(x.astype(dtype))  # raw_input_contents: no JSON anywhere
        res = triton.infer(model, [inp], request_id="t1",
                           outputs=[tg.InferRequestedOutput("label"), tg.InferRequestedOutput("probabilities")])
        want = analyze(pair[1], x.astype(dtype).astype(np.float32))
        np.testing.assert_allclose(res.as_numpy("probabilities"), want, atol=1e-6)
        assert res.as_numpy("label").tolist() == [[b"F", b"M"][i] for i in want.argmax(1)]
        assert res.get_response().id == "t1" and [o.name for o in res.get_response().outputs] == ["label", "probabilities"]
    with pytest.raises(tg.InferenceServerException) as err:
        triton.infer("nope", [inp])
    assert err.value.status() == "StatusCode.NOT_FOUND" and "unknown model 'nope'" in err.value.message()
    # one service behind both front ends: the REST /metrics counts the gRPC calls too
    m = parse_prometheus(Raw(rest.port)("GET", "/metrics")[2].decode())
    assert m['privsplit_requests_total{endpoint="grpc_infer",status="200"}'] >= 2
    assert m['privsplit_requests_total{endpoint="grpc_infer",status="404"}'] >= 1
    triton.close()


def test_client_over_grpc_matches_rest_and_pipeline(servers, pair):
    rest, g = servers
    images = face_images(6)
    preds = Client(seeded_client_bundle(pair[0]), f"grpc://{g.target}", protocol="grpc").infer(images)
    expected = reference(*pair, images)
    np.testing.assert_allclose(np.stack([p.probabilities for p in preds]), expected, atol=1e-6)
    assert [p.label for p in preds] == [["F", "M"][i] for i in expected.argmax(1)]
    client = Client(client_bundle(pair[0]), g.target, protocol="grpc")
    assert client.server_live() and client.server_ready()
    assert client.model_metadata().inputs[0].shape == [-1, 4]
    x = np.random.default_rng(1).normal(size=(3, 4)).astype(np.float32)
    via_rest = Client(client_bundle(pair[0]), rest.url).infer_features(x)
    assert [p.label for p in client.infer_features(x)] == [p.label for p in via_rest]
    with pytest.raises(ClientError) as err:  # NaN: INVALID_ARGUMENT, carried as 400, not retried
        client.infer_features(np.full((1, 4), np.nan, np.float32))
    assert err.value.status == 400 and "INVALID_ARGUMENT" in err.value.message and "NaN" in err.value.message
    assert not isinstance(err.value, ServerUnavailable)
    client.close()


def test_api_keys_and_embedding_check(pair, bundles, engine):
    with running_both(server_bundle(pair[1]), api_keys=[API_KEY], engine=engine) as (_, g):
        x = np.zeros((1, 4), np.float32)
        for key in (None, "wrong-key-123456"):
            with pytest.raises(ClientError) as err:
                Client(client_bundle(pair[0]), g.target, protocol="grpc", api_key=key).infer_features(x)
            assert err.value.status == 401 and "UNAUTHENTICATED" in err.value.message
        ok = Client(client_bundle(pair[0]), g.target, protocol="grpc", api_key=API_KEY)
        assert len(ok.infer_features(x)) == 1
        assert ok.server_live()  # health needs no key
        triton = tg.InferenceServerClient(g.target)
        assert triton.get_server_metadata(headers={"authorization": f"Bearer {API_KEY}"}).name == "privsplit"
        with pytest.raises(tg.InferenceServerException, match="missing API key"):
            triton.get_server_metadata()
        other = client_bundle(bundles[1][0])  # a client bundle of another embedding
        with pytest.raises(ClientError) as err:
            Client(other, g.target, protocol="grpc", api_key=API_KEY,
                   model_name=server_bundle(pair[1]).model_name).infer_features(x)
        assert err.value.status == 409 and "FAILED_PRECONDITION" in err.value.message


class _Flaky(torch.nn.Module):
    """Raises for its first ``failures`` calls (an analyzer that crashes), then works."""

    def __init__(self, inner, failures: int) -> None:
        super().__init__()
        self.inner, self.left = inner, failures

    def forward(self, x):
        if self.left > 0:
            self.left -= 1
            raise RuntimeError("simulated analyzer crash")
        return self.inner(x)


def test_internal_retried_with_same_id_and_generic_message(pair, caplog, engine):
    bundle = load_server_bundle(pair[1])
    bundle.analyzer = _Flaky(bundle.analyzer, 2)
    x = np.random.default_rng(2).normal(size=(2, 4)).astype(np.float32)
    with running_both(bundle, engine=engine) as (rest, g):
        client = Client(client_bundle(pair[0]), g.target, protocol="grpc", retries=3, backoff=0.01)
        np.testing.assert_allclose(np.stack([p.probabilities for p in client.infer_features(x)]),
                                   analyze(pair[1], x), atol=1e-6)
        bundle.analyzer.left = 10
        with pytest.raises(ServerUnavailable) as err:
            Client(client_bundle(pair[0]), g.target, protocol="grpc", retries=1, backoff=0.01).infer_features(x)
        assert "INTERNAL: internal server error" in str(err.value) and "simulated" not in str(err.value)
        assert "simulated analyzer crash" in caplog.text
        # a retry of an answered request (same id, same bytes) is answered from the cache
        raw = RawGrpc(g.target)
        bundle.analyzer.left = 0
        body = request_to_proto(InferRequest(inputs=[InferTensor.from_numpy("features", x)], id="same"),
                                server_bundle(pair[1]).model_name).SerializeToString()
        first, second = raw("ModelInfer", body), raw("ModelInfer", body)
        assert first[0] == second[0] == grpc.StatusCode.OK and first[2] == second[2]
        m = parse_prometheus(Raw(rest.port)("GET", "/metrics")[2].decode())
        assert m["privsplit_duplicate_requests_total"] == 1
        assert m['privsplit_requests_total{endpoint="grpc_infer",status="500"}'] == 4
        raw.close()


def test_shutting_down_is_unavailable(pair, engine):
    with running_both(server_bundle(pair[1]), engine=engine) as (_, g):
        triton = tg.InferenceServerClient(g.target)
        g.service.stop()
        assert not triton.is_server_ready()
        inp = tg.InferInput("features", [1, 4], "FP32")
        inp.set_data_from_numpy(np.zeros((1, 4), np.float32))
        with pytest.raises(tg.InferenceServerException) as err:
            triton.infer(server_bundle(pair[1]).model_name, [inp])
        assert err.value.status() == "StatusCode.UNAVAILABLE"
        g.service.start()
        assert triton.is_server_ready()


def test_message_over_limit_is_resource_exhausted(pair, engine):
    with running_both(server_bundle(pair[1]), max_body_bytes=4096, engine=engine) as (_, g):
        big = np.zeros((2000, 4), np.float32)  # 32 KB of raw contents
        with pytest.raises(ClientError) as err:
            Client(client_bundle(pair[0]), g.target, protocol="grpc", batch_size=4096).infer_features(big)
        assert err.value.status == 413 and "RESOURCE_EXHAUSTED" in err.value.message


@pytest.fixture
def slow_native(pair):
    """The native engine with a 300 ms batch window: calls wait long enough to be cancelled or drained."""
    pytest.importorskip("pygrpc_native", reason="the native gRPC engine needs the grpc-native extra")
    with running_both(server_bundle(pair[1]), max_delay_ms=300.0, engine="native") as (_, g):
        yield g


def _infer_body(model: str, rows: int = 1) -> bytes:
    x = np.random.default_rng(rows).normal(size=(rows, 4)).astype(np.float32)
    return request_to_proto(InferRequest(inputs=[InferTensor.from_numpy("features", x)]), model).SerializeToString()


def test_native_cancelled_call_is_dropped_before_the_analyzer(slow_native, pair):
    """A call whose deadline passes while it waits for its batch is taken off the batcher (nothing runs)."""
    g = slow_native
    rpc = RawGrpc(g.target).channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
    with pytest.raises(grpc.RpcError) as err:
        rpc(_infer_body(server_bundle(pair[1]).model_name), timeout=0.05)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    time.sleep(0.6)  # the batch window has passed: had the call stayed queued, it would have run by now
    assert g._pending == {}  # noqa: SLF001 - the server forgot the call
    assert parse_prometheus("\n".join(g.service.metrics.batch_size.render()))["privsplit_batch_size_count"] == 0


def test_native_stop_drains_calls_in_flight_and_refuses_new_ones(slow_native, pair):
    g, model = slow_native, server_bundle(pair[1]).model_name
    raw, answers = RawGrpc(g.target), []
    caller = threading.Thread(target=lambda: answers.append(raw("ModelInfer", _infer_body(model))))
    caller.start()
    time.sleep(0.1)  # the call waits in the 300 ms batch window
    stopper = threading.Thread(target=g.stop)
    stopper.start()
    time.sleep(0.05)
    late = raw("ModelInfer", _infer_body(model, 2))
    caller.join(5)
    stopper.join(10)
    assert answers[0][0] == grpc.StatusCode.OK and len(pb.ModelInferResponse.FromString(answers[0][2]).outputs) == 2
    assert late[0] == grpc.StatusCode.UNAVAILABLE and "shutting down" in late[1]


def test_engine_registry_errors_say_what_to_do(monkeypatch):
    from privsplit.runtime.grpc_native import NativeGrpcServer
    from privsplit.runtime.grpc_server import GrpcServer, grpc_server_class

    assert grpc_server_class("grpcio") is GrpcServer
    with pytest.raises(ValueError, match="unknown gRPC engine 'tonic'; choose one of grpcio, native"):
        grpc_server_class("tonic")
    monkeypatch.setitem(sys.modules, "pygrpc_native", None)  # as if the extra were not installed
    with pytest.raises(ValueError, match=r"needs the grpc-native extra .*pip install 'privsplit\[grpc-native\]'"):
        grpc_server_class("native")
    monkeypatch.undo()
    if importlib.util.find_spec("pygrpc_native") is not None:
        assert grpc_server_class("native") is NativeGrpcServer
