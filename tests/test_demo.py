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
