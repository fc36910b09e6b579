"""Pareto sweep: primary accuracy vs worst-case identity top-1 for every defence of the zoo, same harness.

    nice -n 10 python benchmarks/defences_pareto.py --run runs/lfw-gender \\
        [--defences all|name,...] [--layer conv5_3] [--epochs 1] [--train-limit 3000] \\
        [--attacks 1-nn,likelihood] [--out docs/defences]

For each defence and each of its sweep values (``DEFENCES.get(name).knobs``): build it on the run's
primary training split (the auxiliary people; at most ``--train-limit`` images, ``--epochs`` of
fine-tuning, to bound the time on this 2-core machine), then

* primary accuracy on the run's held-out test people;
* worst case of ``privsplit.audit.audit`` (fast profile restricted to ``--attacks``, 1 seed, the run's
  62 attack identities, all non-enrolment images queried) with its identity-bootstrap 95% interval,
  as x the primary-label floor;
* bytes per image sent (float32) and on-device latency (one image, one thread, median of 20);
* build time on this machine (seconds from the trained run to the deployable defence: fine-tuning,
  noise fitting, calibration; the run's own training not counted), per point and summarised per defence
  in a second table ("time to build each defence").

``calibrated-noise`` calibrates sigma by bisection over the same audit on a validation set of
auxiliary identities (training-split people with >= 10 images: enrol 5, query the rest), never the
targets. ``simple`` and ``advanced`` (the run's bundles) are the paper's reference rows.
Writes OUT/pareto.md (table), OUT/pareto.json and OUT/pareto.png (figure with chance and floor).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

import privsplit.attacks  # noqa: F401  (registers the attacks)
from privsplit.audit import audit
from privsplit.audit.inputs import run_inputs
from privsplit.audit.run import load_target
from privsplit.defenses.calibrate import validation_identities
from privsplit.defenses.objectives import FinetuneConfig
from privsplit.defenses.zoo import DEFENCES
from privsplit.train.loops import evaluate
from privsplit.train.run import load_run


def worst_case(emb: Any, inp: Any, attacks: list[str], *, n_enrol: int = 15, targets: Any = None) -> dict[str, Any]:
    rep = audit(emb, inp.targets if targets is None else targets, aux=None, group=inp.group, sensitive=inp.sensitive,
                primary=inp.primary, attacks=attacks, seeds=1, n_enrol=n_enrol, n_val=min(5, n_enrol - 1),
                progress=False, n_boot=500)
    w = rep.worst
    return {"attack": w.attack, "top1": w.top1.value, "ci": list(w.top1.ci95), "x_floor": w.times_floor,
            "floor": rep.floors.primary_top1, "chance": rep.floors.chance_top1, "report": rep}


def latency_ms(emb: Any, size: int) -> float:
    emb.eval()  # a forward pass in training mode would rewrite the (shared) extractor's BatchNorm statistics
    x = torch.zeros(1, 3, size, size)
    times = []
    with torch.inference_mode():
        for _ in range(22):
            t = time.perf_counter()
            emb.client_features(x)
            times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times[2:])


def calibration_privacy(p: Any, inp: Any, attacks: list[str]) -> Any:
    """``privacy(embedding) -> (worst, floor)`` on auxiliary validation identities (enrol 5, query the rest)."""
    rows = validation_identities(list(p.train.manifest.column(inp.sensitive)), min_images=10)
    val = p.train.subset(rows)

    def privacy(emb: Any) -> tuple[float, float]:
        r = worst_case(emb, inp, attacks, n_enrol=5, targets=val)
        return r["top1"], r["floor"]
    return privacy


#: what a defence's build time covers (the second table)
BUILD_COVERS = {
    "nopeek": "fine-tuning with the dCor term", "adversarial": "fine-tuning against the identity adversary",
    "siamese-adversarial": "fine-tuning with the contrastive and adversary terms",
    "gaussian-split": "feature std over the training images", "learned-noise": "training the noise scales (model frozen)",
    "blur": "fine-tuning on blurred images", "pixelate": "fine-tuning on pixelated images", "send-image": "nothing",
    "robust-advanced": "PCA and noise fit + training the analyzer on noisy features (Siamese fine-tuning too "
                       "unless the run's cached model is reused)",
    "calibrated-noise": "PCA and noise fit + the bisection's audits on validation people (Siamese fine-tuning "
                        "too unless the run's cached model is reused)",
}


def build_point(name: str, knob: float, art: Any, p: Any, train: Any, inp: Any, args: Any) -> Any:
    entry = DEFENCES.get(name)
    tuned = None
    siamese = sorted(Path(args.run).glob(f"siamese-{args.layer}-*"))
    if siamese and entry.takes("tuned"):
        from privsplit.train.artifacts import load_model
        tuned = load_model(siamese[0]).model
        args.reused = f"{name} reused the run's Siamese model {siamese[0].name} (not in its build s)"
    kwargs: dict[str, Any] = {"layer": args.layer, "train": train, "column": art.primary, "knob": knob,
                              **entry.options(config=FinetuneConfig(epochs=args.epochs), tuned=tuned, dim=args.dim)}
    if name == "calibrated-noise":
        kwargs["privacy"] = calibration_privacy(p, inp, args.attacks)
    return entry(art.model, **kwargs)


def measure(label: str, knob: Any, emb: Any, build_s: float | None, art: Any, p: Any, inp: Any, args: Any
            ) -> dict[str, Any]:
    """One row; ``build_s`` None = the run's bundle, reused."""
    acc = evaluate(emb, p.test, column=art.primary).accuracy
    w = worst_case(emb, inp, args.attacks, n_enrol=args.n_enrol)
    shape = emb.transmitted_shape(art.preprocess.size)
    n = 1
    for s in shape:
        n *= int(s)
    row = {"defence": label, "knob": knob, "accuracy": acc, **{k: v for k, v in w.items() if k != "report"},
           "bytes": 4 * n, "latency_ms": latency_ms(emb, art.preprocess.size), "build_s": build_s}
    if hasattr(emb, "calibration"):
        row["sigma"] = emb.calibration.sigma
    return row


def paper_points(args: Any) -> list[tuple[Any, str, Any]]:
    """The paper's rows from the run's bundles: simple, and advanced (Siamese + PCA) at every sigma of
    ``--advanced-sigmas`` -- its main knob; one Siamese/PCA fit, only the noise changes."""
    points = []
    simple, advanced = (args.run / "bundles" / f"{k}-{args.layer}" for k in ("simple", "advanced"))
    if simple.exists():
        points.append((load_target(simple)[0], "simple (paper)", None))
    if advanced.exists():
        emb = load_target(advanced)[0]
        noise = emb.noise
        for sigma in (float(v) for v in args.advanced_sigmas.split(",") if v):
            points.append((emb.with_noise(type(noise)(sigma=sigma, scale=noise.scale, std=noise.std)),
                           "advanced (paper)", sigma))
    return points


def fmt(r: dict[str, Any]) -> str:
    knob = "" if r["knob"] is None else (f"{r['knob']:g}" if isinstance(r["knob"], (int, float)) else str(r["knob"]))
    if "sigma" in r:
        knob += f" (sigma {r['sigma']:.3g})"
    return (f"| {r['defence']} | {knob} | {r['accuracy']:.1%} | {r['top1']:.1%} [{r['ci'][0]:.1%}, {r['ci'][1]:.1%}] "
            f"({r['attack']}) | {r['x_floor']:.2f}x | {r['bytes']} | {r['latency_ms']:.1f} | "
            f"{'reused' if r['build_s'] is None else format(r['build_s'], '.0f')} |")


def build_table(rows: list[dict[str, Any]], args: Any) -> list[str]:
    """Time to build each defence: seconds per knob value, and what they cover."""
    out = ["", f"## Time to build each defence ({args.threads} thread(s); {args.n_train} training images x "
           f"{args.epochs} epoch(s) of fine-tuning)", "", "| defence | build s per knob value | covers |", "|---|---|---|"]
    for name in dict.fromkeys(r["defence"] for r in rows if r["build_s"] is not None):
        pts = [r for r in rows if r["defence"] == name]
        per = ", ".join(f"{r['build_s']:.0f} ({'' if r['knob'] is None else format(r['knob'], 'g')})" for r in pts)
        out.append(f"| {name} | {per} | {BUILD_COVERS.get(name.split(' (')[0], '')} |")
    reused = getattr(args, "reused", None)
    return out + (["", reused] if reused else [])


def plot(rows: list[dict[str, Any]], path: Path, primary: str = "gender") -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    for i, name in enumerate(dict.fromkeys(r["defence"] for r in rows)):
        pts = [r for r in rows if r["defence"] == name]
        ax.errorbar([r["top1"] for r in pts], [r["accuracy"] for r in pts], marker="os^D"[i % 4], capsize=2,
                    color=plt.cm.tab20(i % 20),
                    xerr=[[r["top1"] - r["ci"][0] for r in pts], [r["ci"][1] - r["top1"] for r in pts]], label=name)
    ax.axvline(rows[0]["floor"], ls="--", c="k", lw=1, label="primary-label floor")
    ax.axvline(1.25 * rows[0]["floor"], ls=":", c="g", lw=1, label="goal 1.25x floor")
    ax.axvline(rows[0]["chance"], ls="-.", c="grey", lw=1, label="chance")
    ax.set_xscale("log")  # "send-image" sits an order of magnitude to the right of every split defence
    ax.set_xlabel("worst-case identity top-1 (fast audit, 95% CI; log scale)")
    ax.set_ylabel(f"{primary} accuracy (held-out people)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--defences", default="all")
    ap.add_argument("--layer", default="conv5_3")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--train-limit", type=int, default=3000)
    ap.add_argument("--attacks", default="1-nn,likelihood")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--n-enrol", type=int, default=15,
                    help="enrolment photos per target (CK+: 5, it has few sequences per subject)")
    ap.add_argument("--dim", type=int, default=None,
                    help="reduced dimension for robust-advanced / calibrated-noise (default: the paper's per layer)")
    ap.add_argument("--paper-only", action="store_true",
                    help="(re)measure only the paper rows (simple, advanced over sigma) and keep OUT/pareto.json's others")
    ap.add_argument("--append", action="store_true",
                    help="keep OUT/pareto.json's rows (e.g. add one defence to an earlier sweep); skip the paper rows")
    ap.add_argument("--advanced-sigmas", default="0,0.25,0.5,1,2",
                    help="the paper's advanced embedding (the run's bundle) swept over its noise sigma")
    ap.add_argument("--out", type=Path, default=Path("docs/defences"))
    args = ap.parse_args()
    args.attacks = args.attacks.split(",")
    torch.set_num_threads(args.threads)
    art, p = load_run(args.run)
    args.primary = art.primary
    inp = run_inputs(args.run)
    g = torch.Generator().manual_seed(0)
    train = p.train.subset(torch.randperm(len(p.train), generator=g)[: args.train_limit])
    args.n_train = len(train)
    names = DEFENCES.names() if args.defences == "all" else args.defences.split(",")
    args.out.mkdir(parents=True, exist_ok=True)
    kept = json.loads((args.out / "pareto.json").read_text()) if args.append or args.paper_only else []
    rows: list[dict[str, Any]] = [r for r in kept if not (args.paper_only and r["defence"].endswith("(paper)"))]
    paper = [] if args.append else [measure(label, knob, emb, None, art, p, inp, args)
                                    for emb, label, knob in paper_points(args)]
    rows = paper + rows
    for r in paper:
        print(fmt(r), flush=True)
    if paper:
        write(rows, args)
    if args.paper_only:
        names = []
    for name in names:
        for knob in DEFENCES.get(name).knobs:
            t = time.perf_counter()
            emb = build_point(name, knob, art, p, train, inp, args)
            label = f"{name} (dim {args.dim})" if args.dim and DEFENCES.get(name).takes("dim") else name
            rows.append(measure(label, knob, emb, time.perf_counter() - t, art, p, inp, args))
            print(fmt(rows[-1]), flush=True)
            write(rows, args)


def write(rows: list[dict[str, Any]], args: Any) -> None:
    md = args.out / "pareto.md"
    earlier = [line for line in md.read_text().splitlines() if line.startswith("Command")] \
        if args.append and md.exists() else []
    command = f"Command: `python {' '.join(sys.argv)}`"
    head = [f"# Defences: {args.primary} vs worst-case identity (Pareto sweep)", "",
            *[line for c in earlier + ([] if command in earlier else [command]) for line in (c, "")],
            f"Backbone: {args.run} (layer {args.layer}); fine-tuning {args.epochs} epoch(s) on <= {args.train_limit} "
            f"training images; audit: attacks {args.attacks}, 1 seed, fast profile restricted to them, "
            f"{args.n_enrol} enrolment photos per target. "
            f"Floor {rows[0]['floor']:.1%}, chance {rows[0]['chance']:.1%}.", "",
            f"| defence | knob | {args.primary} | worst-case top-1 [95% CI] (attack) | x floor | bytes/image | device ms | build s |",
            "|---|---|---|---|---|---|---|---|"]
    (args.out / "pareto.md").write_text("\n".join(head + [fmt(r) for r in rows] + build_table(rows, args)) + "\n")
    (args.out / "pareto.json").write_text(json.dumps(rows, indent=1, default=str))  # build_s: null = reused bundle
    plot(rows, args.out / "pareto.png", args.primary)


if __name__ == "__main__":
    main()
