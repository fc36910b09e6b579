"""Edge export: client bundle -> ONNX / ExecuTorch, server bundle -> ONNX + Triton repository, OnnxExtractor."""
from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
pytest.importorskip("onnxruntime")

from conftest import make_faces  # noqa: E402

from privsplit.defenses import BundleError, build_embedding, load_client_bundle, load_server_bundle, save_bundles  # noqa: E402
from privsplit.edge import export as ex  # noqa: E402
from privsplit.edge import onnx_export  # noqa: E402
from privsplit.edge.onnx_runtime import OnnxExtractor  # noqa: E402
from privsplit.models import vgg16  # noqa: E402

ATOL = 1e-4


@pytest.fixture(scope="module")
def faces():
    return make_faces()


@pytest.fixture(scope="module")
def bundles(faces, tmp_path_factory):
    """Tiny VGG-16 (width 1/16, 32 px) bundles: simple and noisy-reduced (dim 4, sigma 0.5) at conv5_3."""
    torch.manual_seed(0)
    model = vgg16(width=0.0625, input_size=32).eval()
    root = tmp_path_factory.mktemp("bundles")
    out = {}
    for name, kind, opts in (("simple", "simple", {}), ("reduced", "noisy-reduced-simple", {"dim": 4, "sigma": 0.5})):
        emb = build_embedding(kind, model, layer="conv5_3", train=faces, column="gender", progress=False, **opts)
        out[name] = save_bundles(emb, root / name, config=model.config, preprocess=faces.preprocess,
                                 classes=["F", "M"], primary="gender")
    return out


@pytest.fixture(scope="module")
def client_onnx(bundles, tmp_path_factory):
    folder = tmp_path_factory.mktemp("onnx")
    return {name: ex.export_client_onnx(b[0], folder / f"{name}.onnx") for name, b in bundles.items()}


@pytest.mark.parametrize("name", ["simple", "reduced"])
def test_client_onnx_matches_torch_at_batch_1_and_3(name, bundles, client_onnx, faces):
    rep = client_onnx[name]
    client = load_client_bundle(bundles[name][0])
    assert rep.side == "client" and rep.format == "onnx" and rep.path.exists() and rep.bytes == rep.path.stat().st_size
    assert sorted(rep.diffs) == [1, 3] and rep.max_abs_diff <= ATOL
    assert rep.input_name == "image" and rep.input_shape == [3, 32, 32]
    assert rep.outputs == {"features": client.feature_shape}
    assert client.feature_shape == ([32, 2, 2] if name == "simple" else [4])
    ext = OnnxExtractor(rep.path, threads=1)
    assert ext.input_shape == [3, 32, 32] and ext.feature_shape == client.feature_shape
    for n in (1, 3):  # real (normalised) face images, dynamic batch axis
        x = faces.inputs()[:n]
        with torch.no_grad():
            ref = client.extractor(x)
        got = ext(x)
        assert isinstance(got, torch.Tensor) and got.shape == ref.shape == (n, *client.feature_shape)
        assert float((got - ref).abs().max()) <= ATOL


def test_noise_is_not_in_the_client_graph(bundles, client_onnx, faces):
    client = load_client_bundle(bundles["reduced"][0])
    assert client.manifest["noise"]["sigma"] == 0.5
    ext = OnnxExtractor(client_onnx["reduced"].path)
    x = faces.inputs()[:3]
    assert torch.equal(ext(x), ext(x))  # deterministic: no noise drawn inside the graph
    with torch.no_grad():
        clean = client.extractor(x)
    assert float((ext(x) - clean).abs().max()) <= ATOL


def test_onnx_extractor_interface(bundles, client_onnx, faces):
    client = load_client_bundle(bundles["simple"][0])
    ext = OnnxExtractor(client_onnx["simple"].path, threads=1)
    assert ext.eval() is ext
    assert ext.metadata["privsplit.layer"] == "conv5_3" and ext.layer == "conv5_3"
    assert ext.embedding_id == client.embedding_id
    assert ext.preprocess == client.preprocess.to_dict() | {"mean": list(client.preprocess.mean),
                                                           "std": list(client.preprocess.std)}
    x = faces.inputs()[:2]
    np.testing.assert_array_equal(ext(x.numpy()).numpy(), ext(x).numpy())  # numpy in, tensor out
    ext.check_bundle(client)
    with pytest.raises(BundleError, match="not from this client bundle"):
        ext.check_bundle(load_client_bundle(bundles["reduced"][0]))
    with pytest.raises(ValueError, match=r"expects a batch of shape \(N, 3, 32, 32\), got \(2, 3, 16, 16\)"):
        ext(torch.zeros(2, 3, 16, 16))
    with pytest.raises(FileNotFoundError, match="privsplit export"):
        OnnxExtractor(client_onnx["simple"].path.with_name("missing.onnx"))


EXPECTED_CONFIG = """name: "edge-test"
platform: "onnxruntime_onnx"
max_batch_size: 16
input [
  {
    name: "features"
    data_type: TYPE_FP32
    dims: [ 4 ]
  }
]
output [
  {
    name: "probabilities"
    data_type: TYPE_FP32
    dims: [ 2 ]
  },
  {
    name: "label"
    data_type: TYPE_STRING
    dims: [ 1 ]
  }
]
dynamic_batching {
  max_queue_delay_microseconds: 100
}
instance_group [
  {
    count: 1
    kind: KIND_CPU
  }
]
"""


def test_server_onnx_and_triton_repository(bundles, faces, tmp_path):
    client = load_client_bundle(bundles["reduced"][0])
    server = load_server_bundle(bundles["reduced"][1])
    repo = tmp_path / "repo"
    rep = ex.export_server_onnx(bundles["reduced"][1], repo, name="edge-test", max_batch_size=16)
    assert rep.path == repo / "edge-test" / "1" / "model.onnx" and rep.path.exists()
    assert rep.triton_config == repo / "edge-test" / "config.pbtxt"
    assert rep.triton_config.read_text() == EXPECTED_CONFIG
    assert rep.outputs == {"probabilities": [2], "label": [1]} and rep.max_abs_diff <= ATOL
    from privsplit.edge.onnx_runtime import make_session

    sess = make_session(rep.path)
    assert [i.name for i in sess.get_inputs()] == ["features"]
    assert [(o.name, o.type) for o in sess.get_outputs()] == [("probabilities", "tensor(float)"),
                                                              ("label", "tensor(string)")]
    assert sess.get_modelmeta().custom_metadata_map["privsplit.embedding_id"] == server.embedding_id
    for n in (1, 3):
        with torch.no_grad():
            z = client.extractor(faces.inputs()[:n])  # the clean features a device would send
            ref = torch.softmax(server.analyzer(z), dim=1).numpy()
        probs, labels = sess.run(None, {"features": z.numpy()})
        assert probs.shape == (n, 2) and labels.shape == (n, 1)
        assert float(np.abs(probs - ref).max()) <= ATOL
        assert [str(v) for v in labels[:, 0]] == [server.classes[i] for i in ref.argmax(1)]


def test_triton_config_for_unreduced_features():
    text = ex.triton_config("m", input_name="features", input_dims=[32, 2, 2],
                            outputs=[("probabilities", "FP32", [2]), ("label", "BYTES", [1])], max_batch_size=8,
                            instance_kind="KIND_GPU")
    assert 'name: "features"\n    data_type: TYPE_FP32\n    dims: [ 32, 2, 2 ]' in text
    assert "max_batch_size: 8\n" in text and "kind: KIND_GPU" in text and "dynamic_batching {" in text
    with pytest.raises(ValueError, match="max_batch_size must be >= 1"):
        ex.triton_config("m", input_name="x", input_dims=[1], outputs=[], max_batch_size=0)


def test_export_fails_loudly_above_tolerance(tmp_path, monkeypatch):
    monkeypatch.setattr(onnx_export, "verify_onnx", lambda *a, **k: {1: 3e-3, 3: 2e-4})
    out = tmp_path / "bad.onnx"
    with pytest.raises(ex.ExportError, match=r"max abs diff 0\.003 > 0\.0001 .*deleted"):
        ex.export_module_onnx(torch.nn.Linear(4, 2), (4,), out)
    assert not out.exists()


def test_bundle_dispatch_errors(bundles, tmp_path):
    client_dir, server_dir = bundles["simple"]
    assert ex.bundle_side(client_dir) == "client" and ex.bundle_side(server_dir) == "server"
    with pytest.raises(BundleError, match="holds client/ and server/ bundles"):
        ex.bundle_side(client_dir.parent)
    with pytest.raises(ex.ExportError, match="server bundle runs in the cloud"):
        ex.export_bundle(server_dir, tmp_path / "x.pte", format="executorch")
    with pytest.raises(ex.ExportError, match="unknown format 'tflite'"):
        ex.export_bundle(client_dir, tmp_path / "x", format="tflite")


def test_executorch_missing_gives_install_hint(bundles, tmp_path, monkeypatch):
    monkeypatch.setattr(ex, "executorch_available", lambda: False)
    with pytest.raises(ex.MissingDependency, match=r"pip install executorch==1\.5\.1"):
        ex.export_bundle(bundles["simple"][0], tmp_path / "c.pte", format="executorch")


@pytest.mark.skipif(not ex.executorch_available(), reason="executorch not installed (pip install executorch==1.5.1)")
def test_executorch_client_matches_torch(bundles, tmp_path):
    rep = ex.export_client_executorch(bundles["reduced"][0], tmp_path / "client.pte")
    assert rep.format == "executorch" and rep.path.read_bytes()[4:8] == b"ET12"
    assert sorted(rep.diffs) == [1, 3] and rep.max_abs_diff <= ATOL
    assert rep.outputs == {"features": [4]}


def test_cli_export_client(bundles, tmp_path):
    from typer.testing import CliRunner

    from privsplit.cli import app

    out = tmp_path / "cli.onnx"
    res = CliRunner().invoke(app, ["export", str(bundles["simple"][0]), "--format", "onnx", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert out.exists() and "max abs diff vs torch" in " ".join(res.output.split())
    res = CliRunner().invoke(app, ["export", str(tmp_path), "--out", str(tmp_path / "y.onnx")])
    assert res.exit_code == 2 and "is not a privsplit bundle" in " ".join(res.output.split())
