"""Append-only, hash-chained audit trail.

Each row stores the SHA-256 of the previous row's hash plus its own canonical
content, so an edited, deleted or inserted row breaks the chain from that row
on; SQLite triggers refuse UPDATE and DELETE through the normal path.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from dataclasses import dataclass
from typing import Any, Sequence

from collector.clock import utc_iso

GENESIS = "0" * 64
CONTENT_FIELDS = ("at_utc", "actor", "action", "subject_id", "session_id", "old_value", "new_value", "reason")


def _as_text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def row_hash(prev_hash: str, content: dict[str, Any]) -> str:
    canonical = json.dumps([prev_hash] + [content.get(f) for f in CONTENT_FIELDS], separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


def append(
    conn: sqlite3.Connection,
    *,
    at: float,
    actor: str,
    action: str,
    subject_id: str | None = None,
    session_id: int | None = None,
    old: Any = None,
    new: Any = None,
    reason: str | None = None,
) -> str:
    """Append one row; the caller owns the transaction (it must hold the write lock)."""
    last = conn.execute("SELECT row_hash FROM audit ORDER BY id DESC LIMIT 1").fetchone()
    prev = last[0] if last else GENESIS
    content = {
        "at_utc": utc_iso(at),
        "actor": actor,
        "action": action,
        "subject_id": subject_id,
        "session_id": session_id,
        "old_value": _as_text(old),
        "new_value": _as_text(new),
        "reason": reason,
    }
    digest = row_hash(prev, content)
    conn.execute(
        "INSERT INTO audit (at_utc, actor, action, subject_id, session_id, old_value, new_value, reason, prev_hash, row_hash)"
        " VALUES (:at_utc, :actor, :action, :subject_id, :session_id, :old_value, :new_value, :reason, :prev, :hash)",
        {**content, "prev": prev, "hash": digest},
    )
    return digest


@dataclass(frozen=True)
class ChainCheck:
    ok: bool
    rows: int
    first_bad_id: int | None = None
    problem: str | None = None


def verify_rows(rows: list[dict[str, Any]]) -> ChainCheck:
    """Check a chain given as dicts in id order (used on the database and on exported extracts)."""
    prev = GENESIS
    for row in rows:
        if row["prev_hash"] != prev:
            return ChainCheck(False, len(rows), row["id"], "prev_hash does not match the previous row (row inserted or deleted before it)")
        if row_hash(prev, row) != row["row_hash"]:
            return ChainCheck(False, len(rows), row["id"], "content does not match its hash (row edited)")
        prev = row["row_hash"]
    return ChainCheck(True, len(rows))


def verify(conn: sqlite3.Connection) -> ChainCheck:
    cur = conn.execute("SELECT * FROM audit ORDER BY id")
    names = [d[0] for d in cur.description]
    return verify_rows([dict(zip(names, r)) for r in cur.fetchall()])


def last_entry(conn: sqlite3.Connection, actions: Sequence[str], *, subject_id: str | None = None) -> dict[str, Any] | None:
    """The newest row with one of ``actions`` (of this subject, when given) as ``{"id", "new_value"}``; None if there is none."""
    marks = ",".join("?" * len(actions))
    sql = f"SELECT id, new_value FROM audit WHERE action IN ({marks})"
    params: list[Any] = list(actions)
    if subject_id is not None:
        sql += " AND subject_id = ?"
        params.append(subject_id)
    row = conn.execute(sql + " ORDER BY id DESC LIMIT 1", params).fetchone()
    return None if row is None else {"id": row[0], "new_value": row[1]}


def head(conn: sqlite3.Connection) -> tuple[int, str] | None:
    """ID and hash of the newest row: an export names it so a later extract can be checked against it."""
    row = conn.execute("SELECT id, row_hash FROM audit ORDER BY id DESC LIMIT 1").fetchone()
    return None if row is None else (row[0], row[1])


def rows_about(conn: sqlite3.Connection, subject_id: str, session_ids: Sequence[int]) -> list[dict[str, Any]]:
    """Every row about a subject or one of its sessions, in chain order."""
    marks = ",".join("?" * len(session_ids)) or "NULL"
    cur = conn.execute(f"SELECT * FROM audit WHERE subject_id = ? OR session_id IN ({marks}) ORDER BY id", (subject_id, *session_ids))
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r)) for r in cur.fetchall()]


def contains(conn: sqlite3.Connection, row_id: int, row_hash_: str) -> bool:
    """Whether the chain still holds row ``row_id`` with that hash (an anchor recorded elsewhere)."""
    row = conn.execute("SELECT row_hash FROM audit WHERE id = ?", (row_id,)).fetchone()
    return row is not None and row[0] == row_hash_


def latest_seal_anchor(conn: sqlite3.Connection) -> tuple[int, str] | None:
    """The newest sample seal a night report's audit row names (``samples_seal``), if any."""
    cur = conn.execute("SELECT new_value FROM audit WHERE action IN ('night_report_computed', 'night_report_recomputed')"
                       " ORDER BY id DESC LIMIT 50")
    for (value,) in cur:
        try:
            seal = json.loads(value or "{}").get("samples_seal")
        except (ValueError, AttributeError):
            continue
        if isinstance(seal, list) and len(seal) == 2:
            return int(seal[0]), str(seal[1])
    return None
