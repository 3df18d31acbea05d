"""Benchmark: export and verify of one subject with two 10 h nights (simulated through the daemon).

Records the two nights once (virtual clock, simulator backend), then times the export
(folder and zip) and ``verify`` of each.  Prints figures; not a test.

    PYTHONPATH=/work/main /work/venv/bin/python bench/bench_export.py
"""

from __future__ import annotations

import asyncio
import dataclasses
import tempfile
import time
from pathlib import Path

from collector.clock import VirtualClock
from collector.config import defaults
from collector.features import build_daemon
from collector.export.bundle import export_subject
from collector.export.verify import verify_bundle
from collector.storage.db import open_db
from simulators.ble_backend import SimulatedAir
from simulators.oximeter import SimulatedOximeter
from simulators.scenario import Interval, parse_scenario

T0 = 1_767_000_000.0
SUBJECT = "SCR-0100"


async def record_two_nights(db: Path) -> None:
    cfg = defaults()
    cfg["storage"]["flush_interval_s"] = 0.05
    clock = VirtualClock(start=T0)
    air = SimulatedAir(clock)
    pump = asyncio.create_task(clock.run())
    daemon = build_daemon(db, clock=clock, config=cfg, ble_backend=air.client_backend, scanner_backend=air.scanner_backend)
    try:
        await daemon.add_subject(SUBJECT)
        for night in range(2):
            sc = parse_scenario({"device": {"protocol": "plx", "address": f"SIM-BENCH-{night}"},
                                 "night": {"duration_s": 36000, "seed": 10 + night},
                                 "desaturations": [{"count": 20, "depth": 9, "duration_s": 60}]})
            sc = dataclasses.replace(sc, finger_out=[Interval(9000, 120)], disconnects=[Interval(20000, 90)])
            dev = air.add(SimulatedOximeter(sc, clock))
            play = asyncio.create_task(dev.run())
            info = await daemon.start_night(SUBJECT, dev.address)
            await play
            await daemon.stop_session(info["id"])
    finally:
        await daemon.shutdown()
        pump.cancel()


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "bench.sqlite"
        t = time.perf_counter()
        asyncio.run(record_two_nights(db))
        print(f"recorded two 10 h nights in {time.perf_counter() - t:.1f} s")
        conn = open_db(db).conn
        n = conn.execute("SELECT COUNT(*) FROM spo2_samples").fetchone()[0]
        print(f"{n} samples stored")
        for k, as_zip in enumerate((False, True)):
            t = time.perf_counter()
            r = export_subject(conn, SUBJECT, Path(tmp) / "out", config=defaults(), by="bench", now=T0 + 200_000 + k,
                               as_zip=as_zip)
            t_export = time.perf_counter() - t
            t = time.perf_counter()
            v = verify_bundle(r.path)
            t_verify = time.perf_counter() - t
            size = r.path.stat().st_size if as_zip else sum(p.stat().st_size for p in r.path.rglob("*") if p.is_file())
            print(f"{'zip   ' if as_zip else 'folder'}: export {t_export:.2f} s, verify {t_verify:.2f} s "
                  f"({'OK' if v.ok else v.problems}), {len(r.files)} files, {size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
