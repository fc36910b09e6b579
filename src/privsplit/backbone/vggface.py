"""Load converted VGG-Face weights (Parkhi et al. 2015, the paper's starting point) into our VGG-16.

The published VGG-Face is VGG-16 without BatchNorm, 224 x 224 RGB inputs in [0, 255] minus a per-
channel mean, 2,622 identities. Its PyTorch conversions (e.g. ``vgg_face_dag.pth`` converted from
the MatConvNet/Caffe release) name the layers exactly like the paper and like our model:

=============  ==========================  ===================================
VGG-Face key   shape (weight; bias)        our key (``vgg16(width=1.0, batch_norm=False, input_size=224)``)
=============  ==========================  ===================================
conv1_1        64 x 3 x 3 x 3; 64          ``conv1_1.0`` (conv -> ReLU block, conv is child 0)
conv1_2        64 x 64 x 3 x 3             ``conv1_2.0``
conv2_1..2_2   128 x {64,128} x 3 x 3      ``conv2_*.0``
conv3_1..3_3   256 x {128,256} x 3 x 3     ``conv3_*.0``
conv4_1..4_3   512 x {256,512} x 3 x 3     ``conv4_*.0``
conv5_1..5_3   512 x 512 x 3 x 3           ``conv5_*.0``
fc6            4096 x 25088 (512*7*7)      ``fc6.0`` (Linear -> ReLU -> Dropout block)
fc7            4096 x 4096                 ``fc7.0``
fc8            2622 x 4096                 ``fc8`` (kept only with ``num_classes=2622``)
=============  ==========================  ===================================

Caffe-style checkpoints store fc6 as a 7x7 convolution (4096 x 512 x 7 x 7): it is reshaped to
4096 x 25088, which flattens in the same (channel, row, column) order as our ``nn.Flatten``. Keys
may carry a ``.weight``/``.bias`` suffix and an optional prefix (``features.``, ``module.``), which is
stripped. Caffe (not the DAG conversion) takes BGR input: pass ``bgr=True`` to permute conv1_1's
input channels so our RGB pipeline gives the same outputs.

Preprocessing: VGG-Face computes on ``255 * rgb - mean`` with ``mean = (129.1863, 104.7624,
93.5940)`` (RGB); :data:`VGGFACE_PREPROCESS` expresses exactly that as our ``Preprocess`` (mean/255,
std 1/255), so inputs need no change. Our pools use ``ceil_mode``; at 224 px every pooled size is
even, so they equal VGG-Face's floor-mode pools.
"""
from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from privsplit.data.transforms import Preprocess
from privsplit.models.vgg import VGGConfig, build_model

__all__ = ["VGGFACE_LAYERS", "VGGFACE_MEAN", "VGGFACE_PREPROCESS", "vggface_shapes", "map_vggface", "load_vggface"]

_CONVS = [(1, 2, 64), (2, 2, 128), (3, 3, 256), (4, 3, 512), (5, 3, 512)]
VGGFACE_LAYERS = [f"conv{b}_{i}" for b, n, _ in _CONVS for i in range(1, n + 1)] + ["fc6", "fc7", "fc8"]
VGGFACE_MEAN = (129.1863, 104.7624, 93.5940)  # RGB, in [0, 255]
VGGFACE_PREPROCESS = Preprocess(size=224, crop=1.0, mean=tuple(m / 255 for m in VGGFACE_MEAN),  # type: ignore[arg-type]
                                std=(1 / 255, 1 / 255, 1 / 255))


def vggface_shapes(num_identities: int = 2622) -> dict[str, tuple[int, ...]]:
    """The published VGG-Face ``state_dict`` shapes (the table in the module docstring)."""
    shapes: dict[str, tuple[int, ...]] = {}
    cin = 3
    for b, n, c in _CONVS:
        for i in range(1, n + 1):
            shapes[f"conv{b}_{i}.weight"], shapes[f"conv{b}_{i}.bias"] = (c, cin, 3, 3), (c,)
            cin = c
    for name, (o, i) in {"fc6": (4096, 512 * 7 * 7), "fc7": (4096, 4096), "fc8": (num_identities, 4096)}.items():
        shapes[f"{name}.weight"], shapes[f"{name}.bias"] = (o, i), (o,)
    return shapes


def _ours(layer: str) -> str:
    return layer if layer == "fc8" else f"{layer}.0"


def map_vggface(state: Mapping[str, Tensor], *, bgr: bool = False, keep_fc8: bool = False) -> dict[str, Tensor]:
    """Rename a VGG-Face ``state_dict`` to our VGG-16's keys (see the module docstring).

    Raises:
        ValueError: a layer is missing or a key is not a VGG-Face layer (message lists them).
    """
    out: dict[str, Tensor] = {}
    unknown = []
    for key, val in state.items():
        m = re.search(r"(conv\d_\d|fc[678])\.(weight|bias)$", key)
        if m is None:
            unknown.append(key)
            continue
        layer, kind = m.groups()
        if layer == "fc8" and not keep_fc8:
            continue
        if kind == "weight" and layer.startswith("fc") and val.dim() == 4:
            val = val.reshape(val.shape[0], -1)  # Caffe's fc-as-conv: (C, H, W) flatten order as ours
        if bgr and layer == "conv1_1" and kind == "weight":
            val = val.flip(1)
        out[f"{_ours(layer)}.{kind}"] = val
    needed = {f"{_ours(layer)}.{k}" for layer in VGGFACE_LAYERS if layer != "fc8" or keep_fc8 for k in ("weight", "bias")}
    if unknown or needed - set(out):
        raise ValueError(f"not a VGG-Face state_dict: unknown keys {unknown[:5]}, missing {sorted(needed - set(out))[:5]}"
                         " (expected conv1_1..conv5_3, fc6, fc7[, fc8] with .weight/.bias)")
    return out


def load_vggface(state: Mapping[str, Tensor], *, num_classes: int = 2622, width: float = 1.0, input_size: int = 224,
                 bgr: bool = False) -> tuple[nn.Sequential, VGGConfig]:
    """Our VGG-16 (``batch_norm=False``) holding the VGG-Face weights; fc8 kept iff ``num_classes`` matches.

    ``width``/``input_size`` other than 1.0/224 only make sense for checkpoints of that shape (tests).
    """
    cfg = VGGConfig(arch="vgg16", num_classes=num_classes, width=width, input_size=input_size, batch_norm=False)
    model = build_model(cfg)
    fc8 = next((v for k, v in state.items() if re.search(r"fc8\.weight$", k)), None)
    keep = fc8 is not None and fc8.shape[0] == num_classes
    mapped = map_vggface(state, bgr=bgr, keep_fc8=keep)
    ours = model.state_dict()
    bad = [f"{k}: {tuple(v.shape)} vs ours {tuple(ours[k].shape)}" for k, v in mapped.items() if ours[k].shape != v.shape]
    if bad:
        raise ValueError(f"VGG-Face shapes do not fit vgg16(width={width}, input_size={input_size}): {bad[:3]}")
    model.load_state_dict(mapped, strict=False)
    return model.eval(), cfg
