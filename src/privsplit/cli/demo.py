"""``privsplit demo``: the whole pipeline, quickly, on the default data (LFW if present, else synthetic).

1. train the primary model; 2. build the simple and advanced embeddings and privsplit's best defence
(``robust-advanced`` at dim 1, sigma 0.5: the goal point of docs/defences.md) at conv5_3 and export
bundles; 3. serve the advanced analyzer on loopback (OIP v2) and send a few held-out faces through
the device client; 4. audit both embeddings (the audit's fast profile, one seed: the worst case over its
attacks with a 95% interval) and a paired test of advanced against simple on the same queries; 5. print a
summary and write ``OUT/demo.md``.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import typer
from rich.table import Table

from privsplit.cli.common import console, friendly_errors
from privsplit.cli.train import show_run
from privsplit.data.loaders import default_dataset

#: per-dataset demo budget (synthetic must finish in a few minutes on 2 cores)
BUDGET = {"synthetic": {"epochs": 4, "siamese_epochs": 1}, "lfw": {"epochs": 4, "siamese_epochs": 1}}


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)


@friendly_errors
def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", "-o"),
    dataset: str = typer.Option("auto", help="auto (LFW if present, else synthetic) or a dataset name."),
    epochs: int = typer.Option(None, min=1, help="Primary training epochs (default: 4)."),
    layer: str = typer.Option("conv5_3"),
    noise: float = typer.Option(0.5, help="Noise sigma of the advanced embedding (units of feature std)."),
    defence: str = typer.Option("robust-advanced", help="Also build and audit this defence of the zoo (default: "
                                "privsplit's best, robust-advanced; or gaussian-split, nopeek, adversarial, ...; "
                                "docs/defences.md; 'none' skips it) and test it against simple."),
    knob: float = typer.Option(None, help="The defence's main knob (default: robust-advanced's 0.5, else its "
                               "middle sweep value)."),
    dim: int = typer.Option(1, min=1, help="Reduced dimension of robust-advanced."),
) -> None:
    """Train, embed, serve, infer through the client, attack: the whole pipeline in a few minutes."""
    from privsplit.train.loops import TrainConfig
    from privsplit.train.run import RunSpec, run_training

    t_start = time.perf_counter()
    if dataset == "auto":
        dataset, why = default_dataset()
        console.print(f"[cyan]{why}[/]")
    budget = BUDGET.get(dataset, BUDGET["lfw"])
    console.rule("1/4 primary model")
    result = run_training(RunSpec(dataset=dataset, train=TrainConfig(epochs=epochs or budget["epochs"])), out)
    show_run(result.metrics, result.folder)
    console.rule("2/4 embeddings")
    art, p, embs, client_dir, server_dir = _embed(out, layer, noise, budget, None if defence == "none" else defence,
                                                  knob, dim)
    console.rule("3/4 device client -> OIP v2 analyzer service (loopback)")
    preds, truth = _serve_and_infer(p, art, embs, client_dir, server_dir)
    console.rule("4/4 privacy audit (fast profile, 1 seed)")
    _audit_step(out, art, p, embs, layer, preds, truth, t_start)
    console.print(f"done in {(time.perf_counter() - t_start) / 60:.1f} min; report: {out / 'demo.md'}; "
                  f"full paper-style report: privsplit reproduce --dataset {dataset} --out reports/{dataset}")


def _embed(out: Path, layer: str, noise: float, budget: dict, defence: str | None, knob: float | None,
           dim: int = 1) -> tuple:
    """Step 2: simple and advanced (and ``defence``) at ``layer``; the advanced bundles are written."""
    from privsplit.defenses.build import SiameseConfig, build_embedding, cached_siamese
    from privsplit.defenses.bundles import save_bundles
    from privsplit.train.loops import TrainConfig
    from privsplit.train.run import load_run

    art, p = load_run(out, progress=False)
    tuned = cached_siamese(out, art, p.train, layer=layer, cfg=SiameseConfig(
        train=TrainConfig(epochs=budget["siamese_epochs"], lr=5e-4, warmup_fraction=0.0)))
    embs = {kind: build_embedding(kind, art.model, layer=layer, train=p.train, column=art.primary, sigma=noise,
                                  tuned=tuned, progress=False) for kind in ("simple", "advanced")}
    if defence:
        embs[defence] = _defence(defence, knob, art, p, layer, tuned=tuned, dim=dim)
    client_dir, server_dir = save_bundles(embs["advanced"], out / "bundles" / f"advanced-{layer}", config=art.config,
                                          preprocess=art.preprocess, classes=art.classes, primary=art.primary,
                                          info={"run": str(out)}, backbone=art.manifest.get("backbone"))
    return art, p, embs, client_dir, server_dir


def _serve_and_infer(p, art, embs: dict, client_dir: Path, server_dir: Path) -> tuple[list, list[str]]:
    """Step 3: serve the analyzer on loopback and send 8 held-out faces of different people through the client."""
    from privsplit.defenses.bundles import load_client_bundle
    from privsplit.runtime.client import Client

    try:
        from privsplit.runtime.server import ServerThread, create_app
    except ImportError as exc:  # the analyzer service is an extra
        raise ValueError(f"privsplit demo serves the analyzer and needs the serve extra ({exc.name} is missing): "
                         "pip install -e '.[serve]'") from None
    picks = [round(i * (len(p.test) - 1) / 7) for i in range(8)]  # spread over different people
    images = [p.test.manifest.root / p.test.manifest.paths[i] for i in picks]
    truth = [art.classes[int(p.test.labels[art.primary][i])] for i in picks]
    with ServerThread(create_app(server_dir, api_keys=[])) as server:
        preds = Client(load_client_bundle(client_dir), server.url).infer(images)
    sent = Table(title=f"sent {len(images)} held-out faces; only {embs['advanced'].transmitted_shape(art.preprocess.size)[0]}"
                       f" noisy floats per face left the 'device' ({server.url})")
    for col in ("image", "true", "predicted", "probability"):
        sent.add_column(col)
    for path, t, pr in zip(images, truth, preds):
        sent.add_row(Path(path).name, t, pr.label, f"{pr.probability:.2f}")
    console.print(sent)
    return preds, truth


def _audit_step(out: Path, art, p, embs: dict, layer: str, preds: list, truth: list[str], t_start: float) -> None:
    """Step 4: audit every embedding on the same queries, print the summary and the paired verdicts, save."""
    from privsplit.train.loops import evaluate

    rows, reports = _audit(embs, p, art)
    for kind, r in rows.items():
        r["accuracy"] = evaluate(embs[kind], p.test, column=art.primary).accuracy
    console.print(_summary(rows, art, layer))
    verdict = "\n".join(_verdict(reports, kind) for kind in embs if kind != "simple")
    console.print(verdict)
    (out / "demo.json").write_text(json.dumps({"rows": rows, "verdict": verdict, "served": [pr.label for pr in preds],
                                               "truth": truth, "seconds": time.perf_counter() - t_start}, indent=1))
    _write_markdown(out, art, rows, verdict, layer, time.perf_counter() - t_start)


def _audit(embs: dict, p, art) -> tuple[dict[str, dict], dict]:
    """Audit each embedding on the same queries (fast profile, seed 0)."""
    import privsplit.attacks  # noqa: F401  (registers the built-in attacks)
    from privsplit.audit import audit, report_row
    from privsplit.train.run import attack_group

    reports = {kind: audit(emb, p.attack, aux=p.train, group=attack_group(art), profile="fast", seeds=1,
                           sensitive=art.manifest["sensitive"], primary=art.primary,
                           n_enrol=min(15, _fewest(p.attack, art.manifest["sensitive"]) - 1))
               for kind, emb in embs.items()}
    return {kind: report_row(rep) for kind, rep in reports.items()}, reports


def _summary(rows: dict[str, dict], art, layer: str) -> Table:
    summary = Table(title=f"{art.primary} vs identity on {art.manifest['dataset']['label']} at {layer}")
    for col in ("embedding", f"{art.primary} accuracy", "worst-case identity top-1 [95% CI]", "attack", "x floor",
                "chance", "floor"):
        summary.add_column(col)
    for kind, r in rows.items():
        summary.add_row(kind, f"{r['accuracy']:.1%}", _ci(r), r["worst_attack"], f"{r['worst_times_floor']:.2f}",
                        f"{r['audit_chance_top1']:.1%}", f"{r['audit_floor_top1']:.1%}")
    return summary


def _fewest(data, column: str) -> int:
    from collections import Counter

    return min(Counter(data.labels[column].tolist()).values())


def _ci(r: dict) -> str:
    lo, hi = r["worst_top1_ci95"]
    return f"{r['worst_top1']:.1%} [{lo:.1%}, {hi:.1%}]"


def _defence(name: str, knob: float | None, art, p, layer: str, *, tuned=None, dim: int = 1):
    """A zoo defence (``privsplit.defenses.zoo``) built on the run's training split, 1 epoch (demo budget);
    ``robust-advanced`` reuses the demo's Siamese model ``tuned`` and defaults to sigma 0.5."""
    from privsplit.defenses.objectives import FinetuneConfig
    from privsplit.defenses.zoo import DEFENCES

    entry = DEFENCES.get(name)
    if name in ("calibrated-noise", "send-image"):
        raise ValueError(f"--defence {name} is not a demo defence; use benchmarks/defences_pareto.py")
    kwargs = entry.options(config=FinetuneConfig(epochs=1), tuned=tuned, dim=dim)
    if name == "robust-advanced":
        knob = 0.5 if knob is None else knob
    value = entry.knobs[len(entry.knobs) // 2] if knob is None else knob
    console.print(f"building {name} ({entry.knob} = {value}; {entry.paper})")
    return entry(art.model, layer=layer, train=p.train, column=art.primary, knob=value, **kwargs)


def _verdict(reports: dict, kind: str = "advanced") -> str:
    """Plain words on whether ``kind`` beats simple against the worst case (paired test on the same queries)."""
    from privsplit.audit import compare_audits

    test = compare_audits(reports[kind], reports["simple"])
    if test.separated and test.difference < 0:
        return f"{kind} leaks less identity than simple: {test}"
    if test.separated:
        return f"{kind} does NOT beat simple: it leaks MORE identity ({test})"
    return f"{kind} does NOT beat simple: the paired test does not separate them ({test})"


def _write_markdown(out: Path, art, rows: dict, verdict: str, layer: str, seconds: float) -> None:
    lines = [f"# privsplit demo on {art.manifest['dataset']['label']}", "",
             f"Command: `privsplit demo --out {out}` ({seconds / 60:.1f} min). Split at {layer}.", "",
             "| embedding | accuracy | worst-case identity top-1 [95% CI] | attack | × floor | chance | floor |",
             "|---|---|---|---|---|---|---|"]
    for kind, r in rows.items():
        lines.append(f"| {kind} | {r['accuracy']:.1%} | {_ci(r)} | {r['worst_attack']} | {r['worst_times_floor']:.2f} | "
                     f"{r['audit_chance_top1']:.1%} | {r['audit_floor_top1']:.1%} |")
    lines += ["", f"Worst case: the audit's fast profile, one seed, the attack chosen on a validation split of the "
              f"enrolment photos; interval by bootstrap over identities. {verdict[0].upper() + verdict[1:]}."]
    (out / "demo.md").write_text("\n".join(lines) + "\n")
