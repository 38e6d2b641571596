"""The package's import graph, read from the source with `ast` (nothing is imported): imports flow one way between
the stage folders, there are no cycles, and no module imports another's private names (docs/architecture.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "sanaedit"

# Each module's layer: a module may import its own layer and those below, never above. The longest matching prefix
# decides; the root `sanaedit` (its __init__ re-exports the public API lazily) is left out of the graph.
LAYERS = {
    "sanaedit.errors": 0,
    "sanaedit.core": 0,
    "sanaedit.plan": 0,
    "sanaedit.models": 1,
    "sanaedit.image": 1,
    "sanaedit.formats": 2,
    "sanaedit.backends": 2,
    "sanaedit.runtime": 3,
    "sanaedit.pipeline": 4,
    "sanaedit.load": 5,
    "sanaedit.export": 5,
    "sanaedit.train": 5,
    "sanaedit.tools": 5,
    "sanaedit.apps": 6,
}
MAX_ROOT_MODULES = 10


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def layer(module: str) -> int | None:
    matches = [p for p in LAYERS if module == p or module.startswith(p + ".")]
    return LAYERS[max(matches, key=len)] if matches else None


def imports() -> list[tuple[str, str, str | None, int]]:
    """(importer, imported module, name imported from it or None, line) for every import of the package's own
    modules, wherever it sits (top level, in a function, under TYPE_CHECKING)."""
    mods = modules()
    edges = []
    for module, path in mods.items():
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [(alias.name, None) for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                assert node.level == 0, f"{path}:{node.lineno}: relative import (the package imports absolutely)"
                base = node.module or ""
                targets = [
                    (f"{base}.{a.name}", None) if f"{base}.{a.name}" in mods else (base, a.name) for a in node.names
                ]
            else:
                continue
            for target, name in targets:
                while target not in mods and "." in target:
                    target = target.rsplit(".", 1)[0]
                if target in mods and target.split(".")[0] == "sanaedit" and target != module:
                    edges.append((module, target, name, node.lineno))
    return edges


def test_every_module_has_a_layer():
    assert [m for m in modules() if m != "sanaedit" and layer(m) is None] == []


def test_imports_flow_down():
    upward = [
        f"{a}:{line} imports {b} (layer {layer(a)} -> {layer(b)})"
        for a, b, _, line in imports()
        if a != "sanaedit" and b != "sanaedit" and layer(b) > layer(a)
    ]
    assert upward == []


def test_no_import_cycles():
    graph: dict[str, set[str]] = {m: set() for m in modules()}
    for a, b, _, _ in imports():
        if "sanaedit" not in (a, b):
            graph[a].add(b)
    # Tarjan's strongly connected components: any of more than one module is a cycle
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                cycles.append(sorted(group))

    for v in graph:
        if v not in index:
            visit(v)
    assert cycles == []


def test_no_private_names_imported_across_modules():
    private = [
        f"{a}:{line} imports {b}.{name}"
        for a, b, name, line in imports()
        if name and name.startswith("_") and not name.startswith("__")
    ]
    assert private == []


def test_root_holds_the_public_api_and_few_modules():
    root = sorted(p.stem for p in PACKAGE.glob("*.py"))
    assert len(root) <= MAX_ROOT_MODULES, root


@pytest.mark.parametrize("folder", ["core", "models", "image"])
def test_bottom_layers_import_no_heavy_app_library(folder):
    """The bottom of the package never reaches for the server or the CLI's libraries."""
    for path in (PACKAGE / folder).rglob("*.py"):
        tree = ast.parse(path.read_text())
        names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert not names & {"fastapi", "uvicorn", "argparse"}, path
