"""Append-only storage of screening facts (one SQLite table, enforced by triggers).

Every value keeps who recorded it, when, from where, and (for a correction) why and which
row it replaces.  The database itself refuses UPDATE and DELETE and refuses a row that
does not supersede the current value of the same fact, so history cannot be rewritten
even by code that bypasses this module.
"""

from __future__ import annotations

import re
import sqlite3
from datetime import date, datetime, timezone
from typing import Any

from collector.storage.sqlite_lib import sqlite_utils

from collector.clock import parse_utc, utc_iso
from collector.eligibility.facts import (
    FACTS,
    RecordedFact,
    UnknownFactError,
    decode_value,
    encode_value,
    parse_fact,
)

__all__ = [
    "CorrectionReasonRequiredError",
    "FactStoreError",
    "UnknownSubjectError",
    "current_facts",
    "fact_history",
    "record_fact",
    "recorded_values",
    "retract_fact",
    "add_resolution",
    "latest_resolutions",
    "resolutions_of_subject",
]

_SESSION_RE = re.compile(r"session:\S+")


class FactStoreError(ValueError):
    """A fact cannot be stored as asked (the message says what to do)."""


class UnknownSubjectError(FactStoreError):
    """The subject id is not in the subjects table."""


class CorrectionReasonRequiredError(FactStoreError):
    """A fact already has a value: replacing it needs a reason."""


def _now(now_utc: float | str | datetime) -> tuple[str, datetime]:
    if isinstance(now_utc, datetime):
        if now_utc.tzinfo is None:
            raise FactStoreError("now_utc: a naive datetime is ambiguous; pass a UTC-aware datetime or epoch seconds")
        t = now_utc.timestamp()
    elif isinstance(now_utc, str):
        t = parse_utc(now_utc)
    else:
        t = float(now_utc)
    return utc_iso(t), datetime.fromtimestamp(t, tz=timezone.utc)


def _row_to_fact(row: sqlite3.Row | tuple) -> RecordedFact:
    rid, _subject, fact, value, by, at, source, reason, supersedes = row
    return RecordedFact(
        fact=fact, value=decode_value(fact, value), recorded_by=by, recorded_at=at, source=source,
        id=rid, reason=reason, supersedes=supersedes,
    )


_COLUMNS = "id, subject_id, fact, value, recorded_by, recorded_at, source, reason, supersedes"


def _latest_rows(db: sqlite_utils.Database, subject_id: str) -> dict[str, RecordedFact]:
    rows = db.execute(
        f"SELECT {_COLUMNS} FROM criteria_facts c WHERE subject_id = ? AND id = "
        "(SELECT max(id) FROM criteria_facts WHERE subject_id = c.subject_id AND fact = c.fact) ORDER BY fact",
        [subject_id],
    ).fetchall()
    return {r[2]: _row_to_fact(r) for r in rows}


def current_facts(db: sqlite_utils.Database, subject_id: str) -> dict[str, RecordedFact]:
    """Current value of every recorded fact of a subject (retracted facts omitted)."""
    return {k: v for k, v in _latest_rows(db, subject_id).items() if v.value is not None}


def fact_history(db: sqlite_utils.Database, subject_id: str, fact: str | None = None) -> list[RecordedFact]:
    """Every row ever recorded for a subject (optionally one fact), oldest first."""
    sql = f"SELECT {_COLUMNS} FROM criteria_facts WHERE subject_id = ?"
    params: list[Any] = [subject_id]
    if fact is not None:
        sql += " AND fact = ?"
        params.append(fact)
    return [_row_to_fact(r) for r in db.execute(sql + " ORDER BY id", params).fetchall()]


def recorded_values(conn: sqlite3.Connection, subject_id: str, fact: str) -> list[str]:
    """Every value ever recorded for one fact of a subject (JSON text, superseded ones included)."""
    return [r[0] for r in conn.execute("SELECT value FROM criteria_facts WHERE subject_id = ? AND fact = ?", (subject_id, fact))]


def _check_common(db: sqlite_utils.Database, subject_id: str, fact: str, by: str, source: str) -> None:
    if fact not in FACTS:
        raise UnknownFactError(f"unknown fact {fact!r}: use one of {', '.join(FACTS)}")
    if not by or not by.strip():
        raise FactStoreError("recorded_by is empty: say who records this fact (--by)")
    if source != "staff" and not _SESSION_RE.fullmatch(source):
        raise FactStoreError(f"source {source!r} is not 'staff' or 'session:<id>'")
    if db.execute("SELECT 1 FROM subjects WHERE id = ?", [subject_id]).fetchone() is None:
        raise UnknownSubjectError(f"unknown subject {subject_id!r}: register the subject first")


def _insert(db: sqlite_utils.Database, subject_id: str, fact: str, value_json: str, by: str, at: str,
            source: str, reason: str | None, supersedes: int | None) -> RecordedFact:
    cur = db.execute(
        "INSERT INTO criteria_facts (subject_id, fact, value, recorded_by, recorded_at, source, reason, supersedes) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [subject_id, fact, value_json, by.strip(), at, source, reason, supersedes],
    )
    row = db.execute(f"SELECT {_COLUMNS} FROM criteria_facts WHERE id = ?", [cur.lastrowid]).fetchone()
    return _row_to_fact(row)


def record_fact(
    db: sqlite_utils.Database,
    subject_id: str,
    fact: str,
    raw_value: str,
    *,
    by: str,
    reason: str | None = None,
    now_utc: float | str | datetime,
    source: str = "staff",
    today: date | None = None,
) -> RecordedFact:
    """Parse, validate and append one fact value; returns the stored row.

    Replacing an existing value (or re-recording a retracted one) needs a ``reason``
    (:class:`CorrectionReasonRequiredError`); the new row supersedes the old one.  Recording the value already current without a
    reason is a no-op returning the current row.  ``today`` (local date, for refusing
    future dates) defaults to the host's local date at ``now_utc``.
    Raises :class:`~collector.eligibility.facts.FactError` for a bad value.
    """
    at, at_dt = _now(now_utc)
    local_today = today or at_dt.astimezone().date()
    reason = reason.strip() if reason and reason.strip() else None
    with db.atomic():
        _check_common(db, subject_id, fact, by, source)
        latest = _latest_rows(db, subject_id)
        known = {k: v.value for k, v in latest.items() if v.value is not None and k != fact}
        value = parse_fact(fact, raw_value, today=local_today, known=known)
        current = latest.get(fact)
        if current is not None and reason is None:
            if current.value is None:
                raise CorrectionReasonRequiredError(
                    f"{fact} was retracted (row {current.id}); recording it again needs a reason (--reason)"
                )
            if current.value == value:
                return current
            raise CorrectionReasonRequiredError(
                f"{fact} is already recorded (row {current.id}); to correct it give a reason (--reason)"
            )
        return _insert(db, subject_id, fact, encode_value(fact, value), by, at, source, reason,
                       current.id if current else None)


def retract_fact(
    db: sqlite_utils.Database,
    subject_id: str,
    fact: str,
    *,
    by: str,
    reason: str,
    now_utc: float | str | datetime,
    source: str = "staff",
) -> RecordedFact:
    """Withdraw a value recorded by mistake: appends a null row (with the reason), deletes nothing.

    The fact then counts as not recorded (its criterion goes back to ``pending``).
    """
    at, _ = _now(now_utc)
    if not reason or not reason.strip():
        raise CorrectionReasonRequiredError(f"retracting {fact} needs a reason (--reason)")
    with db.atomic():
        _check_common(db, subject_id, fact, by, source)
        current = _latest_rows(db, subject_id).get(fact)
        if current is None or current.value is None:
            raise FactStoreError(f"{fact} has no current value to retract for subject {subject_id!r}")
        return _insert(db, subject_id, fact, "null", by, at, source, reason.strip(), current.id)


# --------------------------------------------------------------------------- review resolutions
_REVIEW_COLUMNS = "id, subject_id, criterion, decision, reason, resolved_by, resolved_at, evidence_sha256, evidence_json"


def _resolution(row: tuple[Any, ...]) -> dict[str, Any]:
    import json

    out = dict(zip([k.strip() for k in _REVIEW_COLUMNS.split(",")], row))
    out["evidence"] = json.loads(out.pop("evidence_json"))
    return out


def add_resolution(conn: sqlite3.Connection, *, subject_id: str, criterion: str, decision: str, reason: str, by: str,
                   at: str, evidence_sha256: str, evidence_json: str) -> dict[str, Any]:
    cur = conn.execute(
        "INSERT INTO review_resolutions (subject_id, criterion, decision, reason, resolved_by, resolved_at, evidence_sha256, "
        "evidence_json) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (subject_id, criterion, decision, reason, by, at, evidence_sha256, evidence_json))
    return _resolution(conn.execute(f"SELECT {_REVIEW_COLUMNS} FROM review_resolutions WHERE id = ?", (cur.lastrowid,)).fetchone())


def latest_resolutions(conn: sqlite3.Connection, subject_id: str) -> dict[str, dict[str, Any]]:
    """The newest resolution of each criterion of a subject."""
    rows = conn.execute(
        f"SELECT {_REVIEW_COLUMNS} FROM review_resolutions r WHERE subject_id = ? AND id = "
        "(SELECT max(id) FROM review_resolutions WHERE subject_id = r.subject_id AND criterion = r.criterion)", (subject_id,),
    ).fetchall()
    return {r[2]: _resolution(r) for r in rows}


def resolutions_of_subject(conn: sqlite3.Connection, subject_id: str) -> list[dict[str, Any]]:
    rows = conn.execute(f"SELECT {_REVIEW_COLUMNS} FROM review_resolutions WHERE subject_id = ? ORDER BY id", (subject_id,))
    return [_resolution(r) for r in rows.fetchall()]
