"""Manifests, loaders (CSV, CelebA, LFW layout builder), decoding errors, cache, splits, augmentation."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from privsplit.data import (
    DataError, Manifest, Preprocess, augment, build_lfw_labels, celeba, csv_manifest, decode_image,
    decode_manifest, identity_disjoint_split, load_faces, load_manifest, normalize,
)
from privsplit.data.splits import Splits


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PRIVSPLIT_CACHE", str(tmp_path / "cache"))


def _image_folder(root, n=6, size=20, gray=False):
    (root / "img").mkdir(parents=True)
    rows = ["path,identity,gender"]
    for i in range(n):
        arr = np.full((size, size, 3), i * 30, np.uint8)
        arr[:, : size // 2, 0] = 255
        img = Image.fromarray(arr).convert("L") if gray else Image.fromarray(arr)
        img.save(root / "img" / f"{i}.png")
        rows.append(f"img/{i}.png,p{i // 2},{'MF'[i % 2] if i != 5 else ''}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


def test_csv_manifest_and_labels(tmp_path):
    m = csv_manifest(_image_folder(tmp_path) / "labels.csv")
    assert len(m) == 6 and m.column("identity")[:3] == ("p0", "p0", "p1")
    faces = load_faces(m, Preprocess(size=16), columns=["gender", "identity"], required=["gender"], progress=False)
    assert faces.images.shape == (5, 3, 16, 16) and faces.images.dtype == torch.uint8
    assert faces.classes["gender"] == ["F", "M"] and faces.labels["gender"].tolist() == [1, 0, 1, 0, 1]
    assert faces.skipped == [("img/5.png", "empty label in column(s) gender")]
    assert load_manifest(str(tmp_path / "labels.csv")).paths == m.paths


def test_missing_column_error_names_column(tmp_path):
    m = csv_manifest(_image_folder(tmp_path) / "labels.csv")
    with pytest.raises(DataError, match=r"label column 'emotion' not found .* available columns: gender, identity"):
        load_faces(m, Preprocess(size=16), columns=["emotion"], progress=False)
    (tmp_path / "bad.csv").write_text("file,identity\nx.png,a\n")
    with pytest.raises(DataError, match=r"no 'path' column \(columns: file, identity\)"):
        csv_manifest(tmp_path / "bad.csv")


def test_corrupt_and_missing_images(tmp_path):
    root = _image_folder(tmp_path)
    (root / "img" / "2.png").write_bytes(b"not a png at all")
    (root / "img" / "4.png").unlink()
    m = csv_manifest(root / "labels.csv")
    with pytest.raises(DataError, match=r"cannot decode image .*img/2\.png"):
        decode_manifest(m, Preprocess(size=16), progress=False, workers=1)
    out = decode_manifest(m, Preprocess(size=16), skip_bad=True, progress=False)
    assert out.kept.tolist() == [0, 1, 3, 5] and len(out.skipped) == 2
    assert "image not found" in out.skipped[1][1] and out.skipped[1][0] == "img/4.png"
    # the cached result must still refuse without skip_bad, naming the file
    with pytest.raises(DataError, match=r"img/2\.png.*skip_bad=True / --skip-bad to skip 2 bad rows"):
        decode_manifest(m, Preprocess(size=16), progress=False)


def test_cache_reused_and_keyed_by_preprocessing(tmp_path):
    m = csv_manifest(_image_folder(tmp_path) / "labels.csv")
    a = decode_manifest(m, Preprocess(size=16), progress=False)
    (tmp_path / "img" / "0.png").unlink()  # a cache hit never touches the files... but fingerprint sees it
    with pytest.raises(DataError, match="image not found"):
        decode_manifest(m, Preprocess(size=16), progress=False)
    m2 = csv_manifest(_image_folder(tmp_path / "again") / "labels.csv")
    b = decode_manifest(m2, Preprocess(size=16), progress=False)
    c = decode_manifest(m2, Preprocess(size=16), progress=False)
    assert torch.equal(a.images, b.images) and torch.equal(b.images, c.images)
    assert len(list((tmp_path / "cache").glob("images-*.safetensors"))) == 2


def test_grayscale_becomes_three_channels_and_crop(tmp_path):
    root = _image_folder(tmp_path, gray=True)
    arr = decode_image(root / "img" / "1.png", Preprocess(size=8, crop=0.5))
    assert arr.shape == (8, 8, 3) and (arr[..., 0] == arr[..., 2]).all()
    # centre crop of 0.5 keeps the boundary between the two halves in the middle
    full = decode_image(root / "img" / "1.png", Preprocess(size=20))
    assert full[0, 0, 0] != full[0, -1, 0]


def test_normalize_and_augment_are_seeded():
    x = normalize(torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8), Preprocess(size=16))
    assert abs(float(normalize(torch.full((1, 3, 2, 2), 127.5), Preprocess(size=16)).abs().max())) < 1e-6
    a = augment(x, torch.Generator().manual_seed(3))
    b = augment(x, torch.Generator().manual_seed(3))
    c = augment(x, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c) and a.shape == x.shape
    plain = augment(x, torch.Generator().manual_seed(0), shift=0, jitter=0.0)
    assert all(torch.equal(p, o) or torch.equal(p, o.flip(2)) for p, o in zip(plain, x))


def test_identity_disjoint_split_roundtrip(tmp_path):
    ids = [f"id{i}" for i in range(30) for _ in range(1 + i % 5)] + ["big"] * 25 + ["huge"] * 40
    s = identity_disjoint_split(ids, attack_min_images=20, test_fraction=0.2, seed=1)
    groups = [set(np.asarray(ids)[part]) for part in (s.train, s.test, s.attack)]
    assert groups[2] == {"big", "huge"} and not (groups[0] & groups[1])
    assert len(s.train) + len(s.test) + len(s.attack) == len(ids) and len(groups[1]) == 6
    s.to_json(tmp_path / "splits.json")
    back = Splits.from_json(tmp_path / "splits.json", ids)
    assert all(np.array_equal(getattr(s, p), getattr(back, p)) for p in ("train", "test", "attack"))
    assert not np.array_equal(identity_disjoint_split(ids, seed=2).test, s.test)


def test_per_identity_split_balanced_and_grouped():
    from privsplit.data import per_identity_split

    ids = ["a"] * 25 + ["b"] * 20 + ["c"] * 3
    tr, te = per_identity_split(ids, per_identity=20, n_train=15, seed=0)
    assert len(tr) == 30 and len(te) == 10 and not set(tr) & set(te)
    assert sorted(np.unique(np.asarray(ids)[te], return_counts=True)[1].tolist()) == [5, 5]  # balanced, no 'c'
    # CK+-like: 3 near-identical frames per sequence; a sequence must never be split across train/test
    ids = [f"s{i}" for i in range(4) for _ in range(12)]
    seqs = [f"s{i}_{k // 3}" for i in range(4) for k in range(12)]
    tr, te = per_identity_split(ids, per_identity=12, n_train=9, groups=seqs, seed=1)
    assert not set(np.asarray(seqs)[tr]) & set(np.asarray(seqs)[te])
    assert len(te) == 12 and len(tr) == 36
    with pytest.raises(ValueError, match="n_train=20 must be between 1 and per_identity-1=19"):
        per_identity_split(ids, per_identity=20, n_train=20)


def test_celeba_layout(tmp_path):
    (tmp_path / "img_align_celeba").mkdir()
    for i in range(1, 4):
        Image.fromarray(np.full((218, 178, 3), 40 * i, np.uint8)).save(tmp_path / "img_align_celeba" / f"00000{i}.jpg")
    (tmp_path / "identity_CelebA.txt").write_text("000001.jpg 7\n000002.jpg 7\n000003.jpg 9\n")
    (tmp_path / "list_attr_celeba.txt").write_text(
        "3\nSmiling Male Young\n000001.jpg 1 -1 1\n000002.jpg -1 -1 1\n000003.jpg 1  1 -1\n")
    m = celeba(tmp_path)
    assert m.column("gender") == ("F", "F", "M") and m.column("identity") == ("7", "7", "9")
    assert m.column("Smiling") == ("1", "-1", "1") and m.crop == 0.8
    faces = load_faces(m, Preprocess(size=16, crop=m.crop), columns=["gender"], progress=False)
    assert faces.images.shape == (3, 3, 16, 16)
    (tmp_path / "identity_CelebA.txt").write_text("000001.jpg 7\n")
    with pytest.raises(DataError, match="no identity for 000002.jpg"):
        celeba(tmp_path)


def test_build_lfw_labels_from_lists(tmp_path):
    for person, n in (("Ann_A", 2), ("Bob_B", 2), ("Cy_C", 1)):
        (tmp_path / "images" / person).mkdir(parents=True)
        for k in range(1, n + 1):
            Image.fromarray(np.zeros((250, 250, 3), np.uint8)).save(tmp_path / "images" / person / f"{person}_{k:04d}.jpg")
    (tmp_path / "male.txt").write_text("Bob_B_0001.jpg\r\nBob_B_0002.jpg\r\nAnn_A_0002.jpg\r\n")
    (tmp_path / "female.txt").write_text("Ann_A_0002.jpg\r\n")
    m = build_lfw_labels(tmp_path, tmp_path / "male.txt", tmp_path / "female.txt")
    got = dict(zip(m.paths, m.column("gender")))
    assert got == {"images/Ann_A/Ann_A_0001.jpg": "F", "images/Ann_A/Ann_A_0002.jpg": "F",
                   "images/Bob_B/Bob_B_0001.jpg": "M", "images/Bob_B/Bob_B_0002.jpg": "M",
                   "images/Cy_C/Cy_C_0001.jpg": ""}
    assert Manifest.from_csv(tmp_path / "labels.csv").column("identity_idx") == ("0", "0", "1", "1", "2")


def test_unknown_dataset_error():
    with pytest.raises(DataError, match="unknown dataset 'imagenet'; choose one of lfw, ckplus"):
        load_manifest("imagenet")


@pytest.mark.data
def test_lfw_layout_and_attack_split(lfw_dir):
    m = load_manifest("lfw", lfw_dir)
    assert len(m) == 13233 and len(set(m.column("identity"))) == 5749
    s = identity_disjoint_split(m.column("identity"), attack_min_images=20)
    assert len(s.identities["attack"]) == 62
    assert not set(s.identities["test"]) & set(s.identities["train"])


@pytest.mark.data
def test_ckplus_layout(ckplus_dir):
    m = load_manifest("ckplus", ckplus_dir)
    assert len(m) == 981 and len(set(m.column("expression"))) == 7 and len(set(m.column("identity"))) == 118
