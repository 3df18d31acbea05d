"""The writer's memory is bounded: past ``memory_samples`` samples in memory, new ones wait in the spill
file next to the database and are written back in order; never a dropped sample, never one stored twice.

At real scale: a whole night of 8 beds at 1 Hz (10 h, 288 000 rows) handed over while the writer
thread is blocked (a disk that does not answer), then released.
"""

from __future__ import annotations

import sqlite3
import threading
import tracemalloc
from pathlib import Path

from collector.storage import repo, seals
from collector.storage.spill import row_lines
from collector.storage.writer import Writer

BEDS, NIGHT_S = 8, 10 * 3600
T0_MS = 1_767_000_000_000
CAP = 20_000


def _open_sessions(w: Writer, n: int) -> list[int]:
    def make(c: sqlite3.Connection) -> list[int]:
        out = []
        for i in range(n):
            repo.add_subject(c, f"SCR-{i + 1:04d}", by="t", at=1.0e9)
            out.append(repo.add_recorded_session(c, subject_id=f"SCR-{i + 1:04d}", kind="night", origin="import",
                                                 started_at=1.0e9, stopped_at=1.0e9 + NIGHT_S, by="t", settings={}))
        return out

    return w.submit(make).result(30)


def _second(sids: list[int], s: int) -> list[tuple]:
    """One second of the ward: a row per bed (SAMPLE_COLUMNS order)."""
    return [(sid, T0_MS + s * 1000, s, 90.0 + (s + b) % 9, 60.0 + b, None, 1, 1, 0, None, s % 65536)
            for b, sid in enumerate(sids)]


def _stall(w: Writer) -> tuple[threading.Event, object]:
    stalled, release = threading.Event(), threading.Event()

    def stall(_conn: sqlite3.Connection) -> None:  # a disk that does not answer: the writer thread waits
        stalled.set()
        release.wait(600)

    busy = w.submit(stall)
    assert stalled.wait(10)
    return release, busy


def test_a_night_held_back_by_a_blocked_writer_stays_bounded_in_memory_and_lands_exactly_once(tmp_path: Path) -> None:
    db = tmp_path / "collector.sqlite"
    w = Writer(db, flush_interval_s=0.05, synchronous="NORMAL", backlog_samples=100_000, memory_samples=CAP)
    try:
        sids = _open_sessions(w, BEDS)
        release, busy = _stall(w)
        tracemalloc.start()
        base, _ = tracemalloc.get_traced_memory()
        gap = None
        for s in range(NIGHT_S):
            w.add_samples(_second(sids, s))
            if s == NIGHT_S // 2:  # a record nobody waits for, made mid-spill: kept, in order
                gap = w.submit(lambda c, s=s: repo.open_gap(c, sids[0], start_ms=T0_MS + s * 1000, cause="device_disconnected",
                                                       detail=None), retry=True)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        total = BEDS * NIGHT_S
        assert w.unwritten == total and w.backlog and w.spilling
        assert w.max_in_memory <= CAP
        assert w.spill.path.exists() and w.spill.rows == total - w.in_memory
        # 288 000 rows in memory are about 70 MB of tuples; the spill keeps it to the cap's few MB.
        assert peak - base < 15e6, f"{(peak - base) / 1e6:.1f} MB traced while the writer was blocked"
        release.set()  # type: ignore[attr-defined]
        busy.result(30)  # type: ignore[attr-defined]
        w.flush(300)
        assert gap is not None and gap.result(30)
        assert w.unwritten == 0 and not w.spilling and w.in_memory == 0
        assert not w.spill.path.exists() and not w.spill.done_path.exists()
        assert w.spill.spilled >= total - CAP
    finally:
        w.close()
    conn = sqlite3.connect(db)
    try:
        stored = conn.execute("SELECT session_id, host_utc_ms, spo2_pct FROM spo2_samples ORDER BY rowid").fetchall()
        assert len(stored) == BEDS * NIGHT_S
        # In the order handed over (rowid order), each exactly once.
        assert stored == [(r[0], r[1], r[3]) for s in range(NIGHT_S) for r in _second(sids, s)]
        assert seals.verify(conn).ok
    finally:
        conn.close()


def test_a_spill_file_left_by_a_crash_is_written_back_first_without_doubling_the_chunk_already_stored(tmp_path: Path) -> None:
    """The daemon died after committing a chunk read from the spill file but before recording it: the next
    writer resumes from the recorded offset and does not store that chunk again."""
    db = tmp_path / "collector.sqlite"
    w = Writer(db, flush_interval_s=0.05, synchronous="NORMAL")
    try:
        (sid,) = _open_sessions(w, 1)
        rows = [r for s in range(3000) for r in _second([sid], s)]
        w.add_samples(rows[:1000])  # the chunk already written back before the crash
        w.flush()
    finally:
        w.close()
    spill = db.with_name(db.name + ".spill.jsonl")
    spill.write_text(row_lines(rows) + '{"spo2_samples": [1, 2')  # and a line cut by the crash
    (db.with_name(db.name + ".spill.done")).write_text("0")  # its progress was never recorded
    w = Writer(db, flush_interval_s=0.05, synchronous="NORMAL", memory_samples=1000)
    try:
        assert w.spilling and w.unwritten == 3000
        w.add_samples(_second([sid], 3000))  # a new sample comes after the spilled ones
        w.flush(60)
        assert not spill.exists() and w.unwritten == 0
    finally:
        w.close()
    conn = sqlite3.connect(db)
    try:
        stored = conn.execute("SELECT host_utc_ms FROM spo2_samples ORDER BY rowid").fetchall()
        assert [t for (t,) in stored] == [T0_MS + s * 1000 for s in range(3001)]
    finally:
        conn.close()


def test_a_spilling_writer_raises_the_storage_alert_and_says_so_in_status(tmp_path: Path) -> None:
    import asyncio

    from collector.clock import VirtualClock
    from collector.features import build_daemon
    from collector.ward.service import engine_of
    from conftest import T0, fast_config

    async def main() -> tuple[list[dict], dict, list[dict]]:
        cfg = fast_config()
        cfg["storage"]["memory_samples"] = 1000
        daemon = build_daemon(tmp_path / "c.sqlite", clock=VirtualClock(start=T0), config=cfg)
        try:
            (sid,) = _open_sessions(daemon.writer, 1)
            release, busy = _stall(daemon.writer)
            for s in range(3000):
                daemon.writer.add_samples(_second([sid], s))
            engine = engine_of(daemon)
            engine.check()
            showing, status = engine.visible(), daemon.status()["writer"]
            release.set()  # type: ignore[attr-defined]
            busy.result(30)  # type: ignore[attr-defined]
            daemon.writer.flush(60)
            engine.check()
            return showing, status, [a for a in engine.visible() if a["active"]]
        finally:
            await daemon.shutdown()

    showing, status, after = asyncio.run(main())
    (alert,) = [a for a in showing if a["kind"] == "storage_backlog"]
    assert "c.sqlite.spill.jsonl" in alert["message"] and "nothing is lost" in alert["message"]
    assert status["spilled_samples"] == 2000 and status["spill_file"].endswith("c.sqlite.spill.jsonl")
    assert not [a for a in after if a["kind"] == "storage_backlog"]  # cleared once written back
