"""A device that stays connected but sends nothing, for a whole day, costs a bounded amount.

Seen in a 24 h simulated run: the link reconnected at once after every watchdog reset (a
connection that ended in silence reset the back-off), each cycle committed audit rows alone
with a disk sync, the writer's queue backed up to 711 000 rows and the daemon reached 7 GB.
Now a connection without data counts as a failed attempt (the back-off grows to its cap),
the run of such connections is one audit row with its count, and the writer's backlog is
counted and flagged.  Played through the real daemon on the virtual clock.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3

from conftest import fast_config, run_night, scenario
from simulators.scenario import Interval

DAY_S = 24 * 3600.0


def test_a_silent_day_gives_a_bounded_number_of_audit_rows_and_a_bounded_queue(db_path) -> None:
    seen: dict[str, object] = {}

    def before_stop(run) -> None:
        rec = run.daemon.nights.recorders[run.session_ids[0]]
        seen.update(stats=rec.link.stats, status=run.daemon.status()["writer"],
                    max_unwritten=run.daemon.writer.max_unwritten)

    sc = scenario(duration_s=DAY_S, interval_s=1.0, silences=[Interval(600, DAY_S - 1200)])
    # A whole day with alerts checked every 2 virtual seconds (43 200 checks): minutes of CPU if a check grows.
    run = asyncio.run(run_night(db_path, [sc], before_stop=before_stop, play_timeout_s=600))
    sid = run.session_ids[0]
    conn = sqlite3.connect(db_path)
    try:
        actions = [r[0] for r in conn.execute("SELECT action FROM audit WHERE session_id = ? ORDER BY id", (sid,))]
        summary = [json.loads(r[0]) for r in conn.execute(
            "SELECT new_value FROM audit WHERE session_id = ? AND action = 'device_reconnects_without_data'", (sid,))]
        gaps = conn.execute("SELECT start_utc_ms, end_utc_ms, cause FROM gaps WHERE session_id = ?", (sid,)).fetchall()
        samples = conn.execute("SELECT COUNT(*) FROM spo2_samples WHERE session_id = ?", (sid,)).fetchone()[0]
    finally:
        conn.close()
    stats = seen["stats"]
    backoff = fast_config()["ble"]["backoff_s"]
    silence_s = DAY_S - 1200
    # Back-off at its cap: one attempt per (watchdog limit + largest step), not one every few seconds.
    assert stats.silent_connections <= silence_s / backoff[-1]
    assert stats.silent_connections >= silence_s / (backoff[-1] + 60)
    # Every attempt of the run is in one row with its count; the device rows stay a handful.
    device_rows = [a for a in actions if a.startswith("device_")]
    assert len(device_rows) <= 8, device_rows
    assert len(summary) == 1 and summary[0]["ended"] == "data resumed"
    assert summary[0]["connections_without_data"] >= stats.silent_connections - 1
    # One outage for the whole silence; the data on both sides of it is all stored.
    assert [g[2] for g in gaps] == ["watchdog_silence"]
    assert samples == len(run.devices[0].delivered)
    # The writer never fell behind: its queue stayed at a few batches.
    assert seen["max_unwritten"] < 5_000 and seen["status"]["backlog"] is False


def test_the_writer_flags_a_backlog_and_keeps_every_sample(db_path) -> None:
    """Above its limit the writer says it is behind (status flag) and still stores every sample."""
    import threading

    from collector.storage import repo
    from collector.storage.writer import Writer

    w = Writer(db_path, synchronous="NORMAL", backlog_samples=1000)
    try:
        w.submit(lambda c: repo.add_subject(c, "SCR-0001", by="t", at=1.0e9)).result(10)
        sid = w.submit(lambda c: repo.add_recorded_session(c, subject_id="SCR-0001", kind="night", origin="import",
                                                           started_at=1.0e9, stopped_at=1.0e9 + 10, by="t",
                                                           settings={})).result(10)
        stalled, release = threading.Event(), threading.Event()

        def stall(_conn: sqlite3.Connection) -> None:  # a disk that does not answer: the writer thread waits
            stalled.set()
            release.wait(30)

        busy = w.submit(stall)
        assert stalled.wait(10)
        rows = [(sid, 1_000_000_000_000 + i * 1000, None, 95.0, 60.0, None, 1, 1, 0, None, None) for i in range(3000)]
        for k in range(0, 3000, 500):
            w.add_samples(rows[k:k + 500])
        assert w.backlog is True and w.unwritten == 3000
        release.set()
        busy.result(10)
        w.flush(60)
        assert w.unwritten == 0 and w.backlog is False and w.max_unwritten == 3000
    finally:
        w.close()
    conn = sqlite3.connect(db_path)
    try:
        assert conn.execute("SELECT COUNT(*) FROM spo2_samples").fetchone()[0] == 3000
    finally:
        conn.close()
