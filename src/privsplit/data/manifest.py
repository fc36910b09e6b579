"""The manifest: one row per image (a path relative to ``root``) plus string label columns.

Every loader (LFW, CK+, CelebA, a generic CSV, the synthetic generator) produces a :class:`Manifest`;
everything downstream (decoding, splits, training) only sees manifests, so adding a dataset means
writing one small loader.
"""
from __future__ import annotations

import csv
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from privsplit.data.errors import DataError

__all__ = ["Manifest"]


@dataclass(frozen=True)
class Manifest:
    """Image paths and label columns of a face dataset.

    Args:
        root: folder the paths are relative to.
        paths: one relative path per image.
        columns: label name -> one string per image ("" means missing).
        name: dataset name shown to users (``"lfw"``, ``"synthetic"``...).
        crop: default centre-crop fraction for this dataset's images (LFW faces are centred in a
            250x250 frame with background around them, so the middle is cropped before resizing).
        synthetic: True for procedurally generated faces; shown wherever results are printed.
    """

    root: Path
    paths: tuple[str, ...]
    columns: dict[str, tuple[str, ...]]
    name: str
    crop: float = 1.0
    synthetic: bool = False
    description: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        for col, values in self.columns.items():
            if len(values) != len(self.paths):
                raise DataError(f"column '{col}' has {len(values)} values for {len(self.paths)} images")

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def label(self) -> str:
        """Name for display; synthetic data is always marked as such."""
        return f"{self.name} (synthetic faces)" if self.synthetic else self.name

    def column(self, name: str) -> tuple[str, ...]:
        """The values of one label column; a clear error lists the available ones."""
        if name not in self.columns:
            raise DataError(
                f"label column '{name}' not found in manifest '{self.name}'; "
                f"available columns: {', '.join(sorted(self.columns)) or '(none)'}"
            )
        return self.columns[name]

    def subset(self, indices: Sequence[int] | np.ndarray) -> Manifest:
        """The rows at ``indices`` (a new Manifest over the same root)."""
        idx = [int(i) for i in indices]
        return Manifest(
            root=self.root,
            paths=tuple(self.paths[i] for i in idx),
            columns={k: tuple(v[i] for i in idx) for k, v in self.columns.items()},
            name=self.name,
            crop=self.crop,
            synthetic=self.synthetic,
            description=self.description,
        )

    def fingerprint(self) -> str:
        """SHA-256 over paths, labels and file sizes: changes when the data changes."""
        h = hashlib.sha256()
        h.update(f"{self.name}|{self.crop}|{len(self)}".encode())
        for i, p in enumerate(self.paths):
            full = self.root / p
            size = full.stat().st_size if full.exists() else -1
            h.update(f"{p}|{size}".encode())
            for col in sorted(self.columns):
                h.update(f"|{self.columns[col][i]}".encode())
        return h.hexdigest()

    @classmethod
    def from_csv(
        cls,
        csv_path: str | Path,
        *,
        root: str | Path | None = None,
        path_column: str = "path",
        name: str | None = None,
        crop: float = 1.0,
        synthetic: bool = False,
    ) -> Manifest:
        """Read a CSV with an image-path column and any number of label columns."""
        csv_path = Path(csv_path)
        if not csv_path.is_file():
            raise DataError(f"manifest CSV not found: {csv_path}")
        with csv_path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            if reader.fieldnames is None or path_column not in reader.fieldnames:
                raise DataError(
                    f"{csv_path}: no '{path_column}' column (columns: {', '.join(reader.fieldnames or [])}); "
                    "pass path_column= to name the image-path column"
                )
            rows = list(reader)
        labels = [c for c in reader.fieldnames if c != path_column]
        return cls(
            root=Path(root) if root is not None else csv_path.parent,
            paths=tuple(r[path_column] for r in rows),
            columns={c: tuple((r[c] or "").strip() for r in rows) for c in labels},
            name=name or csv_path.parent.name,
            crop=crop,
            synthetic=synthetic,
        )

    def to_csv(self, csv_path: str | Path, *, path_column: str = "path") -> None:
        """Write the manifest as a CSV (``path_column`` + one column per label), readable by :meth:`from_csv`."""
        cols = sorted(self.columns)
        with Path(csv_path).open("w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow([path_column, *cols])
            for i, p in enumerate(self.paths):
                writer.writerow([p, *(self.columns[c][i] for c in cols)])
