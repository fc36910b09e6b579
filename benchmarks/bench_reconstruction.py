"""Benchmark of the reconstruction attack (paper Section IV-B, Fig. 11) on a trained run.

For the simple, Siamese and advanced embeddings at one split layer (default conv5_3) of a run's
primary model, train a decoder from the transmitted features to the image on the run's ``train``
split (the attacker's own images), evaluate on the ``attack`` split (held-out identities): SSIM,
PSNR and the dlib identity match (when dlib is installed), then write the Fig. 11 analogue
``docs/figures/fig11_<dataset>.png`` and the table in ``docs/reconstruction.md``.

The Siamese fine-tuned model is reused from ``RUN/siamese-<layer>-<key>/model.json`` (written by
``privsplit embed``; the key of its default settings is preferred, else any cached one), else from
``--cache``, else it is fine-tuned (a few minutes on CPU) and cached in ``--cache``. Nothing is
written into the run folder.

Run (from the repository root)::

    PYTHONPATH=src python3 benchmarks/bench_reconstruction.py --run runs/lfw-gender
    PYTHONPATH=src python3 benchmarks/bench_reconstruction.py --run runs/lfw-gender --no-docs --epochs 2
"""
from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from privsplit.attacks.face_match import FaceMatcher, dlib_available  # noqa: E402
from privsplit.attacks.reconstruction import (  # noqa: E402
    ReconConfig, ReconstructionAttack, save_reconstruction_grid, select_per_identity,
)
from privsplit.models.presets import paper_dim  # noqa: E402
from privsplit.defenses.build import SiameseConfig, build_embedding, siamese_finetune  # noqa: E402
from privsplit.train.artifacts import load_model, save_model  # noqa: E402
from privsplit.train.loops import TrainConfig, evaluate  # noqa: E402
from privsplit.train.run import load_run  # noqa: E402

DOC = ROOT / "docs" / "reconstruction.md"
START, END = "<!-- bench:start -->", "<!-- bench:end -->"
KINDS = ("simple", "siamese", "advanced")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def siamese_model(run: Path, cache: Path, art, train, layer: str):
    """The Siamese fine-tuned model: the run's cache (embed's default key first), then ``cache``, else train."""
    cfg = SiameseConfig(train=TrainConfig(epochs=2, lr=5e-4, warmup_fraction=0.0))  # `privsplit embed` defaults
    key = hashlib.sha256(json.dumps({"layer": layer, **asdict(cfg)}, sort_keys=True, default=str).encode()).hexdigest()
    name = f"siamese-{layer}-{key[:10]}"
    candidates = [run / name, *sorted(p.parent for p in run.glob(f"siamese-{layer}-*/model.json")), cache / name]
    for folder in candidates:
        if (folder / "model.json").exists():
            log(f"Siamese model: reusing {folder}")
            return load_model(folder).model, str(folder)
    log(f"Siamese model: fine-tuning ({cfg.train.epochs} epochs), caching in {cache / name}")
    tuned = siamese_finetune(art.model, train, column=art.primary, layer=layer, config=cfg, progress=True)
    save_model(cache / name, tuned, config=art.config, preprocess=art.preprocess, primary=art.primary,
               classes=art.classes, extra={"siamese": {"layer": layer, **asdict(cfg), "train": cfg.train.to_dict()}})
    return tuned, str(cache / name)


def grid_rows(test, column: str, primary: str, n: int, seed: int) -> torch.Tensor:
    """``n`` images of ``n`` different identities, alternating the primary label (e.g. 4 F + 4 M)."""
    gen = torch.Generator().manual_seed(seed)
    ids, prim = test.labels[column], test.labels[primary]
    by_label: dict[int, list[int]] = {}
    for c in torch.unique(ids)[torch.randperm(len(torch.unique(ids)), generator=gen)].tolist():
        rows = torch.nonzero(ids == c).flatten()
        by_label.setdefault(int(prim[rows[0]]), []).append(int(rows[torch.randint(len(rows), (1,), generator=gen)]))
    picked: list[int] = []
    pools = list(by_label.values())
    while len(picked) < n and any(pools):
        for pool in pools:
            if pool and len(picked) < n:
                picked.append(pool.pop(0))
    return torch.tensor(picked)


def fmt(fig, pct: bool = False, digits: int = 3) -> str:
    if fig is None:
        return "n/a"
    if pct:
        return f"{fig['value']:.1%} [{fig['ci95'][0]:.1%}, {fig['ci95'][1]:.1%}]"
    return f"{fig['value']:.{digits}f} [{fig['ci95'][0]:.{digits}f}, {fig['ci95'][1]:.{digits}f}]"


def table(results: dict, refs: dict) -> str:
    lines = ["| embedding | sends (floats) | gender acc. (attack ids) | SSIM | PSNR (dB) | dlib identity match | "
             "dlib found a face | decoder fit |",
             "|---|---|---|---|---|---|---|---|"]
    for kind, r in results.items():
        f = r["figures"]
        det = r["details"].get("identity_check", {})
        found = det.get("detected", {}).get("reconstruction") if isinstance(det, dict) else None
        lines.append(f"| {kind} | {r['sends']} | {r['primary_accuracy']:.1%} | {fmt(f['ssim'])} | "
                     f"{fmt(f['psnr'], digits=2)} | {fmt(f.get('identity_match'), pct=True)} | "
                     f"{'n/a' if found is None else f'{found:.0%}'} | {r['details']['fit_seconds']:.0f} s |")
    lines.append(f"| *mean training face* (learns nothing) | 0 | | {refs['ssim_mean_face']:.3f} | "
                 f"{refs['psnr_mean_face']:.2f} | | | |")
    if "identity_match_ceiling" in refs:
        lines.append(f"| *originals* (dlib ceiling) | | | 1 | inf | {fmt(refs['originals_figure'], pct=True)} | "
                     f"{refs['originals_detected']:.0%} | |")
        lines.append(f"| *chance* (1/T) | | | | | {refs['identity_chance']:.1%} | | |")
        if "identity_primary_floor" in refs:
            lines.append(f"| *primary-label floor* (knows only the {refs['primary']}) | | | | | "
                         f"{refs['identity_primary_floor']:.1%} | | |")
    return "\n".join(lines)


def write_doc(text: str) -> None:
    doc = DOC.read_text() if DOC.exists() else ""
    if START in doc and END in doc:
        head, rest = doc.split(START, 1)
        doc = head + START + "\n" + text + "\n" + END + rest.split(END, 1)[1]
    else:
        doc = doc + "\n" + START + "\n" + text + "\n" + END + "\n"
    DOC.write_text(doc)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, type=Path)
    ap.add_argument("--layer", default="conv5_3")
    ap.add_argument("--dim", type=int, default=None, help="reduced dimension (default: the paper's for the layer)")
    ap.add_argument("--sigma", type=float, default=0.5, help="advanced embedding's noise (units of feature std)")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--min-width", type=int, default=8)
    ap.add_argument("--identity-per-identity", type=int, default=10)
    ap.add_argument("--grid", type=int, default=8, help="originals in the figure")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared 2-core box)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--kinds", default=",".join(KINDS))
    ap.add_argument("--cache", type=Path, default=ROOT / "runs" / "cache", help="where a fine-tuned Siamese is cached")
    ap.add_argument("--json", type=Path, default=ROOT / "runs" / "bench_reconstruction.json")
    ap.add_argument("--no-docs", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    t_all = time.perf_counter()

    art, p = load_run(args.run, progress=False)
    column, primary = art.manifest["sensitive"], art.primary
    dataset = art.manifest["dataset"]["name"]
    log(f"run {args.run}: train {len(p.train)} images (attacker's own), attack split {len(p.attack)} images of "
        f"{len(torch.unique(p.attack.labels[column]))} held-out identities")
    cfg = ReconConfig(epochs=args.epochs, lr=args.lr, width=args.width, min_width=args.min_width, seed=args.seed,
                      identity_per_identity=args.identity_per_identity)
    matcher = FaceMatcher() if dlib_available() else None
    if matcher is None:
        log("dlib / face_recognition_models not installed: no identity check")
    kinds = [k for k in args.kinds.split(",") if k]
    tuned, tuned_from = (siamese_model(args.run, args.cache, art, p.train, args.layer)
                         if any(k in ("siamese", "advanced") for k in kinds) else (None, None))
    pick = grid_rows(p.attack, column, primary, args.grid, args.seed)
    results, rows, refs = {}, {}, {}
    for kind in kinds:
        emb = build_embedding(kind, art.model, layer=args.layer, train=p.train, column=primary, dim=args.dim,
                              sigma=args.sigma, tuned=tuned, progress=False)
        acc = evaluate(emb, p.attack, column=primary).accuracy
        shape = emb.transmitted_shape(art.preprocess.size)
        log(f"{kind}: sends {list(shape)}, {primary} accuracy on attack identities {acc:.1%}; training decoder")
        attack = ReconstructionAttack(emb, config=cfg, embedding_name=kind).fit(p.train)
        log(f"{kind}: decoder trained in {attack.fit_seconds:.0f} s, train loss by epoch "
            + " ".join(f"{v:.4f}" for v in attack.history) + "; evaluating")
        res = attack.evaluate(p.attack, column=column, primary=primary, matcher=matcher)
        d = res.to_dict()
        d.update(sends=int(torch.tensor(shape).prod()), primary_accuracy=float(acc), shape=list(shape))
        results[kind] = d
        refs.update(res.references, primary=primary)
        if "identity_match_originals" in res.figures:
            refs["originals_figure"] = asdict(res.figures["identity_match_originals"])
            refs["originals_detected"] = res.details["identity_check"]["detected"]["originals"]
        rows[kind] = attack.reconstruct(p.attack.subset(pick))
        log(f"{kind}: " + ", ".join(f"{k} {v.value:.4g}" for k, v in res.figures.items()))
    originals = p.attack.subset(pick).images.float() / 255
    fig_path = ROOT / "docs" / "figures" / f"fig11_{dataset}.png"
    if not args.no_docs:
        save_reconstruction_grid(originals, rows, fig_path,
                                 title=f"{dataset}: {args.layer} reconstructions of held-out people (first row: originals)")
    tab = table(results, refs)
    print(tab)
    n_ids = len(torch.unique(p.attack.labels[column]))
    n_check = len(select_per_identity(p.attack.labels[column], cfg.identity_per_identity, seed=cfg.seed))
    seconds = time.perf_counter() - t_all
    meta = {"run": str(args.run), "layer": args.layer, "dim": args.dim or paper_dim(args.layer),
            "sigma": args.sigma, "config": asdict(cfg), "siamese_model": tuned_from, "threads": args.threads,
            "seconds": seconds, "python": platform.python_version(), "torch": torch.__version__,
            "machine": platform.machine(), "attack_images": len(p.attack), "attack_identities": n_ids,
            "identity_check_images": n_check, "train_images": len(p.train)}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"meta": meta, "results": results, "references": refs}, indent=1, default=str))
    if not args.no_docs:
        cmd = "PYTHONPATH=src python3 benchmarks/bench_reconstruction.py --run " + str(args.run) + (
            f" --epochs {args.epochs}" if args.epochs != 6 else "")
        box = refs.get("originals_figure") and next((r["details"]["identity_check"]["fixed_box"] for r in results.values()
                                                     if isinstance(r["details"].get("identity_check"), dict)), None)
        text = "\n".join([
            f"Command: `{cmd}` ({seconds / 60:.0f} min in all on {args.threads} thread(s) of a shared 2-core CPU; "
            f"torch {torch.__version__}).",
            "",
            f"Run `{args.run}` ({dataset}, {primary} VGG-16 variant, {art.preprocess.size} px), split at "
            f"**{args.layer}**; reduced dimension {meta['dim']}, advanced noise sigma {args.sigma} (per-dimension std "
            f"units); Siamese model `{Path(tuned_from).name if tuned_from else 'n/a'}`. Decoders trained on the "
            f"`train` split ({len(p.train)} images, mirrored copies too), {args.epochs} epochs each; SSIM/PSNR over "
            f"all {len(p.attack)} images of the {n_ids} held-out identities (`attack` split), mean and 95% CI; "
            f"dlib identity match on {n_check} of them ({cfg.identity_per_identity} per identity), top-1 among the "
            f"{n_ids} identities against leave-one-out templates of the originals"
            + (f" (fallback box {tuple(round(v, 3) for v in box)} of the frame)." if box else "."),
            "",
            tab,
            "",
            f"![Fig. 11 analogue](figures/{fig_path.name})",
        ])
        write_doc(text)
        log(f"wrote {DOC} and {fig_path}")
    log(f"done in {seconds / 60:.1f} min; JSON {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
