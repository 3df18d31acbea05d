"""The ``alerts`` and ``night_notes`` tables: every SQL statement on them (the caller owns the transaction).

Raising, clearing and acknowledging an alert, and adding a note, each write an audit row in
the same transaction, so the trail shows who saw what and when.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from collector.clock import utc_iso
from collector.errors import Conflict, InvalidInput, NotFound
from collector.storage import audit

NOTE_MAX_CHARS = 500
_ALERT_COLUMNS = ("id, session_id, subject_id, kind, message, raised_utc, cleared_utc, acknowledged_utc, "
                  "acknowledged_by, ack_note, message_id, params_json, raise_count, last_raised_utc")


def _alert(row: tuple[Any, ...]) -> dict[str, Any]:
    keys = [k.strip() for k in _ALERT_COLUMNS.split(",")]
    out = dict(zip(keys, row))
    out["state"] = alert_state(out)
    return out


def alert_state(a: dict[str, Any]) -> str:
    """``active`` (condition holds, not acknowledged), ``cleared`` (cleared, still to acknowledge),
    ``acknowledged`` (seen, condition still holds) or ``resolved`` (cleared and acknowledged)."""
    if a["acknowledged_utc"] is None:
        return "active" if a["cleared_utc"] is None else "cleared"
    return "acknowledged" if a["cleared_utc"] is None else "resolved"


def next_alert_id(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT coalesce(max(id), 0) + 1 FROM alerts").fetchone()[0])


def raise_alert(conn: sqlite3.Connection, *, alert_id: int, kind: str, session_id: int | None, subject_id: str | None,
                message: str, at: float, message_id: str | None = None, params: dict[str, str] | None = None) -> None:
    """``message`` is the English text; ``message_id`` and ``params`` let each reader see it in their language."""
    params_json = None if message_id is None else json.dumps(params or {}, ensure_ascii=False, sort_keys=True)
    conn.execute("INSERT INTO alerts (id, session_id, subject_id, kind, message, raised_utc, message_id, params_json, "
                 "last_raised_utc) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                 (alert_id, session_id, subject_id, kind, message, utc_iso(at), message_id, params_json, utc_iso(at)))
    ids = {} if message_id is None else {"message_id": message_id, "params": params or {}}
    audit.append(conn, at=at, actor="collector", action="alert_raised", subject_id=subject_id, session_id=session_id,
                 new={"alert_id": alert_id, "alert": kind, "message": message, **ids})


def repeat_alert(conn: sqlite3.Connection, alert_id: int, *, message: str, at: float, message_id: str | None = None,
                 params: dict[str, str] | None = None) -> int:
    """Raise a cleared, unacknowledged alert again (its condition came back): one row, count + 1, audited
    as a raise.  Returns the new count; 0 when the alert is not cleared-and-unacknowledged (nothing written)."""
    row = conn.execute("SELECT kind, session_id, subject_id, raise_count FROM alerts WHERE id = ? "
                       "AND cleared_utc IS NOT NULL AND acknowledged_utc IS NULL", (alert_id,)).fetchone()
    if row is None:
        return 0
    count = int(row[3]) + 1
    params_json = None if message_id is None else json.dumps(params or {}, ensure_ascii=False, sort_keys=True)
    conn.execute("UPDATE alerts SET cleared_utc = NULL, raise_count = ?, last_raised_utc = ?, message = ?, message_id = ?, "
                 "params_json = ? WHERE id = ?", (count, utc_iso(at), message, message_id, params_json, alert_id))
    ids = {} if message_id is None else {"message_id": message_id, "params": params or {}}
    audit.append(conn, at=at, actor="collector", action="alert_raised", subject_id=row[2], session_id=row[1],
                 new={"alert_id": alert_id, "alert": row[0], "message": message, **ids, "raise_count": count})
    return count


def clear_alert(conn: sqlite3.Connection, alert_id: int, *, at: float) -> None:
    row = conn.execute("SELECT kind, session_id, subject_id FROM alerts WHERE id = ? AND cleared_utc IS NULL",
                       (alert_id,)).fetchone()
    if row is None:
        return
    conn.execute("UPDATE alerts SET cleared_utc = ? WHERE id = ?", (utc_iso(at), alert_id))
    audit.append(conn, at=at, actor="collector", action="alert_cleared", subject_id=row[2], session_id=row[1],
                 new={"alert_id": alert_id, "alert": row[0]})


def acknowledge(conn: sqlite3.Connection, alert_id: int, *, by: str, at: float, note: str | None = None) -> dict[str, Any]:
    """Mark an alert seen by ``by``; NotFound for an unknown id, Conflict when already acknowledged."""
    a = get_alert(conn, alert_id)
    if a["acknowledged_utc"] is not None:
        raise Conflict(f"alert {alert_id} was already acknowledged by {a['acknowledged_by']} at {a['acknowledged_utc']}")
    conn.execute("UPDATE alerts SET acknowledged_utc = ?, acknowledged_by = ?, ack_note = ? WHERE id = ?",
                 (utc_iso(at), by, note, alert_id))
    audit.append(conn, at=at, actor=by, action="alert_acknowledged", subject_id=a["subject_id"], session_id=a["session_id"],
                 new={"alert_id": alert_id, "alert": a["kind"], "message": a["message"], "raised_utc": a["raised_utc"],
                      "raise_count": a["raise_count"]},
                 reason=note)
    return get_alert(conn, alert_id)


def get_alert(conn: sqlite3.Connection, alert_id: int) -> dict[str, Any]:
    row = conn.execute(f"SELECT {_ALERT_COLUMNS} FROM alerts WHERE id = ?", (alert_id,)).fetchone()
    if row is None:
        raise NotFound(f"no alert {alert_id}; list them with: collector alerts --all")
    return _alert(row)


def list_alerts(conn: sqlite3.Connection, *, include_resolved: bool = False, session_id: int | None = None,
                limit: int = 1000) -> list[dict[str, Any]]:
    """Newest first; without ``include_resolved`` only those still needing a person (not cleared and acknowledged)."""
    where, args = [], []
    if not include_resolved:
        where.append("(cleared_utc IS NULL OR acknowledged_utc IS NULL)")
    if session_id is not None:
        where.append("session_id = ?")
        args.append(session_id)
    sql = f"SELECT {_ALERT_COLUMNS} FROM alerts" + (" WHERE " + " AND ".join(where) if where else "")
    return [_alert(r) for r in conn.execute(sql + " ORDER BY id DESC LIMIT ?", (*args, limit))]


# -- night notes ---------------------------------------------------------------------------------------
def clean_note(text: str) -> str:
    text = " ".join(text.split())
    if not text:
        raise InvalidInput("the note is empty; write what happened, e.g. \"patient got up\" or \"probe re-taped\"")
    if len(text) > NOTE_MAX_CHARS:
        raise InvalidInput(f"the note has {len(text)} characters; at most {NOTE_MAX_CHARS} are kept - shorten it")
    return text


def add_note(conn: sqlite3.Connection, session_id: int, text: str, *, by: str, at: float) -> dict[str, Any]:
    row = conn.execute("SELECT subject_id FROM sessions WHERE id = ?", (session_id,)).fetchone()
    if row is None:
        raise NotFound(f"no session {session_id}; list them with: collector session list")
    text = clean_note(text)
    t_ms = int(round(at * 1000))
    cur = conn.execute("INSERT INTO night_notes (session_id, t_utc_ms, text, noted_by) VALUES (?, ?, ?, ?)",
                       (session_id, t_ms, text, by))
    note_id = int(cur.lastrowid or 0)
    audit.append(conn, at=at, actor=by, action="note_added", subject_id=row[0], session_id=session_id,
                 new={"note_id": note_id, "text": text})
    return {"id": note_id, "session_id": session_id, "t_utc_ms": t_ms, "noted_utc": utc_iso(t_ms / 1000),
            "text": text, "noted_by": by}


def list_notes(conn: sqlite3.Connection, session_id: int) -> list[dict[str, Any]]:
    rows = conn.execute("SELECT id, session_id, t_utc_ms, text, noted_by FROM night_notes WHERE session_id = ? "
                        "ORDER BY t_utc_ms, id", (session_id,)).fetchall()
    return [{"id": i, "session_id": s, "t_utc_ms": t, "noted_utc": utc_iso(t / 1000), "text": x, "noted_by": b}
            for i, s, t, x, b in rows]
