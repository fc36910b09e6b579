"""Tests for the rank privacy metric (privsplit.metrics.rank)."""
from __future__ import annotations

import csv
import math

import pytest
import torch

from privsplit.metrics.rank import (
    RankPrivacy,
    RankPrivacyResult,
    primary_label_ceiling,
    rank_privacy,
    rank_privacy_naive,
)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _data(seed: int, n: int = 200, t: int = 20, d: int = 4, spread: float = 1.0):
    """Random features with class structure: class centres + within-class scatter; every class used."""
    g = _gen(seed)
    centres = spread * torch.randn(t, d, generator=g, dtype=torch.float64)
    classes = torch.cat([torch.arange(t), torch.randint(0, t, (n - t,), generator=g)])
    classes = classes[torch.randperm(n, generator=g)]
    feats = centres[classes] + 0.7 * torch.randn(n, d, generator=g, dtype=torch.float64)
    return feats, classes


def _sigma(kind: str, d: int, seed: int):
    if kind == "iso":
        return 0.8
    return 0.3 + 1.2 * torch.rand(d, generator=_gen(100 + seed), dtype=torch.float64)


# ------------------------------------------------------------------------------ fast == naive
@pytest.mark.parametrize("level", ["class", "sample"])
@pytest.mark.parametrize("sigma_kind", ["iso", "diag"])
@pytest.mark.parametrize("seed,d,chunk", [(0, 2, 7), (1, 3, 64), (2, 5, 33), (3, 8, 199), (4, 6, 1000)])
def test_matches_naive(level, sigma_kind, seed, d, chunk):
    feats, classes = _data(seed, d=d)
    sigma = _sigma(sigma_kind, d, seed)
    fast = rank_privacy(feats, classes, sigma=sigma, generator=_gen(seed), level=level, chunk_size=chunk)
    ref = rank_privacy_naive(feats, classes, sigma=sigma, generator=_gen(seed), level=level)
    # ranks are (half-)integers: exact equality; random continuous data has no exact ties
    assert torch.equal(fast.ranks, ref.ranks)
    assert fast.privacy == pytest.approx(ref.privacy, abs=1e-15)
    assert fast.num_classes == (20 if level == "class" else 200)
    assert 0.0 <= fast.privacy < 1.0


@pytest.mark.parametrize("level", ["class", "sample"])
def test_matches_naive_log_variant_and_given_noise(level):
    feats, classes = _data(7, n=150, t=15, d=3)
    z = feats + 1.3 * torch.randn(feats.shape, generator=_gen(8), dtype=torch.float64)
    fast = rank_privacy(feats, classes, sigma=1.3, noise=z, level=level, log=True, chunk_size=16)
    ref = rank_privacy_naive(feats, classes, sigma=1.3, noise=z, level=level, log=True)
    assert torch.equal(fast.ranks, ref.ranks)
    t = fast.num_classes
    assert torch.allclose(fast.per_point, torch.log1p(fast.ranks) / math.log(t))
    assert fast.privacy == pytest.approx(ref.privacy, abs=1e-15)
    lin = rank_privacy(feats, classes, sigma=1.3, noise=z, level=level)
    assert torch.equal(lin.ranks, fast.ranks)
    assert torch.allclose(lin.per_point, lin.ranks / t)


def test_matches_naive_skewed_class_sizes_float32_input():
    # LFW-like: one big class, many singletons and pairs
    g = _gen(11)
    sizes = [60, 20, 10] + [2] * 20 + [1] * 70
    classes = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    classes = classes[torch.randperm(len(classes), generator=g)] * 3 + 5  # non-contiguous label values
    feats = torch.randn(len(classes), 4, generator=g)  # float32 input
    fast = rank_privacy(feats, classes, sigma=0.6, generator=_gen(12), chunk_size=50)
    ref = rank_privacy_naive(feats, classes, sigma=0.6, generator=_gen(12))
    assert fast.num_classes == len(sizes)
    assert torch.equal(fast.ranks, ref.ranks)


# -------------------------------------------------------------------------------- known cases
@pytest.mark.parametrize("level", ["class", "sample"])
def test_separated_classes_tiny_noise_is_zero(level):
    t, per, d = 10, 5, 3
    centres = 100.0 * torch.eye(t, d * 4)[:, : d * 4]
    classes = torch.arange(t).repeat_interleave(per)
    feats = centres[classes] + 0.01 * torch.randn(t * per, d * 4, generator=_gen(0), dtype=torch.float64)
    if level == "sample":
        feats = feats + 10.0 * torch.randn(feats.shape, generator=_gen(1), dtype=torch.float64)
    res = rank_privacy(feats, classes, sigma=1e-3, generator=_gen(2), level=level)
    assert res.privacy == 0.0
    assert torch.count_nonzero(res.ranks) == 0
    assert res.ci95 == (0.0, 0.0)


@pytest.mark.parametrize("level,n,t_classes", [("class", 2000, 20), ("sample", 400, None)])
def test_huge_noise_is_uniform(level, n, t_classes):
    # Uniform random ranks average (T-1)/2 with ties half-counted, so privacy -> (T-1)/(2T).
    t = t_classes or n
    classes = torch.arange(n) % t  # equal class sizes
    feats = torch.randn(n, 4, generator=_gen(3), dtype=torch.float64)
    res = rank_privacy(feats, classes, sigma=1e4, generator=_gen(4), level=level, chunk_size=300)
    expected = (t - 1) / (2 * t)
    assert res.privacy == pytest.approx(expected, abs=0.05)
    assert res.ci95[0] < res.privacy < res.ci95[1]


def test_exact_ties_counted_half():
    # 10 singleton classes, features in identical pairs; z = f exactly: the true class ties with its twin.
    base = torch.randn(5, 3, generator=_gen(5), dtype=torch.float64) * 10
    feats = base.repeat_interleave(2, dim=0)
    classes = torch.arange(10)
    for level in ("class", "sample"):
        res = rank_privacy(feats, classes, sigma=1.0, noise=feats.clone(), level=level, chunk_size=3)
        assert torch.equal(res.ranks, torch.full((10,), 0.5, dtype=torch.float64))
        assert res.privacy == pytest.approx(0.5 / 10)
        ref = rank_privacy_naive(feats, classes, sigma=1.0, noise=feats.clone(), level=level)
        assert torch.equal(ref.ranks, res.ranks)


def test_single_class_and_single_point():
    feats = torch.randn(6, 2, generator=_gen(6))
    res = rank_privacy(feats, torch.zeros(6, dtype=torch.long), sigma=1.0, log=True)
    assert res.num_classes == 1 and res.privacy == 0.0
    one = rank_privacy(feats[:1], [3], sigma=1.0)
    assert one.privacy == 0.0 and math.isnan(one.std_error)


def test_string_labels_and_sample_level_without_classes():
    feats, classes = _data(9, n=60, t=6, d=3)
    names = [f"person_{int(c):02d}" for c in classes]
    a = rank_privacy(feats, classes, sigma=0.9, generator=_gen(1))
    b = rank_privacy(feats, names, sigma=0.9, generator=_gen(1))
    assert torch.equal(a.ranks, b.ranks)
    s1 = rank_privacy(feats, None, sigma=0.9, generator=_gen(1), level="sample")
    s2 = rank_privacy(feats, classes, sigma=0.9, generator=_gen(1), level="sample")
    assert torch.equal(s1.ranks, s2.ranks) and s1.num_classes == 60


def test_result_fields():
    feats, classes = _data(10, n=100, t=10, d=2)
    res = rank_privacy(feats, classes, sigma=0.5, generator=_gen(0))
    assert isinstance(res, RankPrivacyResult)
    assert res.ranks.shape == (100,) and res.ranks.dtype == torch.float64
    assert res.num_points == 100 and res.level == "class" and res.log is False
    assert res.privacy == pytest.approx(float(res.per_point.mean()))
    assert res.std_error == pytest.approx(float(res.per_point.std()) / 10)
    lo, hi = res.ci95
    assert lo == pytest.approx(res.privacy - 1.96 * res.std_error, rel=1e-3)
    assert hi == pytest.approx(res.privacy + 1.96 * res.std_error, rel=1e-3)
    assert bool((res.ranks >= 0).all()) and bool((res.ranks <= 9).all())
    assert torch.equal(res.ranks * 2, torch.round(res.ranks * 2))  # half-integers


def test_deterministic_given_generator_and_noise_draw():
    feats, classes = _data(12, n=80, t=8, d=3)
    a = rank_privacy(feats, classes, sigma=0.7, generator=_gen(42))
    b = rank_privacy(feats, classes, sigma=0.7, generator=_gen(42))
    assert torch.equal(a.ranks, b.ranks)
    z = feats + 0.7 * torch.randn(feats.shape, generator=_gen(42), dtype=torch.float64)
    c = rank_privacy(feats, classes, sigma=0.7, noise=z)
    assert torch.equal(a.ranks, c.ranks)


# --------------------------------------------------------------------------- chunking / memory
def test_chunking_identical_and_bounded(monkeypatch):
    feats, classes = _data(13, n=257, t=23, d=5)
    z = feats + 0.8 * torch.randn(feats.shape, generator=_gen(14), dtype=torch.float64)
    full = rank_privacy(feats, classes, sigma=0.8, noise=z, chunk_size=257)
    real_addmm = torch.addmm
    shapes: list[tuple[int, ...]] = []

    def spy(*args, **kwargs):
        out = real_addmm(*args, **kwargs)
        shapes.append(tuple(out.shape))
        return out

    monkeypatch.setattr(torch, "addmm", spy)
    for chunk in (1, 10, 64, 256, 10_000):
        shapes.clear()
        for level in ("class", "sample"):
            part = rank_privacy(feats, classes, sigma=0.8, noise=z, chunk_size=chunk, level=level)
            if level == "class":
                assert torch.equal(part.ranks, full.ranks)
        # the only N x (query) matrix ever built is N x chunk
        assert shapes and max(s[1] for s in shapes) == min(chunk, 257)
        assert all(s[0] == 257 for s in shapes)
        assert len(shapes) == 2 * math.ceil(257 / chunk)


# ------------------------------------------------------------------------ primary label ceiling
def test_primary_label_ceiling_hand_example():
    # classes A,B,C male; D,E female; T = 5. Points: A A B C | D E E E
    classes = ["A", "A", "B", "C", "D", "E", "E", "E"]
    primary = ["M", "M", "M", "M", "F", "F", "F", "F"]
    # male points: K=3 -> E[rank]=1 -> 1/5; female points: K=2 -> 0.5 -> 0.1
    assert primary_label_ceiling(classes, primary) == pytest.approx((4 * 0.2 + 4 * 0.1) / 8)
    log_m = (math.log(2) + math.log(3)) / 3 / math.log(5)
    log_f = math.log(2) / 2 / math.log(5)
    assert primary_label_ceiling(classes, primary, log=True) == pytest.approx((log_m + log_f) / 2)
    # integer tensors work the same
    assert primary_label_ceiling(torch.tensor([0, 0, 1, 2, 3, 4, 4, 4]), torch.tensor([1, 1, 1, 1, 0, 0, 0, 0])) \
        == pytest.approx(0.15)
    # a class with two primary labels (a person with two expressions) counts in both groups:
    # M: classes {A, B} -> K=2 -> rank 0.5; F: {A} -> K=1 -> rank 0; T=2
    assert primary_label_ceiling(["A", "A", "B"], ["M", "F", "M"]) == pytest.approx((0.25 + 0 + 0.25) / 3)
    with pytest.raises(ValueError):
        primary_label_ceiling(["A", "B"], ["M"])


def test_ceiling_equals_metric_when_features_carry_only_primary_label():
    # Every feature is its gender's prototype; z = f exactly: all same-gender classes tie, so the
    # half-counted rank is exactly (K_p - 1)/2 -- the ceiling.
    sizes = torch.tensor([3, 1, 2, 1, 5, 1, 2])
    gender_of_class = torch.tensor([0, 0, 0, 0, 1, 1, 0])
    classes = torch.repeat_interleave(torch.arange(7), sizes)
    gender = gender_of_class[classes]
    feats = torch.tensor([[5.0, 0.0], [0.0, 5.0]], dtype=torch.float64)[gender]
    res = rank_privacy(feats, classes, sigma=1.0, noise=feats.clone(), chunk_size=4)
    assert res.privacy == pytest.approx(primary_label_ceiling(classes, gender), abs=1e-15)
    res_log = rank_privacy(feats, classes, sigma=1.0, noise=feats.clone(), log=True)
    # log-rank of the *expected* rank is not the expected log-rank; only check the ordering here
    assert 0.0 < res_log.privacy
    assert primary_label_ceiling(classes, gender, log=True) <= res_log.privacy + 1e-12


@pytest.mark.data
def test_primary_label_ceiling_lfw(lfw_dir):
    with open(lfw_dir / "labels.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    identity = [r["identity"] for r in rows]
    gender = [r["gender"] or "?" for r in rows]  # the one unlabelled image is its own group
    value = primary_label_ceiling(identity, gender)
    assert len(set(identity)) == 5749
    assert 0.30 < value < 0.33  # ~74% of 5,749 identities male


# ------------------------------------------------------------------------------ metric class
def test_class_agrees_with_functional():
    feats, classes = _data(15, n=210, t=21, d=4)
    metric = RankPrivacy(sigma=0.9, seed=123, chunk_size=50)
    for sl in (slice(0, 70), slice(70, 71), slice(71, 210)):
        metric.update(feats[sl], classes[sl])
    assert metric.num_points == 210
    got = metric.compute()
    want = rank_privacy(feats, classes, sigma=0.9, generator=_gen(123))
    assert torch.equal(got.ranks, want.ranks) and got.privacy == want.privacy
    assert metric.compute().privacy == got.privacy  # seeded: reproducible
    metric.reset()
    with pytest.raises(RuntimeError):
        metric.compute()


@pytest.mark.parametrize("level", ["class", "sample"])
def test_class_with_given_noise_and_log(level):
    feats, classes = _data(16, n=90, t=9, d=3)
    z = feats + torch.randn(feats.shape, generator=_gen(17), dtype=torch.float64)
    metric = RankPrivacy(sigma=1.0, level=level, log=True)
    metric.update(feats[:40], classes[:40], noise=z[:40])
    metric.update(feats[40:], classes[40:], noise=z[40:])
    got = metric.compute()
    want = rank_privacy(feats, classes, sigma=1.0, noise=z, level=level, log=True)
    assert torch.equal(got.ranks, want.ranks) and got.privacy == want.privacy
    with pytest.raises(ValueError, match="every update"):
        metric.update(feats[:5], classes[:5])


# ---------------------------------------------------------------------------------- validation
def test_input_validation():
    feats, classes = _data(18, n=30, t=3, d=2)
    with pytest.raises(ValueError, match="sigma"):
        rank_privacy(feats, classes, sigma=0.0)
    with pytest.raises(ValueError, match="sigma"):
        rank_privacy(feats, classes, sigma=torch.ones(3))
    with pytest.raises(ValueError, match="entries"):
        rank_privacy(feats, classes[:-1], sigma=1.0)
    with pytest.raises(ValueError, match="noise"):
        rank_privacy(feats, classes, sigma=1.0, noise=feats[:-1])
    with pytest.raises(ValueError, match="level"):
        rank_privacy(feats, classes, sigma=1.0, level="point")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="chunk_size"):
        rank_privacy(feats, classes, sigma=1.0, chunk_size=0)
    with pytest.raises(ValueError, match="required"):
        rank_privacy(feats, None, sigma=1.0)
    with pytest.raises(ValueError, match="integer"):
        rank_privacy(feats, classes.double(), sigma=1.0)
    with pytest.raises(ValueError, match="non-finite"):
        rank_privacy(feats.clone().fill_(float("nan")), classes, sigma=1.0)
    with pytest.raises(ValueError):
        RankPrivacy(sigma=1.0, seed=1, generator=_gen(1))
