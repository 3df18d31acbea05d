"""The ``users`` and ``login_tokens`` tables: every SQL statement on operators (the caller owns the transaction).

Every change to an operator is written to the audit trail in the same transaction.
"""

from __future__ import annotations

import functools
import hashlib
import secrets
import sqlite3
from typing import Any

from collector.clock import utc_iso
from collector.errors import Conflict, InvalidInput, NotFound
from collector.storage import audit
from collector.users.passwords import DEFAULT_SCRYPT_N, check_password, hash_password, validate_name, validate_password
from collector.users.roles import ROLES

_COLUMNS = "name, role, created_utc, created_by, password_changed_utc, disabled, full_name"


def _public(row: tuple[Any, ...]) -> dict[str, Any]:
    name, role, created_utc, created_by, changed_utc, disabled, full_name = row
    return {"name": name, "role": role, "full_name": full_name, "created_utc": created_utc, "created_by": created_by,
            "password_changed_utc": changed_utc, "disabled": bool(disabled)}


def validate_full_name(full_name: str) -> str:
    """The printed name a signature shows: one line of 2-100 characters."""
    text = " ".join((full_name or "").split())
    if not (2 <= len(text) <= 100) or any(ord(ch) < 32 for ch in full_name):
        raise InvalidInput("the full name must be 2-100 characters on one line, as it should be printed under a signature "
                           "(e.g. --full-name \"Li Wei\")")
    return text


def validate_role(role: str) -> str:
    if role not in ROLES:
        raise InvalidInput(f"unknown role {role!r}; use one of: {', '.join(ROLES)}")
    return role


def count_users(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT count(*) FROM users").fetchone()[0])


def add_user(conn: sqlite3.Connection, name: str, password: str, *, by: str, at: float, role: str = "technician",
             scrypt_n: int = DEFAULT_SCRYPT_N, full_name: str | None = None) -> dict[str, Any]:
    validate_name(name)
    full_name = validate_full_name(full_name) if full_name is not None else None
    validate_password(password)
    validate_role(role)
    if conn.execute("SELECT 1 FROM users WHERE name = ?", (name,)).fetchone():
        raise Conflict(f"operator {name} already exists; change the password with: collector user password {name}")
    conn.execute(
        "INSERT INTO users (name, password_hash, role, created_utc, created_by, password_changed_utc, full_name) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        (name, hash_password(password, n=scrypt_n), role, utc_iso(at), by, utc_iso(at), full_name),
    )
    audit.append(conn, at=at, actor=by, action="operator_added", new={"name": name, "role": role, "full_name": full_name})
    return get_user(conn, name)


def set_password(conn: sqlite3.Connection, name: str, password: str, *, by: str, at: float, scrypt_n: int = DEFAULT_SCRYPT_N) -> None:
    validate_password(password)
    get_user(conn, name)
    conn.execute("UPDATE users SET password_hash = ?, password_changed_utc = ? WHERE name = ?",
                 (hash_password(password, n=scrypt_n), utc_iso(at), name))
    audit.append(conn, at=at, actor=by, action="operator_password_changed", new={"name": name})


def set_full_name(conn: sqlite3.Connection, name: str, full_name: str, *, by: str, at: float) -> dict[str, Any]:
    """The printed name of an operator's signatures from now on (earlier signatures keep the name they were made with)."""
    text = validate_full_name(full_name)
    old = get_user(conn, name)
    if old["full_name"] == text:
        return old
    conn.execute("UPDATE users SET full_name = ? WHERE name = ?", (text, name))
    audit.append(conn, at=at, actor=by, action="operator_full_name_changed", old={"name": name, "full_name": old["full_name"]},
                 new={"name": name, "full_name": text})
    return get_user(conn, name)


def set_role(conn: sqlite3.Connection, name: str, role: str, *, by: str, at: float) -> dict[str, Any]:
    validate_role(role)
    old = get_user(conn, name)
    if old["role"] == role:
        return old
    if old["role"] == "admin" and _other_admins(conn, name) == 0:
        raise Conflict(f"{name} is the last enabled admin; make another operator admin first")
    conn.execute("UPDATE users SET role = ? WHERE name = ?", (role, name))
    audit.append(conn, at=at, actor=by, action="operator_role_changed", old={"name": name, "role": old["role"]}, new={"name": name, "role": role})
    return get_user(conn, name)


def set_disabled(conn: sqlite3.Connection, name: str, disabled: bool, *, by: str, at: float) -> dict[str, Any]:
    old = get_user(conn, name)
    if disabled and old["role"] == "admin" and not old["disabled"] and _other_admins(conn, name) == 0:
        raise Conflict(f"{name} is the last enabled admin; make another operator admin first")
    conn.execute("UPDATE users SET disabled = ? WHERE name = ?", (int(disabled), name))
    if disabled:
        conn.execute("DELETE FROM login_tokens WHERE operator = ?", (name,))
    audit.append(conn, at=at, actor=by, action="operator_disabled" if disabled else "operator_enabled",
                 old={"name": name, "disabled": old["disabled"]}, new={"name": name, "disabled": disabled})
    return get_user(conn, name)


def _other_admins(conn: sqlite3.Connection, name: str) -> int:
    return int(conn.execute("SELECT count(*) FROM users WHERE role = 'admin' AND disabled = 0 AND name != ?", (name,)).fetchone()[0])


def get_user(conn: sqlite3.Connection, name: str) -> dict[str, Any]:
    row = conn.execute(f"SELECT {_COLUMNS} FROM users WHERE name = ?", (name,)).fetchone()
    if row is None:
        raise NotFound(f"unknown operator {name!r}; add it with: collector user add {name} --role ROLE")
    return _public(row)


def get_language(conn: sqlite3.Connection, name: str) -> str | None:
    """The operator's chosen language, or None (the site's language applies)."""
    row = conn.execute("SELECT language FROM users WHERE name = ?", (name,)).fetchone()
    return None if row is None else row[0]


def set_language(conn: sqlite3.Connection, name: str, language: str | None, *, by: str, at: float) -> None:
    get_user(conn, name)
    old = get_language(conn, name)
    conn.execute("UPDATE users SET language = ? WHERE name = ?", (language, name))
    audit.append(conn, at=at, actor=by, action="operator_language", old={"name": name, "language": old},
                 new={"name": name, "language": language})


def list_users(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    rows = conn.execute(f"SELECT {_COLUMNS} FROM users ORDER BY name")
    return [_public(r) for r in rows.fetchall()]


def verify_login(conn: sqlite3.Connection, name: str, password: str) -> bool:
    """True only for an enabled operator with this password.  Unknown names cost the same time."""
    row = conn.execute("SELECT password_hash, disabled FROM users WHERE name = ?", (name,)).fetchone()
    if row is None:
        check_password(password, _dummy_hash())  # same work as a real check: no timing hint that the name is unknown
        return False
    return check_password(password, row[0]) and not row[1]


@functools.lru_cache(maxsize=1)
def _dummy_hash() -> str:
    """A hash to check unknown names against; computed on first use (a full scrypt: not on every CLI start)."""
    return hash_password("not-a-password", salt=b"\0" * 16)


# -- login tokens ------------------------------------------------------------------------------------
def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def create_token(conn: sqlite3.Connection, operator: str, *, kind: str, at: float) -> tuple[str, str | None]:
    """A new random login token (and the page's CSRF token for ``kind='web'``); only its hash is stored."""
    token = secrets.token_urlsafe(32)
    csrf = secrets.token_urlsafe(32) if kind == "web" else None
    conn.execute("INSERT INTO login_tokens (token_sha256, operator, kind, csrf, created_s, last_seen_s) VALUES (?, ?, ?, ?, ?, ?)",
                 (_digest(token), operator, kind, csrf, at, at))
    return token, csrf


def find_token(conn: sqlite3.Connection, token: str, *, kind: str) -> dict[str, Any] | None:
    """The token's operator, role, CSRF and times, or None (unknown, or its operator disabled)."""
    row = conn.execute(
        "SELECT t.operator, u.role, t.csrf, t.created_s, t.last_seen_s FROM login_tokens t JOIN users u ON u.name = t.operator "
        "WHERE t.token_sha256 = ? AND t.kind = ? AND u.disabled = 0", (_digest(token), kind),
    ).fetchone()
    if row is None:
        return None
    return {"operator": row[0], "role": row[1], "csrf": row[2], "created_s": row[3], "last_seen_s": row[4]}


def touch_token(conn: sqlite3.Connection, token: str, *, at: float) -> None:
    conn.execute("UPDATE login_tokens SET last_seen_s = max(last_seen_s, ?) WHERE token_sha256 = ?", (at, _digest(token)))


def drop_token(conn: sqlite3.Connection, token: str) -> None:
    conn.execute("DELETE FROM login_tokens WHERE token_sha256 = ?", (_digest(token),))


def drop_expired_tokens(conn: sqlite3.Connection, *, at: float, idle_s: float, max_s: float) -> int:
    return conn.execute("DELETE FROM login_tokens WHERE last_seen_s < ? OR created_s < ?", (at - idle_s, at - max_s)).rowcount
