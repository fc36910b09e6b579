"""Gender accuracy of an LFW-trained model on uncropped web photos: today's centre crop vs detection + alignment.

Data: celeba_wild_dev (60 people, 1,560 original CelebA web photos; see its README). For every photo:
(a) the centre crop the device did before (the model's ``Preprocess`` without ``align``) and (b) dlib HOG
detection + 5-point alignment to LFW's framing (``align="dlib-hog"``; the framing was measured on LFW by
``benchmarks/lfw_framing.py``, never tuned on these photos). Photos where no face is found fall back to (a)
in the "all photos" row (a device would report ``no face found``; the fallback keeps the denominator the
same). Balanced accuracy gets a 95% interval from a bootstrap over people (stratified by gender: 30 + 30
people redrawn); plain accuracy uses :func:`privsplit.metrics.intervals.cluster_bootstrap_ci`. Detection +
alignment (+ resize) time is measured per photo on one core.

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/real_photos.py --model runs/lfw-gender \
        --data ../shared/data/celeba_wild_dev --out docs/real_photos.json
"""
from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np
import torch

from privsplit.data.transforms import Preprocess, normalize, prepare_image, read_rgb
from privsplit.data.align import NoFaceError
from privsplit.metrics.intervals import cluster_bootstrap_ci
from privsplit.train.artifacts import load_model


def balanced_ci(hit: np.ndarray, y: np.ndarray, groups: np.ndarray, *, n_boot: int = 2000,
                seed: int = 0) -> tuple[float, float, float]:
    """Balanced accuracy and its 95% percentile interval, people redrawn with replacement within each class."""
    def bal(h: np.ndarray, yy: np.ndarray) -> float:
        return float(np.mean([h[yy == c].mean() for c in np.unique(yy)]))

    rng = np.random.default_rng(seed)
    people = {c: np.unique(groups[y == c]) for c in np.unique(y)}
    rows = {g: np.flatnonzero(groups == g) for g in np.unique(groups)}
    stats = []
    for _ in range(n_boot):
        idx = np.concatenate([rows[g] for c in people for g in rng.choice(people[c], len(people[c]))])
        stats.append(bal(hit[idx], y[idx]))
    lo, hi = np.percentile(stats, [2.5, 97.5])
    return bal(hit, y), float(lo), float(hi)


def summary(pred: np.ndarray, y: np.ndarray, groups: np.ndarray, classes: list[str]) -> dict:
    hit = (pred == y).astype(np.float64)
    b, lo, hi = balanced_ci(hit, y, groups)
    alo, ahi = cluster_bootstrap_ci(torch.from_numpy(hit), torch.from_numpy(groups))
    return {"n": int(len(y)), "people": int(len(np.unique(groups))), "balanced_accuracy": b,
            "balanced_ci95": [lo, hi], "accuracy": float(hit.mean()), "accuracy_ci95": [alo, ahi],
            "per_class": {classes[c]: float(hit[y == c].mean()) for c in np.unique(y)}}


@torch.inference_mode()
def classify(model: torch.nn.Module, pixels: np.ndarray, pre: Preprocess) -> np.ndarray:
    x = normalize(torch.from_numpy(pixels).permute(0, 3, 1, 2), pre)
    return torch.cat([model(x[s:s + 128]) for s in range(0, len(x), 128)]).argmax(1).numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--limit", type=int, default=0, help="first N photos only (smoke runs)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    art = load_model(args.model)
    centre = Preprocess(size=art.preprocess.size, crop=art.preprocess.crop, mean=art.preprocess.mean,
                        std=art.preprocess.std)
    aligned = Preprocess(**{**centre.__dict__, "align": "dlib-hog"})
    rows = list(csv.DictReader((args.data / "labels.csv").open()))[: args.limit or None]
    y = np.array([art.classes.index(r["gender"]) for r in rows])
    groups = np.array([int(r["identity"]) for r in rows])
    prepare_image(np.zeros((100, 100, 3), np.uint8), centre)  # warm-up
    try:
        prepare_image(read_rgb(args.data / rows[0]["path"]), aligned)  # loads dlib's models once, untimed
    except NoFaceError:
        pass
    c_pix, a_pix, found, seconds = [], [], [], []
    for i, r in enumerate(rows):
        photo = read_rgb(args.data / r["path"])
        c_pix.append(prepare_image(photo, centre))
        t0 = time.perf_counter()
        try:
            a_pix.append(prepare_image(photo, aligned, what=r["path"]))
            found.append(True)
        except NoFaceError:
            a_pix.append(c_pix[-1])
            found.append(False)
        seconds.append(time.perf_counter() - t0)
        if i % 200 == 0:
            print(f"{i}/{len(rows)} photos, detection rate so far {np.mean(found):.3f}", flush=True)
    found_arr = np.array(found)
    pc, pa = classify(art.model, np.stack(c_pix), centre), classify(art.model, np.stack(a_pix), centre)
    sec = np.array(seconds)
    result = {
        "model": str(args.model), "model_lfw_test": art.manifest.get("metrics", {}).get("test", {}),
        "data": str(args.data), "photos": len(rows), "detection_rate": float(found_arr.mean()),
        "detect_align_seconds_per_photo": {"mean": float(sec.mean()), "median": float(np.median(sec)),
                                           "p90": float(np.percentile(sec, 90)), "threads": 1},
        "centre_crop": summary(pc, y, groups, art.classes),
        "detect_align_fallback_centre": summary(pa, y, groups, art.classes),
        "detected_only": {"centre_crop": summary(pc[found_arr], y[found_arr], groups[found_arr], art.classes),
                          "detect_align": summary(pa[found_arr], y[found_arr], groups[found_arr], art.classes)},
    }
    args.out.write_text(json.dumps(result, indent=1))
    for k in ("centre_crop", "detect_align_fallback_centre"):
        s = result[k]
        print(f"{k}: balanced {s['balanced_accuracy']:.3f} [{s['balanced_ci95'][0]:.3f}, {s['balanced_ci95'][1]:.3f}]")
    print(f"detection rate {found_arr.mean():.3f}; detect+align {sec.mean() * 1000:.0f} ms/photo (1 core)")


if __name__ == "__main__":
    main()
