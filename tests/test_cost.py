"""On-device cost: FLOPs, upload bytes, client specs, partition view, one fresh-process measurement, reports."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from privsplit.edge import cost
from privsplit.edge.cost import ClientSpec, ModelSpec, count_flops, count_macs, partition_table, upload_bytes
from privsplit.models import split, split_points, vgg16, vgg_s


def tiny_net() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(4, 6, 3, groups=2), nn.Flatten(), nn.Linear(24, 5))


def test_macs_of_a_tiny_net_by_hand():
    # conv1: out 4x8x8 = 256 values, each 3*3*3 = 27 MACs -> 6912
    # pool -> 4x4x4; conv2 (groups 2, no pad): out 6x2x2 = 24 values, each (4/2)*3*3 = 18 MACs -> 432
    # linear 24 -> 5: 120
    assert count_macs(tiny_net(), (1, 3, 8, 8)) == 6912 + 432 + 120
    assert count_macs(tiny_net(), (2, 3, 8, 8)) == 2 * 7464
    assert count_flops(tiny_net(), (1, 3, 8, 8)) == 2 * 7464  # torch's FlopCounterMode agrees (2 FLOPs per MAC)


def test_macs_of_the_papers_vgg16_on_the_meta_device():
    with torch.device("meta"):
        model = vgg16(width=1.0, input_size=224, batch_norm=False)
    convs = [(224, 3, 64), (224, 64, 64), (112, 64, 128), (112, 128, 128), (56, 128, 256), (56, 256, 256),
             (56, 256, 256), (28, 256, 512), (28, 512, 512), (28, 512, 512), (14, 512, 512), (14, 512, 512),
             (14, 512, 512)]
    expected = sum(s * s * cin * cout * 9 for s, cin, cout in convs) + 25088 * 4096 + 4096 * 4096 + 4096 * 2
    assert count_macs(model, (1, 3, 224, 224)) == expected == 15_466_176_512  # 15.47 GMACs with 1000 classes


def test_upload_bytes_per_embedding():
    assert upload_bytes([512, 14, 14]) == 401_408  # conv5_3 of the paper's VGG-16, float32
    assert upload_bytes([4]) == 16
    assert upload_bytes([4], itemsize=2) == 8
    m = ModelSpec("vgg16", 0.25, 64)
    simple, reduced = ClientSpec(m, "conv5_3", "simple"), ClientSpec(m, "conv5_3", "reduced")
    assert reduced.dim == 4 and ClientSpec(m, "conv5_1", "reduced").dim == 8
    with torch.no_grad():
        zs = simple.build()(torch.zeros(1, 3, 64, 64))
        zr = reduced.build()(torch.zeros(1, 3, 64, 64))
    assert tuple(zs.shape[1:]) == (128, 4, 4) and upload_bytes(zs.shape[1:]) == 8192
    assert tuple(zr.shape[1:]) == (4,) and upload_bytes(zr.shape[1:]) == 16


def test_specs_and_default_clients():
    assert ModelSpec.parse("vgg16:1:224:nobn") == ModelSpec("vgg16", 1.0, 224, batch_norm=False)
    assert ModelSpec.parse("vgg_s:0.25:48").key == "vgg_s-w0.25-48"
    with pytest.raises(ValueError, match="ARCH:WIDTH:SIZE"):
        ModelSpec.parse("vgg16:0.25")
    with pytest.raises(ValueError, match="unknown architecture 'resnet'"):
        ModelSpec.parse("resnet:1:224")
    names = [c.name for c in cost.default_clients(ModelSpec("vgg16", 0.0625, 32))]
    assert names == ["full model", "conv5_1 simple", "conv5_1 reduced (8)", "conv5_2 simple", "conv5_2 reduced (6)",
                     "conv5_3 simple", "conv5_3 reduced (4)"]
    assert [c.key for c in cost.default_clients(ModelSpec("vgg_s", 0.25, 48))] == ["full", "conv5-simple",
                                                                                   "conv5-reduced10"]
    with pytest.raises(ValueError, match="conv9 not a split point"):
        cost.default_clients(ModelSpec("vgg16", 0.0625, 32), ["conv9"])
    spec = ClientSpec(ModelSpec("vgg_s", 0.25, 48), "conv5", "reduced")
    assert ClientSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec


def test_client_builds_on_meta_and_loads_weights():
    spec = ClientSpec(ModelSpec("vgg16", 0.0625, 32), "conv5_2", "reduced")
    torch.manual_seed(0)
    ref = spec.build()
    with torch.device("meta"):
        empty = spec.build()
    empty.load_state_dict(ref.state_dict(), assign=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(empty.eval()(x), ref(x))


@pytest.mark.parametrize("arch", ["vgg16", "vgg_s"])
def test_partition_table_has_one_row_per_split_point(arch):
    size = 32 if arch == "vgg16" else 48
    model = (vgg16 if arch == "vgg16" else vgg_s)(width=0.0625, input_size=size).eval()
    privacy = {"conv5_3": 0.41, "conv5": 0.3, "pool5": 0.2}
    rows = partition_table(model, runs=3, warmup=1, privacy=privacy)
    points = split_points(model)
    assert [r["layer"] for r in rows] == points and [r["index"] for r in rows] == list(range(len(points)))
    for r in rows:
        with torch.no_grad():
            out = split(model, at=r["layer"])[0](torch.zeros(1, 3, size, size))
        assert r["output_shape"] == list(out.shape[1:])
        assert r["upload_bytes"] == out.numel() * 4
        assert r["upload_vs_image"] == pytest.approx(out.numel() * 4 / (3 * size * size))
        assert r["privacy"] == privacy.get(r["layer"])
        assert r["latency_ms_p90"] >= r["latency_ms_median"] > 0 and r["latency_cpu_ms_median"] >= 0
    lat, macs = [r["latency_ms_median"] for r in rows], [r["macs"] for r in rows]
    assert lat == sorted(lat) and macs == sorted(macs)  # prefixes only grow
    # nested {arch: {layer: value}} privacy results pick this architecture's block
    nested = partition_table(model, runs=1, warmup=0, privacy={arch: {"pool5": 0.7}, "other": {"pool5": 0.1}})
    assert [r["privacy"] for r in nested if r["privacy"] is not None] == [0.7]


def test_measure_client_in_fresh_processes(tmp_path):
    for mod in ("onnx", "onnxscript", "onnxruntime"):
        pytest.importorskip(mod)
    spec = ClientSpec(ModelSpec("vgg16", 0.0625, 32), "conv5_3", "reduced")
    rec = cost.measure_client(spec, tmp_path / "models", runs=3, warmup=1, load_repeats=1)
    assert rec["feature_shape"] == [4] and rec["upload_bytes"] == 16
    assert rec["onnx_max_abs_diff"] <= 1e-4 and rec["onnx_bytes"] > 0 and rec["safetensors_bytes"] > 0
    assert rec["macs"] == count_macs(spec.build(), (1, 3, 32, 32))
    for rt in ("onnx", "torch"):
        r = rec[rt]
        assert r["latency"]["n"] == 3 and r["latency"]["p90_ms"] >= r["latency"]["median_ms"] > 0
        assert r["load_ms"] > 0 and r["peak_bytes"] >= 0 and r["processes"] == 1
        assert r["latency_cpu"]["n"] == 3 and r["load_cpu_ms"] > 0
    assert not list((tmp_path / "models").glob("vgg16*"))  # model files removed unless keep_models


def _fake(model_key, key, embedding, mem, load, lat, macs, upload):
    rt = {"peak_bytes": mem, "steady_bytes": mem / 2, "load_ms": load, "cold_load_ms": 3 * load, "load_cpu_ms": load / 2,
          "latency": {"median_ms": lat, "p90_ms": lat * 1.1}, "latency_cpu": {"median_ms": lat / 2}}
    return {"model": "VGG-16 w1 224px (no BN)", "model_key": model_key, "key": key, "config": key, "embedding": embedding,
            "macs": macs, "params": 1, "onnx_bytes": 10, "upload_bytes": upload, "onnx_max_abs_diff": 1e-7,
            "onnx": rt, "torch": rt}


def test_acceptance_and_reports_from_a_result(tmp_path):
    key = "vgg16-w1-224-nobn"
    result = {"protocol": {"runs": 60, "warmup": 5, "load_repeats": 3, "runtimes": ["onnx", "torch"]},
              "environment": {"cpu": "test"},
              "configs": [_fake(key, "full", "full", 600e6, 700.0, 400.0, 15.47e9, 0),
                          _fake(key, "conv5_3-reduced4", "reduced", 100e6, 100.0, 390.0, 15.35e9, 16)],
              "partition": {key: {"model": "m", "input_size": 32,
                                  "rows": [{"index": 0, "layer": "conv1_1", "output_shape": [4, 32, 32],
                                            "upload_bytes": 16384, "upload_vs_image": 5.33, "macs": 10,
                                            "latency_ms_median": 1.0, "latency_ms_p90": 1.2, "privacy": 0.1}]}}}
    acc = cost.acceptance(result)
    assert acc["upload_bytes"] == 16
    assert acc["onnx"]["memory_ratio"] == pytest.approx(6.0) and acc["onnx"]["load_ratio"] == pytest.approx(7.0)
    assert acc["onnx"]["latency_ratio"] == pytest.approx(400 / 390) and acc["onnx"]["meets_goal"]
    assert acc["torch"]["cold_load_ratio"] == pytest.approx(7.0)
    from privsplit.edge import cost_report

    result["acceptance"] = acc
    figs = cost_report.write_figures(result, tmp_path)
    assert sorted(figs) == ["latency", "load", "memory", "partition"]
    assert all((tmp_path / f"edge_{k}.png").stat().st_size > 1000 for k in figs)
    md = cost_report.markdown(result | {"figures": figs})
    assert "| conv5_3-reduced4 | 1.01x | 6.00x | 7.00x / 7.00x | 1.03x / 1.03x |" in md
    assert "| ONNX Runtime | 6.00x (6.00x) | 7.00x, 7.00x / 7.00x | 1.026x / 1.026x |" in md and "| met |" in md
    assert "| 0 | conv1_1 | 4x32x32 | 16,384 B | 5.33x | 0.0 | 1.00 / 1.20, - | 0.1 |" in md
