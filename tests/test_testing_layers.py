"""The modules of ``speko_sync.testing`` import each other in one direction.

Every import counts, wherever it is: at module top, inside a function, or
under ``TYPE_CHECKING``. A cycle among them fails with the modules on it.
Run as a script to print the graph."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = "speko_sync.testing"
ROOT = Path(__file__).resolve().parent.parent / "speko_sync" / "testing"


def _module_name(path: Path) -> str:
    return PACKAGE if path.stem == "__init__" else f"{PACKAGE}.{path.stem}"


def _resolve(module: str, node: ast.ImportFrom) -> str:
    """The absolute name ``from ... import`` in ``module`` reads from."""
    if node.level == 0:
        return node.module or ""
    package = module if module == PACKAGE else module.rpartition(".")[0]
    base = package.split(".")
    if node.level > 1:
        base = base[: -(node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """Each module of the package to the modules of the package it imports."""
    modules = {_module_name(p): p for p in sorted(root.glob("*.py"))}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                source = _resolve(name, node)
                # ``from . import _room`` names a module; ``from . import LocalServer`` the package
                targets = [f"{source}.{a.name}" if f"{source}.{a.name}" in modules else source for a in node.names]
            for target in targets:
                while target and target not in modules:  # ``import speko_sync.testing._room.x``
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of ``graph`` as the modules along it (first repeated last), or ``None``."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return [*path[path.index(target):], target]
            if target not in state and (cycle := visit(target)) is not None:
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)) is not None:
            return cycle
    return None


def test_the_testing_package_has_no_import_cycle() -> None:
    graph = import_graph()
    assert f"{PACKAGE}._server" in graph and f"{PACKAGE}._core" in graph
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(m.removeprefix(PACKAGE + ".") for m in cycle)


def test_the_cycle_check_sees_imports_anywhere(tmp_path: Path) -> None:
    (tmp_path / "__init__.py").write_text("")
    (tmp_path / "_a.py").write_text("from ._b import B\n")
    (tmp_path / "_b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ._c import C\n")
    (tmp_path / "_c.py").write_text("def f():\n    from . import _a\n")
    graph = import_graph(tmp_path)
    assert find_cycle(graph) == [f"{PACKAGE}._a", f"{PACKAGE}._b", f"{PACKAGE}._c", f"{PACKAGE}._a"]
    (tmp_path / "_c.py").write_text("import os\n")
    assert find_cycle(import_graph(tmp_path)) is None


if __name__ == "__main__":
    for module, targets in import_graph().items():
        short = module.removeprefix(PACKAGE + ".")
        print(f"{short:16} -> {', '.join(sorted(t.removeprefix(PACKAGE + '.') for t in targets)) or '-'}")
    print("cycle:", find_cycle(import_graph()))
