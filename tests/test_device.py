"""Device preprocessing: detection (stub / dlib HOG), 5-point alignment to LFW's framing, no-face errors,
the largest face, ``--align`` in training and the client, and the device client's light imports.

The labelled "wild" set is generated: synthetic faces pasted at random position, scale and rotation onto
random backgrounds; its ground-truth landmarks feed :class:`StubDetector` (dlib does not fire on drawn faces).
"""
from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from privsplit.data.synthetic import render_face, sample_identity
from privsplit.data.transforms import Preprocess, decode_image, prepare_faces, prepare_image
from privsplit.data.align import (
    DETECTORS, Face, NoFaceError, StubDetector, _similarity, detect, pixel_key, set_detector, template,
)

CROP, SIZE = 0.6, 32


def _paste(canvas: np.ndarray, face: np.ndarray, side: float, angle: float, cx: float, cy: float) -> np.ndarray:
    """Paste ``face`` (the unit square) scaled to ``side`` px, rotated by ``angle`` and centred on (cx, cy);
    returns the 5 landmarks that :func:`template` puts in that square, in canvas pixels."""
    c, s = math.cos(angle), math.sin(angle)
    rot = np.array([[c, -s], [s, c]])
    # canvas corner-coordinates -> face-image corner-coordinates (inverse of unit -> canvas)
    inv = rot.T * (face.shape[0] / side)
    off = np.array([face.shape[1] / 2, face.shape[0] / 2]) - inv @ np.array([cx, cy])
    coeffs = (inv[0, 0], inv[0, 1], off[0], inv[1, 0], inv[1, 1], off[1])
    h, w = canvas.shape[:2]
    warped = Image.fromarray(face).transform((w, h), Image.Transform.AFFINE, coeffs, resample=Image.Resampling.BILINEAR)
    mask = Image.new("L", face.shape[1::-1], 255).transform((w, h), Image.Transform.AFFINE, coeffs,
                                                            resample=Image.Resampling.BILINEAR)
    m = np.asarray(mask, dtype=np.float32)[..., None] / 255
    canvas[:] = (canvas * (1 - m) + np.asarray(warped) * m).round().astype(np.uint8)
    unit = template(CROP) - 0.5
    return (rot @ (unit * side).T).T + np.array([cx, cy]) - 0.5  # corner -> dlib's pixel-centre coordinates


def wild_faces(n: int = 10, seed: int = 0, canvas: tuple[int, int] = (200, 260)):
    """``n`` labelled photos: (photo, the face as rendered, gender, its Face) with random framing."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        gender = "MF"[i % 2]
        face = render_face(sample_identity(rng, gender), "neutral", rng, size=96)
        h, w = canvas
        photo = (rng.uniform(0, 255, (1, 1, 3)) * np.linspace(0.3, 1, w)[None, :, None]
                 + rng.normal(0, 20, (h, w, 3))).clip(0, 255).astype(np.uint8)
        side = rng.uniform(70, 130)
        cx, cy = rng.uniform(side / 2 + 5, w - side / 2 - 5), rng.uniform(side / 2 + 5, h - side / 2 - 5)
        pts = _paste(photo, face, side, math.radians(rng.uniform(-15, 15)), cx, cy)
        box = (pts[:, 0].min() - side / 4, pts[:, 1].min() - side / 4, pts[:, 0].max() + side / 4, pts[:, 1].max() + side / 4)
        out.append((photo, face, gender, Face(box, pts)))
    return out


@pytest.fixture
def stub():
    """The registry's ``stub`` detector, filled per test, emptied afterwards."""
    det = StubDetector()
    set_detector("stub", det)
    yield det
    set_detector("stub", StubDetector())


def _reference(face: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(face).resize((SIZE, SIZE), Image.Resampling.BILINEAR, reducing_gap=2.0),
                      dtype=np.float32)


def test_alignment_recovers_the_training_framing(stub):
    """Aligned crops match the face as rendered (the training framing); centre crops of the same photos don't."""
    data = wild_faces(10)
    for photo, _, _, face in data:
        stub.faces[pixel_key(photo)] = [face]
    aligned_pre, centre_pre = Preprocess(size=SIZE, crop=CROP, align="stub"), Preprocess(size=SIZE, crop=CROP)
    aligned = [np.abs(prepare_image(p, aligned_pre).astype(np.float32) - _reference(f)).mean() for p, f, _, _ in data]
    centre = [np.abs(prepare_image(p, centre_pre).astype(np.float32) - _reference(f)).mean() for p, f, _, _ in data]
    assert max(aligned) < 6, aligned  # grey levels: resampling blur only (measured 1.2..3.1)
    assert min(centre) > 2 * max(aligned) and np.mean(centre) > 4 * np.mean(aligned), (aligned, centre)


def test_similarity_fit_is_exact_for_a_similarity():
    rng = np.random.default_rng(1)
    src = rng.normal(size=(5, 2))
    ang, s, t = 0.3, 2.5, np.array([4.0, -1.0])
    rot = np.array([[math.cos(ang), -math.sin(ang)], [math.sin(ang), math.cos(ang)]])
    s2, r2, t2 = _similarity(src, (s * rot @ src.T).T + t)
    assert s2 == pytest.approx(s) and np.allclose(r2, rot) and np.allclose(t2, t)


def test_identity_alignment_reproduces_an_lfw_crop(stub):
    """Landmarks exactly at LFW's mean positions in a 250 px frame: alignment = today's centre crop (same resize)."""
    from privsplit.data.align import LFW_LANDMARKS

    photo = np.random.default_rng(2).integers(0, 256, (250, 250, 3), dtype=np.uint8)
    photo = np.asarray(Image.fromarray(photo).resize((25, 25)).resize((250, 250), Image.Resampling.BILINEAR))
    stub.faces[pixel_key(photo)] = [Face((0, 0, 250, 250), LFW_LANDMARKS * 250 - 0.5)]
    a = prepare_image(photo, Preprocess(size=SIZE, crop=CROP, align="stub")).astype(int)
    c = prepare_image(photo, Preprocess(size=SIZE, crop=CROP)).astype(int)
    assert np.abs(a - c).mean() < 2.0  # sub-pixel resampling differences only


def test_no_face_is_a_clear_per_image_error(stub, tmp_path):
    photo = wild_faces(1)[0][0]
    pre = Preprocess(size=SIZE, crop=CROP, align="stub")
    with pytest.raises(NoFaceError, match="no face found in image"):
        prepare_image(photo, pre)
    Image.fromarray(photo).save(tmp_path / "beach.png")
    with pytest.raises(NoFaceError, match=r"no face found in .*beach\.png"):
        decode_image(tmp_path / "beach.png", pre)


def test_largest_face_by_default_and_all_faces_on_request(stub):
    rng = np.random.default_rng(5)
    photo = np.full((220, 320, 3), 90, np.uint8)
    small = render_face(sample_identity(rng, "F"), "neutral", rng, size=96)
    big = render_face(sample_identity(rng, "M"), "neutral", rng, size=96)
    faces = [Face((0, 0, 60, 60), _paste(photo, small, 60, 0.0, 60, 110)),
             Face((0, 0, 120, 120), _paste(photo, big, 120, 0.0, 220, 110))]
    faces = [dataclasses.replace(f, box=(*(f.landmarks.min(0) - 10), *(f.landmarks.max(0) + 10))) for f in faces]
    stub.faces[pixel_key(photo)] = faces
    pre = Preprocess(size=SIZE, crop=CROP, align="stub")
    one = prepare_faces(photo, pre)
    both = prepare_faces(photo, pre, all_faces=True)
    assert len(one) == 1 and len(both) == 2
    np.testing.assert_array_equal(one[0], both[0])
    err_big = np.abs(both[0].astype(np.float32) - _reference(big)).mean()
    err_small = np.abs(both[1].astype(np.float32) - _reference(small)).mean()
    assert err_big < 12 and err_small < 15, (err_big, err_small)
    assert [f.area for f in detect(photo, "stub", all_faces=True)] == sorted((f.area for f in faces), reverse=True)


def test_preprocess_records_align_only_when_set():
    assert "align" not in Preprocess(size=32).to_dict()  # old manifests and decode caches unchanged
    pre = Preprocess(size=32, crop=0.6, align="dlib-hog")
    assert Preprocess.from_dict(json.loads(json.dumps(pre.to_dict()))) == pre
    assert Preprocess.from_dict({"size": 32, "crop": 1.0, "mean": [0.5] * 3, "std": [0.25] * 3}).align == "none"
    with pytest.raises(ValueError, match="align='mtcnn': use 'none' .* or a face detector: dlib-hog, stub"):
        Preprocess(align="mtcnn")
    assert DETECTORS.names()[:2] == ["dlib-hog", "stub"]


def test_training_decode_skips_photos_without_a_face(stub, tmp_path):
    from privsplit.data.images import decode_manifest
    from privsplit.data.manifest import Manifest

    data = wild_faces(4, seed=3)
    rows = []
    for i, (photo, _, gender, face) in enumerate(data):
        Image.fromarray(photo).save(tmp_path / f"{i}.png")
        if i != 2:  # photo 2: the detector finds nothing
            stub.faces[pixel_key(photo)] = [face]
        rows.append(f"{i}.png,{gender},{i}")
    (tmp_path / "labels.csv").write_text("path,gender,identity\n" + "\n".join(rows) + "\n")
    m = Manifest.from_csv(tmp_path / "labels.csv", name="wild")
    pre = Preprocess(size=SIZE, crop=CROP, align="stub")
    with pytest.raises(NoFaceError, match=r"no face found in .*2\.png"):
        decode_manifest(m, pre, progress=False, use_cache=False, workers=1)
    out = decode_manifest(m, pre, skip_bad=True, progress=False, use_cache=False, workers=1)
    assert out.kept.tolist() == [0, 1, 3] and "no face found" in out.skipped[0][1]


def test_client_prepares_like_training(stub, tmp_path):
    """A bundle whose preprocess says align: the client detects + aligns exactly like decode_image."""
    from runtime_support import build_bundles

    from privsplit.data.transforms import normalize
    from privsplit.defenses.bundles import load_client_bundle
    from privsplit.runtime.client import Client, load_images

    folder = build_bundles(tmp_path)[0][0]
    bundle = load_client_bundle(folder, deterministic_noise=True, seed=0)
    bundle = dataclasses.replace(bundle, preprocess=Preprocess(size=SIZE, crop=CROP, align="stub"))
    data = wild_faces(3, seed=4)
    for photo, _, _, face in data:
        stub.faces[pixel_key(photo)] = [face]
    client = Client(bundle, "http://127.0.0.1:9")
    photos = [p for p, _, _, _ in data]
    z = client.features(photos)
    pix = np.stack([prepare_image(p, bundle.preprocess) for p in photos])
    ref = load_client_bundle(folder, deterministic_noise=True, seed=0)
    with torch.no_grad():
        want = ref.noise(ref.extractor(normalize(torch.from_numpy(pix).permute(0, 3, 1, 2), ref.preprocess))).numpy()
    np.testing.assert_allclose(z, want, atol=1e-5)
    with pytest.raises(NoFaceError, match="no face found in image 1"):
        client.features([photos[0], np.zeros((50, 50, 3), np.uint8)])
    # already prepared crops (infer --all-faces): used as they are, same features with the same noise draws
    again = dataclasses.replace(load_client_bundle(folder, deterministic_noise=True, seed=0),
                                preprocess=bundle.preprocess)
    np.testing.assert_allclose(Client(again, "http://127.0.0.1:9").features(pix, prepared=True), z, atol=1e-6)
    with pytest.raises(ValueError, match=r"prepared images must be uint8 N x 32 x 32 x 3, got uint8 \(1, 8, 8, 3\)"):
        client.features(np.zeros((1, 8, 8, 3), np.uint8), prepared=True)
    # a centre-crop bundle + detector="stub" (privsplit infer --align): the same aligned pixels
    centre = dataclasses.replace(bundle, preprocess=Preprocess(size=SIZE, crop=CROP))
    np.testing.assert_array_equal(load_images(photos, centre.preprocess, detector="stub"), pix)
    assert not np.array_equal(load_images(photos, centre.preprocess), pix)


def test_device_client_imports_no_training_attack_or_report_code():
    code = ("import sys, privsplit.runtime.client, privsplit.data.align; "
            "print([m for m in sys.modules if m.split('.')[1:2] and m.split('.')[1] in "
            "('train', 'attacks', 'audit', 'report', 'cli') or m.endswith('runtime.server')])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


@pytest.mark.data
def test_dlib_hog_finds_and_aligns_lfw_faces(lfw_dir):
    """Real detector on 5 LFW frames: one face each, landmarks near LFW's mean, aligned crop ~ centre crop."""
    from privsplit.data.dlib_models import dlib_available

    if not dlib_available():
        pytest.skip("dlib / face_recognition_models not installed (the attacks extra)")
    rows = [line.split(",")[0] for line in (lfw_dir / "labels.csv").read_text().splitlines()[1:6]]
    pre_a, pre_c = Preprocess(size=64, crop=0.6, align="dlib-hog"), Preprocess(size=64, crop=0.6)
    for rel in rows:
        faces = detect(np.asarray(Image.open(lfw_dir / rel).convert("RGB")), "dlib-hog")
        assert np.abs(faces[0].landmarks / 250 - template(1.0)).max() < 0.08
        diff = np.abs(decode_image(lfw_dir / rel, pre_a).astype(int) - decode_image(lfw_dir / rel, pre_c)).mean()
        assert diff < 30, (rel, diff)
