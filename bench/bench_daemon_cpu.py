"""The real daemon's CPU per stored sample: 24 simulated beds at 1 Hz, in real time.

The daemon is built as ``collector run --simulate`` builds it (``build_daemon``, the BLE link,
the night service, the writer, the ward alerts), on the system clock: every wait is a real
asyncio wake-up, as on the ward laptop.  After the beds have connected, the process's CPU
time (every thread: event loop and writer) is divided by the samples the writer committed
in a window of ``--seconds``.  Beside it, in the same run and before the daemon starts: the
CPU of one bare asyncio wake-up (a task sleeping and waking, nothing else), the unit every
timer of the daemon costs, and the CPU of the simulated oximeters alone (they run in the
daemon's process and wake once per tick each), which is taken off to give the daemon's own
CPU per stored sample.  Prints figures; not a test.

    python bench/bench_daemon_cpu.py [--beds 24] [--seconds 60]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import tempfile
import time
from pathlib import Path
from typing import Any


def bed_scenario(bed: int, seconds: float) -> dict[str, Any]:
    return {"device": {"protocol": "plx", "address": f"SIM-CPU-{bed + 1:02d}", "interval_s": 1.0},
            "night": {"duration_s": seconds + 600, "seed": 300 + bed, "noise_spo2": 0.8},
            "desaturations": [{"count": 2, "depth": 8, "duration_s": 60}]}


async def bare_wakeup_us(n: int = 3000, interval_s: float = 0.001) -> float:
    """CPU microseconds of one asyncio wake-up: a task that sleeps ``interval_s`` and wakes, n times."""
    c = time.process_time()
    for _ in range(n):
        await asyncio.sleep(interval_s)
    return (time.process_time() - c) / n * 1e6


async def simulators_alone_us(beds: int, seconds: float) -> float:
    """CPU microseconds per tick of the simulated oximeters with nobody but a no-op subscriber."""
    from collector.clock import SystemClock
    from simulators.oximeter import SimulatedOximeter
    from simulators.scenario import parse_scenario

    clock = SystemClock()
    devices = [SimulatedOximeter(parse_scenario(bed_scenario(b, seconds + 5)), clock) for b in range(beds)]
    ticks = [0]

    def sink(data: bytearray) -> None:
        ticks[0] += 1

    for dev in devices:
        client = object()
        dev.attach(client)  # type: ignore[arg-type]
        dev.subscribe(client, dev.profile.notify_uuids[0], sink)  # type: ignore[arg-type]
    tasks = [asyncio.create_task(d.run()) for d in devices]
    await asyncio.sleep(1.5)
    c0, n0 = time.process_time(), ticks[0]
    await asyncio.sleep(seconds)
    cpu, n = time.process_time() - c0, ticks[0] - n0
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return cpu / max(n, 1) * 1e6


async def run(beds: int, seconds: float, warmup_s: float) -> dict[str, float]:
    from collector.clock import SystemClock
    from collector.config import completed
    from collector.features import build_daemon
    from simulators.ble_backend import SimulatedAir
    from simulators.oximeter import SimulatedOximeter
    from simulators.scenario import parse_scenario

    wake = await bare_wakeup_us()  # nothing else running yet
    sim_us = await simulators_alone_us(beds, min(20.0, max(5.0, seconds / 3)))
    tmp = Path(tempfile.mkdtemp(prefix="bench-daemon-cpu-"))
    clock = SystemClock()
    air = SimulatedAir(clock)
    devices = [air.add(SimulatedOximeter(parse_scenario(bed_scenario(b, seconds + warmup_s)), clock)) for b in range(beds)]
    daemon = build_daemon(tmp / "collector.sqlite", clock=clock, config=completed({}, source="bench"),
                          ble_backend=air.client_backend, scanner_backend=air.scanner_backend, origin="simulated")
    # A ward spreads 24 beds over several adapters; the simulated air is one, so it holds them all.
    daemon.nights.slots.limit = beds
    tasks = [asyncio.create_task(d.run(), name=f"sim-{d.address}") for d in devices]
    try:
        await daemon.resume_open_sessions()
        for b, dev in enumerate(devices):
            subject = f"CPU-{b + 1:04d}"
            await daemon.add_subject(subject)
            await daemon.start_night(subject, dev.address)
        await asyncio.sleep(warmup_s)  # every bed connected and streaming
        await daemon.flush()
        w = daemon.writer
        c0, t0, s0 = time.process_time(), time.perf_counter(), w.samples_committed
        await asyncio.sleep(seconds)
        await daemon.flush()
        cpu, wall, stored = time.process_time() - c0, time.perf_counter() - t0, w.samples_committed - s0
        for sid in list(daemon.nights.recorders):
            await daemon.stop_session(sid, by="bench")
        await daemon.shutdown()
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return {"cpu": cpu, "wall": wall, "stored": stored, "wake_us": wake, "sim_us": sim_us}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--beds", type=int, default=24)
    ap.add_argument("--seconds", type=float, default=60.0, help="measured real-time window")
    ap.add_argument("--warmup", type=float, default=8.0, help="seconds for the beds to connect before the window")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    r = asyncio.run(run(args.beds, args.seconds, args.warmup))
    per_sample = r["cpu"] / max(r["stored"], 1) * 1e6
    own = per_sample - r["sim_us"]
    print(f"daemon, {args.beds} simulated beds at 1 Hz, real time, {r['wall']:.1f} s window:"
          f" {r['stored']:,} samples stored, {r['cpu']:.2f} s CPU ({r['cpu'] / r['wall'] * 100:.1f} % of one core)")
    print(f"  bare asyncio wake-up (anchor, same run): {r['wake_us']:8.1f} us CPU")
    print(f"  process CPU per stored sample:           {per_sample:8.1f} us  = {per_sample / r['wake_us']:5.2f} wake-ups")
    print(f"  of it the simulated oximeters (alone):   {r['sim_us']:8.1f} us  = {r['sim_us'] / r['wake_us']:5.2f} wake-ups")
    print(f"  the daemon's own CPU per stored sample:  {own:8.1f} us  = {own / r['wake_us']:5.2f} wake-ups"
          f"  (issue 17: 877-1101 us before; goal at most half)")

if __name__ == "__main__":
    main()
