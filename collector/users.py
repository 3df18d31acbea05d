"""Operators of the technician's page: ``collector user add NAME`` and password checks.

Passwords are stored only as salted scrypt hashes (memory-hard, in the standard
library), so a copied database does not reveal them.  Every change to an operator
is written to the audit trail in the same transaction.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import sqlite3
import sys
from typing import Any

import click

from collector.clock import SystemClock, utc_iso
from collector.errors import Conflict, InvalidInput, NotFound
from collector.storage import audit

NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9._-]{1,31}$")
MIN_PASSWORD_LEN = 8
MAX_PASSWORD_LEN = 200
# scrypt cost: 16 MiB of memory and ~50 ms per check on a ward laptop.
SCRYPT_N, SCRYPT_R, SCRYPT_P, SCRYPT_LEN = 2**14, 8, 1, 32


def validate_name(name: str) -> str:
    if not NAME_RE.match(name or ""):
        raise InvalidInput(
            f"invalid operator name {name!r}: use 2-32 letters, digits, '.', '_' or '-', starting with a letter (e.g. j.smith)"
        )
    return name


def validate_password(password: str) -> str:
    if not (MIN_PASSWORD_LEN <= len(password or "") <= MAX_PASSWORD_LEN):
        raise InvalidInput(f"the password must be {MIN_PASSWORD_LEN}-{MAX_PASSWORD_LEN} characters long; choose a longer one")
    return password


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    salt = salt if salt is not None else secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=SCRYPT_LEN)
    b64 = lambda b: base64.b64encode(b).decode("ascii")  # noqa: E731
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${b64(salt)}${b64(digest)}"


def check_password(password: str, stored: str) -> bool:
    """Constant-time comparison; a malformed stored hash never matches."""
    try:
        scheme, n, r, p, salt_b64, hash_b64 = stored.split("$")
        if scheme != "scrypt":
            return False
        salt, expected = base64.b64decode(salt_b64), base64.b64decode(hash_b64)
        digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=int(n), r=int(r), p=int(p), dklen=len(expected))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(digest, expected)


# -- storage (the caller owns the transaction) --------------------------------------------------
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


# -- CLI ------------------------------------------------------------------------------------------
def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    return click.prompt("password", hide_input=True, confirmation_prompt=True)




@click.group("user")
def user_group() -> None:
    """Operators who may log in to the technician's page."""


@user_group.command("add")
@click.argument("name")
@click.option("--password-stdin", is_flag=True, help="Read the password from the first line of stdin (scripts) instead of prompting.")
@click.pass_obj
def user_add(c: Any, name: str, password_stdin: bool) -> None:
    """Add operator NAME with a password (asked twice, never echoed)."""
    validate_name(name)
    password = validate_password(_read_password(password_stdin))
    row = c.write(lambda conn: add_user(conn, name, password, by=c.by, at=SystemClock().now()))
    click.echo(f"operator {row['name']} added; log in on the page served by: collector run")


@user_group.command("password")
@click.argument("name")
@click.option("--password-stdin", is_flag=True, help="Read the new password from stdin.")
@click.pass_obj
def user_password(c: Any, name: str, password_stdin: bool) -> None:
    """Set a new password for operator NAME."""
    password = validate_password(_read_password(password_stdin))
    c.write(lambda conn: set_password(conn, name, password, by=c.by, at=SystemClock().now()))
    click.echo(f"password of {name} changed (logged-in pages keep their session until it expires)")


@user_group.command("disable")
@click.argument("name")
@click.option("--enable", is_flag=True, help="Enable the operator again.")
@click.pass_obj
def user_disable(c: Any, name: str, enable: bool) -> None:
    """Stop operator NAME from logging in (kept for the audit trail, never deleted)."""
    row = c.write(lambda conn: set_disabled(conn, name, not enable, by=c.by, at=SystemClock().now()))
    click.echo(f"operator {row['name']} {'disabled' if row['disabled'] else 'enabled'}")


@user_group.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def user_list(c: Any, as_json: bool) -> None:
    """List operators (never their password hashes)."""
    from collector.cli import emit_json, table

    rows = list_users(c.conn())
    emit_json(rows) if as_json else table(rows, ["name", "disabled", "created_utc", "created_by", "password_changed_utc"])


COMMANDS = [user_group]
