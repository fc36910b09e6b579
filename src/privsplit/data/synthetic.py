"""Procedural synthetic faces: the zero-download default dataset.

Each identity has fixed geometry and colouring (face shape, skin, eyes, nose, mouth, brows, hair);
gender shifts several traits (hair length, jaw, brows, beard, lips, lashes) with some overlap; each
image picks an expression (mouth curve/opening, brow angle, eye opening) and a random pose, lighting,
background and noise. Rendering is numpy only: soft-edged shapes on a 2x supersampled grid, box
downsampled. Output is deterministic: the same arguments give byte-identical files.
"""
from __future__ import annotations

import csv
import dataclasses
import functools
import json
import math
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from privsplit.data.errors import DataError
from privsplit.data.manifest import Manifest

__all__ = ["EXPRESSIONS", "FaceIdentity", "sample_identity", "render_face", "generate_synthetic_faces"]

GENERATOR_VERSION = 1
STAMP_NAME = "synthetic_params.json"

Colour = tuple[float, float, float]
# name -> (mouth curve [+ = corners up], mouth opening, brow raise, brow tilt [+ = inner ends down],
#          eye opening, one-sided corner lift)
EXPRESSIONS: dict[str, tuple[float, float, float, float, float, float]] = {
    "neutral": (0.0, 0.0, 0.0, 0.0, 1.0, 0.0),
    "happy": (0.08, 0.035, 0.01, 0.0, 0.8, 0.0),
    "sad": (-0.06, 0.0, 0.01, -0.06, 0.85, 0.0),
    "surprise": (0.0, 0.13, 0.07, -0.01, 1.45, 0.0),
    "anger": (-0.03, 0.0, -0.03, 0.08, 0.75, 0.0),
    "fear": (-0.02, 0.06, 0.05, -0.05, 1.35, 0.0),
    "disgust": (-0.05, 0.02, -0.02, 0.05, 0.6, 0.0),
    "contempt": (0.0, 0.0, 0.0, 0.02, 0.9, 0.06),
}
_SKIN_LIGHT, _SKIN_DARK = np.array([0.97, 0.83, 0.73]), np.array([0.38, 0.25, 0.17])
_HAIR = [(0.07, 0.06, 0.05), (0.24, 0.15, 0.09), (0.45, 0.30, 0.16), (0.86, 0.72, 0.44),
         (0.62, 0.27, 0.11), (0.62, 0.61, 0.60)]
_HAIR_P = (0.35, 0.25, 0.15, 0.1, 0.08, 0.07)
_EYES = [(0.36, 0.21, 0.10), (0.22, 0.42, 0.72), (0.30, 0.52, 0.30), (0.52, 0.42, 0.22), (0.14, 0.10, 0.08)]


@dataclass(frozen=True)
class FaceIdentity:
    """Fixed appearance of one synthetic person; lengths are in face units (image half-width = 1)."""

    gender: str
    face_w: float
    face_h: float
    jaw: float
    skin: Colour
    hair: Colour
    hair_len: float
    hair_vol: float
    hairline: float
    eye_dx: float
    eye_rx: float
    eye_colour: Colour
    lash: float
    brow_thick: float
    brow_gap: float
    brow_arch: float
    nose_len: float
    mouth_w: float
    mouth_gap: float
    lip_thick: float
    lip: Colour
    beard: float


def _colour(rng: np.random.Generator, base: Sequence[float] | np.ndarray, jitter: float) -> Colour:
    c = np.clip(np.asarray(base, dtype=float) + rng.uniform(-jitter, jitter, 3), 0.0, 1.0)
    return (float(c[0]), float(c[1]), float(c[2]))


def sample_identity(rng: np.random.Generator, gender: str) -> FaceIdentity:
    """Draw one identity; ``gender`` ("M"/"F") shifts hair, jaw, brows, beard, lips and lashes."""
    male = gender == "M"

    def u(m: tuple[float, float], f: tuple[float, float] | None = None) -> float:
        lo, hi = m if male or f is None else f
        return float(rng.uniform(lo, hi))

    skin = _colour(rng, _SKIN_LIGHT + rng.uniform(0, 1) ** 1.3 * (_SKIN_DARK - _SKIN_LIGHT), 0.03)
    hair = _colour(rng, _HAIR[int(rng.choice(len(_HAIR), p=_HAIR_P))], 0.05)
    if male:  # mostly short hair, a few medium; a few bald-ish
        hair_len = u((0.25, 0.55)) if rng.random() < 0.1 else -1.0
        hairline = u((-0.78, -0.66)) if rng.random() < 0.15 else u((-0.6, -0.42))
    else:  # mostly long hair down the sides, a few bobs
        hair_len = u((0.25, 0.45)) if rng.random() < 0.1 else u((0.65, 1.2))
        hairline = u((-0.55, -0.3))
    beard = (u((0.6, 0.9)) if rng.random() < 0.5 else u((0.3, 0.5))) if male and rng.random() < 0.65 else 0.0
    lip_base = (0.75, 0.2, 0.3) if not male and rng.random() < 0.75 else np.asarray(skin) * (0.8, 0.6, 0.6)
    return FaceIdentity(
        gender=gender, face_w=u((0.5, 0.6), (0.46, 0.56)), face_h=u((0.66, 0.76), (0.62, 0.72)),
        jaw=u((0.78, 0.95), (0.55, 0.75)), skin=skin, hair=hair, hair_len=hair_len,
        hair_vol=u((0.03, 0.07), (0.11, 0.19)), hairline=hairline, eye_dx=u((0.19, 0.27)),
        eye_rx=u((0.08, 0.11), (0.09, 0.12)), eye_colour=_colour(rng, _EYES[int(rng.integers(len(_EYES)))], 0.05),
        lash=u((0.006, 0.012), (0.014, 0.024)), brow_thick=u((0.032, 0.05), (0.014, 0.026)),
        brow_gap=u((0.08, 0.12), (0.1, 0.14)), brow_arch=u((0.0, 0.02), (0.02, 0.045)), nose_len=u((0.16, 0.26)),
        mouth_w=u((0.12, 0.19)), mouth_gap=u((0.14, 0.2)), lip_thick=u((0.024, 0.036), (0.036, 0.052)),
        lip=_colour(rng, lip_base, 0.05), beard=beard,
    )


def _step(d: np.ndarray, aa: float) -> np.ndarray:
    """Soft inside-mask from a signed distance (positive inside), one supersampled pixel wide."""
    return np.clip(0.5 + d / aa, 0.0, 1.0)


@functools.lru_cache(maxsize=8)
def _grid(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in [-1, 1] of an n x n image (x right, y down); read-only."""
    g = (np.arange(n, dtype=np.float32) + 0.5) / n * 2 - 1
    X, Y = np.meshgrid(g, g)
    X.flags.writeable = Y.flags.writeable = False
    return X, Y


Window = tuple[slice, slice]
Shape = tuple[Window, np.ndarray]
_ALL: Window = (slice(None), slice(None))


class _Canvas:
    """A 2x supersampled image, a random pose (pixel -> face coordinates) and soft-edged shapes.

    Shapes are computed only inside the pixel window that covers their face-coordinate bounding box.
    """

    def __init__(self, size: int, rng: np.random.Generator) -> None:
        self.size, n = size, 2 * size
        self.X, self.Y = _grid(n)
        ang, self.scale = math.radians(rng.uniform(-8, 8)), 1 + rng.uniform(-0.05, 0.05)
        self.cos, self.sin = math.cos(ang), math.sin(ang)
        self.tx, self.ty = (float(v) for v in rng.uniform(-3 / 32, 3 / 32, 2))
        xs, ys = self.X - self.tx, self.Y - self.ty + 0.04
        self.U = (self.cos * xs + self.sin * ys) / self.scale
        self.V = (-self.sin * xs + self.cos * ys) / self.scale
        self.aa = 2.0 / n / self.scale
        grey, gdir = rng.uniform(0.45, 0.95), rng.uniform(0, 2 * math.pi)
        bg = np.asarray(_colour(rng, (grey, grey, grey), 0.12), dtype=np.float32)
        grad = rng.uniform(-0.12, 0.12) * (math.cos(gdir) * self.X + math.sin(gdir) * self.Y)
        self.img = bg + grad[..., None] + 0.03 * rng.standard_normal((n, n, 1), dtype=np.float32)

    def window(self, u0: float, u1: float, v0: float, v1: float) -> Window:
        n, k = 2 * self.size, self.size * self.scale  # face unit -> supersampled pixels
        corners = [(u, v) for u in (u0, u1) for v in (v0, v1)]
        cols = [(k * (self.cos * u - self.sin * v) + (self.tx + 1) * self.size - 0.5) for u, v in corners]
        rows = [(k * (self.sin * u + self.cos * v) + (self.ty - 0.04 + 1) * self.size - 0.5) for u, v in corners]
        return (slice(max(0, int(min(rows)) - 2), max(0, min(n, int(max(rows)) + 3))),
                slice(max(0, int(min(cols)) - 2), max(0, min(n, int(max(cols)) + 3))))

    def ellipse(self, cx: float, cy: float, a: float, b: float, win: Window | None = None) -> Shape:
        win = win or self.window(cx - a, cx + a, cy - b, cy + b)
        d = (1 - np.sqrt(((self.U[win] - cx) / a) ** 2 + ((self.V[win] - cy) / b) ** 2)) * min(a, b)
        return win, _step(d, self.aa)

    def box(self, u0: float, u1: float, v0: float, v1: float, win: Window | None = None) -> Shape:
        win = win or self.window(u0, u1, v0, v1)
        U, V = self.U[win], self.V[win]
        return win, _step(np.minimum(np.minimum(U - u0, u1 - U), np.minimum(V - v0, v1 - V)), self.aa)

    def band(self, cx: float, half: float, v0: float, v1: float,
             centre: Callable[[np.ndarray], np.ndarray], thick: Callable[[np.ndarray], np.ndarray]) -> Shape:
        """A curved stroke over |u - cx| < half: centre line and thickness are functions of u."""
        win = self.window(cx - half, cx + half, v0, v1)
        U, V = self.U[win], self.V[win]
        return win, _step(np.minimum(half - np.abs(U - cx), thick(U) / 2 - np.abs(V - centre(U))), self.aa)

    def paint(self, shape: Shape, colour: Sequence[float] | np.ndarray) -> None:
        win, alpha = shape
        sub = self.img[win]
        sub += alpha[..., None] * (np.asarray(colour, dtype=np.float32) - sub)

    def finish(self, rng: np.random.Generator) -> np.ndarray:
        """Lighting gradient and brightness, 2x box downsample, pixel noise; uint8 RGB."""
        light, ldir = rng.uniform(0.0, 0.25), rng.uniform(0, 2 * math.pi)
        gain = rng.uniform(0.88, 1.12) * (1 + light * (math.cos(ldir) * self.X + math.sin(ldir) * self.Y))
        small = (self.img * gain[..., None]).reshape(self.size, 2, self.size, 2, 3).mean(axis=(1, 3))
        small += rng.normal(0, rng.uniform(0.005, 0.025), small.shape)
        return (np.clip(small, 0, 1) * 255 + 0.5).astype(np.uint8)


def _paint_head(c: _Canvas, f: FaceIdentity, rng: np.random.Generator) -> None:
    """Neck, ears, shoulders, hair, the face's skin and any beard."""
    skin, hair = np.asarray(f.skin), np.asarray(f.hair)
    a, b, vol = f.face_w, f.face_h, f.hair_vol
    c.paint(c.box(-0.36 * a, 0.36 * a, 0.3, 1.2), skin * 0.85)  # neck
    for s in (-1, 1):  # ears
        c.paint(c.ellipse(s * a * 0.98, 0.0, 0.07, 0.13), skin * 0.9)
    c.paint(c.ellipse(0.0, 1.28, 1.0, 0.52), rng.uniform(0.1, 0.9, 3))  # shoulders
    U, V = c.U, c.V
    _, cap = c.ellipse(0.0, 0.0, a + vol, b + vol, _ALL)
    strands = hair * (0.8 + 0.2 * np.cos(80 * U + 10 * V * U))[..., None]
    if f.hair_len > -1:  # hair down the sides, behind the face (in shadow)
        c.paint((_ALL, np.maximum(cap, c.box(-a - vol, a + vol, -0.3, f.hair_len, _ALL)[1])), strands * 0.55)
    w = np.where(V > 0, 1 - (1 - f.jaw) * np.clip(V / b, 0, 1) ** 1.5, 1.0)
    r = np.sqrt((U / (a * w)) ** 2 + (V / b) ** 2)
    face_a = _step((1 - r) * a * w, c.aa)
    c.paint((_ALL, face_a), np.clip(1.05 - 0.3 * r**4, 0, 1)[..., None] * skin)
    if f.beard > 0:  # stubble/beard below the nose, with texture
        win = c.window(-a, a, f.nose_len, b)
        texture = rng.uniform(0.75, 1, face_a[win].shape).astype(np.float32)
        c.paint((win, face_a[win] * _step(V[win] - f.nose_len - 0.03, c.aa * 4) * f.beard * texture), hair * 0.6)
    c.paint((_ALL, cap * _step(f.hairline + 0.15 * (U / a) ** 2 - V, c.aa)), strands)  # hair on top


def _paint_eyes(c: _Canvas, f: FaceIdentity, rng: np.random.Generator, *, raise_: float, tilt: float,
                eye_open: float) -> None:
    """Brows, eyes (random gaze), nostrils and the nose ridge."""
    skin, hair = np.asarray(f.skin), np.asarray(f.hair)
    ey, rx = -0.08, f.eye_rx
    for s in (-1, 1):
        cx = s * f.eye_dx
        by = ey - f.brow_gap - rx * 0.45 - raise_
        c.paint(c.band(cx, rx * 1.3, by - 0.2, by + 0.15,
                       lambda u, cx=cx, s=s, by=by: by - tilt * s * (u - cx) / (rx * 1.3)
                       - f.brow_arch * (1 - ((u - cx) / (rx * 1.3)) ** 2),
                       lambda u, cx=cx, s=s: f.brow_thick * (0.8 - 0.2 * s * (u - cx) / rx)), hair * 0.7)
        ry = rx * 0.45 * eye_open
        c.paint(c.ellipse(cx, ey, rx + f.lash, ry + f.lash), (0.1, 0.07, 0.06))
        win, white = c.ellipse(cx, ey, rx, ry)
        c.paint((win, white), (0.95, 0.95, 0.93))
        gaze = rng.uniform(-0.02, 0.02)
        for rad, col in ((0.5, f.eye_colour), (0.22, (0.03, 0.03, 0.03))):  # iris, pupil
            c.paint((win, white * c.ellipse(cx + gaze, ey, rx * rad, rx * rad, win)[1]), col)
        c.paint(c.ellipse(s * 0.035, f.nose_len, 0.028, 0.016), skin * 0.55)  # nostril
    win, ridge = c.box(0.018, 0.036, ey + 0.06, f.nose_len - 0.01)  # nose ridge shadow
    c.paint((win, 0.45 * ridge), skin * 0.7)


def _paint_mouth(c: _Canvas, f: FaceIdentity, expression: str, *, curve: float, mopen: float, asym: float) -> None:
    """Lips, the open mouth and (when happy) teeth."""
    mw, th, mv = f.mouth_w, f.lip_thick, f.nose_len + f.mouth_gap
    v0, v1 = mv - abs(curve) - asym - th, mv + abs(curve) + mopen + th

    def line(u: np.ndarray) -> np.ndarray:
        t = u / mw
        return mv - curve * t**2 - asym * np.clip(t, 0, 1) ** 2

    def gap(u: np.ndarray) -> np.ndarray:
        return mopen * np.clip(1 - (u / mw) ** 2, 0, 1)

    c.paint(c.band(0.0, mw, v0, v1, lambda u: line(u) + gap(u) / 2, lambda u: th + gap(u)), f.lip)
    c.paint(c.band(0.0, mw * 0.92, v0, v1, lambda u: line(u) + gap(u) / 2, lambda u: th * 0.2 + gap(u)),
            (0.25, 0.05, 0.07))
    if expression == "happy":  # teeth
        c.paint(c.band(0.0, mw * 0.75, v0, v1, lambda u: line(u) + gap(u) / 4, lambda u: gap(u) * 0.4),
                (0.93, 0.92, 0.88))


def render_face(face: FaceIdentity, expression: str, rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """Render ``face`` with ``expression`` and random pose/lighting/background; (size, size, 3) uint8."""
    if expression not in EXPRESSIONS:
        raise DataError(f"unknown expression '{expression}'; supported: {', '.join(EXPRESSIONS)}")
    c = _Canvas(size, rng)
    curve, mopen, raise_, tilt, eye_open, asym = (v * rng.uniform(0.8, 1.2) for v in EXPRESSIONS[expression])
    _paint_head(c, face, rng)
    _paint_eyes(c, face, rng, raise_=raise_, tilt=tilt, eye_open=eye_open)
    _paint_mouth(c, face, expression, curve=curve, mopen=mopen, asym=asym)
    return c.finish(rng)


def _check_args(n_identities: int, images_per_identity: int, size: int, seed: int,
                expressions: Sequence[str]) -> None:
    if seed < 0:
        raise DataError(f"seed must be a non-negative integer, got {seed}")
    if n_identities < 2:
        raise DataError(f"n_identities must be at least 2 (one per gender), got {n_identities}")
    if images_per_identity < 1:
        raise DataError(f"images_per_identity must be at least 1, got {images_per_identity}")
    if size < 16:
        raise DataError(f"size must be at least 16 pixels, got {size}")
    unknown = [e for e in expressions if e not in EXPRESSIONS]
    if not expressions or unknown or len(set(expressions)) != len(expressions):
        raise DataError(f"expressions must be distinct names from {', '.join(EXPRESSIONS)}; got {list(expressions)}")


def generate_synthetic_faces(
    out_dir: str | Path,
    *,
    n_identities: int = 100,
    images_per_identity: int = 20,
    size: int = 64,
    seed: int = 0,
    expressions: Sequence[str] = ("neutral", "happy", "sad", "surprise", "anger"),
    progress: bool = False,
) -> Manifest:
    """Write a synthetic face dataset to ``out_dir`` and return its manifest.

    Layout: ``images/<identity>/<identity>_<k>.png`` (RGB, size x size) and ``labels.csv`` with columns
    ``path,identity,gender,expression``. Half the identities are ``M``, half ``F``; expressions cycle
    within each identity so every identity shows each expression about equally often. A JSON stamp
    records the parameters: a later call with identical parameters reuses the files untouched.
    """
    expressions = tuple(expressions)
    _check_args(n_identities, images_per_identity, size, seed, expressions)
    out = Path(out_dir)
    csv_path, stamp_path = out / "labels.csv", out / STAMP_NAME
    params = {"version": GENERATOR_VERSION, "n_identities": n_identities, "images_per_identity": images_per_identity,
              "size": size, "seed": seed, "expressions": list(expressions)}

    cached = _cached_manifest(out, params)
    if cached is not None:
        return cached
    _clear_own_output(out)
    rows = _render_identities(out, n_identities=n_identities, images_per_identity=images_per_identity, size=size,
                              seed=seed, expressions=expressions, progress=progress)
    tmp = csv_path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "identity", "gender", "expression"])
        writer.writerows(rows)
    tmp.replace(csv_path)
    stamp_path.write_text(json.dumps(params, indent=2) + "\n", encoding="utf-8")
    return _manifest(out, params)


def _manifest(out: Path, params: dict[str, object]) -> Manifest:
    m = Manifest.from_csv(out / "labels.csv", name="synthetic", synthetic=True, crop=1.0)
    return dataclasses.replace(m, description=f"procedural synthetic faces {json.dumps(params)}")


def _cached_manifest(out: Path, params: dict[str, object]) -> Manifest | None:
    """The earlier output in ``out`` when its stamp has exactly these parameters and every image exists."""
    csv_path, stamp_path = out / "labels.csv", out / STAMP_NAME
    if not (csv_path.is_file() and stamp_path.is_file()):
        return None
    try:
        if json.loads(stamp_path.read_text(encoding="utf-8")) != params:
            return None
    except ValueError:
        return None
    m = _manifest(out, params)
    return m if all((out / p).is_file() for p in m.paths) else None


def _clear_own_output(out: Path) -> None:
    """Regenerating: drop any earlier output of ours (never other files)."""
    (out / STAMP_NAME).unlink(missing_ok=True)
    for old in (out / "images").glob("synth_*"):
        if old.is_dir():
            shutil.rmtree(old)
    (out / "labels.csv").unlink(missing_ok=True)


def _render_identities(out: Path, *, n_identities: int, images_per_identity: int, size: int, seed: int,
                       expressions: tuple[str, ...], progress: bool) -> list[tuple[str, str, str, str]]:
    """Render every identity's images into ``out/images``; returns the CSV rows (path, identity, gender, expression)."""
    pair_rng = np.random.default_rng(np.random.SeedSequence([seed, 0]))  # each pair of identities: one M, one F
    genders = [g for _ in range((n_identities + 1) // 2) for g in pair_rng.permutation(["M", "F"])][:n_identities]
    width = max(4, len(str(n_identities - 1)))
    rows: list[tuple[str, str, str, str]] = []
    for i in range(n_identities):
        rng = np.random.default_rng(np.random.SeedSequence([seed, 1, i]))
        ident, face = f"synth_{i:0{width}d}", sample_identity(rng, str(genders[i]))
        offset = int(rng.integers(len(expressions)))
        folder = out / "images" / ident
        folder.mkdir(parents=True, exist_ok=True)
        for k in range(images_per_identity):
            expr = expressions[(k + offset) % len(expressions)]
            pixels = render_face(face, expr, np.random.default_rng(np.random.SeedSequence([seed, 2, i, k])), size)
            Image.fromarray(pixels, "RGB").save(folder / f"{ident}_{k}.png", optimize=False)
            rows.append((f"images/{ident}/{ident}_{k}.png", ident, face.gender, expr))
        if progress and ((i + 1) % max(1, n_identities // 10) == 0 or i + 1 == n_identities):
            print(f"synthetic faces: {i + 1}/{n_identities} identities", file=sys.stderr, flush=True)

    return rows
