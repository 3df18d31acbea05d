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
import marshal
import sqlite3
from dataclasses import dataclass
from typing import Any, Sequence, cast

from collector.clock import utc_iso

GENESIS = "0" * 64
COLUMNS = ("session_id", "host_utc_ms", "device_time", "spo2_pct", "pulse_bpm", "pai_pct", "valid", "pulse_valid", "flags",
           "status_raw", "counter")


def _canonical(rows: Sequence[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Rows as SQLite gives them back: floats in the REAL columns (an int 95 reads back as 95.0; NaN is
    stored as NULL), ints elsewhere.  Written out inline: this runs for every stored sample."""
    return [(int(s), int(t), None if d is None else str(d),
             None if sp is None or sp != sp else float(sp), None if pu is None or pu != pu else float(pu),
             None if pa is None or pa != pa else float(pa), int(v), int(pv), int(fl),
             None if st is None else int(st), None if ct is None else int(ct))
            for s, t, d, sp, pu, pa, v, pv, fl, st, ct in rows]


class CanonicalRows(list[tuple[Any, ...]]):
    """Sample rows their producer built in stored form already (what ``_canonical`` would return, value
    and type): their digest skips the per-row conversion.  The live pipeline builds its rows this way."""


def rows_digest(rows: Sequence[tuple[Any, ...]], *, canonical: bool = False) -> str:
    """SHA-256 of rows in their stored form (marshal format 2: no back-references, so equal values give equal bytes
    whether or not they are the same objects; fixed for ints, floats, text, None)."""
    stored = _canonical(rows) if not canonical else rows if type(rows) is list else list(rows)  # marshal takes a plain list
    return hashlib.sha256(marshal.dumps(cast(list[tuple[Any, ...]], stored), 2)).hexdigest()


def seal_hash(prev: str, first_rowid: int, last_rowid: int, digest: str) -> str:
    return hashlib.sha256(f"{prev}:{first_rowid}:{last_rowid}:{digest}".encode("ascii")).hexdigest()


def _rows(conn: sqlite3.Connection, first_rowid: int, last_rowid: int) -> list[tuple[Any, ...]]:
    return conn.execute(f"SELECT {', '.join(COLUMNS)} FROM spo2_samples WHERE rowid BETWEEN ? AND ? ORDER BY rowid",
                        (first_rowid, last_rowid)).fetchall()


def head(conn: sqlite3.Connection) -> tuple[int, str] | None:
    """The newest seal (id, hash), or None before the first sample."""
    row = conn.execute("SELECT id, seal_hash FROM sample_seals ORDER BY id DESC LIMIT 1").fetchone()
    return None if row is None else (int(row[0]), str(row[1]))


def _last_seal(conn: sqlite3.Connection) -> tuple[int, str]:
    last = conn.execute("SELECT last_rowid, seal_hash FROM sample_seals ORDER BY id DESC LIMIT 1").fetchone()
    return (int(last[0]), str(last[1])) if last else (0, GENESIS)


def _insert_seal(conn: sqlite3.Connection, prev: str, first: int, last: int, n: int, digest: str, at: float) -> tuple[int, str]:
    h = seal_hash(prev, first, last, digest)
    cur = conn.execute(
        "INSERT INTO sample_seals (committed_utc, first_rowid, last_rowid, n_rows, rows_sha256, prev_hash, seal_hash)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)", (utc_iso(at), first, last, n, digest, prev, h))
    assert cur.lastrowid is not None
    return int(cur.lastrowid), h


def seal_inserted(conn: sqlite3.Connection, rows: Sequence[tuple[Any, ...]], *, at: float,
                  canonical: bool = False) -> tuple[int, str] | None:
    """Seal the rows one ``executemany`` just inserted (the fast path: no re-read; same transaction).

    ``canonical``: every row is in stored form already (:class:`CanonicalRows`)."""
    if not rows:
        return None
    last = int(conn.execute("SELECT last_insert_rowid()").fetchone()[0])
    first = last - len(rows) + 1
    after, prev = _last_seal(conn)
    if first != after + 1:  # rows outside the batch are unsealed (an older database): seal everything by re-reading
        return seal_new_rows(conn, at=at)
    return _insert_seal(conn, prev, first, last, len(rows), rows_digest(rows, canonical=canonical), at)


def seal_new_rows(conn: sqlite3.Connection, *, at: float) -> tuple[int, str] | None:
    """Seal every sample row after the last sealed one, read back (the caller holds the write transaction)."""
    after, prev = _last_seal(conn)
    top = conn.execute("SELECT MAX(rowid) FROM spo2_samples").fetchone()[0]
    if top is None or top <= after:
        return None
    first = conn.execute("SELECT MIN(rowid) FROM spo2_samples WHERE rowid > ?", (after,)).fetchone()[0]
    rows = _rows(conn, first, top)
    return _insert_seal(conn, prev, first, top, len(rows), rows_digest(rows), at)


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
