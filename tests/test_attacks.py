"""Identity attacks: references, confidence intervals, and attacks that succeed or fail as they should."""
from __future__ import annotations

import math

import pytest
import torch

from privsplit.attacks import Figure, TransferAttack, TransferConfig, primary_label_floor, wilson_interval
from privsplit.defenses import build_embedding
from privsplit.models import vgg16

from conftest import make_faces


def test_wilson_interval_reference_values():
    lo, hi = wilson_interval(5, 10)
    assert math.isclose(lo, 0.2366, abs_tol=1e-4) and math.isclose(hi, 0.7634, abs_tol=1e-4)
    assert wilson_interval(0, 50)[0] == 0.0 and 0 < wilson_interval(0, 50)[1] < 0.08
    assert str(Figure.proportion(1, 4)).startswith("25.0% [")
    assert str(Figure(0.4431, (0.44, 0.4462), 10, percent=False)) == "0.443 [0.440, 0.446]"


def test_primary_label_floor():
    # 3 male identities, 1 female: a male image is guessed right 1/3 of the time, a female one always
    ident = torch.tensor([0, 1, 2, 3, 3])
    gender = torch.tensor([1, 1, 1, 0, 0])
    assert math.isclose(primary_label_floor(ident, gender), (3 * (1 / 3) + 2 * 1.0) / 5)
    assert primary_label_floor(ident, gender, k=5) == 1.0
    balanced = torch.arange(62)
    assert math.isclose(primary_label_floor(balanced, balanced % 2), 1 / 31)


@pytest.fixture(scope="module")
def attack_setup():
    torch.manual_seed(0)
    faces = make_faces(n=96, n_ids=8, size=32)
    model = vgg16(width=0.0625, input_size=32).eval()
    train = faces.subset([i for i in range(96) if i < 64])
    test = faces.subset([i for i in range(96) if i >= 64])
    return model, faces, train, test


def test_attacks_recognise_identity_from_early_layer(attack_setup):
    model, faces, train, test = attack_setup
    emb = build_embedding("simple", model, layer="conv2_2", train=train, column="gender", progress=False)
    cfg = TransferConfig(head="mlp", epochs=15, restarts=1, lrs=(1e-3,), copies=2, batch_size=32)
    res = TransferAttack(emb, config=cfg).fit(train).evaluate(test, primary="gender")
    assert res.references["chance_top1"] == 1 / 8 and res.references["primary_floor_top1"] == 0.25
    assert res.figures["top1"].value >= 0.75  # identity patterns are strong in early features
    assert res.figures["top5"].value >= res.figures["top1"].value


def test_heavy_noise_drives_attack_to_chance(attack_setup):
    model, faces, train, test = attack_setup
    emb = build_embedding("noisy-reduced-simple", model, layer="conv2_2", train=train, column="gender", dim=2,
                          sigma=50.0, progress=False)
    cfg = TransferConfig(head="mlp", epochs=10, restarts=1, lrs=(1e-3,), copies=1, batch_size=32)
    res = TransferAttack(emb, config=cfg).fit(train).evaluate(test, primary="gender")
    assert res.figures["top1"].value <= 0.35  # chance 12.5%, 32 test images


def test_lr_is_chosen_on_validation(attack_setup):
    model, faces, train, test = attack_setup
    emb = build_embedding("reduced-simple", model, layer="conv5_3", train=train, column="gender", dim=4,
                          progress=False)
    attack = TransferAttack(emb, config=TransferConfig(epochs=3, restarts=2, lrs=(1e-4, 1e-2), copies=1,
                                                       val_per_identity=2))
    res = attack.fit(train).evaluate(test)
    # reduced features are vectors: auto tries the paper's analyzer head and an MLP, at each lr, then the
    # second restart of each at its chosen lr; candidates: each head's restarts and the all-heads ensemble
    runs = {k for k in attack.validation if "@" in k}
    assert {k.split("#")[0] for k in runs} == {"analyzer@0.0001", "analyzer@0.01", "mlp@0.0001", "mlp@0.01"}
    assert len(runs) == 4 + 2
    candidates = {k: v for k, v in attack.validation.items() if "@" not in k}
    assert set(candidates) == {"ensemble", "analyzer", "mlp"}
    assert attack.choice == max(candidates, key=candidates.get) == res.details["head"]
    assert res.details["lr"] == attack.lr and res.details["members"] == [m.key for m, _ in attack.members]
    assert 0 <= res.figures["top1"].value <= 1
    with pytest.raises(ValueError, match="head='conv' needs spatial"):
        TransferAttack(emb, config=TransferConfig(head="conv")).fit(train)
    with pytest.raises(RuntimeError, match="call fit"):
        TransferAttack(emb).evaluate(test)
