"""A step of the host clock never changes a night: samples stay on the monotonic timeline.

Whole simulated nights through the real daemon on a virtual clock; the host's wall clock is stepped
part-way (+4 h, as NTP after a resume can; -1 h, as a technician fixing the time can).  Analysed time
and T90 must equal the same night without a step, the step is stored with its size, and the night
asks for review.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from collector.cli import main as cli_main
from collector.clock import SystemClock
from simulators.scenario import parse_scenario
from tests.conftest import T0, NightRun, fast_config, run_night
from conftest import invoke

pytestmark = pytest.mark.timeout(180)
HOURS = 5


def night() -> Any:
    return parse_scenario({
        "device": {"protocol": "plx", "address": "SIM-STEP-01"},
        "night": {"duration_s": HOURS * 3600, "seed": 11, "baseline_spo2": 95},
        "desaturations": [{"count": 6, "depth": 8, "duration_s": 40}],
        "disconnects": [{"at_s": 7200, "duration_s": 120}],
    })


def record(db: Path, step_s: float | None, at_h: float = 2.5) -> NightRun:
    async def main() -> NightRun:
        stepper: list[asyncio.Task[None]] = []

        def arm(run: NightRun) -> None:
            async def step() -> None:
                await run.clock.sleep(T0 + at_h * 3600 - run.clock.now())
                run.clock.step_wall(step_s)  # type: ignore[arg-type]
                run.daemon.check_clock()  # what the hand-over loop does about once a second

            stepper.append(asyncio.create_task(step()))

        return await run_night(db, [night()], config=fast_config(), on_start=arm if step_s is not None else None)

    return asyncio.run(main())


def figures(run: NightRun) -> dict[str, Any]:
    r = run.stopped[0]["report"]
    return {k: r[k] for k in ("analysed_s", "recording_s", "t90_s", "t90_pct", "n_samples", "gaps")}


@pytest.fixture(scope="module")
def unstepped(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return figures(record(tmp_path_factory.mktemp("base") / "c.sqlite", None))


@pytest.mark.parametrize("step_s", [4 * 3600.0, -3600.0])
def test_a_clock_step_changes_neither_analysed_time_nor_t90(tmp_path: Path, unstepped: dict[str, Any], step_s: float,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    db = tmp_path / "collector.sqlite"
    with caplog.at_level(logging.WARNING):
        run = record(db, step_s)
    assert figures(run) == unstepped
    assert not [r for r in caplog.records if "OutOfOrder" in r.getMessage() or r.exc_info]
    report = run.stopped[0]["report"]
    [step] = report["clock_steps"]
    assert step["step_s"] == pytest.approx(step_s, abs=1)
    assert report["needs_review"] and "host_clock_step" in report["review_reasons"]
    conn = sqlite3.connect(db)
    gaps = [r[0] for r in conn.execute("SELECT cause FROM gaps")]
    assert gaps == ["device_disconnected"]  # the scenario's own outage only: no watchdog gap from the step
    [(detail,)] = conn.execute("SELECT new_value FROM audit WHERE action = 'clock_step'").fetchall()
    assert json.loads(detail)["step_s"] == pytest.approx(step_s, abs=1)


def test_a_clock_step_during_a_passing_night_asks_for_review(tmp_path: Path) -> None:
    db = tmp_path / "collector.sqlite"
    run = record(db, 4 * 3600.0)
    assert run.stopped[0]["report"]["decision"] == "pass"
    r = invoke(db, "eligibility", "SCR-0001", "--json")
    assert r.exit_code == 0, r.output
    crit = next(c for c in json.loads(r.output)["criteria"] if c["id"] == "nocturnal_spo2")
    assert crit["state"] == "needs_review" and "host clock stepped" in crit["reason"]
    r = invoke(db, *["report", str(run.session_ids[0])])
    assert "host clock stepped by +14400.0 s" in r.output and "durations are unchanged" in r.output


def test_the_system_clock_follows_the_monotonic_clock_until_reanchored() -> None:
    wall, mono = [1_000_000.0], [50.0]
    clock = SystemClock(wall_source=lambda: wall[0], monotonic_source=lambda: mono[0])
    mono[0] += 10
    wall[0] += 10 + 3600  # one hour step on top of ten real seconds
    assert clock.now() == 1_000_010.0 and clock.wall() == 1_003_610.0
    clock.reanchor()
    assert clock.now() == 1_003_610.0
