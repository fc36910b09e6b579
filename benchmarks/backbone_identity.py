"""How much identity the *simple* embedding carries: distilled (dlib-teacher) backbone vs from scratch.

Builds (or reuses) the distilled backbone and its gender fine-tune, then measures on LFW's 62
held-out attack people, at conv4_3 / conv5_1 / conv5_2 / conv5_3, with the strongest attacks on
``main``: a clean 1-NN on L2-normalised features and the transfer attack (head="auto"). Each person:
15 random enrolment photos, all other photos are queries. Intervals: bootstrap over identities.
Results are appended to a JSON file after every measurement (so a partial run still reports).

    nice -n 10 env OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/backbone_identity.py \
        --scratch /work/main/runs/lfw-gender --out runs/backbone-bench
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from privsplit.attacks.common import clean_features, primary_label_floor
from privsplit.attacks.transfer import TransferAttack, TransferConfig
from privsplit.backbone.pretrain import pretrain_distill
from privsplit.defenses.embedding import Embedding
from privsplit.metrics.intervals import cluster_bootstrap_ci
from privsplit.models.split import split
from privsplit.train.artifacts import load_model
from privsplit.train.loops import TrainConfig, evaluate
from privsplit.train.run import RunSpec, prepare_data, run_training

LAYERS = ("conv4_3", "conv5_1", "conv5_2", "conv5_3")


def enrol_split(ids: torch.Tensor, n_enrol: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    enrol, query = [], []
    for c in sorted(set(ids.tolist())):
        rows = rng.permutation(np.flatnonzero(ids.numpy() == c))
        enrol.extend(rows[:n_enrol])
        query.extend(rows[n_enrol:])
    return np.sort(enrol), np.sort(query)


def figure(hits: torch.Tensor, groups: torch.Tensor) -> dict:
    lo, hi = cluster_bootstrap_ci(hits.double(), groups, seed=0)
    return {"top1": float(hits.double().mean()), "ci95": [lo, hi], "n": len(hits)}


def simple(model, layer: str) -> Embedding:
    ext, ana = split(model, at=layer)
    return Embedding(kind="simple", layer=layer, extractor=ext, analyzer=ana).eval()


def nn_attack(emb, enrol, query) -> torch.Tensor:
    a = F.normalize(clean_features(emb, enrol)[0].flatten(1), dim=1)
    q = F.normalize(clean_features(emb, query)[0].flatten(1), dim=1)
    nearest = (q @ a.T).argmax(1)
    return (enrol.labels["identity"][nearest] == query.labels["identity"]).long()


def transfer_attack(emb, enrol, query, cfg: TransferConfig) -> tuple[torch.Tensor, dict]:
    att = TransferAttack(emb, config=cfg).fit(enrol)
    with torch.no_grad():
        scores = att.head(clean_features(emb, query)[0])
    pred = torch.tensor(att.classes)[scores.argmax(1)]
    return (pred == query.labels["identity"]).long(), {"head": att.choice[0], "lr": att.choice[1]}


def table(res: dict) -> str:
    """Markdown table of a results.json: gender accuracy, then top-1 [95% CI] per attack and layer."""
    pct = lambda v: f"{100 * v:.1f}%"  # noqa: E731
    lines = [f"62 people, {res['protocol']['enrol']} enrolment / {res['protocol']['queries']} query photos; "
             f"chance {pct(res['protocol']['chance'])}, gender floor {pct(res['protocol']['gender_floor'])}", "",
             "| model | gender acc. (held-out people / attack people) | attack | " + " | ".join(LAYERS) + " |",
             "|---|---|---|" + "---|" * len(LAYERS)]
    for name, r in res.items():
        if not isinstance(r, dict) or "gender_test_people" not in r:
            continue
        g = f"{pct(r['gender_test_people']['accuracy'])} / {pct(r['gender_attack_people']['accuracy'])}"
        for attack in ("1-nn (L2-normalised)", "transfer (auto)"):
            cells = [f"{pct(r[l][attack]['top1'])} [{pct(r[l][attack]['ci95'][0])}, {pct(r[l][attack]['ci95'][1])}]"
                     if attack in r.get(l, {}) else "not run" for l in LAYERS]
            lines.append(f"| {name} | {g} | {attack} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="runs/backbone-bench")
    ap.add_argument("--scratch", default="/work/main/runs/lfw-gender", help="from-scratch gender run (read only)")
    ap.add_argument("--distill-epochs", type=int, default=10)
    ap.add_argument("--aux-images", type=int, default=None, help="distil on this many primary-training images")
    ap.add_argument("--center", action="store_true", help="cosine loss on centred descriptors (did badly)")
    ap.add_argument("--no-center", action="store_true", help="raw descriptors (the default; kept for old commands)")
    ap.add_argument("--transfer-layers", default=",".join(LAYERS))
    ap.add_argument("--transfer-models", default="distilled,scratch", help="which models get the transfer attack")
    ap.add_argument("--finetune-epochs", type=int, default=2)
    ap.add_argument("--finetune-lr", type=float, default=5e-4)
    ap.add_argument("--transfer-epochs", type=int, default=40)
    ap.add_argument("--transfer-lrs", default="3e-4,1e-3,3e-3")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--table", action="store_true", help="print the markdown table of OUT/results.json and exit")
    args = ap.parse_args()
    if args.table:
        print(table(json.loads((Path(args.out) / "results.json").read_text())))
        return
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res_path = out / "results.json"
    res = json.loads(res_path.read_text()) if res_path.exists() else {}

    def save():
        res_path.write_text(json.dumps(res, indent=1))

    spec = RunSpec(dataset="lfw")
    p = prepare_data(spec)
    t0 = time.perf_counter()
    backbone = out / "backbone-dlib"
    if not (backbone / "model.json").exists():
        pretrain_distill(spec, backbone, config=TrainConfig(epochs=args.distill_epochs, lr=2e-3, class_weight="none"),
                         prepared=p, resume=True, max_images=args.aux_images, center=args.center and not args.no_center)
    res["backbone"] = {"seconds": time.perf_counter() - t0,
                       **{k: v for k, v in load_model(backbone).manifest["backbone"].items() if k != "history"}}
    save()
    gender = out / "gender-from-dlib"
    t0 = time.perf_counter()
    if not (gender / "model.json").exists():
        run_training(RunSpec(dataset="lfw", init=str(backbone),
                             train=TrainConfig(epochs=args.finetune_epochs, lr=args.finetune_lr)), gender, prepared=p,
                     resume=True)
    res["finetune_seconds"] = time.perf_counter() - t0
    models = {"distilled (dlib teacher)": load_model(gender).model, "scratch": load_model(args.scratch).model}
    enrol_idx, query_idx = enrol_split(p.attack.labels["identity"], 15, seed=0)
    enrol, query = p.attack.subset(enrol_idx), p.attack.subset(query_idx)
    groups = query.labels["identity"]
    res["protocol"] = {"identities": len(set(groups.tolist())), "enrol": len(enrol), "queries": len(query),
                       "chance": 1 / len(set(groups.tolist())),
                       "gender_floor": primary_label_floor(groups, query.labels["gender"], k=1)}
    for name, model in models.items():
        r = res.setdefault(name, {})
        if all("1-nn (L2-normalised)" in r.get(layer, {}) for layer in LAYERS):
            continue  # measured in an earlier (resumed) run
        r["gender_test_people"] = evaluate(model, p.test, column="gender").to_dict()
        r["gender_attack_people"] = evaluate(model, p.attack, column="gender").to_dict()
        for layer in LAYERS:
            r.setdefault(layer, {})["1-nn (L2-normalised)"] = figure(nn_attack(simple(model, layer), enrol, query), groups)
            print(name, layer, r[layer], flush=True)
        save()
    cfg = TransferConfig(head="auto", epochs=args.transfer_epochs,
                         lrs=tuple(float(v) for v in args.transfer_lrs.split(",")))
    res["transfer_config"] = {"head": cfg.head, "epochs": cfg.epochs, "lrs": cfg.lrs, "copies": cfg.copies}
    for layer in reversed(args.transfer_layers.split(",")):  # conv5_3 first: the acceptance layer
        for name, model in models.items():
            if name.split(" ")[0] not in args.transfer_models.split(",") or "transfer (auto)" in res[name][layer]:
                continue
            t0 = time.perf_counter()
            hits, info = transfer_attack(simple(model, layer), enrol, query, cfg)
            res[name][layer]["transfer (auto)"] = {**figure(hits, groups), **info, "seconds": time.perf_counter() - t0}
            print(name, layer, res[name][layer], flush=True)
            save()


if __name__ == "__main__":
    main()
