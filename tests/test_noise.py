"""Noise addition on reduced features: fresh CSPRNG noise in deployment, reproducible in tests."""
from __future__ import annotations

import json

import pytest
import torch

from privsplit.defenses.noise import (
    GaussianNoise,
    NoNoise,
    add_noise,
    available_noises,
    build_noise,
    noise_from_spec,
    secure_standard_normal,
)

STD = torch.tensor([0.5, 1.0, 2.0, 4.0])


def test_deployment_noise_is_fresh_per_call_and_per_module():
    x = torch.zeros(8, 4)
    a, b = GaussianNoise(sigma=1.0), GaussianNoise(sigma=1.0)
    torch.manual_seed(0)
    first = a(x)
    torch.manual_seed(0)  # the global RNG plays no part
    second = a(x)
    other = b(x)
    assert not torch.equal(first, second)
    assert not torch.equal(first, other)
    assert (first - second).abs().min() > 0  # every element redrawn
    assert "seed" not in a.spec()


def test_deterministic_mode_reproduces_the_sequence():
    x = torch.ones(5, 4)
    a = GaussianNoise(sigma=0.3, deterministic=True, seed=11)
    b = GaussianNoise(sigma=0.3, deterministic=True, seed=11)
    seq_a = [a(x), a(x)]
    seq_b = [b(x), b(x)]
    assert not torch.equal(seq_a[0], seq_a[1])  # the sequence advances
    torch.testing.assert_close(seq_a[0], seq_b[0], atol=0, rtol=0)
    torch.testing.assert_close(seq_a[1], seq_b[1], atol=0, rtol=0)
    a.reset()
    torch.testing.assert_close(a(x), seq_a[0], atol=0, rtol=0)
    # the functional twin with the same generator gives the same numbers
    twin = add_noise(x, sigma=0.3, generator=torch.Generator().manual_seed(11))
    torch.testing.assert_close(twin, seq_a[0], atol=0, rtol=0)
    expected = x + 0.3 * torch.randn(5, 4, generator=torch.Generator().manual_seed(11))
    torch.testing.assert_close(twin, expected, atol=0, rtol=0)


@pytest.mark.parametrize("deterministic", [False, True])
def test_empirical_std_matches_sigma_times_std(deterministic: bool):
    kwargs = {"deterministic": True, "seed": 5} if deterministic else {}
    noise = GaussianNoise(sigma=0.3, scale="std", std=STD, **kwargs)
    x = torch.full((100_000, 4), 2.0)
    z = noise(x) - x
    torch.testing.assert_close(z.std(dim=0), 0.3 * STD, rtol=0.05, atol=0)
    assert (z.mean(dim=0).abs() < 0.02 * STD).all()
    iso = GaussianNoise(sigma=0.7, **kwargs)(x) - x
    torch.testing.assert_close(iso.std(dim=0), torch.full((4,), 0.7), rtol=0.05, atol=0)


def test_secure_sampler_is_standard_normal():
    z = secure_standard_normal((200_001,), dtype=torch.float64)  # odd size: Box-Muller pairs trimmed
    assert z.shape == (200_001,) and z.dtype == torch.float64
    assert abs(z.mean().item()) < 0.01
    assert z.std().item() == pytest.approx(1.0, abs=0.01)
    kurtosis = ((z - z.mean()) ** 4).mean() / z.var() ** 2
    assert kurtosis.item() == pytest.approx(3.0, abs=0.1)
    assert (z.abs() < 1.0).double().mean().item() == pytest.approx(0.6827, abs=0.005)


def test_sigma_zero_is_identity_and_gradients_pass_through():
    x = torch.randn(3, 4, requires_grad=True)
    assert GaussianNoise(sigma=0.0)(x) is x
    assert add_noise(x, sigma=0.0) is x
    y = GaussianNoise(sigma=0.5).eval()(x)  # applied in eval mode too: it is the defence
    assert not torch.equal(y, x)
    y.sum().backward()
    torch.testing.assert_close(x.grad, torch.ones(3, 4))


def test_fit_scale_and_spec_round_trip():
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(500, 4, generator=g) * STD + 1.0
    noise = GaussianNoise(sigma=0.25, scale="std").fit_scale(feats)
    torch.testing.assert_close(noise.std, feats.std(dim=0), rtol=1e-5, atol=0)
    spec = noise.spec()
    assert set(spec) == {"kind", "sigma", "scale", "std"}
    assert spec["kind"] == "gaussian" and spec["sigma"] == 0.25 and spec["scale"] == "std"
    spec = json.loads(json.dumps(spec))  # what a bundle stores
    back = GaussianNoise.from_spec(spec)
    assert isinstance(back, GaussianNoise) and not back.deterministic
    torch.testing.assert_close(back.std, noise.std, atol=0, rtol=0)
    assert back.spec() == spec
    assert noise_from_spec(spec).spec() == spec
    # state_dict carries the std buffer as well, and loads into an unfitted module
    assert torch.equal(noise.state_dict()["std"], noise.std)
    loaded = GaussianNoise(sigma=0.25, scale="std")
    loaded.load_state_dict(noise.state_dict())
    torch.testing.assert_close(loaded.std, noise.std, atol=0, rtol=0)
    # deterministic rebuild for tests
    det = [noise_from_spec(spec, deterministic=True, seed=3) for _ in range(2)]
    x = torch.zeros(2, 4)
    torch.testing.assert_close(det[0](x), det[1](x), atol=0, rtol=0)
    iso = GaussianNoise(sigma=1.5)
    assert iso.spec() == {"kind": "gaussian", "sigma": 1.5, "scale": "isotropic", "std": None}
    assert noise_from_spec(iso.spec()).spec() == iso.spec()


def test_registry_and_none():
    assert available_noises() == ["gaussian", "keyed-gaussian", "none"]
    none = build_noise("none")
    x = torch.randn(2, 3)
    assert isinstance(none, NoNoise) and none(x) is x
    assert noise_from_spec(none.spec()).spec() == {"kind": "none"}
    g = build_noise("gaussian", sigma=0.1, deterministic=True, seed=1)
    assert isinstance(g, GaussianNoise) and g.sigma == 0.1


def test_errors_say_how_to_fix():
    with pytest.raises(ValueError, match="deterministic=True"):
        GaussianNoise(sigma=1.0, seed=3)
    with pytest.raises(ValueError, match="needs an int seed"):
        GaussianNoise(sigma=1.0, deterministic=True)
    with pytest.raises(RuntimeError, match="fit_scale"):
        GaussianNoise(sigma=1.0, scale="std")(torch.zeros(2, 4))
    with pytest.raises(ValueError, match="pass scale='std'"):
        GaussianNoise(sigma=1.0, std=STD)
    with pytest.raises(ValueError, match="sigma must be finite and >= 0"):
        GaussianNoise(sigma=-1.0)
    with pytest.raises(ValueError, match="same layer"):
        GaussianNoise(sigma=1.0, scale="std", std=STD)(torch.zeros(2, 5))
    with pytest.raises(ValueError, match="choose one of"):
        build_noise("laplace")
    with pytest.raises(ValueError, match="exactly the keys"):
        GaussianNoise.from_spec({"kind": "gaussian", "sigma": 1.0, "scale": "isotropic", "std": None, "seed": 1})
