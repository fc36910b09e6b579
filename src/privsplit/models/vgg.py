"""VGG-16 and VGG-S with the paper's layer names, scaled for CPU work.

Both models are ``nn.Sequential`` whose named children are the paper's layers (Figs. 7 and 8), so
``split(model, at="conv5_3")`` cuts exactly where the paper does. Each ``conv*`` child is
conv -> [batch-norm] -> ReLU, so the split output is the post-ReLU activation, as in Caffe's in-place
ReLU blobs the paper used.

Choices (the paper fine-tuned pretrained Caffe models; we train from scratch on CPU):
* ``width`` multiplies every channel count and fc size (VGG-16 at 1/4 width has ~2.6M parameters);
* ``batch_norm`` (default on) makes small-width from-scratch training converge in a few epochs; it
  is folded into the same named block, so split points are unchanged;
* ``input_size`` sets the fc6 input; pools use ``ceil_mode`` (as Caffe) so VGG-S works from 48 px.

Architectures are registered by name in :data:`ARCHITECTURES` (a :class:`privsplit.registry.Registry`);
``VGGConfig(arch=NAME)``, :func:`build_model` and model specs such as ``NAME:0.25:64`` look them up there.
Add your own, from outside the package, with :func:`register_architecture`::

    from privsplit.models import VGGConfig, register_architecture

    @register_architecture("tiny")
    def tiny(cfg: VGGConfig) -> nn.Sequential:
        ...  # named children are the layers `split(model, at=...)` can cut at
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from privsplit.registry import Registry

__all__ = ["VGGConfig", "vgg16", "vgg_s", "build_model", "ARCHITECTURES", "register_architecture"]


@dataclass(frozen=True)
class VGGConfig:
    """Everything needed to rebuild a model (stored in every model/bundle manifest)."""

    arch: str = "vgg16"
    num_classes: int = 2
    width: float = 0.25
    input_size: int = 64
    batch_norm: bool = True
    dropout: float = 0.5

    def to_dict(self) -> dict[str, Any]:
        """The config as a JSON-ready dict (what manifests store)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VGGConfig:
        """The config stored by :meth:`to_dict`; unknown keys (from newer versions) are ignored."""
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def _ch(c: int, width: float) -> int:
    return max(4, int(round(c * width)))


def _conv(cin: int, cout: int, k: int, *, stride: int = 1, pad: int = 1, bn: bool, lrn: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride=stride, padding=pad)]
    if bn:
        layers.append(nn.BatchNorm2d(cout))
    layers.append(nn.ReLU(inplace=True))
    if lrn:
        layers.append(nn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.0))
    return nn.Sequential(*layers)


def _fc(cin: int, cout: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(cin, cout), nn.ReLU(inplace=True), nn.Dropout(dropout))


def _head(features: OrderedDict[str, nn.Module], cfg: VGGConfig, fc_width: int) -> nn.Sequential:
    """Append flatten + fc6/fc7/fc8, sizing fc6 from a dry run at ``cfg.input_size``."""
    body = nn.Sequential(features)
    with torch.no_grad():
        flat = body.eval()(torch.zeros(1, 3, cfg.input_size, cfg.input_size)).numel()
    if flat == 0:
        raise ValueError(f"input_size={cfg.input_size} is too small for {cfg.arch}")
    features["flatten"] = nn.Flatten()
    features["fc6"] = _fc(flat, fc_width, cfg.dropout)
    features["fc7"] = _fc(fc_width, fc_width, cfg.dropout)
    features["fc8"] = nn.Linear(fc_width, cfg.num_classes)
    model = nn.Sequential(features)
    model.config = cfg  # type: ignore[attr-defined]  # lets split/bundles rebuild the architecture
    return model


def vgg16(cfg: VGGConfig | None = None, **overrides: Any) -> nn.Sequential:
    """VGG-16 (Simonyan & Zisserman) with layers ``conv1_1 ... conv5_3, pool1..pool5, fc6, fc7, fc8``."""
    cfg = cfg or VGGConfig(arch="vgg16", **overrides)
    blocks = [(1, [64, 64]), (2, [128, 128]), (3, [256] * 3), (4, [512] * 3), (5, [512] * 3)]
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    cin = 3
    for b, chans in blocks:
        for i, c in enumerate(chans, start=1):
            layers[f"conv{b}_{i}"] = _conv(cin, _ch(c, cfg.width), 3, bn=cfg.batch_norm)
            cin = _ch(c, cfg.width)
        layers[f"pool{b}"] = nn.MaxPool2d(2, 2, ceil_mode=True)
    return _head(layers, cfg, _ch(4096, cfg.width))


def vgg_s(cfg: VGGConfig | None = None, **overrides: Any) -> nn.Sequential:
    """VGG-S (Chatfield et al. 2014): conv1 7x7/2 + LRN + pool 3/3, conv2 5x5 + pool 2/2, conv3-5 3x3, pool 3/3."""
    cfg = cfg or VGGConfig(arch="vgg_s", **overrides)
    c = lambda n: _ch(n, cfg.width)  # noqa: E731
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    layers["conv1"] = _conv(3, c(96), 7, stride=2, pad=0, bn=cfg.batch_norm, lrn=True)
    layers["pool1"] = nn.MaxPool2d(3, 3, ceil_mode=True)
    layers["conv2"] = _conv(c(96), c(256), 5, pad=1, bn=cfg.batch_norm)
    layers["pool2"] = nn.MaxPool2d(2, 2, ceil_mode=True)
    layers["conv3"] = _conv(c(256), c(512), 3, bn=cfg.batch_norm)
    layers["conv4"] = _conv(c(512), c(512), 3, bn=cfg.batch_norm)
    layers["conv5"] = _conv(c(512), c(512), 3, bn=cfg.batch_norm)
    layers["pool5"] = nn.MaxPool2d(3, 3, ceil_mode=True)
    return _head(layers, cfg, c(4096))


#: an architecture takes its :class:`VGGConfig` and returns the model (named children = split points)
Architecture = Callable[[VGGConfig], nn.Sequential]
#: architecture name -> builder, in the order menus list them
ARCHITECTURES: Registry[Architecture] = Registry("architecture", help_ref="help(privsplit.models.vgg)")
ARCHITECTURES.register("vgg16", vgg16)
ARCHITECTURES.register("vgg_s", vgg_s)


def register_architecture(name: str, builder: Architecture | None = None, *, replace: bool = False) -> Any:
    """Register ``builder(cfg) -> nn.Sequential`` as architecture ``name`` (a decorator when ``builder`` is omitted).

    Registering a taken name raises :class:`~privsplit.registry.RegistryError` unless ``replace=True``.
    """
    return ARCHITECTURES.register(name, replace=replace) if builder is None else \
        ARCHITECTURES.register(name, builder, replace=replace)


def build_model(cfg: VGGConfig) -> nn.Sequential:
    """Rebuild a model from its config (e.g. read from a manifest); an unknown ``arch`` raises
    :class:`~privsplit.registry.RegistryError` (a ``ValueError``) listing the architectures."""
    return ARCHITECTURES.get(cfg.arch)(cfg)
