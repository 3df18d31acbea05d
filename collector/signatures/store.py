"""Every SQL statement on ``signatures`` (the caller owns the transaction; rows are only ever added)."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

_COLUMNS = ("id, uuid, subject_id, record_type, record_ref, meaning, signer, full_name, role, signed_utc, signed_local, "
            "timezone, content_sha256, content_json")


def _row(r: tuple[Any, ...]) -> dict[str, Any]:
    keys = [k.strip() for k in _COLUMNS.split(",")]
    out = dict(zip(keys, r))
    out["content"] = json.loads(out.pop("content_json"))
    return out


def add(conn: sqlite3.Connection, sig: dict[str, Any], content_json: str) -> dict[str, Any]:
    cur = conn.execute(
        "INSERT INTO signatures (uuid, subject_id, record_type, record_ref, meaning, signer, full_name, role, signed_utc, "
        "signed_local, timezone, content_sha256, content_json) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (sig["uuid"], sig["subject_id"], sig["record_type"], sig["record_ref"], sig["meaning"], sig["signer"], sig["full_name"],
         sig["role"], sig["signed_utc"], sig["signed_local"], sig["timezone"], sig["content_sha256"], content_json))
    return _row(conn.execute(f"SELECT {_COLUMNS} FROM signatures WHERE id = ?", (cur.lastrowid,)).fetchone())


def of_subject(conn: sqlite3.Connection, subject_id: str) -> list[dict[str, Any]]:
    """Every signature about a subject, oldest first."""
    rows = conn.execute(f"SELECT {_COLUMNS} FROM signatures WHERE subject_id = ? ORDER BY id", (subject_id,)).fetchall()
    return [_row(r) for r in rows]
