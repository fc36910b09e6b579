"""Measure LFW's framing: where dlib's 5 landmarks fall in LFW's 250x250 frames (mean over images).

The result is the alignment template of :mod:`privsplit.data.align` (``LFW_LANDMARKS``): aligned crops put
the eyes and nose where LFW puts them, so a model trained on LFW's centre crop sees the framing it was
trained on. Chosen on LFW only (never on celeba_wild_dev).

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/lfw_framing.py --data ../shared/data/lfw_gender --n 1000
"""
from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np
from PIL import Image

from privsplit.data.dlib_models import face_detector, shape_predictor


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    import dlib

    rows = list(csv.DictReader((args.data / "labels.csv").open()))
    pick = np.random.default_rng(args.seed).choice(len(rows), size=min(args.n, len(rows)), replace=False)
    det, sp = face_detector(), shape_predictor()
    pts, found = [], 0
    for i in pick:
        img = np.asarray(Image.open(args.data / rows[i]["path"]).convert("RGB"))
        h, w = img.shape[:2]
        boxes = det(img, 0)
        if not boxes:
            continue
        # the face nearest the frame centre is LFW's subject (others are bystanders)
        box = min(boxes, key=lambda b: ((b.left() + b.right()) / 2 - w / 2) ** 2 + ((b.top() + b.bottom()) / 2 - h / 2) ** 2)
        shape = sp(img, box)
        p = np.array([[shape.part(k).x, shape.part(k).y] for k in range(5)], dtype=np.float64)
        pts.append(p / np.array([w, h]))
        found += 1
    arr = np.stack(pts)
    mean, sd = arr.mean(0), arr.std(0)
    print(json.dumps({"images": len(pick), "detected": found, "mean_frame_fraction": mean.round(4).tolist(),
                      "sd": sd.round(4).tolist()}, indent=1))


if __name__ == "__main__":
    main()
