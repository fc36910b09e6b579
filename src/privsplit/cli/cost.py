"""``privsplit cost``: on-device file size, load time, memory, latency, FLOPs and upload bytes per split."""
from __future__ import annotations

from pathlib import Path

import typer

from privsplit.cli.common import console, friendly_errors


def register(app: typer.Typer) -> None:
    app.command("cost")(cost)


def _layers(items: list[str] | None) -> dict[str, list[str]] | None:
    if not items:
        return None
    out: dict[str, list[str]] = {}
    for item in items:
        arch, _, names = item.rpartition("=")
        for a in ([arch] if arch else ["vgg16", "vgg_s"]):
            out.setdefault(a, []).extend(n.strip() for n in names.split(",") if n.strip())
    return out


@friendly_errors
def cost(
    out: Path = typer.Option(Path("runs/cost"), "--out", "-o", help="Output folder (cost.md, cost.json, figures/)."),
    preset: str = typer.Option("all", help="cpu (VGG-16 w0.25 64 px, VGG-S w0.25 48 px) | paper (VGG-16 224 px) | all."),
    model: list[str] = typer.Option(None, "--model", "-m", help="ARCH:WIDTH:SIZE[:bn|nobn], repeatable (replaces "
                                    "--preset), e.g. vgg16:1:224:nobn."),
    layers: list[str] = typer.Option(None, help="Split layers, repeatable: 'conv5_1,conv5_3' or 'vgg_s=conv4,conv5' "
                                     "(default: the paper's conv5_1..conv5_3 / conv5)."),
    runtime: list[str] = typer.Option(["onnx", "torch"], help="onnx and/or torch (repeatable)."),
    runs: int = typer.Option(60, min=1, help="Timed single-thread runs per configuration (paper: 60)."),
    warmup: int = typer.Option(5, min=0),
    load_repeats: int = typer.Option(3, min=1, help="Fresh processes per configuration for load time and memory."),
    cold_repeats: int = typer.Option(3, min=0, help="Extra fresh processes per configuration that load with the "
                                     "model file evicted from the page cache (cold load); 0 = skip."),
    partition: bool = typer.Option(True, "--partition/--no-partition", help="Also the per-split-point view."),
    partition_runs: int = typer.Option(None, min=1, help="Runs for the partition view (default --runs)."),
    privacy: Path = typer.Option(None, help="JSON of per-layer attack results {layer: value} (or {arch: {...}})."),
    figures: Path = typer.Option(None, help="Folder for the PNG charts (default OUT/figures)."),
    keep_models: bool = typer.Option(False, help="Keep the exported .onnx/.safetensors files under OUT/models."),
    seed: int = typer.Option(0),
    from_json: Path = typer.Option(None, help="Re-render cost.md and the figures from an earlier cost.json "
                                   "(no measuring)."),
) -> None:
    """Measure the on-device cost of each split (the paper's Figs. 13-15) and the partition view."""
    from privsplit.edge.cost import PRESETS, ModelSpec, load_privacy, render, run_cost
    from privsplit.edge.cost_report import acceptance_markdown

    if from_json is not None:
        result = render(from_json, out, figures=figures)
        console.print(f"report: {out / 'cost.md'}, figures: {', '.join(result.get('figures', {}).values())}")
        return

    if model:
        models = [ModelSpec.parse(m) for m in model]
    elif preset in PRESETS:
        models = list(PRESETS[preset])
    else:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    if runs < 60:
        console.print(f"[yellow]note:[/] {runs} runs; the paper's protocol uses >= 60")
    result = run_cost(models, out, layers=_layers(layers), runtimes=runtime, runs=runs, warmup=warmup,
                      load_repeats=load_repeats, cold_repeats=cold_repeats, partition=partition, partition_runs=partition_runs,
                      privacy=load_privacy(privacy), figures=figures, seed=seed, keep_models=keep_models,
                      log=lambda s: console.print(s, highlight=False))
    if result.get("acceptance"):
        console.print(acceptance_markdown(result["acceptance"]))
    console.print(f"report: {out / 'cost.md'}, data: {out / 'cost.json'}, figures: "
                  f"{', '.join(result.get('figures', {}).values())}")
