"""The stages of ``privsplit reproduce`` (see :mod:`privsplit.report.pipeline`)."""
from __future__ import annotations

from typing import Any

from privsplit.report.context import Context, Stage, _estimate_epoch_s, write_rows

__all__ = ["STAGES"]


def _train(ctx: Context) -> dict[str, Any]:
    from privsplit.train.loops import TrainConfig
    from privsplit.train.run import RunSpec, run_training

    c = ctx.cfg
    spec = RunSpec(dataset=c["dataset"], arch=c["arch"], width=c["width"], size=c["size"],
                   align=c.get("align", "none"), train=TrainConfig(epochs=c["epochs"], batch_size=c.get("batch_size", 64), seed=c["seed"]))
    if c.get("backbone", "scratch") == "identity":
        spec = _from_backbone(ctx, spec)
    res = run_training(spec, ctx.run_dir, resume=True)  # resumes from the last epoch if interrupted
    return {"test": res.metrics["test"], "attack_identities": res.metrics.get("attack_identities"),
            "train_seconds": res.metrics["train_seconds"], "backbone": c.get("backbone", "scratch")}


def _from_backbone(ctx: Context, spec: Any) -> Any:
    """Build (once) the dlib-distilled backbone on the primary training split; fine-tune from it."""
    from dataclasses import replace

    from privsplit.backbone.pretrain import pretrain_distill
    from privsplit.train.loops import TrainConfig

    c, folder = ctx.cfg, ctx.out / "backbone"
    if not (folder / "model.json").exists():
        pretrain_distill(spec, folder, max_images=c.get("backbone_images"), resume=True,
                         config=TrainConfig(epochs=c.get("backbone_epochs", 10), lr=2e-3, class_weight="none",
                                            seed=c["seed"]))
    return replace(spec, init=str(folder), train=TrainConfig(epochs=c.get("finetune_epochs", 1),
                                                             lr=c.get("finetune_lr", 2e-3), seed=c["seed"],
                                                             freeze=c.get("finetune_freeze")))


def _siamese_cfg(c: dict[str, Any]) -> Any:
    from privsplit.defenses.build import SiameseConfig
    from privsplit.train.loops import TrainConfig

    return SiameseConfig(train=TrainConfig(epochs=c["siamese_epochs"], lr=5e-4, warmup_fraction=0.0, seed=c["seed"]))


def _audit_options(ctx: Context) -> dict[str, Any] | None:
    """Options of the audit run on every embedding (profile ``audit_profile``, default fast: the quick
    report stays quick), or None on a build without any attack registered for that profile."""
    from privsplit.audit import profile_available

    c = ctx.cfg
    profile = c.get("audit_profile", "fast")
    if not profile_available(profile):
        return None
    _, p = ctx.run()
    return {"aux": p.train, "group": c.get("attack_group"), "profile": profile, "seeds": c.get("audit_seeds", 1),
            "n_enrol": c["n_train"], "options": c.get("audit_options") or None, "attacks": c.get("audit_attacks", "all")}


def _transfer_cfg(c: dict[str, Any]) -> Any:
    """The transfer attack of the report tables: ``attack_epochs`` per member, ``attack_restarts`` (default
    the attack's own 3) members per head, ``attack_head`` (default its ``auto``); a config states its
    budget, the attack never cuts it silently."""
    from privsplit.attacks.transfer import TransferConfig

    extra = {"restarts": c["attack_restarts"]} if "attack_restarts" in c else {}
    if "attack_head" in c:
        extra["head"] = c["attack_head"]
    return TransferConfig(epochs=c["attack_epochs"], seed=c["seed"], **extra)


def _embeddings(ctx: Context) -> list[dict[str, Any]]:
    from privsplit.report.experiments import EMBEDDING_TABLE_KINDS, embedding_table
    from privsplit.report.plots import plot_attack_bars

    c = ctx.cfg
    art, p = ctx.run()
    cache = ctx.pieces("embeddings", total=len(c["layers"]) * len(EMBEDDING_TABLE_KINDS))
    rows = embedding_table(ctx.run_dir, art, p, layers=c["layers"], data=ctx.attack_data(), siamese=_siamese_cfg(c),
                           transfer=_transfer_cfg(c), audit=_audit_options(ctx), cache=cache)
    write_rows(ctx.figure("embeddings"), rows)
    plot_attack_bars(rows, ctx.figure("fig_transfer_attack.png"),
                     title=f"Identity transfer attack on {art.manifest['dataset']['label']}")
    return rows


def _tradeoff(ctx: Context) -> list[dict[str, Any]]:
    from privsplit.defenses.build import build_embedding
    from privsplit.report.experiments import noise_tradeoff
    from privsplit.report.plots import plot_tradeoff

    c = ctx.cfg
    art, p = ctx.run()
    data = ctx.attack_data()
    transfer = _transfer_cfg(c) if c["tradeoff_transfer"] else None
    rows: list[dict[str, Any]] = []
    kinds = ("noisy-reduced-simple", "advanced")
    cache = ctx.pieces("tradeoff", total=len(c["tradeoff_layers"]) * len(kinds))
    for layer in c["tradeoff_layers"]:
        tuned = None
        for kind in kinds:
            if (done := cache.get(f"{layer}/{kind}")) is not None:
                rows += done
                continue
            if tuned is None:  # only built (or loaded) when a row of this layer still has to run
                tuned = _tuned(ctx, art, p, layer)
            emb = build_embedding(kind, art.model, layer=layer, train=p.train, column=art.primary, sigma=1.0,
                                  tuned=tuned, noise_seed=c["seed"], progress=False)
            rows += cache.put(f"{layer}/{kind}", noise_tradeoff(
                emb, c["sigmas"], test=p.test, attack=data, primary=art.primary, transfer=transfer, seed=c["seed"],
                aux=p.train, group=c.get("attack_group"), n_enrol=c["n_train"], audit_seeds=c.get("audit_seeds", 1),
                audit_options=c.get("audit_options") or None, audit_attacks=c.get("audit_attacks", "all")))
    write_rows(ctx.figure("tradeoff"), rows)
    unprotected = ctx.results["train"]["test"]["accuracy"]
    last = c["tradeoff_layers"][-1]
    ceiling = rows[0]["rank_privacy_ceiling"]
    plot_tradeoff({k: [r for r in rows if r["embedding"] == k and r["layer"] == last]
                   for k in ("noisy-reduced-simple", "advanced")}, ctx.figure("fig_tradeoff.png"),
                  unprotected_accuracy=unprotected, ceiling=ceiling, title=f"Accuracy-privacy trade-off at {last}")
    plot_tradeoff({f"advanced @ {lay}": [r for r in rows if r["embedding"] == "advanced" and r["layer"] == lay]
                   for lay in c["tradeoff_layers"]}, ctx.figure("fig_tradeoff_layers.png"),
                  unprotected_accuracy=unprotected, ceiling=ceiling, title="Advanced embedding per layer")
    return rows


def _defence_point(spec: str) -> tuple[str, float, dict[str, Any]]:
    """``"NAME:KNOB[:DIM]"`` -> (name, knob, options); DIM only for robust-advanced / calibrated-noise."""
    name, knob, *dim = spec.split(":")
    return name, float(knob), ({"dim": int(dim[0])} if dim else {})


def _defences(ctx: Context) -> list[dict[str, Any]]:
    """Privsplit's defences beside the baselines of the zoo (docs/defences.md): each ``defences`` entry
    ("NAME:KNOB[:DIM]") built on the run's training split and audited like every embedding."""
    from privsplit.audit import audit_row
    from privsplit.defenses.objectives import FinetuneConfig
    from privsplit.defenses.zoo import DEFENCES
    from privsplit.report.plots import plot_defences
    from privsplit.train.loops import evaluate

    c = ctx.cfg
    audit = _audit_options(ctx)
    if not c.get("defences") or audit is None:
        return []
    art, p = ctx.run()
    layer = c["layers"][-1]
    tuned = _tuned(ctx, art, p, layer)
    rows, cache, targets = [], ctx.pieces("defences", total=len(c["defences"])), ctx.attack_data().all
    for spec in c["defences"]:
        if (done := cache.get(spec)) is not None:
            rows.append(done)
            continue
        name, knob, opts = _defence_point(spec)
        entry = DEFENCES.get(name)
        opts |= entry.options(tuned=tuned, config=FinetuneConfig(epochs=c.get("defence_epochs", 1), seed=c["seed"]))
        emb = entry(art.model, layer=layer, train=p.train, column=art.primary, knob=knob, **opts)
        rows.append(cache.put(spec, {"defence": name, "knob": knob, "dim": opts.get("dim"), "layer": layer,
                                     "accuracy": evaluate(emb, p.test, column=art.primary).accuracy,
                                     **audit_row(emb, targets, primary=art.primary, **audit)}))
    write_rows(ctx.figure("defences"), rows)
    plot_defences(rows, ctx.figure("fig_defences.png"), unprotected=ctx.results["train"]["test"]["accuracy"],
                  primary=art.primary)
    return rows


def _reconstruction(ctx: Context) -> list[dict[str, Any]]:
    """Fig. 11: a decoder per embedding. Each finished embedding is kept (its row, and its grid tensors in
    a piece file), so an interrupted stage resumes at the next embedding."""
    import torch

    from privsplit.attacks.reconstruction import save_reconstruction_grid

    c = ctx.cfg
    if not c.get("recon_epochs"):
        return []
    art, p = ctx.run()
    layer = c["layers"][-1]
    show = p.attack.subset(range(0, len(p.attack), max(1, len(p.attack) // 8))[:8])
    kinds = ("simple", "siamese", "advanced")
    rows, grid, originals, tuned = [], {}, None, None
    cache = ctx.pieces("reconstruction", total=len(kinds))
    for kind in kinds:
        tensors = cache.file(kind, ".pt")
        if (done := cache.get(kind)) is not None and tensors.exists():
            pair = torch.load(tensors)
        else:
            if tuned is None:
                tuned = _tuned(ctx, art, p, layer)
            row, pair = _reconstruct_one(ctx, art, p, kind, layer, tuned, show)
            torch.save(pair, tensors)
            done = cache.put(kind, row)
        rows.append(done)
        originals, grid[kind] = pair
    save_reconstruction_grid(originals, grid, ctx.figure("fig_reconstruction.png"),
                             title=f"{layer} reconstructions of held-out people (first row: originals)")
    write_rows(ctx.figure("reconstruction"), rows)
    return rows


def _tuned(ctx: Context, art: Any, p: Any, layer: str) -> Any:
    """The run's Siamese fine-tuned model at ``layer`` (trained once, cached in the run folder)."""
    from privsplit.defenses.build import cached_siamese

    return cached_siamese(ctx.run_dir, art, p.train, layer=layer, cfg=_siamese_cfg(ctx.cfg))


def _reconstruct_one(ctx: Context, art: Any, p: Any, kind: str, layer: str, tuned: Any,
                     show: Any) -> tuple[dict[str, Any], tuple[Any, Any]]:
    """Train the decoder on ``kind``'s features; its row and ``(originals, reconstructions)`` of ``show``."""
    from privsplit.attacks.reconstruction import ReconConfig, ReconstructionAttack
    from privsplit.defenses.build import build_embedding

    c = ctx.cfg
    emb = build_embedding(kind, art.model, layer=layer, train=p.train, column=art.primary, sigma=c["recon_sigma"],
                          tuned=tuned, noise_seed=c["seed"], progress=False)
    attack = ReconstructionAttack(emb, config=ReconConfig(epochs=c["recon_epochs"], seed=c["seed"])).fit(p.train)
    res = attack.evaluate(p.attack, column=art.manifest["sensitive"], primary=art.primary)
    row = {"embedding": kind, "layer": layer, **{k: f.value for k, f in res.figures.items()},
           **{f"{k}_ci95": list(f.ci95) for k, f in res.figures.items()}}
    teacher = art.manifest.get("backbone", {}).get("teacher", "")
    if "identity_match" in res.figures and teacher.startswith("dlib"):
        # the model was trained to reproduce dlib's descriptors: dlib's verdict is no longer independent
        row["identity_match_note"] = "NOT independent: the backbone was distilled from dlib"
    return row, attack.reconstructions(show)


def _cost(ctx: Context) -> dict[str, Any]:
    from privsplit.edge.cost import ModelSpec, acceptance, run_cost
    from privsplit.models.presets import default_split_layer, paper_dim

    c = ctx.cfg
    models = [ModelSpec.parse(m) for m in c.get("cost_models", [])]
    if not models:
        return {"skipped": "no cost_models in the config"}
    simple = {r["layer"]: r.get("transfer_top1", r["nn_top1"]) for r in ctx.results.get("embeddings", [])
              if r["embedding"] == "simple"}
    result = run_cost(models, ctx.out / "cost", runs=c.get("cost_runs", 60), figures=ctx.out / "figures",
                      privacy={c["arch"]: simple} if simple else None, seed=c["seed"])
    split = {m.arch: default_split_layer(m.arch) for m in models}
    ratios = {m.label: acceptance(result, model_key=m.key,
                                  split_key=f"{split[m.arch]}-reduced{paper_dim(split[m.arch])}") for m in models}
    return {"ratios": ratios, "figures": result.get("figures"),
            "configs": [{"model": r["model"], "config": r["config"], "upload_bytes": r["upload_bytes"],
                         "macs": r["macs"], "onnx_bytes": r["onnx_bytes"], "load_ms": r["onnx"]["load_ms"],
                         "peak_bytes": r["onnx"]["peak_bytes"], "latency_ms": r["onnx"]["latency"]["median_ms"]}
                        for r in result["configs"] if "onnx" in r]}


def _report(ctx: Context) -> dict[str, str]:
    from privsplit.report.render import render_report

    md, page = render_report(ctx)
    return {"markdown": str(md), "html": str(page)}


def _scale(c: dict[str, Any]) -> float:
    """How much slower than LFW a dataset's epochs (and so its attacks) run."""
    return _estimate_epoch_s(c) / _estimate_epoch_s({"dataset": "lfw"})


def _train_minutes(c: dict[str, Any]) -> float:
    """Primary training (~110 s per LFW epoch), or with the identity backbone: dlib's descriptors (~80 ms
    an image), the distillation (~1 min per epoch of 8,000 images) and the partly frozen fine-tune
    (~2.7 min per epoch); measured on 2 shared cores."""
    if c.get("backbone", "scratch") != "identity":
        return c["epochs"] * 110 / 60 * _scale(c)
    images = c.get("backbone_images") or 8000
    return images * 0.08 / 60 + c.get("backbone_epochs", 10) * images / 8000 + c.get("finetune_epochs", 1) * 2.7


def _row_minutes(c: dict[str, Any]) -> float:
    """One row of the embedding table: the transfer attack (~1 min at 40 epochs on LFW) and the audit
    (~2 min per seed with the fast profile, the metric attack most of it). Calibrated on the full LFW
    report on the identity backbone: 85.8 min for 12 rows, 3 seeds, 40 attack epochs, 2 cores shared
    with a serving benchmark and tests."""
    return (c["attack_epochs"] / 40 + 2 * c.get("audit_seeds", 1)) * _scale(c)


STAGES: list[Stage] = [
    Stage("train", _train, _train_minutes,
          ("dataset", "arch", "width", "size", "epochs", "batch_size", "seed", "backbone", "backbone_images",
           "backbone_epochs", "finetune_epochs", "finetune_lr", "finetune_freeze")),
    Stage("embeddings", _embeddings,
          lambda c: len(c["layers"]) * (c["siamese_epochs"] * _estimate_epoch_s(c) / 60 + 4 * _row_minutes(c)),
          ("layers", "siamese_epochs", "attack_epochs", "attack_restarts", "per_identity", "n_train", "attack_group",
           "seed", "audit_profile", "audit_seeds", "audit_options", "audit_attacks", "attack_head")),
    Stage("tradeoff", _tradeoff,
          # ~0.25 min per audit seed and sigma since the sigmas of a row share one feature cache: the full LFW
          # stage's undisturbed rows took ~4 min for 6 sigmas x 3 seeds (41.3 min for the stage, 2 rows shared)
          lambda c: len(c["tradeoff_layers"]) * 2 * len(c["sigmas"]) * c.get("audit_seeds", 1) * 0.25 * _scale(c),
          ("tradeoff_layers", "sigmas", "tradeoff_transfer", "siamese_epochs", "attack_epochs", "per_identity",
           "n_train", "attack_group", "seed", "audit_seeds", "audit_options", "attack_restarts", "audit_attacks",
           "attack_head")),
    Stage("reconstruction", _reconstruction, lambda c: 3 * c.get("recon_epochs", 0) * 1.3 * _scale(c),
          ("layers", "siamese_epochs", "recon_epochs", "recon_sigma", "seed")),
    Stage("cost", _cost, lambda c: 2 + 10 * sum(":224" in m for m in c.get("cost_models", [])),
          ("cost_models", "cost_runs", "arch", "layers", "seed")),
    Stage("defences", _defences, lambda c: len(c.get("defences", [])) * (0.5 + 0.6 * c.get("audit_seeds", 1)) * _scale(c),
          ("layers", "defences", "defence_epochs", "siamese_epochs", "seed", "audit_profile", "audit_seeds",
           "audit_options", "audit_attacks", "per_identity", "n_train", "attack_group")),
    Stage("report", _report, lambda c: 0.1),
]
