"""The database deleted or replaced under a recording daemon: nothing silently lost, nothing silently recreated."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from collector.cli import main as cli_main
from collector.clock import VirtualClock
from collector.features import build_daemon
from collector.errors import StorageError
from collector.storage.writer import SAMPLE_COLUMNS, Writer
from simulators.ble_backend import SimulatedAir
from simulators.oximeter import SimulatedOximeter
from simulators.scenario import parse_scenario
from tests.conftest import T0, fast_config

pytestmark = pytest.mark.timeout(120)


def row(t_ms: int) -> tuple[Any, ...]:
    return (1, t_ms, None, 95.0, 60.0, None, 1, 1, 0, None, None)


def make_session(db: Path) -> None:
    conn = sqlite3.connect(db)
    conn.execute("INSERT INTO subjects (id, created_utc, created_by) VALUES ('SCR-0001', '2025-01-01T00:00:00.000Z', 't')")
    conn.execute("INSERT INTO sessions (subject_id, kind, state, origin, started_utc, started_by) "
                 "VALUES ('SCR-0001', 'night', 'open', 'live', '2025-01-01T00:00:00.000Z', 't')")
    conn.commit()
    conn.close()


@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_the_writer_notices_and_keeps_new_samples_in_a_recovery_journal(tmp_path: Path, how: str) -> None:
    db = tmp_path / "collector.sqlite"
    w = Writer(db, flush_interval_s=0.01, synchronous="NORMAL")
    make_session(db)
    w.add_samples([row(1000 + i) for i in range(10)])
    w.flush()
    assert w.samples_committed == 10
    if how == "deleted":
        db.unlink()
    else:
        shutil.copy(db, tmp_path / "other.sqlite")
        os.replace(tmp_path / "other.sqlite", db)
    w.add_samples([row(2000 + i) for i in range(5)])
    w.flush()
    assert w.samples_committed == 10 and w.samples_journaled == 5
    assert w.lost is not None and how in w.lost.message and str(w.journal) in w.lost.message
    lines = [json.loads(x) for x in w.journal.read_text().splitlines()]  # type: ignore[union-attr]
    assert [dict(zip(SAMPLE_COLUMNS, x["spo2_samples"]))["host_utc_ms"] for x in lines] == [2000, 2001, 2002, 2003, 2004]
    with pytest.raises(StorageError, match="was (deleted|replaced)"):
        w.submit(lambda c: c.execute("SELECT 1")).result(5)
    w.close()


def test_a_night_whose_database_is_deleted_keeps_recording_to_the_journal_and_says_so(tmp_path: Path) -> None:
    db = tmp_path / "collector.sqlite"
    sc = parse_scenario({"device": {"protocol": "plx", "address": "SIM-LOST-01"}, "night": {"duration_s": 3 * 3600, "seed": 4}})

    async def main() -> dict[str, Any]:
        clock = VirtualClock(start=T0)
        air = SimulatedAir(clock)
        dev = air.add(SimulatedOximeter(sc, clock))
        pump = asyncio.create_task(clock.run())
        daemon = build_daemon(db, clock=clock, config=fast_config(), ble_backend=air.client_backend, scanner_backend=air.scanner_backend)
        try:
            await daemon.add_subject("SCR-0001")
            play = asyncio.create_task(dev.run())
            await daemon.start_night("SCR-0001", dev.address)

            async def delete_at_one_hour() -> None:
                await clock.sleep(3600)
                await daemon.flush()
                db.unlink()

            await asyncio.gather(play, delete_at_one_hour())
            daemon.nights.recorders[1].pipeline.hand_over()
            await asyncio.to_thread(daemon.writer.flush)
            web_alerts = daemon.services["web"].alerts.evaluate()
            return {"status": daemon.status(), "alerts": web_alerts}
        finally:
            await daemon.shutdown()
            pump.cancel()

    out = asyncio.run(main())
    writer = out["status"]["writer"]
    assert "was deleted while recording" in writer["failed"]
    journal = Path(writer["recovery_journal"])
    n = len(journal.read_text().splitlines())
    assert writer["samples_journaled"] == n and n >= 2 * 3600 - 5  # the two hours after the deletion, kept
    assert any(a["kind"] == "storage_failed" for a in out["alerts"])

    r = CliRunner().invoke(cli_main, ["--db", str(db), "session", "list"])
    assert r.exit_code == 3 and r.output.count("\n") == 1, r.output
    assert "is missing but was used before" in r.output and "--create" in r.output
    assert not db.exists()
    r = CliRunner().invoke(cli_main, ["--db", str(db), "--create", "session", "list"])
    assert r.exit_code == 0 and db.exists()
