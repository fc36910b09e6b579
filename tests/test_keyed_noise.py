"""Keyed per-photo noise: published test vectors, same crop -> same features, independent across crops,
key store permissions and rotation, bundle round trip, the client wiring, and repeats in the attack simulation."""
from __future__ import annotations

import hashlib
import hmac
import math
import os
import stat
import struct

import numpy as np
import pytest
import torch
from torch import nn

from privsplit.defenses.keyed import (
    FileKeyStore, KeyedGaussianNoise, MemoryKeyStore, crop_hash, keyed_standard_normal,
)
from privsplit.defenses.noise import GaussianNoise, available_noises, noise_from_spec

KEY = bytes(range(32))  # 00 01 02 ... 1f
ZEROS = np.zeros((64, 64, 3), np.uint8)
RAMP = (np.arange(8 * 8 * 3) % 256).astype(np.uint8).reshape(8, 8, 3)

#: the vectors published in docs/keyed_noise.md
VECTORS = [
    (ZEROS, "f3cc103136423a57975750907ebc1d367e2985ac6338976d4d5a439f50323f4a",
     [-0.9397585726923613, -0.3695009047679196, -0.8562908283512253, -1.6532350305636465,
      -1.579401934287962, -0.4194254387099606]),
    (RAMP, "8b4a544837a1a0280fa8a7c82865c27a1064b3cc6281fda0753566b9bb104a87",
     [-1.6698187813616205, 1.399758243723758, -1.3800873529120878, -0.37514033753925863,
      1.5085427259376987, 0.3548611125273313]),
]


def _reference_normals(key: bytes, digest: bytes, n: int) -> list[float]:
    """The construction written out with struct/math only (what another implementation would do)."""
    out: list[float] = []
    counter = 0
    while len(out) < n:
        block = hmac.new(key, digest + struct.pack(">Q", counter), hashlib.sha256).digest()
        words = struct.unpack("<4Q", block)
        for a, b in ((words[0], words[1]), (words[2], words[3])):
            u1 = ((a >> 11) + 1) * 2.0 ** -53
            u2 = (b >> 11) * 2.0 ** -53
            r = math.sqrt(-2.0 * math.log(u1))
            out += [r * math.cos(2 * math.pi * u2), r * math.sin(2 * math.pi * u2)]
        counter += 1
    return out[:n]


@pytest.mark.parametrize("crop,digest,normals", VECTORS)
def test_published_vectors(crop: np.ndarray, digest: str, normals: list[float]) -> None:
    assert crop_hash(crop).hex() == digest
    got = keyed_standard_normal(KEY, bytes.fromhex(digest), len(normals))
    np.testing.assert_array_equal(got, np.array(normals))
    assert _reference_normals(KEY, bytes.fromhex(digest), 11) == keyed_standard_normal(KEY, bytes.fromhex(digest), 11).tolist()


def test_normals_are_standard_and_prefix_stable() -> None:
    z = keyed_standard_normal(KEY, hashlib.sha256(b"x").digest(), 100_000)
    assert abs(z.mean()) < 0.02 and abs(z.std() - 1) < 0.02
    assert np.array_equal(keyed_standard_normal(KEY, hashlib.sha256(b"x").digest(), 7), z[:7])


def _noise(seed: int = 0) -> KeyedGaussianNoise:
    return KeyedGaussianNoise(sigma=0.5, key_store=MemoryKeyStore(hashlib.sha256(bytes([seed])).digest()))


def test_same_crop_same_features_different_crops_uncorrelated() -> None:
    noise = _noise()
    rng = np.random.default_rng(0)
    crops = rng.integers(0, 256, size=(400, 8, 8, 3), dtype=np.uint8)
    hashes = [crop_hash(c) for c in crops]
    x = torch.zeros(400, 64)
    a, b = noise(x, crop_hashes=hashes), noise(x, crop_hashes=hashes)
    assert torch.equal(a, b)  # exact repeats: identical
    assert abs(float(a.std()) - 0.5) < 0.02
    corr = np.corrcoef(a.numpy())  # rows = crops
    off = corr[~np.eye(400, dtype=bool)]
    assert abs(off.mean()) < 0.01 and np.abs(off).max() < 0.6  # 64-dim rows: |r| ~ N(0, 1/8)
    other = _noise(1)(x, crop_hashes=hashes)  # another device key: independent noise
    assert abs(float(np.corrcoef(a.flatten().numpy(), other.flatten().numpy())[0, 1])) < 0.03


def test_without_hashes_it_is_fresh_and_says_repeats_are_identical() -> None:
    noise = _noise()
    x = torch.zeros(3, 4)
    assert not torch.equal(noise(x), noise(x))
    assert noise.identical_repeats and not getattr(GaussianNoise(sigma=0.5), "identical_repeats", False)
    with pytest.raises(ValueError, match="one crop hash per row"):
        noise(x, crop_hashes=[crop_hash(ZEROS)])


def test_spec_round_trip_and_old_specs_stay_fresh() -> None:
    assert "keyed-gaussian" in available_noises()
    noise = KeyedGaussianNoise(sigma=0.3, scale="std", std=torch.ones(4))
    back = noise_from_spec(noise.spec())
    assert isinstance(back, KeyedGaussianNoise) and back.spec() == noise.spec()
    assert "key" not in str(noise.spec()).replace("keyed", "")  # the key is never part of the spec
    old = noise_from_spec({"kind": "gaussian", "sigma": 0.3, "scale": "isotropic", "std": None})
    assert type(old) is GaussianNoise


def test_file_key_store_creates_0600_refuses_open_perms_and_rotates(tmp_path) -> None:
    path = tmp_path / "sub" / "device_key"
    store = FileKeyStore(path)
    key = store.key()
    assert len(key) == 32 and stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert FileKeyStore(path).key() == key  # persisted
    new = store.rotate()
    assert new != key and store.key() == new and stat.S_IMODE(os.stat(path).st_mode) == 0o600
    os.chmod(path, 0o644)
    with pytest.raises(PermissionError, match="chmod 600"):
        store.key()


def test_attack_simulation_gains_nothing_from_exact_repeats() -> None:
    from privsplit.attacks.base import IdentityAttack

    class Probe(IdentityAttack):
        def fit(self, train, *, column="identity"):  # type: ignore[no-untyped-def]
            return self

        def score(self, received, *, repeats=1):  # type: ignore[no-untyped-def]
            return received

    class Emb(nn.Module):
        def __init__(self, noise: nn.Module) -> None:
            super().__init__()
            self.noise = noise

    assert Probe(Emb(_noise())).effective_repeats(16) == 1
    assert Probe(Emb(GaussianNoise(sigma=0.5))).effective_repeats(16) == 16


def test_client_with_keyed_bundle_repeats_identically(tmp_path) -> None:
    from runtime_support import face_images, make_faces

    from privsplit.defenses import build_embedding, load_client_bundle, save_bundles
    from privsplit.models import vgg16
    from privsplit.runtime.client import Client

    torch.manual_seed(0)
    faces = make_faces()
    model = vgg16(width=0.0625, input_size=32).eval()
    emb = build_embedding("noisy-reduced-simple", model, layer="conv5_3", train=faces, column="gender", dim=4,
                          sigma=0.5, noise_mode="keyed", progress=False)
    client_dir, _ = save_bundles(emb, tmp_path / "b", config=model.config, preprocess=faces.preprocess,
                                 classes=["F", "M"], primary="gender")
    bundle = load_client_bundle(client_dir)
    assert bundle.manifest["noise"]["kind"] == "keyed-gaussian"
    key_file = tmp_path / "key"
    client = Client(bundle, "http://127.0.0.1:9", key_store=FileKeyStore(key_file))
    images = face_images(5)
    a, b = client.features(images), client.features(images[::-1].copy())[::-1]
    np.testing.assert_array_equal(a, b)  # same crop -> same features, whatever the batch order
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    from privsplit.data.transforms import normalize
    with torch.no_grad():
        z = bundle.extractor(normalize(torch.from_numpy(images).permute(0, 3, 1, 2), bundle.preprocess)).numpy()
    scale = bundle.noise.sigma * bundle.noise.std.numpy()
    assert 0.2 < float(((a - z) / scale).std()) < 5  # noise of the bundle's level around the clean features
    FileKeyStore(key_file).rotate()  # a new key: new noise for the same photos
    assert not np.allclose(client.features(images), a)
    with pytest.raises(ValueError, match="only used with keyed noise"):
        fresh_dir, _ = save_bundles(build_embedding("noisy-reduced-simple", model, layer="conv5_3", train=faces,
                                                    column="gender", dim=4, sigma=0.5, progress=False),
                                    tmp_path / "f", config=model.config, preprocess=faces.preprocess,
                                    classes=["F", "M"], primary="gender")
        Client(fresh_dir, "http://127.0.0.1:9", key_store=MemoryKeyStore())


def test_audit_reseeding_keeps_the_keyed_kind() -> None:
    from privsplit.audit.run import _seeded

    class Emb(nn.Module):
        def __init__(self, noise: nn.Module) -> None:
            super().__init__()
            self.noise = noise

        def with_noise(self, noise: nn.Module) -> "Emb":
            return Emb(noise)

    view = _seeded(Emb(KeyedGaussianNoise(sigma=0.5)), 3)
    assert isinstance(view.noise, KeyedGaussianNoise) and view.noise.deterministic and view.noise.identical_repeats
