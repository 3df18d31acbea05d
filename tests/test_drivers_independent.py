"""drivers/ is a library the collector uses, never the other way round.

Every module under drivers/ is parsed (not imported, so a lazy import inside a
function counts too) and must not import the collector package.
"""

from __future__ import annotations

import ast
from pathlib import Path

DRIVERS = Path(__file__).resolve().parents[1] / "drivers"


def _imported_modules(tree: ast.AST) -> list[tuple[int, str]]:
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


def test_drivers_do_not_import_the_collector() -> None:
    files = sorted(DRIVERS.rglob("*.py"))
    assert files, f"no sources found under {DRIVERS}"
    offenders = [
        f"{path.relative_to(DRIVERS.parent)}:{line}: import {name}"
        for path in files
        for line, name in _imported_modules(ast.parse(path.read_text(encoding="utf-8"), str(path)))
        if name == "collector" or name.startswith("collector.")
    ]
    assert not offenders, "drivers/ must not import collector (take a drivers.clock protocol instead):\n" + "\n".join(offenders)


def test_the_check_sees_a_collector_import() -> None:
    """Guard against a vacuous check: the parser does find such imports."""
    tree = ast.parse("import collector.clock\nfrom collector import clock\ndef f():\n    from collector.clock import Clock\n")
    assert [name for _, name in _imported_modules(tree)] == ["collector.clock", "collector", "collector.clock"]
