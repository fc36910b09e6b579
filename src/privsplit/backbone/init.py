"""Start a primary-task model from a pretrained backbone (the paper's path: fine-tune a face recognizer).

A backbone is a model artifact (``model.json`` + ``model.safetensors``) written by ``privsplit
pretrain``; its manifest has a ``backbone`` section (method, teacher/data, provenance). Every layer
but the last is copied into the new model; the last (``fc8``: the projection to the teacher's space
or the identity classifier) is replaced by the new task's head, freshly initialised.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from privsplit.models.vgg import VGGConfig, build_model
from privsplit.train.artifacts import load_model, sha256_file

__all__ = ["init_from_backbone", "backbone_record"]


def backbone_record(folder: str | Path) -> dict[str, Any]:
    """What a run manifest records about the backbone it started from (path, digest, provenance)."""
    art = load_model(folder)
    return {"path": str(Path(folder).resolve()), "weights_sha256": sha256_file(Path(folder) / "model.safetensors"),
            **{k: v for k, v in art.manifest.get("backbone", {"method": "unknown"}).items() if k != "history"}}


def init_from_backbone(folder: str | Path, *, num_classes: int, input_size: int | None = None,
                       dropout: float | None = None) -> tuple[nn.Sequential, VGGConfig, dict[str, Any]]:
    """A model for ``num_classes`` whose layers up to fc7 are the backbone's; returns model, config, record.

    Raises:
        ValueError: the backbone's input size differs from ``input_size`` (fc6 would not fit).
    """
    art = load_model(folder)
    if input_size is not None and input_size != art.config.input_size:
        raise ValueError(f"backbone {folder} was built for {art.config.input_size} px inputs, the run uses "
                         f"{input_size} px: pass --size {art.config.input_size} or pretrain at {input_size} px")
    cfg = VGGConfig(**{**art.config.to_dict(), "num_classes": num_classes,
                       **({"dropout": dropout} if dropout is not None else {})})
    model = build_model(cfg)
    last = list(dict(model.named_children()))[-1]
    state = {k: v for k, v in art.model.state_dict().items() if not k.startswith(last + ".")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith(last + ".") for k in missing):
        raise ValueError(f"backbone {folder} does not fit {cfg.arch}: missing {missing}, unexpected {unexpected}")
    return model, cfg, backbone_record(folder)
