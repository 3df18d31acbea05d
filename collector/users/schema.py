"""The operators' table (see collector/users/store.py), registered in collector/schemas.py.

Operators log in to the technician's page; their password is stored only as a salted
scrypt hash (see collector/users/passwords.py).  Login sessions live in the daemon's memory and are
not stored: a restarted daemon asks everyone to log in again, which is the safe default.
"""

from __future__ import annotations

from collector.storage.schema import Migration

USERS_SQL = """
CREATE TABLE users (
    name TEXT PRIMARY KEY,               -- operator name as it appears in the audit trail
    password_hash TEXT NOT NULL,         -- scrypt$N$r$p$salt_b64$hash_b64, never the password
    created_utc TEXT NOT NULL,
    created_by TEXT NOT NULL,
    password_changed_utc TEXT NOT NULL,
    disabled INTEGER NOT NULL DEFAULT 0 CHECK (disabled IN (0, 1))
);
"""

MIGRATIONS: tuple[Migration, ...] = (Migration("operators", USERS_SQL),)
