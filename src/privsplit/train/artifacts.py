"""Trained-model artifacts: ``model.safetensors`` + ``model.json`` (never pickles).

The JSON manifest records what is needed to rebuild and trust the model: architecture config, split
points, preprocessing, label maps, dataset fingerprint, metrics, and the SHA-256 of the weights file
(checked on load).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file
from torch import nn

from privsplit.data.transforms import Preprocess
from privsplit.models.split import split_points
from privsplit.models.vgg import VGGConfig, build_model

__all__ = ["ModelArtifact", "save_model", "load_model", "sha256_file"]

FORMAT = "privsplit.model/1"


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class ModelArtifact:
    """A loaded model with its manifest fields."""

    model: nn.Sequential
    config: VGGConfig
    preprocess: Preprocess
    primary: str
    classes: list[str]
    manifest: dict[str, Any]


def save_model(folder: str | Path, model: nn.Module, *, config: VGGConfig, preprocess: Preprocess, primary: str,
               classes: list[str], extra: dict[str, Any] | None = None) -> Path:
    """Write the artifact into ``folder``; ``extra`` (dataset, metrics, splits...) goes in the manifest."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / "model.safetensors"
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(weights))
    manifest = {
        "format": FORMAT,
        "architecture": config.to_dict(),
        "split_points": split_points(model),
        "preprocess": preprocess.to_dict(),
        "primary": primary,
        "classes": list(classes),
        "weights_sha256": sha256_file(weights),
        **(extra or {}),
    }
    (folder / "model.json").write_text(json.dumps(manifest, indent=1))
    return folder


def load_model(folder: str | Path) -> ModelArtifact:
    """Load an artifact; refuses one whose weights do not match the recorded SHA-256."""
    folder = Path(folder)
    man_path, weights = folder / "model.json", folder / "model.safetensors"
    if not man_path.exists() or not weights.exists():
        raise FileNotFoundError(f"{folder} is not a privsplit model folder (needs model.json and model.safetensors); "
                                "create one with `privsplit train`")
    manifest = json.loads(man_path.read_text())
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{man_path}: unsupported format {manifest.get('format')!r} (expected {FORMAT})")
    digest = sha256_file(weights)
    if digest != manifest["weights_sha256"]:
        raise ValueError(f"{weights} does not match the SHA-256 in {man_path}: the file was modified or "
                         "belongs to another model; retrain or restore the original")
    config = VGGConfig.from_dict(manifest["architecture"])
    model = build_model(config)
    model.load_state_dict(load_file(str(weights)))
    model.eval()
    return ModelArtifact(model, config, Preprocess.from_dict(manifest["preprocess"]), manifest["primary"],
                         manifest["classes"], manifest)
