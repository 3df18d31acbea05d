"""The core tables (subjects, devices, sessions, samples and their seals, gaps, events, audit) as migrations.

Each migration runs once, inside a transaction, and is recorded in
``schema_migrations``; feature packages contribute their own tables the same way
(each has a ``schema.py``, listed in collector/schemas.py).  Numbers keep their unit
in the column name (``spo2_pct``, ``pulse_bpm``, ``host_utc_ms``); times are UTC, either ISO-8601
text (``*_utc``) or integer epoch milliseconds (``*_utc_ms``), never local time.
"""

from __future__ import annotations

from typing import NamedTuple


def append_only(*tables: str, what: str) -> str:
    """Triggers that refuse UPDATE and DELETE on ``tables`` (rows that decide or record are never changed)."""
    return "".join(
        f"CREATE TRIGGER {t}_no_{verb} BEFORE {verb.upper()} ON {t}\nBEGIN SELECT RAISE(ABORT, '{what}'); END;\n"
        for t in tables for verb in ("update", "delete"))


class Migration(NamedTuple):
    """One step of a package's schema, applied once and recorded in ``schema_migrations`` by name.

    The name is the identity: never rename a released migration, or it runs again on existing
    databases.  Tables moved out of an applied migration into a new one need ``IF NOT EXISTS``.
    """

    name: str
    sql: str


CORE_SQL = """
CREATE TABLE subjects (
    id TEXT PRIMARY KEY,                 -- pseudonymous screening ID, never a name
    created_utc TEXT NOT NULL,
    created_by TEXT NOT NULL
);

CREATE TABLE devices (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL CHECK (kind IN ('oximeter', 'spirometer')),
    protocol TEXT NOT NULL,
    address TEXT NOT NULL,               -- BLE address / serial URL; local only, never exported
    name TEXT,
    model TEXT,
    serial_number TEXT,
    firmware TEXT,
    first_seen_utc TEXT NOT NULL,
    last_seen_utc TEXT,
    UNIQUE (kind, address)
);

CREATE TABLE sessions (
    id INTEGER PRIMARY KEY,
    subject_id TEXT NOT NULL REFERENCES subjects(id),
    kind TEXT NOT NULL CHECK (kind IN ('night', 'spirometry')),
    state TEXT NOT NULL CHECK (state IN ('open', 'stopped', 'interrupted')),
    origin TEXT NOT NULL DEFAULT 'live' CHECK (origin IN ('live', 'replay', 'import', 'simulated')),
    device_id INTEGER REFERENCES devices(id),
    started_utc TEXT NOT NULL,
    stopped_utc TEXT,
    started_by TEXT NOT NULL,
    stopped_by TEXT,
    settings_json TEXT NOT NULL DEFAULT '{}'
);
-- A subject has at most one open session of a kind; a device serves one open session.
CREATE UNIQUE INDEX sessions_one_open_per_subject_kind ON sessions(subject_id, kind) WHERE state = 'open';
CREATE UNIQUE INDEX sessions_one_open_per_device ON sessions(device_id) WHERE state = 'open';

CREATE TABLE spo2_samples (
    session_id INTEGER NOT NULL REFERENCES sessions(id),
    host_utc_ms INTEGER NOT NULL,        -- host receipt time, UTC epoch milliseconds
    device_time TEXT,                    -- the device's own clock when it reports one (device local, as sent)
    spo2_pct REAL,                       -- NULL when the device sent its missing code
    pulse_bpm REAL,
    pai_pct REAL,                        -- perfusion / pulse amplitude index, %
    valid INTEGER NOT NULL,              -- 1: this SpO2 may count toward T90
    pulse_valid INTEGER NOT NULL,
    flags INTEGER NOT NULL,              -- drivers.protocols.common.Flag bits
    status_raw INTEGER,                  -- the device's own status bits, verbatim
    counter INTEGER                      -- device packet counter when it has one
);
CREATE INDEX spo2_samples_session_time ON spo2_samples(session_id, host_utc_ms);

CREATE TABLE gaps (
    id INTEGER PRIMARY KEY,
    session_id INTEGER NOT NULL REFERENCES sessions(id),
    start_utc_ms INTEGER NOT NULL,
    end_utc_ms INTEGER,                  -- NULL while the gap is still open
    cause TEXT NOT NULL,                 -- device_disconnected, watchdog_silence, daemon_down, lost_packets, ...
    detail TEXT
);
CREATE INDEX gaps_session ON gaps(session_id, start_utc_ms);

CREATE TABLE events (
    id INTEGER PRIMARY KEY,
    session_id INTEGER REFERENCES sessions(id),
    t_utc_ms INTEGER NOT NULL,
    kind TEXT NOT NULL,
    detail_json TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX events_session ON events(session_id, t_utc_ms);

CREATE TABLE audit (
    id INTEGER PRIMARY KEY,
    at_utc TEXT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    subject_id TEXT,
    session_id INTEGER,
    old_value TEXT,
    new_value TEXT,
    reason TEXT,
    prev_hash TEXT NOT NULL,
    row_hash TEXT NOT NULL
);
CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'audit rows are append-only'); END;
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'audit rows are append-only'); END;
"""




SAMPLE_SEALS_SQL = """
CREATE TABLE sample_seals (
    id INTEGER PRIMARY KEY,
    committed_utc TEXT NOT NULL,
    first_rowid INTEGER NOT NULL,        -- spo2_samples rowids sealed by this row, inclusive
    last_rowid INTEGER NOT NULL,
    n_rows INTEGER NOT NULL,
    rows_sha256 TEXT NOT NULL,           -- collector.storage.seals.rows_digest of the rows as stored
    prev_hash TEXT NOT NULL,
    seal_hash TEXT NOT NULL
);
""" + append_only("sample_seals", "spo2_samples", what="stored samples and their seals are append-only")


# One row: this database's identity, a random UUID (version 4) made when the database is created
# (or upgraded to this migration).  Exports carry it so bundles from two laptops never collide.
SITE_IDENTITY_SQL = """
CREATE TABLE site_identity (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    site_uuid TEXT NOT NULL,
    created_utc TEXT NOT NULL
);
INSERT INTO site_identity (id, site_uuid, created_utc) VALUES (1,
    lower(hex(randomblob(4))) || '-' || lower(hex(randomblob(2))) || '-4' || substr(lower(hex(randomblob(2))), 2) || '-'
    || substr('89ab', 1 + abs(random()) % 4, 1) || substr(lower(hex(randomblob(2))), 2) || '-' || lower(hex(randomblob(6))),
    strftime('%Y-%m-%dT%H:%M:%fZ', 'now'));
CREATE TRIGGER site_identity_no_update BEFORE UPDATE ON site_identity
BEGIN SELECT RAISE(ABORT, 'the site identity never changes'); END;
"""


# The site's signing key (collector/storage/site_key.py): its public half, made on first use, and the
# log of every chain head the site signed (exports, uploads).  The private key is a file next to the database.
SITE_KEY_SQL = """
CREATE TABLE site_keys (
    id INTEGER PRIMARY KEY,
    public_key_pem TEXT NOT NULL,        -- Ed25519, SubjectPublicKeyInfo PEM: what the study team registers
    fingerprint TEXT NOT NULL UNIQUE,    -- SHA256:<hex of the raw 32-byte key's SHA-256>
    created_utc TEXT NOT NULL
);
CREATE TABLE signed_heads (
    id INTEGER PRIMARY KEY,
    signed_utc TEXT NOT NULL,
    purpose TEXT NOT NULL,               -- bundle, upload, ...
    label TEXT NOT NULL,                 -- the bundle's name or the upload's identifier
    audit_id INTEGER,                    -- the audit chain head signed (NULL: empty chain)
    audit_hash TEXT,
    seal_id INTEGER,                     -- the sample seal head signed (NULL: no samples yet)
    seal_hash TEXT,
    statement_json TEXT NOT NULL,        -- the exact bytes signed
    signature TEXT NOT NULL              -- base64 Ed25519 signature of statement_json
);
""" + append_only("site_keys", "signed_heads", what="the site key and the signed chain heads are append-only")

# Per session: how many samples are stored and their first and last host time.  The session
# list, the daemon's start-up and the bed screens read these instead of counting or scanning
# the samples (17 M rows in a study of 600 nights).  Kept by a trigger, so every way a sample
# is stored (the writer's batches and its row-by-row fallback, imports, the recovery journal)
# updates it in the same transaction; samples are append-only, so it never goes stale.  The
# migration fills it for the samples already stored.
SAMPLE_STATS_SQL = """
CREATE TABLE session_sample_stats (
    session_id INTEGER PRIMARY KEY REFERENCES sessions(id),
    samples INTEGER NOT NULL,            -- rows in spo2_samples for this session
    first_utc_ms INTEGER NOT NULL,       -- MIN(host_utc_ms)
    last_utc_ms INTEGER NOT NULL         -- MAX(host_utc_ms)
);
INSERT INTO session_sample_stats (session_id, samples, first_utc_ms, last_utc_ms)
    SELECT session_id, COUNT(*), MIN(host_utc_ms), MAX(host_utc_ms) FROM spo2_samples GROUP BY session_id;
CREATE TRIGGER spo2_samples_stats AFTER INSERT ON spo2_samples
BEGIN
    INSERT INTO session_sample_stats (session_id, samples, first_utc_ms, last_utc_ms)
    VALUES (NEW.session_id, 1, NEW.host_utc_ms, NEW.host_utc_ms)
    ON CONFLICT (session_id) DO UPDATE SET samples = samples + 1,
        first_utc_ms = MIN(first_utc_ms, excluded.first_utc_ms), last_utc_ms = MAX(last_utc_ms, excluded.last_utc_ms);
END;
"""


# The night reports live with the oximetry package (collector/oximetry/schema.py); the samples
# stay here because the core writer commits and seals them.
MIGRATIONS: tuple[Migration, ...] = (
    Migration("core capture tables", CORE_SQL),
    Migration("sample seals", SAMPLE_SEALS_SQL),
    Migration("site identity", SITE_IDENTITY_SQL),
    Migration("site key and signed heads", SITE_KEY_SQL),
    Migration("session sample stats", SAMPLE_STATS_SQL),
)
