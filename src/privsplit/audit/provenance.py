"""Where an audit's numbers come from: bundle hashes, data hash, seeds, versions, git commit."""
from __future__ import annotations

import json
import platform
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from privsplit.data.faces import FaceData

__all__ = ["bundle_provenance", "environment_provenance", "data_provenance"]


def bundle_provenance(bundle: str | Path) -> dict[str, Any]:
    """Embedding id and SHA-256s of a bundle folder (``client/`` and ``server/`` from ``privsplit embed``).

    The manifests already carry the tensor-file SHA-256 and their own digest (verified on load); those
    are what identify the exact bundle that was audited.
    """
    out: dict[str, Any] = {"bundle": str(bundle)}
    for side in ("client", "server"):
        path = Path(bundle) / side / f"{side}.json"
        if not path.exists():
            continue
        man = json.loads(path.read_text())
        out["embedding_id"] = man.get("embedding_id")
        out[f"{side}_tensors_sha256"] = man.get("tensors_sha256")
        out[f"{side}_manifest_sha256"] = man.get("manifest_sha256")
        out.setdefault("kind", man.get("kind"))
        out.setdefault("layer", man.get("layer"))
    return out


def data_provenance(data: FaceData) -> dict[str, Any]:
    """Name and fingerprint (SHA-256 over paths, labels, file sizes) of a ``FaceData``'s manifest."""
    man = getattr(data, "manifest", None)
    if man is None:
        return {"images": len(data)}
    return {"name": man.name, "label": man.label, "images": len(data), "manifest_sha256": man.fingerprint()}


def _version(module: str) -> str | None:
    try:
        return str(__import__(module).__version__)
    except Exception:  # noqa: BLE001 - provenance must never fail an audit
        return None


def _git_commit() -> str | None:
    """HEAD of the checkout the package runs from, if it is one (a wheel install has none)."""
    here = Path(__file__).resolve().parent
    try:
        res = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, check=False)
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    if res.returncode != 0:
        return None
    return res.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def environment_provenance() -> dict[str, Any]:
    """Package versions, Python, git commit (None outside a checkout) and the UTC time."""
    return {"versions": {m: _version(m) for m in ("privsplit", "torch", "numpy")},
            "python": platform.python_version(), "git_commit": _git_commit(),
            "time_utc": datetime.now(timezone.utc).isoformat(timespec="seconds")}
