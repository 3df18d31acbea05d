"""Storage: pragmas, migrations, the batching writer, and the append-only audit table."""

from __future__ import annotations

import ast
import re
import sqlite3
from pathlib import Path

import pytest

from collector import schemas
from collector.storage import audit, repo, schema
from collector.storage.db import connect, migrate, open_db, transaction
from collector.storage.writer import Writer


def test_pragmas_and_migrations_are_idempotent(db_path):
    db = open_db(db_path)
    assert db.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert migrate(db) == []
    versions = [r[0] for r in db.conn.execute("SELECT version FROM schema_migrations ORDER BY version")]
    assert versions == sorted(versions) and versions[0] == 1


# Names recorded by every database made so far: renaming one would run it again on those databases.
RELEASED_MIGRATIONS = ["core capture tables", "eligibility facts", "night reports", "spirometry manoeuvres and results", "operators"]
WAVE_2_MIGRATIONS = ["sample seals", "site identity", "site key and signed heads", "session sample stats",
                     "night reports append-only", "device memory back-fill", "review resolutions",
                     "spirometry observations and masked messages", "spirometry append-only", "spirometry files",
                     "operator_roles_tokens", "operator full names", "operator_language", "upload queue",
                     "electronic signatures", "ward alerts", "night notes", "alert message ids", "ward alert repeats"]
CORE_TABLES = {"subjects", "devices", "sessions", "spo2_samples", "sample_seals", "gaps", "events", "audit", "site_identity",
               "site_keys", "signed_heads", "session_sample_stats"}


def _layout(conn: sqlite3.Connection) -> list[tuple[str, ...]]:
    return conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' ORDER BY type, name").fetchall()


def test_released_migration_names_stay_the_same(db_path):
    names = [r[0] for r in open_db(db_path).conn.execute("SELECT name FROM schema_migrations ORDER BY version")]
    assert sorted(names) == sorted(RELEASED_MIGRATIONS + WAVE_2_MIGRATIONS)
    assert names[0] == "core capture tables"  # feature tables reference the core ones


def test_a_database_made_before_feature_migrations_opens_without_rerunning_them(db_path):
    """The layout the single migration list produced: versions 1-5 in the old order."""
    by_name = {m.name: m.sql for m in schemas.migrations()}
    conn = connect(db_path, synchronous="NORMAL")
    conn.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_utc TEXT NOT NULL)")
    for version, name in enumerate(RELEASED_MIGRATIONS, start=1):
        conn.executescript(by_name[name])
        conn.execute("INSERT INTO schema_migrations VALUES (?, ?, '2026-01-01T00:00:00+00:00')", (version, name))
    with transaction(conn):
        repo.add_subject(conn, "SCR-0001", by="t", at=1.0e9)
    before = conn.execute("SELECT * FROM schema_migrations ORDER BY version").fetchall()
    conn.close()

    db = open_db(db_path)  # applies this wave's new migrations only, after the released ones
    assert migrate(db) == []
    after = db.conn.execute("SELECT * FROM schema_migrations ORDER BY version").fetchall()
    assert after[:len(before)] == before and [r[1] for r in after[len(before):]] == WAVE_2_MIGRATIONS
    assert _subjects(db.conn) == ["SCR-0001"] and audit.verify(db.conn).ok
    assert _layout(db.conn) == _layout(open_db(db_path.with_name("fresh.sqlite")).conn)


def test_a_new_migration_is_applied_once_after_the_others(db_path):
    db = open_db(db_path)
    extra = [*schemas.migrations(), schema.Migration("test extra table", "CREATE TABLE test_extra (x INTEGER);")]
    assert migrate(db, extra) == ["test extra table"]
    assert migrate(db, extra) == []
    assert db.conn.execute("SELECT version FROM schema_migrations WHERE name = 'test extra table'").fetchone()[0] == len(extra)


def test_the_core_schema_holds_no_feature_table():
    created = {t for m in schema.MIGRATIONS for t in re.findall(r"CREATE TABLE (?:IF NOT EXISTS )?(\w+)", m.sql)}
    assert created <= CORE_TABLES  # night_reports belongs to collector/oximetry/schema.py
    tree = ast.parse(Path(schema.__file__).read_text(encoding="utf-8"))
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)} | {
        a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not {m for m in imported if m and m.startswith("collector")}, "storage/schema.py must not import feature tables"


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


# -- only store modules run SQL ----------------------------------------------------------------
ROOT = Path(__file__).resolve().parents[1]
NOT_THE_DATABASE = {"collector/export/merge.py",  # DuckDB: the merged analysis file, not the collector's SQLite
                    "collector/export/pdf_fonts.py"}  # HarfBuzz's SubsetPlan.execute(): a font subset, no SQL
# Every query runs in its owning package's store module; nothing is pending.
NIGHT_QUERIES_PENDING: dict[str, int] = {}


def _is_store(rel: str) -> bool:
    return rel.startswith("collector/storage/") or rel.endswith(("/store.py", "/schema.py"))


def _execute_calls(path: Path) -> int:
    return sum(1 for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
               if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
               and node.func.attr in ("execute", "executemany", "executescript"))


def test_only_store_modules_run_sql():
    found = {}
    for path in sorted((ROOT / "collector").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if not _is_store(rel) and rel not in NOT_THE_DATABASE and (n := _execute_calls(path)):
            found[rel] = n
    assert found == NIGHT_QUERIES_PENDING, "SQL belongs in the owning package's store module (see NIGHT_QUERIES_PENDING)"


@pytest.mark.parametrize("bad", ["SCR-0042\n", "SCR-0042\r\n", " SCR-0042", "SCR-\u0660042", "SCR0042\x00"])
def test_subject_ids_with_a_trailing_newline_or_foreign_digits_are_refused(bad):
    from collector.errors import InvalidInput
    from collector.storage.repo import validate_subject_id

    with pytest.raises(InvalidInput, match="invalid subject ID"):
        validate_subject_id(bad)
