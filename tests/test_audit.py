"""The audit on planted data: gate verdicts, selection without peeking, provenance, CLI errors.

Test-only attacks are registered in a fixture (and unregistered after), so these tests exercise the
audit's registry-driven loop without depending on which real attacks a branch has. Where
``privsplit.attacks.data`` (AttackData) is not importable yet, a minimal stand-in following its
documented API is installed for the duration of a test.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn
from typer.testing import CliRunner

from privsplit.attacks.base import ATTACKS, IdentityAttack
from privsplit.attacks.common import clean_features
from privsplit.audit import Floors, audit, compare_audits, excluded_pair_floor, leak_sentence, markdown, select_attacks
from privsplit.data import FaceData, Manifest, Preprocess
from privsplit.defenses.noise import GaussianNoise


N_IDS, PER_ID, N_ENROL = 20, 24, 15


# --- planted data and embeddings ---------------------------------------------------------------------
def planted_faces(seed: int = 0) -> FaceData:
    """N_IDS people x PER_ID images of 3x8x8: identity = a fixed random pattern, gender = a red shift."""
    g = torch.Generator().manual_seed(seed)
    n = N_IDS * PER_ID
    ids = torch.arange(n) // PER_ID
    gender = ids % 2
    pattern = torch.rand(N_IDS, 3, 8, 8, generator=g) * 120
    imgs = 40 + pattern[ids] + torch.rand(n, 3, 8, 8, generator=g) * 30
    imgs[:, 0] += gender.view(n, 1, 1).float() * 60
    man = Manifest(root=Path("."), paths=tuple(f"{i}.png" for i in range(n)),
                   columns={"gender": tuple("FM"[int(v)] for v in gender),
                            "identity": tuple(f"id{int(v):02d}" for v in ids)}, name="planted")
    return FaceData(imgs.clamp(0, 255).to(torch.uint8), {"gender": gender, "identity": ids},
                    {"gender": ["F", "M"], "identity": [f"id{i:02d}" for i in range(N_IDS)]}, man, Preprocess(size=8))


class PlantedEmbedding(nn.Module):
    """``leak=True``: sends the whole image (identity pattern); else only the gender shift (no identity)."""

    def __init__(self, *, leak: bool, sigma: float = 0.05) -> None:
        super().__init__()
        self.leak, self.kind, self.layer = leak, "leaky" if leak else "primary-only", "planted"
        self.noise = GaussianNoise(sigma=sigma)

    def client_features(self, x: Tensor, *, noisy: bool = True) -> Tensor:
        z = x.flatten(1) if self.leak else (x[:, 0].mean((1, 2)) > x[:, 1:].mean((1, 2, 3))).float().view(-1, 1)
        return self.noise(z) if noisy else z


class CentroidAttack(IdentityAttack):
    """Nearest class mean of clean enrolment features (a 1-NN-like planted attack)."""

    name = "test-centroid"

    def fit(self, train, *, column="identity"):
        f = clean_features(self.embedding, train)[0].flatten(1)
        y = train.labels[column]
        self.classes = sorted(set(y.tolist()))
        self.means = torch.stack([f[y == c].mean(0) for c in self.classes])
        return self

    def score(self, received, *, repeats=1):
        return -torch.cdist(received.flatten(1), self.means)


class ValidationStarAttack(CentroidAttack):
    """Fitted on fewer than N_ENROL photos per identity (the validation fit) it sees noise-free features
    (perfect); otherwise it guesses: first on validation, last on the queries, so only a selection that
    peeks at the queries would skip it."""

    name = "test-val-star"

    def fit(self, train, *, column="identity"):
        self.small = len(train) < N_IDS * N_ENROL
        return super().fit(train, column=column)

    def received(self, data, *, repeats=1):
        return clean_features(self.embedding, data)[0] if self.small else super().received(data, repeats=repeats)

    def score(self, received, *, repeats=1):
        s = super().score(received, repeats=repeats)
        if self.small:
            return s
        return torch.rand(s.shape, generator=torch.Generator().manual_seed(self.seed))


@pytest.fixture
def test_attacks():
    names = {"test-centroid": CentroidAttack, "test-val-star": ValidationStarAttack}
    for n, cls in names.items():
        ATTACKS.register(n, cls)
    yield list(names)
    for n in names:
        ATTACKS.unregister(n)


def run(leak: bool, attacks=("test-centroid",), **kw):
    kw = {"seeds": 2, "n_boot": 300, "progress": False, "n_enrol": N_ENROL, **kw}
    return audit(PlantedEmbedding(leak=leak), planted_faces(), attacks=list(attacks), **kw)


# --- tests -------------------------------------------------------------------------------------------
def test_gate_fails_on_identity_leak_and_passes_on_primary_only(test_attacks, one_thread):
    leaky, clean = run(True, gate=1.5), run(False, gate=1.5)
    assert leaky.floors.primary_top1 == pytest.approx(2 / N_IDS) and leaky.floors.chance_top1 == 1 / N_IDS
    assert leaky.worst.top1.value > 0.9 and not leaky.gate.passed and "exceeds" in leaky.gate.reason
    assert clean.worst.top1.value < 1.5 * clean.floors.reference and clean.gate.passed
    lo, hi = clean.worst.top1.ci95
    assert lo <= clean.floors.primary_top1 <= hi  # primary-only lands on the floor, within its interval
    strict = run(False, gate=1.5, gate_strict=True)
    assert strict.gate.value == strict.worst.top1.ci95[1]


def test_worst_case_is_chosen_on_validation_not_on_queries(test_attacks, one_thread):
    rep = audit(PlantedEmbedding(leak=True, sigma=3.0), planted_faces(), attacks=test_attacks, seeds=2, n_boot=300,
                progress=False, n_enrol=N_ENROL)
    star, centroid = rep.attack("test-val-star"), rep.attack("test-centroid")
    assert star.validation_top1 == 1.0 > centroid.validation_top1
    assert star.top1.value < 0.2 < 0.5 < centroid.top1.value
    assert rep.worst.attack == "test-val-star" and rep.worst.selection == "validation"
    assert rep.optimistic.attack == "test-centroid" and rep.optimistic.selection == "maximum"
    assert rep.comparisons["test-centroid"].difference < 0 and rep.comparisons["test-centroid"].separated
    assert "optimistic for the attacker" in rep.headline() and "optimistic for the attacker" in markdown(rep)


def test_seeds_give_mean_spread_and_pooled_interval(test_attacks, one_thread):
    rep = run(False, seeds=3)
    a = rep.attack("test-centroid")
    assert len(a.per_seed_top1) == 3 and a.top1.value == pytest.approx(sum(a.per_seed_top1) / 3)
    assert a.spread[0] <= a.top1.value <= a.spread[1] and a.top1.method == "identity bootstrap"
    assert a.top1.n == sum(rep.queries["per_seed"]) == 3 * N_IDS * (PER_ID - N_ENROL)


def test_audit_json_has_provenance(test_attacks, one_thread, tmp_path):
    from privsplit.audit import write_json

    d = json.loads(write_json(run(True, seeds=1), tmp_path / "audit.json").read_text())
    p = d["provenance"]
    for key in ("versions", "git_commit", "profile", "seeds", "data", "seconds_per_attack", "embedding_id"):
        assert key in p, key
    assert set(p["versions"]) == {"privsplit", "torch", "numpy"} and p["versions"]["torch"] == torch.__version__
    assert len(p["data"]["manifest_sha256"]) == 64 and p["seeds"] == [0]
    assert d["worst_case"]["attack"] == "test-centroid" and d["floors"]["reference"] == pytest.approx(0.1)


def test_compare_audits_paired(test_attacks, one_thread):
    leaky, clean = run(True), run(False)
    test = compare_audits(clean, leaky)
    assert test.difference < -0.5 and test.separated
    assert leak_sentence("primary-only", "leaky", test).startswith("primary-only leaks less identity than leaky")
    same = compare_audits(clean, clean)
    assert not same.separated and "do not separate" in leak_sentence("a", "b", same)
    with pytest.raises(ValueError, match="same queries"):
        compare_audits(clean, run(False, seeds=1))
    # from audit.json (what two separate `privsplit audit` runs leave behind): the same test
    from_files = compare_audits(json.loads(json.dumps(clean.to_dict())), json.loads(json.dumps(leaky.to_dict())))
    assert from_files == test


def test_expression_matched_floor_hand_case():
    # 3 targets; target 0 enrolled with expressions {0, 1}, target 1 with {1, 2}, target 2 with {0, 2}.
    e_ids, e_expr = torch.tensor([0, 0, 1, 1, 2, 2]), torch.tensor([0, 1, 1, 2, 0, 2])
    # a query of target 0 with expression 2: candidates lacking 2 = {0} -> 1; of target 1 with 0:
    # candidates lacking 0 = {1} -> 1; of target 2 with 1: candidates {2} -> 1; one impossible query
    # (target 0 with expression 0, seen in its enrolment) -> 0.
    q_ids, q_expr = torch.tensor([0, 1, 2, 0]), torch.tensor([2, 0, 1, 0])
    assert excluded_pair_floor(q_ids, q_expr, e_ids, e_expr) == pytest.approx(0.75)
    assert excluded_pair_floor(torch.tensor([0]), torch.tensor([3]), e_ids, e_expr) == pytest.approx(1 / 3)
    # the gate's floor is the structure floor when the split has one (see privsplit.audit.floors)
    assert Floors(0.05, 0.25, 0.33, 0.9, 20, 0.11, 0.5, "expression-matched").reference == 0.11
    assert Floors(0.05, 0.25, 0.10, 0.4, 20).reference == 0.10


def test_unknown_attack_and_profile_list_choices(test_attacks):
    with pytest.raises(ValueError, match="unknown attack 'nope'; choose one of: .*test-centroid"):
        select_attacks("test-centroid,nope")
    with pytest.raises(ValueError, match="unknown profile 'quick'"):
        select_attacks("all", "quick")
    assert "test-centroid" in select_attacks("all", "fast")


# --- CLI: bad input is one clear error line, before anything is loaded ----------------------------------
def _csv(tmp_path: Path, per_id: int) -> Path:
    rows = ["path,identity,gender"] + [f"{i}_{j}.png,p{i},{'FM'[i % 2]}" for i in range(3) for j in range(per_id)]
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    return tmp_path / "labels.csv"


def _cli(*args):
    from privsplit.cli import app

    res = CliRunner().invoke(app, ["audit", *map(str, args)])
    return res.exit_code, " ".join(res.output.split())  # rich wraps long lines


def test_cli_errors(tmp_path, test_attacks):
    code, out = _cli(tmp_path / "bundle", "--attacks", "nope")
    assert code == 2 and "unknown attack 'nope'; choose one of:" in out and "test-centroid" in out
    code, out = _cli(tmp_path / "bundle", "--data", _csv(tmp_path, 20), "--sensitive", "person")
    assert code == 2 and "label column 'person' not found" in out and "available columns: gender, identity" in out
    code, out = _cli(tmp_path / "bundle", "--data", _csv(tmp_path, 10))
    assert code == 2 and "too few images per identity" in out and ">= 16 images" in out
    code, out = _cli(tmp_path / "bundle", "--data", _csv(tmp_path, 20), "--attacks", "test-centroid")
    assert code == 2 and "is not a client bundle" in out


def test_feature_cache_matches_the_extractor_and_never_goes_stale(one_thread):
    from privsplit.audit.cache import FeatureCache, with_cache
    from privsplit.defenses.embedding import Embedding

    conv = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten())
    emb = Embedding.from_parts(kind="simple", layer="x", extractor=conv, analyzer=nn.Identity(), reduce=nn.Identity(),
                               reconstruct=nn.Identity(), noise=GaussianNoise(sigma=0.0)).eval()
    cache = FeatureCache()
    view = with_cache(emb, cache)
    assert view._artifacts is cache.artifacts and not hasattr(emb, "_artifacts")  # aux-only models: per audit
    x = torch.randn(6, 3, 8, 8)
    with torch.no_grad():
        ref = emb.client_features(x, noisy=False)
        assert torch.allclose(view.client_features(x, noisy=False), ref, atol=1e-6) and cache.misses == 6
        # another batch sharing 3 images: only the 3 new ones are computed
        assert torch.allclose(view.client_features(torch.cat([x[3:], -x[:3]]), noisy=False)[:3], ref[3:], atol=1e-6)
        assert (cache.hits, cache.misses) == (3, 9)
        conv[0].weight.mul_(2)  # an in-place change of the layers invalidates what was cached
        assert torch.allclose(view.client_features(x, noisy=False), emb.client_features(x, noisy=False), atol=1e-6)
        assert cache.misses == 15
    z = view.client_features(x.requires_grad_(), noisy=False)  # with gradients on, the extractor always runs
    assert z.requires_grad and view.client_features is not emb.client_features


def test_one_feature_cache_across_noise_levels_gives_the_same_audits(test_attacks, one_thread):
    """What ``noise_tradeoff`` does: the audits of several sigmas share one cache; the noise-free features
    are computed once (hits at the second sigma) and every figure equals an audit with a cache of its own."""
    from privsplit.audit.cache import FeatureCache
    from privsplit.defenses.embedding import Embedding

    torch.manual_seed(0)
    conv = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten())
    emb = Embedding.from_parts(kind="simple", layer="x", extractor=conv, analyzer=nn.Identity(), reduce=nn.Identity(),
                               reconstruct=nn.Identity(), noise=GaussianNoise(sigma=0.0)).eval()
    faces, shared = planted_faces(), FeatureCache()

    def one(sigma: float, cache: FeatureCache | None):
        rep = audit(emb.with_noise(GaussianNoise(sigma=sigma)), faces, attacks=["test-centroid"], seeds=2, n_boot=200,
                    progress=False, n_enrol=N_ENROL, cache=cache)
        return [(a.name, a.top1.value, a.top1.ci95) for a in rep.attacks]

    first = one(0.0, shared)
    misses = shared.misses
    second = one(3.0, shared)
    assert shared.misses == misses and shared.hits > 0  # sigma 3: no image went through the extractor again
    assert first == one(0.0, None) and second == one(3.0, None)
    assert first != second  # the noise still acts
