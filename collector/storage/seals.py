"""Stored samples under the audit chain: every committed batch is sealed by a hash chain.

Why: the audit chain covered sessions and reports but not the samples that decide T90,
so an edited or deleted sample went unnoticed.  Each batch of samples committed (by the
writer, or by an import) gets a seal in the same transaction: the SHA-256 of the rows as
SQLite stored them (re-read, so the digest matches what a verifier reads later), chained
to the previous seal.  Night reports name the newest seal in their audit row and exports
carry it, so a truncated or edited tail is told apart from the recorded one.
"""

from __future__ import annotations

import hashlib
import sqlite3
from dataclasses import dataclass
from typing import Any

from collector.clock import utc_iso

GENESIS = "0" * 64
COLUMNS = ("session_id", "host_utc_ms", "device_time", "spo2_pct", "pulse_bpm", "pai_pct", "valid", "pulse_valid", "flags",
           "status_raw", "counter")


def rows_digest(rows: list[tuple[Any, ...]]) -> str:
    """The digest of rows read back from SQLite (their Python reprs are exact: ints, floats, text, None)."""
    return hashlib.sha256(repr(rows).encode("utf-8")).hexdigest()


def seal_hash(prev: str, first_rowid: int, last_rowid: int, digest: str) -> str:
    return hashlib.sha256(f"{prev}:{first_rowid}:{last_rowid}:{digest}".encode("ascii")).hexdigest()


def _rows(conn: sqlite3.Connection, first_rowid: int, last_rowid: int) -> list[tuple[Any, ...]]:
    return conn.execute(f"SELECT {', '.join(COLUMNS)} FROM spo2_samples WHERE rowid BETWEEN ? AND ? ORDER BY rowid",
                        (first_rowid, last_rowid)).fetchall()


def head(conn: sqlite3.Connection) -> tuple[int, str] | None:
    """The newest seal (id, hash), or None before the first sample."""
    row = conn.execute("SELECT id, seal_hash FROM sample_seals ORDER BY id DESC LIMIT 1").fetchone()
    return None if row is None else (int(row[0]), str(row[1]))


def seal_new_rows(conn: sqlite3.Connection, *, at: float) -> tuple[int, str] | None:
    """Seal every sample row after the last sealed one (the caller holds the write transaction)."""
    last = conn.execute("SELECT id, last_rowid, seal_hash FROM sample_seals ORDER BY id DESC LIMIT 1").fetchone()
    after, prev = (int(last[1]), str(last[2])) if last else (0, GENESIS)
    top = conn.execute("SELECT MAX(rowid) FROM spo2_samples").fetchone()[0]
    if top is None or top <= after:
        return None
    first = conn.execute("SELECT MIN(rowid) FROM spo2_samples WHERE rowid > ?", (after,)).fetchone()[0]
    rows = _rows(conn, first, top)
    digest = rows_digest(rows)
    h = seal_hash(prev, first, top, digest)
    cur = conn.execute(
        "INSERT INTO sample_seals (committed_utc, first_rowid, last_rowid, n_rows, rows_sha256, prev_hash, seal_hash)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)", (utc_iso(at), first, top, len(rows), digest, prev, h))
    assert cur.lastrowid is not None
    return int(cur.lastrowid), h


@dataclass(frozen=True)
class SealCheck:
    ok: bool
    seals: int
    rows: int
    problem: str | None = None


def verify(conn: sqlite3.Connection, *, expect: tuple[int, str] | None = None) -> SealCheck:
    """Every seal's rows and chain, no unsealed row before the newest seal, and ``expect`` (id, hash) present."""
    prev, after, n_rows, n = GENESIS, 0, 0, 0
    known: dict[int, str] = {}
    for sid, first, last, count, digest, prev_hash, h in conn.execute(
            "SELECT id, first_rowid, last_rowid, n_rows, rows_sha256, prev_hash, seal_hash FROM sample_seals ORDER BY id"):
        n += 1
        if prev_hash != prev or seal_hash(prev, first, last, digest) != h:
            return SealCheck(False, n, n_rows, f"seal {sid}: the chain of sample seals is broken (a seal edited or removed)")
        stray = conn.execute("SELECT COUNT(*) FROM spo2_samples WHERE rowid > ? AND rowid < ?", (after, first)).fetchone()[0]
        if stray:
            return SealCheck(False, n, n_rows, f"seal {sid}: {stray} sample rows were added outside any seal")
        rows = _rows(conn, first, last)
        if len(rows) != count or rows_digest(rows) != digest:
            return SealCheck(False, n, n_rows, f"seal {sid}: samples (rows {first}-{last}) were edited, added or deleted")
        prev, after, n_rows = h, last, n_rows + count
        known[int(sid)] = h
    if expect is not None and known.get(expect[0]) != expect[1]:
        return SealCheck(False, n, n_rows, f"seal {expect[0]} recorded in the audit trail is missing or differs (samples truncated?)")
    return SealCheck(True, n, n_rows)
