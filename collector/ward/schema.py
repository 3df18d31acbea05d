"""The ``alerts`` and ``night_notes`` tables (see collector/ward/store.py), registered in collector/schemas.py.

An alert row is written when the daemon raises it; it is changed only to set the moment
its condition cleared and who acknowledged it, each once (triggers refuse anything else),
so the row tells the whole story of one alert.  A repeat of the same kind for the same session
while the alert is still unacknowledged re-activates that row (``raise_count`` + 1,
``last_raised_utc``, ``cleared_utc`` back to NULL until it clears again): a silent link's
hundred reconnects are one row, not a hundred; acknowledging ends the run.  Notes are append-only: a wrong note is
corrected by another note, never edited.
"""

from __future__ import annotations

from collector.storage.schema import Migration, append_only

ALERTS_SQL = """
CREATE TABLE alerts (
    id INTEGER PRIMARY KEY,
    session_id INTEGER REFERENCES sessions(id),   -- NULL for the laptop's own alerts (disk, storage)
    subject_id TEXT,                              -- pseudonym of the bed's subject
    kind TEXT NOT NULL,
    message TEXT NOT NULL,
    raised_utc TEXT NOT NULL,
    cleared_utc TEXT,                             -- when the condition stopped holding
    acknowledged_utc TEXT,
    acknowledged_by TEXT,                         -- a verified operator
    ack_note TEXT,
    CHECK ((acknowledged_utc IS NULL) = (acknowledged_by IS NULL))
);
CREATE INDEX alerts_open ON alerts(cleared_utc, acknowledged_utc);
CREATE INDEX alerts_session ON alerts(session_id);

CREATE TRIGGER alerts_no_delete BEFORE DELETE ON alerts
BEGIN SELECT RAISE(ABORT, 'alerts are kept: they are never deleted'); END;
CREATE TRIGGER alerts_only_clear_or_ack BEFORE UPDATE ON alerts
WHEN NEW.id IS NOT OLD.id OR NEW.session_id IS NOT OLD.session_id OR NEW.subject_id IS NOT OLD.subject_id
  OR NEW.kind IS NOT OLD.kind OR NEW.raised_utc IS NOT OLD.raised_utc
  OR (OLD.cleared_utc IS NOT NULL AND NEW.cleared_utc IS NOT OLD.cleared_utc)
  OR (OLD.acknowledged_utc IS NOT NULL AND (NEW.acknowledged_utc IS NOT OLD.acknowledged_utc
      OR NEW.acknowledged_by IS NOT OLD.acknowledged_by OR NEW.ack_note IS NOT OLD.ack_note))
BEGIN SELECT RAISE(ABORT, 'an alert is only cleared and acknowledged, each once'); END;
"""

NOTES_SQL = """
CREATE TABLE night_notes (
    id INTEGER PRIMARY KEY,
    session_id INTEGER NOT NULL REFERENCES sessions(id),
    t_utc_ms INTEGER NOT NULL,           -- when it was noted (the daemon's clock, host UTC)
    text TEXT NOT NULL CHECK (length(text) BETWEEN 1 AND 500),
    noted_by TEXT NOT NULL               -- a verified operator
);
CREATE INDEX night_notes_session ON night_notes(session_id, t_utc_ms);
""" + append_only("night_notes", what="night notes are append-only: add a correcting note instead")

# What an alert says as a message id (an English msgid with {placeholders}) and its parameters as JSON, so each
# reader sees it in their language (collector/ward/messages.py); older rows keep only their English message.
ALERT_MESSAGE_IDS_SQL = """
ALTER TABLE alerts ADD COLUMN message_id TEXT;
ALTER TABLE alerts ADD COLUMN params_json TEXT;
"""

# raised_utc stays the first raise; last_raised_utc is the latest; cleared_utc is the latest clear
# (NULL while the condition holds again).  The trigger allows a repeat only on an unacknowledged,
# cleared alert and only one step at a time, so the count cannot be rewritten.
ALERT_REPEATS_SQL = """
ALTER TABLE alerts ADD COLUMN raise_count INTEGER NOT NULL DEFAULT 1 CHECK (raise_count >= 1);
ALTER TABLE alerts ADD COLUMN last_raised_utc TEXT;
DROP TRIGGER alerts_only_clear_or_ack;
UPDATE alerts SET last_raised_utc = raised_utc;
CREATE TRIGGER alerts_only_clear_ack_or_repeat BEFORE UPDATE ON alerts
WHEN NEW.id IS NOT OLD.id OR NEW.session_id IS NOT OLD.session_id OR NEW.subject_id IS NOT OLD.subject_id
  OR NEW.kind IS NOT OLD.kind OR NEW.raised_utc IS NOT OLD.raised_utc
  OR NEW.raise_count NOT IN (OLD.raise_count, OLD.raise_count + 1)
  OR (NEW.raise_count = OLD.raise_count AND (NEW.last_raised_utc IS NOT OLD.last_raised_utc
      OR NEW.message IS NOT OLD.message OR NEW.message_id IS NOT OLD.message_id OR NEW.params_json IS NOT OLD.params_json
      OR (OLD.cleared_utc IS NOT NULL AND NEW.cleared_utc IS NOT OLD.cleared_utc)))
  OR (NEW.raise_count = OLD.raise_count + 1 AND (OLD.acknowledged_utc IS NOT NULL OR OLD.cleared_utc IS NULL
      OR NEW.cleared_utc IS NOT NULL OR NEW.last_raised_utc IS NULL OR NEW.last_raised_utc < OLD.last_raised_utc))
  OR (OLD.acknowledged_utc IS NOT NULL AND (NEW.acknowledged_utc IS NOT OLD.acknowledged_utc
      OR NEW.acknowledged_by IS NOT OLD.acknowledged_by OR NEW.ack_note IS NOT OLD.ack_note))
BEGIN SELECT RAISE(ABORT, 'an alert is only cleared and acknowledged, each once, or raised again before it is acknowledged'); END;
"""

MIGRATIONS: tuple[Migration, ...] = (Migration("ward alerts", ALERTS_SQL), Migration("night notes", NOTES_SQL),
                                     Migration("alert message ids", ALERT_MESSAGE_IDS_SQL),
                                     Migration("ward alert repeats", ALERT_REPEATS_SQL))
