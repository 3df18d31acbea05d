"""The module import graph of collector/, drivers/ and simulators/ has no cycle.

Built from the source with ``ast`` (nothing is imported): every ``import`` counts, at
module level or inside a function (a lazy import that closes a loop is still a loop),
except those under ``if TYPE_CHECKING:``, which never run.  Relative imports and
``from package import module`` are resolved to the module they load.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("collector", "drivers", "simulators")

# Edges from modules another change is moving right now; each must still exist (or the entry goes).
PENDING_EDGES: dict[tuple[str, str], str] = {}

# Only the entry points may import the command line: ``collector = "collector.cli:main"`` and ``python -m collector``.
CLI_IMPORTERS = {"collector.__main__", "collector.cli_reference"}  # the docs generator walks the command tree


def find_modules(root: Path, packages: tuple[str, ...]) -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is a package ``__init__``)."""
    out = {}
    for pkg in packages:
        for path in sorted((root / pkg).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            is_pkg = parts[-1] == "__init__"
            out[".".join(parts[:-1] if is_pkg else parts)] = (path, is_pkg)
    return out


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _import_nodes(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:  # the else branch does run
                visit(child)
            return
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _known(name: str, modules: dict[str, tuple[Path, bool]]) -> str | None:
    """The longest prefix of ``name`` that is one of our modules (``import a.b.c`` loads a.b.c)."""
    parts = name.split(".")
    while parts and ".".join(parts) not in modules:
        parts.pop()
    return ".".join(parts) or None


def module_imports(name: str, path: Path, is_pkg: bool, modules: dict[str, tuple[Path, bool]]) -> set[str]:
    """The project modules ``name`` imports."""
    deps: set[str] = set()
    for node in _import_nodes(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            deps.update(m for a in node.names if (m := _known(a.name, modules)))
            continue
        if node.level:
            base = name.split(".") if is_pkg else name.split(".")[:-1]
            base = base[: len(base) - (node.level - 1)]
            source = ".".join(base + ([node.module] if node.module else []))
        else:
            source = node.module or ""
        for alias in node.names:
            full = f"{source}.{alias.name}" if source else alias.name
            if full in modules:  # from package import module
                deps.add(full)
            elif (m := _known(source, modules)) is not None:
                deps.add(m)
    deps.discard(name)
    return deps


def import_graph(root: Path = ROOT, packages: tuple[str, ...] = PACKAGES) -> dict[str, set[str]]:
    modules = find_modules(root, packages)
    return {name: module_imports(name, path, is_pkg, modules) for name, (path, is_pkg) in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as ``[a, b, ..., a]``, or None (depth-first search, deterministic order)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)) is not None:
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)) is not None:
            return cycle
    return None


def without_pending(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    return {a: {b for b in deps if (a, b) not in PENDING_EDGES} for a, deps in graph.items()}


# -- the project --------------------------------------------------------------------------------
def test_no_import_cycle() -> None:
    cycle = find_cycle(without_pending(import_graph()))
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_only_the_entry_points_import_the_cli() -> None:
    importers = {a for a, deps in without_pending(import_graph()).items() if "collector.cli" in deps}
    assert importers <= CLI_IMPORTERS, f"these import collector.cli (use collector.context / collector.output): {sorted(importers - CLI_IMPORTERS)}"


@pytest.mark.parametrize("edge", sorted(PENDING_EDGES))
def test_pending_edges_still_exist(edge: tuple[str, str]) -> None:
    a, b = edge
    assert b in import_graph().get(a, set()), f"{a} no longer imports {b}: remove it from PENDING_EDGES"


def test_no_import_by_name_string() -> None:
    """``importlib.import_module("...")`` would hide an edge from this graph."""
    users = []
    for name, (path, _) in find_modules(ROOT, PACKAGES).items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call):
                fn = node.func
                called = fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", None)
                if called in ("import_module", "__import__"):
                    users.append(f"{name}:{node.lineno}")
    assert not users, f"import modules explicitly, not by name: {users}"


# -- the graph builder itself ---------------------------------------------------------------------
def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def test_lazy_relative_and_submodule_imports_are_edges(tmp_path: Path) -> None:
    _write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "def f():\n    from . import b\n",
        "pkg/b.py": "from pkg.sub import c\n",
        "pkg/sub/__init__.py": "",
        "pkg/sub/c.py": "import pkg.a\n",
    })
    graph = import_graph(tmp_path, ("pkg",))
    assert graph["pkg.a"] == {"pkg.b"} and graph["pkg.b"] == {"pkg.sub.c"} and graph["pkg.sub.c"] == {"pkg.a"}
    assert find_cycle(graph) == ["pkg.a", "pkg.b", "pkg.sub.c", "pkg.a"]


def test_type_checking_imports_are_not_edges(tmp_path: Path) -> None:
    _write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "import pkg.b\n",
        "pkg/b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.a import X\nelse:\n    from . import c\n",
        "pkg/c.py": "",
    })
    graph = import_graph(tmp_path, ("pkg",))
    assert graph["pkg.b"] == {"pkg.c"} and find_cycle(graph) is None
