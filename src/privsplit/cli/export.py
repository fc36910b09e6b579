"""``privsplit export``: a client bundle to one ONNX/ExecuTorch file, a server bundle to a Triton repository."""
from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from privsplit.cli.common import console, friendly_errors


def register(app: typer.Typer) -> None:
    app.command("export")(export)


@friendly_errors
def export(
    bundle: Path = typer.Argument(..., help="A client or server bundle folder (from `privsplit embed`)."),
    format: str = typer.Option("onnx", "--format", "-f", help="onnx | executorch (client only, .pte for XNNPACK)."),
    out: Path = typer.Option(None, "--out", "-o", help="Client: the model file (default BUNDLE/client.onnx or "
                             ".pte). Server: the Triton model repository folder (default BUNDLE/triton)."),
    name: str = typer.Option(None, help="Server: Triton model name (default: the bundle's model_name)."),
    version: int = typer.Option(1, min=1, help="Server: model version folder."),
    max_batch_size: int = typer.Option(64, min=1, help="Server: Triton max_batch_size (dynamic batching)."),
    instance: str = typer.Option("cpu", help="Server: Triton instance kind: cpu | gpu | auto."),
    atol: float = typer.Option(1e-4, help="Largest allowed max abs difference from torch on the check inputs."),
) -> None:
    """Export a bundle and verify it against torch (batch sizes 1 and 3; fails above --atol)."""
    from privsplit.edge.export import bundle_side, export_bundle

    side = bundle_side(bundle)
    if out is None:
        out = bundle / ("triton" if side == "server" else ("client.pte" if format == "executorch" else "client.onnx"))
    if instance not in ("cpu", "gpu", "auto"):
        raise ValueError(f"--instance must be cpu, gpu or auto, got {instance!r}")
    options: dict = {"atol": atol}
    if side == "server":
        options |= {"name": name, "version": version, "max_batch_size": max_batch_size,
                    "instance_kind": f"KIND_{instance.upper()}"}
    rep = export_bundle(bundle, out, format=format, **options)
    table = Table(title=f"{rep.side} bundle -> {rep.format}")
    table.add_column("")
    table.add_column("")
    table.add_row("file", f"{rep.path} ({rep.bytes / 2**20:.2f} MiB)")
    table.add_row("input", f"{rep.input_name} float32 (batch, {', '.join(map(str, rep.input_shape))})")
    for oname, shape in rep.outputs.items():
        table.add_row("output", f"{oname} (batch, {', '.join(map(str, shape))})")
    table.add_row("max abs diff vs torch", ", ".join(f"batch {b}: {d:.2e}" for b, d in rep.diffs.items())
                  + f" (limit {atol:g})")
    if rep.side == "client":
        table.add_row("noise", "not in the graph: the client runtime adds it")
    if rep.triton_config is not None:
        table.add_row("Triton config", str(rep.triton_config))
    console.print(table)
    if rep.triton_config is not None:
        console.print(f"serve with: tritonserver --model-repository {Path(out).resolve()}  "
                      f"(KServe: storageUri pointing at that folder, Triton runtime)")
