"""The CLI end to end on a small synthetic dataset: train -> evaluate -> embed -> attack, and friendly errors."""
from __future__ import annotations

import json
import os
import shutil

os.environ["COLUMNS"] = "200"  # rich wraps tables at the terminal width; keep rows on one line

import pytest
import torch
from typer.testing import CliRunner

from privsplit.attacks.base import ATTACKS, IdentityAttack
from privsplit.attacks.common import clean_features
from privsplit.cli import app
from privsplit.data.synthetic import generate_synthetic_faces


runner = CliRunner()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    os.environ["PRIVSPLIT_CACHE"] = str(root / "cache")
    generate_synthetic_faces(root / "faces", n_identities=16, images_per_identity=20, size=32, seed=3)
    run = root / "run"
    res = runner.invoke(app, ["train", "--dataset", str(root / "faces" / "labels.csv"), "--out", str(run),
                              "--size", "32", "--width", "0.0625", "--epochs", "2", "--batch-size", "32",
                              "--attack-min-images", "20", "--attack-count", "4"])
    assert res.exit_code == 0, res.output
    return root, run, res.output


class _NearestMean(IdentityAttack):
    """A tiny registered identity attack, so the CLI plumbing is tested whatever attacks a branch ships."""

    name = "test-nearest-mean"

    def fit(self, train, *, column="identity"):
        f, y = clean_features(self.embedding, train)[0].flatten(1), train.labels[column]
        self.classes = sorted(set(y.tolist()))
        self.means = torch.stack([f[y == c].mean(0) for c in self.classes])
        return self

    def score(self, received, *, repeats=1):
        return -torch.cdist(received.flatten(1), self.means)


@pytest.fixture
def nearest_mean(monkeypatch):
    ATTACKS.register(_NearestMean.name, _NearestMean)
    yield _NearestMean.name
    ATTACKS.unregister(_NearestMean.name)


def test_train_reports_and_saves(trained):
    _, run, output = trained
    assert "test (held-out identities)" in output and "attack identities" in output
    assert "conv5_3" in output  # split points are listed
    man = json.loads((run / "model.json").read_text())
    assert man["dataset"]["sizes"]["attack"] == 80 and man["classes"] == ["F", "M"]
    splits = json.loads((run / "splits.json").read_text())["identities"]
    assert len(splits["attack"]) == 4 and not set(splits["train"]) & set(splits["test"])


def test_evaluate_matches_training_metrics(trained):
    _, run, _ = trained
    res = runner.invoke(app, ["evaluate", str(run), "--split", "test"])
    assert res.exit_code == 0, res.output
    acc = json.loads((run / "metrics.json").read_text())["test"]["accuracy"]
    assert f"{acc:.2%}" in res.output


def test_embed_and_attack(trained, nearest_mean):
    _, run, _ = trained
    res = runner.invoke(app, ["embed", str(run), "--kind", "noisy-reduced-simple", "--layer", "conv5_3", "--dim", "4",
                              "--noise", "0.5"])
    assert res.exit_code == 0, res.output
    bundle = run / "bundles" / "noisy-reduced-simple-conv5_3"
    assert (bundle / "client" / "client.json").exists() and "sends [4] floats per image" in res.output
    res = runner.invoke(app, ["attack", str(bundle), "--kind", nearest_mean])
    assert res.exit_code == 0, res.output
    row = json.loads((bundle / "attacks" / f"{nearest_mean}.json").read_text())
    assert row["references"]["chance_top1"] == 0.25 and 0 <= row["figures"]["top1"]["value"] <= 1
    assert row["figures"]["top1"]["method"] == "identity bootstrap"
    res = runner.invoke(app, ["attack", str(bundle), "--kind", "nope"])
    assert res.exit_code == 2 and "unknown attack 'nope'" in res.output and nearest_mean in res.output
    res = runner.invoke(app, ["attack", str(bundle), "--kind", "rank"])
    assert res.exit_code == 0, res.output
    rank = json.loads((bundle / "attacks" / "rank.json").read_text())
    assert 0 <= rank["rank_privacy"] <= 1 and rank["identities"] == 4
    res = runner.invoke(app, ["attack", str(bundle), "--kind", "reconstruction", "--epochs", "1"])
    assert res.exit_code == 0, res.output
    recon = json.loads((bundle / "attacks" / "reconstruction.json").read_text())
    assert 0 < recon["figures"]["ssim"]["value"] <= 1 and (bundle / "attacks" / "reconstruction.png").exists()


def test_audit_cli_gate_exit_codes_and_files(trained, nearest_mean):
    _, run, _ = trained
    bundle = run / "bundles" / "noisy-reduced-simple-conv5_3"
    if not bundle.exists():
        assert runner.invoke(app, ["embed", str(run), "--kind", "noisy-reduced-simple", "--layer", "conv5_3",
                                   "--dim", "4", "--noise", "0.5"]).exit_code == 0
    base = ["audit", str(bundle), "--attacks", nearest_mean, "--seeds", "2"]
    res = runner.invoke(app, base + ["--gate", "100"])
    assert res.exit_code == 0 and "gate passed" in res.output, res.output
    audit = json.loads((bundle / "audit" / "audit.json").read_text())
    assert audit["worst_case"]["attack"] == nearest_mean and audit["provenance"]["embedding_id"]
    assert audit["provenance"]["client_tensors_sha256"] and audit["queries"]["identities"] == 4
    assert (bundle / "audit" / "audit.png").stat().st_size > 0
    assert "Worst case" in (bundle / "audit" / "audit.md").read_text()
    res = runner.invoke(app, base + ["--gate", "0.01", "--out", str(bundle / "audit-fail"),
                                     "--compare", str(bundle / "audit" / "audit.json")])
    assert res.exit_code == 1 and "gate FAILED" in res.output and "exceeds" in res.output
    assert "the data do not separate" in " ".join(res.output.split())  # the same bundle against itself


def test_audit_cli_own_labelled_photos_and_mismatched_pair(trained, nearest_mean, tmp_path):
    root, run, _ = trained
    bundle = run / "bundles" / "noisy-reduced-simple-conv5_3"
    if not bundle.exists():
        assert runner.invoke(app, ["embed", str(run), "--kind", "noisy-reduced-simple", "--layer", "conv5_3",
                                   "--dim", "4", "--noise", "0.5"]).exit_code == 0
    own = root / "faces" / "own_labels.csv"  # not the run's data: an auditor's own labelled photos
    shutil.copy(root / "faces" / "labels.csv", own)
    res = runner.invoke(app, ["audit", str(bundle), "--data", str(own), "--attacks",
                              nearest_mean, "--seeds", "1", "--out", str(tmp_path / "own")])
    assert res.exit_code == 0, res.output
    audit = json.loads((tmp_path / "own" / "audit.json").read_text())
    assert audit["queries"]["identities"] == 16 and audit["queries"]["per_seed"] == [16 * 5]
    assert audit["provenance"]["data_source"].startswith("data ")
    # a client and a server from different embeddings: one clear line
    assert runner.invoke(app, ["embed", str(run), "--kind", "simple", "--layer", "conv5_3"]).exit_code == 0
    mixed = tmp_path / "mixed"
    shutil.copytree(bundle / "client", mixed / "client")
    shutil.copytree(run / "bundles" / "simple-conv5_3" / "server", mixed / "server")
    res = runner.invoke(app, ["audit", str(mixed), "--data", str(own), "--attacks", nearest_mean])
    assert res.exit_code == 2 and "come from different embeddings" in " ".join(res.output.split())


def test_friendly_errors(tmp_path):
    res = runner.invoke(app, ["evaluate", str(tmp_path)])
    assert res.exit_code == 2 and "not a privsplit model folder" in res.output
    res = runner.invoke(app, ["train", "--dataset", "imagenet", "--out", str(tmp_path / "r")])
    assert res.exit_code == 2 and "unknown dataset 'imagenet'" in res.output
    (tmp_path / "l.csv").write_text("path,identity\nx.png,a\n")
    res = runner.invoke(app, ["train", "--dataset", str(tmp_path / "l.csv"), "--out", str(tmp_path / "r")])
    assert res.exit_code == 2 and "label column 'gender' not found" in res.output
