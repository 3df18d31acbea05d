"""The soak (bench/soak.py) in small: 2 beds, 1.5 virtual hours, 2 SIGKILLs of the real daemon process,
BLE drops every 5 min, a backward clock step and (as root) a disk-full stretch.  Nothing that reached the
daemon is lost beyond the durability window, every gap has its cause, T90 equals a recompute."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_soak_smoke_two_beds_two_kills():
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "soak.py"), "--hours", "1.5", "--beds", "2", "--kill-every-h", "0.5",
                        "--speed", "600", "--disk-full-at-h", "0.2", "--disk-full-h", "0.2", "--disk-mb", "64"],
                       capture_output=True, text=True, timeout=500, cwd=ROOT)
    out = r.stdout + r.stderr
    assert r.returncode == 0 and "soak: OK" in out, out
    assert "kills survived: 2 " in out, out
    assert "unexplained losses 0" in out and "no gap" not in out, out
