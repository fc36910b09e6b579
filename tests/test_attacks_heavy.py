"""Heavy identity attacks: transfer (every head, restarts, ensemble), decoder -> recognizer, white-box inversion.

Planted identities (local fixture): each identity t has a mean feature vector mu_t; an image carries
mu_t + within-identity variation, encoded in its pixels, and a tiny "extractor" reads it back exactly.
With isotropic Gaussian variation and device noise, the Bayes classifier is the nearest true mean, so
the best possible top-1 is known (estimated on 40,000 fresh draws).
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from privsplit.attacks import ATTACKS
from privsplit.attacks.face_match import Descriptors
from privsplit.attacks.inversion import InversionAttack, InversionConfig, invert, total_variation
from privsplit.attacks.recognizer import RecognizerAttack
from privsplit.attacks.reconstruction import ReconConfig, ReconstructionIdentityAttack
from privsplit.attacks.transfer import TransferAttack, TransferConfig
from privsplit.data import FaceData, Manifest, Preprocess
from privsplit.defenses.embedding import Embedding
from privsplit.defenses.noise import GaussianNoise

pytestmark = pytest.mark.usefixtures("one_thread")

T, D, SIZE = 8, 4, 8          # identities, feature dimension, image side
SCALE = 16.0                   # pixel = 128 + SCALE * feature
WITHIN, SIGMA = 0.45, 0.45     # within-identity std (baked into each image), device noise std


class Reader(nn.Module):
    """The planted 'extractor': reads the first D pixels of the red channel back as features."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pix = (x[:, 0].flatten(1)[:, :D] * 0.25 + 0.5) * 255.0
        return (pix - 128.0) / SCALE


def planted_faces(means: torch.Tensor, n_per: int, *, seed: int) -> FaceData:
    g = torch.Generator().manual_seed(seed)
    ids = torch.arange(len(means)).repeat_interleave(n_per)
    feats = means[ids] + WITHIN * torch.randn(len(ids), D, generator=g)
    imgs = torch.full((len(ids), 3, SIZE, SIZE), 128.0)
    imgs[:, 0].view(len(ids), -1)[:, :D] = 128.0 + SCALE * feats
    gender = ids % 2
    n = len(ids)
    manifest = Manifest(root=Path("."), paths=tuple(f"{i}.png" for i in range(n)),
                        columns={"gender": tuple("FM"[int(v)] for v in gender),
                                 "identity": tuple(f"id{int(v)}" for v in ids)}, name="planted")
    return FaceData(images=imgs.round().clamp(0, 255).to(torch.uint8), labels={"gender": gender, "identity": ids},
                    classes={"gender": ["F", "M"], "identity": [f"id{i}" for i in range(len(means))]},
                    manifest=manifest, preprocess=Preprocess(size=SIZE))


def planted_embedding(sigma: float = SIGMA) -> Embedding:
    torch.manual_seed(0)
    analyzer = nn.Sequential(nn.Linear(D, 32), nn.ReLU(), nn.Linear(32, 2))
    return Embedding(kind="noisy-reduced-simple", layer="planted", extractor=Reader(), analyzer=analyzer,
                     noise=GaussianNoise(sigma=sigma, deterministic=True, seed=1))


def bayes_top1(means: torch.Tensor, *, n: int = 40000) -> float:
    g = torch.Generator().manual_seed(99)
    y = torch.randint(0, len(means), (n,), generator=g)
    x = means[y] + (WITHIN**2 + SIGMA**2) ** 0.5 * torch.randn(n, D, generator=g)
    return float((torch.cdist(x, means).argmin(1) == y).double().mean())


@pytest.fixture(scope="module")
def identity_means():
    return 1.0 * torch.randn(T, D, generator=torch.Generator().manual_seed(3))


@pytest.fixture(scope="module")
def primary_only_means():
    # identity carries nothing but gender: every identity of one gender has the same mean
    m = torch.zeros(T, D)
    m[:, 0] = torch.where(torch.arange(T) % 2 == 1, 2.0, -2.0)
    return m


FAST = TransferConfig(epochs=30, restarts=3, batch_size=32, lrs=(3e-3, 1e-2), copies=1, val_per_identity=3)


# -- transfer -----------------------------------------------------------------------------------------

def test_transfer_ensemble_lands_near_bayes(identity_means):
    emb = planted_embedding()
    enrol, query = planted_faces(identity_means, 15, seed=1), planted_faces(identity_means, 40, seed=2)
    attack = ATTACKS.build("transfer", emb, aux=None, seed=0, config=FAST)
    assert isinstance(attack, TransferAttack) and attack.profiles == frozenset({"full"})
    res = attack.fit(enrol).evaluate(query, primary="gender")
    bayes = bayes_top1(identity_means)
    top1 = res.figures["top1"].value
    print(f"bayes {bayes:.3f} transfer {top1:.3f} choice {attack.choice}")
    assert 0.45 < bayes < 0.85
    assert bayes - 0.12 <= top1 <= bayes + 0.06  # 320 queries: sampling sd ~0.027
    # every head with 3 restarts was trained and validated; the choice and its members are recorded
    d = res.details
    assert {"analyzer", "mlp", "ensemble"} <= set(d["validation_top1"])
    assert sum(k.startswith("mlp@") for k in d["validation_top1"]) == len(FAST.lrs) + FAST.restarts - 1
    assert d["head"] == attack.choice == max(["ensemble", "analyzer", "mlp"], key=d["validation_top1"].get)
    assert len(d["members"]) == (6 if d["head"] == "ensemble" else 3)
    assert len({m.split("#")[1] for m in d["members"]}) == 3  # three different seeds
    lo, hi = res.figures["top1"].ci95
    assert lo <= top1 <= hi and res.figures["top1"].method == "identity bootstrap"


def test_transfer_repeated_queries_help(identity_means):
    emb = planted_embedding()
    enrol, query = planted_faces(identity_means, 15, seed=1), planted_faces(identity_means, 40, seed=2)
    attack = TransferAttack(emb, config=TransferConfig(epochs=30, restarts=3, batch_size=32, lrs=(1e-2,), copies=1,
                                                       head="mlp"))
    attack.fit(enrol)
    one = attack.evaluate(query, repeats=1).figures["top1"].value
    many = attack.evaluate(query, repeats=16).figures["top1"].value
    assert many > one + 0.03  # averaging 16 sends removes most device noise
    assert attack.score(attack.received(query, repeats=4), repeats=4).shape == (len(query), T)


def test_transfer_on_primary_only_embedding_falls_to_floor(primary_only_means):
    emb = planted_embedding()
    enrol, query = planted_faces(primary_only_means, 15, seed=1), planted_faces(primary_only_means, 40, seed=2)
    res = TransferAttack(emb, config=FAST).fit(enrol).evaluate(query, primary="gender")
    floor = res.references["primary_floor_top1"]
    assert floor == pytest.approx(2 / T)
    assert abs(res.figures["top1"].value - floor) <= 0.08


def test_transfer_config_validates():
    with pytest.raises(ValueError, match="restarts >= 1"):
        TransferConfig(restarts=0)
    emb = planted_embedding()
    with pytest.raises(ValueError, match="head='conv' needs spatial"):
        TransferAttack(emb, config=TransferConfig(head="conv")).fit(planted_faces(torch.zeros(2, D), 3, seed=0))
    with pytest.raises(RuntimeError, match="call fit"):
        TransferAttack(emb).score(torch.zeros(2, D))


# -- images -> recognizer: decoder and inversion ------------------------------------------------------

SIDE = 16


class PixelMatcher:
    """A stand-in recognizer (no dlib): the descriptor is the 4x4-pooled image."""

    box = None

    def describe(self, images: torch.Tensor) -> Descriptors:
        x = images.float() / 255 if images.dtype == torch.uint8 else images.float()
        v = nn.functional.avg_pool2d(x, SIDE // 4).flatten(1).double()
        return Descriptors(v, torch.zeros(len(v), dtype=torch.bool), torch.zeros(len(v), 4, dtype=torch.float64))

    enrol = describe


def smooth_images(n: int, *, seed: int) -> torch.Tensor:
    """``n`` smooth random images in [0.15, 0.85] (bilinear upsampling of 4x4 noise)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 4, 4, generator=g)
    return 0.15 + 0.7 * nn.functional.interpolate(low, size=SIDE, mode="bilinear", align_corners=False)


def image_faces(n_ids: int, n_per: int, *, seed: int) -> FaceData:
    base = smooth_images(n_ids, seed=seed)
    g = torch.Generator().manual_seed(seed + 100)
    ids = torch.arange(n_ids).repeat_interleave(n_per)
    imgs = (base[ids] + 0.03 * torch.randn(len(ids), 3, SIDE, SIDE, generator=g)).clamp(0, 1)
    manifest = Manifest(root=Path("."), paths=tuple(f"{i}.png" for i in range(len(ids))),
                        columns={"identity": tuple(f"id{int(v)}" for v in ids)}, name="smooth")
    return FaceData(images=(imgs * 255).round().to(torch.uint8), labels={"identity": ids},
                    classes={"identity": [f"id{i}" for i in range(n_ids)]}, manifest=manifest,
                    preprocess=Preprocess(size=SIDE))


def conv_embedding() -> Embedding:
    torch.manual_seed(5)
    extractor = nn.Conv2d(3, 4, 3, stride=2, padding=1)  # 768 pixels -> 256 numbers: under-determined
    analyzer = nn.Sequential(nn.Flatten(), nn.Linear(256, 2))
    return Embedding(kind="simple", layer="conv", extractor=extractor, analyzer=analyzer,
                     noise=GaussianNoise(sigma=0.01, deterministic=True, seed=2))


def test_inversion_recovers_a_planted_image_and_uses_the_prior():
    torch.manual_seed(5)
    conv = nn.Conv2d(3, 4, 3, stride=2, padding=1).requires_grad_(False)
    planted, aux = smooth_images(4, seed=1), smooth_images(64, seed=2)
    mean = aux.mean(0, keepdim=True).expand_as(planted)
    target = conv(planted)
    smooth = invert(conv, target, mean, steps=150, lr=0.05, tv_weight=0.3)
    rough = invert(conv, target, mean, steps=150, lr=0.05, tv_weight=0.0)
    mse = {name: float((img - planted).pow(2).mean()) for name, img in
           {"smooth": smooth, "rough": rough, "mean": mean}.items()}
    assert mse["smooth"] < 0.5 * mse["mean"]
    assert mse["smooth"] < mse["rough"]  # the prior helps where the features under-determine the image
    assert float(total_variation(smooth).mean()) < float(total_variation(rough).mean())
    assert float(smooth.min()) >= 0.0 and float(smooth.max()) <= 1.0
    # optimising at a lower resolution is a further smoothness prior; the result has the input size
    coarse = invert(conv, target, mean, steps=150, lr=0.05, tv_weight=0.0, resolution=8)
    assert coarse.shape == planted.shape
    assert float(total_variation(coarse).mean()) < float(total_variation(rough).mean())
    with pytest.raises(ValueError, match="resolution must be >= 4"):
        InversionConfig(resolution=2)
    # squared TV by hand on a 2x2 image: rows differ by 1 (mean 1/2 over 2 positions), columns by 0
    assert float(total_variation(torch.tensor([[[[0.0, 0.0], [1.0, 1.0]]]]))) == pytest.approx(1.0)


def test_inversion_attack_identifies_through_a_recognizer():
    emb = conv_embedding()
    aux, enrol, query = image_faces(6, 4, seed=10), image_faces(4, 5, seed=20), image_faces(4, 5, seed=20)
    cfg = InversionConfig(steps=60, batch_size=8, progress=False)
    attack = ATTACKS.build("inversion", emb, aux=aux, seed=0, config=cfg, matcher=PixelMatcher())
    assert isinstance(attack, InversionAttack) and attack.profiles == frozenset({"full"})
    res = attack.fit(enrol).evaluate(query)
    assert res.figures["top1"].value >= 0.9  # chance 0.25
    assert res.figures["ssim"].value > res.references["ssim_mean_face"]
    assert res.details["config"]["steps"] == 60 and res.details["image_seconds_per_query"] > 0
    assert all(p.requires_grad for p in emb.parameters())  # frozen only while inverting


def test_reconstruction_identity_attack_goes_through_the_registry():
    emb = conv_embedding()
    aux, enrol, query = image_faces(24, 4, seed=10), image_faces(4, 5, seed=20), image_faces(4, 5, seed=20)
    tiny = ReconConfig(epochs=8, batch_size=16, width=16, min_width=8, hidden=32, lr=3e-3)
    attack = ATTACKS.build("reconstruction", emb, aux=aux, seed=0, config=tiny, matcher=PixelMatcher())
    assert isinstance(attack, ReconstructionIdentityAttack) and attack.profiles == frozenset({"full"})
    res = attack.fit(enrol).evaluate(query, repeats=4)
    assert res.attack == "reconstruction" and res.details["repeats"] == 4
    assert res.details["config"]["identity"] is False and len(res.details["train_loss"]) == 8
    assert res.hits["top1"].shape == (len(query),) and {"ssim", "psnr", "top1", "top5"} <= set(res.figures)
    assert res.figures["top1"].value > 0.25  # chance


@pytest.mark.parametrize("name", ["reconstruction", "inversion"])
def test_image_attacks_need_aux(name):
    attack = ATTACKS.build(name, conv_embedding(), aux=None, seed=0, matcher=PixelMatcher())
    with pytest.raises(ValueError, match="pass aux=FaceData"):
        attack.fit(image_faces(2, 3, seed=0))
    with pytest.raises(RuntimeError, match="call fit"):
        attack.score(torch.zeros(2, 4, 8, 8))


def test_recognizer_attack_with_dlib():
    from privsplit.attacks.face_match import dlib_available

    if not dlib_available():
        pytest.skip("the recognizer needs dlib and face_recognition_models (the 'attacks' extra)")
    from privsplit.attacks.face_match import FaceMatcher

    emb = conv_embedding()
    aux, enrol, query = image_faces(6, 3, seed=10), image_faces(3, 3, seed=20), image_faces(3, 2, seed=20)
    cfg = InversionConfig(steps=5, batch_size=8, progress=False)
    attack = InversionAttack(emb, aux=aux, config=cfg, matcher=FaceMatcher(upsample=2, detect=False))
    res = attack.fit(enrol).evaluate(query)
    assert res.details["recognizer"] == "FaceMatcher" and res.details["enrol_detected"] == 0.0
    assert attack.templates is not None and attack.templates.shape == (3, 128)
    assert 0.0 <= res.figures["top1"].value <= 1.0 and res.figures["top1"].n == len(query)


def test_recognizer_base_is_abstract():
    assert issubclass(InversionAttack, RecognizerAttack) and issubclass(ReconstructionIdentityAttack, RecognizerAttack)
    with pytest.raises(TypeError):
        RecognizerAttack(conv_embedding())  # type: ignore[abstract]
