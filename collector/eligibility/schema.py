"""The eligibility feature's table: append-only screening facts (see collector/eligibility/store.py).

Registered in collector/schemas.py; the migration name is recorded in ``schema_migrations``
and must never change (a renamed migration would run again on existing databases).
"""

from __future__ import annotations

from collector.storage.schema import Migration, append_only

FACTS_SQL = """
CREATE TABLE IF NOT EXISTS criteria_facts (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    subject_id   TEXT NOT NULL REFERENCES subjects(id),
    fact         TEXT NOT NULL,
    value        TEXT NOT NULL CHECK (json_valid(value)),   -- typed JSON; null = retracted
    recorded_by  TEXT NOT NULL CHECK (length(trim(recorded_by)) > 0),
    recorded_at  TEXT NOT NULL,                             -- UTC ISO-8601, ...Z
    source       TEXT NOT NULL CHECK (source = 'staff' OR (source LIKE 'session:%' AND length(source) > 8)),
    reason       TEXT,
    supersedes   INTEGER REFERENCES criteria_facts(id),
    CHECK (supersedes IS NULL OR length(trim(coalesce(reason, ''))) > 0)
);
CREATE INDEX IF NOT EXISTS criteria_facts_subject_fact ON criteria_facts(subject_id, fact, id);

CREATE TRIGGER IF NOT EXISTS criteria_facts_no_update
BEFORE UPDATE ON criteria_facts
BEGIN
    SELECT RAISE(ABORT, 'criteria_facts is append-only: record a correction as a new row with a reason');
END;

CREATE TRIGGER IF NOT EXISTS criteria_facts_no_delete
BEFORE DELETE ON criteria_facts
BEGIN
    SELECT RAISE(ABORT, 'criteria_facts is append-only: rows cannot be deleted');
END;

-- A new row must supersede exactly the current row of the same subject and fact (none for the first).
CREATE TRIGGER IF NOT EXISTS criteria_facts_chain
BEFORE INSERT ON criteria_facts
BEGIN
    SELECT RAISE(ABORT, 'criteria_facts: a new value must supersede the current row of the same subject and fact')
    WHERE coalesce(NEW.supersedes, -1) IS NOT coalesce(
        (SELECT max(id) FROM criteria_facts WHERE subject_id = NEW.subject_id AND fact = NEW.fact), -1);
END;
"""

# An investigator's resolution of a needs_review criterion, bound to the SHA-256 of the evidence it
# looked at (the criterion's reason, value, inputs and the thresholds): when that changes, the
# resolution no longer applies and the criterion is open again.  Append-only: a new resolution is a new row.
REVIEWS_SQL = """
CREATE TABLE review_resolutions (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    subject_id      TEXT NOT NULL REFERENCES subjects(id),
    criterion       TEXT NOT NULL,
    decision        TEXT NOT NULL CHECK (decision IN ('met', 'not_met')),
    reason          TEXT NOT NULL CHECK (length(trim(reason)) > 0),
    resolved_by     TEXT NOT NULL CHECK (length(trim(resolved_by)) > 0),
    resolved_at     TEXT NOT NULL,                               -- UTC ISO-8601, ...Z
    evidence_sha256 TEXT NOT NULL CHECK (length(evidence_sha256) = 64),
    evidence_json   TEXT NOT NULL CHECK (json_valid(evidence_json))  -- the criterion as the investigator saw it
);
CREATE INDEX review_resolutions_subject ON review_resolutions(subject_id, criterion, id);
""" + append_only("review_resolutions", what="review resolutions are append-only: resolve again to record a new decision")

MIGRATIONS: tuple[Migration, ...] = (Migration("eligibility facts", FACTS_SQL), Migration("review resolutions", REVIEWS_SQL))
