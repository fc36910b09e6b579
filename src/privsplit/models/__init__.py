"""Models (VGG-16, VGG-S with the paper's layer names) and the extractor/analyzer split."""
from __future__ import annotations

from privsplit.models.presets import DEFAULT_SPLIT_LAYER, PAPER_DIMS, PAPER_SPLIT_LAYERS, paper_dim
from privsplit.models.split import split, split_points
from privsplit.models.vgg import ARCHITECTURES, VGGConfig, build_model, register_architecture, vgg16, vgg_s

__all__ = ["split", "split_points", "ARCHITECTURES", "register_architecture", "VGGConfig", "build_model", "vgg16",
           "vgg_s", "PAPER_DIMS",
           "PAPER_SPLIT_LAYERS", "DEFAULT_SPLIT_LAYER", "paper_dim"]
