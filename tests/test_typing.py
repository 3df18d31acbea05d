"""The type checker passes on the packages pyproject.toml names ([tool.mypy] packages).

Strict for drivers/ (see the overrides there).  The run uses the project's own
configuration and no targets of its own, so what CI checks is what ``python -m mypy``
checks by hand.  The cache lives in a fixed directory under .mypy_cache (git-ignored)
so a rerun takes seconds.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".mypy_cache" / "test-suite"


def test_mypy_passes() -> None:
    assert importlib.util.find_spec("mypy") is not None, "mypy is not installed: pip install -e '.[test]'"
    cmd = [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"), "--cache-dir", str(CACHE)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (
        f"mypy found type errors (rerun: cd {ROOT} && python -m mypy):\n{proc.stdout}{proc.stderr}"
    )
