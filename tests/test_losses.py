"""Contrastive loss (eq. 1 of Osia et al. 2017) and the Siamese objective: values, pairing, gradients."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from privsplit.train.losses import (
    SiameseObjective,
    contrastive_loss,
    contrastive_loss_terms,
    contrastive_pair_loss,
)

# Hand example, margin = 2, labels [0, 0, 1, 1]:
#   f0=(0,0) f1=(3,4) f2=(1,0) f3=(1,1)
#   similar    (0,1): d^2 = 25          (2,3): d^2 = 1                -> mean 13
#   dissimilar (0,2): d = 1     -> (2-1)^2        = 1
#              (0,3): d = sqrt2 -> (2-sqrt2)^2    = 6 - 4 sqrt2 = 0.3431458
#              (1,2): d = sqrt20 = 4.47 > 2 -> 0;  (1,3): d = sqrt13 = 3.61 > 2 -> 0
#                                                  -> mean (7 - 4 sqrt2)/4 = 0.3357864
#   loss = 0.5 * 13 + 0.5 * 0.3357864 = 6.6678932
HAND_F = torch.tensor([[0.0, 0.0], [3.0, 4.0], [1.0, 0.0], [1.0, 1.0]])
HAND_Y = torch.tensor([0, 0, 1, 1])


def test_hand_example_all_pairs():
    terms = contrastive_loss_terms(HAND_F, HAND_Y, margin=2.0)
    assert terms.n_similar == 2 and terms.n_dissimilar == 4
    assert terms.similar.item() == pytest.approx(13.0, abs=1e-5)
    assert terms.dissimilar.item() == pytest.approx(1.75 - math.sqrt(2), abs=1e-6)
    assert terms.loss.item() == pytest.approx(6.6678932, abs=1e-5)
    assert contrastive_loss(HAND_F, HAND_Y, margin=2.0).item() == pytest.approx(6.6678932, abs=1e-5)


def test_pair_loss_hand_example():
    i = torch.tensor([0, 2, 0, 0, 1, 1])
    j = torch.tensor([1, 3, 2, 3, 2, 3])
    sim = torch.tensor([True, True, False, False, False, False])
    # plain mean over the 6 pairs: (25 + 1 + 1 + (6 - 4 sqrt2) + 0 + 0) / 6
    expected = (33 - 4 * math.sqrt(2)) / 6
    got = contrastive_pair_loss(HAND_F[i], HAND_F[j], sim, margin=2.0)
    assert got.item() == pytest.approx(expected, abs=1e-5)
    # a single bool applies to every pair; features are flattened per sample
    f = torch.tensor([[[0.0, 3.0]]]), torch.tensor([[[4.0, 0.0]]])  # d = 5
    assert contrastive_pair_loss(*f, True, margin=1.0).item() == pytest.approx(25.0)
    assert contrastive_pair_loss(*f, False, margin=7.0).item() == pytest.approx(4.0)


def test_all_pairs_equals_double_loop():
    g = torch.Generator().manual_seed(1)
    feats = torch.randn(9, 2, 3, generator=g) * 0.7 + 3.0  # offset checks the centred Gram trick
    labels = torch.tensor([0, 1, 2, 0, 1, 1, 2, 0, 0])
    margin = 2.5
    sim, dis = [], []
    for a in range(9):
        for b in range(a + 1, 9):
            d = torch.linalg.vector_norm(feats[a].flatten() - feats[b].flatten())
            if labels[a] == labels[b]:
                sim.append(d ** 2)
            else:
                dis.append(torch.clamp(margin - d, min=0) ** 2)
    expected = 0.5 * torch.stack(sim).mean() + 0.5 * torch.stack(dis).mean()
    got = contrastive_loss(feats, labels, margin=margin)
    assert len(sim) == 10 and len(dis) == 26
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_balanced_sampling_counts_and_determinism():
    feats = torch.randn(7, 3)
    labels = torch.tensor([0, 0, 0, 0, 0, 1, 1])  # 11 similar pairs, 10 dissimilar
    t = contrastive_loss_terms(feats, labels, margin=1.0, pairs="balanced", generator=torch.Generator().manual_seed(0))
    assert (t.n_similar, t.n_dissimilar) == (10, 10)
    # every dissimilar pair is used, so the dissimilar mean equals the all-pairs one
    full = contrastive_loss_terms(feats, labels, margin=1.0)
    assert (full.n_similar, full.n_dissimilar) == (11, 10)
    torch.testing.assert_close(t.dissimilar, full.dissimilar)
    capped = [
        contrastive_loss_terms(feats, labels, margin=1.0, pairs="balanced", max_pairs=6,
                               generator=torch.Generator().manual_seed(3))
        for _ in range(2)
    ]
    assert (capped[0].n_similar, capped[0].n_dissimilar) == (3, 3)
    torch.testing.assert_close(capped[0].loss, capped[1].loss)  # same seed, same pairs
    sub = contrastive_loss_terms(feats, labels, margin=1.0, pairs="all", max_pairs=5,
                                 generator=torch.Generator().manual_seed(0))
    assert sub.n_similar + sub.n_dissimilar == 5


def test_batches_missing_a_pair_type():
    feats = torch.tensor([[0.0], [1.0], [3.0]])
    # all different labels -> dissimilar only (d = 1, 3, 2; margin 2.5 -> 2.25, 0, 0.25): 0.5 * mean
    only_dis = contrastive_loss_terms(feats, torch.tensor([0, 1, 2]), margin=2.5)
    assert only_dis.n_similar == 0 and only_dis.similar.item() == 0.0
    assert only_dis.loss.item() == pytest.approx(0.5 * (2.25 + 0.25) / 3, abs=1e-6)
    # all same label -> similar only (d^2 = 1, 9, 4): 0.5 * mean
    only_sim = contrastive_loss(feats, torch.tensor([4, 4, 4]), margin=2.5, pairs="balanced")
    assert only_sim.item() == pytest.approx(0.5 * 14 / 3, abs=1e-5)
    # one sample: no pairs, zero loss that still backpropagates
    one = torch.ones(1, 5, requires_grad=True)
    loss = contrastive_loss(one, torch.tensor([0]), margin=1.0)
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(one.grad, torch.zeros(1, 5))


def test_finite_gradients_at_identical_features():
    feats = torch.full((4, 3, 2), 0.5, requires_grad=True)
    labels = torch.tensor([0, 1, 0, 1])
    loss = contrastive_loss(feats, labels, margin=1.5)
    loss.backward()
    # distances are 0: similar terms 0, dissimilar terms margin^2 -> 0.5 * 2.25
    assert loss.item() == pytest.approx(1.125, abs=1e-5)
    assert torch.isfinite(feats.grad).all()
    pair = torch.zeros(2, 4, requires_grad=True)
    contrastive_pair_loss(pair, pair.clone(), torch.tensor([False, True]), margin=1.0).backward()
    assert torch.isfinite(pair.grad).all()
    obj = SiameseObjective(normalize="l2")
    f2 = torch.ones(4, 6, requires_grad=True)
    total, _ = obj(torch.zeros(4, 2, requires_grad=True), f2, labels)
    total.backward()
    assert torch.isfinite(f2.grad).all()


def test_gradient_pulls_similar_and_pushes_dissimilar():
    feats = torch.tensor([[0.0, 0.0], [0.5, 0.0], [0.0, 0.1]], requires_grad=True)
    contrastive_loss(feats, torch.tensor([0, 0, 1]), margin=1.0).backward()
    # sample 1 is pulled towards sample 0 (its similar partner): gradient points away from it (+x)
    assert feats.grad[1, 0].item() > 0
    # sample 2 is pushed away from both others: gradient points towards them (-y)
    assert feats.grad[2, 1].item() < 0


def test_siamese_objective_combines_terms():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(6, 3, generator=g)
    feats = torch.randn(6, 4, 2, generator=g) * 5
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    obj = SiameseObjective(weight=0.3, margin=0.8)
    total, parts = obj(logits, feats, labels)
    ce = F.cross_entropy(logits, labels)
    con = contrastive_loss(F.normalize(feats.flatten(1), dim=1), labels, margin=0.8)
    torch.testing.assert_close(total, ce + 0.3 * con)
    torch.testing.assert_close(parts["ce"], ce)
    torch.testing.assert_close(parts["contrastive"], con)
    assert parts["n_similar"].item() == 3 and parts["n_dissimilar"].item() == 12
    assert not parts["total"].requires_grad
    # scale-free margin with l2: scaling the features leaves the loss unchanged
    total_scaled, _ = obj(logits, feats * 100, labels)
    torch.testing.assert_close(total_scaled, total)
    raw, _ = SiameseObjective(weight=2.0, margin=3.0, normalize="none")(logits, feats, labels)
    torch.testing.assert_close(raw, ce + 2.0 * contrastive_loss(feats, labels, margin=3.0))
    rms, _ = SiameseObjective(weight=1.0, margin=3.0, normalize="sqrt_dim")(logits, feats, labels)
    torch.testing.assert_close(rms, ce + contrastive_loss(feats / math.sqrt(8), labels, margin=3.0))


def test_errors_say_how_to_fix():
    with pytest.raises(ValueError, match="margin"):
        contrastive_loss(HAND_F, HAND_Y, margin=0.0)
    with pytest.raises(ValueError, match="'all' or 'balanced'"):
        contrastive_loss(HAND_F, HAND_Y, margin=1.0, pairs="random")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="one primary label per sample"):
        contrastive_loss(HAND_F, HAND_Y[:3], margin=1.0)
    with pytest.raises(ValueError, match=r"f1\[None\]"):
        contrastive_pair_loss(torch.zeros(3), torch.zeros(3), True, margin=1.0)
    with pytest.raises(ValueError, match="max_pairs >= 2"):
        contrastive_loss(HAND_F, HAND_Y, margin=1.0, pairs="balanced", max_pairs=1)
    with pytest.raises(ValueError, match="normalize"):
        SiameseObjective(normalize="unit")  # type: ignore[arg-type]
