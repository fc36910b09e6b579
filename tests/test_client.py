"""The device client and CLI against a real server: features, retries, restarts, end to end."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from runtime_support import (
    SEED, Raw, analyze, build_bundles, client_bundle, face_images, reference, running, seeded_client_bundle,
    server_bundle,
)

from privsplit.data.transforms import decode_image
from privsplit.defenses import load_server_bundle
from privsplit.runtime.client import Client, ClientError, Prediction, ServerUnavailable, load_images, wait_ready
from privsplit.runtime.metrics import parse_prometheus
from privsplit.runtime.server import ServerThread, create_app

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return build_bundles(tmp_path_factory.mktemp("bundles"))[0]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_features_are_local_and_freshly_noised(pair):
    images = face_images(4)
    client = Client(client_bundle(pair[0]), "http://127.0.0.1:9")  # features never touch the network
    a, b = client.features(images), client.features(images)
    assert a.shape == (4, 4) and a.dtype == np.float32
    assert not np.allclose(a, b)  # deployment noise: fresh every call
    bundle = client_bundle(pair[0])
    from privsplit.data.transforms import normalize
    with torch.no_grad():
        clean = bundle.extractor(normalize(torch.from_numpy(images).permute(0, 3, 1, 2), bundle.preprocess)).numpy()
    scale = bundle.noise.sigma * (1.0 if bundle.noise.std is None else bundle.noise.std.numpy())
    assert 0.2 < float(((a - clean) / scale).std()) < 5  # noise of the bundle's level around the clean features
    ref = seeded_client_bundle(pair[0])
    with torch.no_grad():
        expected = ref.noise(torch.from_numpy(clean)).numpy()
    det = Client(seeded_client_bundle(pair[0]), "http://127.0.0.1:9")  # the same noise sequence, restarted
    np.testing.assert_allclose(det.features(images), expected, atol=1e-6)


def test_images_from_paths_and_arrays(pair, tmp_path):
    pre = client_bundle(pair[0]).preprocess
    images = face_images(3)
    paths = []
    for i, img in enumerate(images):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(img).save(paths[-1])
    from_paths = load_images([str(p) for p in paths], pre)
    np.testing.assert_array_equal(from_paths, images)
    np.testing.assert_array_equal(load_images(images, pre), images)  # one N x H x W x 3 array
    big = np.asarray(Image.fromarray(images[0]).resize((80, 64)))
    Image.fromarray(big).save(tmp_path / "big.png")
    np.testing.assert_array_equal(load_images([big], pre)[0], decode_image(tmp_path / "big.png", pre))
    gray = load_images([images[0][:, :, 0]], pre)[0]
    assert gray.shape == (32, 32, 3) and (gray[:, :, 0] == gray[:, :, 2]).all()
    with pytest.raises(TypeError, match="image 0: image arrays must be uint8 HxWx3, got dtype float32"):
        load_images([images[0].astype(np.float32)], pre)
    with pytest.raises(ValueError, match=r"must be HxWx3 \(RGB\), got shape \(32, 32, 4\)"):
        load_images([np.zeros((32, 32, 4), np.uint8)], pre)
    with pytest.raises(Exception, match="image not found"):
        load_images([tmp_path / "missing.jpg"], pre)


def test_client_argument_errors(pair, tmp_path):
    with pytest.raises(ValueError, match="server URL must look like http://host:port"):
        Client(client_bundle(pair[0]), "127.0.0.1:8000")
    with pytest.raises(ValueError, match="extractor must be 'torch' or 'onnx', got 'tf'"):
        Client(client_bundle(pair[0]), "http://x", extractor="tf")
    with pytest.raises(ValueError, match="extractor='onnx' needs onnx_path"):
        Client(client_bundle(pair[0]), "http://x", extractor="onnx")
    with pytest.raises((FileNotFoundError, ImportError), match="ONNX model not found|needs onnxruntime"):
        Client(client_bundle(pair[0]), "http://x", extractor="onnx", onnx_path=tmp_path / "e.onnx")
    client = Client(client_bundle(pair[0]), "http://x")
    with pytest.raises(ValueError, match=r"features must have shape \[N, 4\], got \[2, 3\]"):
        client.infer_features(np.zeros((2, 3), np.float32))


def _linear_onnx(path: Path, weight: np.ndarray) -> None:
    """An ONNX extractor without privsplit metadata: images N x 3 x 32 x 32 -> Flatten -> MatMul(weight)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("Flatten", ["images"], ["flat"], axis=1), helper.make_node("MatMul", ["flat", "W"], ["z"])],
        "extractor", [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["n", 3, 32, 32])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["n", weight.shape[1]])],
        [numpy_helper.from_array(weight, "W")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))


def test_onnx_extractor_is_checked_against_the_bundle(pair, tmp_path):
    """extractor='onnx' runs the bundle's exported graph (same features as torch, plus the bundle's noise) and
    refuses an ONNX file of another embedding or one without privsplit metadata."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from privsplit.defenses.bundles import BundleError
    from privsplit.edge.export import export_client_onnx

    export_client_onnx(client_bundle(pair[0]), tmp_path / "e.onnx")
    images = face_images(3)
    torch_client = Client(seeded_client_bundle(pair[0]), "http://x")
    onnx_client = Client(seeded_client_bundle(pair[0]), "http://x", extractor="onnx", onnx_path=tmp_path / "e.onnx")
    np.testing.assert_allclose(onnx_client.features(images), torch_client.features(images), rtol=1e-4, atol=1e-4)

    other = build_bundles(tmp_path / "other")[0]  # same weights, another embedding id: still refused
    export_client_onnx(client_bundle(other[0]), tmp_path / "other.onnx")
    with pytest.raises(BundleError, match=r"was exported from embedding \w+, not from this client bundle"):
        Client(client_bundle(pair[0]), "http://x", extractor="onnx", onnx_path=tmp_path / "other.onnx")
    _linear_onnx(tmp_path / "bare.onnx", np.zeros((3 * 32 * 32, 4), np.float32))
    with pytest.raises(BundleError, match="carries no privsplit metadata"):
        Client(client_bundle(pair[0]), "http://x", extractor="onnx", onnx_path=tmp_path / "bare.onnx")


def test_connection_errors_are_retried_then_reported(pair):
    port = _free_port()  # nothing listens here
    client = Client(client_bundle(pair[0]), f"http://127.0.0.1:{port}", retries=2, backoff=0.01)
    t0 = time.perf_counter()
    with pytest.raises(ServerUnavailable, match=r"failed after 3 attempt\(s\); last: ConnectionRefusedError"):
        client.infer_features(np.zeros((1, 4), np.float32))
    assert time.perf_counter() - t0 >= 0.03  # backoff 0.01 + 0.02
    assert not client.server_live()


class _Flaky(torch.nn.Module):
    """Fails the first ``n`` calls (a 500 from the server), then delegates."""

    def __init__(self, inner: torch.nn.Module, n: int) -> None:
        super().__init__()
        self.inner, self.left = inner, n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.left > 0:
            self.left -= 1
            raise RuntimeError("simulated analyzer crash")
        return self.inner(x)


def test_5xx_retried_4xx_not(pair, caplog):
    bundle = load_server_bundle(pair[1])  # its own copy: the analyzer is replaced
    bundle.analyzer = _Flaky(bundle.analyzer, 2)
    x = np.random.default_rng(2).normal(size=(3, 4)).astype(np.float32)
    with running(bundle) as srv:
        client = Client(client_bundle(pair[0]), srv.url, retries=3, backoff=0.01)
        preds = client.infer_features(x)
        np.testing.assert_allclose(np.stack([p.probabilities for p in preds]), analyze(pair[1], x), atol=1e-6)
        with pytest.raises(ClientError) as err:
            client.infer_features(np.full((1, 4), np.nan, np.float32))
        assert err.value.status == 400 and "contains NaN or Inf" in err.value.message
        assert not isinstance(err.value, ServerUnavailable)
        m = parse_prometheus(Raw(srv.port)("GET", "/metrics")[2].decode())
        assert m['privsplit_requests_total{endpoint="infer",status="500"}'] == 2
        assert m['privsplit_requests_total{endpoint="infer",status="200"}'] == 1
        assert m['privsplit_requests_total{endpoint="infer",status="400"}'] == 1  # not retried
        bundle.analyzer.left = 10
        with pytest.raises(ServerUnavailable, match="HTTP 500: internal server error: the analyzer failed") as err:
            Client(client_bundle(pair[0]), srv.url, retries=1, backoff=0.01).infer_features(x)
        assert "simulated" not in str(err.value) and "RuntimeError" not in str(err.value)  # detail only in the log
    assert "simulated analyzer crash" in caplog.text


def test_server_restart_while_client_sends(pair):
    """Stop the server mid-stream and start a new one on the same port: every request gets one correct answer."""
    feats = np.random.default_rng(3).normal(size=(400, 1, 4)).astype(np.float32)
    answers: list[list[Prediction] | Exception] = []
    ten_sent, restarted = threading.Event(), threading.Event()
    port = _free_port()
    apps = [create_app(server_bundle(pair[1]), api_keys=[]), create_app(server_bundle(pair[1]), api_keys=[])]
    first = ServerThread(apps[0], port=port).start()

    def sender() -> None:  # sends until 10 requests after the restart
        client = Client(client_bundle(pair[0]), f"http://127.0.0.1:{port}", retries=8, backoff=0.05)
        after = 0
        for i, f in enumerate(feats):
            try:
                answers.append(client.infer_features(f))
            except Exception as exc:  # noqa: BLE001 - reported by the assertions below
                answers.append(exc)
            if i == 10:
                ten_sent.set()
            after += restarted.is_set()
            if after >= 10:
                return
            time.sleep(0.005)

    thread = threading.Thread(target=sender)
    thread.start()
    second = None
    try:
        assert ten_sent.wait(30)
        first.stop()
        time.sleep(0.3)  # the client meets a closed port and backs off
        second = ServerThread(apps[1], port=port).start()
        restarted.set()
        thread.join(60)
    finally:
        restarted.set()
        first.stop()
        if second is not None:
            second.stop()
    assert not thread.is_alive()
    n = len(answers)
    assert 20 < n < len(feats)
    expected = analyze(pair[1], feats[:n, 0])
    for i, got in enumerate(answers):
        assert isinstance(got, list) and len(got) == 1, got
        np.testing.assert_allclose(got[0].probabilities, expected[i], atol=1e-6)
    served = [app.state.metrics.requests.value(endpoint="infer", status="200") for app in apps]
    assert served[0] >= 11 and served[1] >= 10  # both servers answered part of the stream
    assert n <= sum(served) <= n + 1  # at most the one request in flight at the stop was computed twice


def _cli(*args: str, env: dict[str, str] | None = None, **kw):
    return subprocess.run([sys.executable, "-c", "from privsplit.cli import main; main()", *args],
                          capture_output=True, text=True, env={**os.environ, **(env or {})}, **kw)


def test_cli_serve_and_infer_end_to_end(pair, tmp_path):
    """`privsplit serve` + `privsplit infer` on image files = the in-process pipeline (test-mode noise)."""
    images = face_images(5, seed=11)
    paths = []
    for i, img in enumerate(images):
        paths.append(str(tmp_path / f"face{i}.png"))
        Image.fromarray(img).save(paths[-1])
    keyfile = tmp_path / "keys"
    keyfile.write_text("cli-key-0123456789\n")
    port = _free_port()
    env = {"PYTHONPATH": str(REPO / "src"), "PRIVSPLIT_API_KEYS": ""}
    proc = subprocess.Popen([sys.executable, "-c", "from privsplit.cli import main; main()", "serve", str(pair[1]),
                             "--port", str(port), "--api-key-file", str(keyfile), "--log-level", "warning"],
                            env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_ready(f"http://127.0.0.1:{port}")
        url = f"http://127.0.0.1:{port}"
        out = _cli("infer", *paths, "--client-bundle", str(pair[0]), "--server", url, "--json",
                   "--test-noise-seed", str(SEED), env={**env, "PRIVSPLIT_API_KEY": "cli-key-0123456789"},
                   timeout=120)
        assert out.returncode == 0, out.stdout + out.stderr
        rows = json.loads(out.stdout)
        expected = reference(*pair, images)
        assert [r["image"] for r in rows] == paths
        np.testing.assert_allclose([r["probabilities"] for r in rows], expected, atol=1e-6)
        assert [r["label"] for r in rows] == [["F", "M"][i] for i in expected.argmax(1)]
        from typer.testing import CliRunner

        from privsplit.cli import app
        runner = CliRunner()
        table = runner.invoke(app, ["infer", paths[0], "--client-bundle", str(pair[0]), "--server", url,
                                    "--no-binary"], env={"PRIVSPLIT_API_KEY": "cli-key-0123456789", "COLUMNS": "200"})
        assert table.exit_code == 0 and paths[0] in table.output and "probability" in table.output, table.output
        denied = runner.invoke(app, ["infer", paths[0], "--client-bundle", str(pair[0]), "--server", url],
                               env={"PRIVSPLIT_API_KEY": ""})
        assert denied.exit_code == 2 and "missing API key" in denied.output, denied.output
    finally:
        proc.terminate()
        proc.wait(30)
    log = proc.stdout.read() if proc.stdout else ""
    assert "serving privsplit-noisy-reduced-simple-conv5-3" in log and "API keys: 1" in log


@pytest.mark.data
def test_lfw_images_end_to_end(pair, lfw_dir):
    """Real LFW JPEGs through `privsplit infer` and a live server = the in-process pipeline."""
    from typer.testing import CliRunner

    from privsplit.cli import app
    from privsplit.data.transforms import normalize

    files = sorted((lfw_dir / "images").rglob("*.jpg"))[:: 400][:12]
    assert len(files) == 12
    client_b = seeded_client_bundle(pair[0])
    server_b = server_bundle(pair[1])
    pixels = np.stack([decode_image(f, client_b.preprocess) for f in files])
    with torch.no_grad():
        x = normalize(torch.from_numpy(pixels).permute(0, 3, 1, 2), client_b.preprocess)
        expected = torch.softmax(server_b.analyzer(client_b.noise(client_b.extractor(x))), dim=1).numpy()
    with running(server_bundle(pair[1])) as srv:
        result = CliRunner().invoke(app, ["infer", *map(str, files), "--client-bundle", str(pair[0]), "--server",
                                          srv.url, "--json", "--test-noise-seed", str(SEED)])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    np.testing.assert_allclose([r["probabilities"] for r in rows], expected, atol=1e-6)
    assert [r["label"] for r in rows] == [["F", "M"][i] for i in expected.argmax(1)]


def test_tls(pair, tmp_path):
    """HTTPS with uvicorn's ssl options; the client verifies the certificate and refuses an unknown one."""
    import shutil
    import ssl

    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed: cannot make a test certificate")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    x = np.random.default_rng(4).normal(size=(2, 4)).astype(np.float32)
    with running(server_bundle(pair[1]), ssl_keyfile=str(key), ssl_certfile=str(cert)) as srv:
        url = f"https://127.0.0.1:{srv.port}"
        trusted = Client(client_bundle(pair[0]), url, ssl_context=ssl.create_default_context(cafile=str(cert)))
        preds = trusted.infer_features(x)
        np.testing.assert_allclose(np.stack([p.probabilities for p in preds]), analyze(pair[1], x), atol=1e-6)
        with pytest.raises(ClientError, match="TLS error talking to https://127.0.0.1") as err:
            Client(client_bundle(pair[0]), url, retries=3).infer_features(x)  # system CAs: not trusted
        assert not isinstance(err.value, ServerUnavailable)  # certificate errors are not retried
        with pytest.raises(ServerUnavailable):
            Client(client_bundle(pair[0]), f"http://127.0.0.1:{srv.port}", retries=0).infer_features(x)  # plain HTTP
