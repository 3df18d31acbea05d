"""The oximetry package's tables: night reports and gap back-fills (the samples are core: the writer commits them)."""

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

# Back-fill from device memory: where a stored sample came from, and one row per back-fill of a gap (what
# the device sent, how its clock was mapped, which parts of the gap still break the hold).  Back-filled rows
# also carry Flag.FROM_STORAGE, so the sealed columns say it too.
BACKFILL_SQL = """
ALTER TABLE spo2_samples ADD COLUMN origin TEXT NOT NULL DEFAULT 'live' CHECK (origin IN ('live', 'device_memory'));
CREATE TABLE gap_backfills (
    id INTEGER PRIMARY KEY,
    session_id INTEGER NOT NULL REFERENCES sessions(id),
    gap_id INTEGER NOT NULL REFERENCES gaps(id),
    done_utc TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('backfilled', 'partial', 'no_records', 'failed')),
    clock_offset_ms INTEGER,             -- host UTC minus device wall time, as measured at the reconnect
    records_received INTEGER NOT NULL,
    records_stored INTEGER NOT NULL,     -- fitted + overlapping (every record kept, none doubled)
    residual_breaks_json TEXT NOT NULL,  -- [[start_ms, end_ms or null (= the gap's end)], ...]: still a gap
    summary_json TEXT NOT NULL
);
CREATE INDEX gap_backfills_gap ON gap_backfills(gap_id, id);
""" + append_only("gap_backfills", what="gap back-fills are append-only: a new back-fill is a new row")

MIGRATIONS: tuple[Migration, ...] = (
    Migration("night reports", NIGHT_REPORTS_SQL),  # name kept: databases made before the move have it applied
    Migration("night reports append-only", REPORTS_APPEND_ONLY_SQL),
    Migration("device memory back-fill", BACKFILL_SQL),
)
