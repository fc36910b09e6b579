"""How much identity the *simple* embedding carries: distilled (dlib-teacher) backbone vs from scratch.

Builds (or reuses) the distilled backbone and its gender fine-tune, then measures on LFW's 62
held-out attack people, at conv4_3 / conv5_1 / conv5_2 / conv5_3: a clean 1-NN on L2-normalised
features, and ``privsplit audit``'s attacks (``--audit-attacks``; default the clean-bank 1-NN and the
noise-aware likelihood, 1 seed -- the metric attack, slow on big layers, runs in the conv5_3 audit of
docs/backbone.md). Each person: 15 random enrolment photos, all other photos are queries. Intervals:
bootstrap over identities. Results are appended to a JSON file after every measurement (so a partial
run still reports). An existing OUT/backbone-dlib and OUT/gender-from-dlib (e.g. symlinks to runs built
by `privsplit pretrain` / `privsplit train --init`) are reused.

    nice -n 10 env OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/backbone_identity.py \
        --scratch runs/lfw-gender --out runs/backbone-bench
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
from privsplit.audit import audit
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


def audit_attacks(emb, attack_data, attacks: list[str]) -> dict:
    """Each of ``attacks`` from ``privsplit audit`` (fast profile, 1 seed, 15 enrolment photos, all other
    photos queried), figure and identity-bootstrap interval per attack."""
    rep = audit(emb, attack_data, aux=None, group=None, sensitive="identity", primary="gender", attacks=attacks,
                seeds=1, n_enrol=15, n_val=5, progress=False)
    return {f"audit: {a.name}": {"top1": a.top1.value, "ci95": list(a.top1.ci95)}
            for a in rep.attacks}


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
        attacks = sorted({k for layer in LAYERS for k in r.get(layer, {})}, key=lambda k: (k.startswith("audit"), k))
        for attack in attacks:
            cells = [f"{pct(r[l][attack]['top1'])} [{pct(r[l][attack]['ci95'][0])}, {pct(r[l][attack]['ci95'][1])}]"
                     if attack in r.get(l, {}) else "not run" for l in LAYERS]
            lines.append(f"| {name} | {g} | {attack} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="runs/backbone-bench")
    ap.add_argument("--scratch", default="runs/lfw-gender", help="from-scratch gender run (read only)")
    ap.add_argument("--distill-epochs", type=int, default=10)
    ap.add_argument("--aux-images", type=int, default=None, help="distil on this many primary-training images")
    ap.add_argument("--center", action="store_true", help="cosine loss on centred descriptors (did badly)")
    ap.add_argument("--no-center", action="store_true", help="raw descriptors (the default; kept for old commands)")
    ap.add_argument("--audit-attacks", default="1-nn,likelihood",
                    help="attacks of `privsplit audit` run at every layer (metric/transfer: slow on big layers)")
    ap.add_argument("--finetune-epochs", type=int, default=2)
    ap.add_argument("--finetune-lr", type=float, default=5e-4)
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

    p = prepare_data(RunSpec(dataset="lfw"))
    models = build_models(args, out, p, res, save)
    measure_nn(models, p, res, save)
    for name, model in models.items():
        for layer in LAYERS:
            r = res[name].setdefault(layer, {})
            if f"audit: {args.audit_attacks.split(',')[-1]}" in r:
                continue
            t0 = time.perf_counter()
            r.update(audit_attacks(simple(model, layer), p.attack, args.audit_attacks.split(",")))
            print(name, layer, r, f"{time.perf_counter() - t0:.0f} s", flush=True)
            save()


def build_models(args: argparse.Namespace, out: Path, p, res: dict, save) -> dict[str, torch.nn.Module]:
    """The distilled backbone and its gender fine-tune (built once, resumable) beside the scratch model."""
    spec = RunSpec(dataset="lfw")
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
    return {"distilled (dlib teacher)": load_model(gender).model, "scratch": load_model(args.scratch).model}


def measure_nn(models: dict[str, torch.nn.Module], p, res: dict, save) -> None:
    """Gender accuracy and 1-NN identification (L2-normalised) per layer, 15 enrolment photos per target."""
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


if __name__ == "__main__":
    main()
