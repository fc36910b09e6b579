"""Where privsplit looks for data and keeps its caches.

* Real data: ``$PRIVSPLIT_DATA`` if set, else ``../shared/data`` next to the current directory or next
  to the source checkout. ``None`` when nothing is found (callers then fall back to synthetic faces).
* Caches (decoded images, generated synthetic faces): ``$PRIVSPLIT_CACHE`` if set, else
  ``.privsplit-cache/`` in the current directory (git-ignored). Never inside the read-only data folder.
"""
from __future__ import annotations

import os
from pathlib import Path

__all__ = ["data_root", "cache_dir"]


def data_root() -> Path | None:
    """Folder holding the real datasets: ``$PRIVSPLIT_DATA``, else ``../shared/data`` if present, else ``None``."""
    env = os.environ.get("PRIVSPLIT_DATA")
    if env:
        return Path(env).expanduser()
    candidates = [Path.cwd().parent / "shared" / "data", Path(__file__).resolve().parents[3] / "shared" / "data"]
    for cand in candidates:
        if cand.is_dir():
            return cand
    return None


def cache_dir() -> Path:
    """Folder for decoded images and generated data: ``$PRIVSPLIT_CACHE`` or ``./.privsplit-cache`` (created)."""
    env = os.environ.get("PRIVSPLIT_CACHE")
    path = Path(env).expanduser() if env else Path.cwd() / ".privsplit-cache"
    path.mkdir(parents=True, exist_ok=True)
    return path
