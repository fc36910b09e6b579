"""Models (VGG-16, VGG-S with the paper's layer names) and the extractor/analyzer split."""
from __future__ import annotations

from privsplit.models.split import split, split_points
from privsplit.models.vgg import ARCHITECTURES, VGGConfig, build_model, vgg16, vgg_s

__all__ = ["split", "split_points", "ARCHITECTURES", "VGGConfig", "build_model", "vgg16", "vgg_s"]
