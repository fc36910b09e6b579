"""Noise addition on the reduced features (Osia et al. 2017, Section III-C, Fig. 5).

After the dimensionality reduction the device adds multidimensional Gaussian noise to the ``k`` numbers
it sends, trading primary-task accuracy for identity uncertainty. The paper uses a symmetric
(isotropic) Gaussian; ``scale="std"`` additionally scales the noise of each dimension by that
dimension's standard deviation over the training features, so ``sigma`` is a signal-to-noise knob that
means the same thing for every dimension and layer.

Where the randomness comes from (the choices made, and why)
-----------------------------------------------------------
* **Deployment mode** (the default): every call draws fresh noise straight from the operating
  system's CSPRNG (``os.urandom``), turned into standard normals by Box-Muller in float64 (53-bit
  uniforms). No seed exists, so none can leak into a bundle, a log, or another module; two calls and two
  modules give independent noise; ``torch.manual_seed`` has no effect on it. We do *not* seed a
  ``torch.Generator`` from ``secrets`` instead: torch's CPU generator (mt19937) keeps only the low 32
  bits of its seed (``manual_seed(s)`` and ``manual_seed(s + 2**32)`` give the same stream), and a 2^32
  search over seeds would let an adversary subtract the noise from the features it sees. The cost is
  small: reduced features are a few numbers per image.
* **Keyed mode** (:mod:`privsplit.defenses.keyed`, noise kind ``"keyed-gaussian"``): the device derives
  the normals from HMAC-SHA256 under a secret device key and the photo's hash, so repeated sends of one
  photo carry identical noise and cannot be averaged; same sigma/scale/std semantics as here.
* **Deterministic mode** (``deterministic=True, seed=...``; tests and reproducible experiments only):
  a private CPU ``torch.Generator`` seeded once; successive calls continue one reproducible sequence
  (``reset()`` restarts it). The seed is never part of :meth:`GaussianNoise.spec`, and
  :meth:`GaussianNoise.from_spec` builds deployment-mode modules unless asked otherwise.
* Noise is drawn on the CPU and moved to the input's device, in float64 for float64 inputs and float32
  otherwise. It is added in training *and* eval mode (it is the defence, not a regulariser like
  dropout); gradients pass through (``d(x + n)/dx = 1``). ``sigma=0`` returns the input unchanged.
* The ``std`` of ``scale="std"`` is the per-dimension *sample* standard deviation (``correction=1``),
  so for PCA-reduced features ``std**2`` equals the PCA explained variances.

The noise is not part of an exported ONNX graph; the client bundle stores :meth:`spec` and the device
runtime rebuilds the module with :func:`noise_from_spec`.
"""
from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from privsplit.registry import Registry

__all__ = [
    "GaussianNoise",
    "NoNoise",
    "add_noise",
    "secure_standard_normal",
    "build_noise",
    "noise_from_spec",
    "available_noises",
    "NOISES",
]

NoiseScale = Literal["isotropic", "std"]


def secure_standard_normal(shape: Sequence[int], *, dtype: torch.dtype = torch.float32,
                           device: torch.device | str | None = None) -> Tensor:
    """Standard normal samples from ``os.urandom`` (CSPRNG) by Box-Muller; never seeded, never repeats."""
    shape = tuple(int(s) for s in shape)
    n = math.prod(shape)
    pairs = (n + 1) // 2
    bits = np.frombuffer(os.urandom(16 * pairs), dtype=np.uint64).reshape(2, pairs) >> np.uint64(11)
    u1 = (bits[0].astype(np.float64) + 1.0) * 2.0 ** -53  # (0, 1]: log is finite
    u2 = bits[1].astype(np.float64) * 2.0 ** -53          # [0, 1)
    r = np.sqrt(-2.0 * np.log(u1))
    theta = 2.0 * np.pi * u2
    z = np.concatenate([r * np.cos(theta), r * np.sin(theta)])[:n]
    return torch.from_numpy(z).reshape(shape).to(device=device, dtype=dtype)


def _noise_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _check_sigma(sigma: Any) -> float:
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)):
        raise TypeError(f"sigma must be a number >= 0, got {type(sigma).__name__}")
    sigma = float(sigma)
    if not (sigma >= 0.0 and math.isfinite(sigma)):
        raise ValueError(f"sigma must be finite and >= 0, got {sigma} (sigma=0 disables the noise)")
    return sigma


def _check_std(std: Any) -> Tensor:
    t = torch.as_tensor(std, dtype=torch.float32).detach().clone().cpu()
    if t.dim() == 0 or t.numel() == 0:
        raise ValueError(
            f"std must hold one value per feature dimension (shape = a sample's shape), got shape {tuple(t.shape)}"
        )
    if not bool(torch.isfinite(t).all()) or bool((t < 0).any()):
        raise ValueError("std must be finite and >= 0 in every dimension: refit it with fit_scale(features)")
    return t


def _check_input(x: Tensor) -> None:
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise TypeError("noise input must be a floating-point tensor of shape (N, *feature_shape)")


def add_noise(x: Tensor, *, sigma: float, std: Tensor | None = None,
              generator: torch.Generator | None = None) -> Tensor:
    """Functional twin of :class:`GaussianNoise`: ``x + sigma * std * eps``, ``eps ~ N(0, I)``.

    Args:
        x: ``(N, *feature_shape)`` features.
        sigma: noise level (0 returns ``x`` itself).
        std: optional per-dimension scale of shape ``feature_shape`` (broadcast over the batch);
            ``None`` = isotropic.
        generator: ``None`` (default) draws from the OS CSPRNG (deployment); a CPU ``torch.Generator``
            gives reproducible noise (tests, experiments).
    """
    _check_input(x)
    sigma = _check_sigma(sigma)
    if std is not None:
        std = torch.as_tensor(std)
        if tuple(std.shape) != tuple(x.shape[1:]):
            raise ValueError(f"std shape {tuple(std.shape)} must equal a sample's shape {tuple(x.shape[1:])}")
    if sigma == 0.0:
        return x
    dtype = _noise_dtype(x)
    if generator is None:
        eps = secure_standard_normal(x.shape, dtype=dtype, device=x.device)
    else:
        if generator.device.type != "cpu":
            raise ValueError("pass a CPU torch.Generator (noise is drawn on the CPU so it reproduces on any device)")
        eps = torch.randn(tuple(x.shape), generator=generator, dtype=dtype).to(x.device)
    scale = sigma if std is None else sigma * std.to(device=x.device, dtype=dtype)
    return x + (eps * scale).to(x.dtype)


class GaussianNoise(nn.Module):
    """Additive Gaussian noise ``x + sigma * s * eps`` with ``s = 1`` (isotropic) or the per-dim std.

    Args:
        sigma: noise standard deviation (isotropic) or multiple of each dimension's std (``"std"``).
        scale: ``"isotropic"`` (the paper's symmetric Gaussian, default) or ``"std"``.
        std: per-dimension std (shape of one sample), only with ``scale="std"``; otherwise call
            :meth:`fit_scale` before use. Stored as the ``std`` buffer (in ``state_dict``).
        deterministic: False (default) = deployment mode, fresh CSPRNG noise every call; True = a
            reproducible sequence from ``seed`` (tests only). See the module docstring.
        seed: required with ``deterministic=True``, refused otherwise.
    """

    kind = "gaussian"
    std: Tensor | None

    def __init__(self, *, sigma: float = 0.0, scale: NoiseScale = "isotropic", std: Tensor | Sequence[float] | None = None,
                 deterministic: bool = False, seed: int | None = None) -> None:
        super().__init__()
        self.sigma = _check_sigma(sigma)
        if scale not in ("isotropic", "std"):
            raise ValueError(f"scale must be 'isotropic' or 'std', got {scale!r}")
        self.scale: NoiseScale = scale
        if std is not None and scale != "std":
            raise ValueError("std is only used with scale='std': drop std or pass scale='std'")
        self.register_buffer("std", None if std is None else _check_std(std))
        self.deterministic = bool(deterministic)
        if self.deterministic:
            if isinstance(seed, bool) or not isinstance(seed, int):
                raise ValueError("deterministic=True needs an int seed: pass seed=... (tests only)")
        elif seed is not None:
            raise ValueError(
                "seed is only accepted with deterministic=True; deployment noise is never seeded "
                "(it comes from os.urandom on every call)"
            )
        self.seed = seed
        self._generator: torch.Generator | None = None
        self.reset()

    def reset(self) -> None:
        """Deterministic mode: restart the noise sequence from ``seed``. No-op in deployment mode."""
        if self.deterministic:
            assert self.seed is not None
            self._generator = torch.Generator(device="cpu").manual_seed(self.seed)

    def fit_scale(self, features: Tensor) -> "GaussianNoise":
        """Set ``std`` to the per-dimension sample std of ``features`` ``(N, *feature_shape)``; returns self."""
        if self.scale != "std":
            raise ValueError("fit_scale only applies to scale='std': construct with scale='std'")
        _check_input(features)
        if features.dim() < 2 or features.shape[0] < 2:
            raise ValueError(f"fit_scale needs (N >= 2, *feature_shape) features, got {tuple(features.shape)}")
        std = features.detach().to(torch.float64).std(dim=0, correction=1)
        self.std = _check_std(std).to(features.device)
        return self

    def _load_from_state_dict(self, state_dict: Mapping[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # A module built with scale="std" but not yet fitted has no std buffer to load into; create it
        # from the incoming tensor so build-then-load_state_dict works like for other modules.
        key = prefix + "std"
        if self.std is None and key in state_dict:
            if self.scale != "std":
                raise ValueError("state_dict has a 'std' buffer but this module is isotropic: build it with scale='std'")
            self.std = _check_std(state_dict[key])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)  # type: ignore[arg-type]

    def forward(self, x: Tensor) -> Tensor:
        _check_input(x)
        if self.sigma == 0.0:
            return x
        std = None
        if self.scale == "std":
            if self.std is None:
                raise RuntimeError("scale='std' but no std set: call fit_scale(train_features) or pass std=...")
            if tuple(self.std.shape) != tuple(x.shape[1:]):
                raise ValueError(
                    f"input samples have shape {tuple(x.shape[1:])} but std has shape {tuple(self.std.shape)}: "
                    "fit_scale on features of the same layer/reduction"
                )
            std = self.std
        return add_noise(x, sigma=self.sigma, std=std, generator=self._generator)

    def spec(self) -> dict[str, Any]:
        """JSON-friendly description for the client bundle: kind, sigma, scale, std (list or None). No seed."""
        if self.scale == "std" and self.std is None:
            raise RuntimeError("cannot write the spec of scale='std' noise before fit_scale(features)")
        return {
            "kind": self.kind,
            "sigma": self.sigma,
            "scale": self.scale,
            "std": None if self.std is None else self.std.detach().cpu().tolist(),
        }

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any], *, deterministic: bool = False,
                  seed: int | None = None) -> "GaussianNoise":
        """Rebuild from :meth:`spec` (deployment mode unless ``deterministic=True, seed=...``)."""
        expected = {"kind", "sigma", "scale", "std"}
        if not isinstance(spec, Mapping) or set(spec) != expected:
            got = sorted(spec) if isinstance(spec, Mapping) else type(spec).__name__
            raise ValueError(f"gaussian noise spec must have exactly the keys {sorted(expected)}, got {got}")
        if spec["kind"] != cls.kind:
            raise ValueError(f"spec kind is {spec['kind']!r}, not {cls.kind!r}: use noise_from_spec(spec)")
        if spec["scale"] == "std" and spec["std"] is None:
            raise ValueError("spec has scale='std' but std is None: regenerate it from a fitted module")
        return cls(sigma=spec["sigma"], scale=spec["scale"], std=spec["std"], deterministic=deterministic, seed=seed)

    def extra_repr(self) -> str:
        mode = f"deterministic, seed={self.seed}" if self.deterministic else "deployment (os.urandom)"
        shape = None if self.std is None else tuple(self.std.shape)
        return f"sigma={self.sigma}, scale={self.scale!r}, std_shape={shape}, mode={mode}"


class NoNoise(nn.Module):
    """Identity with the noise interface (``"none"`` in the registry): for embeddings without noise."""

    kind = "none"

    def forward(self, x: Tensor) -> Tensor:
        return x

    def spec(self) -> dict[str, Any]:
        """The bundle's noise spec: just the kind (no noise)."""
        return {"kind": self.kind}

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any], *, deterministic: bool = False,
                  seed: int | None = None) -> "NoNoise":
        """Rebuild from ``{"kind": "none"}``; ``deterministic``/``seed`` are accepted and ignored."""
        if not isinstance(spec, Mapping) or dict(spec) != {"kind": cls.kind}:
            raise ValueError(f"'none' noise spec must be exactly {{'kind': 'none'}}, got {spec!r}")
        return cls()


#: Noise kinds by name (``privsplit.defenses.keyed`` adds ``"keyed-gaussian"`` when the package loads).
NOISES: Registry[Any] = Registry("noise kind", help_ref="help(privsplit.defenses.noise)")
NOISES.register("gaussian", GaussianNoise)
NOISES.register("none", NoNoise)
_REGISTRY = NOISES


def available_noises() -> list[str]:
    """Registered noise kinds, sorted: ``['gaussian', 'keyed-gaussian', 'none']``."""
    return sorted(NOISES.names())


def build_noise(kind: str, **options: Any) -> nn.Module:
    """Construct noise by name: ``build_noise("gaussian", sigma=0.5, scale="std")`` or ``build_noise("none")``."""
    if kind not in _REGISTRY:
        raise ValueError(f"unknown noise kind {kind!r}: choose one of {available_noises()}")
    return NOISES.get(kind)(**options)


def noise_from_spec(spec: Mapping[str, Any], *, deterministic: bool = False, seed: int | None = None) -> nn.Module:
    """Rebuild a noise module from its ``spec()`` (dispatches on ``spec["kind"]``)."""
    if not isinstance(spec, Mapping) or "kind" not in spec:
        raise ValueError(f"noise spec must be a mapping with a 'kind' key, got {spec!r}")
    kind = spec["kind"]
    if kind not in _REGISTRY:
        raise ValueError(f"unknown noise kind {kind!r} in spec: choose one of {available_noises()}")
    return NOISES.get(kind).from_spec(spec, deterministic=deterministic, seed=seed)
