"""The layout stays easy to follow: no import circles, no oversized modules, lower layers never import upward.

Scans every ``import`` / ``from ... import`` in ``dicnet_ros/`` and ``training/`` (also the ones inside
functions) with the AST, so the check does not depend on what happens to be imported at run time.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"dicnet_ros": "dicnet_ros", "training": "dicnet_training"}  # folder -> import name
MAX_LINES = 600
LOWER = ("dicnet_ros.model", "dicnet_ros.data", "dicnet_ros.metrics", "dicnet_ros.preprocessing",
         "dicnet_ros.metadata")
UPPER = ("dicnet_ros.inference", "dicnet_ros.node", "dicnet_ros.bag", "dicnet_ros.demo", "dicnet_ros.cli",
         "dicnet_training")


def _modules() -> dict[str, Path]:
    mods = {}
    for folder, name in PACKAGES.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = [name, *path.relative_to(ROOT / folder).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join(parts)] = path
    return mods


def _in(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def _import_graph() -> tuple[dict[str, Path], dict[str, set[str]]]:
    mods = _modules()
    edges: dict[str, set[str]] = defaultdict(set)
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join([*anchor, *([node.module] if node.module else [])])
                targets = [base, *(f"{base}.{alias.name}" for alias in node.names)]
            edges[name].update(t for t in targets if t in mods and t != name)
    return mods, edges


def _cycles(nodes: list[str], edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in nodes:
        if v not in index:
            visit(v)
    return found


def test_no_import_circles() -> None:
    mods, edges = _import_graph()
    assert _cycles(sorted(mods), edges) == []


def test_no_module_over_the_size_limit() -> None:
    sizes = {name: len(path.read_text(encoding="utf-8").splitlines()) for name, path in _modules().items()}
    assert {n: s for n, s in sizes.items() if s > MAX_LINES} == {}


def test_lower_layers_import_nothing_from_upper_ones() -> None:
    _, edges = _import_graph()
    upward = sorted(f"{src} -> {dst}" for src, dsts in edges.items() if _in(src, LOWER)
                    for dst in dsts if _in(dst, UPPER))
    assert upward == []


def test_the_scan_sees_imports_inside_functions() -> None:
    """Guards the scanner itself: a lazy import in a function body is an edge too."""
    _, edges = _import_graph()
    assert "dicnet_ros.inference.ort_backend" in edges["dicnet_ros.inference.registry"]  # imported lazily
