"""Input transforms the device applies to the normalised image before the extractor (blur, pixelation).

The ``blur`` and ``pixelate`` baselines of :mod:`privsplit.defenses.zoo` obfuscate the face image on the
device and fine-tune the model on obfuscated images (McPherson et al., "Defeating image obfuscation with
deep learning", 2016). Their extractor is ``nn.Sequential(transform, extractor)``; a client bundle records
the transform as ``{"kind": NAME, KNOB: value}`` (its :meth:`InputTransform.spec`) and
:func:`privsplit.defenses.bundles.load_client_bundle` rebuilds it by name from :data:`INPUT_TRANSFORMS`,
so the transform travels with the bundle (and into its ONNX export) without pickling anything.

A transform has no learned weights: it is rebuilt from its knob alone. Add one with::

    @INPUT_TRANSFORMS.register("my-transform")
    class MyTransform(InputTransform):
        kind, knob = "my-transform", "strength"
        ...

This module imports no training code (the device runtime loads it through the bundles).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from privsplit.registry import Registry

__all__ = ["INPUT_TRANSFORMS", "InputTransform", "InputBlur", "InputPixelate", "transform_from_spec",
           "split_input_transform"]

#: Input transforms by name (the ``kind`` of a bundle's ``input_transform`` record).
INPUT_TRANSFORMS: Registry[type[InputTransform]] = Registry("input transform",
                                                            help_ref="help(privsplit.defenses.input_transforms)")


class InputTransform(nn.Module):
    """Base class: a weight-free image transform described by ``kind`` and one numeric ``knob``."""

    kind: str = ""
    knob: str = ""

    def spec(self) -> dict[str, Any]:
        """The bundle record: ``{"kind": ..., knob: value}``."""
        return {"kind": self.kind, self.knob: getattr(self, self.knob)}


@INPUT_TRANSFORMS.register("blur")
class InputBlur(InputTransform):
    """Gaussian blur of the (normalised) input with std ``radius`` pixels (separable, reflect padding)."""

    kind, knob = "blur", "radius"

    def __init__(self, radius: float) -> None:
        super().__init__()
        self.radius = float(radius)
        k = max(1, int(3 * radius + 0.5))
        t = torch.arange(-k, k + 1, dtype=torch.float32)
        w = torch.exp(-0.5 * (t / max(radius, 1e-6)) ** 2)
        # rebuilt from the radius when a bundle loads: not part of the saved weights
        self.register_buffer("kernel", w / w.sum(), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if self.radius <= 0:
            return x
        c, k = x.shape[1], self.kernel.numel() // 2
        wx = self.kernel.view(1, 1, 1, -1).repeat(c, 1, 1, 1).to(x.dtype)
        x = F.conv2d(F.pad(x, (k, k, 0, 0), mode="reflect"), wx, groups=c)
        return F.conv2d(F.pad(x, (0, 0, k, k), mode="reflect"), wx.transpose(2, 3), groups=c)


@INPUT_TRANSFORMS.register("pixelate")
class InputPixelate(InputTransform):
    """Average ``block`` x ``block`` cells of the input and upsample back (nearest)."""

    kind, knob = "pixelate", "block"

    def __init__(self, block: int) -> None:
        super().__init__()
        self.block = int(block)

    def forward(self, x: Tensor) -> Tensor:
        if self.block <= 1:
            return x
        small = F.avg_pool2d(x, self.block, ceil_mode=True)
        return F.interpolate(small, size=x.shape[2:], mode="nearest")


def transform_from_spec(spec: Mapping[str, Any]) -> InputTransform:
    """Rebuild a transform from its :meth:`InputTransform.spec`; an unknown kind lists the known ones."""
    if not isinstance(spec, Mapping) or "kind" not in spec:
        raise ValueError(f"an input transform record needs a 'kind', got {spec!r}")
    cls = INPUT_TRANSFORMS.get(spec["kind"])  # RegistryError naming the choices
    options = {k: v for k, v in spec.items() if k != "kind"}
    if set(options) != {cls.knob}:
        raise ValueError(f"input transform '{cls.kind}' takes exactly one option '{cls.knob}', got {sorted(options)}")
    return cls(options[cls.knob])


def split_input_transform(extractor: nn.Module) -> tuple[InputTransform | None, nn.Module]:
    """``(transform, rest)`` when ``extractor`` is ``nn.Sequential(InputTransform, rest)``, else ``(None, extractor)``."""
    if isinstance(extractor, nn.Sequential) and len(extractor) == 2 and isinstance(extractor[0], InputTransform):
        return extractor[0], extractor[1]
    return None, extractor
