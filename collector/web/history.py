"""One subject's screening so far, for the page: every night (T90, validity, review state, gaps)
and every spirometry session, newest first.

Read from what is stored per session (the newest night report's columns, the gaps table,
the newest spirometry result), never from the samples: the listing costs the same for a
subject with one night as for one with twenty.  Times a person reads are the site's local
time with the zone (collector/localtime.py); the UTC values stay beside them.
"""

from __future__ import annotations

import sqlite3
from datetime import tzinfo
from typing import Any, Mapping

from collector.clock import parse_utc
from collector.localtime import local_datetime
from collector.storage import repo

MAX_SESSIONS = 500   # a screening has a handful; a cap keeps a wrong subject from building a huge page
MAX_GAPS_LISTED = 50  # per night; the count and the total cover the rest

# The criterion each session kind feeds; its review (collector/eligibility/review.py) is the night's or session's review.
CRITERION_OF = {"night": "nocturnal_spo2", "spirometry": "fvc"}


def review_states(conn: sqlite3.Connection, subject_id: str, *, now: float, thresholds: Any, tz: tzinfo) -> dict[str, dict[str, Any]]:
    """criterion -> {status: open | resolved | reopened, state, decision, by, at} for the subject's reviewed criteria."""
    from collector.eligibility.service import review_items

    out = {}
    for it in review_items(conn, subject_id, now=now, thresholds=thresholds):
        r = it.get("review") or {}
        out[it["criterion"]] = {"status": it["status"], "state": it["state"], "decision": r.get("decision"),
                                "by": r.get("resolved_by"),
                                "at": local_datetime(r["resolved_at"], tz) if r.get("resolved_at") else None}
    return out


def _review_state(kind: str, flagged: bool, reviews: Mapping[str, Mapping[str, Any]]) -> str:
    """``not_needed``; ``needs_review`` (open); ``resolved``; ``reopened`` (the evidence changed since)."""
    item = reviews.get(CRITERION_OF.get(kind, ""))
    if not flagged or item is None:
        return "not_needed"
    return "needs_review" if item["status"] == "open" else str(item["status"])


def _gaps(conn: sqlite3.Connection, session_id: int, tz: tzinfo, now: float) -> dict[str, Any]:
    rows = repo.session_gaps(conn, session_id)
    listed: list[dict[str, Any]] = []
    total = 0.0
    for g in rows:
        start = g["start_utc_ms"] / 1000.0
        end = g["end_utc_ms"] / 1000.0 if g["end_utc_ms"] is not None else None
        duration = max(0.0, (end if end is not None else now) - start)
        total += duration
        if len(listed) < MAX_GAPS_LISTED:
            listed.append({"start_local": local_datetime(start, tz), "end_local": local_datetime(end, tz) if end is not None else None,
                           "duration_s": round(duration, 1), "cause": g["cause"], "open": end is None})
    return {"count": len(rows), "total_s": round(total, 1), "listed": listed}


def subject_history(conn: sqlite3.Connection, subject_id: str, *, now: float, tz: tzinfo, thresholds: Any) -> dict[str, Any]:
    """Everything recorded for one subject, as the history view shows it (raises NotFound for an unknown subject)."""
    from collector.oximetry import store as night_store
    from collector.spirometry import store as spiro_store

    repo.get_subject(conn, subject_id)
    sessions = repo.recent_sessions(conn, limit=MAX_SESSIONS, subject_id=subject_id)
    reports = night_store.report_columns(conn, [s["id"] for s in sessions if s["kind"] == "night"])
    spiro = spiro_store.latest_results_of_subject(conn, subject_id)
    reviews = review_states(conn, subject_id, now=now, thresholds=thresholds, tz=tz)

    def when(s: Mapping[str, Any]) -> dict[str, Any]:
        started, stopped = s["started_utc"], s["stopped_utc"]
        end = parse_utc(stopped) if stopped else now
        return {"id": s["id"], "state": s["state"], "origin": s["origin"], "started_utc": started, "stopped_utc": stopped,
                "started_local": local_datetime(started, tz), "stopped_local": local_datetime(stopped, tz) if stopped else None,
                "duration_s": round(max(0.0, end - parse_utc(started)), 1), "device_name": s["device_name"]}

    nights: list[dict[str, Any]] = []
    spirometry: list[dict[str, Any]] = []
    for s in sessions:
        if s["kind"] == "night":
            r = reports.get(s["id"], {})
            nights.append({**when(s), "t90_pct": r.get("t90_pct"), "night_valid": r.get("night_valid"),
                           "meets_t90_criterion": r.get("meets_t90_criterion"), "borderline": r.get("borderline"),
                           "review_state": _review_state("night", bool(r.get("borderline")), reviews),
                           "gaps": _gaps(conn, s["id"], tz, now)})
        elif s["kind"] == "spirometry":
            row = spiro.get(s["id"]) or {}
            grade = row.get("grade_fvc")
            spirometry.append({**when(s), "valid": None if not row else bool(row.get("valid")), "fvc_l": row.get("fvc_l"),
                               "fvc_pct_predicted": row.get("fvc_pct_predicted"), "grade_fvc": grade, "equation": row.get("equation"),
                               "review_state": _review_state("spirometry", "fvc" in reviews, reviews)})
    return {"subject_id": subject_id, "nights": nights, "spirometry": spirometry,
            "reviews": [{"criterion": k, **v} for k, v in sorted(reviews.items())]}
