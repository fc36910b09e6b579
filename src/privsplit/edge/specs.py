"""What runs on the device in a cost measurement: :class:`ModelSpec` (an architecture at a size, a thin
parser onto :class:`~privsplit.models.vgg.VGGConfig`) and :class:`ClientSpec` (full model, or extractor up to a
split layer with the ``simple`` or ``reduced`` embedding)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from privsplit.models.presets import PAPER_SPLIT_LAYERS, paper_dim
from privsplit.models.split import split, split_points
from privsplit.models.vgg import ARCHITECTURES, VGGConfig, build_model

__all__ = ["ModelSpec", "ClientSpec", "PRESETS", "DEFAULT_LAYERS", "paper_dim", "default_clients"]

#: split layers of the paper's mobile evaluation, per architecture (= :data:`privsplit.models.presets.PAPER_SPLIT_LAYERS`)
DEFAULT_LAYERS: Mapping[str, tuple[str, ...]] = PAPER_SPLIT_LAYERS



@dataclass(frozen=True)
class ModelSpec:
    """An architecture at a size, as written on the command line: ``ModelSpec.parse("vgg16:0.25:64")``,
    ``"vgg16:1:224:nobn"``.

    A thin parser onto :class:`~privsplit.models.vgg.VGGConfig`: the fields are the ones a cost run varies
    (their order is the ``ARCH:WIDTH:SIZE[:bn|nobn]`` text), :meth:`config` is the model's configuration and
    everything else (validation, building) is VGGConfig's. ``key``/``label`` name it in files and tables.
    """

    arch: str = "vgg16"
    width: float = 0.25
    input_size: int = 64
    batch_norm: bool = True
    num_classes: int = 2

    @classmethod
    def parse(cls, text: str) -> ModelSpec:
        """``ARCH:WIDTH:SIZE[:bn|nobn]`` -> spec; ``ValueError`` saying the format for anything else."""
        parts = text.strip().split(":")
        if len(parts) not in (3, 4) or (len(parts) == 4 and parts[3] not in ("bn", "nobn")):
            raise ValueError(f"model spec {text!r} must be ARCH:WIDTH:SIZE[:bn|nobn], e.g. vgg16:0.25:64 or "
                             "vgg16:1:224:nobn")
        try:
            spec = cls(arch=parts[0], width=float(parts[1]), input_size=int(parts[2]),
                       batch_norm=(parts[3] == "bn") if len(parts) == 4 else True)
        except ValueError:
            raise ValueError(f"model spec {text!r}: WIDTH must be a number and SIZE an integer") from None
        spec.config()  # validates arch
        return spec

    @classmethod
    def from_config(cls, cfg: VGGConfig) -> ModelSpec:
        """The spec of an existing model configuration (dropout does not change cost and is not kept)."""
        return cls(cfg.arch, cfg.width, cfg.input_size, cfg.batch_norm, cfg.num_classes)

    def config(self) -> VGGConfig:
        """The :class:`VGGConfig` this spec stands for; ``ValueError`` listing the architectures if unknown."""
        ARCHITECTURES.get(self.arch)  # raises, listing the registered architectures
        return VGGConfig(arch=self.arch, num_classes=self.num_classes, width=self.width,
                         input_size=self.input_size, batch_norm=self.batch_norm)

    def build(self) -> nn.Sequential:
        """The model with fresh random weights, in eval mode."""
        return build_model(self.config()).eval()

    @property
    def label(self) -> str:
        """Human name for tables: ``VGG-16 w0.25 64px`` (``(no BN)`` appended without batch norm)."""
        name = {"vgg16": "VGG-16", "vgg_s": "VGG-S"}.get(self.arch, self.arch)
        return f"{name} w{self.width:g} {self.input_size}px" + ("" if self.batch_norm else " (no BN)")

    @property
    def key(self) -> str:
        """File-safe name: ``vgg16-w0.25-64`` (``-nobn`` appended without batch norm)."""
        return f"{self.arch}-w{self.width:g}-{self.input_size}" + ("" if self.batch_norm else "-nobn")

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-able dict (``ModelSpec(**d)`` reads it back)."""
        return asdict(self)


#: model sets of ``privsplit cost --preset``: CPU-sized (as trained here) and the paper's VGG-16 224x224
PRESETS: dict[str, tuple[ModelSpec, ...]] = {
    "cpu": (ModelSpec("vgg16", 0.25, 64), ModelSpec("vgg_s", 0.25, 48)),
    "paper": (ModelSpec("vgg16", 1.0, 224, batch_norm=False),),
}
PRESETS["all"] = PRESETS["cpu"] + PRESETS["paper"]


@dataclass(frozen=True)
class ClientSpec:
    """What runs on the device: the full model, or the extractor up to ``layer`` (+ reduction)."""

    model: ModelSpec
    layer: str | None = None
    embedding: str = "full"  # "full" | "simple" | "reduced"
    dim: int | None = None

    def __post_init__(self) -> None:
        if self.embedding not in ("full", "simple", "reduced"):
            raise ValueError(f"embedding must be full, simple or reduced, got {self.embedding!r}")
        if (self.layer is None) != (self.embedding == "full"):
            raise ValueError("the full model has no split layer; simple/reduced clients need one")
        if self.embedding == "reduced" and not self.dim:
            object.__setattr__(self, "dim", paper_dim(self.layer or ""))

    @property
    def name(self) -> str:
        """Human name for tables: ``full model``, ``conv5_3 simple``, ``conv5_3 reduced (4)``."""
        if self.embedding == "full":
            return "full model"
        return f"{self.layer} {self.embedding}" + (f" ({self.dim})" if self.embedding == "reduced" else "")

    @property
    def key(self) -> str:
        """File-safe name: ``full``, ``conv5_3-simple``, ``conv5_3-reduced4``."""
        if self.embedding == "full":
            return "full"
        return f"{self.layer}-{self.embedding}" + (str(self.dim) if self.embedding == "reduced" else "")

    def build(self) -> nn.Module:
        """The device module (eval mode, fresh random weights; honours ``torch.device`` contexts, e.g. meta).

        Clients are ``nn.Sequential(extractor, reduction-or-Identity)``, the layout of
        ``ClientBundle.extractor``; the full model is the model itself.
        """
        model = self.model.build()
        if self.layer is None:
            return model
        extractor, _ = split(model, at=self.layer)
        if self.embedding == "simple":
            return nn.Sequential(extractor, nn.Identity()).eval()
        from privsplit.defenses.reduction import build_reduction

        size = self.model.input_size
        with torch.no_grad():
            shape = list(extractor(torch.zeros(1, 3, size, size)).shape[1:])
        red = build_reduction({"kind": "pca", "dim": int(self.dim or 0), "feature_shape": shape, "hidden": None})
        return nn.Sequential(extractor, red.reduce).eval()

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (what the cost worker process receives); :meth:`from_dict` reads it back."""
        return {"model": self.model.to_dict(), "layer": self.layer, "embedding": self.embedding, "dim": self.dim}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ClientSpec:
        """Inverse of :meth:`to_dict`."""
        return cls(ModelSpec(**d["model"]), d.get("layer"), d.get("embedding", "full"), d.get("dim"))


def default_clients(model: ModelSpec, layers: Sequence[str] | None = None) -> list[ClientSpec]:
    """Full model, then ``simple`` and ``reduced`` (paper dims) at each layer (default: the paper's)."""
    layers = list(layers or DEFAULT_LAYERS.get(model.arch, ()))
    if not layers:
        raise ValueError(f"no default split layers for {model.arch}: pass layers")
    valid = split_points(model.build())
    bad = [la for la in layers if la not in valid]
    if bad:
        raise ValueError(f"{', '.join(bad)} not a split point of {model.label}; valid: {', '.join(valid)}")
    out = [ClientSpec(model)]
    for layer in layers:
        out += [ClientSpec(model, layer, "simple"), ClientSpec(model, layer, "reduced", paper_dim(layer))]
    return out


