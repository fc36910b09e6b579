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
