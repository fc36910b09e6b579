"""Fig. 10 analogues: accuracy vs rank privacy under noise.

* 10a: the advanced embedding at several Siamese weights vs noisy reduced simple, at one layer;
* 10b (``--layers``): the advanced embedding at each of several layers.

    python benchmarks/siamese_tradeoff.py --run runs/lfw-gender --layer conv5_3 --weights 1 10 --out docs/lfw
    python benchmarks/siamese_tradeoff.py --run runs/lfw-gender --layers conv5_1 conv5_2 conv5_3 --out docs/lfw

Uses the run's cached Siamese models when present (``RUN/siamese-<layer>-<hash>``). Writes
``OUT/tradeoff_weights.{json,md,png}`` (or ``OUT/tradeoff_layers.*``).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from privsplit.attacks.data import attack_data
from privsplit.defenses.build import SiameseConfig, build_embedding, cached_siamese
from privsplit.report.experiments import noise_tradeoff
from privsplit.report.plots import plot_tradeoff
from privsplit.train.loops import TrainConfig
from privsplit.train.run import load_run


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--layer", default="conv5_3")
    ap.add_argument("--layers", nargs="+", default=None, help="Fig. 10b: advanced (first weight) at each layer")
    ap.add_argument("--weights", type=float, nargs="+", default=[1.0, 10.0])
    ap.add_argument("--sigmas", type=float, nargs="+", default=[0.0, 0.5, 1.0, 2.0])
    ap.add_argument("--siamese-epochs", type=int, default=2)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    t0 = time.perf_counter()
    art, p = load_run(args.run, progress=False)
    data = attack_data(p.attack, per_identity=20)
    curves, rows = {}, []

    def advanced(layer: str, w: float) -> list[dict]:
        cfg = SiameseConfig(weight=w, train=TrainConfig(epochs=args.siamese_epochs, lr=5e-4, warmup_fraction=0.0))
        tuned = cached_siamese(args.run, art, p.train, layer=layer, cfg=cfg, progress=False)
        emb = build_embedding("advanced", art.model, layer=layer, train=p.train, column=art.primary, sigma=1.0,
                              tuned=tuned, noise_seed=0, progress=False)
        return noise_tradeoff(emb, args.sigmas, test=p.test, attack=data, primary=art.primary)

    if args.layers:
        for layer in args.layers:
            curves[f"advanced @ {layer}"] = advanced(layer, args.weights[0])
    else:
        base = build_embedding("noisy-reduced-simple", art.model, layer=args.layer, train=p.train,
                               column=art.primary, sigma=1.0, noise_seed=0, progress=False)
        curves["noisy-reduced-simple"] = noise_tradeoff(base, args.sigmas, test=p.test, attack=data,
                                                        primary=art.primary)
        for w in args.weights:
            curves[f"advanced (Siamese weight {w:g})"] = advanced(args.layer, w)
    for name, curve in curves.items():
        rows += [{**r, "curve": name} for r in curve]
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "tradeoff_layers" if args.layers else "tradeoff_weights"
    (args.out / f"{stem}.json").write_text(json.dumps(rows, indent=1))
    unprotected = art.manifest["metrics"]["test"]["accuracy"]
    where = f"layers {', '.join(args.layers)}" if args.layers else args.layer
    plot_tradeoff(curves, args.out / f"{stem}.png", unprotected_accuracy=unprotected,
                  ceiling=rows[0]["rank_privacy_ceiling"], title=f"Accuracy vs rank privacy at {where}")
    which = f"--layers {' '.join(args.layers)}" if args.layers else f"--layer {args.layer}"
    lines = [f"# Accuracy-privacy trade-off at {where} (Fig. 10{'b' if args.layers else 'a'} analogue)", "",
             f"Command: `python benchmarks/siamese_tradeoff.py --run {args.run} {which} --weights "
             f"{' '.join(f'{w:g}' for w in args.weights)} --out {args.out}` ({time.perf_counter() - t0:.0f} s). "
             "Noise sigma in units of each reduced feature's std; rank privacy is class-level over the "
             f"{rows[0]['identities']} attack identities (primary-label ceiling {rows[0]['rank_privacy_ceiling']:.3f}).",
             "", "| curve | sigma | gender accuracy | rank privacy | 1-NN identity top-1 |", "|---|---|---|---|---|"]
    for r in rows:
        rp = "-" if r["rank_privacy"] is None else f"{r['rank_privacy']:.3f}"
        lines.append(f"| {r['curve']} | {r['sigma']:g} | {r['accuracy']:.2%} | {rp} | {r['nn_top1']:.1%} |")
    lines += ["", f"![trade-off]({stem}.png)", ""]
    (args.out / f"{stem}.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
