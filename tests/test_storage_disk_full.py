"""A full disk keeps samples *and* the gaps and events recorded meanwhile, and writes them in order once
space is back (the soak found BLE-drop gaps lost while the disk was full: every gap must have its cause).

A real full disk: a small tmpfs filled with a ballast file (root only, as in CI).
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
from pathlib import Path

import pytest

from collector.errors import StorageError
from collector.storage import repo
from collector.storage.writer import Writer


@pytest.fixture
def small_disk(tmp_path: Path):
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(path: Path) -> None:
    with open(path, "wb", buffering=0) as fh:
        for size in (1 << 16, 512):
            try:
                while True:
                    fh.write(b"\0" * size)
            except OSError:
                pass


def _rows(sid: int, start: int, n: int) -> list[tuple]:
    return [(sid, start + i * 1000, None, 95.0, 60.0, None, 1, 1, 0, None, None) for i in range(n)]


def test_records_made_while_the_disk_is_full_are_kept_and_written_in_order_when_space_is_back(small_disk):
    db = small_disk / "collector.sqlite"
    w = Writer(db, flush_interval_s=0.05, synchronous="NORMAL")
    try:
        sid = w.submit(lambda c: (repo.add_subject(c, "SCR-0002", by="t", at=1e9),
                                  repo.open_session(c, subject_id="SCR-0002", kind="night", device_id=None, by="t", at=1e9))[1]).result()
        w.add_samples(_rows(sid, 1_000_000, 100))
        w.flush()
        ballast = small_disk / "ballast"
        _fill(ballast)
        w.add_samples(_rows(sid, 2_000_000, 20_000))  # far more than the free pages of the WAL
        gap = w.submit(lambda c: repo.open_gap(c, sid, start_ms=30_000_000, cause="device_disconnected", detail=None), retry=True)
        closed = w.submit(lambda c: repo.close_gap(c, gap.result(), end_ms=30_020_000), retry=True)
        event = w.submit(lambda c: repo.add_event(c, sid, t_ms=30_010_000, kind="note"), retry=True)
        with pytest.raises(StorageError, match="waiting for the database"):
            w.flush()
        assert not gap.done() and not closed.done() and not event.done() and w.failed is not None  # status shows it
        not_kept = w.submit(lambda c: repo.add_subject(c, "SCR-0003", by="t", at=1e9))  # a command: fails now, one error
        with pytest.raises(sqlite3.OperationalError, match="full"):
            not_kept.result(30)
        ballast.unlink()
        w.flush()  # space is back: samples first, then the records, in the order they were made
        assert gap.result(1) and closed.done() and event.done() and w.healthy
    finally:
        w.close()
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT COUNT(*) FROM spo2_samples").fetchone()[0] == 20_100
    assert conn.execute("SELECT cause, end_utc_ms FROM gaps").fetchall() == [("device_disconnected", 30_020_000)]
    assert conn.execute("SELECT kind FROM events").fetchall() == [("note",)]
