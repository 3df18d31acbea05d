"""Record-level operations shared by the daemon (through the writer) and the CLI.

Every function takes a connection that is already inside a write transaction
(``Writer.submit`` provides one) and writes the matching audit row in the same
transaction, so a state change and its audit entry land together or not at all.
"""

from __future__ import annotations

import json
import re
import sqlite3
from typing import Any

from collector.clock import utc_iso
from collector.errors import Conflict, InvalidInput, NotFound
from collector.storage import audit

SUBJECT_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{2,31}")  # used with fullmatch: no trailing newline


DEFAULT_SUBJECT_ID_PATTERN = r"^[A-Z]{2,5}-[0-9]{3,6}$"  # [site] subject_id_pattern
_DATE_RES = (
    re.compile(r"(?<!\d)(19|20)\d\d(0[1-9]|1[0-2])(0[1-9]|[12]\d|3[01])(?!\d)"),    # 19640502
    re.compile(r"(?<!\d)(19|20)\d\d[-./_](0?[1-9]|1[0-2])[-./_](0?[1-9]|[12]\d|3[01])(?!\d)"),  # 1964-05-02
    re.compile(r"(?<!\d)(0?[1-9]|[12]\d|3[01])[-./_](0?[1-9]|1[0-2])[-./_](19|20)\d\d(?!\d)"),  # 02.05.1964
)


def identifying_look(subject_id: str) -> str | None:
    """What a subject ID looks like if it could identify a person (a date, a phone or a national ID number), else None."""
    if any(r.search(subject_id) for r in _DATE_RES):
        return "a date (a birth date?)"
    digits = sum(c.isdigit() for c in subject_id)
    if re.search(r"\d{15,}[\dXx]?", subject_id):
        return "a national ID number"
    if re.search(r"\d{7,}", subject_id) or digits >= 10:
        return "a phone number"
    return None


def validate_new_subject_id(subject_id: str, pattern: str | None = None) -> str:
    """A new subject's ID: the site's pattern, and never an ID that looks like a date, a phone or a national ID number
    (refused whatever the pattern allows)."""
    validate_subject_id(subject_id)
    look = identifying_look(subject_id)
    if look is not None:
        raise InvalidInput(f"subject ID {subject_id!r} looks like {look}: use the pseudonymous screening ID from the screening log, never a personal number")
    pattern = pattern or DEFAULT_SUBJECT_ID_PATTERN
    if not re.fullmatch(pattern, subject_id):
        raise InvalidInput(f"subject ID {subject_id!r} does not match the site's screening ID pattern {pattern} ([site] subject_id_pattern), e.g. SCR-0042")
    return subject_id


def validate_subject_id(subject_id: str) -> str:
    """Pseudonymous IDs only: 3-32 letters/digits/-/_ with at least one digit (a bare name is refused)."""
    if not SUBJECT_ID_RE.fullmatch(subject_id or "") or not any(c.isdigit() for c in subject_id):
        raise InvalidInput(
            f"invalid subject ID {subject_id!r}: use the pseudonymous screening ID (3-32 letters, digits, '-' or '_', "
            "with at least one digit, e.g. SCR-0042), never a name"
        )
    return subject_id


def inserted_id(cur: sqlite3.Cursor) -> int:
    """The row id an INSERT just created (typed ``int | None`` by sqlite3: None before any INSERT)."""
    if cur.lastrowid is None:
        raise RuntimeError("the INSERT reported no row id")
    return cur.lastrowid


def _rows(conn: sqlite3.Connection, sql: str, params: Any = ()) -> list[dict[str, Any]]:
    try:
        cur = conn.execute(sql, params)
    except OverflowError:  # an ID beyond SQLite's 64-bit integers (typed by a user or a fuzzer)
        raise NotFound("no record has that ID (the number is larger than any ID); check the number") from None
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r)) for r in cur.fetchall()]


def _row(conn: sqlite3.Connection, sql: str, params: Any = ()) -> dict[str, Any] | None:
    rows = _rows(conn, sql, params)
    return rows[0] if rows else None


# -- subjects ---------------------------------------------------------------------------
def add_subject(conn: sqlite3.Connection, subject_id: str, *, by: str, at: float, pattern: str | None = None) -> dict[str, Any]:
    validate_new_subject_id(subject_id, pattern)
    if _row(conn, "SELECT id FROM subjects WHERE id = ?", (subject_id,)):
        raise Conflict(f"subject {subject_id} already exists; use it as it is (collector session list --subject {subject_id})")
    conn.execute("INSERT INTO subjects (id, created_utc, created_by) VALUES (?, ?, ?)", (subject_id, utc_iso(at), by))
    audit.append(conn, at=at, actor=by, action="subject_created", subject_id=subject_id, new={"id": subject_id})
    return get_subject(conn, subject_id)


def get_subject(conn: sqlite3.Connection, subject_id: str) -> dict[str, Any]:
    row = _row(conn, "SELECT * FROM subjects WHERE id = ?", (subject_id,))
    if row is None:
        raise NotFound(f"unknown subject {subject_id!r}; add it first with: collector subject add {subject_id}")
    return row


def list_subjects(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    return _rows(conn, "SELECT * FROM subjects ORDER BY id")


def subjects_with_open_sessions(conn: sqlite3.Connection) -> list[str]:
    return [r[0] for r in conn.execute("SELECT DISTINCT subject_id FROM sessions WHERE state = 'open' ORDER BY subject_id")]


# -- devices ----------------------------------------------------------------------------
def upsert_device(
    conn: sqlite3.Connection, *, kind: str, protocol: str, address: str, at: float, name: str | None = None, **info: Any
) -> int:
    """Find or create the device row; fill model/serial/firmware when the device reports them."""
    row = _row(conn, "SELECT * FROM devices WHERE kind = ? AND address = ?", (kind, address))
    ident = {k: v for k, v in info.items() if k in ("model", "serial_number", "firmware") and v}
    if row is None:
        cur = conn.execute(
            "INSERT INTO devices (kind, protocol, address, name, model, serial_number, firmware, first_seen_utc, last_seen_utc)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (kind, protocol, address, name, ident.get("model"), ident.get("serial_number"), ident.get("firmware"), utc_iso(at), utc_iso(at)),
        )
        device_id = inserted_id(cur)
        # The address stays out of the audit value: it can identify a home device's owner.
        audit.append(conn, at=at, actor="collector", action="device_registered",
                     new={"device_id": device_id, "kind": kind, "protocol": protocol, **ident})
        return device_id
    updates = {k: v for k, v in ident.items() if v != row[k]}
    if updates:
        audit.append(conn, at=at, actor="collector", action="device_identity_changed",
                     old={"device_id": row["id"], **{k: row[k] for k in updates}}, new={"device_id": row["id"], **updates})
    updates["last_seen_utc"] = utc_iso(at)
    if name and name != row["name"]:
        updates["name"] = name
    if protocol != row["protocol"]:
        updates["protocol"] = protocol
    conn.execute(
        f"UPDATE devices SET {', '.join(f'{k} = ?' for k in updates)} WHERE id = ?", (*updates.values(), row["id"])
    )
    return int(row["id"])


def device_summary(conn: sqlite3.Connection, device_id: int) -> dict[str, Any] | None:
    """Kind, protocol, model, serial and firmware: what may leave the site (never the address)."""
    return _row(conn, "SELECT kind, protocol, model, serial_number, firmware FROM devices WHERE id = ?", (device_id,))


def device_addresses(conn: sqlite3.Connection) -> list[str]:
    """Every known device address (local only: exports search for them to refuse a leak)."""
    return [r[0] for r in conn.execute("SELECT address FROM devices")]


# -- sessions ---------------------------------------------------------------------------
def open_session(
    conn: sqlite3.Connection,
    *,
    subject_id: str,
    kind: str,
    device_id: int | None,
    by: str,
    at: float,
    origin: str = "live",
    settings: dict[str, Any] | None = None,
) -> int:
    get_subject(conn, subject_id)
    busy = _row(conn, "SELECT id FROM sessions WHERE subject_id = ? AND kind = ? AND state = 'open'", (subject_id, kind))
    if busy:
        raise Conflict(
            f"subject {subject_id} already has an open {kind} session ({busy['id']}); stop it first: collector session stop {busy['id']}"
        )
    if device_id is not None:
        busy = _row(conn, "SELECT id, subject_id FROM sessions WHERE device_id = ? AND state = 'open'", (device_id,))
        if busy:
            raise Conflict(
                f"that device is already recording session {busy['id']} (subject {busy['subject_id']}); "
                f"stop it first (collector session stop {busy['id']}) or choose another device"
            )
    cur = conn.execute(
        "INSERT INTO sessions (subject_id, kind, state, origin, device_id, started_utc, started_by, settings_json)"
        " VALUES (?, ?, 'open', ?, ?, ?, ?, ?)",
        (subject_id, kind, origin, device_id, utc_iso(at), by, json.dumps(settings or {}, sort_keys=True)),
    )
    session_id = inserted_id(cur)
    audit.append(
        conn, at=at, actor=by, action="session_started", subject_id=subject_id, session_id=session_id,
        new={"kind": kind, "origin": origin, "device_id": device_id},
    )
    return session_id


def get_session(conn: sqlite3.Connection, session_id: int) -> dict[str, Any]:
    row = _row(conn, "SELECT * FROM sessions WHERE id = ?", (session_id,))
    if row is None:
        raise NotFound(f"unknown session {session_id}; list sessions with: collector session list")
    return row


def close_session(conn: sqlite3.Connection, session_id: int, *, state: str, by: str, at: float, reason: str | None = None) -> dict[str, Any]:
    """Move an open session to ``stopped`` or ``interrupted``."""
    row = get_session(conn, session_id)
    if row["state"] != "open":
        raise Conflict(f"session {session_id} is not open (it is {row['state']}); nothing to stop")
    conn.execute("UPDATE sessions SET state = ?, stopped_utc = ?, stopped_by = ? WHERE id = ?", (state, utc_iso(at), by, session_id))
    audit.append(
        conn, at=at, actor=by, action=f"session_{state}", subject_id=row["subject_id"], session_id=session_id,
        old={"state": "open"}, new={"state": state}, reason=reason,
    )
    return get_session(conn, session_id)


def add_recorded_session(
    conn: sqlite3.Connection, *, subject_id: str, kind: str, origin: str, started_at: float, stopped_at: float,
    by: str, settings: dict[str, Any],
) -> int:
    """A session recorded elsewhere (an imported night): created already stopped, no device attached."""
    cur = conn.execute(
        "INSERT INTO sessions (subject_id, kind, state, origin, device_id, started_utc, stopped_utc, started_by, stopped_by, settings_json)"
        " VALUES (?, ?, 'stopped', ?, NULL, ?, ?, ?, ?, ?)",
        (subject_id, kind, origin, utc_iso(started_at), utc_iso(stopped_at), by, by, json.dumps(settings, sort_keys=True)),
    )
    return inserted_id(cur)


def find_imported_session(conn: sqlite3.Connection, sha256: str) -> dict[str, Any] | None:
    """The session made from a file with this SHA-256 before, if any (``{id, subject_id}``)."""
    return _row(conn, "SELECT id, subject_id FROM sessions WHERE origin = 'import' AND "
                      "json_extract(settings_json, '$.import.sha256') = ?", (sha256,))


def resume_session(conn: sqlite3.Connection, session_id: int, *, by: str, at: float) -> None:
    """An interrupted session continues recording in the same session (the downtime becomes a gap)."""
    row = get_session(conn, session_id)
    conn.execute("UPDATE sessions SET state = 'open', stopped_utc = NULL, stopped_by = NULL WHERE id = ?", (session_id,))
    audit.append(
        conn, at=at, actor=by, action="session_resumed", subject_id=row["subject_id"], session_id=session_id,
        old={"state": row["state"]}, new={"state": "open"},
    )


def list_sessions(conn: sqlite3.Connection, subject_id: str | None = None, state: str | None = None) -> list[dict[str, Any]]:
    sql = (
        "SELECT s.*, d.protocol AS device_protocol, d.address AS device_address, d.name AS device_name,"
        " COALESCE(st.samples, 0) AS samples"  # kept per session as samples are stored: no count over the samples
        " FROM sessions s LEFT JOIN devices d ON d.id = s.device_id"
        " LEFT JOIN session_sample_stats st ON st.session_id = s.id WHERE 1=1"
    )
    params: list[Any] = []
    if subject_id:
        sql += " AND s.subject_id = ?"
        params.append(subject_id)
    if state:
        sql += " AND s.state = ?"
        params.append(state)
    return _rows(conn, sql + " ORDER BY s.id", params)


def recent_sessions(conn: sqlite3.Connection, *, limit: int, subject_id: str | None = None) -> list[dict[str, Any]]:
    """The newest sessions first, with their device's name and protocol (no per-session counts: cheap at any size)."""
    sql = ("SELECT s.id, s.subject_id, s.kind, s.state, s.origin, s.started_utc, s.stopped_utc, d.name AS device_name,"
           " d.protocol AS device_protocol FROM sessions s LEFT JOIN devices d ON d.id = s.device_id"
           + (" WHERE s.subject_id = ?" if subject_id else "") + " ORDER BY s.id DESC LIMIT ?")
    return _rows(conn, sql, ([subject_id] if subject_id else []) + [limit])


def subject_sessions(conn: sqlite3.Connection, subject_id: str, kind: str) -> list[dict[str, Any]]:
    """A subject's sessions of one kind, oldest first (without the device join and sample count of list_sessions)."""
    return _rows(conn, "SELECT id, state, started_utc, stopped_utc FROM sessions WHERE subject_id = ? AND kind = ? ORDER BY id",
                 (subject_id, kind))


def first_session_started_utc(conn: sqlite3.Connection, subject_id: str) -> str | None:
    row = conn.execute("SELECT MIN(started_utc) FROM sessions WHERE subject_id = ?", (subject_id,)).fetchone()
    return row[0] if row else None


def open_sessions_by_subject(conn: sqlite3.Connection) -> dict[str, list[int]]:
    """Subject -> IDs of its open sessions, oldest first."""
    out: dict[str, list[int]] = {}
    for subject_id, session_id in conn.execute("SELECT subject_id, id FROM sessions WHERE state = 'open' ORDER BY id"):
        out.setdefault(subject_id, []).append(session_id)
    return out


# -- gaps and events --------------------------------------------------------------------
def open_gap(conn: sqlite3.Connection, session_id: int, *, start_ms: int, cause: str, detail: str | None = None) -> int:
    cur = conn.execute(
        "INSERT INTO gaps (session_id, start_utc_ms, cause, detail) VALUES (?, ?, ?, ?)", (session_id, start_ms, cause, detail)
    )
    return inserted_id(cur)


def close_gap(conn: sqlite3.Connection, gap_id: int, *, end_ms: int) -> None:
    conn.execute("UPDATE gaps SET end_utc_ms = MAX(start_utc_ms, ?) WHERE id = ? AND end_utc_ms IS NULL", (end_ms, gap_id))


def add_gap(conn: sqlite3.Connection, session_id: int, *, start_ms: int, end_ms: int, cause: str, detail: str | None = None) -> int:
    cur = conn.execute(
        "INSERT INTO gaps (session_id, start_utc_ms, end_utc_ms, cause, detail) VALUES (?, ?, ?, ?, ?)",
        (session_id, start_ms, max(start_ms, end_ms), cause, detail),
    )
    return inserted_id(cur)


def add_event(conn: sqlite3.Connection, session_id: int | None, *, t_ms: int, kind: str, detail: dict[str, Any] | None = None) -> int:
    cur = conn.execute(
        "INSERT INTO events (session_id, t_utc_ms, kind, detail_json) VALUES (?, ?, ?, ?)",
        (session_id, t_ms, kind, json.dumps(detail or {}, sort_keys=True)),
    )
    return inserted_id(cur)


def open_gap_id(conn: sqlite3.Connection, session_id: int) -> int | None:
    """The session's outage still open (a daemon killed mid-outage), if any."""
    row = conn.execute("SELECT MAX(id) FROM gaps WHERE session_id = ? AND end_utc_ms IS NULL", (session_id,)).fetchone()
    return None if row is None or row[0] is None else int(row[0])


def session_gaps(conn: sqlite3.Connection, session_id: int) -> list[dict[str, Any]]:
    return _rows(conn, "SELECT * FROM gaps WHERE session_id = ? ORDER BY start_utc_ms, id", (session_id,))


def latest_event(conn: sqlite3.Connection, session_id: int, kind: str) -> dict[str, Any] | None:
    """The session's newest event of one kind (e.g. the live T90 alert), or None."""
    return _row(conn, "SELECT * FROM events WHERE session_id = ? AND kind = ? ORDER BY t_utc_ms DESC, id DESC LIMIT 1",
                (session_id, kind))


def session_events(conn: sqlite3.Connection, session_id: int) -> list[dict[str, Any]]:
    return _rows(conn, "SELECT * FROM events WHERE session_id = ? ORDER BY t_utc_ms, id", (session_id,))


def site_uuid(conn: sqlite3.Connection) -> str:
    """This database's site UUID (made by the ``site identity`` migration)."""
    row = conn.execute("SELECT site_uuid FROM site_identity WHERE id = 1").fetchone()
    if row is None:
        raise RuntimeError("the database has no site identity row; open it with collector.storage.db.open_db to migrate it")
    return str(row[0])
