"""Cost of a Siamese fine-tuning epoch vs a plain cross-entropy epoch of the same model (issue 3).

The Siamese objective forms all pairs inside each batch from one forward pass, so its extra cost is a
B x B distance matrix per batch. Both epochs are timed in this one run, interleaved (CE, Siamese, CE,
Siamese, ...) so machine load affects both alike; the minimum of each is reported.

    python benchmarks/siamese_cost.py --images 2048 --repeats 3 --threads 2
"""
from __future__ import annotations

import argparse
import copy
import json
import time

import torch

from privsplit.data.loaders import default_dataset, load_manifest
from privsplit.data.faces import load_faces
from privsplit.data.transforms import Preprocess
from privsplit.defenses.build import SiameseConfig, siamese_finetune
from privsplit.models.vgg import vgg16
from privsplit.train.loops import TrainConfig, train_classifier


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--layer", default="conv5_3")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    name, why = default_dataset()
    manifest = load_manifest(name)
    data = load_faces(manifest, Preprocess(size=64, crop=manifest.crop), columns=["gender"], required=["gender"],
                      progress=False)
    data = data.subset(torch.randperm(len(data), generator=torch.Generator().manual_seed(0))[: args.images])
    base = vgg16(width=0.25, input_size=64, num_classes=2)
    cfg = TrainConfig(epochs=1, lr=5e-4, warmup_fraction=0.0)
    ce_times, siamese_times = [], []
    for _ in range(args.repeats):
        model = copy.deepcopy(base)
        t0 = time.perf_counter()
        train_classifier(model, data, column="gender", config=cfg, progress=False)
        ce_times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        siamese_finetune(copy.deepcopy(base), data, column="gender", layer=args.layer,
                         config=SiameseConfig(train=cfg), progress=False)
        siamese_times.append(time.perf_counter() - t0)
    result = {"dataset": manifest.label, "images": len(data), "threads": args.threads, "layer": args.layer,
              "ce_epoch_s": min(ce_times), "siamese_epoch_s": min(siamese_times),
              "ratio": min(siamese_times) / min(ce_times), "all_ce": ce_times, "all_siamese": siamese_times}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
