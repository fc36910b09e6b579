"""User code registers its own dataset loader and reduction kind from outside the package (the documented way)."""
from __future__ import annotations

import pytest
import torch

from privsplit.data import LOADERS, DataError, Manifest, load_manifest, register_loader
from privsplit.defenses.reduction import (
    REDUCTIONS,
    Reduction,
    available_reductions,
    build_reduction,
    fit_pca,
    fit_reduction,
    register_reduction,
)
from privsplit.edge.specs import ModelSpec
from privsplit.models import ARCHITECTURES, VGGConfig, build_model, register_architecture, split
from privsplit.registry import Registry, RegistryError


def test_user_loader_is_found_by_name(tmp_path):
    (tmp_path / "labels.csv").write_text("path,identity\na.png,1\nb.png,2\n")
    seen = []

    @register_loader("test-user-data")
    def user_data(root=None) -> Manifest:
        seen.append(root)
        return Manifest.from_csv(tmp_path / "labels.csv", name="test-user-data")

    try:
        assert isinstance(LOADERS, Registry) and "test-user-data" in LOADERS.names()
        m = load_manifest("test-user-data", root="somewhere")
        assert len(m) == 2 and seen == ["somewhere"]
        with pytest.raises(RegistryError, match="already registered"):
            register_loader("test-user-data", lambda root=None: None)  # a different loader: refused
    finally:
        LOADERS.unregister("test-user-data")
    with pytest.raises(DataError, match="unknown dataset 'test-user-data'; choose one of lfw, ckplus"):
        load_manifest("test-user-data")


def test_user_reduction_kind_fits_and_rebuilds():
    def fit_first_coords(features: torch.Tensor, *, dim: int) -> Reduction:
        red = fit_pca(features, dim=dim)  # any fitting; the result carries the user's kind
        out = Reduction(kind="test-first", dim=dim, feature_shape=red.feature_shape, hidden=None)
        out.load_state_dict(red.state_dict())
        return out

    register_reduction("test-first", fit_first_coords)
    try:
        assert "test-first" in available_reductions() and REDUCTIONS.get("test-first") is fit_first_coords
        feats = torch.randn(20, 3, 2, 2, generator=torch.Generator().manual_seed(0))
        red = fit_reduction("test-first", feats, dim=2)
        fresh = build_reduction(red.config)
        fresh.load_state_dict(red.state_dict())
        assert red.config["kind"] == "test-first"
        assert torch.allclose(fresh.reduce(feats), red.reduce(feats))
        with pytest.raises(ValueError, match="already registered"):
            register_reduction("test-first", fit_pca)  # a different fitter: refused
        register_reduction("test-first", fit_first_coords, overwrite=True)  # on purpose: allowed
    finally:
        REDUCTIONS.unregister("test-first")
    with pytest.raises(ValueError, match="unknown reduction 'test-first'; choose one of: pca, autoencoder"):
        fit_reduction("test-first", torch.randn(4, 3), dim=1)


def test_user_architecture_builds_splits_and_parses():
    from collections import OrderedDict

    from torch import nn

    @register_architecture("test-tiny")
    def tiny(cfg: VGGConfig) -> nn.Sequential:
        return nn.Sequential(OrderedDict(conv1=nn.Conv2d(3, 4, 3, padding=1), pool1=nn.AdaptiveAvgPool2d(1),
                                         flat=nn.Flatten(), fc=nn.Linear(4, cfg.num_classes)))

    try:
        assert isinstance(ARCHITECTURES, Registry) and ARCHITECTURES.names()[-1] == "test-tiny"
        model = build_model(VGGConfig(arch="test-tiny", num_classes=3))
        assert model(torch.zeros(2, 3, 8, 8)).shape == (2, 3)
        extractor, _ = split(model, at="pool1")
        assert extractor(torch.zeros(1, 3, 8, 8)).shape == (1, 4, 1, 1)
        assert ModelSpec.parse("test-tiny:1:8").config().arch == "test-tiny"
        with pytest.raises(RegistryError, match="already registered"):
            register_architecture("test-tiny", lambda cfg: nn.Sequential())
    finally:
        ARCHITECTURES.unregister("test-tiny")
    with pytest.raises(ValueError, match="unknown architecture 'test-tiny'; choose one of: vgg16, vgg_s"):
        build_model(VGGConfig(arch="test-tiny"))
