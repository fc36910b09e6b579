"""Architecture as code: the import directions of ``tests/architecture_rules.py``, enforced.

Every module's imports are read with ``ast`` (top-level and inside functions; ``import x`` and
``from x import y``; relative imports resolved). The checks fail on a forbidden direction (naming the file,
line and rule), on any import cycle between privsplit modules, and when ``import privsplit.runtime.client``
loads anything the device must not ship. ``python tests/test_architecture.py`` prints today's package graph.
"""
from __future__ import annotations

import ast
import functools
import json
import os
import shutil
import subprocess
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from architecture_rules import CLIENT_DENY, EXCEPTIONS, LAYERS, PLANNED, RULES, Rule, markdown

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"


@dataclass(frozen=True)
class Import:
    """One imported name: ``target`` is the most specific module it names (a privsplit module when one exists)."""

    importer: str
    target: str
    file: Path
    line: int
    type_only: bool  # under ``if TYPE_CHECKING:``: never runs, so it loads nothing and makes no runtime cycle


def _module_name(path: Path, src: Path) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


class _Reader(ast.NodeVisitor):
    """Collects (target, line, type_only) for every imported name of one module, wherever it sits."""

    def __init__(self, module: str, is_pkg: bool, modules: frozenset[str]) -> None:
        self.module, self.is_pkg, self.modules = module, is_pkg, modules
        self.found: dict[tuple[str, int, bool], None] = {}  # ordered set: one entry per module a line names
        self._type_only = 0

    def _add(self, target: str, node: ast.stmt) -> None:
        self.found[(target, node.lineno, self._type_only > 0)] = None

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):
            self._type_only += 1
            for child in node.body:
                self.visit(child)
            self._type_only -= 1
            for child in node.orelse:
                self.visit(child)
        else:
            self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name, node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = node.module or ""
        if node.level:  # relative: from the importer's package, one level up per extra dot
            package = self.module.split(".") if self.is_pkg else self.module.split(".")[:-1]
            package = package[: len(package) - (node.level - 1)]
            base = ".".join(package + ([node.module] if node.module else []))
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            self._add(sub if sub in self.modules else base, node)


@functools.lru_cache(maxsize=None)
def _parse(text: str, module: str, is_pkg: bool, modules: frozenset[str]) -> tuple[tuple[str, int, bool], ...]:
    # cached on the text: the temp copies in the tests below re-parse only the file they change
    reader = _Reader(module, is_pkg, modules)
    reader.visit(ast.parse(text))
    return tuple(reader.found)


def read_imports(src: Path) -> tuple[set[str], list[Import]]:
    """All privsplit modules under ``src`` and every import statement in them."""
    files = sorted((src / "privsplit").rglob("*.py"))
    modules = frozenset(_module_name(f, src) for f in files)
    found: list[Import] = []
    for f in files:
        module = _module_name(f, src)
        found += [Import(module, target, f, line, type_only)
                  for target, line, type_only in _parse(f.read_text(), module, f.name == "__init__.py", modules)]
    return set(modules), found


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _layer(module: str) -> str:
    """``privsplit.report.pipeline`` -> ``report``; the package root ``privsplit`` -> ``""``."""
    return module.split(".")[1] if "." in module else ""


def _excepted(imp: Import) -> bool:
    return any(imp.importer == a and _under(imp.target, b) for a, b in EXCEPTIONS)


def _where(imp: Import, src: Path) -> str:
    return f"{imp.file.relative_to(src.parent)}:{imp.line}: {imp.importer} imports {imp.target}"


def layer_violations(src: Path, imports: list[Import]) -> list[str]:
    """Imports against the layer table (direction between subpackages)."""
    out = []
    for imp in imports:
        if not _under(imp.target, "privsplit") or _excepted(imp):
            continue
        mine, theirs = _layer(imp.importer), _layer(imp.target)
        if mine == "" or theirs in ("", mine):
            continue
        if mine not in LAYERS:
            out.append(f"{_where(imp, src)}: privsplit.{mine} is not in LAYERS of tests/architecture_rules.py; "
                       "add it with what it may import and why")
        elif theirs not in LAYERS[mine][0]:
            allowed = ", ".join(sorted(LAYERS[mine][0])) or "nothing"
            out.append(f"{_where(imp, src)}: breaks layer rule '{mine}' (may import {allowed}): {LAYERS[mine][1]}")
    return out


def _breaks(rule: Rule, imp: Import) -> bool:
    if any(_under(imp.target, d) for d in rule.deny):
        return True
    if rule.external_only is None or _under(imp.target, "privsplit"):
        return False
    top = imp.target.split(".")[0]
    return top not in sys.stdlib_module_names and top not in rule.external_only


def _closure_edges(imports: list[Import], modules: set[str]) -> dict[str, list[Import]]:
    """What loading each module runs: its executable imports plus the parent packages of each target."""
    edges: dict[str, list[Import]] = defaultdict(list)
    for imp in imports:
        if imp.type_only or _excepted(imp):
            continue
        parts = imp.target.split(".")
        for i in range(1, len(parts) + 1):
            name = ".".join(parts[:i])
            if name in modules or i == len(parts):
                edges[imp.importer].append(Import(imp.importer, name, imp.file, imp.line, False))
    return edges


def loaded_by(start: str, imports: list[Import], modules: set[str]) -> dict[str, list[Import]]:
    """Every module ``start`` can load (following imports inside functions too), with the chain to it."""
    edges = _closure_edges(imports, modules)
    parents = [".".join(start.split(".")[:i]) for i in range(1, start.count(".") + 1)]
    chains: dict[str, list[Import]] = {m: [] for m in [start, *parents]}
    todo = list(chains)
    while todo:
        m = todo.pop()
        for imp in edges.get(m, []):
            if imp.target not in chains:
                chains[imp.target] = chains[m] + [imp]
                todo.append(imp.target)
    return chains


def rule_violations(src: Path, modules: set[str], imports: list[Import]) -> list[str]:
    """Imports against ``RULES`` (direct, or over everything a module loads for closure rules)."""
    out = []
    for rule in RULES:
        whos = sorted(m for m in modules if any(_under(m, w) for w in rule.who)
                      and not any(_under(m, u) for u in rule.unless))
        if not whos and not set(rule.who) <= PLANNED:
            out.append(f"rule '{rule.name}' applies to {rule.who}, which match no module: update "
                       "tests/architecture_rules.py")
        if rule.closure:
            for who in whos:
                for target, chain in loaded_by(who, imports, modules).items():
                    if chain and _breaks(rule, chain[-1]):
                        path = " -> ".join([who] + [c.target for c in chain])
                        out.append(f"{_where(chain[-1], src)}: breaks rule '{rule.name}' ({path}): {rule.why}")
        else:
            for imp in imports:
                if imp.importer in whos and not _excepted(imp) and _breaks(rule, imp):
                    out.append(f"{_where(imp, src)}: breaks rule '{rule.name}': {rule.why}")
    return out


def cycles(src: Path, modules: set[str], imports: list[Import]) -> list[str]:
    """Import cycles between privsplit modules (imports inside functions count; type-only ones do not)."""
    graph: dict[str, dict[str, Import]] = defaultdict(dict)
    for imp in imports:
        if imp.target in modules and not imp.type_only and imp.target != imp.importer:
            graph[imp.importer].setdefault(imp.target, imp)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    sccs: list[list[str]] = []

    def strongconnect(v: str) -> None:  # Tarjan; the graph has ~100 nodes, recursion is fine
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                sccs.append(sorted(comp))

    for v in sorted(modules):
        if v not in index:
            strongconnect(v)
    out = []
    for comp in sccs:
        start, members = comp[0], set(comp)
        paths = {start: [start]}
        todo = [start]
        cycle: list[str] | None = None
        while todo and cycle is None:  # breadth-first: the shortest way from start back to start
            v = todo.pop(0)
            for w in sorted(graph[v]):
                if w == start:
                    cycle = paths[v] + [start]
                    break
                if w in members and w not in paths:
                    paths[w] = paths[v] + [w]
                    todo.append(w)
        assert cycle is not None
        steps = [f"{a} -> {b} ({graph[a][b].file.relative_to(src.parent)}:{graph[a][b].line})"
                 for a, b in zip(cycle, cycle[1:])]
        out.append("import cycle: " + "; ".join(steps))
    return out


def check(src: Path) -> list[str]:
    """Every architecture violation in the tree under ``src`` (empty when it conforms)."""
    modules, imports = read_imports(src)
    return layer_violations(src, imports) + rule_violations(src, modules, imports) + cycles(src, modules, imports)


# ---------------------------------------------------------------------------------------------- tests


def test_the_package_conforms() -> None:
    problems = check(SRC)
    assert not problems, "architecture violations (rules: tests/architecture_rules.py):\n" + "\n".join(problems)


def test_layers_form_a_dag_and_name_only_known_layers() -> None:
    for pkg, (allowed, _) in LAYERS.items():
        assert allowed <= LAYERS.keys(), f"{pkg} allows unknown layers {allowed - LAYERS.keys()}"
        assert pkg not in allowed
    order = list(LAYERS)
    for pkg, (allowed, _) in LAYERS.items():  # listed bottom-up: a layer only allows layers listed before it
        assert all(order.index(a) < order.index(pkg) for a in allowed), pkg


def test_every_subpackage_has_a_layer() -> None:
    modules, _ = read_imports(SRC)
    assert {_layer(m) for m in modules} - {""} <= LAYERS.keys()


def test_docs_show_the_enforced_rules() -> None:
    doc = (ROOT / "docs" / "architecture.md").read_text()
    assert markdown() in doc, "docs/architecture.md is out of date: run `python tests/architecture_rules.py`"


def test_importing_the_device_client_loads_nothing_it_must_not_ship() -> None:
    code = "import json, sys\nimport privsplit.runtime.client\nprint(json.dumps(sorted(sys.modules)))"
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    bad = [m for m in loaded if any(_under(m, d) for d in CLIENT_DENY)]
    assert not bad, f"import privsplit.runtime.client loaded {bad} (rule 'device-client')"
    # the static reader must see everything that really loads, else the rules above check too little
    modules, imports = read_imports(SRC)
    static = set(loaded_by("privsplit.runtime.client", imports, modules))
    hidden = sorted(m for m in loaded if _under(m, "privsplit") and m not in static)
    assert not hidden, f"loaded but invisible to the ast reader (dynamic imports?): {hidden}"
    assert "privsplit.runtime.client" in loaded and "privsplit.defenses.bundles" in loaded


def _copy_src(tmp_path: Path) -> Path:
    dst = tmp_path / "src"
    shutil.copytree(SRC / "privsplit", dst / "privsplit", ignore=shutil.ignore_patterns("__pycache__"))
    return dst


def _inject(path: Path, line: str) -> None:
    text = path.read_text()
    head, sep, rest = text.partition("from __future__ import annotations\n")
    path.write_text(head + sep + line + "\n" + rest if sep else line + "\n" + text)


def test_checker_reports_an_injected_upward_import(tmp_path: Path) -> None:
    src = _copy_src(tmp_path)
    _inject(src / "privsplit" / "models" / "vgg.py", "import privsplit.attacks")
    _inject(src / "privsplit" / "metrics" / "rank.py", "def _f():\n    from ..data import faces")
    problems = check(src)
    vgg = [p for p in problems if p.startswith("src/privsplit/models/vgg.py:")]
    assert any("imports privsplit.attacks" in p and "layer rule 'models'" in p for p in vgg), problems
    rank = [p for p in problems if p.startswith("src/privsplit/metrics/rank.py:")]
    assert any("imports privsplit.data.faces" in p and "layer rule 'metrics'" in p for p in rank), problems


def test_checker_reports_what_the_client_would_load(tmp_path: Path) -> None:
    src = _copy_src(tmp_path)
    # the client's own import is fine by the layer table (runtime -> defenses) but pulls in training code
    _inject(src / "privsplit" / "runtime" / "client.py", "from privsplit.defenses.build import build_embedding")
    problems = check(src)
    assert any("breaks rule 'device-client'" in p and "privsplit.runtime.client -> privsplit.defenses.build" in p
               for p in problems), problems


def test_checker_reports_an_injected_cycle(tmp_path: Path) -> None:
    src = _copy_src(tmp_path)
    _inject(src / "privsplit" / "data" / "errors.py", "from privsplit.data.faces import FaceData")
    problems = check(src)
    assert any(p.startswith("import cycle:") and "privsplit.data.errors -> privsplit.data.faces" in p
               and "src/privsplit/data/errors.py:" in p for p in problems), problems


def test_reader_resolves_relative_and_nested_imports(tmp_path: Path) -> None:
    pkg = tmp_path / "privsplit" / "a"
    pkg.mkdir(parents=True)
    (tmp_path / "privsplit" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("from . import b\n")
    (pkg / "b.py").write_text("import torch.nn\nfrom .. import c\nfrom .b import x\n"
                              "def f():\n    from ..c import y\nif TYPE_CHECKING:\n    import typer\n")
    (tmp_path / "privsplit" / "c.py").write_text("")
    _, imports = read_imports(tmp_path)
    got = {(i.importer, i.target, i.line, i.type_only) for i in imports}
    assert got == {("privsplit.a", "privsplit.a.b", 1, False), ("privsplit.a.b", "torch.nn", 1, False),
                   ("privsplit.a.b", "privsplit.c", 2, False), ("privsplit.a.b", "privsplit.a.b", 3, False),
                   ("privsplit.a.b", "privsplit.c", 5, False), ("privsplit.a.b", "typer", 7, True)}


def _package_graph() -> str:
    _, imports = read_imports(SRC)
    graph: dict[str, set[str]] = defaultdict(set)
    for imp in imports:
        if _under(imp.target, "privsplit") and _layer(imp.target) not in ("", _layer(imp.importer)):
            graph[_layer(imp.importer) or "privsplit"].add(_layer(imp.target))
    return "\n".join(f"{k} -> {', '.join(sorted(v))}" for k, v in sorted(graph.items()))


if __name__ == "__main__":
    print(_package_graph(), "\n")
    print(markdown())
    print("\n".join(check(SRC)) or "no violations")
