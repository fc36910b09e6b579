"""Noise calibrated to a privacy target: the smallest sigma whose worst case is <= ``target`` x floor.

``calibrate_sigma(embedding, privacy, target=1.25)`` bisects sigma (in units of each feature's std) on
``[lo, hi]``; ``privacy(embedding_with_sigma) -> (worst_top1, floor)`` is supplied by the caller -- in
practice the audit's fast profile on a **validation set of auxiliary identities** (LFW people outside
the attack split with >= 10 images: enrol 5, query the rest; :func:`validation_identities`), never the
target people. Defences do not import attacks (the dependency rule), so the audit comes in as a
function (``privsplit.audit`` builds it; see ``benchmarks/defences_pareto.py``).

The worst case is noisy (finite queries), so bisection treats the measured ratio as monotone in sigma;
``steps`` (default 6) halvings of ``[0, 4]`` resolve sigma to 1/16. The result records every probe.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from torch import nn

from privsplit.defenses.noise import GaussianNoise

__all__ = ["Calibration", "calibrate_sigma", "validation_identities"]

Privacy = Callable[[nn.Module], tuple[float, float]]


@dataclass
class Calibration:
    """The chosen sigma, whether the target was met, and every (sigma, worst top-1, floor) probed."""

    sigma: float
    met: bool
    target: float
    probes: list[tuple[float, float, float]] = field(default_factory=list)


def _with_sigma(embedding: nn.Module, sigma: float) -> nn.Module:
    noise = embedding.noise  # type: ignore[attr-defined]
    if not isinstance(noise, GaussianNoise):
        raise ValueError("calibration needs an embedding with Gaussian noise (build a noisy kind such as 'advanced')")
    return embedding.with_noise(type(noise)(sigma=sigma, scale=noise.scale, std=noise.std))  # type: ignore[attr-defined]


def calibrate_sigma(embedding: nn.Module, privacy: Privacy, *, target: float = 1.25, lo: float = 0.0, hi: float = 4.0,
                    steps: int = 6) -> Calibration:
    """Bisection for the smallest sigma in ``[lo, hi]`` with ``worst <= target * floor`` (see module docstring).

    When even ``hi`` misses the target, ``hi`` is returned with ``met=False``.
    """
    if not 0 <= lo < hi or steps < 1 or target <= 0:
        raise ValueError(f"need 0 <= lo < hi, steps >= 1 and target > 0; got lo={lo}, hi={hi}, steps={steps}, target={target}")
    probes: list[tuple[float, float, float]] = []

    def ok(sigma: float) -> bool:
        worst, floor = privacy(_with_sigma(embedding, sigma))
        probes.append((sigma, worst, floor))
        return worst <= target * floor

    if not ok(hi):
        return Calibration(hi, False, target, probes)
    if ok(lo):
        return Calibration(lo, True, target, probes)
    for _ in range(steps):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if ok(mid) else (mid, hi)
    return Calibration(hi, True, target, probes)


def validation_identities(identities: list[str] | tuple[str, ...], *, min_images: int = 10) -> np.ndarray:
    """Rows of the auxiliary identities with >= ``min_images`` images (the calibration's own targets)."""
    counts = Counter(identities)
    return np.array([i for i, v in enumerate(identities) if v and counts[v] >= min_images], dtype=np.int64)
