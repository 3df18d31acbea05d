"""Opening the database: location, pragmas and migrations.

WAL lets the daemon write while the CLI reads; ``synchronous=FULL`` makes each
committed batch survive power loss, not just a killed process (the writer
commits about twice a second, so the fsync cost is small).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import sqlite3
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator

import platformdirs

from collector.errors import StorageError
from collector.storage import writable
from collector.storage.schema import Migration

if TYPE_CHECKING:
    import sqlite_utils

APP_NAME = "als-screening-collector"
ENV_DB = "COLLECTOR_DB"


def data_dir() -> Path:
    """The user's data directory: the default database and the site ``config.toml`` live here."""
    return Path(platformdirs.user_data_dir(APP_NAME))


def default_db_path() -> Path:
    """``$COLLECTOR_DB`` if set, else one file in the user's data directory."""
    env = os.environ.get(ENV_DB)
    if env:
        return Path(env).expanduser()
    return data_dir() / "collector.sqlite"


SYNCHRONOUS_MODES = ("FULL", "NORMAL")


def connect(path: Path | str, *, check_same_thread: bool = True, synchronous: str = "FULL") -> sqlite3.Connection:
    """A raw connection with the project's pragmas (used by the writer thread).

    ``FULL`` (default) makes every commit survive power loss; ``NORMAL`` in WAL
    mode still survives a killed process and is what tests and the demo use.
    """
    if synchronous not in SYNCHRONOUS_MODES:
        raise StorageError(f"[storage] synchronous must be one of {', '.join(SYNCHRONOUS_MODES)}, not {synchronous!r}; fix the config file")
    path = Path(path)
    writable.check(path)  # an unwritable -shm/-wal would end the process by SIGBUS, not with an error
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(str(path), timeout=30.0, check_same_thread=check_same_thread, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={synchronous}")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=30000")
    except (sqlite3.Error, OSError) as exc:
        raise StorageError(
            f"cannot open database {path}: {exc}; check the path exists and is writable, or choose another with --db"
        ) from exc
    return conn


def make_read_only(conn: sqlite3.Connection) -> sqlite3.Connection:
    """Any write on ``conn`` fails from now on (commands that only read)."""
    conn.execute("PRAGMA query_only = ON")
    return conn


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction: everything in the block lands, or nothing does.

    Blocks nest: inside an open transaction a block is a SAVEPOINT, so a failure that the
    caller catches undoes only that block, and one that escapes the outermost block undoes
    everything.  The outermost block starts with ``BEGIN IMMEDIATE`` (it waits for the write
    lock up front, within the busy timeout, instead of failing later when it first writes
    while the daemon's writer holds the lock); that is why this is not sqlite-utils'
    ``Database.atomic()``, which nests the same way but opens with a deferred ``BEGIN``.
    """
    if conn.in_transaction:
        name = f"nested_{next(_savepoints)}"
        conn.execute(f"SAVEPOINT {name}")
        try:
            yield conn
        except BaseException:
            if conn.in_transaction:  # an error such as RAISE(ROLLBACK) may already have ended the whole transaction
                conn.execute(f"ROLLBACK TO SAVEPOINT {name}")
                conn.execute(f"RELEASE SAVEPOINT {name}")
            raise
        conn.execute(f"RELEASE SAVEPOINT {name}")
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


_savepoints = itertools.count(1)


def open_db(path: Path | str | None = None, *, check_same_thread: bool = True) -> sqlite_utils.Database:
    """Open (creating if needed) and migrate the database at ``path``."""
    path = Path(path) if path is not None else default_db_path()
    from collector.storage.sqlite_lib import Database  # not at import time: --help and the daemon client do not need it

    conn = connect(path, check_same_thread=check_same_thread)
    db = Database(conn)
    try:
        migrate(db)
    except sqlite3.DatabaseError as exc:
        raise StorageError(f"database {path} is not usable ({exc}); restore it from backup or choose another with --db") from exc
    return db


def migrate(db: sqlite_utils.Database, migrations: Iterable[Migration] | None = None) -> list[str]:
    """Apply pending migrations, each in its own transaction; return the names applied.

    ``migrations`` defaults to every package's (collector/schemas.py).  A migration is known by
    its name; ``version`` numbers the migrations in the order this database received them.
    """
    if migrations is None:
        from collector.schemas import migrations as registered  # the packages above storage register their tables

        migrations = registered()
    conn = db.conn
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_utc TEXT NOT NULL)"
    )
    done = {row[0] for row in conn.execute("SELECT name FROM schema_migrations")}
    applied = []
    for name, sql in migrations:
        if name in done:
            continue
        with transaction(conn):
            # Re-check under the write lock: another process may have migrated meanwhile.
            if conn.execute("SELECT 1 FROM schema_migrations WHERE name = ?", (name,)).fetchone():
                continue
            for statement in _split_sql(sql):
                conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_migrations (version, name, applied_utc)"
                " VALUES ((SELECT COALESCE(MAX(version), 0) + 1 FROM schema_migrations), ?, ?)",
                (name, datetime.now(timezone.utc).isoformat(timespec="seconds")),
            )
        applied.append(name)
    return applied


def _split_sql(sql: str) -> list[str]:
    """Split a script into statements (``executescript`` would commit our transaction)."""
    statements, current = [], []
    for line in sql.splitlines():
        current.append(line)
        candidate = "\n".join(current).strip()
        if candidate and sqlite3.complete_statement(candidate):
            statements.append(candidate)
            current = []
    rest = "\n".join(current).strip()
    if rest and not all(l.strip().startswith("--") or not l.strip() for l in current):
        statements.append(rest)
    return statements


def quick_check(path: Path | str) -> list[str]:
    """SQLite's own integrity check of the file (read-only); empty when the file is sound."""
    conn = sqlite3.connect(f"file:{Path(path)}?mode=ro", uri=True)
    try:
        rows = [r[0] for r in conn.execute("PRAGMA quick_check")]
    finally:
        conn.close()
    return [] if rows == ["ok"] else rows
