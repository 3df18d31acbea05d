"""The operators' tables (see collector/users/store.py), registered in collector/schemas.py.

Operators log in to the page and the CLI; a password is stored only as a salted scrypt
hash (collector/users/passwords.py), a login token only as its SHA-256, so a copied
database reveals neither.  Login tokens are rows, not memory: a daemon restarted at
3 a.m. keeps everyone logged in until their idle limit.
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

# Operators who existed before roles could add operators and do everything: they become
# admins (an admin then gives each the role it should have with: collector user role NAME ROLE).
ROLES_SQL = """
ALTER TABLE users ADD COLUMN role TEXT NOT NULL DEFAULT 'admin'
    CHECK (role IN ('technician', 'investigator', 'data_manager', 'admin'));

CREATE TABLE login_tokens (
    token_sha256 TEXT PRIMARY KEY,       -- hex SHA-256 of the token; the token itself is never stored
    operator TEXT NOT NULL REFERENCES users(name),
    kind TEXT NOT NULL CHECK (kind IN ('cli', 'web')),
    csrf TEXT,                           -- the page's CSRF token (web logins only); useless without the cookie
    created_s REAL NOT NULL,             -- wall-clock epoch seconds
    last_seen_s REAL NOT NULL
);
CREATE INDEX login_tokens_operator ON login_tokens (operator);
"""

# The printed name an electronic signature shows (21 CFR 11.50); operators made before it have none
# until an admin gives it: collector user full-name NAME "Full Name".
FULL_NAME_SQL = """
ALTER TABLE users ADD COLUMN full_name TEXT CHECK (full_name IS NULL OR length(trim(full_name)) > 0);
"""

# The language each operator reads the page, alerts and report.pdf in (NULL: the site's [site] language).
LANGUAGE_SQL = """
ALTER TABLE users ADD COLUMN language TEXT CHECK (language IS NULL OR language IN ('zh-CN', 'en'));
"""

MIGRATIONS: tuple[Migration, ...] = (Migration("operators", USERS_SQL), Migration("operator_roles_tokens", ROLES_SQL),
                                     Migration("operator full names", FULL_NAME_SQL), Migration("operator_language", LANGUAGE_SQL))
