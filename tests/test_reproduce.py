"""`privsplit reproduce` on a tiny synthetic config: all stages, resume after an interruption, same results."""
from __future__ import annotations

import json

import pytest

from privsplit.report.pipeline import load_config, reproduce

TINY = """
[synthetic]
dataset = "synthetic"
arch = "vgg16"
width = 0.0625
size = 32
epochs = 1
layers = ["conv5_3"]
siamese_epochs = 1
attack_epochs = 1
attack_restarts = 1
audit_seeds = 1
audit_options = { metric = { epochs = 2 } }
audit_attacks = ["1-nn", "likelihood"]  # the audit's plumbing; the attacks have their own tests
attack_head = "mlp"
per_identity = 20
n_train = 15
tradeoff_layers = ["conv5_3"]
sigmas = [0.0, 1.0]
tradeoff_transfer = false
recon_epochs = 1
recon_sigma = 0.5
cost_models = []  # the cost stage has its own tests (tests/test_cost.py); it needs fresh processes
defences = ["robust-advanced:0.5:1", "gaussian-split:1"]
seed = 0
"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("repro")
    import os

    os.environ["PRIVSPLIT_CACHE"] = str(root / "cache")
    (root / "tiny.toml").write_text(TINY)
    full = reproduce("synthetic", root / "full", config=root / "tiny.toml")
    reproduce("synthetic", root / "resumed", config=root / "tiny.toml", stop_after="embeddings")
    return root, full


def test_config_defaults_and_quick():
    full, quick = load_config("lfw"), load_config("lfw", quick=True)
    assert full["layers"] == ["conv5_1", "conv5_2", "conv5_3"] and quick["layers"] == ["conv5_3"]
    assert quick["epochs"] < full["epochs"] and quick["quick"] and not full["quick"]
    # LFW reports run on the identity-bearing backbone (the paper's path); CK+ keeps training from scratch
    assert full["backbone"] == quick["backbone"] == "identity" and load_config("ckplus").get("backbone") is None
    with pytest.raises(ValueError, match=r"no \[imagenet\] table"):
        load_config("imagenet")


def test_report_has_every_section(runs):
    root, report = runs
    text = report.read_text()
    for needle in ("## Primary model", "Table I/II analogue", "Fig. 9/12a analogue", "Fig. 10/12b analogue",
                   "Fig. 11 analogue",
                   "synthetic faces", "primary-label floor"):
        assert needle in text, needle
    html = (root / "full" / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 3  # figures embedded: the page is self-contained
    rows = json.loads((root / "full" / "figures" / "embeddings.json").read_text())
    assert [r["embedding"] for r in rows] == ["simple", "reduced-simple", "siamese", "reduced-siamese"]
    assert (root / "full" / "figures" / "tradeoff.csv").read_text().startswith("embedding,layer,sigma")
    assert "Defences beside the baselines" in text and "robust-advanced (dim 1)" in text
    points = json.loads((root / "full" / "figures" / "defences.json").read_text())
    assert [(r["defence"], r["knob"], r["dim"]) for r in points] == [("robust-advanced", 0.5, 1),
                                                                     ("gaussian-split", 1.0, None)]
    assert all(0 <= r["worst_top1"] <= 1 and r["worst_top1_ci95"][0] <= r["worst_top1"] for r in points)


def test_resume_skips_finished_stages_and_reproduces(runs):
    root, _ = runs
    stages = root / "resumed" / "stages"
    assert sorted(p.stem for p in stages.glob("*.json")) == ["embeddings", "train"]
    assert json.loads((root / "full" / "stages" / "cost.json").read_text())["result"] == {
        "skipped": "no cost_models in the config"}
    before = {p.name: p.stat().st_mtime_ns for p in stages.glob("*.json")}
    reproduce("synthetic", root / "resumed", config=root / "tiny.toml")
    assert {p.name: p.stat().st_mtime_ns for p in stages.glob("*.json") if p.name in before} == before
    for name in ("embeddings", "tradeoff"):
        a = json.loads((root / "full" / "stages" / f"{name}.json").read_text())["result"]
        b = json.loads((stages / f"{name}.json").read_text())["result"]
        assert a == b, name


def test_interrupted_stage_resumes_from_its_last_finished_row(runs, monkeypatch, capsys):
    """An embeddings stage killed after its first row reruns only the other rows, with the same result."""
    import shutil

    import privsplit.report.experiments as experiments

    root, _ = runs
    out = root / "rows"
    shutil.copytree(root / "full", out)
    (out / "stages" / "embeddings.json").unlink()
    real_attacks, real_build = experiments.identity_attacks, experiments.build_embedding
    calls = []

    def interrupted(*args, **kwargs):
        if calls:
            raise RuntimeError("interrupted")
        calls.append(1)
        return real_attacks(*args, **kwargs)

    monkeypatch.setattr(experiments, "identity_attacks", interrupted)
    with pytest.raises(RuntimeError, match="interrupted"):
        reproduce("synthetic", out, config=root / "tiny.toml")
    lines = (out / "stages" / "embeddings.rows.jsonl").read_text().splitlines()
    assert [json.loads(line)["id"] for line in lines] == ["conv5_3/simple"]

    built = []
    monkeypatch.setattr(experiments, "identity_attacks", real_attacks)
    monkeypatch.setattr(experiments, "build_embedding", lambda kind, *a, **k: built.append(kind) or real_build(kind, *a, **k))
    capsys.readouterr()
    reproduce("synthetic", out, config=root / "tiny.toml")
    assert built == ["reduced-simple", "siamese", "reduced-siamese"]
    assert "embeddings: 1/4 done earlier, reused" in capsys.readouterr().err
    assert not (out / "stages" / "embeddings.rows.jsonl").exists()
    a = json.loads((root / "full" / "stages" / "embeddings.json").read_text())["result"]
    assert json.loads((out / "stages" / "embeddings.json").read_text())["result"] == a


def test_interrupted_reconstruction_resumes_at_the_next_decoder(runs, monkeypatch, capsys):
    """The reconstruction stage keeps each finished decoder's row and grid: a rerun trains only the rest,
    gives the full run's rows and figure, and removes its piece files once the stage is done."""
    import shutil

    import privsplit.report.stages as stages

    root, _ = runs
    out = root / "recon"
    shutil.copytree(root / "full", out)
    for name in ("reconstruction", "cost", "defences", "report"):
        (out / "stages" / f"{name}.json").unlink(missing_ok=True)
    (out / "figures" / "fig_reconstruction.png").unlink()
    real, trained = stages._reconstruct_one, []

    def interrupted(ctx, art, p, kind, *args):
        if trained:
            raise RuntimeError("interrupted")
        trained.append(kind)
        return real(ctx, art, p, kind, *args)

    monkeypatch.setattr(stages, "_reconstruct_one", interrupted)
    with pytest.raises(RuntimeError, match="interrupted"):
        reproduce("synthetic", out, config=root / "tiny.toml")
    assert len(list((out / "stages" / "reconstruction.pieces").glob("simple-*.pt"))) == 1

    monkeypatch.setattr(stages, "_reconstruct_one", lambda ctx, art, p, kind, *a: trained.append(kind) or real(
        ctx, art, p, kind, *a))
    capsys.readouterr()
    reproduce("synthetic", out, config=root / "tiny.toml")
    assert trained == ["simple", "siamese", "advanced"]  # "simple" trained once, before the interruption
    assert "reconstruction: 1/3 done earlier, reused" in capsys.readouterr().err
    assert not (out / "stages" / "reconstruction.pieces").exists()
    assert (out / "figures" / "fig_reconstruction.png").exists()
    a = json.loads((root / "full" / "stages" / "reconstruction.json").read_text())["result"]
    assert json.loads((out / "stages" / "reconstruction.json").read_text())["result"] == a


def test_reconstruction_section_says_when_dlib_is_not_independent(tmp_path):
    """With a dlib-distilled backbone the rows carry a note, and the report must not call dlib independent."""
    from types import SimpleNamespace

    from privsplit.report.document import Document
    from privsplit.report.render import _reconstruction

    row = {"embedding": "simple", "layer": "conv5_3", "ssim": 0.5, "psnr": 16.0, "identity_match": 0.25}
    texts = {}
    for name, rows in {"scratch": [row], "distilled": [{**row, "identity_match_note": "NOT independent"}]}.items():
        doc = Document("t")
        _reconstruction(doc, SimpleNamespace(results={"reconstruction": rows}, figure=lambda n: tmp_path / n))
        texts[name] = doc.markdown(tmp_path)
    assert "independent recognizer's verdict" in texts["scratch"] and "NOT independent" not in texts["scratch"]
    assert "dlib identity match (NOT independent)" in texts["distilled"]
    assert "**not independent**" in texts["distilled"] and "independent recognizer's" not in texts["distilled"]
