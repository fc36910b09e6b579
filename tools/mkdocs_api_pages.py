"""mkdocs hook: one API reference page per privsplit subpackage, generated at build time from the source tree.

Each page shows the subpackage's docstring, then every public module in it (names not starting with ``_``)
rendered by mkdocstrings from the docstrings. Generated, not committed, so a module added on any branch
gets its page without anyone editing the docs; ``api/index.md`` covers the package root and the foundation
modules (``registry``, ``errors``, ...).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

SRC = Path(__file__).resolve().parents[1] / "src" / "privsplit"
TITLES = {"attacks": "Attacks", "audit": "Audit", "backbone": "Backbone", "cli": "Command line", "data": "Data",
          "defenses": "Defences", "edge": "Edge (export, cost)", "metrics": "Metrics", "models": "Models",
          "report": "Reports", "runtime": "Runtime (client, service)", "train": "Training"}
_HIDE = "    options:\n      show_root_heading: false\n"


def _block(dotted: str, *, members: bool = True) -> str:
    return f"::: {dotted}\n" + _HIDE + ("" if members else "      members: false\n") + "\n"


def _public_modules(folder: Path) -> list[str]:
    return sorted(p.stem for p in folder.glob("*.py") if not p.stem.startswith("_"))


def pages() -> dict[str, str]:
    """``api/<name>.md`` -> markdown, for the package root and every subpackage."""
    out: dict[str, str] = {}
    root = ["# privsplit", "", "The package root (the names a user needs first) and the foundation modules.", "",
            _block("privsplit", members=False)]
    for mod in _public_modules(SRC):
        root += [f"## privsplit.{mod}", "", _block(f"privsplit.{mod}")]
    out["api/index.md"] = "\n".join(root)
    for pkg in sorted(p.parent.name for p in SRC.glob("*/__init__.py")):
        text = [f"# {TITLES.get(pkg, pkg)}: privsplit.{pkg}", "", _block(f"privsplit.{pkg}", members=False)]
        for mod in _public_modules(SRC / pkg):
            text += [f"## privsplit.{pkg}.{mod}", "", _block(f"privsplit.{pkg}.{mod}")]
        out[f"api/{pkg}.md"] = "\n".join(text)
    return out


def on_files(files: Files, config: Any) -> Files:
    for uri, content in pages().items():
        files.append(File.generated(config, uri, content=content))
    return files
