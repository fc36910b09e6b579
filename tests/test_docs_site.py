"""The API reference site builds with ``mkdocs build --strict``: a broken link, an unresolvable reference or a
docstring griffe cannot parse fails it (mkdocs.yml; pages per subpackage come from tools/mkdocs_api_pages.py)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_mkdocs_build_strict(tmp_path):
    if not os.environ.get("CI"):
        pytest.importorskip("mkdocs", reason="the docs extra is not installed: pip install -e '.[docs]'")
    site = tmp_path / "site"
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1", PYTHONPATH=str(ROOT / "src"))
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"),
                           "-d", str(site)], capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    problems = [ln for ln in proc.stderr.splitlines() if "WARNING" in ln or "ERROR" in ln]
    assert proc.returncode == 0, "mkdocs build --strict failed:\n" + "\n".join(problems or [proc.stderr[-3000:]])
    pages = {p.parent.name for p in (site / "api").glob("*/index.html")}
    assert {"models", "defenses", "edge", "metrics", "runtime", "attacks", "audit"} <= pages
    edge = (site / "api" / "edge" / "index.html").read_text()
    assert "partition_table" in edge and "ModelSpec" in edge  # rendered from the docstrings, not an empty page
