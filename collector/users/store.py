"""The ``users`` table: every SQL statement on operators (the caller owns the transaction).

Every change to an operator is written to the audit trail in the same transaction.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from collector.clock import utc_iso
from collector.errors import Conflict, NotFound
from collector.storage import audit
from collector.users.passwords import check_password, hash_password, validate_name, validate_password


def _public(row: tuple[Any, ...]) -> dict[str, Any]:
    name, created_utc, created_by, changed_utc, disabled = row
    return {"name": name, "created_utc": created_utc, "created_by": created_by,
            "password_changed_utc": changed_utc, "disabled": bool(disabled)}


def add_user(conn: sqlite3.Connection, name: str, password: str, *, by: str, at: float) -> dict[str, Any]:
    validate_name(name)
    validate_password(password)
    if conn.execute("SELECT 1 FROM users WHERE name = ?", (name,)).fetchone():
        raise Conflict(f"operator {name} already exists; change the password with: collector user password {name}")
    conn.execute(
        "INSERT INTO users (name, password_hash, created_utc, created_by, password_changed_utc) VALUES (?, ?, ?, ?, ?)",
        (name, hash_password(password), utc_iso(at), by, utc_iso(at)),
    )
    audit.append(conn, at=at, actor=by, action="operator_added", new={"name": name})
    return get_user(conn, name)


def set_password(conn: sqlite3.Connection, name: str, password: str, *, by: str, at: float) -> None:
    validate_password(password)
    get_user(conn, name)
    conn.execute("UPDATE users SET password_hash = ?, password_changed_utc = ? WHERE name = ?", (hash_password(password), utc_iso(at), name))
    audit.append(conn, at=at, actor=by, action="operator_password_changed", new={"name": name})


def set_disabled(conn: sqlite3.Connection, name: str, disabled: bool, *, by: str, at: float) -> dict[str, Any]:
    old = get_user(conn, name)
    conn.execute("UPDATE users SET disabled = ? WHERE name = ?", (int(disabled), name))
    audit.append(conn, at=at, actor=by, action="operator_disabled" if disabled else "operator_enabled",
                 old={"name": name, "disabled": old["disabled"]}, new={"name": name, "disabled": disabled})
    return get_user(conn, name)


def get_user(conn: sqlite3.Connection, name: str) -> dict[str, Any]:
    row = conn.execute(
        "SELECT name, created_utc, created_by, password_changed_utc, disabled FROM users WHERE name = ?", (name,)
    ).fetchone()
    if row is None:
        raise NotFound(f"unknown operator {name!r}; add it with: collector user add {name}")
    return _public(row)


def list_users(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    rows = conn.execute("SELECT name, created_utc, created_by, password_changed_utc, disabled FROM users ORDER BY name")
    return [_public(r) for r in rows.fetchall()]


def verify_login(conn: sqlite3.Connection, name: str, password: str) -> bool:
    """True only for an enabled operator with this password.  Unknown names cost the same time."""
    row = conn.execute("SELECT password_hash, disabled FROM users WHERE name = ?", (name,)).fetchone()
    if row is None:
        check_password(password, _DUMMY_HASH)  # same work as a real check: no timing hint that the name is unknown
        return False
    return check_password(password, row[0]) and not row[1]


_DUMMY_HASH = hash_password("not-a-password", salt=b"\0" * 16)
