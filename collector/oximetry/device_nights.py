"""After a live night on a device that stores whole nights (the O2Ring): keep the device's own night too.

The device measured on through every outage of the radio, so its file holds
what the live session's gaps lack.  The downloaded night is stored as its own
session (origin ``import``) linked to the live one, with the firmware's own T90
beside ours; then its records that fall inside the live session's gaps
back-fill those gaps through the same path as a RACP download (origin
``device_memory``, each gap backfilled or partial, records that do not fit kept
and flagged), and the live night's report is recomputed and stored (audited)
so it counts the back-filled time.  Its local times are mapped to host UTC
through the device clock measured during the download.  Nothing here can fail
the live night: every failure is one event on the live session, with its reason.
"""

from __future__ import annotations

import functools
import logging
import sqlite3
from typing import TYPE_CHECKING, Any

from bleak.exc import BleakError

from collector.errors import Conflict, InvalidInput
from collector.oximetry import store
from collector.oximetry.importers import ImportLimits
from collector.oximetry.importers.ingest import import_night, parse_night
from collector.storage import repo
from collector.storage.db import transaction
from drivers.ble.adapters import AdapterFull, AdapterSlots
from drivers.ble.o2ring_download import download_from
from drivers.protocols.o2ring import DownloadError, night_readings, parse_night_file
from drivers.protocols.registry import PROFILES

if TYPE_CHECKING:
    from collector.daemon import Daemon

log = logging.getLogger(__name__)

DOWNLOADED = "device_night_downloaded"
FAILED = "device_night_download_failed"


async def keep_device_night(daemon: Daemon, session_id: int, *, protocol: str, address: str,
                            slots: AdapterSlots) -> list[int]:
    """Download the device's nights, store those overlapping the live session; the new session ids."""
    fmt = PROFILES[protocol].night_file_format
    if fmt is None:
        return []
    cfg = daemon.config
    ble = cfg["ble"]
    live = await daemon.write(lambda c: repo.get_session(c, session_id))
    bed = f"{address} (night download)"
    try:
        slots.reserve(bed)
    except AdapterFull as exc:
        await _event(daemon, session_id, FAILED, {"reason": str(exc)})
        return []
    try:
        files, ring_clock = await download_from(
            address, daemon.clock, slots=slots, backend=daemon.ble_backend, scanner_backend=daemon.scanner_backend,
            connect_timeout_s=ble["connect_timeout_s"], scan_timeout_s=ble["scan_timeout_s"],
            timeout_s=ble["night_download_timeout_s"])
    except (BleakError, DownloadError, TimeoutError, OSError) as exc:
        await _event(daemon, session_id, FAILED, {"reason": f"{type(exc).__name__}: {exc}"})
        return []
    finally:
        slots.release(bed)
    if ring_clock is None:
        await _event(daemon, session_id, FAILED, {"reason": "the device did not tell its clock; import the file "
                                                             "with collector import --tz/--utc-offset instead"})
        return []
    start_s, stop_s = _span(live)
    limits = ImportLimits.from_config(cfg)
    made: list[int] = []
    for name, raw in files.items():
        try:
            night = parse_night(raw, fmt, limits=limits, now_utc_s=daemon.clock.wall(),
                                measured_offset_s=ring_clock.offset_s)
        except InvalidInput as exc:
            await _event(daemon, session_id, FAILED, {"file": name, "reason": exc.message})
            continue
        if float(night.t_utc_s[-1]) < start_s or float(night.t_utc_s[0]) > stop_s:
            continue  # another night the device still holds
        night.source["downloaded"] = {"file": name, "over": "ble"}
        now = daemon.clock.now()
        store_it = functools.partial(import_night, raw=raw, night=night, subject_id=live["subject_id"], by="collector",
                                     at=now, config=cfg, live_session_id=session_id)
        try:
            result = await daemon.write(store_it)
        except Conflict:
            continue  # downloaded and kept before (a resumed night stopped again)
        made.append(result["session_id"])
        await _event(daemon, session_id, DOWNLOADED, {"file": name, "session_id": result["session_id"],
                                                      "samples": result["samples"], "firmware_t90": result["firmware_t90"]})
        await _backfill_live(daemon, session_id, raw, protocol=protocol, offset_s=ring_clock.offset_s)
    return made


async def _backfill_live(daemon: Daemon, session_id: int, raw: bytes, *, protocol: str, offset_s: float) -> None:
    """Fill the live night's gaps from the downloaded file, then store its recomputed report (one transaction)."""
    cfg = daemon.config
    f = parse_night_file(raw)  # parsed once already by the import; this cannot fail now
    records = night_readings(f)
    now = daemon.clock.now()

    def write(conn: sqlite3.Connection) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
        with transaction(conn):
            filled = store.backfill_stopped_night(
                conn, session_id, records, clock_offset_ms=-int(round(offset_s * 1000)),
                interval_ms=int(round(PROFILES[protocol].expected_period_s * 1000)),
                record_ms=int(round(f.interval_s * 1000)),
                tolerance_ms=int(round(float(cfg["ble"]["backfill_grid_tolerance_s"]) * 1000)), at=now)
            if not any(b["fitted"] for b in filled):
                return filled, None
            return filled, store.finalise(conn, session_id, cfg, at=now, actor="collector",
                                          reason="the device's own night back-filled the live session's gaps")

    try:
        filled, result = await daemon.write(write)
    except Exception as exc:  # storage failed: the live night and the kept download stay as they were
        await _event(daemon, session_id, FAILED, {"reason": f"back-fill from the downloaded night: {type(exc).__name__}: {exc}"})
        return
    if result is not None:
        log.info("session %s: %d gap(s) back-filled from the device's own night; report %s stored",
                 session_id, sum(1 for b in filled if b["fitted"]), result["report_id"])
        daemon.notify("night_report", {"session_id": session_id, "report": result["report"]})


def _span(session: dict[str, Any]) -> tuple[float, float]:
    from datetime import datetime

    start = datetime.fromisoformat(str(session["started_utc"]).replace("Z", "+00:00")).timestamp()
    stop = session.get("stopped_utc")
    end = datetime.fromisoformat(str(stop).replace("Z", "+00:00")).timestamp() if stop else float("inf")
    return start, end


async def _event(daemon: Daemon, session_id: int, kind: str, detail: dict[str, Any]) -> None:
    if kind == FAILED:
        log.warning("session %s: the device's own night was not kept: %s", session_id, detail.get("reason"))
    t_ms = int(round(daemon.clock.now() * 1000))
    await daemon.write(lambda c: repo.add_event(c, session_id, t_ms=t_ms, kind=kind, detail=detail))
