"""``collector demo`` always ends: a simulated device that goes quiet at the end of its night cannot hang it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from collector.config import defaults
from collector.demo import run_demo
from simulators.oximeter import SimulatedOximeter

pytestmark = pytest.mark.timeout(120)

SCENARIO = """
[device]
protocol = "plx"
address = "SIM-DEMO-QUIET"
[night]
duration_s = 1800
seed = 2
"""


def test_the_demo_ends_when_the_device_never_finishes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    scenario = tmp_path / "night.toml"
    scenario.write_text(SCENARIO, encoding="utf-8")
    played = SimulatedOximeter.run

    async def never_finishes(self: SimulatedOximeter) -> None:
        await played(self)
        await asyncio.Event().wait()  # the device task stays alive, silent: what hung the demo under load

    monkeypatch.setattr(SimulatedOximeter, "run", never_finishes)
    lines: list[str] = []
    cfg = defaults()
    cfg["ble"]["scan_timeout_s"] = 0.5
    out = asyncio.run(run_demo(tmp_path / "demo.sqlite", cfg, scenario_path=scenario, speed=float("inf"),
                               echo=lines.append, progress=False))
    assert out["report"]["n_samples"] >= 1700, lines
    assert any("night recorded in" in line for line in lines)


def test_the_packaged_demo_night_beside_a_cpu_hog_ends_in_under_a_minute_with_few_audit_rows(tmp_path: Path) -> None:
    """What a loaded ward laptop does to the README's first command: two busy processes on two cores."""
    import os
    import sqlite3
    import subprocess
    import sys
    import time

    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 2)]
    try:
        t0 = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "collector", "demo", "--speed", "max"], cwd=tmp_path,
                              capture_output=True, text=True, timeout=110)
        elapsed = time.monotonic() - t0
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    assert done.returncode == 0, done.stderr[-2000:]
    assert elapsed < 60, f"the demo took {elapsed:.0f} s beside the CPU hogs"
    conn = sqlite3.connect(tmp_path / "collector-demo.sqlite")
    try:
        rows = conn.execute("SELECT COUNT(*) FROM audit").fetchone()[0]
    finally:
        conn.close()
    assert rows < 200, f"{rows} audit rows: a reconnect loop writes a row per attempt again"
