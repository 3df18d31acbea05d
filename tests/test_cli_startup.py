"""The command line starts without loading what its commands do not all need.

Every ``collector`` call pays for the modules ``collector.cli`` imports, before it does
anything: measured on the ward machines, the web framework, plotting, numerics, DuckDB and
pandas made each command take about 2 s.  Each one is loaded by the commands that use it.
A fresh interpreter imports the CLI and lists what it loaded (the test process itself has
most of these loaded already).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# Each costs tens of milliseconds or more to import (python -X importtime, issue 17); none is
# needed to parse the command line or print help.  The config (pydantic) is loaded by main()
# when a command runs, not at import.
HEAVY = ("fastapi", "starlette", "uvicorn", "matplotlib", "numpy", "duckdb", "pandas", "pydantic",
         "sqlite_utils", "httpx", "bleak", "serial", "asyncio", "edfio", "collector.oximetry.analysis",
         "collector.spirometry.gli", "collector.daemon", "collector.api", "collector.web")


def loaded_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"],
                         capture_output=True, text=True, check=True, timeout=120)
    return set(json.loads(out.stdout.splitlines()[-1]))


def heavy_in(modules: set[str]) -> list[str]:
    return sorted(m for m in modules for h in HEAVY if m == h or m.startswith(h + "."))


def test_importing_the_cli_loads_no_heavy_module() -> None:
    assert heavy_in(loaded_after("import collector.cli")) == []


def test_help_for_every_command_loads_no_heavy_module() -> None:
    """Building the whole command tree (what ``--help`` and the docs generator do) stays light."""
    code = ("import click\nfrom collector.cli import main\n"
            "def walk(cmd, ctx):\n"
            "    cmd.get_help(ctx)\n"
            "    for sub in getattr(cmd, 'commands', {}).values():\n"
            "        walk(sub, click.Context(sub, info_name=sub.name, parent=ctx))\n"
            "walk(main, click.Context(main, info_name='collector'))")
    assert heavy_in(loaded_after(code)) == []


def test_sqlite_utils_is_loaded_without_pandas() -> None:
    """sqlite-utils imports pandas when installed (a fifth of start-up); the collector never needs it."""
    pytest.importorskip("pandas")  # the test extra installs it, as a developer's machine has it
    loaded = loaded_after("from collector.storage.db import open_db\nimport collector.storage.sqlite_lib")
    assert "sqlite_utils" in loaded
    assert "pandas" not in loaded and "numpy" not in loaded


def test_numpy_still_imports_after_sqlite_utils() -> None:
    """Hiding numpy from sqlite-utils while it loads must not hide it from anyone else."""
    loaded = loaded_after("import collector.storage.sqlite_lib\nimport numpy\nassert numpy.zeros(2).sum() == 0")
    assert "numpy" in loaded
