"""Training loop: learns, resumes bit-exactly, saves pickle-free artifacts that refuse tampering."""
from __future__ import annotations

import json

import pytest
import torch

from privsplit.models import vgg16
from privsplit.train import TrainConfig, evaluate, load_model, save_model, train_classifier
from privsplit.train.loops import class_weights

from conftest import make_faces

CFG = TrainConfig(epochs=3, batch_size=16, lr=3e-3, seed=5)


def _model():
    torch.manual_seed(0)
    return vgg16(width=0.0625, input_size=32)


def test_learns_tiny_task():
    faces = make_faces(n=96)
    model = _model()
    res = train_classifier(model, faces, column="gender", config=TrainConfig(epochs=8, batch_size=16, lr=3e-3),
                           eval_data=faces, progress=False)
    assert res.report.accuracy >= 0.95 and len(res.history) == 8
    assert res.history[-1]["loss"] < res.history[0]["loss"]


def test_resume_is_exact(tiny_faces, tmp_path):
    full = _model()
    ref = train_classifier(full, tiny_faces, column="gender", config=CFG, eval_data=tiny_faces, progress=False)
    part = _model()
    train_classifier(part, tiny_faces, column="gender", config=CFG, checkpoint=tmp_path / "ck" / "last",
                     stop_after_epoch=1, progress=False)
    resumed = _model()  # a fresh process would start from scratch weights like this
    torch.manual_seed(123)  # the global RNG state must come from the checkpoint, not from here
    res = train_classifier(resumed, tiny_faces, column="gender", config=CFG, eval_data=tiny_faces,
                           checkpoint=tmp_path / "ck" / "last", resume=True, progress=False)
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    assert res.report.to_dict() == ref.report.to_dict()
    assert [h["loss"] for h in res.history] == [h["loss"] for h in ref.history]


def test_class_weights_balanced():
    w = class_weights(torch.tensor([0, 0, 0, 1]), 2, "balanced")
    assert torch.allclose(w, torch.tensor([4 / 6, 2.0]))
    assert class_weights(torch.tensor([0, 1]), 2, "none") is None
    with pytest.raises(ValueError, match="class_weight='inverse' unknown; use 'balanced' or 'none'"):
        class_weights(torch.tensor([0]), 2, "inverse")


def test_artifact_roundtrip_and_tamper(tiny_faces, tmp_path):
    model = _model().eval()
    save_model(tmp_path, model, config=model.config, preprocess=tiny_faces.preprocess, primary="gender",
               classes=["F", "M"], extra={"metrics": {"x": 1}})
    art = load_model(tmp_path)
    x = tiny_faces.inputs()[:4]
    assert torch.equal(art.model(x), model(x))
    man = json.loads((tmp_path / "model.json").read_text())
    assert man["split_points"][:2] == ["conv1_1", "conv1_2"] and man["classes"] == ["F", "M"]
    assert evaluate(art.model, tiny_faces, column="gender").n == len(tiny_faces)
    (tmp_path / "model.safetensors").write_bytes((tmp_path / "model.safetensors").read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(ValueError, match="does not match the SHA-256"):
        load_model(tmp_path)
    with pytest.raises(FileNotFoundError, match="not a privsplit model folder"):
        load_model(tmp_path / "nope")


def test_freeze_keeps_lower_layers_exactly(tiny_faces):
    """``freeze='conv2_2'``: conv1_1..conv2_2 keep weights *and* BatchNorm statistics; layers above learn."""
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train_classifier(model, tiny_faces, column="gender", config=TrainConfig(epochs=1, batch_size=16, freeze="conv2_2"),
                     progress=False)
    after = model.state_dict()
    frozen = [k for k in before if k.split(".")[0] in ("conv1_1", "conv1_2", "conv2_1", "conv2_2")]
    assert frozen and any("running_mean" in k for k in frozen)
    assert all(torch.equal(before[k], after[k]) for k in frozen)
    assert not torch.equal(before["conv3_1.0.weight"], after["conv3_1.0.weight"])
    assert not torch.equal(before["fc8.weight"], after["fc8.weight"])


def test_freeze_unknown_layer_names_the_choices(tiny_faces):
    with pytest.raises(ValueError, match="freeze='conv9' is not a layer of this model; use one of: conv1_1, conv1_2"):
        train_classifier(_model(), tiny_faces, column="gender", config=TrainConfig(epochs=1, freeze="conv9"),
                         progress=False)
