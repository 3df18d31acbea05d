"""The night tables: every query of stored SpO2 samples and night reports, and ``finalise()``.

Why one module: a night's report must mean the same whichever path made it
(stop through the daemon, stop while the daemon is down, import, replay, report
on demand), so they all call :func:`finalise`, which computes the report from
exactly what the live engine saw (samples in time order and the gaps whose
causes break a hold), stores it and writes its audit row.  Every function takes
a connection; writers take one that is already inside a write transaction (the
daemon's writer, or :func:`collector.storage.db.transaction`), so a report and
its audit row land together or not at all.

Gaps and events belong to sessions of every kind (a spirometer's port can be
lost too) and stay with the sessions in :mod:`collector.storage.repo`.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any, Iterator, Sequence

import numpy as np

from collector.clock import utc_iso
from collector.errors import InvalidInput
from collector.oximetry.analysis.report import NightData, night_report
from collector.oximetry.backfill import FitInput, fit_records, summary as backfill_summary
from collector.oximetry.causes import BREAKING_CAUSES
from collector.oximetry.live import analysis_config
from collector.storage import audit, repo, seals
from collector.storage.writer import INSERT_SAMPLE, SAMPLE_COLUMNS as WRITER_COLUMNS
from drivers.protocols.common import Flag, OximeterReading
from drivers.protocols.cts import device_epoch

INSERT_BACKFILLED = (f"INSERT INTO spo2_samples ({', '.join(WRITER_COLUMNS)}, origin)"
                     f" VALUES ({', '.join('?' * len(WRITER_COLUMNS))}, 'device_memory')")
_OVERLAP = int(Flag.BACKFILL_OVERLAP)

#: Columns of a stored sample as the export and ``session samples`` read them.
SAMPLE_COLUMNS = ("host_utc_ms", "device_time", "spo2_pct", "pulse_bpm", "pai_pct", "valid", "pulse_valid", "flags",
                  "status_raw", "counter")


# -- samples ------------------------------------------------------------------------------------
def insert_samples(conn: sqlite3.Connection, rows: Sequence[tuple[Any, ...]], *, at: float, sql: str = INSERT_SAMPLE) -> None:
    """Rows in the writer's column order (:data:`collector.storage.writer.SAMPLE_COLUMNS`), sealed as one batch."""
    conn.executemany(sql, rows)
    seals.seal_inserted(conn, rows, at=at)


def sample_rows(conn: sqlite3.Connection, session_id: int) -> list[tuple[Any, ...]]:
    """Every stored reading of a session in time order, as tuples of :data:`SAMPLE_COLUMNS`."""
    return conn.execute(
        f"SELECT {', '.join(SAMPLE_COLUMNS)} FROM spo2_samples WHERE session_id = ? ORDER BY host_utc_ms, rowid",
        (session_id,)).fetchall()


def iter_sample_rows(conn: sqlite3.Connection, session_id: int) -> Iterator[tuple[Any, ...]]:
    """Like :func:`sample_rows`, streamed (a 12 h night need not sit in memory twice)."""
    yield from conn.execute(
        f"SELECT {', '.join(SAMPLE_COLUMNS)} FROM spo2_samples WHERE session_id = ? ORDER BY host_utc_ms, rowid",
        (session_id,))


# The three below read session_sample_stats (collector/storage/schema.py), kept in the same
# transaction as every sample insert: one row per session instead of the samples themselves.
def last_sample_ms(conn: sqlite3.Connection, session_id: int) -> int | None:
    row = conn.execute("SELECT last_utc_ms FROM session_sample_stats WHERE session_id = ?", (session_id,)).fetchone()
    return None if row is None or row[0] is None else int(row[0])


def latest_sample_ms(conn: sqlite3.Connection) -> int | None:
    """The newest stored sample of any session (a resumed virtual clock never stamps earlier)."""
    row = conn.execute("SELECT MAX(last_utc_ms) FROM session_sample_stats").fetchone()
    return None if row is None or row[0] is None else int(row[0])


def sample_span(conn: sqlite3.Connection, session_id: int) -> tuple[int | None, int | None]:
    row = conn.execute("SELECT first_utc_ms, last_utc_ms FROM session_sample_stats WHERE session_id = ?", (session_id,)).fetchone()
    return (row[0], row[1]) if row else (None, None)


def sample_count(conn: sqlite3.Connection, session_id: int) -> int:
    row = conn.execute("SELECT samples FROM session_sample_stats WHERE session_id = ?", (session_id,)).fetchone()
    return 0 if row is None else int(row[0])


def sample_buckets(conn: sqlite3.Connection, session_id: int, *, start_ms: int, end_ms: int,
                   bucket_ms: int) -> list[tuple[int, float | None, float | None, float | None]]:
    """(bucket index, mean valid SpO2, min valid SpO2, mean valid pulse) per ``bucket_ms`` from ``start_ms``."""
    return conn.execute(
        "SELECT (host_utc_ms - :start) / :bucket AS b,"
        " AVG(CASE WHEN valid = 1 THEN spo2_pct END), MIN(CASE WHEN valid = 1 THEN spo2_pct END),"
        " AVG(CASE WHEN pulse_valid = 1 THEN pulse_bpm END)"
        " FROM spo2_samples WHERE session_id = :sid AND host_utc_ms >= :start AND host_utc_ms <= :end"
        " GROUP BY b ORDER BY b",
        {"start": start_ms, "bucket": bucket_ms, "sid": session_id, "end": end_ms},
    ).fetchall()


def breaking_gaps(conn: sqlite3.Connection, session_id: int) -> list[dict[str, Any]]:
    """The session's gaps whose cause ends a hold (:data:`BREAKING_CAUSES`), in time order."""
    return [g for g in repo.session_gaps(conn, session_id) if g["cause"] in BREAKING_CAUSES]


# -- back-fill from device memory --------------------------------------------------------------------
def latest_backfills(conn: sqlite3.Connection, session_id: int) -> dict[int, dict[str, Any]]:
    """The newest back-fill of each gap of a session, by gap id (status, residual breaks, summary)."""
    cur = conn.execute(
        "SELECT b.gap_id, b.id, b.done_utc, b.status, b.residual_breaks_json, b.summary_json FROM gap_backfills b"
        " WHERE b.session_id = ? AND b.id = (SELECT MAX(id) FROM gap_backfills WHERE gap_id = b.gap_id)", (session_id,))
    return {int(g): {"backfill_id": int(i), "done_utc": d, "status": st, "residual_breaks": json.loads(rb),
                     "summary": json.loads(sm)} for g, i, d, st, rb, sm in cur.fetchall()}


def gaps_as_analysed(conn: sqlite3.Connection, session_id: int) -> list[dict[str, Any]]:
    """The session's gaps with ``breaks_hold`` as the analysis applies them, for exports.

    A gap a back-fill covered is listed as it was recorded, not breaking, with ``backfill`` set; the parts
    its records left uncovered follow as breaking rows of the same cause (``backfill`` = "uncovered").
    """
    filled = latest_backfills(conn, session_id)
    out: list[dict[str, Any]] = []
    for g in repo.session_gaps(conn, session_id):
        bf = filled.get(int(g["id"]))
        breaks = g["cause"] in BREAKING_CAUSES
        if bf is None or bf["status"] not in ("backfilled", "partial") or not breaks:
            out.append({**g, "breaks_hold": breaks, "backfill": None if bf is None else bf["status"]})
            continue
        out.append({**g, "breaks_hold": False, "backfill": bf["status"]})
        end = g["end_utc_ms"] if g["end_utc_ms"] is not None else g["start_utc_ms"]
        for rs, re_ in bf["residual_breaks"]:
            out.append({**g, "start_utc_ms": rs, "end_utc_ms": max(rs, end if re_ is None else re_), "breaks_hold": True,
                        "backfill": "uncovered"})
    return out


def night_breaks(conn: sqlite3.Connection, session_id: int) -> list[tuple[float, float, str]]:
    """The breaks the analysis applies: breaking gaps, where a back-fill covered a gap only its residual parts."""
    filled = latest_backfills(conn, session_id)
    out: list[tuple[float, float, str]] = []
    for g in breaking_gaps(conn, session_id):
        end = g["end_utc_ms"] if g["end_utc_ms"] is not None else g["start_utc_ms"]
        bf = filled.get(int(g["id"]))
        if bf is None or bf["status"] not in ("backfilled", "partial"):
            out.append((g["start_utc_ms"] / 1000, end / 1000, g["cause"]))
            continue
        for rs, re_ in bf["residual_breaks"]:
            e = end if re_ is None else re_
            out.append((rs / 1000, max(rs, e) / 1000, g["cause"]))
    return out


def gap_start_ms(conn: sqlite3.Connection, session_id: int, gap_id: int) -> int:
    return int(next(g["start_utc_ms"] for g in repo.session_gaps(conn, session_id) if g["id"] == gap_id))


def backfill_gap(conn: sqlite3.Connection, session_id: int, gap_id: int, records: list[OximeterReading], inp: FitInput,
                 *, at: float, failure: str | None = None) -> dict[str, Any]:
    """Store what the device sent for a gap (every record kept, none doubled) and record the back-fill.

    The caller holds a write transaction; returns the back-fill summary.  ``failure``: why the
    procedure ended early (the records that did arrive are still stored).
    """
    lo = inp.session_start_ms
    existing = {int(r[0]) for r in conn.execute(
        "SELECT host_utc_ms FROM spo2_samples WHERE session_id = ? AND origin = 'device_memory' AND host_utc_ms >= ?",
        (session_id, lo))}
    fit = fit_records(records, inp, existing)
    if fit.rows:
        insert_samples(conn, fit.rows, at=at, sql=INSERT_BACKFILLED)
    summ = backfill_summary(fit, inp)
    status = fit.status if failure is None or fit.status != "no_records" else "failed"
    if failure is not None:
        summ["failure"] = failure
    summ["status"] = status
    cur = conn.execute(
        "INSERT INTO gap_backfills (session_id, gap_id, done_utc, status, clock_offset_ms, records_received, records_stored,"
        " residual_breaks_json, summary_json) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (session_id, gap_id, utc_iso(at), status, inp.clock_offset_ms, len(records), len(fit.rows),
         json.dumps(summ["residual_breaks"]), json.dumps(summ, sort_keys=True)))
    summ["backfill_id"] = repo.inserted_id(cur)
    counts = {k: summ[k] for k in ("received", "fitted", "overlap", "off_grid", "already_stored", "outside_session", "unplaced")}
    repo.add_event(conn, session_id, t_ms=inp.reconnect_ms, kind="gap_backfill",
                   detail={"gap_id": gap_id, "status": status, **counts})
    subject = conn.execute("SELECT subject_id FROM sessions WHERE id = ?", (session_id,)).fetchone()
    audit.append(conn, at=at, actor="collector", action="gap_backfilled", subject_id=subject[0] if subject else None,
                 session_id=session_id, new={"gap_id": gap_id, "backfill_id": summ["backfill_id"], "status": status,
                                             "clock_offset_ms": inp.clock_offset_ms, **counts})
    return summ


# -- analysis input ---------------------------------------------------------------------------------
def load_night(conn: sqlite3.Connection, session_id: int) -> NightData:
    """Exactly what the live engine saw: samples in stored order and the breaking gaps.

    Back-filled records that overlap covered time (Flag.BACKFILL_OVERLAP) are stored but are no
    sample of the analysed night; a back-filled gap breaks only where the records left it uncovered.
    """
    session = repo.get_session(conn, session_id)
    if session["kind"] != "night":
        raise InvalidInput(f"session {session_id} is a {session['kind']} session, not a night; use collector spirometry show {session_id}")
    rows = conn.execute(
        "SELECT host_utc_ms, spo2_pct, pulse_bpm, valid, pulse_valid, flags FROM spo2_samples"
        " WHERE session_id = ? AND (flags & ?) = 0 ORDER BY host_utc_ms, rowid",
        (session_id, _OVERLAP),
    ).fetchall()
    arr = np.array(rows, dtype=np.float64).reshape(-1, 6) if rows else np.zeros((0, 6))
    return night_from_columns(conn, session_id, arr[:, 0], arr[:, 1], arr[:, 2], arr[:, 3], arr[:, 4], arr[:, 5])


def night_from_columns(conn: sqlite3.Connection, session_id: int, t_ms: np.ndarray, spo2: np.ndarray, pulse: np.ndarray,
                       valid: np.ndarray, pulse_valid: np.ndarray, flags: np.ndarray) -> NightData:
    """:func:`load_night` from sample columns already read (stored order, overlap records left out): the export reads a night once."""
    breaks = night_breaks(conn, session_id)
    return NightData(
        t_s=np.asarray(t_ms, dtype=np.float64) / 1000.0,
        spo2=np.asarray(spo2, dtype=np.float64),  # NULL -> NaN through float conversion
        pulse=np.asarray(pulse, dtype=np.float64),
        valid=np.asarray(valid).astype(bool),
        pulse_valid=np.asarray(pulse_valid).astype(bool),
        breaks=breaks,
        flags=np.asarray(flags).astype(np.int64),
    )


def compute_report(conn: sqlite3.Connection, session_id: int, config: dict[str, Any]) -> dict[str, Any]:
    """The night's report from what is stored, with the current config (read-only)."""
    data = load_night(conn, session_id)
    report = night_report(data, analysis_config(config))
    report["session_id"] = session_id
    steps = [{"t_utc": utc_iso(e["t_utc_ms"] / 1000), **json.loads(e["detail_json"] or "{}")}
             for e in repo.session_events(conn, session_id) if e["kind"] == "clock_step"]
    report["clock_steps"] = steps
    report["backfills"] = [{"gap_id": g, "status": b["status"], **{k: b["summary"].get(k) for k in (
        "received", "fitted", "overlap", "off_grid", "already_stored", "outside_session", "unplaced", "clock_offset_ms",
        "covered_start_ms", "covered_end_ms", "residual_breaks")}} for g, b in sorted(latest_backfills(conn, session_id).items())]
    if steps:
        # Samples stayed on the monotonic timeline, so the figures hold; their UTC labels may be off
        # by the step, which a person should confirm before the night decides.
        report["needs_review"] = True
        report["review_reasons"] = [*report.get("review_reasons", []), "host_clock_step"]
    return report


# -- night reports ----------------------------------------------------------------------------------
def report_summary(report: dict[str, Any], report_id: int | None) -> dict[str, Any]:
    """What the audit trail keeps of a report: enough to see what changed, not the whole night."""
    return {
        "report_id": report_id, "definition": report["definitions"]["t90"], "max_hold_s": report["definitions"]["max_hold_s"],
        "threshold_pct": report["definitions"]["threshold_pct"], "t90_pct": report["t90_pct"],
        "analysed_s": report["analysed_s"], "decision": report["decision"], "borderline": report["borderline"],
    }


def _insert_report(conn: sqlite3.Connection, session_id: int, report: dict[str, Any], at: float) -> int:
    meets = report.get("meets_t90_criterion")
    cur = conn.execute(
        "INSERT INTO night_reports (session_id, computed_utc, definition, t90_pct, night_valid, borderline, meets_t90_criterion, report_json)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (session_id, utc_iso(at), report["definitions"]["t90"], report.get("t90_pct"), int(bool(report.get("night_valid"))),
         int(bool(report.get("borderline"))), None if meets is None else int(bool(meets)), json.dumps(report, sort_keys=True)),
    )
    return repo.inserted_id(cur)


def latest_report_row(conn: sqlite3.Connection, session_id: int) -> dict[str, Any] | None:
    """The newest stored report of a night: ``{report_id, computed_utc, report}``, or None."""
    row = conn.execute(
        "SELECT id, computed_utc, report_json FROM night_reports WHERE session_id = ? ORDER BY id DESC LIMIT 1", (session_id,)
    ).fetchone()
    return None if row is None else {"report_id": row[0], "computed_utc": row[1], "report": json.loads(row[2])}


def latest_report(conn: sqlite3.Connection, session_id: int) -> dict[str, Any] | None:
    row = latest_report_row(conn, session_id)
    return None if row is None else row["report"]


def finalise(
    conn: sqlite3.Connection,
    session_id: int,
    config: dict[str, Any],
    *,
    at: float,
    actor: str,
    reason: str,
) -> dict[str, Any]:
    """Compute, store and audit a night's report; every path that ends a night calls this.

    The caller holds a write transaction.  A second report of the same night (``report
    --recompute``, or a resumed night stopped again) is a new row audited as
    ``night_report_recomputed`` with the previous summary as ``old``; the newest row is
    current, older rows stay.  Returns ``{report_id, computed_utc, report}``.
    """
    previous = latest_report_row(conn, session_id)
    report = compute_report(conn, session_id, config)
    report_id = _insert_report(conn, session_id, report, at)
    subject = conn.execute("SELECT subject_id FROM sessions WHERE id = ?", (session_id,)).fetchone()
    seal = seals.head(conn)  # the samples this report was computed from, anchored in the audit chain
    audit.append(conn, at=at, actor=actor, action="night_report_recomputed" if previous else "night_report_computed",
                 subject_id=subject[0] if subject else None, session_id=session_id,
                 old=report_summary(previous["report"], previous["report_id"]) if previous else None,
                 new={**report_summary(report, report_id), "samples_seal": None if seal is None else list(seal)},
                 reason=reason)
    return {"report_id": report_id, "computed_utc": utc_iso(at), "report": report}


def subject_night_reports(conn: sqlite3.Connection, subject_id: str) -> dict[int, dict[str, Any]]:
    """The newest report row of each of a subject's nights, by session id (for eligibility)."""
    cur = conn.execute(
        "SELECT r.session_id, r.computed_utc, r.t90_pct, r.night_valid, r.borderline, r.meets_t90_criterion, r.report_json"
        " FROM night_reports r JOIN sessions s ON s.id = r.session_id WHERE s.subject_id = ? AND r.id = "
        "(SELECT MAX(id) FROM night_reports WHERE session_id = r.session_id)", (subject_id,))
    out: dict[int, dict[str, Any]] = {}
    for sid, computed, t90, valid, borderline, meets, report_json in cur.fetchall():
        out[int(sid)] = {"session_id": int(sid), "computed_utc": computed, "t90_pct": t90, "night_valid": bool(valid),
                         "borderline": bool(borderline), "meets_t90_criterion": None if meets is None else bool(meets),
                         "report": json.loads(report_json)}
    return out


def report_columns(conn: sqlite3.Connection, session_ids: Sequence[int]) -> dict[int, dict[str, Any]]:
    """The deciding columns of each session's newest report (the session list on the page)."""
    if not session_ids:
        return {}
    marks = ", ".join("?" * len(session_ids))
    cur = conn.execute(
        f"SELECT r.session_id, r.t90_pct, r.night_valid, r.meets_t90_criterion, r.borderline FROM night_reports r"
        f" WHERE r.session_id IN ({marks}) AND r.id = (SELECT MAX(id) FROM night_reports WHERE session_id = r.session_id)",
        list(session_ids))
    return {int(sid): {"t90_pct": t90, "night_valid": bool(valid), "meets_t90_criterion": None if meets is None else bool(meets),
                       "borderline": bool(borderline)} for sid, t90, valid, meets, borderline in cur.fetchall()}


# -- back-fill of a stopped night from the device's own night file ----------------------------------
def gap_neighbours(conn: sqlite3.Connection, session_id: int, gap: dict[str, Any]) -> tuple[int | None, int | None]:
    """The last sample at or before a gap's start and the first live sample after it (host UTC ms)."""
    before = conn.execute(
        "SELECT MAX(host_utc_ms) FROM spo2_samples WHERE session_id = ? AND host_utc_ms <= ? AND (flags & ?) = 0",
        (session_id, gap["start_utc_ms"], _OVERLAP)).fetchone()[0]
    after = conn.execute(
        "SELECT MIN(host_utc_ms) FROM spo2_samples WHERE session_id = ? AND host_utc_ms > ? AND origin = 'live'",
        (session_id, gap["start_utc_ms"])).fetchone()[0]
    return (None if before is None else int(before)), (None if after is None else int(after))


def backfill_stopped_night(conn: sqlite3.Connection, session_id: int, records: list[OximeterReading], *,
                           clock_offset_ms: int, interval_ms: int, record_ms: int, tolerance_ms: int,
                           at: float) -> list[dict[str, Any]]:
    """Back-fill every breaking gap of a stopped night from a whole night of device records.

    Only the records mapped strictly between the live samples either side of a gap are handed to
    that gap (the rest of the device's night is already kept in its own session); each gap then
    goes through :func:`backfill_gap` like a RACP download.  The caller holds a write transaction.
    """
    session = repo.get_session(conn, session_id)
    start_ms = int(round(_iso_epoch(str(session["started_utc"])) * 1000))
    mapped = [(int(round(device_epoch(r.device_time) * 1000)) + clock_offset_ms, r)
              for r in records if r.device_time is not None]
    out: list[dict[str, Any]] = []
    for gap in breaking_gaps(conn, session_id):
        if gap["end_utc_ms"] is None:
            continue  # still open: the night is not over
        anchor, after = gap_neighbours(conn, session_id, gap)
        upper = (after if after is not None else int(gap["end_utc_ms"]) + 1) - 1
        lower = anchor if anchor is not None else int(gap["start_utc_ms"]) - 1
        inside = [r for t, r in mapped if lower < t <= upper]
        if not inside:
            continue
        inp = FitInput(session_id=session_id, gap_start_ms=int(gap["start_utc_ms"]), anchor_ms=anchor,
                       reconnect_ms=upper, session_start_ms=start_ms, clock_offset_ms=clock_offset_ms,
                       interval_ms=interval_ms, tolerance_ms=tolerance_ms, record_ms=record_ms)
        out.append({"gap_id": int(gap["id"]), **backfill_gap(conn, session_id, int(gap["id"]), inside, inp, at=at)})
    return out


def _iso_epoch(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
