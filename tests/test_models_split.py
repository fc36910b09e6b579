"""Split equality for every split point of both VGGs and for user models; layer names; errors."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from privsplit.models import VGGConfig, build_model, split, split_points, vgg16, vgg_s

VGG16_CONVS = [f"conv{b}_{i}" for b, n in ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3)) for i in range(1, n + 1)]


@pytest.mark.parametrize("factory,size,bn", [(vgg16, 64, True), (vgg16, 32, False), (vgg_s, 48, True),
                                              (vgg_s, 64, False)])
def test_every_split_point_is_exact(factory, size, bn):
    model = factory(width=0.125, input_size=size, batch_norm=bn, num_classes=3).eval()
    x = torch.randn(2, 3, size, size)
    expected = model(x)
    points = split_points(model)
    assert len(points) == len(list(model.children())) - 1
    for at in points:
        extractor, analyzer = split(model, at=at)
        assert torch.equal(analyzer(extractor(x)), expected), at


def test_paper_layer_names():
    names = split_points(vgg16(width=0.125))
    assert [n for n in names if n.startswith("conv")] == VGG16_CONVS
    assert names[-3:] == ["flatten", "fc6", "fc7"] and "pool5" in names
    s = split_points(vgg_s(width=0.125, input_size=48))
    assert [n for n in s if n.startswith("conv")] == ["conv1", "conv2", "conv3", "conv4", "conv5"]


def test_split_shares_weights_and_cuts_at_conv5_3():
    model = vgg16(width=0.125).eval()
    extractor, analyzer = split(model, at="conv5_3")
    assert list(dict(extractor.named_children()))[-1] == "conv5_3"
    assert extractor.conv5_3 is model.conv5_3  # a view: fine-tuning the extractor fine-tunes the model
    out = extractor(torch.randn(1, 3, 64, 64))
    assert out.shape == (1, 64, 4, 4) and (out >= 0).all()  # post-ReLU activation


def test_unknown_split_point_lists_valid_ones():
    with pytest.raises(ValueError, match=r"cannot split at 'conv6'; valid split points: conv1_1, conv1_2, pool1"):
        split(vgg16(width=0.125), at="conv6")
    with pytest.raises(ValueError, match=r"split at .1.; valid split points: 0$"):  # last layer: no split point
        split(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)), at="1")


def test_width_and_parameter_count():
    small = vgg16(width=0.25, input_size=64)
    assert 2_000_000 < sum(p.numel() for p in small.parameters()) < 3_000_000
    assert small.conv1_1[0].out_channels == 16 and small.conv5_3[0].out_channels == 128
    rebuilt = build_model(VGGConfig.from_dict(small.config.to_dict()))
    assert [n for n, _ in rebuilt.named_parameters()] == [n for n, _ in small.named_parameters()]


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.body = nn.Conv2d(4, 4, 3, padding=1)
        self.mix = nn.Conv2d(4, 4, 1)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.stem(x))
        y = self.mix(self.body(h) + h)
        return self.head(y.mean((2, 3)))


def test_fx_model_split_points_skip_residual_interior():
    model = Residual().eval()
    points = split_points(model)
    assert points == ["stem", "relu", "add", "mix", "mean"]  # 'body' is inside the skip connection
    x = torch.randn(3, 3, 8, 8)
    for at in points:
        extractor, analyzer = split(model, at=at)
        assert torch.equal(analyzer(extractor(x)), model(x)), at
    with pytest.raises(ValueError, match="valid split points: stem, relu, add, mix, mean"):
        split(model, at="body")


def test_user_sequential():
    model = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3)).eval()
    assert split_points(model) == ["0", "1"]
    e, a = split(model, at="1")
    x = torch.randn(4, 5)
    assert torch.equal(a(e(x)), model(x))
