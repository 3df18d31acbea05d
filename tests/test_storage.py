"""Storage: pragmas, migrations, the batching writer, and the append-only audit table."""

from __future__ import annotations

import sqlite3

import pytest

from collector.storage import audit, repo
from collector.storage.db import migrate, open_db, transaction
from collector.storage.writer import Writer


def test_pragmas_and_migrations_are_idempotent(db_path):
    db = open_db(db_path)
    assert db.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert migrate(db) == []
    versions = [r[0] for r in db.conn.execute("SELECT version FROM schema_migrations ORDER BY version")]
    assert versions == sorted(versions) and versions[0] == 1


def _subjects(conn: sqlite3.Connection) -> list[str]:
    return [r[0] for r in conn.execute("SELECT id FROM subjects ORDER BY id")]


def test_a_caught_inner_failure_undoes_only_the_inner_block(db_path):
    conn = open_db(db_path).conn
    with transaction(conn):
        repo.add_subject(conn, "SCR-0001", by="t", at=1.0e9)
        with pytest.raises(RuntimeError):
            with transaction(conn):
                repo.add_subject(conn, "SCR-0002", by="t", at=1.0e9)
                raise RuntimeError("inner")
        with transaction(conn):
            repo.add_subject(conn, "SCR-0003", by="t", at=1.0e9)
    assert not conn.in_transaction
    assert _subjects(sqlite3.connect(db_path)) == ["SCR-0001", "SCR-0003"]
    assert audit.verify(conn).ok  # the undone block's audit row went with it


def test_an_outer_failure_undoes_everything_nested_included(db_path):
    conn = open_db(db_path).conn
    with pytest.raises(RuntimeError):
        with transaction(conn):
            repo.add_subject(conn, "SCR-0001", by="t", at=1.0e9)
            with transaction(conn):
                repo.add_subject(conn, "SCR-0002", by="t", at=1.0e9)
            raise RuntimeError("outer")
    assert not conn.in_transaction
    assert _subjects(conn) == [] and conn.execute("SELECT COUNT(*) FROM audit").fetchone()[0] == 0


def test_an_escaping_inner_failure_undoes_the_whole_transaction(db_path):
    conn = open_db(db_path).conn
    with pytest.raises(RuntimeError):
        with transaction(conn):
            repo.add_subject(conn, "SCR-0001", by="t", at=1.0e9)
            with transaction(conn):
                raise RuntimeError("inner, not caught")
    assert _subjects(conn) == []


def test_a_transaction_nests_inside_the_writers_own(db_path):
    w = Writer(db_path, synchronous="NORMAL")
    try:
        def write(conn: sqlite3.Connection) -> None:
            with transaction(conn):
                repo.add_subject(conn, "SCR-0001", by="t", at=1.0e9)
            try:
                with transaction(conn):
                    repo.add_subject(conn, "SCR-0002", by="t", at=1.0e9)
                    raise ValueError("undo this one")
            except ValueError:
                pass

        w.submit(write).result()
        w.flush()
    finally:
        w.close()
    assert _subjects(sqlite3.connect(db_path)) == ["SCR-0001"]


def test_audit_rows_cannot_be_changed_or_deleted(db_path):
    conn = open_db(db_path).conn
    conn.execute("BEGIN IMMEDIATE")
    repo.add_subject(conn, "SCR-0001", by="t", at=1.0e9)
    conn.execute("COMMIT")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("UPDATE audit SET actor = 'someone else'")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("DELETE FROM audit")
    assert audit.verify(conn).ok


def test_foreign_keys_refuse_samples_of_unknown_sessions(db_path):
    conn = open_db(db_path).conn
    with pytest.raises(sqlite3.IntegrityError):
        conn.execute("INSERT INTO spo2_samples (session_id, host_utc_ms, valid, pulse_valid, flags) VALUES (999, 0, 1, 1, 0)")


def test_writer_commits_batches_and_keeps_order(db_path):
    w = Writer(db_path, flush_interval_s=0.05, synchronous="NORMAL")
    try:
        sid = w.submit(lambda c: (repo.add_subject(c, "SCR-0002", by="t", at=1e9),
                                  repo.open_session(c, subject_id="SCR-0002", kind="night", device_id=None, by="t", at=1e9))[1]).result()
        for i in range(10):
            w.add_samples([(sid, 1_000_000 + i * 1000 + j, None, 95.0, 60.0, None, 1, 1, 0, None, None) for j in range(100)])
        w.flush()
        conn = sqlite3.connect(db_path)
        assert conn.execute("SELECT COUNT(*) FROM spo2_samples").fetchone()[0] == 1000
        assert w.commits <= 10
    finally:
        w.close()


def test_a_failing_control_call_reports_its_error_and_keeps_going(db_path):
    w = Writer(db_path, synchronous="NORMAL")
    try:
        with pytest.raises(Exception, match="unknown subject"):
            w.submit(lambda c: repo.open_session(c, subject_id="SCR-9999", kind="night", device_id=None, by="t", at=1e9)).result()
        w.submit(lambda c: repo.add_subject(c, "SCR-0003", by="t", at=1e9)).result()
    finally:
        w.close()
    assert sqlite3.connect(db_path).execute("SELECT COUNT(*) FROM subjects").fetchone()[0] == 1


def test_a_cancelled_caller_does_not_kill_the_writer(db_path):
    import threading

    w = Writer(db_path, synchronous="NORMAL")
    gate = threading.Event()
    try:
        blocker = w.submit(lambda c: gate.wait(10))  # holds the writer while we cancel the next call
        doomed = w.submit(lambda c: repo.add_subject(c, "SCR-0004", by="t", at=1e9))
        assert doomed.cancel()
        gate.set()
        blocker.result(10)
        w.submit(lambda c: repo.add_subject(c, "SCR-0005", by="t", at=1e9)).result(10)
        w.flush(10)
        assert w.healthy
    finally:
        w.close()
    ids = [r[0] for r in sqlite3.connect(db_path).execute("SELECT id FROM subjects")]
    assert ids == ["SCR-0005"], "a call cancelled before it ran is not executed"


def test_a_malformed_row_costs_only_itself(db_path):
    w = Writer(db_path, flush_interval_s=0.05, synchronous="NORMAL")
    try:
        sid = w.submit(lambda c: (repo.add_subject(c, "SCR-0006", by="t", at=1e9),
                                  repo.open_session(c, subject_id="SCR-0006", kind="night", device_id=None, by="t", at=1e9))[1]).result()
        good = (sid, 1000, None, 95.0, 60.0, None, 1, 1, 0, None, None)
        w.add_samples([good, (sid, 2**70, None, 95.0, 60.0, None, 1, 1, 0, None, None), good[:1] + (3000,) + good[2:]])
        w.flush()
        assert w._thread.is_alive()
    finally:
        w.close()
    assert sqlite3.connect(db_path).execute("SELECT host_utc_ms FROM spo2_samples ORDER BY 1").fetchall() == [(1000,), (3000,)]


def test_a_closed_writer_fails_fast(db_path):
    from collector.errors import StorageError

    w = Writer(db_path, synchronous="NORMAL")
    w.close()
    with pytest.raises(StorageError, match="stopped"):
        w.submit(lambda c: None).result(1)
    with pytest.raises(StorageError):
        w.flush(1)
