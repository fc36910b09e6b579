"""What an audit attacks: the bundle's own run (default) or the auditor's own labelled photos.

* **The bundle's run** (``data=None`` or the run's dataset name): targets = the run's attack split
  (identities never used in training, Siamese fine-tuning, PCA or noise calibration), auxiliary data =
  the run's primary training split (other people), group = the dataset's near-duplicate column (CK+:
  ``sequence``).
* **Other data** (a dataset name or ``path/to/labels.csv``): identities with at least
  ``n_enrol + 1`` images become targets (``n_enrol`` to enrol, the rest to query), every other image is
  the attacker's auxiliary data (``aux=False``: none). The auditor is then responsible for the targets
  being unseen by the defence.

Columns and image counts are checked on the manifest before any image is decoded, so bad input is
one clear error line and costs nothing.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from privsplit.data.errors import DataError

if TYPE_CHECKING:  # loaded lazily: an audit of bundles alone needs no dataset code
    from privsplit.data.faces import FaceData
    from privsplit.data.manifest import Manifest
    from privsplit.data.transforms import Preprocess

__all__ = ["AuditInputs", "bundle_run", "run_inputs", "check_dataset", "dataset_inputs", "known_dataset", "split_targets"]


@dataclass
class AuditInputs:
    """Target images, the attacker's auxiliary images (or None), the group column and label columns."""

    targets: FaceData
    aux: FaceData | None
    group: str | None
    sensitive: str
    primary: str | None
    source: str


def bundle_run(bundle: str | Path) -> Path:
    """The run folder a bundle was exported from (recorded by ``privsplit embed``)."""
    path = Path(bundle) / "client" / "client.json"
    if not path.exists():
        raise DataError(f"{bundle} is not a bundle folder (no client/client.json); create one with `privsplit embed`")
    run = json.loads(path.read_text()).get("info", {}).get("run")
    if not run:
        raise DataError(f"bundle {bundle} does not record its run; pass --data (a dataset or labels.csv)")
    # a relative run path was relative to where `privsplit embed` ran: try there, then above the bundle
    for base in (Path.cwd(), *Path(bundle).resolve().parents):
        if (base / run / "model.json").exists():
            return base / run
    return Path(run)


def split_targets(identities: list[str] | tuple[str, ...], *, n_enrol: int, n_val: int = 5) -> tuple[list[int], list[int]]:
    """Rows of identities with >= ``n_enrol + 1`` images (targets) and all other rows (auxiliary)."""
    if not 0 < n_val < n_enrol:
        raise DataError(f"n_val={n_val} must be between 1 and n_enrol-1={n_enrol - 1} (validation photos are "
                        "taken from the enrolment photos)")
    counts = Counter(v for v in identities if v)
    need = n_enrol + 1
    keep = {k for k, c in counts.items() if c >= need}
    if len(keep) < 2:
        most = max(counts.values(), default=0)
        raise DataError(f"too few images per identity: an audit needs at least 2 identities with >= {need} images "
                        f"each ({n_enrol} to enrol + 1 to query); {len(keep)} have that many (the most any identity "
                        f"has is {most}); lower --n-enrol or add photos")
    rows = np.arange(len(identities))
    target = [int(i) for i in rows if identities[i] in keep]
    aux = [int(i) for i in rows if identities[i] and identities[i] not in keep]
    return target, aux


def run_inputs(run: str | Path, *, sensitive: str | None = None, primary: str | None = None,
               data_root: str | None = None, aux: bool = True) -> AuditInputs:
    """Targets, auxiliary data and group of a training run (see the module docstring)."""
    from privsplit.train.run import attack_group, load_run

    art, p = load_run(run, data_root=data_root)
    sens = art.manifest["sensitive"]
    if sensitive not in (None, sens):
        raise DataError(f"run {run} split its data by '{sens}', not '{sensitive}'; pass --data to audit another column")
    if primary not in (None, art.primary):
        raise DataError(f"the run's primary label is '{art.primary}', not '{primary}'; pass --data to use another")
    if not len(p.attack):
        raise DataError(f"run {run} has no attack identities (identities with enough images); pass --data")
    return AuditInputs(p.attack, p.train if aux else None, attack_group(art), sens, art.primary, f"run {run}")


def known_dataset(name: str) -> dict[str, Any]:
    """Defaults of a dataset privsplit knows (primary column, near-duplicate group such as CK+'s
    ``sequence``, which must never straddle enrolment and query); empty for a labels.csv."""
    from privsplit.train.run import DATASET_DEFAULTS

    return dict(DATASET_DEFAULTS.get(name, {}))


def check_dataset(name: str, *, sensitive: str = "identity", primary: str | None = "gender", group: str | None = None,
                  n_enrol: int = 15, n_val: int = 5, data_root: str | None = None) -> Manifest:
    """Load a dataset's manifest and check its columns and images per identity (no image decoded)."""
    from privsplit.data.loaders import load_manifest

    group = group or known_dataset(name).get("attack_group")
    manifest = load_manifest(name, data_root)
    for col in (c for c in (sensitive, primary, group) if c):
        manifest.column(col)  # DataError listing the available columns
    split_targets(manifest.column(sensitive), n_enrol=n_enrol, n_val=n_val)
    return manifest


def dataset_inputs(name: str, preprocess: Preprocess, *, sensitive: str = "identity", primary: str | None = "gender",
                   n_enrol: int = 15, n_val: int = 5, aux: bool = True, group: str | None = None,
                   data_root: str | None = None) -> AuditInputs:
    """Targets and auxiliary data from a dataset name or labels.csv (see the module docstring)."""
    from privsplit.data.faces import load_faces

    group = group or known_dataset(name).get("attack_group")
    manifest = check_dataset(name, sensitive=sensitive, primary=primary, group=group, n_enrol=n_enrol,
                             n_val=n_val, data_root=data_root)
    columns = [c for c in (sensitive, primary, group) if c]
    required = [c for c in (sensitive, primary) if c]
    faces = load_faces(manifest, preprocess, columns=columns, required=required)
    # load_faces may drop rows with empty labels; recompute the split on what was kept
    target_rows, aux_rows = split_targets(faces.manifest.column(sensitive), n_enrol=n_enrol, n_val=n_val)
    return AuditInputs(faces.subset(target_rows), faces.subset(aux_rows) if aux and aux_rows else None, group,
                       sensitive, primary, f"data {name}")
