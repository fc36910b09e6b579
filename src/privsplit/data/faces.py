"""Decoded, labelled faces: the in-memory dataset every training loop and attack works on."""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import Dataset

from privsplit.data.errors import DataError
from privsplit.data.images import decode_manifest
from privsplit.data.manifest import Manifest
from privsplit.data.transforms import Preprocess, normalize

__all__ = ["FaceData", "FaceDataset", "load_faces"]


@dataclass
class FaceData:
    """uint8 images with integer labels for some manifest columns.

    ``classes[col][k]`` is the string label of integer ``k``; ``manifest`` holds exactly the kept rows.
    """

    images: torch.Tensor
    labels: dict[str, torch.Tensor]
    classes: dict[str, list[str]]
    manifest: Manifest
    preprocess: Preprocess
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def subset(self, indices: Sequence[int] | np.ndarray | torch.Tensor) -> FaceData:
        """The images and labels at ``indices`` (a new FaceData; the class names are kept)."""
        idx = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        return FaceData(
            images=self.images[idx],
            labels={k: v[idx] for k, v in self.labels.items()},
            classes=self.classes,
            manifest=self.manifest.subset(idx.tolist()),
            preprocess=self.preprocess,
        )

    def inputs(self, indices: torch.Tensor | None = None) -> torch.Tensor:
        """Normalised float inputs (all rows or ``indices``)."""
        imgs = self.images if indices is None else self.images[indices]
        return normalize(imgs, self.preprocess)

    def batches(
        self, batch_size: int, *, column: str, shuffle: bool = False, generator: torch.Generator | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Yield ``(indices, inputs, labels)`` batches without a DataLoader (the data is already in RAM)."""
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        y = self.labels[column]
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            yield idx, self.inputs(idx), y[idx]


class FaceDataset(Dataset):
    """A torch ``Dataset`` view of :class:`FaceData` for users who prefer DataLoaders."""

    def __init__(self, data: FaceData, column: str) -> None:
        self.data, self.column = data, column

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        idx = torch.tensor([i])
        return self.data.inputs(idx)[0], int(self.data.labels[self.column][i])


def load_faces(
    manifest: Manifest,
    preprocess: Preprocess,
    *,
    columns: Sequence[str],
    required: Sequence[str] = (),
    skip_bad: bool = False,
    progress: bool = True,
) -> FaceData:
    """Decode ``manifest`` and encode ``columns`` as integers.

    Rows whose value is empty in a ``required`` column (e.g. the primary label) are dropped and
    counted in ``skipped`` -- a face without a label cannot be trained on or evaluated.

    Raises:
        DataError: a column is missing (message lists the available ones) or an image is unreadable.
    """
    for col in columns:
        manifest.column(col)  # raises a DataError naming the column
    keep = [i for i in range(len(manifest)) if all(manifest.columns[c][i] for c in required)]
    kept = set(keep)
    skipped = [(manifest.paths[i], f"empty label in column(s) {', '.join(required)}")
               for i in range(len(manifest)) if i not in kept]
    manifest = manifest.subset(keep)
    decoded = decode_manifest(manifest, preprocess, skip_bad=skip_bad, progress=progress)
    manifest = manifest.subset(decoded.kept)
    labels: dict[str, torch.Tensor] = {}
    classes: dict[str, list[str]] = {}
    for col in columns:
        values = manifest.columns[col]
        names = sorted(set(values))
        if not names:
            raise DataError(f"column '{col}' has no values in manifest '{manifest.name}'")
        lookup = {v: k for k, v in enumerate(names)}
        classes[col] = names
        labels[col] = torch.tensor([lookup[v] for v in values], dtype=torch.int64)
    return FaceData(decoded.images, labels, classes, manifest, preprocess, skipped + decoded.skipped)
