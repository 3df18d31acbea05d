"""``collector replay``: a raw capture back through the same decoders into a new session.

The capture is validated completely before anything is written, so a corrupt
file leaves nothing half-imported.  Link events in the capture become the same
gaps the live session stored, so the replayed rows equal the live ones.
"""

from __future__ import annotations

import functools
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from collector.errors import InvalidInput
from collector.oximetry import refill, store
from collector.oximetry.capture import CaptureRecord, read_capture
from collector.oximetry.live import analysis_config, make_live
from collector.oximetry.pipeline import ReadingPipeline
from collector.storage import repo
from collector.storage.db import open_db, transaction
from collector.storage.writer import Writer
from drivers.protocols.common import DeviceClock, OximeterEvent, OximeterReading, PlxFeatures, RacpReply
from drivers.protocols.registry import PROFILES

SPIROMETER_PROTOCOLS = frozenset({"hl7", "gdt"})


def replay_capture(db_path: Path, capture_file: Path, subject_id: str, *, by: str, config: dict[str, Any],
                   device: str | None = None) -> dict[str, Any]:
    repo.validate_subject_id(subject_id)
    records = list(read_capture(capture_file))
    if not records:
        raise InvalidInput(f"capture {capture_file} holds no frames; nothing to replay")
    devices: dict[str, str] = {}
    spirometer_lines = 0
    kept = []
    for rec in records:
        if rec.protocol in SPIROMETER_PROTOCOLS:
            spirometer_lines += 1  # the same capture file also holds serial-line traffic; not a night
            continue
        if rec.protocol not in PROFILES:
            raise InvalidInput(f"capture {capture_file} line {rec.line}: unknown protocol {rec.protocol!r} (known: {', '.join(sorted(PROFILES))})")
        if device is None or rec.device == device:
            kept.append(rec)
    for rec in kept:
        if devices.setdefault(rec.device, rec.protocol) != rec.protocol:
            raise InvalidInput(f"capture {capture_file} line {rec.line}: device {rec.device} changes protocol; split the file per device")
    if not kept:
        which = f"from device {device!r} " if device else ""
        raise InvalidInput(f"capture {capture_file} holds no oximeter frames {which}({spirometer_lines} spirometer lines); nothing to replay")
    if len(devices) > 1:
        # One file from a ward laptop holds every bed: never file them all under one subject.
        raise InvalidInput(f"capture {capture_file} holds {len(devices)} oximeters ({', '.join(sorted(devices))}); "
                           "replay one at a time with --device ID")
    records = kept
    conn = open_db(db_path).conn
    try:
        repo.get_subject(conn, subject_id)
    finally:
        conn.close()

    writer = Writer(db_path, flush_interval_s=config["storage"]["flush_interval_s"], synchronous=config["storage"].get("synchronous", "FULL"))
    results = []
    try:
        for device, protocol in devices.items():
            mine = [r for r in records if r.device == device]
            results.append(_replay_device(writer, mine, subject_id, device, protocol, by=by, config=config, source=str(capture_file)))
    finally:
        writer.close()
    conn = open_db(db_path).conn
    try:
        for res in results:
            with transaction(conn):
                res["report"] = store.finalise(conn, res["session_id"], config, at=res.pop("stopped_at"), actor=by,
                                               reason=f"replay of {capture_file.name}")["report"]
    finally:
        conn.close()
    return {"capture": str(capture_file), "sessions": results}


class _Refill:
    """What a replay keeps of a device's memory download: its clock read, the records, the closing reply."""

    def __init__(self) -> None:
        self.offset_ms: int | None = None
        self.records: list[OximeterReading] = []
        self.reply: RacpReply | None = None

    def device_event(self, ev: OximeterEvent) -> None:
        if isinstance(ev, DeviceClock):
            self.offset_ms = int(round((ev.t - ev.device_s) * 1000))
        elif isinstance(ev, RacpReply) and ev.done:
            self.reply = ev


def _replay_device(writer: Writer, records: list[CaptureRecord], subject_id: str, device: str, protocol: str,
                   *, by: str, config: dict[str, Any], source: str) -> dict[str, Any]:
    start = records[0].t

    def create(c: Any) -> int:
        device_id = repo.upsert_device(c, kind="oximeter", protocol=protocol, address=device, at=start)
        sid = repo.open_session(c, subject_id=subject_id, kind="night", device_id=None, by=by, at=start, origin="replay",
                                settings={"protocol": protocol, "replayed_from": source, "device_id": device_id, "oximetry": config["oximetry"]})
        return sid

    session_id = writer.submit(create).result()
    fill = _Refill()
    pipeline = ReadingPipeline(session_id, protocol, writer, live=make_live(config), on_device_event=fill.device_event,
                               on_stored_record=fill.records.append)
    notify = set(PROFILES[protocol].notify_uuids)
    gap_start: tuple[float, str] | None = None
    open_gap: Future[int] | None = None
    gaps = 0
    for rec in records:
        if rec.event == "lost":
            pipeline.interrupt(rec.t, rec.cause or "device_disconnected")
            if gap_start is None:
                gap_start = (rec.t, rec.cause or "device_disconnected")
            continue
        if rec.event is not None:
            continue
        frames = pipeline.feed(rec.t, rec.characteristic or "", rec.data or b"")
        if fill.reply is not None:
            # A record download ended: back-fill the open gap exactly as the live session did.
            reply, fill.reply = fill.reply, None
            downloaded, fill.records[:] = list(fill.records), []
            features = getattr(pipeline.parser, "features", None)
            ble = config["ble"]
            if (gap_start is not None and fill.offset_ms is not None and ble["backfill"]
                    and isinstance(features, PlxFeatures) and features.has_storage):
                if open_gap is None:
                    g0, cause = gap_start
                    open_gap = writer.submit(lambda c: repo.open_gap(c, session_id, start_ms=int(round(g0 * 1000)), cause=cause))
                failure = None if reply.ok or reply.no_records else f"the device answered RACP code {reply.code}"
                summ, data = refill.submit(
                    pipeline, open_gap, downloaded, clock_offset_ms=fill.offset_ms, reconnect_t=reply.t, session_start_t=start,
                    interval_s=PROFILES[protocol].expected_period_s,
                    tolerance_ms=int(round(float(ble["backfill_grid_tolerance_s"]) * 1000)), failure=failure).result()
                refill.rebuild_live(pipeline, summ, data, analysis_config(config))
            fill.offset_ms = None
        if frames and gap_start is not None and rec.characteristic in notify:
            g0, cause = gap_start
            if open_gap is not None:
                gap_id, end_ms = open_gap.result(), int(round(rec.t * 1000))
                writer.submit(lambda c: repo.close_gap(c, gap_id, end_ms=end_ms))
                open_gap = None
            else:
                writer.submit(functools.partial(repo.add_gap, session_id=session_id, start_ms=int(round(g0 * 1000)),
                                                end_ms=int(round(rec.t * 1000)), cause=cause))
            gap_start, gaps = None, gaps + 1
    end = records[-1].t
    pipeline.close(end)
    if open_gap is not None:
        gap_id = open_gap.result()
        writer.submit(lambda c: repo.close_gap(c, gap_id, end_ms=int(round(end * 1000))))
        gaps += 1
    elif gap_start is not None:
        writer.submit(lambda c: repo.add_gap(c, session_id, start_ms=int(round(gap_start[0] * 1000)), end_ms=int(round(end * 1000)), cause=gap_start[1]))
        gaps += 1
    writer.submit(lambda c: repo.close_session(c, session_id, state="stopped", by=by, at=end, reason="replay complete")).result()
    writer.flush()
    return {"session_id": session_id, "device": device, "protocol": protocol, "samples": pipeline.samples,
            "gaps": gaps, "errors": pipeline.parser.stats.errors, "stopped_at": end}
