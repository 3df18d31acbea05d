"""``collector demo``: a whole simulated screening night through the real daemon.

A simulated oximeter plays a scenario on a virtual clock; the daemon finds it
through the bleak backend seam, records it into the SQLite file, and the final
report is recomputed from what was stored and compared with the live figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import sys
import time
from importlib import resources
from pathlib import Path
from typing import Any, Callable

from collector.clock import VirtualClock
from collector.features import build_daemon
from collector.storage import repo
from collector.storage.db import open_db


def default_scenario() -> Path:
    return Path(str(resources.files("simulators").joinpath("scenarios/demo_night.toml")))


def next_demo_subject(db_path: Path) -> str:
    db = open_db(db_path)
    try:
        taken = {r["id"] for r in repo.list_subjects(db.conn)}
    finally:
        db.conn.close()
    n = 1
    while f"DEMO-{n:04d}" in taken:
        n += 1
    return f"DEMO-{n:04d}"


def _fmt_hms(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


END_GRACE_S = 120.0  # virtual seconds after the scenario's end before the demo stops waiting for the device


async def run_demo(
    db_path: Path,
    config: dict[str, Any],
    *,
    scenario_path: Path | None = None,
    speed: float = 2000.0,
    echo: Callable[[str], None] = print,
    progress: bool = True,
) -> dict[str, Any]:
    from simulators.ble_backend import SimulatedAir
    from simulators.oximeter import SimulatedOximeter
    from simulators.scenario import load_scenario

    scenario = load_scenario(scenario_path or default_scenario())
    config = {**config, "storage": {**config["storage"], "synchronous": "NORMAL"}}  # a demo file needs no power-loss fsyncs
    clock = VirtualClock(speed=speed)
    air = SimulatedAir(clock)
    device = air.add(SimulatedOximeter(scenario, clock, keep_delivered=False))
    subject = next_demo_subject(db_path)
    pump = asyncio.create_task(clock.run(), name="virtual-clock")
    daemon = build_daemon(db_path, clock=clock, config=config, ble_backend=air.client_backend,
                    scanner_backend=air.scanner_backend, operator="demo", origin="simulated")
    wall0 = time.monotonic()
    try:
        await daemon.add_subject(subject, by="demo")
        echo(f"demo: subject {subject}, simulated {scenario.protocol.upper()} oximeter {device.address}, "
             f"{scenario.duration_s / 3600:g} h night at {'max' if math.isinf(speed) else f'{speed:g}x'} speed")
        playing = asyncio.create_task(device.run(), name="sim-device")
        info = await daemon.start_night(subject, device.address, by="demo")
        session_id = info["id"]
        echo(f"demo: night session {session_id} recording into {db_path}")
        tty = progress and sys.stdout.isatty()
        seen_events = 0
        last_line = 0.0
        while not playing.done():
            await asyncio.sleep(0.2 if not math.isinf(speed) else 0.05)
            if device.started_at is not None and clock.now() > device.started_at + scenario.duration_s + END_GRACE_S:
                # The scenario's night is over on the virtual clock: never wait on a device that has gone quiet
                # (a reconnecting link on a racing virtual clock would otherwise keep the demo running for ever).
                playing.cancel()
                break
            bed = daemon.nights.recorders[session_id].status(clock.now())
            for ev in bed["events"][seen_events:]:
                echo(f"\n  ! {ev['kind']} at {ev['t_utc']}: T90 {ev.get('t90_pct', 0):.2f} %" if tty else f"  ! {ev['kind']} at {ev['t_utc']}")
            seen_events = len(bed["events"])
            done = (clock.now() - (device.started_at or clock.now())) / scenario.duration_s
            live = bed["live"]
            line = (
                f"[{'#' * int(28 * min(done, 1)):<28}] {min(done, 1) * 100:5.1f}%  "
                f"SpO2 {bed['spo2_pct'] if bed['spo2_pct'] is not None else '--':>5}  pulse {bed['pulse_bpm'] if bed['pulse_bpm'] is not None else '--':>5}  "
                f"T90 {live.get('t90_pct') or 0:5.2f} % of {_fmt_hms(live.get('analysed_s') or 0)} analysed  link {bed['link_state']}"
            )
            if tty:
                sys.stdout.write("\r" + line)
                sys.stdout.flush()
            elif time.monotonic() - last_line >= 2.0 or done >= 1:
                echo(line)
                last_line = time.monotonic()
        if not playing.done() or playing.cancelled():
            with contextlib.suppress(asyncio.CancelledError):
                await playing
        if tty:
            sys.stdout.write("\n")
        live = daemon.nights.recorders[session_id].status(clock.now())["live"]
        stopped = await daemon.stop_session(session_id, by="demo")
        report = stopped.get("report") or {}
    finally:
        await daemon.shutdown()
        pump.cancel()
    echo(f"demo: night recorded in {time.monotonic() - wall0:.1f} s of wall time")
    _print_summary(report, live, echo)
    echo(f"demo: look around with: collector --db {db_path} session list   |   collector --db {db_path} report {session_id}")
    return {"subject": subject, "session_id": session_id, "report": report, "live": live}


def _print_summary(report: dict[str, Any], live: dict[str, Any], echo: Callable[[str], None]) -> None:
    if not report:
        echo("demo: no final report was produced")
        return
    verdict = {True: "MEETS the T90 criterion", False: "FAILS the T90 criterion", None: "is INVALID (repeat the night)"}[report.get("meets_t90_criterion")]
    echo(f"final report ({report['definitions']['t90']}):")
    echo(f"  recording {_fmt_hms(report['recording_s'])}, analysed {_fmt_hms(report['analysed_s'])} ({report['analysed_pct']:.1f} %)")
    echo(f"  T90 {report['t90_s']:.0f} s = {report['t90_pct']:.2f} % of analysed time "
         f"(<= 90: {report['t90_pct_inclusive']:.2f} %, of recording: {report['t90_pct_of_recording']:.2f} %)"
         f"{'  BORDERLINE: review' if report['borderline'] else ''}")
    echo(f"  nadir {report['nadir_spo2']} %, mean {report['mean_spo2']:.1f} %, ODI3 {report['odi3_per_h']:.1f}/h, ODI4 {report['odi4_per_h']:.1f}/h")
    echo(f"  gaps: {report['gaps']['count']} ({report['gaps']['total_s']:.0f} s): "
         + ", ".join(f"{k} {v['total_s']:.0f} s" for k, v in report["gaps"]["by_cause"].items()))
    same = abs((live.get("t90_s") or 0) - report["t90_s"]) < 1e-9 and abs((live.get("analysed_s") or 0) - report["analysed_s"]) < 1e-9
    echo(f"  live figures {'equal' if same else 'DIFFER FROM'} the final report (live T90 {live.get('t90_s')} s of {live.get('analysed_s')} s)")
    echo(f"  the night {verdict}")
