"""``privsplit infer``: run the client bundle on images locally and ask a remote analyzer for labels."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from privsplit.cli.common import console, friendly_errors


def register(app: typer.Typer) -> None:
    app.command("infer")(infer)


@friendly_errors
def infer(
    images: list[Path] = typer.Argument(..., help="Image files (JPEG, PNG...)."),
    client_bundle: Path = typer.Option(..., "--client-bundle", help="Client bundle folder."),
    server: str = typer.Option(..., "--server", help="Analyzer URL, e.g. http://127.0.0.1:8000"),
    api_key: str = typer.Option(None, "--api-key", envvar="PRIVSPLIT_API_KEY",
                                help="API key (prefer the PRIVSPLIT_API_KEY variable: arguments show in `ps`)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    binary: bool = typer.Option(True, "--binary/--no-binary", help="Binary tensors on the wire (default) or JSON."),
    timeout: float = typer.Option(10.0, help="Seconds per HTTP attempt."),
    retries: int = typer.Option(3, min=0, help="Retries on connection errors and 5xx."),
    batch_size: int = typer.Option(64, min=1, help="Images per request."),
    model_name: str = typer.Option(None, help="Served model name (default: the bundle's)."),
    align: str = typer.Option(None, help="Face detector for photos that are not LFW-style crops (dlib-hog): detect "
                                          "the largest face and align it to the training framing (default: the "
                                          "bundle's own preprocess)."),
    all_faces: bool = typer.Option(False, "--all-faces", help="With face detection: one result per detected face "
                                                              "(largest first) instead of the largest only."),
    test_noise_seed: int = typer.Option(None, hidden=True, help="Tests only: reproducible noise from this seed."),
) -> None:
    """Extract noised features on this machine, send only them, print the predicted labels."""
    from privsplit.defenses.bundles import load_client_bundle
    from privsplit.runtime.client import Client, ClientError

    bundle = load_client_bundle(client_bundle, deterministic_noise=test_noise_seed is not None, seed=test_noise_seed)
    client = Client(bundle, server, api_key=api_key, binary=binary, timeout=timeout, retries=retries,
                    batch_size=batch_size, model_name=model_name, detector=align)
    names, inputs = _inputs(images, bundle.preprocess, align, all_faces)
    try:
        preds = client.infer(inputs, prepared=all_faces)
    except ClientError as exc:
        console.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(2) from None
    finally:
        client.close()
    rows = [{"image": str(path), "label": p.label, "probability": p.probability,
             "probabilities": [float(v) for v in p.probabilities]} for path, p in zip(names, preds)]
    if as_json:
        print(json.dumps(rows, indent=1))
        return
    table = Table(title=f"{bundle.model_name} via {server}")
    table.add_column("image", overflow="fold")
    table.add_column("label")
    table.add_column("probability", justify="right")
    for row in rows:
        table.add_row(row["image"], row["label"], f"{row['probability']:.3f}")
    console.print(table)


def _inputs(images: list[Path], pre: object, align: str | None, all_faces: bool) -> tuple[list[str], Any]:
    """Paths as given; with ``--all-faces``, one prepared face crop per detected face, named ``IMG#k``."""
    if not all_faces:
        return [str(p) for p in images], [str(p) for p in images]
    import numpy as np

    from privsplit.data.transforms import prepare_faces, read_rgb

    if align is None and pre.align == "none":  # type: ignore[attr-defined]
        raise ValueError("--all-faces needs face detection: pass --align dlib-hog (or use a bundle trained with --align)")
    names, crops = [], []
    for path in images:
        faces = prepare_faces(read_rgb(path), pre, what=str(path), all_faces=True, detector=align)  # type: ignore[arg-type]
        names += [f"{path}#{k}" for k in range(len(faces))] if len(faces) > 1 else [str(path)]
        crops += faces
    return names, np.stack(crops)
