"""Decode a manifest's images once and cache them as uint8 tensors (safetensors, never pickle)."""
from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from privsplit.config import cache_dir
from privsplit.data.errors import DataError
from privsplit.data.manifest import Manifest
from privsplit.data.transforms import Preprocess, decode_image
from privsplit.data.align import NoFaceError
from privsplit.progress import progress_bar

__all__ = ["DecodedImages", "decode_manifest"]


@dataclass
class DecodedImages:
    """uint8 images N×3×S×S for the manifest rows in ``kept`` (bad rows skipped when allowed)."""

    images: torch.Tensor
    kept: np.ndarray
    skipped: list[tuple[str, str]] = field(default_factory=list)


def _cache_key(manifest: Manifest, pre: Preprocess) -> str:
    h = hashlib.sha256()
    h.update(manifest.fingerprint().encode())
    h.update(str(manifest.root.resolve()).encode())
    h.update(json.dumps(pre.to_dict(), sort_keys=True).encode())
    return h.hexdigest()[:24]


def decode_manifest(
    manifest: Manifest,
    pre: Preprocess,
    *,
    skip_bad: bool = False,
    use_cache: bool = True,
    progress: bool = True,
    workers: int = 2,
) -> DecodedImages:
    """Decode every image of ``manifest`` with ``pre``.

    Args:
        skip_bad: drop unreadable images and report them in ``skipped`` instead of raising.
        use_cache: reuse/write ``<cache_dir>/images-<key>.safetensors`` keyed by data + preprocessing.

    Raises:
        DataError: the first unreadable image (file named), unless ``skip_bad``.
    """
    key = _cache_key(manifest, pre)
    path = cache_dir() / f"images-{key}.safetensors"
    if use_cache and path.exists():
        blob = load_file(str(path))
        meta = json.loads(path.with_suffix(".json").read_text())
        if meta.get("skipped") and not skip_bad:
            bad = meta["skipped"][0]
            raise DataError(f"cannot decode image {bad[0]}: {bad[1]} (pass skip_bad=True / --skip-bad to skip "
                            f"{len(meta['skipped'])} bad rows)")
        return DecodedImages(blob["images"], blob["kept"].numpy(), [tuple(s) for s in meta["skipped"]])

    def load(i: int) -> tuple[int, np.ndarray | None, str]:
        try:
            return i, decode_image(manifest.root / manifest.paths[i], pre), ""
        except (DataError, NoFaceError) as exc:
            if not skip_bad:
                raise
            return i, None, str(exc)

    out = np.zeros((len(manifest), pre.size, pre.size, 3), dtype=np.uint8)
    ok = np.zeros(len(manifest), dtype=bool)
    skipped: list[tuple[str, str]] = []
    with ThreadPoolExecutor(max_workers=workers) as pool, progress_bar(
        f"decoding {manifest.label}", total=len(manifest), enabled=progress
    ) as advance:
        for i, arr, err in pool.map(load, range(len(manifest))):
            if arr is None:
                skipped.append((manifest.paths[i], err))
            else:
                out[i], ok[i] = arr, True
            advance(1)
    kept = np.flatnonzero(ok)
    images = torch.from_numpy(out[kept]).permute(0, 3, 1, 2).contiguous()
    if use_cache:
        save_file({"images": images, "kept": torch.from_numpy(kept)}, str(path))
        path.with_suffix(".json").write_text(json.dumps({"skipped": skipped, "dataset": manifest.name}))
    return DecodedImages(images, kept, skipped)
