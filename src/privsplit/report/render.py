"""Turn the stage results of ``privsplit reproduce`` into report.md and report.html."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from privsplit.report.document import Document
from privsplit.report.context import Context

__all__ = ["render_report", "PAPER"]

#: the paper's numbers, shown beside ours where one exists (Osia et al. 2017, Tables I-II, Section VI)
PAPER: dict[str, Any] = {
    "table1": {("simple", "conv5_1"): 94.0, ("simple", "conv5_2"): 94.0, ("simple", "conv5_3"): 94.0,
               ("reduced-simple", "conv5_1"): 89.7, ("reduced-simple", "conv5_2"): 87.0,
               ("reduced-simple", "conv5_3"): 94.0, ("siamese", "conv5_1"): 92.7, ("siamese", "conv5_2"): 92.7,
               ("siamese", "conv5_3"): 93.5, ("reduced-siamese", "conv5_1"): 91.3,
               ("reduced-siamese", "conv5_2"): 92.9, ("reduced-siamese", "conv5_3"): 93.3},
    "table2": {("simple", "conv5"): 40.0, ("siamese", "conv5"): 38.0, ("reduced-simple", "conv5"): 31.0,
               ("reduced-siamese", "conv5"): 32.0},
    "siamese_conv5_3_face_recognition": 2.3,
    "mobile": {"memory_ratio": 3.18, "load_time_ratio": 6.34},
}


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"


def _worst(r: dict[str, Any]) -> str:
    """The audit's worst case of a row: top-1 [95% CI] and the attack that reached it."""
    if r.get("worst_top1") is None:
        return "-"
    lo, hi = r["worst_top1_ci95"]
    return f"{r['worst_top1']:.1%} [{lo:.1%}, {hi:.1%}] ({r['worst_attack']})"


def _audit_note(r: dict[str, Any]) -> str:
    if r.get("worst_top1") is None:
        return "No audit ran (no attack registered for the audit profile)."
    return (f"Worst case = the audit's {r['audit_profile']} profile over {r['audit_seeds']} seed(s), the attack chosen "
            f"on a validation split of the enrolment photos, 95% interval by bootstrap over identities; floor "
            f"{_pct(r['audit_floor_top1'])}, chance {_pct(r['audit_chance_top1'])} (`privsplit audit` for details).")


def _primary(doc: Document, ctx: Context, label: str) -> None:
    tr = ctx.results["train"]
    doc.heading("Primary model")
    rows = [["test (held-out identities)", tr["test"]["n"], _pct(tr["test"]["accuracy"]),
             _pct(tr["test"]["balanced_accuracy"])]]
    if tr.get("attack_identities"):
        a = tr["attack_identities"]
        rows.append(["attack identities", a["n"], _pct(a["accuracy"]), _pct(a["balanced_accuracy"])])
    doc.table(["split", "images", "accuracy", "balanced accuracy"], rows)
    c = ctx.cfg
    paper = {"lfw": "The paper's VGG-16 gender model reached 94% on LFW.",
             "ckplus": "The paper's VGG-S emotion model reached 40% on SFEW-2 (a harder, in-the-wild dataset)."}
    how = (f"trained {c['epochs']} epochs" if c.get("backbone", "scratch") == "scratch" else
           f"fine-tuned {c.get('finetune_epochs', 1)} epochs from the dlib-distilled identity backbone (layers up to "
           f"{c.get('finetune_freeze') or 'none'} frozen; docs/backbone.md)")
    doc.para(f"{c['arch']} at width {c['width']} and {c['size']} px, {how} "
             f"({tr['train_seconds'] / 60:.1f} min) on {label}. {paper.get(c['dataset'], '')}".strip())


def _embeddings(doc: Document, ctx: Context) -> None:
    rows = ctx.results["embeddings"]
    paper = PAPER["table1"] if ctx.cfg["dataset"] == "lfw" else PAPER["table2"] if ctx.cfg["dataset"] == "ckplus" else {}
    doc.heading("Table I/II analogue: primary accuracy per embedding")
    doc.table(["layer", "embedding", "PCA dim", "accuracy", "balanced acc.", "paper"],
              [[r["layer"], r["embedding"], r["dim"] or "-", _pct(r["accuracy"]), _pct(r["balanced_accuracy"]),
                f"{paper[(r['embedding'], r['layer'])]:.1f}%" if (r["embedding"], r["layer"]) in paper else "-"]
               for r in rows])
    by = {(r["embedding"], r["layer"]): r for r in rows}
    gaps = [by[("simple", lay)]["accuracy"] - by[("siamese", lay)]["accuracy"] for lay in ctx.cfg["layers"]]
    doc.para(f"Siamese fine-tuning changes primary accuracy by {-max(gaps) * 100:+.1f} to {-min(gaps) * 100:+.1f} "
             "pp against the simple embedding (the paper: within ~1.5 pp); PCA reduction to a handful of numbers "
             "costs little, as in the paper.")
    doc.heading("Fig. 9/12a analogue: identity attacks (the audit's worst case, transfer learning, 1-NN)")
    r0 = rows[0]
    doc.table(["layer", "embedding", "worst case top-1 [95% CI] (attack)", "transfer top-1", "transfer top-5",
               "1-NN top-1"],
              [[r["layer"], r["embedding"], _worst(r), _pct(r.get("transfer_top1")), _pct(r.get("transfer_top5")),
                _pct(r["nn_top1"])] for r in rows])
    doc.para(_audit_note(rows[0]))
    doc.figure(ctx.figure("fig_transfer_attack.png"), "Identity attack accuracy per layer and embedding")
    floor = r0.get("primary_floor_top1")
    doc.para(f"{r0['identities']} attack identities never seen in primary training: chance is {_pct(r0['chance_top1'])}"
             f" and an attacker who knows only the primary label reaches {_pct(floor)} (the primary-label floor, "
             "the lowest any embedding that conveys the primary label can leak). For gender, the paper reports 2.3% "
             "face recognition for the Siamese embedding at conv5_3 (chance 1%, 100 identities).")


def _tradeoff(doc: Document, ctx: Context) -> None:
    rows = ctx.results["tradeoff"]
    doc.heading("Fig. 10/12b analogue: accuracy-privacy trade-off under noise")
    doc.table(["layer", "embedding", "sigma", "accuracy", "rank privacy", "worst case top-1 [95% CI] (attack)",
               "transfer top-1"],
              [[r["layer"], r["embedding"], r["sigma"], _pct(r["accuracy"]),
                "-" if r["rank_privacy"] is None else f"{r['rank_privacy']:.3f}",
                _worst(r) if r.get("worst_top1") is not None else f"{_pct(r.get('nn_top1'))} (1-NN)",
                _pct(r.get("transfer_top1"))] for r in rows])
    doc.para(_audit_note(rows[0]))
    doc.figure(ctx.figure("fig_tradeoff.png"), "Accuracy vs rank privacy: advanced vs noisy reduced simple")
    if len(ctx.cfg["tradeoff_layers"]) > 1:
        doc.figure(ctx.figure("fig_tradeoff_layers.png"), "Advanced embedding at each layer")
    doc.para(f"sigma is in units of each reduced feature's standard deviation. Rank privacy (paper IV-C, class "
             f"level over the attack identities) cannot exceed the primary-label ceiling "
             f"{rows[0]['rank_privacy_ceiling']:.3f} while the primary label is still conveyed. The paper finds the "
             "advanced embedding's curve above noisy reduced simple's.")


def _reconstruction(doc: Document, ctx: Context) -> None:
    rows = ctx.results["reconstruction"]
    if not rows:
        return
    doc.heading("Fig. 11 analogue: reconstruction attack (deep visualization)")
    has_id = "identity_match" in rows[0]
    dependent = any("identity_match_note" in r for r in rows)  # the backbone was distilled from dlib
    column = "dlib identity match" + (" (NOT independent)" if dependent else "")
    doc.table(["embedding", "layer", "SSIM", "PSNR (dB)"] + ([column] if has_id else []),
              [[r["embedding"], r["layer"], f"{r['ssim']:.3f}", f"{r['psnr']:.2f}"]
               + ([_pct(r["identity_match"])] if has_id else []) for r in rows])
    doc.figure(ctx.figure("fig_reconstruction.png"), "Originals (first row) and reconstructions per embedding")
    verdict = ("here it is **not independent**: the model's backbone was distilled from dlib's descriptors, so "
               "the decoder's output is checked by the network the features were trained to imitate; read the "
               "column beside the audit's worst case, not as a second opinion" if dependent else
               "it is an independent recognizer's verdict on the reconstructions")
    doc.para("A decoder trained on the attacker's own images (the training identities) reconstructs held-out "
             "people from what the server receives. The paper shows the identity fading from simple to advanced "
             f"while the gender stays. The dlib column (when dlib is installed): {verdict}.")


def _defences(doc: Document, ctx: Context) -> None:
    rows = ctx.results["defences"]
    if not rows:
        return
    doc.heading("Defences beside the baselines (docs/defences.md)")
    doc.table(["defence", "knob", "layer", ctx.run()[0].primary, "worst-case identity top-1 [95% CI]", "x floor"],
              [[r["defence"] + (f" (dim {r['dim']})" if r.get("dim") else ""), f"{r['knob']:g}", r["layer"],
                _pct(r["accuracy"]), _worst(r), f"{r['worst_times_floor']:.2f}"] for r in rows])
    doc.figure(ctx.figure("fig_defences.png"), "Primary accuracy vs worst-case identity per defence")
    doc.para(_audit_note(rows[0]) + " robust-advanced is the paper's advanced embedding whose analyzer alone is "
             "trained on noisy features (the device side, so what an attacker receives, is unchanged).")


def _cost(doc: Document, ctx: Context) -> None:
    res = ctx.results["cost"]
    if "skipped" in res:
        return
    doc.heading("Figs. 13-15 analogue: on-device cost of the client vs the full model")
    doc.table(["model", "on device", "upload / image", "MACs", "file", "load", "peak memory", "latency (1 thread)"],
              [[r["model"], r["config"], f"{r['upload_bytes']:,} B", f"{r['macs'] / 1e6:,.0f} M",
                f"{r['onnx_bytes'] / 2**20:.1f} MiB", f"{r['load_ms']:.0f} ms", f"{r['peak_bytes'] / 2**20:.0f} MiB",
                f"{r['latency_ms']:.1f} ms"] for r in res["configs"]])
    rows = [[model, a["split"], f"{a['onnx']['memory_ratio']:.2f}x", f"{a['onnx']['load_ratio']:.2f}x",
             f"{a['onnx']['latency_ratio']:.2f}x", f"{a['upload_bytes']} B"]
            for model, a in res["ratios"].items() if a and "onnx" in a]
    doc.table(["model", "split client", "memory full/split", "load time full/split", "latency full/split",
               "upload"], rows)
    for name in ("edge_memory", "edge_load", "edge_latency", "edge_partition"):
        path = ctx.figure(f"{name}.png")
        if path.exists():
            doc.figure(path, name.replace("edge_", "on-device ").replace("_", " "))
    m = PAPER["mobile"]
    doc.para(f"ONNX Runtime, one thread, median of {ctx.cfg.get('cost_runs', 60)} runs after warm-up, peak RSS in a "
             f"fresh process. The paper measured {m['memory_ratio']}x memory and {m['load_time_ratio']}x load time "
             "for the full VGG-16 vs the split on a Nexus 6P; latency barely differs because the convolutions the "
             "client runs anyway dominate the arithmetic, while the full model's fc layers dominate its size.")


def render_report(ctx: Context) -> tuple[Path, Path]:
    """Write the reproduction report (markdown + HTML) from the stages' results; returns both paths."""
    art, _ = ctx.run()
    label = art.manifest["dataset"]["label"]
    doc = Document(f"privsplit reproduction on {label}{' (quick)' if ctx.cfg['quick'] else ''}")
    config = f" --config {ctx.config_path}" if ctx.config_path else ""
    backbone = "" if ctx.cfg.get("backbone", "scratch") == "scratch" else f" --backbone {ctx.cfg['backbone']}"
    doc.para(f"Command: `privsplit reproduce --dataset {ctx.cfg['dataset']} --out {ctx.out}"
             f"{' --quick' if ctx.cfg['quick'] else ''}{backbone}{config}`. Every figure's data is in figures/*.json and *.csv.")
    _primary(doc, ctx, label)
    if "embeddings" in ctx.results:
        _embeddings(doc, ctx)
    if "tradeoff" in ctx.results:
        _tradeoff(doc, ctx)
    for name, section in EXTRA_SECTIONS.items():
        if name in ctx.results:
            section(doc, ctx)
    return doc.write(ctx.out)


#: sections contributed by optional stages (reconstruction, cost), keyed by stage name
EXTRA_SECTIONS: dict[str, Any] = {"reconstruction": _reconstruction, "cost": _cost, "defences": _defences}
