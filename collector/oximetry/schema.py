"""The oximetry package's tables: night reports (the samples are core: the writer commits them)."""

from __future__ import annotations

from collector.storage.schema import Migration, append_only

NIGHT_REPORTS_SQL = """
CREATE TABLE night_reports (
    id INTEGER PRIMARY KEY,
    session_id INTEGER NOT NULL REFERENCES sessions(id),
    computed_utc TEXT NOT NULL,
    definition TEXT NOT NULL,            -- e.g. T90/strict-lt90/zero-order-hold/v1
    t90_pct REAL,
    night_valid INTEGER NOT NULL,
    borderline INTEGER NOT NULL,
    meets_t90_criterion INTEGER,         -- NULL when the night is invalid
    report_json TEXT NOT NULL            -- the whole report; the newest row of a session is current
);
CREATE INDEX night_reports_session ON night_reports(session_id, id);
"""

REPORTS_APPEND_ONLY_SQL = append_only("night_reports", what="night reports are append-only: store a new report instead")

MIGRATIONS: tuple[Migration, ...] = (
    Migration("night reports", NIGHT_REPORTS_SQL),  # name kept: databases made before the move have it applied
    Migration("night reports append-only", REPORTS_APPEND_ONLY_SQL),
)
