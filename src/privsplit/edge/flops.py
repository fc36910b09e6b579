"""Work and bytes of one image: conv/linear multiply-adds, FLOPs, float32 upload size."""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

__all__ = ["count_macs", "count_flops", "upload_bytes"]



def count_macs(module: nn.Module, input_shape: Sequence[int]) -> int:
    """Multiply-adds of conv and linear layers for one forward pass at ``input_shape`` (with batch axis).

    Conv: ``out.numel() * in_channels / groups * prod(kernel)``; linear: ``out.numel() * in_features``.
    Biases, BN, ReLU, pooling and LRN are not counted (they are < 1% for these nets).
    """
    total = 0

    def conv_hook(m: nn.modules.conv._ConvNd, _inp: Any, out: torch.Tensor) -> None:
        nonlocal total
        total += out.numel() * (m.in_channels // m.groups) * math.prod(m.kernel_size)

    def linear_hook(m: nn.Linear, _inp: Any, out: torch.Tensor) -> None:
        nonlocal total
        total += out.numel() * m.in_features

    handles = []
    for m in module.modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    first = next(iter(module.parameters()), None)
    device = first.device if first is not None else torch.device("cpu")  # works on the meta device too
    try:
        was = module.training
        module.eval()
        with torch.no_grad():
            module(torch.zeros(*input_shape, device=device))
        module.train(was)
    finally:
        for h in handles:
            h.remove()
    return int(total)


def count_flops(module: nn.Module, input_shape: Sequence[int]) -> int:
    """FLOPs as counted by ``torch.utils.flop_counter.FlopCounterMode`` (2 per multiply-add of conv/matmul)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        module.eval()(torch.zeros(*input_shape))
    return int(counter.get_total_flops())


def upload_bytes(feature_shape: Sequence[int], itemsize: int = 4) -> int:
    """Bytes one image's features take on the wire as raw float32 (``prod(shape) * 4``)."""
    return int(math.prod(int(s) for s in feature_shape)) * int(itemsize)


