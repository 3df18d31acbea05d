"""The spirometry feature's tables: manoeuvres as received and the results computed from them.

Registered in collector/schemas.py; the migration name is recorded in ``schema_migrations``
and must never change (a renamed migration would run again on existing databases).
"""

from __future__ import annotations

from collector.storage.schema import Migration, append_only

TABLES_SQL = """
CREATE TABLE spirometry_manoeuvres (
    id INTEGER PRIMARY KEY,
    session_id INTEGER NOT NULL REFERENCES sessions(id),
    received_utc TEXT NOT NULL,
    message_id TEXT,
    number INTEGER,                      -- manoeuvre number as sent; NULL for a device summary
    manoeuvre_type TEXT,                 -- FVC / SVC
    posture TEXT,
    is_summary INTEGER NOT NULL DEFAULT 0,
    fvc_l REAL,
    fev1_l REAL,
    fev1_fvc REAL,                       -- fraction
    pef_l_s REAL,
    bev_l REAL,
    fet_s REAL,
    device_quality_json TEXT NOT NULL DEFAULT '{}',
    curve_json TEXT,
    raw_json TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX spirometry_manoeuvres_session ON spirometry_manoeuvres(session_id, id);

CREATE TABLE spirometry_results (
    id INTEGER PRIMARY KEY,
    session_id INTEGER NOT NULL REFERENCES sessions(id),
    computed_utc TEXT NOT NULL,
    valid INTEGER NOT NULL,              -- acceptable and repeatable enough to decide
    equation TEXT NOT NULL,
    ethnicity TEXT,
    sex TEXT,
    age_years REAL,
    height_cm REAL,
    fvc_l REAL,
    fev1_l REAL,
    predicted_fvc_l REAL,
    lln_fvc_l REAL,
    z_fvc REAL,
    fvc_pct_predicted REAL,
    other_equation TEXT,
    other_fvc_pct_predicted REAL,
    grade_fvc TEXT,
    grade_fev1 TEXT,
    result_json TEXT NOT NULL            -- the whole assessment; the newest row of a session is current
);
CREATE INDEX spirometry_results_session ON spirometry_results(session_id, id);
"""

# Every line the device sent (mapped or not) and every message as received, identifying fields masked.
OBSERVATIONS_SQL = """
CREATE TABLE spirometry_observations (
    id INTEGER PRIMARY KEY,
    session_id INTEGER NOT NULL REFERENCES sessions(id),
    manoeuvre_id INTEGER REFERENCES spirometry_manoeuvres(id),  -- NULL: a group with no result (anthropometry, comments)
    message_id TEXT,
    grp INTEGER,                         -- OBR index (HL7) or test group (GDT; 0 = a text line)
    code TEXT NOT NULL,
    text TEXT,
    system TEXT,
    value_type TEXT,
    value TEXT,
    unit TEXT,
    ref_text TEXT,                       -- OBX-7 / 8460 verbatim
    ref_low REAL,
    ref_high REAL,
    abnormal_flags TEXT,
    status TEXT,
    sub_id TEXT,
    mapped_to TEXT                       -- the parameter it filled; NULL when not mapped
);
CREATE INDEX spirometry_observations_session ON spirometry_observations(session_id, id);

CREATE TABLE spirometry_messages (
    id INTEGER PRIMARY KEY,
    session_id INTEGER NOT NULL REFERENCES sessions(id),
    received_utc TEXT NOT NULL,
    source TEXT NOT NULL,                -- hl7 / gdt
    message_id TEXT,
    status TEXT NOT NULL,                -- accepted / refused / duplicate / subject_mismatch
    reason TEXT,
    sha256 TEXT,                         -- of the masked copy
    raw_masked BLOB                      -- stays at the site: never exported
);
CREATE INDEX spirometry_messages_session ON spirometry_messages(session_id, id);
"""

# What a spirometer sent and what it meant are never changed: a new message or result is a new row.
APPEND_ONLY_SQL = append_only("spirometry_manoeuvres", "spirometry_results", "spirometry_observations", "spirometry_messages",
                              what="spirometry rows are append-only")

# Every result file taken from a GDT exchange folder or imported (by content hash): a file is
# processed once, whatever its name, and the row is written in the transaction that stores it.
FILES_SQL = """
CREATE TABLE spirometry_files (
    id INTEGER PRIMARY KEY,
    sha256 TEXT NOT NULL UNIQUE,         -- of the file's bytes
    session_id INTEGER REFERENCES sessions(id),
    route TEXT NOT NULL,                 -- gdt-folder / import
    format TEXT NOT NULL,                -- hl7 / gdt / ndd-xml / csv
    status TEXT NOT NULL,                -- accepted / rejected
    reason TEXT,
    bytes INTEGER NOT NULL,
    processed_utc TEXT NOT NULL
);
""" + append_only("spirometry_files", what="spirometry file records are append-only")

MIGRATIONS: tuple[Migration, ...] = (
    Migration("spirometry manoeuvres and results", TABLES_SQL),
    Migration("spirometry observations and masked messages", OBSERVATIONS_SQL),
    Migration("spirometry append-only", APPEND_ONLY_SQL),
    Migration("spirometry files", FILES_SQL),
)
