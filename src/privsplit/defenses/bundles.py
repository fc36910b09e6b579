"""Deployable artifacts of an embedding: a client bundle (device) and a server bundle (cloud).

Each bundle is a folder with ``<side>.safetensors`` + ``<side>.json``:

* client: extractor layers, reduction, noise spec (+ its per-dimension std), preprocessing;
* server: reconstruction + analyzer layers, label map, wire input description.

Both manifests carry the same random ``embedding_id``, the SHA-256 of their tensor file and a
SHA-256 of the manifest itself (``manifest_sha256``, computed with that field empty), so loading
refuses a tampered file (e.g. a client whose noise was edited to 0) or a client/server pair from
different embeddings. Architectures are rebuilt from the stored VGG config and split at ``layer``;
no pickle is ever loaded. This module imports no training code: the runtime ships it.

Versions: manifests carry ``format_version`` (:data:`BUNDLE_FORMAT_VERSION`); bundles written before
the field existed read as version 1 and still load. Version 2 added ``format_version`` itself and
``backbone`` (what the model was fine-tuned from: ``{"method": "scratch"}`` or a ``privsplit
pretrain`` record with its provenance). Version 3 added ``input_transform`` (client side: the device's
blur / pixelation of the image before the extractor, rebuilt by name from
:data:`privsplit.defenses.input_transforms.INPUT_TRANSFORMS`); a bundle is written with the lowest version
that describes it (2 unless it has an input transform), so older privsplit still loads ordinary bundles
while refusing one whose transform it would silently skip. A bundle from a *newer* privsplit is refused
with a clear error.
"""
from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from privsplit.data.transforms import Preprocess
from privsplit.defenses.embedding import Embedding
from privsplit.defenses.input_transforms import split_input_transform, transform_from_spec
from privsplit.defenses.noise import noise_from_spec
from privsplit.defenses.reduction import build_reduction
from privsplit.models.split import split
from privsplit.models.vgg import VGGConfig, build_model

__all__ = ["BundleError", "ClientBundle", "ServerBundle", "save_bundles", "load_client_bundle",
           "load_server_bundle", "check_pair", "embedding_from_bundles", "INPUT_NAME", "OUTPUT_NAMES",
           "BUNDLE_FORMAT_VERSION", "bundle_version"]

BUNDLE_FORMAT_VERSION = 3
#: the version of bundles without an input transform (what privsplit wrote before version 3)
_PLAIN_VERSION = 2
INPUT_NAME = "features"
OUTPUT_NAMES = ("probabilities", "label")


class BundleError(ValueError):
    """A bundle is missing, tampered with, or does not belong with its counterpart."""


def bundle_version(manifest: dict[str, Any]) -> int:
    """The manifest's ``format_version`` (1 for bundles written before the field existed)."""
    return int(manifest.get("format_version", 1))


@dataclass
class ClientBundle:
    """Device side: ``extractor`` maps normalised images to the (reduced) features; ``noise`` is added after."""

    embedding_id: str
    model_name: str
    kind: str
    layer: str
    extractor: nn.Sequential  # extractor layers + reduction, in eval mode, no noise
    noise: nn.Module
    preprocess: Preprocess
    feature_shape: list[int]
    manifest: dict[str, Any]


@dataclass
class ServerBundle:
    """Cloud side: ``analyzer`` maps received features (N, *input_shape) to logits."""

    embedding_id: str
    model_name: str
    kind: str
    layer: str
    analyzer: nn.Sequential  # reconstruction + remaining layers, eval mode
    input_name: str
    input_shape: list[int]
    classes: list[str]
    primary: str
    manifest: dict[str, Any]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _manifest_digest(manifest: dict[str, Any]) -> str:
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _write(folder: Path, side: str, tensors: dict[str, torch.Tensor], manifest: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / f"{side}.safetensors"
    save_file({k: v.detach().contiguous() for k, v in tensors.items()}, str(weights))
    manifest = {**manifest, "tensors_sha256": _sha256(weights)}
    manifest["manifest_sha256"] = _manifest_digest(manifest)
    (folder / f"{side}.json").write_text(json.dumps(manifest, indent=1))


def save_bundles(embedding: Embedding, folder: str | Path, *, config: VGGConfig, preprocess: Preprocess,
                 classes: list[str], primary: str, model_name: str | None = None,
                 info: dict[str, Any] | None = None, backbone: dict[str, Any] | None = None) -> tuple[Path, Path]:
    """Write ``folder/client`` and ``folder/server``; returns their paths.

    ``backbone``: the model's start (the run manifest's ``backbone`` record; default: from scratch).
    """
    folder = Path(folder)
    emb_id = uuid.uuid4().hex
    name = model_name or f"privsplit-{embedding.kind}-{embedding.layer}".replace("_", "-")
    reduction = embedding.reduction_config
    noise_spec = embedding.noise.spec()
    transform, extractor = split_input_transform(embedding.extractor)
    version = _PLAIN_VERSION if transform is None else BUNDLE_FORMAT_VERSION
    common = {"format_version": version, "backbone": backbone or {"method": "scratch"},
              "embedding_id": emb_id, "model_name": name, "kind": embedding.kind, "layer": embedding.layer,
              "architecture": config.to_dict(), "reduction": reduction, "info": info or {}}
    shape = list(embedding.transmitted_shape(preprocess.size))
    client_tensors = {f"extractor.{k}": v for k, v in extractor.state_dict().items()}
    client_tensors |= {f"reduce.{k}": v for k, v in embedding.reduce.state_dict().items()}
    client_tensors |= {f"noise.{k}": v for k, v in embedding.noise.state_dict().items()}
    _write(folder / "client", "client", client_tensors,
           {"format": "privsplit.client/1", **common, "preprocess": preprocess.to_dict(), "noise": noise_spec,
            "feature_shape": shape, **({} if transform is None else {"input_transform": transform.spec()})})
    server_tensors = {f"analyzer.{k}": v for k, v in embedding.analyzer.state_dict().items()}
    server_tensors |= {f"reconstruct.{k}": v for k, v in embedding.reconstruct.state_dict().items()}
    _write(folder / "server", "server", server_tensors,
           {"format": "privsplit.server/1", **common, "classes": list(classes), "primary": primary,
            "input": {"name": INPUT_NAME, "datatype": "FP32", "shape": shape},
            "outputs": [{"name": OUTPUT_NAMES[0], "datatype": "FP32", "shape": [len(classes)]},
                        {"name": OUTPUT_NAMES[1], "datatype": "BYTES", "shape": [1]}]})
    return folder / "client", folder / "server"


def _read(folder: str | Path, side: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    folder = Path(folder)
    man_path, weights = folder / f"{side}.json", folder / f"{side}.safetensors"
    if not man_path.exists() or not weights.exists():
        raise BundleError(f"{folder} is not a {side} bundle (needs {side}.json and {side}.safetensors); "
                          "create one with `privsplit embed`")
    manifest = json.loads(man_path.read_text())
    if manifest.get("format") != f"privsplit.{side}/1":
        raise BundleError(f"{man_path}: format {manifest.get('format')!r} is not privsplit.{side}/1")
    if bundle_version(manifest) > BUNDLE_FORMAT_VERSION:
        raise BundleError(f"{man_path}: format_version {bundle_version(manifest)} is newer than this privsplit "
                          f"reads ({BUNDLE_FORMAT_VERSION}); upgrade privsplit")
    if _manifest_digest(manifest) != manifest.get("manifest_sha256"):
        raise BundleError(f"{man_path} was modified after export (manifest SHA-256 mismatch); re-export the bundle")
    if _sha256(weights) != manifest.get("tensors_sha256"):
        raise BundleError(f"{weights} does not match the SHA-256 in {man_path}: tampered or from another "
                          "embedding; re-export the bundle")
    return manifest, load_file(str(weights))


def _halves(manifest: dict[str, Any]) -> tuple[nn.Module, nn.Module, nn.Module, nn.Module]:
    model = build_model(VGGConfig.from_dict(manifest["architecture"]))
    extractor, analyzer = split(model, at=manifest["layer"])
    if manifest["reduction"]:
        red = build_reduction(manifest["reduction"])
        return extractor, analyzer, red.reduce, red.reconstruct
    return extractor, analyzer, nn.Identity(), nn.Identity()


def _load(module: nn.Module, tensors: dict[str, torch.Tensor], prefix: str) -> None:
    module.load_state_dict({k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(prefix + ".")})


def load_client_bundle(folder: str | Path, *, deterministic_noise: bool = False, seed: int | None = None) -> ClientBundle:
    """Load and verify a client bundle; ``deterministic_noise``/``seed`` are for tests only."""
    man, tensors = _read(folder, "client")
    extractor, _, reduce, _ = _halves(man)
    _load(extractor, tensors, "extractor")
    _load(reduce, tensors, "reduce")
    if "input_transform" in man:
        extractor = nn.Sequential(_input_transform(folder, man["input_transform"]), extractor)
    noise = noise_from_spec(man["noise"], deterministic=deterministic_noise, seed=seed)
    _load(noise, tensors, "noise")
    return ClientBundle(man["embedding_id"], man["model_name"], man["kind"], man["layer"],
                        nn.Sequential(extractor, reduce).eval(), noise.eval(),
                        Preprocess.from_dict(man["preprocess"]), list(man["feature_shape"]), man)


def _input_transform(folder: str | Path, spec: Any) -> nn.Module:
    try:
        return transform_from_spec(spec)
    except (KeyError, ValueError) as err:
        raise BundleError(f"{folder}: cannot rebuild the device's input transform {spec!r}: {err}. The bundle "
                          "needs a privsplit that knows this transform (upgrade, or register it in "
                          "privsplit.defenses.input_transforms.INPUT_TRANSFORMS)") from None


def load_server_bundle(folder: str | Path) -> ServerBundle:
    """Load and verify a server bundle."""
    man, tensors = _read(folder, "server")
    _, analyzer, _, reconstruct = _halves(man)
    _load(analyzer, tensors, "analyzer")
    _load(reconstruct, tensors, "reconstruct")
    return ServerBundle(man["embedding_id"], man["model_name"], man["kind"], man["layer"],
                        nn.Sequential(reconstruct, analyzer).eval(), man["input"]["name"],
                        list(man["input"]["shape"]), list(man["classes"]), man["primary"], man)


def embedding_from_bundles(client: ClientBundle, server: ServerBundle) -> Embedding:
    """The in-process pipeline of a client/server bundle pair (for attacks and checks)."""
    check_pair(client, server)
    return Embedding.from_parts(kind=client.kind, layer=client.layer, extractor=client.extractor[0],
                                reduce=client.extractor[1], noise=client.noise, reconstruct=server.analyzer[0],
                                analyzer=server.analyzer[1], reduction_config=client.manifest["reduction"]).eval()


def check_pair(client: ClientBundle, server: ServerBundle) -> None:
    """Refuse a client and server that were not exported together."""
    if client.embedding_id != server.embedding_id:
        raise BundleError(f"client bundle {client.embedding_id[:12]} and server bundle {server.embedding_id[:12]} "
                          "come from different embeddings; export both with the same `privsplit embed` run")
