"""Keyed deployment noise: the same photo always gets the same noise, different photos independent noise.

Why: with fresh noise per call (:class:`~privsplit.defenses.noise.GaussianNoise`), a service that
receives the same photo ``k`` times averages the noise away (sigma / sqrt(k)). Keyed noise makes the
noise a pseudo-random function of the photo under a secret device key, so resending a photo gives the
server *identical* features -- nothing to average.

The construction (stable; test vectors in ``docs/keyed_noise.md`` and ``tests/test_keyed_noise.py``):

1. ``crop_hash = SHA-256(crop)`` where ``crop`` is the uint8 model input (``size x size x 3``, HWC,
   row-major; exactly the array the device runtime prepares).
2. Block ``c`` (``c = 0, 1, ...``) is ``HMAC-SHA256(device_key, crop_hash || c)`` with ``c`` as 8
   bytes big-endian: 32 bytes = four little-endian uint64 ``a0 b0 a1 b1``.
3. Each pair ``(a, b)`` -> 53-bit uniforms ``u1 = ((a >> 11) + 1) * 2^-53`` in (0, 1] and
   ``u2 = (b >> 11) * 2^-53`` in [0, 1) -> Box-Muller ``r = sqrt(-2 ln u1)``,
   ``(r cos 2 pi u2, r sin 2 pi u2)``: two normals, in that order. Feature ``i`` (flattened, C order)
   gets normal ``i``.

Not a seeded ``torch.Generator`` (see :mod:`privsplit.defenses.noise`: mt19937 keeps 32 bits of its
seed). HMAC-SHA256 is a PRF under a 256-bit key, so without ``device_key`` the noise of a photo is
unpredictable, and noises of different photos are independent.

``device_key`` (32 random bytes from ``os.urandom``) is created on first use by a :class:`KeyStore`
-- by default :class:`FileKeyStore`, a file readable only by its owner (0600) -- and is never sent or
written into a bundle. **Rotation**: :meth:`KeyStore.rotate` replaces the key; afterwards every photo
gets new noise, so a server that kept features from before the rotation holds a second independent
draw per photo (two draws average to sigma / sqrt(2)): rotate rarely (e.g. on reinstall), not on a
schedule.

Honest limits: exact repeats become *linkable* (identical features reveal "the same photo again"),
and near-duplicates (a re-encoded JPEG, a 1-pixel shift, burst shots) hash differently and get
independent noise, so averaging them still helps an attacker (measured in ``docs/keyed_noise.md``).

In-process use without crop hashes (an attacker's or auditor's simulation, training) draws one
independent normal per call -- which is what a keyed draw looks like to anyone without the key -- and
:attr:`KeyedGaussianNoise.identical_repeats` tells a simulation that repeats of one photo must reuse
that draw (:meth:`privsplit.attacks.base.IdentityAttack.received` does).
"""
from __future__ import annotations

import hashlib
import hmac
import os
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from privsplit.defenses.noise import NOISES, GaussianNoise

__all__ = ["KEY_BYTES", "crop_hash", "keyed_standard_normal", "KeyStore", "FileKeyStore", "MemoryKeyStore",
           "default_key_path", "KeyedGaussianNoise"]

KEY_BYTES = 32


def crop_hash(crop: np.ndarray) -> bytes:
    """SHA-256 of one uint8 ``size x size x 3`` crop (C-contiguous bytes)."""
    crop = np.asarray(crop)
    if crop.dtype != np.uint8 or crop.ndim != 3 or crop.shape[2] != 3:
        raise ValueError(f"crop must be a uint8 H x W x 3 array (the prepared model input), got {crop.dtype} {crop.shape}")
    return hashlib.sha256(np.ascontiguousarray(crop).tobytes()).digest()


def keyed_standard_normal(key: bytes, digest: bytes, n: int) -> np.ndarray:
    """The first ``n`` standard normals (float64) for ``digest`` under ``key`` (module docstring, steps 2-3)."""
    if len(key) != KEY_BYTES or len(digest) != 32:
        raise ValueError(f"key must be {KEY_BYTES} bytes and digest a 32-byte SHA-256, got {len(key)} and {len(digest)}")
    blocks = (max(int(n), 0) + 3) // 4
    raw = b"".join(hmac.new(key, digest + c.to_bytes(8, "big"), hashlib.sha256).digest() for c in range(blocks))
    words = np.frombuffer(raw, dtype="<u8").reshape(-1, 2) >> np.uint64(11)
    u1 = (words[:, 0].astype(np.float64) + 1.0) * 2.0 ** -53
    u2 = words[:, 1].astype(np.float64) * 2.0 ** -53
    r, theta = np.sqrt(-2.0 * np.log(u1)), 2.0 * np.pi * u2
    return np.stack([r * np.cos(theta), r * np.sin(theta)], axis=1).reshape(-1)[:n]


# ============================================================================ key stores

class KeyStore(Protocol):
    """Where the device keeps its noise key. Plug in the platform's keystore (Android Keystore, iOS Keychain)."""

    def key(self) -> bytes:
        """The 32-byte key, created with ``os.urandom`` on first use."""

    def rotate(self) -> bytes:
        """Replace the key with a new random one (see the module docstring before doing this) and return it."""


def default_key_path() -> Path:
    """``$PRIVSPLIT_KEY_FILE``, else ``~/.config/privsplit/device_key``."""
    env = os.environ.get("PRIVSPLIT_KEY_FILE")
    return Path(env) if env else Path.home() / ".config" / "privsplit" / "device_key"


class FileKeyStore:
    """The key in a file only its owner may read (0600); created atomically on first use.

    A key file that group or others can read is refused (``chmod 600 FILE`` fixes it): a leaked key lets
    whoever holds it subtract the noise from every feature vector of a photo they also have.
    """

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else default_key_path()

    def key(self) -> bytes:
        """The key from the file, created (mode 0600) on first use."""
        if not self.path.exists():
            self._write(os.urandom(KEY_BYTES), exclusive=True)
        mode = stat.S_IMODE(self.path.stat().st_mode)
        if mode & 0o077:
            raise PermissionError(f"device key file {self.path} is readable by others (mode {mode:o}): chmod 600 it, "
                                  "or rotate the key if it may have leaked")
        data = self.path.read_bytes()
        if len(data) != KEY_BYTES:
            raise ValueError(f"device key file {self.path} holds {len(data)} bytes, not {KEY_BYTES}: delete it to make a new key")
        return data

    def rotate(self) -> bytes:
        """Write a new random key to the file and return it."""
        new = os.urandom(KEY_BYTES)
        self._write(new, exclusive=False)
        return new

    def _write(self, key: bytes, *, exclusive: bool) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.path.with_name(self.path.name + f".{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key)
        if exclusive:
            try:  # another process may create it first: keep theirs so both use one key
                os.link(tmp, self.path)
            except FileExistsError:
                pass
            os.unlink(tmp)
        else:
            os.replace(tmp, self.path)


class MemoryKeyStore:
    """A key held in memory (tests, simulations, platforms that inject their own key)."""

    def __init__(self, key: bytes | None = None) -> None:
        self._key = key if key is not None else os.urandom(KEY_BYTES)
        if len(self._key) != KEY_BYTES:
            raise ValueError(f"key must be {KEY_BYTES} bytes, got {len(self._key)}")

    def key(self) -> bytes:
        """The in-memory key (tests)."""
        return self._key

    def rotate(self) -> bytes:
        """Replace the in-memory key with a new random one and return it."""
        self._key = os.urandom(KEY_BYTES)
        return self._key


# ============================================================================ the noise module

@NOISES.register("keyed-gaussian")
class KeyedGaussianNoise(GaussianNoise):
    """:class:`GaussianNoise` whose normals are keyed per photo (module docstring).

    ``forward(x, crop_hashes=[...])`` (the device runtime) uses the keyed normals of each row's crop;
    ``forward(x)`` (simulations) draws like :class:`GaussianNoise`. Options as for
    :class:`GaussianNoise`, plus ``key_store`` (default: a :class:`FileKeyStore` at
    :func:`default_key_path`, opened on first keyed call).
    """

    kind = "keyed-gaussian"
    #: repeats of one photo carry identical noise: averaging them gains nothing
    identical_repeats = True

    def __init__(self, *, key_store: KeyStore | None = None, **options: Any) -> None:
        super().__init__(**options)
        self.key_store = key_store

    def forward(self, x: Tensor, crop_hashes: Sequence[bytes] | None = None) -> Tensor:  # type: ignore[override]
        if crop_hashes is None or self.sigma == 0.0:
            return super().forward(x)
        if len(crop_hashes) != x.shape[0]:
            raise ValueError(f"one crop hash per row needed: {len(crop_hashes)} hashes for {x.shape[0]} rows")
        if self.key_store is None:
            self.key_store = FileKeyStore()
        key = self.key_store.key()
        n = int(np.prod(x.shape[1:]))
        dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        eps = torch.from_numpy(np.stack([keyed_standard_normal(key, h, n) for h in crop_hashes]))
        eps = eps.reshape(x.shape).to(device=x.device, dtype=dtype)
        std = self.std if self.scale == "std" else None
        if std is not None and tuple(std.shape) != tuple(x.shape[1:]):
            raise ValueError(f"input samples have shape {tuple(x.shape[1:])} but std has shape {tuple(std.shape)}")
        scale = self.sigma if std is None else self.sigma * std.to(device=x.device, dtype=dtype)
        return x + (eps * scale).to(x.dtype)

    def extra_repr(self) -> str:
        return super().extra_repr() + ", keyed per crop (HMAC-SHA256)"
