"""The procedural synthetic face generator: layout, labels, determinism, cache, learnability."""
from __future__ import annotations

import csv
import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from privsplit.data.errors import DataError
from privsplit.data.synthetic import (
    EXPRESSIONS,
    STAMP_NAME,
    generate_synthetic_faces,
    render_face,
    sample_identity,
)

SMALL = {"n_identities": 12, "images_per_identity": 6, "size": 32}


def _digest(root: Path) -> dict[str, str]:
    """SHA-256 of every file under root (except the parameter stamp), by relative path."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != STAMP_NAME
    }


def _pixels(manifest) -> np.ndarray:
    return np.stack(
        [np.asarray(Image.open(manifest.root / p), dtype=np.float32).ravel() / 255 for p in manifest.paths]
    )


def test_layout_labels_and_balance(tmp_path: Path) -> None:
    m = generate_synthetic_faces(tmp_path, **SMALL)
    assert len(m) == 12 * 6
    assert m.synthetic is True and m.name == "synthetic" and "synthetic" in m.label and m.crop == 1.0
    with (tmp_path / "labels.csv").open(newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["path", "identity", "gender", "expression"]
    assert len(rows) == 1 + 72
    pngs = sorted((tmp_path / "images").rglob("*.png"))
    assert len(pngs) == 72
    assert sorted(str(p.relative_to(tmp_path)) for p in pngs) == sorted(m.paths)
    for path, ident in zip(m.paths, m.column("identity")):
        assert path.startswith(f"images/{ident}/{ident}_") and path.endswith(".png")
    img = Image.open(tmp_path / m.paths[0])
    assert img.mode == "RGB" and img.size == (32, 32)

    ids, genders = m.column("identity"), m.column("gender")
    assert Counter(ids) == {f"synth_{i:04d}": 6 for i in range(12)}
    by_identity: dict[str, set[str]] = {}
    for ident, g in zip(ids, genders):
        by_identity.setdefault(ident, set()).add(g)
    assert all(len(gs) == 1 for gs in by_identity.values())  # one gender per identity
    assert Counter(next(iter(gs)) for gs in by_identity.values()) == {"M": 6, "F": 6}
    expr = m.column("expression")
    assert set(expr) == {"neutral", "happy", "sad", "surprise", "anger"}
    for ident in by_identity:  # expressions cycle within an identity: 6 images -> 5 distinct
        assert len({e for i, e in zip(ids, expr) if i == ident}) == 5


def test_deterministic_and_seed_dependent(tmp_path: Path) -> None:
    a = _digest_of(tmp_path / "a", seed=3)
    b = _digest_of(tmp_path / "b", seed=3)
    c = _digest_of(tmp_path / "c", seed=4)
    assert a == b
    assert a.keys() == c.keys()
    differing = sum(a[k] != c[k] for k in a if k.endswith(".png"))
    assert differing == len([k for k in a if k.endswith(".png")])


def _digest_of(out: Path, seed: int) -> dict[str, str]:
    generate_synthetic_faces(out, seed=seed, **SMALL)
    return _digest(out)


def test_images_vary_within_identity(tmp_path: Path) -> None:
    m = generate_synthetic_faces(tmp_path, n_identities=2, images_per_identity=5, size=32)
    x = _pixels(m)
    diffs = [np.abs(x[i] - x[j]).mean() for i in range(5) for j in range(i + 1, 5)]
    assert min(diffs) > 0.01  # jitter, lighting, background and noise change every image


def test_cache_reuses_and_invalidates(tmp_path: Path) -> None:
    m1 = generate_synthetic_faces(tmp_path, **SMALL)
    first_pixels = Image.open(tmp_path / m1.paths[0]).tobytes()
    files = [tmp_path / "labels.csv", *(tmp_path / p for p in m1.paths)]
    mtimes = {f: f.stat().st_mtime_ns for f in files}
    stamp = json.loads((tmp_path / STAMP_NAME).read_text())
    assert stamp["n_identities"] == 12 and stamp["seed"] == 0

    m2 = generate_synthetic_faces(tmp_path, **SMALL)
    assert {f: f.stat().st_mtime_ns for f in files} == mtimes
    assert m2.paths == m1.paths and m2.columns == m1.columns and m2.synthetic

    m3 = generate_synthetic_faces(tmp_path, **{**SMALL, "images_per_identity": 4})
    assert len(m3) == 48
    assert len(list((tmp_path / "images").rglob("*.png"))) == 48  # old images replaced
    assert (tmp_path / "labels.csv").stat().st_mtime_ns != mtimes[tmp_path / "labels.csv"]
    m4 = generate_synthetic_faces(tmp_path, **{**SMALL, "images_per_identity": 4, "seed": 1})
    assert m4.paths == m3.paths
    assert Image.open(tmp_path / m4.paths[0]).tobytes() != first_pixels

    (tmp_path / "images" / "notes.txt").write_text("user file")  # not ours: survives regeneration
    (tmp_path / m4.paths[5]).unlink()  # a missing image invalidates the cache
    m5 = generate_synthetic_faces(tmp_path, **{**SMALL, "images_per_identity": 4, "seed": 1})
    assert (tmp_path / m5.paths[5]).is_file()
    assert (tmp_path / "images" / "notes.txt").read_text() == "user file"


@pytest.mark.parametrize(
    "kwargs",
    [{"n_identities": 1}, {"images_per_identity": 0}, {"size": 8}, {"seed": -1}, {"expressions": ("happy", "bored")},
     {"expressions": ()}, {"expressions": ("sad", "sad")}],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict) -> None:
    with pytest.raises(DataError):
        generate_synthetic_faces(tmp_path, **{**SMALL, **kwargs})
    assert not (tmp_path / "labels.csv").exists()


def test_render_face_expressions_change_the_face() -> None:
    face = sample_identity(np.random.default_rng(0), "F")
    imgs = {e: render_face(face, e, np.random.default_rng(1), 64) for e in EXPRESSIONS}
    assert all(im.shape == (64, 64, 3) and im.dtype == np.uint8 for im in imgs.values())
    # same pose/lighting rng: only the expression differs, and it changes the face
    for e in EXPRESSIONS:
        if e != "neutral":
            assert np.abs(imgs[e].astype(int) - imgs["neutral"].astype(int)).max() > 60
    with pytest.raises(DataError):
        render_face(face, "bored", np.random.default_rng(0), 32)


def test_learnable_gender_and_identity(tmp_path: Path) -> None:
    """Raw-pixel baselines: gender transfers to unseen identities, identity is recognisable."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier

    m = generate_synthetic_faces(tmp_path, n_identities=40, images_per_identity=8, size=32, seed=0)
    x = _pixels(m)
    ids, genders = np.array(m.column("identity")), np.array(m.column("gender"))

    train_ids = np.unique(ids)[:30]
    train = np.isin(ids, train_ids)
    assert set(genders[~train]) == {"M", "F"}
    clf = LogisticRegression(C=1.0, max_iter=2000).fit(x[train], genders[train])
    gender_acc = float((clf.predict(x[~train]) == genders[~train]).mean())
    assert gender_acc > 0.80, gender_acc

    k = np.array([int(p.rsplit("_", 1)[1].removesuffix(".png")) for p in m.paths])
    first_half = k < 4
    knn = KNeighborsClassifier(n_neighbors=1).fit(x[first_half], ids[first_half])
    id_acc = float((knn.predict(x[~first_half]) == ids[~first_half]).mean())
    assert id_acc > 5 / 40, id_acc
