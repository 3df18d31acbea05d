"""Write a parsed night as one night session (origin ``import``), all or nothing.

Session, samples, report and audit row go in ONE transaction: a file that fails
anywhere (parse errors are raised before it starts) leaves nothing behind.  The
report is made by the same :func:`collector.oximetry.store.finalise` every other
path uses, from the rows just written, so the stored report and a recomputation
agree.  The file is identified by its SHA-256 only (file names may carry a name).
"""

from __future__ import annotations

import hashlib
import time
import sqlite3
from typing import Any

import numpy as np

from collector.clock import utc_iso
from collector.errors import Conflict, InvalidInput
from collector.oximetry import store
from collector.storage import audit, repo
from collector.storage.db import transaction
from drivers.protocols.common import (
    INVALIDATING,
    PULSE_MAX_BPM,
    PULSE_MIN_BPM,
    SPO2_MAX_PCT,
    SPO2_MIN_PCT,
    Flag,
)

from . import FORMATS, ImportLimits, ParsedNight

_PULSE_INVALIDATING = int(Flag.PULSE_MISSING | Flag.PULSE_OUT_OF_RANGE)


def sample_flags(spo2: np.ndarray, pulse: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(valid, pulse_valid, flags) per sample: the codecs' range rules, vectorised.

    NaN or 0 -> missing (a dropout, never a desaturation); above 100 % or outside
    20..250 bpm -> out of range; a value between 0 and 50 % stays valid and is flagged
    DEEP_DESATURATION.  Same outcome as ``apply_range_rules`` +
    ``OximeterReading.valid``/``pulse_valid`` for a reading with no device flags.
    """
    flags = np.zeros(spo2.size, dtype=np.int64)
    with np.errstate(invalid="ignore"):
        s_missing = np.isnan(spo2) | (spo2 == 0)
        s_range = ~s_missing & ((spo2 < 0) | (spo2 > SPO2_MAX_PCT))
        s_deep = ~s_missing & (spo2 > 0) & (spo2 < SPO2_MIN_PCT)
        p_missing = np.isnan(pulse) | (pulse == 0)
        p_range = ~p_missing & ((pulse < PULSE_MIN_BPM) | (pulse > PULSE_MAX_BPM))
    flags[s_missing] |= int(Flag.SPO2_MISSING)
    flags[s_range] |= int(Flag.SPO2_OUT_OF_RANGE)
    flags[s_deep] |= int(Flag.DEEP_DESATURATION)  # still valid: below 90 % whatever its accuracy
    flags[p_missing] |= int(Flag.PULSE_MISSING)
    flags[p_range] |= int(Flag.PULSE_OUT_OF_RANGE)
    valid = ~np.isnan(spo2) & ((flags & int(INVALIDATING)) == 0)
    pulse_valid = ~np.isnan(pulse) & ((flags & _PULSE_INVALIDATING) == 0)
    return valid, pulse_valid, flags


def parse_night(raw: bytes, fmt: str, *, start: str | None = None, tz: str | None = None,
                utc_offset: str | None = None, channel: str | None = None,
                limits: ImportLimits | None = None, now_utc_s: float | None = None,
                measured_offset_s: float | None = None) -> ParsedNight:
    """Dispatch to the format's parser; refuse options that do not apply to it, and files beyond one night.

    ``measured_offset_s``: a device clock measured at download (device formats only).
    """
    night = _parse(raw, fmt, start=start, tz=tz, utc_offset=utc_offset, channel=channel, limits=limits,
                   measured_offset_s=measured_offset_s)
    if limits is not None:
        limits.check_night(night.t_utc_s, now_utc_s if now_utc_s is not None else time.time())
    return night


def _parse(raw: bytes, fmt: str, *, start: str | None, tz: str | None, utc_offset: str | None, channel: str | None,
           limits: ImportLimits | None, measured_offset_s: float | None = None) -> ParsedNight:
    if fmt not in FORMATS:
        raise InvalidInput(f"unknown import format {fmt!r}; use one of {', '.join(FORMATS)}")
    if channel is not None and fmt != "edf":
        raise InvalidInput("--channel applies to --format edf only")
    if start is not None and fmt != "csv":
        raise InvalidInput("--start applies to --format csv with seconds-from-start times only")
    if (tz or utc_offset) and fmt == "csv":
        raise InvalidInput("--tz/--utc-offset apply to device-local times (o2ring-csv, o2ring-dat, edf); csv times are UTC or need --start")
    if fmt == "csv":
        from .csv_night import parse_csv_night

        return parse_csv_night(raw, start_utc=start, limits=limits)
    if fmt == "o2ring-csv":
        from .o2ring_csv import parse_o2ring_csv

        return parse_o2ring_csv(raw, tz=tz, utc_offset=utc_offset, limits=limits)
    if fmt == "o2ring-dat":
        from .o2ring_dat import parse_o2ring_dat

        return parse_o2ring_dat(raw, tz=tz, utc_offset=utc_offset, limits=limits, measured_offset_s=measured_offset_s)
    from .edf_night import parse_edf_night

    return parse_edf_night(raw, channel=channel, tz=tz, utc_offset=utc_offset)


def sample_rows(session_id: int, night: ParsedNight) -> list[tuple[Any, ...]]:
    """Rows for ``spo2_samples`` in the writer's column order."""
    valid, pvalid, flags = sample_flags(night.spo2, night.pulse)
    t_ms = np.rint(night.t_utc_s * 1000.0).astype(np.int64)
    if night.n > 1 and np.any(np.diff(t_ms) <= 0):
        i = int(np.flatnonzero(np.diff(t_ms) <= 0)[0]) + 1
        raise InvalidInput(f"samples {i} and {i + 1} are less than 1 ms apart; the collector stores times in milliseconds")
    dev = night.device_time or [None] * night.n
    sp = [None if np.isnan(v) else float(v) for v in night.spo2.tolist()]
    pu = [None if np.isnan(v) else float(v) for v in night.pulse.tolist()]
    return [
        (session_id, int(t), d, s, p, None, int(v), int(pv), int(f), None, None)
        for t, d, s, p, v, pv, f in zip(t_ms.tolist(), dev, sp, pu, valid.tolist(), pvalid.tolist(), flags.tolist())
    ]


FIRMWARE_T90_EVENT = "firmware_t90_disagrees"


def firmware_t90(report: dict[str, Any], source: dict[str, Any]) -> dict[str, Any] | None:
    """The device firmware's own T90 beside ours, when the file carries one (O2Ring header).

    They are allowed to differ by one record interval: the firmware counts whole
    records below 90 %, our zero-order hold ends the last sample's hold at the
    next sample or a gap.  Beyond that, ``agrees`` is false (an event for review).
    """
    fw = source.get("firmware")
    if not isinstance(fw, dict) or "t90_s" not in fw:
        return None
    ours = float(report["t90_s"])
    allowed = float(source.get("record_interval_s") or 0.0)
    diff = ours - float(fw["t90_s"])
    return {"firmware_t90_s": float(fw["t90_s"]), "ours_t90_s": round(ours, 3), "difference_s": round(diff, 3),
            "allowed_s": allowed, "agrees": abs(diff) <= allowed, "definition": report["definitions"]["t90"]}


def import_night(
    conn: sqlite3.Connection,
    raw: bytes,
    night: ParsedNight,
    *,
    subject_id: str,
    by: str,
    at: float,
    config: dict[str, Any],
    live_session_id: int | None = None,
) -> dict[str, Any]:
    """Create the session, its samples, its report and the audit row in one transaction.

    ``live_session_id`` links a night downloaded from the device's memory to the
    live session recorded over the same night (same subject); the downloaded
    night stays its own session, and the live one is not changed here (the download path back-fills it afterwards).
    """
    repo.validate_subject_id(subject_id)
    sha = hashlib.sha256(raw).hexdigest()
    settings = {"import": {**night.source, "sha256": sha, "bytes": len(raw), "samples": night.n}}
    if live_session_id is not None:
        settings["import"]["live_session_id"] = live_session_id
    with transaction(conn):
        repo.get_subject(conn, subject_id)
        if live_session_id is not None:
            live = repo.get_session(conn, live_session_id)
            if live["subject_id"] != subject_id or live["kind"] != "night":
                raise InvalidInput(f"session {live_session_id} is not a night of subject {subject_id}; "
                                   "give --live-session the live night recorded for this subject")
        prev = repo.find_imported_session(conn, sha)
        if prev is not None:
            raise Conflict(
                f"this file was already imported as session {prev['id']} (subject {prev['subject_id']}); "
                f"see it with: collector report {prev['id']}"
            )
        t0, t1 = float(night.t_utc_s[0]), float(night.t_utc_s[-1])
        session_id = repo.add_recorded_session(conn, subject_id=subject_id, kind="night", origin="import", started_at=t0,
                                               stopped_at=t1, by=by, settings=settings)
        store.insert_samples(conn, sample_rows(session_id, night), at=at)
        final = store.finalise(conn, session_id, config, at=at, actor=by, reason="imported night")
        report, report_id = final["report"], final["report_id"]
        fw = firmware_t90(report, night.source)
        if fw is not None and not fw["agrees"]:
            repo.add_event(conn, session_id, t_ms=int(round(t1 * 1000)), kind=FIRMWARE_T90_EVENT, detail=fw)
        audit.append(
            conn, at=at, actor=by, action="night_imported", subject_id=subject_id, session_id=session_id,
            new={
                "format": night.source.get("format"), "sha256": sha, "samples": night.n,
                "start_utc": utc_iso(t0), "end_utc": utc_iso(t1), "report_id": report_id,
                "definition": report["definitions"]["t90"], "t90_pct": report["t90_pct"],
                "decision": report["decision"], "borderline": report["borderline"],
                **({} if fw is None else {"firmware_t90": fw}),
                **({} if live_session_id is None else {"live_session_id": live_session_id}),
            },
        )
    return {"session_id": session_id, "subject_id": subject_id, "report_id": report_id,
            "samples": night.n, "source": settings["import"], "report": report, "firmware_t90": fw}
