"""The paper's named embeddings and their client/server bundles."""
from __future__ import annotations

import json

import pytest
import torch

from privsplit.defenses import (
    EMBEDDINGS, BundleError, build_embedding, check_pair, load_client_bundle, load_server_bundle, save_bundles,
)
from privsplit.defenses.build import SiameseConfig
from privsplit.models import vgg16
from privsplit.train import TrainConfig

FAST = SiameseConfig(train=TrainConfig(epochs=1, batch_size=16, lr=5e-4, warmup_fraction=0.0))


@pytest.fixture
def model():
    return vgg16(width=0.0625, input_size=32).eval()


def test_registry_names_follow_the_paper():
    assert list(EMBEDDINGS) == ["simple", "reduced-simple", "siamese", "reduced-siamese",
                                "noisy-reduced-simple", "advanced"]
    adv = EMBEDDINGS["advanced"]
    assert adv.siamese and adv.reduced and adv.noisy
    with pytest.raises(ValueError, match="unknown embedding 'fancy'; choose one of simple, reduced-simple"):
        build_embedding("fancy", vgg16(width=0.0625, input_size=32), layer="conv5_3", train=None, column="gender")


def test_simple_embedding_equals_model(model, tiny_faces):
    emb = build_embedding("simple", model, layer="conv5_3", train=tiny_faces, column="gender", progress=False)
    x = tiny_faces.inputs()[:4]
    assert torch.equal(emb(x), model(x))


def test_reduced_embedding_sends_dim_numbers(model, tiny_faces):
    emb = build_embedding("reduced-simple", model, layer="conv5_3", train=tiny_faces, column="gender", dim=4,
                          progress=False)
    z = emb.client_features(tiny_faces.inputs()[:5])
    assert z.shape == (5, 4)
    assert emb.transmitted_shape(32) == (4,)


def test_siamese_pulls_same_class_features_together(model, tiny_faces):
    from privsplit.defenses.build import extract_features
    from privsplit.models import split

    tuned_emb = build_embedding("siamese", model, layer="conv5_3", train=tiny_faces, column="gender",
                                siamese=SiameseConfig(train=TrainConfig(epochs=4, batch_size=16, lr=2e-3)),
                                progress=False)

    def ratio(extractor):
        f = torch.nn.functional.normalize(extract_features(extractor, tiny_faces).flatten(1), dim=1)
        y = tiny_faces.labels["gender"]
        d = torch.cdist(f, f)
        same = y[:, None] == y[None, :]
        return float(d[same].mean() / d[~same].mean())

    before = ratio(split(model, at="conv5_3")[0])
    after = ratio(tuned_emb.extractor)
    assert after < before * 0.9, (before, after)


def test_noise_only_on_noisy_embeddings(model, tiny_faces):
    emb = build_embedding("noisy-reduced-simple", model, layer="conv5_3", train=tiny_faces, column="gender",
                          dim=4, sigma=0.5, progress=False)
    x = tiny_faces.inputs()
    with torch.no_grad():
        a, b = emb.client_features(x), emb.client_features(x)
        assert not torch.equal(a, b)  # fresh noise per call
        clean = emb.client_features(x, noisy=False)
        assert torch.equal(clean, emb.client_features(x, noisy=False))
    ratio = ((a - clean).std(0) / emb.noise.std).mean()  # noise in units of each feature's std
    assert 0.35 < float(ratio) < 0.65


def test_bundles_roundtrip_and_tamper(model, tiny_faces, tmp_path):
    emb = build_embedding("advanced", model, layer="conv5_3", train=tiny_faces, column="gender", dim=4,
                          sigma=0.3, siamese=FAST, progress=False)
    client_dir, server_dir = save_bundles(emb, tmp_path, config=model.config, preprocess=tiny_faces.preprocess,
                                          classes=["F", "M"], primary="gender")
    client = load_client_bundle(client_dir, deterministic_noise=True, seed=1)
    server = load_server_bundle(server_dir)
    check_pair(client, server)
    x = tiny_faces.inputs()[:6]
    with torch.no_grad():
        z = client.extractor(x)
        assert torch.allclose(z, emb.client_features(x, noisy=False), atol=1e-5)
        assert torch.allclose(server.analyzer(z), emb.analyze(z), atol=1e-5)
    assert server.input_shape == [4] and server.classes == ["F", "M"] and client.feature_shape == [4]
    assert client.manifest["noise"]["sigma"] == 0.3
    # tampering: edit the noise level in the manifest -> refused
    man = json.loads((client_dir / "client.json").read_text())
    man["noise"]["sigma"] = 0.0
    (client_dir / "client.json").write_text(json.dumps(man))
    with pytest.raises(BundleError, match="modified after export"):
        load_client_bundle(client_dir)
    # tampering with weights -> refused
    raw = bytearray((server_dir / "server.safetensors").read_bytes())
    raw[-1] ^= 0xFF
    (server_dir / "server.safetensors").write_bytes(bytes(raw))
    with pytest.raises(BundleError, match="does not match the SHA-256"):
        load_server_bundle(server_dir)


def test_mismatched_pair_refused(model, tiny_faces, tmp_path):
    emb = build_embedding("reduced-simple", model, layer="conv5_3", train=tiny_faces, column="gender", dim=4,
                          progress=False)
    a = save_bundles(emb, tmp_path / "a", config=model.config, preprocess=tiny_faces.preprocess,
                     classes=["F", "M"], primary="gender")
    b = save_bundles(emb, tmp_path / "b", config=model.config, preprocess=tiny_faces.preprocess,
                     classes=["F", "M"], primary="gender")
    with pytest.raises(BundleError, match="come from different embeddings"):
        check_pair(load_client_bundle(a[0]), load_server_bundle(b[1]))


def test_with_noise_keeps_eval_mode_so_a_sweep_cannot_rewrite_shared_batchnorm(model, tiny_faces):
    """A noise sweep shares the extractor: a copy in training mode would update its BatchNorm statistics."""
    from privsplit.defenses.noise import GaussianNoise

    emb = build_embedding("noisy-reduced-simple", model, layer="conv5_3", train=tiny_faces, column="gender", dim=4,
                          sigma=0.5)
    before = {k: v.clone() for k, v in emb.extractor.state_dict().items()}
    other = emb.with_noise(GaussianNoise(sigma=1.0, scale="std", std=emb.noise.std))
    assert not other.training and not other.extractor.training
    with torch.no_grad():
        other.client_features(torch.zeros(1, 3, 32, 32))
    assert all(torch.equal(v, before[k]) for k, v in emb.extractor.state_dict().items())
