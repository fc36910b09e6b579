"""Interoperability, no mocks: (a) stock tritonclient.http against our server; (b) our Client against a real
Triton Inference Server (nvidia-pytriton, CPU) serving the same analyzer."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from runtime_support import (
    API_KEY, analyze, build_bundles, client_bundle, face_images, reference, running, seeded_client_bundle,
    server_bundle,
)

from privsplit.runtime.client import Client

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return build_bundles(tmp_path_factory.mktemp("bundles"))[0]


@pytest.fixture(scope="module")
def model(pair):
    return server_bundle(pair[1]).model_name


# ----------------------------------------------------------------------------- (a) tritonclient -> privsplit serve

@pytest.fixture(scope="module")
def triton_http():
    return pytest.importorskip("tritonclient.http", reason="needs the triton extra: pip install 'privsplit[triton]'")


@pytest.mark.parametrize("binary", [False, True])
def test_tritonclient_calls_our_server(pair, model, triton_http, binary):
    x = np.random.default_rng(5).normal(size=(5, 4)).astype(np.float32)
    with running(server_bundle(pair[1])) as srv:
        client = triton_http.InferenceServerClient(url=f"127.0.0.1:{srv.port}")
        try:
            assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(model)
            assert client.get_server_metadata()["extensions"] == ["binary_tensor_data"]
            meta = client.get_model_metadata(model)
            assert meta["inputs"] == [{"name": "features", "datatype": "FP32", "shape": [-1, 4]}]
            inp = triton_http.InferInput("features", list(x.shape), "FP32")
            inp.set_data_from_numpy(x, binary_data=binary)
            outputs = [triton_http.InferRequestedOutput("probabilities", binary_data=binary),
                       triton_http.InferRequestedOutput("label", binary_data=binary)]
            emb = server_bundle(pair[1]).embedding_id
            result = client.infer(model, [inp], outputs=outputs, request_id="req-1",
                                  parameters={"embedding_id": emb})
            expected = analyze(pair[1], x)
            np.testing.assert_allclose(result.as_numpy("probabilities"), expected, atol=1e-6)
            labels = [v.decode() if isinstance(v, bytes) else v for v in result.as_numpy("label").tolist()]
            assert labels == [["F", "M"][i] for i in expected.argmax(1)]  # tritonclient: str in JSON, bytes in binary
            assert result.get_response()["id"] == "req-1"
            # no outputs named: tritonclient asks for binary_data_output, gets everything
            default = client.infer(model, [inp])
            np.testing.assert_allclose(default.as_numpy("probabilities"), expected, atol=1e-6)
            # errors come back as InferenceServerException carrying our message
            bad = triton_http.InferInput("features", [1, 3], "FP32")
            bad.set_data_from_numpy(np.zeros((1, 3), np.float32), binary_data=binary)
            with pytest.raises(triton_http.InferenceServerException, match=r"expected \[N, 4\] with N >= 1"):
                client.infer(model, [bad])
            with pytest.raises(triton_http.InferenceServerException, match="unknown model 'nope'"):
                client.infer("nope", [inp])
        finally:
            client.close()


def test_tritonclient_with_api_key(pair, model, triton_http):
    x = np.ones((2, 4), np.float32)
    with running(server_bundle(pair[1]), api_keys=[API_KEY]) as srv:
        client = triton_http.InferenceServerClient(url=f"127.0.0.1:{srv.port}")
        try:
            inp = triton_http.InferInput("features", [2, 4], "FP32")
            inp.set_data_from_numpy(x)
            with pytest.raises(triton_http.InferenceServerException, match="missing API key"):
                client.infer(model, [inp])
            result = client.infer(model, [inp], headers={"Authorization": f"Bearer {API_KEY}"})
            np.testing.assert_allclose(result.as_numpy("probabilities"), analyze(pair[1], x), atol=1e-6)
            assert client.is_server_live()  # health needs no key
        finally:
            client.close()


# ----------------------------------------------------------------------------- (b) our Client -> Triton (pytriton)

def _triton_python() -> str:
    """The interpreter with nvidia-pytriton (its own venv: pytriton 0.7 pins numpy<2); skip when absent."""
    python = os.environ.get("PRIVSPLIT_TRITON_PYTHON", str(REPO / ".venv-triton" / "bin" / "python"))
    how = ("create it with: python3 -m venv .venv-triton && .venv-triton/bin/pip install nvidia-pytriton==0.7.0 "
           "torch==2.13.0 safetensors pillow rich (or set PRIVSPLIT_TRITON_PYTHON)")
    if not Path(python).exists():
        pytest.skip(f"no nvidia-pytriton interpreter at {python}; {how}")
    probe = subprocess.run([python, "-c", "import pytriton, torch, safetensors, PIL"], capture_output=True, text=True,
                           timeout=120)
    if probe.returncode != 0:
        pytest.skip(f"{python} cannot import pytriton/torch/safetensors/PIL ({probe.stderr.strip()[-200:]}); {how}")
    return python


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def test_our_client_against_real_triton(pair, model, tmp_path):
    python = _triton_python()
    http_port, grpc_port, metrics_port = _free_ports(3)
    log = tmp_path / "triton.log"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    with open(log, "w") as out:
        proc = subprocess.Popen([python, "-m", "privsplit.runtime.triton", str(pair[1]), "--host", "127.0.0.1",
                                 "--http-port", str(http_port), "--grpc-port", str(grpc_port),
                                 "--metrics-port", str(metrics_port)],
                                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{http_port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                pytest.fail(f"Triton exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{url}/v2/models/{model}/ready", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"Triton not ready after 180 s:\n{log.read_text()[-3000:]}")
            time.sleep(0.25)
        images = face_images(6, seed=21)
        expected = reference(*pair, images)
        for binary in (True, False):
            client = Client(seeded_client_bundle(pair[0]), url, binary=binary)
            preds = client.infer(images)
            client.close()
            np.testing.assert_allclose(np.stack([p.probabilities for p in preds]), expected, atol=1e-6)
            assert [p.label for p in preds] == [["F", "M"][i] for i in expected.argmax(1)]
        meta = Client(client_bundle(pair[0]), url).model_metadata()
        assert meta.name == model and meta.inputs[0].shape == [-1, 4]
        try:  # our gRPC transport against Triton's gRPC endpoint (raw contents; Triton's label is [N, 1])
            import privsplit.runtime.grpc_client  # noqa: F401
        except ImportError:
            return
        client = Client(seeded_client_bundle(pair[0]), f"grpc://127.0.0.1:{grpc_port}", protocol="grpc")
        preds = client.infer(images)
        np.testing.assert_allclose(np.stack([p.probabilities for p in preds]), expected, atol=1e-6)
        assert [p.label for p in preds] == [["F", "M"][i] for i in expected.argmax(1)]
        assert client.server_ready() and client.model_metadata().name == model
        client.close()
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # pytriton stops tritonserver and its stubs
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # the group this test started
                proc.wait(10)
