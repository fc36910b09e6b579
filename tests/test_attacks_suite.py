"""The fast attack suite (1-NN, likelihood, metric) against planted Gaussian identities with a known Bayes top-1.

Planted setting (tests/planted.py): 20 targets x 60 photos (15 enrolled, 45 queried: 900 queries),
200 aux people x 6 photos, 6-d features, within-class std 1, identity separation 1, isotropic device
noise sigma = 1. Margins below Bayes (stated, and why):

* likelihood: 6 pp -- it is the Bayes rule with estimated means and covariance (15 photos/identity)
  plus the sampling error of 900 clustered queries (~2 pp s.e.);
* metric: 10 pp -- it must also learn the metric from other people (cosine on a learnt embedding);
* 1-NN: 25 pp -- nearest single photo is far from the Bayes rule when within-class spread is large;
  it is the baseline the likelihood attack must beat.

No attack may beat Bayes beyond sampling error (its interval's lower end stays below Bayes).
"""
from __future__ import annotations

import pytest
import torch

from planted import decode_ids, planted_faces
from privsplit.attacks import ATTACKS, attack_data, combine_evidence, identity_attacks, verification_figures
from privsplit.attacks.data import enrolment_rank_privacy_of
from privsplit.data.splits import per_identity_split
from privsplit.data.transforms import augment
from privsplit.metrics.intervals import paired_bootstrap
from privsplit.metrics.rank_enrolment import enrolment_rank_privacy, enrolment_rank_privacy_naive

SIGMA = 1.0
MARGIN = {"likelihood": 0.06, "metric": 0.10, "1-nn": 0.25}
METRIC = dict(epochs=12, copies=1, enrol_draws=4)  # a small stated budget: ~1,200 aux photos x 12 epochs


@pytest.fixture(scope="module")
def planted():
    torch.set_num_threads(1)
    return planted_faces(n_targets=20, per_target=60, n_aux=200, per_aux=6, dim=6, seed=0)


@pytest.fixture(scope="module")
def primary_only():
    # gender far apart (8 within-class stds): the attacks know the primary label and nothing more
    return planted_faces(n_targets=20, per_target=60, n_aux=200, per_aux=6, dim=6, primary_only=True, gender_gap=8.0,
                         seed=1)


def _run(p, name, *, sigma=SIGMA, **kw):
    data = attack_data(p.targets, aux=p.aux)
    options = METRIC if name == "metric" else {}
    attack = ATTACKS.build(name, p.embedding(sigma), aux=p.aux, **options).fit(data.enrol)
    return attack, attack.evaluate(data.query, primary="gender", **kw)


@pytest.fixture(scope="module")
def results(planted):
    return {name: _run(planted, name)[1] for name in MARGIN}


def test_planted_ids_survive_augmentation(planted):
    x = planted.aux.inputs()
    ids = torch.arange(len(planted.targets), len(planted.targets) + len(planted.aux))
    assert torch.equal(decode_ids(augment(x, torch.Generator().manual_seed(3))), ids)


def test_attack_data_enrols_15_and_queries_every_other_photo(planted):
    data = attack_data(planted.targets, aux=planted.aux)
    ids = data.enrol.labels["identity"]
    assert torch.equal(torch.bincount(ids), torch.full((20,), 15))
    assert len(data.query) == 20 * 45 and data.train is data.enrol and data.test is data.query
    assert not set(data.enrol.manifest.paths) & set(data.query.manifest.paths)
    old = per_identity_split(planted.targets.manifest.column("identity"), per_identity=20, n_train=15, seed=0)
    balanced = attack_data(planted.targets, per_identity=20)
    assert list(balanced.enrol.manifest.paths) == [planted.targets.manifest.paths[i] for i in old[0]]
    assert len(balanced.query) == 20 * 5
    enrol, val = data.validation(n_val=5)
    assert len(enrol) == 20 * 10 and len(val) == 20 * 5 and not set(enrol.manifest.paths) & set(val.manifest.paths)
    with pytest.raises(ValueError, match="shares 20 identities"):
        attack_data(planted.targets, aux=planted.targets)


def test_groups_never_shared_between_enrolment_and_query():
    p = planted_faces(n_targets=6, per_target=30, n_aux=4, per_aux=3, groups=10, seed=2)  # 10 sequences of 3
    data = attack_data(p.targets, group="sequence")
    assert not set(data.enrol.manifest.column("sequence")) & set(data.query.manifest.column("sequence"))
    assert len(data.enrol) == 6 * 15 and len(data.query) == 6 * 15  # 5 whole sequences enrolled, 5 queried
    enrol, val = data.validation(n_val=3)
    assert not set(enrol.manifest.column("sequence")) & set(val.manifest.column("sequence"))


def test_each_attack_lands_within_its_margin_of_bayes(planted, results):
    bayes = planted.bayes_top1(SIGMA)
    assert 0.4 < bayes < 0.5  # a hard, informative setting (chance 5%, gender floor 10%)
    for name, res in results.items():
        top1 = res.figures["top1"]
        assert bayes - MARGIN[name] <= top1.value, (name, top1, bayes)
        assert top1.ci95[0] <= bayes, (name, top1, bayes)
        assert top1.method == "identity bootstrap" and res.references["primary_floor_top1"] == pytest.approx(0.1)


def test_likelihood_beats_nearest_neighbour_on_noisy_features(results):
    lik, nn = results["likelihood"], results["1-nn"]
    test = paired_bootstrap(lik.hits["top1"], nn.hits["top1"], lik.groups, seed=0)
    assert test.separated and test.difference > 0.05, str(test)


def test_every_attack_falls_to_the_primary_floor_without_identity(primary_only):
    for name in MARGIN:
        attack, res = _run(primary_only, name)
        floor, top1 = res.references["primary_floor_top1"], res.figures["top1"]
        assert floor == pytest.approx(0.1)
        assert top1.ci95[0] <= floor <= top1.ci95[1] and abs(top1.value - floor) < 0.04, (name, top1)
        if name == "metric":  # verification with gender-matched impostors: chance, not a face verifier
            assert abs(res.figures["verification_auc"].value - 0.5) < 0.05, res.figures["verification_auc"]


def test_metric_verifies_identity_on_the_identity_embedding(results):
    # genuine pair differences have variance 4 per dimension, gender-matched impostors 6: even the
    # optimal verifier reaches only ~0.7 AUC here; the primary-only embedding scores 0.5 (test above)
    auc = results["metric"].figures["verification_auc"]
    assert auc.value > 0.65 and auc.ci95[0] > 0.6 and not auc.percent
    assert 0 <= results["metric"].figures["tar_at_far"].value <= 1


def test_repeated_queries_raise_the_likelihood_attack(planted):
    one = _run(planted, "likelihood")[1]
    many = _run(planted, "likelihood", repeats=16)[1]
    assert many.details["repeats"] == 16
    assert many.figures["top1"].value > one.figures["top1"].value + 0.08
    assert many.figures["top1"].value <= planted.bayes_top1(SIGMA, repeats=16) + 0.02


def test_per_user_evidence_combines_photos(planted):
    single = _run(planted, "likelihood")[1]
    combined = _run(planted, "likelihood", per_user=5)[1]
    assert combined.details["per_user"] == 5 and len(combined.hits["top1"]) == 20 * 9
    assert combined.figures["top1"].value > single.figures["top1"].value + 0.2
    scores = torch.tensor([[0.0, 1.0], [2.0, 0.0], [0.0, 0.5], [0.0, 3.0]])
    comb, y, first = combine_evidence(scores, torch.tensor([0, 0, 1, 1]), 2)
    assert torch.equal(y, torch.tensor([0, 1])) and comb.shape == (2, 2)
    assert comb[0].argmax() == 0 and comb[1].argmax() == 1  # 2 - 1 > 0; 0.5 + 3 > 0
    with pytest.raises(ValueError, match="per_user"):
        combine_evidence(scores, y, 0)


def test_identity_attacks_row_keeps_its_shape(planted):
    row = identity_attacks(planted.embedding(SIGMA), attack_data(planted.targets), primary="gender")
    assert {"nn_top1", "nn_top5", "nn_top1_ci95", "chance_top1", "primary_floor_top1"} <= set(row)
    assert row["embedding"] == "planted" and "transfer_top1" not in row


def test_verification_figures_hand_checked():
    emb = torch.tensor([[1.0, 0], [1.0, 0], [0, 1.0], [0, 1.0]])
    figs = verification_figures(emb, torch.tensor([0, 0, 1, 1]), n_boot=50)
    assert figs["verification_auc"].value == 1.0 and figs["tar_at_far"].value == 1.0
    flipped = verification_figures(emb, torch.tensor([0, 1, 0, 1]), n_boot=50)
    assert flipped["verification_auc"].value == 0.0


def test_enrolment_rank_privacy_equals_its_naive_twin():
    gen = torch.Generator().manual_seed(0)
    means = torch.randn(6, 3, generator=gen) * 2
    ref_y, q_y = torch.arange(6).repeat(4), torch.arange(6).repeat_interleave(torch.tensor([3, 4, 5, 3, 6, 3]))
    refs = means[ref_y] + torch.randn(24, 3, generator=gen)
    queries = means[q_y] + torch.randn(len(q_y), 3, generator=gen) * 1.4
    fast = enrolment_rank_privacy(refs, ref_y, queries, q_y, sigma=[0.8, 1.0, 1.2], seed=3, chunk_size=5)
    slow = enrolment_rank_privacy_naive(refs, ref_y, queries, q_y, sigma=[0.8, 1.0, 1.2], seed=3)
    assert torch.allclose(fast.ranks, slow.ranks) and fast.privacy == pytest.approx(slow.privacy)
    assert fast.num_points == 18 and torch.equal(torch.bincount(fast.groups), torch.full((6,), 3))  # balanced
    assert fast.ci95 == slow.ci95 and fast.ci95[0] <= fast.privacy <= fast.ci95[1]
    with pytest.raises(ValueError, match="no enrolment reference"):
        enrolment_rank_privacy(refs, ref_y, queries, q_y + 1, sigma=1.0)


def test_enrolment_rank_privacy_of_an_embedding(planted, primary_only):
    ident = enrolment_rank_privacy_of(planted.embedding(SIGMA), attack_data(planted.targets), n_boot=200)
    gender = enrolment_rank_privacy_of(primary_only.embedding(SIGMA), attack_data(primary_only.targets), n_boot=200)
    assert ident.privacy < 0.15 and ident.ci95[1] < gender.ci95[0]
    assert gender.privacy == pytest.approx(4.5 / 20, abs=0.04)  # rank among the 10 same-gender people: 4.5/T
    assert enrolment_rank_privacy_of(planted.embedding(0.0), attack_data(planted.targets)) is None


def test_noise_spec_and_shrinkage_and_registry():
    from privsplit.attacks.neighbors import noise_variance, shrunk_covariance
    from privsplit.defenses.noise import GaussianNoise, NoNoise

    std_noise = GaussianNoise(sigma=0.5, scale="std", std=torch.tensor([1.0, 2.0]))
    assert torch.allclose(noise_variance(std_noise, (2,), repeats=4), torch.tensor([0.0625, 0.25], dtype=torch.float64))
    assert torch.equal(noise_variance(NoNoise(), (3,)), torch.zeros(3, dtype=torch.float64))
    x = torch.randn(50, 3, generator=torch.Generator().manual_seed(0)) * torch.tensor([1.0, 10.0, 0.1])
    full, a = shrunk_covariance(x, shrinkage=1.0)
    assert a == 1.0 and torch.allclose(full, torch.diag(torch.diagonal(full)))
    lw, a = shrunk_covariance(x)
    assert 0 <= a <= 1 and torch.allclose(torch.diagonal(lw), (x.double() ** 2).mean(0))  # variances kept
    for name in ("1-nn", "likelihood", "metric"):
        assert ATTACKS.get(name).name == name and ATTACKS.get(name).profiles == {"fast", "full"}
    with pytest.raises(ValueError, match="pass aux="):
        ATTACKS.build("metric", planted_faces(n_targets=2, per_target=3, n_aux=2, per_aux=2).embedding())


def test_spatial_features_take_the_conv_path(planted):
    from planted import PlantedEmbedding
    from privsplit.defenses.noise import GaussianNoise

    spatial = PlantedEmbedding(planted.features.view(-1, 3, 2, 1),
                               noise=GaussianNoise(sigma=SIGMA, deterministic=True, seed=0))
    data = attack_data(planted.targets, aux=planted.aux)
    for name in MARGIN:
        options = dict(METRIC, epochs=6) if name == "metric" else {}
        attack = ATTACKS.build(name, spatial, aux=planted.aux, **options).fit(data.enrol)
        if name == "metric":
            assert isinstance(attack.net[1], torch.nn.Conv2d)
        assert attack.evaluate(data.query).figures["top1"].value > 0.25  # chance 5%


def test_metric_network_is_shared_within_an_audit_store_only(planted):
    """An audit's artifact store lets the validation and query fits of one seed share the aux-trained
    network (it never sees the targets); another seed, or no store, trains afresh."""
    data = attack_data(planted.targets, aux=planted.aux)
    emb = planted.embedding(SIGMA)
    opts = dict(METRIC, epochs=2)
    emb._artifacts = {}
    enrol, val = data.validation(n_val=5, seed=0)
    a = ATTACKS.build("metric", emb, aux=planted.aux, seed=0, **opts).fit(enrol)
    b = ATTACKS.build("metric", emb, aux=planted.aux, seed=0, **opts).fit(data.enrol)
    c = ATTACKS.build("metric", emb, aux=planted.aux, seed=1, **opts).fit(data.enrol)
    assert a.net is b.net and c.net is not a.net and len(emb._artifacts) == 2
    del emb._artifacts
    d = ATTACKS.build("metric", emb, aux=planted.aux, seed=0, **opts).fit(data.enrol)
    assert d.net is not a.net
