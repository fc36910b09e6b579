"""Reconstruction attack, SSIM/PSNR wrappers, the Fig. 11 grid and the dlib identity check."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conftest import make_faces

pytest.importorskip("torchmetrics", reason="SSIM/PSNR need torchmetrics (the 'attacks' extra)")

from privsplit.attacks import ReconConfig, ReconstructionAttack, save_reconstruction_grid  # noqa: E402
from privsplit.attacks.reconstruction import Decoder, mean_figure, select_per_identity  # noqa: E402
from privsplit.defenses import build_embedding  # noqa: E402
from privsplit.metrics.image import psnr, ssim  # noqa: E402
from privsplit.models import vgg16  # noqa: E402

TINY = ReconConfig(epochs=12, batch_size=8, width=32, min_width=16, hidden=64, lr=3e-3, identity=False)


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny ops: threads only add contention


# -- metrics ------------------------------------------------------------------------------------------

def test_ssim_of_identical_images_is_one_and_psnr_infinite():
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(ssim(x, x), torch.ones(3), atol=1e-6)
    assert torch.isinf(psnr(x, x)).all()


def test_psnr_matches_the_formula():
    g = torch.Generator().manual_seed(2)
    a = torch.rand(4, 3, 16, 16, generator=g, dtype=torch.float64)
    b = (a + 0.05 * torch.randn(4, 3, 16, 16, generator=g, dtype=torch.float64)).clamp(0, 1)
    by_hand = 10 * torch.log10(1.0 / ((a - b) ** 2).mean((1, 2, 3)))
    assert torch.allclose(psnr(a, b), by_hand, atol=1e-9)
    # a constant error of 0.1 on [0, 1] images is exactly 20 dB; mean reduction
    zeros = torch.zeros(2, 3, 8, 8, dtype=torch.float64)
    assert torch.allclose(psnr(zeros, zeros + 0.1), torch.full((2,), 20.0, dtype=torch.float64))
    assert psnr(zeros, zeros + 0.1, reduction="mean").shape == ()


def test_ssim_known_values():
    # constant images a and b: only the luminance term is left, (2ab + C1) / (a^2 + b^2 + C1), C1 = 0.01^2
    x = torch.zeros(2, 3, 16, 16, dtype=torch.float64)
    expected = (2 * 0.3 * 0.6 + 1e-4) / (0.09 + 0.36 + 1e-4)
    assert torch.allclose(ssim(x + 0.3, x + 0.6), torch.full((2,), expected, dtype=torch.float64), atol=1e-9)
    # an image and its negative around 0.5 are anti-correlated: SSIM close to -1
    g = torch.Generator().manual_seed(3)
    y = 0.5 + 0.2 * torch.randn(1, 3, 32, 32, generator=g, dtype=torch.float64)
    assert float(ssim(y, 1 - y)) < -0.9


def test_ssim_matches_a_direct_implementation():
    """Wang et al. (2004) with an 11x11 Gaussian window (sigma 1.5), valid positions, channel mean."""
    g = torch.Generator().manual_seed(4)
    a = torch.rand(2, 3, 24, 24, generator=g, dtype=torch.float64)
    b = (0.7 * a + 0.3 * torch.rand(2, 3, 24, 24, generator=g, dtype=torch.float64))
    k = torch.exp(-((torch.arange(11, dtype=torch.float64) - 5) ** 2) / (2 * 1.5**2))
    k = k / k.sum()
    w = (k[:, None] * k[None, :]).expand(3, 1, 11, 11)

    def filt(t):
        return torch.nn.functional.conv2d(t, w, groups=3)

    mu_a, mu_b = filt(a), filt(b)
    var_a, var_b = filt(a * a) - mu_a**2, filt(b * b) - mu_b**2
    cov = filt(a * b) - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    assert torch.allclose(ssim(a, b), s.mean((1, 2, 3)), atol=1e-6)


def test_metrics_reject_mismatched_shapes():
    with pytest.raises(ValueError, match="differ in shape"):
        ssim(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 9))


def test_mean_figure_interval():
    v = torch.tensor([1.0, 2.0, 3.0, 4.0])
    f = mean_figure(v)
    half = 1.96 * float(v.std()) / 2
    assert f.value == 2.5 and f.n == 4 and f.ci95 == pytest.approx((2.5 - half, 2.5 + half))


# -- decoder ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(4,), (16, 4, 4), (8, 8, 8), (4, 32, 32), (6, 3, 3)])
def test_decoder_shape_and_range(shape):
    dec = Decoder(shape, 32, width=16, min_width=8, hidden=32).eval()
    out = dec(torch.randn(5, *shape) * 10)
    assert out.shape == (5, 3, 32, 32)
    assert float(out.detach().min()) >= 0.0 and float(out.detach().max()) <= 1.0


def test_linear_start_is_the_ridge_solution():
    # targets that are exactly sigmoid(linear(features)): the ridge start (penalty ~0) reproduces them
    g = torch.Generator().manual_seed(7)
    feats = torch.randn(300, 5, generator=g) * 3 + 1
    a, b = torch.randn(5, 3 * 16 * 16, generator=g) * 0.2, torch.randn(3 * 16 * 16, generator=g) * 0.3
    targets = torch.sigmoid(((feats - feats.mean(0)) / feats.std(0)) @ a + b).view(-1, 3, 16, 16)
    dec = Decoder((5,), 16, width=16, min_width=8, hidden=16, linear=True)
    dec.set_input_stats(feats)
    dec.init_linear(feats, targets, ridge=1e-6)
    assert torch.count_nonzero(dec.head.weight) == 0  # the conv path starts silent
    with torch.no_grad():
        assert torch.allclose(dec.eval()(feats), targets, atol=1e-4)
    with pytest.raises(RuntimeError, match="no linear path"):
        Decoder((5,), 16).init_linear(feats, targets)


def test_decoder_rejects_other_shapes():
    with pytest.raises(ValueError, match="expected"):
        Decoder((4, 4), 32)


# -- attack on tiny data ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def split_faces():
    data = make_faces(n=64, size=32, n_ids=8)
    ids = data.labels["identity"]
    return data.subset(torch.nonzero(ids < 6).flatten()), data.subset(torch.nonzero(ids >= 6).flatten())


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return vgg16(width=0.0625, input_size=32).eval()


def _attack(kind, model, train, *, layer, dim=None, sigma=0.0):
    torch.manual_seed(0)
    emb = build_embedding(kind, model, layer=layer, train=train, column="gender", dim=dim, sigma=sigma,
                          progress=False)
    return ReconstructionAttack(emb, config=TINY).fit(train)


def test_attack_succeeds_early_and_fails_on_two_numbers(split_faces, tiny_model):
    train, test = split_faces
    early = _attack("simple", tiny_model, train, layer="conv1_2").evaluate(test)
    reduced = _attack("reduced-simple", tiny_model, train, layer="conv1_2", dim=2).evaluate(test)
    assert set(early.figures) == {"ssim", "psnr"} and early.attack == "reconstruction"
    assert early.embedding == "simple" and reduced.embedding == "reduced-simple"
    # conv1_2 keeps the image: far better than the mean face; two numbers cannot carry unseen faces
    assert early.figures["ssim"].value > 0.3
    assert early.figures["ssim"].value > reduced.figures["ssim"].value + 0.15
    assert early.figures["psnr"].value > reduced.figures["psnr"].value
    assert reduced.figures["ssim"].value < early.references["ssim_mean_face"] + 0.1
    lo, hi = early.figures["ssim"].ci95
    assert lo < early.figures["ssim"].value < hi and early.figures["ssim"].n == len(test)
    assert early.details["transmitted_shape"] == [4, 32, 32] and reduced.details["transmitted_shape"] == [2]
    # 4096 numbers from 96 training pairs: no linear start (it would memorise); 2 numbers: linear start
    assert early.details["linear_start"] is False and reduced.details["linear_start"] is True


def test_training_is_seeded_and_loss_falls(split_faces, tiny_model):
    train, test = split_faces
    a = _attack("simple", tiny_model, train, layer="conv3_1")
    b = _attack("simple", tiny_model, train, layer="conv3_1")
    assert a.history == b.history
    assert a.history[-1] < a.history[0]
    originals, recon = a.reconstructions(test, 5)
    assert originals.shape == recon.shape == (5, 3, 32, 32)
    assert torch.equal(recon, b.reconstructions(test, 5)[1])
    assert torch.allclose(originals, test.images[:5].float() / 255)


def test_noisy_features_get_fresh_noise(split_faces, tiny_model):
    train, test = split_faces
    atk = _attack("noisy-reduced-simple", tiny_model, train, layer="conv5_3", dim=4, sigma=1.0)
    r1, r2 = atk.reconstruct(test), atk.reconstruct(test)
    assert not torch.equal(r1, r2)  # one fresh noise draw per call, as the server would receive
    assert r1.shape == (len(test), 3, 32, 32)


def test_evaluate_reports_identity_check_through_a_matcher(split_faces, tiny_model):
    from privsplit.attacks.base import Figure

    class StubMatcher:  # records what the attack hands to the identity check
        def identity_match(self, originals, identities, queries):
            self.args = (originals, identities, queries)
            return {"reconstruction": Figure.proportion(1, 4), "originals": Figure.proportion(4, 4), "chance": 0.5,
                    "identities": 2, "detected": {"originals": 1.0, "reconstruction": 0.5}, "box": (0, 0, 1, 1)}

    train, test = split_faces
    atk = _attack("simple", tiny_model, train, layer="conv3_1")
    stub = StubMatcher()
    res = atk.evaluate(test, primary="gender", identity=True, matcher=stub)
    originals, ids, queries = stub.args
    assert len(ids) == 16 and originals.dtype == torch.uint8  # 8 test images of each of 2 identities, <= 10 each
    assert queries["reconstruction"].shape == (16, 3, 32, 32)
    assert res.figures["identity_match"].value == 0.25 and res.references["identity_match_ceiling"] == 1.0
    assert res.references["identity_chance"] == 0.5
    # ids 6 and 7 have different genders: knowing the gender names the person
    assert res.references["identity_primary_floor"] == 1.0
    assert res.details["identity_check"]["detected"]["reconstruction"] == 0.5


def test_evaluate_before_fit_raises(tiny_model, split_faces):
    emb = build_embedding("simple", tiny_model, layer="conv1_2", train=split_faces[0], column="gender", progress=False)
    with pytest.raises(RuntimeError, match="fit"):
        ReconstructionAttack(emb).evaluate(split_faces[1])


def test_select_per_identity():
    ids = torch.tensor([0, 0, 0, 1, 1, 2, 3, 3, 3, 3])
    rows = select_per_identity(ids, 2, seed=0)
    assert torch.equal(rows, rows.sort().values)
    counts = torch.bincount(ids[rows], minlength=4)
    assert counts.tolist() == [2, 2, 0, 2]  # identity 2 has a single image: no leave-one-out template


# -- figure -------------------------------------------------------------------------------------------

def test_grid_png_has_expected_pixel_size(tmp_path):
    from PIL import Image

    g = torch.Generator().manual_seed(5)
    originals = torch.rand(8, 3, 32, 32, generator=g)
    rows = {"simple": torch.rand(8, 3, 32, 32, generator=g), "advanced": torch.rand(8, 3, 32, 32, generator=g)}
    path = save_reconstruction_grid(originals, rows, tmp_path / "fig11.png", scale=2, pad=4, label_width=100)
    with Image.open(path) as im:
        assert im.size == (100 + 8 * (64 + 4) + 4, 3 * (64 + 4) + 4)
        px = np.asarray(im.convert("RGB"))
    # the first original sits at (label_width + pad, pad), upscaled by nearest neighbour
    expect = (originals[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    assert np.array_equal(px[4:68:2, 104:168:2], expect)
    with pytest.raises(ValueError, match="row 'bad'"):
        save_reconstruction_grid(originals, {"bad": originals[:4]}, tmp_path / "x.png")
    titled = save_reconstruction_grid(originals, rows, tmp_path / "t.png", title="Fig. 11", scale=1)
    with Image.open(titled) as im:
        assert im.size == (120 + 8 * 36 + 4, 20 + 3 * 36 + 4)


# -- dlib identity check ------------------------------------------------------------------------------

def test_identity_match_with_dlib():
    pytest.importorskip("dlib", reason="the identity check needs dlib (the 'attacks' extra)")
    from privsplit.attacks.face_match import FaceMatcher, dlib_available

    if not dlib_available():
        pytest.skip("face_recognition_models not installed")
    # three 'identities' of distinct synthetic patterns, 3 images each (slight noise); dlib describes any
    # image on the fixed rectangle. Originals match their own identity; uniform grey queries do not all.
    g = torch.Generator().manual_seed(6)
    base = torch.rand(3, 3, 32, 32, generator=g)
    base = torch.nn.functional.interpolate(base[:, :, ::4, ::4], size=32, mode="bilinear", align_corners=False)
    ids = torch.arange(9) // 3
    originals = (base[ids] + 0.02 * torch.randn(9, 3, 32, 32, generator=g)).clamp(0, 1)
    matcher = FaceMatcher(upsample=2, detect=False)
    res = matcher.identity_match(originals, ids, {"same": originals.clone(), "grey": torch.full_like(originals, 0.5)})
    assert res["identities"] == 3 and res["chance"] == pytest.approx(1 / 3)
    assert res["originals"].value == 1.0 and res["same"].value == 1.0 and res["originals"].n == 9
    assert res["grey"].value <= 1 / 3 + 1e-9  # the same descriptor for every query: one identity at most
    assert res["detected"] == {"originals": 0.0, "same": 0.0, "grey": 0.0} and res["box"] == (0.0, 0.0, 1.0, 1.0)
    d = matcher.describe(originals[:2])
    assert d.vectors.shape == (2, 128) and math.isclose(float(d.vectors[0].norm()), float(d.vectors[0].norm()))
    with pytest.raises(ValueError, match=">= 2 identities"):
        matcher.identity_match(originals[:3], torch.tensor([0, 0, 1]), {})
