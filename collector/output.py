"""How commands print: JSON for scripts, aligned tables for people.

Kept apart from collector/cli.py so feature commands can print without importing
the command-line entry point (which imports every feature).
"""

from __future__ import annotations

import json
from typing import Any, Iterable

import click


def emit_json(obj: Any) -> None:
    """Pretty, key-sorted JSON on stdout; values JSON does not know (dates, paths) as text."""
    click.echo(json.dumps(obj, indent=2, sort_keys=True, default=str))


def table(rows: Iterable[dict[str, Any]], columns: list[str]) -> None:
    """Left-aligned columns with an upper-case header; ``(none)`` for no rows."""
    rows = list(rows)
    if not rows:
        click.echo("(none)")
        return
    cells = [[("" if r.get(c) is None else str(r.get(c))) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    click.echo("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths)))
    for row in cells:
        click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths)))
