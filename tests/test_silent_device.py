"""A device that stays connected but sends nothing, for a whole day, costs a bounded amount.

Seen in a 24 h simulated run: the link reconnected at once after every watchdog reset (a
connection that ended in silence reset the back-off), each cycle committed audit rows alone
with a disk sync, the writer's queue backed up to 711 000 rows and the daemon reached 7 GB.
Now a connection without data counts as a failed attempt (the back-off grows to its cap),
the run of such connections is one audit row with its count, and the writer's backlog is
counted and flagged.  The alerts of that day, the same: every reconnect re-raises the bed's one
"device disconnected" alert with its count (it was 116 new alert rows an hour), and
acknowledging it ends the run (the next drop is a new alert).  Played through the real daemon
on the virtual clock.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from typing import Any

from conftest import fast_config, run_night, scenario
from simulators.scenario import Interval

DAY_S = 24 * 3600.0


ACK_AT_S = 18 * 3600.0  # the technician acknowledges the bed's alert once, late in the day


def test_a_silent_day_gives_a_bounded_number_of_audit_rows_and_a_bounded_queue(db_path) -> None:
    from collector.ward.service import engine_of

    seen: dict[str, Any] = {}

    async def acknowledge_once(run) -> None:
        engine = engine_of(run.daemon)
        await run.clock.sleep(ACK_AT_S)
        (alert,) = [a for a in engine.visible() if a["kind"] == "device_disconnected"]
        seen["before_ack"] = alert
        seen["acked"] = await engine.acknowledge(alert["id"], by="tina", note="device replaced")

    def on_start(run) -> None:
        seen["ack_task"] = asyncio.create_task(acknowledge_once(run))

    def before_stop(run) -> None:
        rec = run.daemon.nights.recorders[run.session_ids[0]]
        seen.update(stats=rec.link.stats, status=run.daemon.status()["writer"],
                    max_unwritten=run.daemon.writer.max_unwritten, alerts=engine_of(run.daemon).visible(),
                    ack_done=seen["ack_task"].done())

    sc = scenario(duration_s=DAY_S, interval_s=1.0, silences=[Interval(600, DAY_S - 1200)])
    # A whole day with alerts checked every 2 virtual seconds (43 200 checks): minutes of CPU if a check grows.
    run = asyncio.run(run_night(db_path, [sc], on_start=on_start, before_stop=before_stop, play_timeout_s=600))
    sid = run.session_ids[0]
    conn = sqlite3.connect(db_path)
    try:
        alert_rows = conn.execute("SELECT id, kind, raise_count, raised_utc, last_raised_utc, cleared_utc, acknowledged_by "
                                  "FROM alerts WHERE session_id = ? ORDER BY id", (sid,)).fetchall()
        raised_audit = [json.loads(r[0]) for r in conn.execute(
            "SELECT new_value FROM audit WHERE session_id = ? AND action = 'alert_raised'", (sid,))]
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

    # Alerts: hundreds of reconnects, two rows for the bed - the run until the technician acknowledged it
    # at 18 h, and the run after - each counting its drops; every raise is still one audit row.
    assert seen["ack_done"] and seen["acked"]["acknowledged_by"] == "tina"
    drops = [r for r in alert_rows if r[1] == "device_disconnected"]
    assert len(drops) == 2 and len(alert_rows) <= 3, alert_rows  # (a no-sample alert may join them)
    (before, after) = drops
    assert before[0] == seen["before_ack"]["id"] and before[6] == "tina" and after[6] is None
    assert before[2] == seen["before_ack"]["raise_count"] >= 0.9 * ACK_AT_S / (backoff[-1] + 60)
    assert after[2] >= 0.9 * (DAY_S - 600 - ACK_AT_S) / (backoff[-1] + 60)
    assert before[2] + after[2] >= stats.silent_connections - 2  # one raise per silent connection
    per_alert = [r.get("raise_count", 1) for r in raised_audit if r["alert"] == "device_disconnected"]
    assert len(per_alert) == before[2] + after[2]
    assert per_alert == list(range(1, before[2] + 1)) + list(range(1, after[2] + 1))
    assert before[3] < before[4] <= before[5] and after[3] > before[4]  # first and last raise kept, then cleared
    # The page, `collector alerts` and `collector status` get one row for the bed: acknowledged-and-cleared
    # is resolved and gone, the second run is showing with its count.
    (showing,) = [a for a in seen["alerts"] if a["kind"] == "device_disconnected"]
    assert showing["id"] == after[0] and showing["raise_count"] == after[2]
    from collector.localtime import site_zone
    from collector.ward.messages import raised_text

    text = raised_text(showing, site_zone({"site": {"timezone": "Asia/Shanghai"}}))
    assert text.startswith(f"{after[2]} times since ") and text.count("+08:00") == 2


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
