"""Night sessions as analysis input, and their stored reports.

Loads exactly what the live engine saw (samples in time order, and the gaps
whose causes break a hold) so the vectorised report equals the live figures.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

import numpy as np

from collector.analysis.report import NightData, night_report
from collector.clock import utc_iso
from collector.errors import InvalidInput
from collector.live import analysis_config
from collector.pipeline import BREAKING_CAUSES
from collector.storage import audit, repo


def load_night(conn: sqlite3.Connection, session_id: int) -> NightData:
    session = repo.get_session(conn, session_id)
    if session["kind"] != "night":
        raise InvalidInput(f"session {session_id} is a {session['kind']} session, not a night; use collector spirometry show {session_id}")
    rows = conn.execute(
        "SELECT host_utc_ms, spo2_pct, pulse_bpm, valid, pulse_valid, flags FROM spo2_samples"
        " WHERE session_id = ? ORDER BY host_utc_ms, rowid",
        (session_id,),
    ).fetchall()
    arr = np.array(rows, dtype=np.float64).reshape(-1, 6) if rows else np.zeros((0, 6))
    breaks = [
        (g["start_utc_ms"] / 1000, (g["end_utc_ms"] if g["end_utc_ms"] is not None else g["start_utc_ms"]) / 1000, g["cause"])
        for g in repo.session_gaps(conn, session_id)
        if g["cause"] in BREAKING_CAUSES
    ]
    return NightData(
        t_s=arr[:, 0] / 1000.0,
        spo2=arr[:, 1],  # NULL -> NaN through float conversion
        pulse=arr[:, 2],
        valid=arr[:, 3].astype(bool),
        pulse_valid=arr[:, 4].astype(bool),
        breaks=breaks,
        flags=arr[:, 5].astype(np.int64),
    )


def compute_report(conn: sqlite3.Connection, session_id: int, config: dict[str, Any]) -> dict[str, Any]:
    data = load_night(conn, session_id)
    report = night_report(data, analysis_config(config))
    report["session_id"] = session_id
    return report


def report_summary(report: dict[str, Any], report_id: int | None) -> dict[str, Any]:
    """What the audit trail keeps of a report: enough to see what changed, not the whole night."""
    return {
        "report_id": report_id, "definition": report["definitions"]["t90"], "max_hold_s": report["definitions"]["max_hold_s"],
        "threshold_pct": report["definitions"]["threshold_pct"], "t90_pct": report["t90_pct"],
        "analysed_s": report["analysed_s"], "decision": report["decision"], "borderline": report["borderline"],
    }


def store_report(
    conn: sqlite3.Connection,
    session_id: int,
    report: dict[str, Any],
    *,
    at: float,
    actor: str,
    action: str = "night_report_computed",
    old: dict[str, Any] | None = None,
    reason: str | None = None,
) -> int:
    """Append a report row and its audit row (the newest report row of a session is current)."""
    meets = report.get("meets_t90_criterion")
    cur = conn.execute(
        "INSERT INTO night_reports (session_id, computed_utc, definition, t90_pct, night_valid, borderline, meets_t90_criterion, report_json)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (
            session_id,
            utc_iso(at),
            report["definitions"]["t90"],
            report.get("t90_pct"),
            int(bool(report.get("night_valid"))),
            int(bool(report.get("borderline"))),
            None if meets is None else int(bool(meets)),
            json.dumps(report, sort_keys=True),
        ),
    )
    report_id = int(cur.lastrowid)
    subject = conn.execute("SELECT subject_id FROM sessions WHERE id = ?", (session_id,)).fetchone()
    audit.append(conn, at=at, actor=actor, action=action, subject_id=subject[0] if subject else None, session_id=session_id,
                 old=old, new=report_summary(report, report_id), reason=reason)
    return report_id


def latest_report(conn: sqlite3.Connection, session_id: int) -> dict[str, Any] | None:
    row = conn.execute(
        "SELECT report_json FROM night_reports WHERE session_id = ? ORDER BY id DESC LIMIT 1", (session_id,)
    ).fetchone()
    return json.loads(row[0]) if row else None
