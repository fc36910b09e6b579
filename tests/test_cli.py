"""The CLI end to end on a small synthetic dataset: train -> evaluate -> embed -> attack, and friendly errors."""
from __future__ import annotations

import json
import os

os.environ["COLUMNS"] = "200"  # rich wraps tables at the terminal width; keep rows on one line

import pytest
from typer.testing import CliRunner

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


def test_embed_and_attack(trained):
    _, run, _ = trained
    res = runner.invoke(app, ["embed", str(run), "--kind", "noisy-reduced-simple", "--layer", "conv5_3", "--dim", "4",
                              "--noise", "0.5"])
    assert res.exit_code == 0, res.output
    bundle = run / "bundles" / "noisy-reduced-simple-conv5_3"
    assert (bundle / "client" / "client.json").exists() and "sends [4] floats per image" in res.output
    res = runner.invoke(app, ["attack", str(bundle), "--kind", "nn"])
    assert res.exit_code == 0, res.output
    row = json.loads((bundle / "attacks" / "nn.json").read_text())
    assert row["chance_top1"] == 0.25 and 0 <= row["nn_top1"] <= 1
    res = runner.invoke(app, ["attack", str(bundle), "--kind", "rank"])
    assert res.exit_code == 0, res.output
    rank = json.loads((bundle / "attacks" / "rank.json").read_text())
    assert 0 <= rank["rank_privacy"] <= 1 and rank["identities"] == 4
    res = runner.invoke(app, ["attack", str(bundle), "--kind", "reconstruction", "--epochs", "1"])
    assert res.exit_code == 0, res.output
    recon = json.loads((bundle / "attacks" / "reconstruction.json").read_text())
    assert 0 < recon["figures"]["ssim"]["value"] <= 1 and (bundle / "attacks" / "reconstruction.png").exists()


def test_friendly_errors(tmp_path):
    res = runner.invoke(app, ["evaluate", str(tmp_path)])
    assert res.exit_code == 2 and "not a privsplit model folder" in res.output
    res = runner.invoke(app, ["train", "--dataset", "imagenet", "--out", str(tmp_path / "r")])
    assert res.exit_code == 2 and "unknown dataset 'imagenet'" in res.output
    (tmp_path / "l.csv").write_text("path,identity\nx.png,a\n")
    res = runner.invoke(app, ["train", "--dataset", str(tmp_path / "l.csv"), "--out", str(tmp_path / "r")])
    assert res.exit_code == 2 and "label column 'gender' not found" in res.output
