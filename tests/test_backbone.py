"""Backbones: VGG-Face mapping, margin-softmax identity training, distillation, --init, dlib loader."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from privsplit.backbone.vggface import VGGFACE_PREPROCESS, load_vggface, map_vggface, vggface_shapes
from privsplit.models.vgg import VGGConfig, build_model


def _fake_vggface(scale: float, classes: int = 10, side: int = 7, gen=None) -> dict[str, torch.Tensor]:
    """Random tensors under VGG-Face's names; channel counts scaled by ``scale`` (1.0 = the real shapes)."""
    out = {}
    for k, shape in vggface_shapes(classes).items():
        s = list(shape)
        if k.startswith("conv"):
            s[0] = max(4, round(s[0] * scale))
            if len(s) == 4 and s[1] != 3:
                s[1] = max(4, round(s[1] * scale))
        elif k.startswith("fc"):
            s[0] = classes if k.startswith("fc8") else max(4, round(4096 * scale))
            if len(s) == 2:
                s[1] = max(4, round(512 * scale)) * side * side if k.startswith("fc6") else max(4, round(4096 * scale))
        out[k] = torch.randn(*s, generator=gen) * (2 / max(1, np.prod(s[1:]))) ** 0.5
    return out


def _reference_forward(sd: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """VGG-Face as published (conv3x3 pad 1 + ReLU, 2x2 max-pool after each block, fc6-8), eval mode."""
    blocks = [["conv1_1", "conv1_2"], ["conv2_1", "conv2_2"], ["conv3_1", "conv3_2", "conv3_3"],
              ["conv4_1", "conv4_2", "conv4_3"], ["conv5_1", "conv5_2", "conv5_3"]]
    for block in blocks:
        for name in block:
            x = F.relu(F.conv2d(x, sd[f"{name}.weight"], sd[f"{name}.bias"], padding=1))
        x = F.max_pool2d(x, 2, 2)
    x = x.flatten(1)
    x = F.relu(F.linear(x, sd["fc6.weight"].reshape(sd["fc6.weight"].shape[0], -1), sd["fc6.bias"]))
    x = F.relu(F.linear(x, sd["fc7.weight"], sd["fc7.bias"]))
    return F.linear(x, sd["fc8.weight"], sd["fc8.bias"])


def test_vggface_table_matches_our_vgg16_at_width_1():
    """The documented VGG-Face shapes are exactly our vgg16(width=1, batch_norm=False, 224 px) (on 'meta': no memory)."""
    with torch.device("meta"):
        model = build_model(VGGConfig(num_classes=2622, width=1.0, input_size=224, batch_norm=False))
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    fake = {k: torch.empty(s, device="meta") for k, s in vggface_shapes().items()}
    mapped = map_vggface(fake, keep_fc8=True)
    assert set(mapped) == set(ours)
    assert all(tuple(v.shape) == ours[k] for k, v in mapped.items())
    assert vggface_shapes()["fc6.weight"] == (4096, 512 * 7 * 7)


@pytest.mark.parametrize("caffe_fc6", [False, True])
def test_vggface_fake_checkpoint_reproduces_reference_outputs(one_thread, caffe_fc6):
    gen = torch.Generator().manual_seed(0)
    sd = _fake_vggface(1 / 16, classes=10, side=1, gen=gen)  # 32 px input -> 1x1 after pool5
    ref_sd = dict(sd)
    if caffe_fc6:  # Caffe stores fc6 as a conv: (out, C, 1, 1) here
        sd["fc6.weight"] = sd["fc6.weight"].reshape(sd["fc6.weight"].shape[0], -1, 1, 1)
    model, cfg = load_vggface({f"module.{k}": v for k, v in sd.items()}, num_classes=10, width=1 / 16, input_size=32)
    assert cfg.batch_norm is False
    x = torch.randn(3, 3, 32, 32, generator=gen)
    torch.testing.assert_close(model(x), _reference_forward(ref_sd, x), rtol=1e-4, atol=1e-5)


def test_vggface_spatial_fc6_flatten_order(one_thread):
    """fc6 stored as a 7x7 conv (Caffe) flattens in our (C, H, W) order: checked at 224 px on a narrow model."""
    gen = torch.Generator().manual_seed(1)
    sd = _fake_vggface(1 / 64, classes=5, side=7, gen=gen)
    ref = _reference_forward(sd, x := torch.randn(1, 3, 224, 224, generator=gen))
    conv_sd = {**sd, "fc6.weight": sd["fc6.weight"].reshape(sd["fc6.weight"].shape[0], -1, 7, 7)}
    model, _ = load_vggface(conv_sd, num_classes=5, width=1 / 64, input_size=224)
    torch.testing.assert_close(model(x), ref, rtol=1e-4, atol=1e-5)


def test_vggface_bgr_and_errors(one_thread):
    gen = torch.Generator().manual_seed(2)
    sd = _fake_vggface(1 / 16, classes=10, side=1, gen=gen)
    model, _ = load_vggface(sd, num_classes=10, width=1 / 16, input_size=32, bgr=True)
    x = torch.randn(2, 3, 32, 32, generator=gen)
    torch.testing.assert_close(model(x), _reference_forward(sd, x.flip(1)), rtol=1e-4, atol=1e-5)
    other, _ = load_vggface(sd, num_classes=2, width=1 / 16, input_size=32)  # fc8 not kept: fresh head
    assert other.fc8.out_features == 2
    with pytest.raises(ValueError, match="not a VGG-Face"):
        map_vggface({k: v for k, v in sd.items() if not k.startswith("conv3_2")})
    with pytest.raises(ValueError, match="do not fit"):
        load_vggface(sd, num_classes=10, width=1 / 8, input_size=32)
    assert VGGFACE_PREPROCESS.size == 224 and abs(VGGFACE_PREPROCESS.mean[0] * 255 - 129.1863) < 1e-6


# ---------------------------------------------------------------- bundles: format_version and backbone record

def _bundles(tmp_path, backbone=None):
    from conftest import make_faces

    from privsplit.defenses import build_embedding, save_bundles

    faces = make_faces()
    model = build_model(VGGConfig(width=0.125, input_size=32)).eval()
    emb = build_embedding("simple", model, layer="conv5_3", train=faces, column="gender", progress=False)
    return save_bundles(emb, tmp_path, config=model.config, preprocess=faces.preprocess, classes=["F", "M"],
                        primary="gender", backbone=backbone)


def test_bundles_record_version_and_backbone(tmp_path, one_thread):
    from privsplit.defenses.bundles import BUNDLE_FORMAT_VERSION, load_client_bundle, load_server_bundle

    client, server = _bundles(tmp_path, backbone={"method": "distill", "teacher": "dlib-resnet-v1"})
    for bundle in (load_client_bundle(client), load_server_bundle(server)):
        # no input transform: written as version 2 so older privsplit still loads it (3 = input_transform)
        assert bundle.manifest["format_version"] == 2 and BUNDLE_FORMAT_VERSION == 3
        assert bundle.manifest["backbone"]["teacher"] == "dlib-resnet-v1"
    client2, _ = _bundles(tmp_path / "scratch")
    assert load_client_bundle(client2).manifest["backbone"] == {"method": "scratch"}


def _rewrite(path, edit):
    import json

    from privsplit.defenses.bundles import _manifest_digest

    man = json.loads(path.read_text())
    edit(man)
    man["manifest_sha256"] = _manifest_digest(man)  # as the writer of that version would have signed it
    path.write_text(json.dumps(man))


def test_bundles_written_before_format_version_still_load(tmp_path, one_thread):
    from privsplit.defenses.bundles import BundleError, bundle_version, load_client_bundle, load_server_bundle

    client, server = _bundles(tmp_path)

    def strip(man):
        man.pop("format_version")
        man.pop("backbone")

    _rewrite(client / "client.json", strip)
    _rewrite(server / "server.json", strip)
    c, s = load_client_bundle(client), load_server_bundle(server)
    assert bundle_version(c.manifest) == bundle_version(s.manifest) == 1
    _rewrite(client / "client.json", lambda man: man.update(format_version=99))
    with pytest.raises(BundleError, match="newer"):
        load_client_bundle(client)


# ---------------------------------------------------------------- distillation, --init, margin softmax, dlib loader

def test_distill_reproduces_targets_and_init_copies_layers(tmp_path, one_thread):
    from conftest import make_faces

    from privsplit.backbone.distill import cosine_distill_loss, descriptor_agreement, distill
    from privsplit.backbone.init import init_from_backbone
    from privsplit.train.artifacts import save_model
    from privsplit.train.loops import TrainConfig

    faces = make_faces(n=48, size=32, n_ids=8)
    gen = torch.Generator().manual_seed(0)
    per_id = torch.randn(8, 6, generator=gen) + 3.0  # a shared offset, like dlib's descriptors
    targets = per_id[faces.labels["identity"]]
    before = build_model(VGGConfig(num_classes=6, width=0.125, input_size=32))
    model, cfg, res = distill(faces, targets, width=0.125, progress=False, center=True,
                              config=TrainConfig(epochs=20, batch_size=8, lr=2e-3, class_weight="none", augment=False))
    mean = targets.mean(0)
    agree, base = descriptor_agreement(model, faces, targets, mean=mean), descriptor_agreement(before, faces, targets,
                                                                                                 mean=mean)
    assert agree > 0.6 and agree > base + 0.4, (agree, base)
    # centring matters: uncentred targets are almost all parallel, so the loss starts near 0 for any guess
    loss, _ = cosine_distill_loss(targets, center=False)(lambda x: mean.expand(len(x), -1), torch.zeros(3), torch.arange(3))
    assert float(loss) < 0.1
    save_model(tmp_path / "bb", model, config=cfg, preprocess=faces.preprocess, primary="d", classes=list("abcdef"),
               extra={"backbone": {"method": "distill", "teacher": "fake", "history": [1]}})
    tuned, tcfg, record = init_from_backbone(tmp_path / "bb", num_classes=2, input_size=32)
    assert tcfg.num_classes == 2 and record["method"] == "distill" and "history" not in record
    torch.testing.assert_close(tuned.conv3_1[0].weight, model.conv3_1[0].weight)
    with pytest.raises(ValueError, match="px"):
        init_from_backbone(tmp_path / "bb", num_classes=2, input_size=64)


def test_margin_training_identifies_held_out_images(tmp_path, one_thread):
    """CosFace and ArcFace on 24 synthetic people (6 train / 4 held-out images each): stated held-out 1-NN.

    Measured here: CosFace 20.8%, ArcFace 16.7% (8 epochs) vs chance 4.2% and an untrained net's 6.3%.
    """
    from privsplit.backbone.margin import MarginHead, embed, train_identity
    from privsplit.data.faces import load_faces
    from privsplit.data.synthetic import generate_synthetic_faces
    from privsplit.data.transforms import Preprocess
    from privsplit.train.loops import TrainConfig

    m = generate_synthetic_faces(tmp_path / "faces", n_identities=24, images_per_identity=10, size=32, seed=3)
    faces = load_faces(m, Preprocess(size=32), columns=["identity"], progress=False)
    k = torch.arange(len(faces)) % 10
    gallery, query = faces.subset(torch.nonzero(k < 6).flatten()), faces.subset(torch.nonzero(k >= 6).flatten())
    for kind, floor in (("cosface", 0.15), ("arcface", 0.12)):
        model, _, res = train_identity(gallery, kind=kind, dim=32, width=0.125, progress=False,
                                       config=TrainConfig(epochs=8, lr=3e-3, batch_size=32, class_weight="none"))
        acc = float((gallery.labels["identity"][(embed(model, query) @ embed(model, gallery).T).argmax(1)]
                     == query.labels["identity"]).float().mean())
        assert acc >= floor, (kind, acc)
    head = MarginHead(4, 3, kind="arcface")
    emb, y = torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1])
    plain = head.s * head.cosine(emb)
    assert torch.all(head(emb, y).gather(1, y.view(-1, 1)) < plain.gather(1, y.view(-1, 1)))  # margin penalises


def test_dlib_loader_names_the_extra(monkeypatch):
    from privsplit.data import dlib_models

    monkeypatch.setattr(dlib_models, "dlib_model_dir", lambda: None)
    with pytest.raises(ImportError, match=r"privsplit\[attacks\]"):
        dlib_models.require_dlib()


def test_dlib_teacher_caches_descriptors(tmp_path):
    from privsplit.backbone.teachers import DlibTeacher, image_keys, teacher_descriptors
    from privsplit.data import dlib_models

    if not dlib_models.dlib_available():
        pytest.skip("dlib not installed (pip install 'privsplit[attacks]')")
    imgs = (torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    teacher = DlibTeacher()
    first = teacher_descriptors(teacher, imgs, folder=tmp_path, progress=False)
    assert first.shape == (3, 128) and len(set(image_keys(imgs))) == 3
    teacher.describe = None  # a second call must not ask the teacher again
    torch.testing.assert_close(teacher_descriptors(teacher, imgs[[2, 0]], folder=tmp_path, progress=False), first[[2, 0]])
