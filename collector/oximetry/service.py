"""``daemon.services['oximetry']``: starts, stops, resumes and reports overnight oximetry sessions.

The daemon supervises (writer, lock, shutdown); this service owns the beds:
one :class:`NightRecorder` per open night, the hand-over that queues every bed's
rows for the writer as one batch within HANDOVER_S of their arrival, the one data
watchdog of all their links, resuming nights after a restart,
and the final report when a night is stopped (through the one
:func:`collector.oximetry.store.finalise`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sqlite3
from typing import TYPE_CHECKING, Any

from collector.errors import CollectorError, Conflict, DeviceError, InvalidInput
from collector.oximetry import store
from collector.oximetry.pipeline import HANDOVER_S
from collector.oximetry.recorder import NightRecorder
from collector.storage import repo
from collector.storage.seals import CanonicalRows
from drivers.ble import scan as ble_scan
from drivers.ble.adapters import AdapterFull, AdapterSlots
from drivers.ble.link import LinkTarget
from drivers.ble.silence import SilenceWatch
from drivers.protocols.registry import PROFILES

if TYPE_CHECKING:
    from collector.daemon import Daemon

log = logging.getLogger(__name__)

SHUTDOWN_REASON = "daemon_shutdown"
HANDOVER_SLACK_S = 0.06  # a frame this close to the hand-over deadline hands over itself
CLOCK_CHECK_S = 1.0  # real seconds between checks of the host clock while nights record


class NightService:
    """Every open night of the daemon, by session id (``recorders``)."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.recorders: dict[int, NightRecorder] = {}
        # Devices that store whole nights: (protocol, address) of a stopped night until its report is made,
        # then the download of the device's own night, one task per session (awaited at shutdown).
        self._stopped_beds: dict[int, tuple[str, str]] = {}
        self.downloads: dict[int, asyncio.Task[list[int]]] = {}
        self._handover: asyncio.TimerHandle | None = None  # the next hand-over, while rows wait
        self._clock_task: asyncio.Task[None] | None = None
        # One data watchdog for every bed's link (drivers.ble.silence): one timer, not one per bed.
        self.silence = SilenceWatch(daemon.clock)
        # Beds per adapter and one connect at a time per adapter (see drivers.ble.adapters).
        self.slots = AdapterSlots(limit=int(daemon.config["ble"]["max_beds_per_adapter"]))

    # -- hand-over -------------------------------------------------------------------------
    def _rows_waiting(self) -> None:
        """A bed has rows waiting: every bed's rows go to the writer within HANDOVER_S (real time).

        Durability is a wall-clock promise, so the deadline is the event loop's (real) time even
        when the recording runs on a virtual clock.  One deadline and one writer hand-over for the
        whole ward, and only while rows wait: no periodic wake-up, the writer thread wakes once
        per hand-over instead of once per bed, and a frame arriving in the last HANDOVER_SLACK_S
        before the deadline hands over at once (the loop is awake anyway; the timer is cancelled
        and costs no wake-up).
        """
        loop = asyncio.get_running_loop()
        if self._handover is None:
            self._handover = loop.call_later(HANDOVER_S, self.hand_over_all)
        elif loop.time() >= self._handover.when() - HANDOVER_SLACK_S:
            self._handover.cancel()
            self.hand_over_all()

    def hand_over_all(self) -> None:
        """Queue every bed's waiting rows for the writer as one batch."""
        self._handover = None
        rows = CanonicalRows()
        for rec in list(self.recorders.values()):
            rows.extend(rec.pipeline.take_pending())
        if rows:
            try:
                self.daemon.writer.add_samples(rows)
            except CollectorError as exc:  # the writer stopped: status and the alerts say so; rows are kept
                log.error("cannot hand %d samples to the writer: %s", len(rows), exc)
                self._keep(rows)
        if self.daemon.capture is not None:
            self.daemon.capture.flush()  # raw frames are as durable as the samples

    def _keep(self, rows: CanonicalRows) -> None:
        """Rows the writer refused go back to their beds, in order, for the next hand-over."""
        by_session: dict[int, CanonicalRows] = {}
        for row in rows:
            by_session.setdefault(row[0], CanonicalRows()).append(row)
        for sid, kept in by_session.items():
            rec = self.recorders.get(sid)
            if rec is not None:
                rec.pipeline.give_back(kept)

    def _ensure_clock_watch(self) -> None:
        """Check the host clock about once a second while nights record (real time, see check_clock)."""
        if self._clock_task is None or self._clock_task.done():
            self._clock_task = asyncio.create_task(self._clock_loop(), name="clock-watch")

    async def _clock_loop(self) -> None:
        while self.recorders:
            await asyncio.sleep(CLOCK_CHECK_S)
            self.daemon.check_clock()

    def _run(self, rec: NightRecorder) -> None:
        self.recorders[rec.session_id] = rec
        rec.start()
        self._ensure_clock_watch()
        self.daemon.notify("night_started", {"session_id": rec.session_id, "subject_id": rec.subject_id})

    # -- commands --------------------------------------------------------------------------
    async def scan(self, timeout_s: float = 5.0) -> list[dict[str, Any]]:
        found = await ble_scan.scan(timeout_s, backend=self.daemon.scanner_backend)
        return [{**f.as_dict(), **self._busy(f.address, f.name)} for f in found]

    def _busy(self, address: str, name: str | None) -> dict[str, Any]:
        """Which night an oximeter found by a scan already records (the page marks it busy and never offers it first)."""
        for rec in self.recorders.values():
            linked = (rec.link.address or "").lower()
            # Once linked, the address decides (two oximeters may advertise the same name); before that, what was asked for.
            if (linked == address.lower()) if linked else rec.target.spec.lower() in {address.lower(), (name or "").lower()}:
                return {"busy_session_id": rec.session_id, "busy_subject_id": rec.subject_id}
        return {"busy_session_id": None, "busy_subject_id": None}

    def _check_free(self, subject_id: str, oximeter: str, address: str | None = None) -> None:
        """The subject exists and has no open night; the oximeter records no other session."""
        conn = self.daemon.open_reader()
        try:
            repo.get_subject(conn, subject_id)
            for s in repo.list_sessions(conn, subject_id=subject_id, state="open"):
                if s["kind"] == "night":
                    raise Conflict(f"subject {subject_id} already has an open night session ({s['id']}); stop it first: collector session stop {s['id']}")
        finally:
            conn.close()
        names = {oximeter.lower(), (address or oximeter).lower()}
        for rec in self.recorders.values():
            if {rec.target.spec.lower(), (rec.link.address or "").lower()} & names:
                raise Conflict(
                    f"oximeter {oximeter} is already recording session {rec.session_id} (subject {rec.subject_id}); "
                    "stop that session first or choose another oximeter"
                )

    async def start(
        self, subject_id: str, oximeter: str, *, protocol: str | None = None, by: str | None = None, origin: str | None = None
    ) -> dict[str, Any]:
        """Find the oximeter, create the night session and record until it is stopped."""
        daemon = self.daemon
        by = by or daemon.operator
        origin = origin or daemon.origin
        if daemon.closing:
            raise Conflict("the collector daemon is stopping; start the session again once it is running")
        repo.validate_subject_id(subject_id)
        if protocol is not None and protocol not in PROFILES:
            raise InvalidInput(f"unknown protocol {protocol!r}; known: {', '.join(sorted(PROFILES))}")
        self._check_free(subject_id, oximeter)  # fail fast, before a scan that can take seconds
        # The scan runs without the lock (other beds can be stopped meanwhile); the checks repeat under it.
        target = LinkTarget(oximeter)
        ble = daemon.config["ble"]
        async with daemon.clock.frozen():  # a scan takes radio (real) time
            found = await ble_scan.find(target, ble["scan_timeout_s"], backend=daemon.scanner_backend)
        if found is None:
            raise DeviceError(
                f"oximeter {oximeter!r} not found within {ble['scan_timeout_s']:g} s: check it is switched on, "
                "a finger is in it, it is in range and not connected to a phone; list what is in range with: collector scan"
            )
        protocol = protocol or found.protocol
        if protocol is None:
            raise DeviceError(
                f"device {oximeter!r} advertises no oximeter service we know; give --protocol ({', '.join(sorted(PROFILES))})"
            )
        async with daemon.lock:
            if daemon.closing:
                raise Conflict("the collector daemon is stopping; start the session again once it is running")
            self._check_free(subject_id, oximeter, found.address)
            try:
                self.slots.reserve(found.address)
            except AdapterFull as exc:
                raise Conflict(f"oximeter {oximeter!r} not started: {exc}") from None
            daemon.check_clock()  # a step before the first night re-anchors instead of carrying into it
            now = daemon.clock.now()

            def create(c: sqlite3.Connection) -> dict[str, Any]:
                device_id = repo.upsert_device(c, kind="oximeter", protocol=protocol, address=found.address, at=now, name=found.name)
                sid = repo.open_session(c, subject_id=subject_id, kind="night", device_id=device_id, by=by, at=now, origin=origin,
                                        settings={"protocol": protocol, "oximetry": daemon.config["oximetry"],
                                                  **daemon.facts_for_session()})
                return repo.get_session(c, sid)

            try:
                session = await daemon.write(create)
            except BaseException:
                self.slots.release(found.address)
                raise
            rec = NightRecorder(daemon, session, protocol=protocol, target=LinkTarget(found.address), slots=self.slots,
                                silence=self.silence, on_pending=self._rows_waiting)
            self._run(rec)
        timeout = ble["connect_timeout_s"] + ble["scan_timeout_s"]
        try:
            await asyncio.wait_for(rec.link.connected_once.wait(), timeout)
        except asyncio.TimeoutError:
            await daemon.stop_session(session["id"], by="collector", reason=f"could not connect: {rec.link.stats.last_error}")
            raise DeviceError(
                f"found {oximeter!r} but could not connect within {timeout:g} s ({rec.link.stats.last_error}); "
                "make sure no phone or other computer holds the connection, then start again"
            ) from None
        return daemon.session_info(session["id"])

    async def finalise(self, session_id: int, *, reason: str = "session stopped", actor: str = "collector") -> dict[str, Any]:
        """Compute the night's report from the stored samples, store and audit it (one writer transaction)."""
        now = self.daemon.clock.now()
        config = self.daemon.config
        result = await self.daemon.write(lambda c: store.finalise(c, session_id, config, at=now, actor=actor, reason=reason))
        self.daemon.notify("night_report", {"session_id": session_id, "report": result["report"]})
        report: dict[str, Any] = result["report"]
        return report

    # -- daemon hooks ------------------------------------------------------------------------
    async def stop_session_hook(self, session_id: int, t: float) -> None:
        """Called by ``daemon.stop_session`` for every session, before it is closed: end this bed's recording."""
        rec = self.recorders.pop(session_id, None)
        if rec is not None:
            await rec.stop(t)
            self.slots.release(rec.target.spec)
            if PROFILES[rec.protocol].night_file_format is not None:
                self._stopped_beds[session_id] = (rec.protocol, rec.target.spec)

    async def session_closed_hook(self, session: dict[str, Any]) -> dict[str, Any]:
        """After a night is closed and flushed: its final report (what ``session stop`` prints)."""
        if session["kind"] != "night":
            return {}
        out: dict[str, Any] = {"report": await self.finalise(session["id"])}
        bed = self._stopped_beds.pop(session["id"], None)
        if bed is not None:
            # In the background: the night's report is final without it, and a download takes radio time.
            from collector.oximetry.device_nights import keep_device_night

            self.downloads[session["id"]] = asyncio.create_task(
                keep_device_night(self.daemon, session["id"], protocol=bed[0], address=bed[1], slots=self.slots),
                name=f"device-night-{session['id']}")
            out["device_night"] = "downloading"
        return out

    def live_status(self, session_id: int) -> dict[str, Any] | None:
        rec = self.recorders.get(session_id)
        return None if rec is None else rec.status(self.daemon.clock.now())

    def beds(self) -> list[dict[str, Any]]:
        now = self.daemon.clock.now()
        return [rec.status(now) for rec in self.recorders.values()]

    async def resume(self) -> list[int]:
        """Daemon start: nights left open or interrupted continue in the same session, the downtime a gap."""
        daemon = self.daemon
        conn = daemon.open_reader()
        try:
            # Only the unfinished sessions are read (not every session of the study).
            unfinished = sorted((r for state in ("open", "interrupted") for r in repo.list_sessions(conn, state=state)),
                                key=lambda r: r["id"])
            rows = [r for r in unfinished if r["kind"] == "night" and r["origin"] in ("live", "simulated") and r["id"] not in self.recorders]
            last_ms = {r["id"]: store.last_sample_ms(conn, r["id"]) for r in rows}
            open_gaps = {r["id"]: repo.open_gap_id(conn, r["id"]) for r in rows}
        finally:
            conn.close()
        resumed = []
        max_gap_h = float(daemon.config["oximetry"].get("resume_max_gap_h", 12))
        for row in rows:
            if row["device_protocol"] is None or row["device_address"] is None:
                log.error("session %s has no device recorded; cannot resume it", row["id"])
                continue
            now = daemon.clock.now()
            last = last_ms[row["id"]]
            since = last / 1000 if last is not None else now
            if now - since > max_gap_h * 3600:
                # The oximeter may be on another patient by now: never attach it to this night silently.
                log.warning("session %s (subject %s) stopped recording %.1f h ago: not resumed; stop it with: collector session stop %s",
                            row["id"], row["subject_id"], (now - since) / 3600, row["id"])
                continue
            if row["state"] == "interrupted":
                await daemon.write(functools.partial(repo.resume_session, session_id=row["id"], by="collector", at=now))
            else:
                await daemon.write(functools.partial(
                    repo.audit.append, at=now, actor="collector", action="session_resumed", subject_id=row["subject_id"],
                    session_id=row["id"], reason="collector restarted after an unclean stop"))
            try:
                self.slots.reserve(row["device_address"])
            except AdapterFull as exc:
                log.error("session %s (subject %s) not resumed: %s", row["id"], row["subject_id"], exc)
                continue
            rec = NightRecorder(daemon, row, protocol=row["device_protocol"], target=LinkTarget(row["device_address"]),
                                resume_from=min(since, now), open_gap_id=open_gaps[row["id"]], slots=self.slots,
                                silence=self.silence, on_pending=self._rows_waiting)
            conn = daemon.open_reader()
            try:
                stored = store.load_night(conn, row["id"])
            finally:
                conn.close()
            rec.restore(stored)
            self._run(rec)
            resumed.append(row["id"])
            log.info("resumed session %s for subject %s", row["id"], row["subject_id"])
        return resumed

    async def shutdown(self) -> None:
        """Daemon shutdown (under its lock): every open night kept as ``interrupted``; it resumes on the next start."""
        now = self.daemon.clock.now()
        for sid, rec in list(self.recorders.items()):
            try:  # one session's failure must not cost the others their interrupted state
                await rec.stop(now)
                await self.daemon.write(functools.partial(repo.close_session, session_id=sid, state="interrupted",
                                                          by="collector", at=now, reason=SHUTDOWN_REASON))
            except CollectorError as exc:
                log.error("session %s could not be closed as interrupted (%s); it stays open and resumes on the next start", sid, exc.message)
            except Exception:
                log.exception("session %s could not be closed as interrupted; it stays open and resumes on the next start", sid)
        for rec in self.recorders.values():
            self.slots.release(rec.target.spec)
        self.recorders.clear()
        if self.downloads:
            # Each is bounded by [ble] night_download_timeout_s; a failure is an event, never an exception here.
            results = await asyncio.gather(*self.downloads.values(), return_exceptions=True)
            for sid, res in zip(list(self.downloads), results):
                if isinstance(res, BaseException):
                    log.error("session %s: the device's own night was not kept (%s)", sid, res)
            self.downloads.clear()
        if self._handover is not None:
            self._handover.cancel()
            self.hand_over_all()
        if self._clock_task is not None:
            self._clock_task.cancel()
        self.silence.close()


def attach(daemon: Daemon) -> NightService:
    """Wire the night path into the daemon: beds in ``status()``, resume at start, interrupted at shutdown."""
    svc = NightService(daemon)
    daemon.services["oximetry"] = svc
    daemon.status_providers["beds"] = svc.beds
    daemon.startup_hooks.append(svc.resume)
    daemon.shutdown_hooks.append(svc.shutdown)
    return svc
