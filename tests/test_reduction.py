"""Dimensionality reduction (PCA / autoencoder) as dense reduce/reconstruct layers (paper Fig. 3b)."""
from __future__ import annotations

import pytest
import torch
from sklearn.decomposition import PCA

from privsplit.defenses.reduction import (
    Reduction,
    available_reductions,
    build_reduction,
    fit_reduction,
)


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny ops: threads only add contention


def _features(n: int, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Correlated, non-centred, unequal-variance features (distinct PCA spectrum, like activations)."""
    g = torch.Generator().manual_seed(seed)
    d = 1
    for s in shape:
        d *= s
    mix = torch.randn(d, d, generator=g) / d ** 0.5
    scales = torch.linspace(3.0, 0.2, d)
    x = (torch.randn(n, d, generator=g) * scales) @ mix + torch.rand(d, generator=g) * 2
    return x.reshape(n, *shape)


@pytest.mark.parametrize("n", [120, 30])  # N > D: eigh of the scatter matrix; N <= D: thin SVD
@pytest.mark.parametrize("whiten", [False, True])
def test_pca_matches_sklearn(n: int, whiten: bool):
    feats = _features(n, (3, 4, 4), seed=n)  # D = 48
    k = 6
    red = fit_reduction("pca", feats, dim=k, whiten=whiten)
    x64 = feats.flatten(1).double().numpy()
    sk = PCA(n_components=k, svd_solver="full", whiten=whiten).fit(x64)
    z = red.reduce(feats)
    assert z.shape == (n, k) and z.dtype == torch.float32
    torch.testing.assert_close(z, torch.from_numpy(sk.transform(x64)).float(), atol=1e-4, rtol=1e-4)
    x_hat = red.reconstruct(z)
    assert x_hat.shape == feats.shape
    sk_hat = torch.from_numpy(sk.inverse_transform(sk.transform(x64))).float().reshape(feats.shape)
    torch.testing.assert_close(x_hat, sk_hat, atol=1e-4, rtol=1e-4)
    # weights are the paper's dense matrices: W_reduce = components (up to whitening), bias = mean
    torch.testing.assert_close(red.reconstruct.out.bias, torch.from_numpy(sk.mean_).float(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.tensor(red.info["explained_variance"], dtype=torch.float64),
                               torch.from_numpy(sk.explained_variance_), atol=1e-6, rtol=1e-6)
    # flattened input is accepted too
    torch.testing.assert_close(red.reduce(feats.flatten(1)), z)


def test_pca_full_dimension_is_identity():
    feats = _features(100, (2, 3, 4), seed=5)  # D = 24
    red = fit_reduction("pca", feats, dim=24)
    torch.testing.assert_close(red(feats), feats, atol=1e-4, rtol=0)
    w = red.reduce.out.weight.double()
    torch.testing.assert_close(w @ w.T, torch.eye(24, dtype=torch.float64), atol=1e-5, rtol=0)
    other = torch.randn(5, 2, 3, 4)  # identity on unseen points as well
    torch.testing.assert_close(red(other), other, atol=1e-4, rtol=0)


def test_autoencoder_reconstructs_low_rank_features():
    g = torch.Generator().manual_seed(0)
    n, d, rank = 256, 48, 3
    z = torch.randn(n, rank, generator=g) * torch.tensor([3.0, 2.0, 1.0])
    feats = (z @ torch.randn(rank, d, generator=g) + 5.0).reshape(n, 3, 4, 4)
    var = feats.flatten(1).var(dim=0).mean().item()  # ~14 per unit
    red = fit_reduction("autoencoder", feats, dim=4, hidden=16, epochs=20, batch_size=32, seed=0)
    mse = torch.mean((red(feats) - feats) ** 2).item()
    assert mse < 0.02 * var, (mse, var)
    assert red.info["mse"] == pytest.approx(mse, rel=1e-4)
    assert red.info["loss_history"][-1] < 0.1 * red.info["loss_history"][0]
    assert red.config == {"kind": "autoencoder", "dim": 4, "feature_shape": [3, 4, 4], "hidden": 16}
    # same seed, same fit; the global RNG is left alone
    state = torch.get_rng_state()
    short = [fit_reduction("autoencoder", feats, dim=4, hidden=16, epochs=2, seed=7) for _ in range(2)]
    assert torch.equal(torch.get_rng_state(), state)
    torch.testing.assert_close(short[0](feats), short[1](feats), atol=0, rtol=0)


@pytest.mark.parametrize("kind,options", [("pca", {}), ("autoencoder", {"hidden": 8, "epochs": 2})])
def test_build_from_config_and_load_state_dict(kind: str, options: dict, tmp_path):
    from safetensors.torch import load_file, save_file

    feats = _features(64, (4, 2, 2), seed=9)
    red = fit_reduction(kind, feats, dim=5, **options)
    save_file(red.state_dict(), str(tmp_path / "red.safetensors"))
    fresh = build_reduction(dict(red.config))
    assert isinstance(fresh, Reduction) and not torch.allclose(fresh.reduce(feats), red.reduce(feats))
    fresh.load_state_dict(load_file(str(tmp_path / "red.safetensors")))
    torch.testing.assert_close(fresh.reduce(feats), red.reduce(feats), atol=0, rtol=0)
    torch.testing.assert_close(fresh(feats), red(feats), atol=0, rtol=0)
    expected_keys = {"reduce.out.weight", "reduce.out.bias", "reconstruct.out.weight", "reconstruct.out.bias"}
    if options.get("hidden"):
        expected_keys |= {"reduce.hidden.weight", "reduce.hidden.bias",
                          "reconstruct.hidden.weight", "reconstruct.hidden.bias"}
    assert set(red.state_dict()) == expected_keys


def test_halves_export_with_dynamic_batch():
    feats = _features(40, (2, 3, 2), seed=3)
    red = fit_reduction("pca", feats, dim=4)
    batch = torch.export.Dim("batch")
    enc = torch.export.export(red.reduce, (feats,), dynamic_shapes=({0: batch},)).module()
    dec = torch.export.export(red.reconstruct, (red.reduce(feats),), dynamic_shapes=({0: batch},)).module()
    torch.testing.assert_close(dec(enc(feats[:7])), red(feats[:7]))


def test_registry_and_errors():
    assert available_reductions() == ["autoencoder", "pca"]
    feats = _features(20, (2, 2, 2), seed=1)
    with pytest.raises(ValueError, match="choose one of"):
        fit_reduction("ica", feats, dim=2)
    with pytest.raises(ValueError, match="between 1 and the flattened feature size 8"):
        fit_reduction("pca", feats, dim=9)
    with pytest.raises(TypeError, match="options of kind 'pca'"):
        fit_reduction("pca", feats, dim=2, epochs=3)
    with pytest.raises(ValueError, match="at least 2"):
        fit_reduction("pca", feats[:1], dim=1)
    with pytest.raises(ValueError, match="missing \\['hidden'\\]"):
        build_reduction({"kind": "pca", "dim": 2, "feature_shape": [2, 2, 2]})
    red = fit_reduction("pca", feats, dim=2)
    with pytest.raises(ValueError, match="fit the reduction on activations of this split layer"):
        red.reduce(torch.zeros(3, 2, 2, 3))
    bad = feats.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        fit_reduction("pca", bad, dim=2)
