"""The collector daemon: one task per recording device under a supervisor.

A failing device never stops the others: each :class:`NightRecorder` runs in its
own task, and its link reconnects for as long as the session is open.  All
writes go through the single :class:`Writer`.  On SIGTERM/SIGINT open sessions
are closed as ``interrupted`` (with an audit row) after the writer is flushed;
on the next start they are resumed in the same session with the downtime
stored as a gap.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import sqlite3
from pathlib import Path
from typing import Any, Awaitable, Callable

from bleak.backends.client import BaseBleakClient
from bleak.backends.scanner import BaseBleakScanner

from collector.capture import CaptureWriter
from collector.clock import Clock, SystemClock, utc_iso
from collector.config import defaults
from collector.errors import Conflict, DeviceError, InvalidInput
from collector.live import make_live, snapshot_dict
from collector.nights import compute_report, store_report
from collector.pipeline import BREAKING_CAUSES, ReadingPipeline
from collector.storage import repo
from collector.storage.db import open_db
from collector.storage.writer import Writer
from drivers.ble import scan as ble_scan
from drivers.ble.link import LinkTarget, OximeterLink
from drivers.protocols.registry import PROFILES

log = logging.getLogger(__name__)

SHUTDOWN_REASON = "daemon_shutdown"


class NightRecorder:
    """One night session on one oximeter: link -> pipeline -> writer, gaps for every outage."""

    def __init__(
        self,
        daemon: "Daemon",
        session: dict[str, Any],
        *,
        protocol: str,
        target: LinkTarget,
        resume_from: float | None = None,
        open_gap_id: int | None = None,
    ) -> None:
        self.daemon = daemon
        self.session_id: int = session["id"]
        self.subject_id: str = session["subject_id"]
        self.device_id: int | None = session["device_id"]
        self.protocol = protocol
        self.target = target
        self.started_utc: str = session["started_utc"]
        cfg = daemon.config
        self.live = make_live(cfg)
        self.pipeline = ReadingPipeline(
            self.session_id, protocol, daemon.writer, live=self.live, on_event=self._on_event
        )
        ble = cfg["ble"]
        self.link = OximeterLink(
            target,
            PROFILES[protocol],
            daemon.clock,
            on_data=self._on_data,
            on_connected=self._on_connected,
            on_lost=self._on_lost,
            backend=daemon.ble_backend,
            scanner_backend=daemon.scanner_backend,
            connect_timeout_s=ble["connect_timeout_s"],
            scan_timeout_s=ble["scan_timeout_s"],
            watchdog_periods=ble["watchdog_periods"],
            backoff_s=tuple(ble["backoff_s"]),
        )
        self.events: list[dict[str, Any]] = []
        self._gap_future = None
        self.task: asyncio.Task[None] | None = None
        self.resume_from: float | None = None
        if open_gap_id is not None:
            # An outage was still open when the daemon died: it simply continues until data flows.
            done: concurrent.futures.Future[int] = concurrent.futures.Future()
            done.set_result(open_gap_id)
            self._gap_future = done
        elif resume_from is not None:
            self.resume_from = resume_from
            self._open_gap(resume_from, "daemon_down", "collector was not running")
            if daemon.capture is not None:  # so a replay of the capture has the same break
                daemon.capture.event(resume_from, target.spec, protocol, "lost", "daemon_down")

    # -- link callbacks ------------------------------------------------------------------------
    def _on_data(self, t: float, characteristic: str, data: bytes) -> int:
        if self.daemon.capture is not None:
            self.daemon.capture.frame(t, self.target.spec, self.protocol, characteristic, data)
        frames = self.pipeline.feed(t, characteristic, data)
        if frames and self._gap_future is not None and characteristic in self.link.profile.notify_uuids:
            self.pipeline.hand_over()  # the sample that ends the outage is stored before the gap closes
            self._close_gap(t)  # an outage ends when data flows again, not when the link is up
        return frames

    def _on_connected(self, t: float, info: dict[str, str]) -> None:
        if self.daemon.capture is not None:
            self.daemon.capture.event(t, self.target.spec, self.protocol, "connected")
        address = info.get("address") or self.target.spec

        def write(conn: sqlite3.Connection) -> None:
            self.device_id = repo.upsert_device(
                conn, kind="oximeter", protocol=self.protocol, address=address, at=t, name=info.get("name"),
                model=info.get("model"), serial_number=info.get("serial_number"), firmware=info.get("firmware"),
            )
            repo.audit.append(
                conn, at=t, actor="collector", action="device_connected", subject_id=self.subject_id,
                session_id=self.session_id, new={k: v for k, v in info.items() if k != "address"},
            )

        self.daemon.writer.submit(write)

    def _on_lost(self, t: float, cause: str, last_frame_t: float | None) -> None:
        start = last_frame_t if cause == "watchdog_silence" and last_frame_t is not None else t
        if self.daemon.capture is not None:
            self.daemon.capture.event(start, self.target.spec, self.protocol, "lost", cause)
        self.pipeline.interrupt(start, cause)
        self._open_gap(start, cause, None)

        def write(conn: sqlite3.Connection) -> None:
            repo.audit.append(
                conn, at=t, actor="collector", action="device_lost", subject_id=self.subject_id,
                session_id=self.session_id, new={"cause": cause},
            )

        self.daemon.writer.submit(write)

    def _on_event(self, t: float, kind: str, detail: dict[str, Any]) -> None:
        self.events.append({"t_utc": utc_iso(t), "kind": kind, **detail})
        log.warning("session %s (%s): %s", self.session_id, self.subject_id, kind)
        self.daemon.notify(kind, {"session_id": self.session_id, "subject_id": self.subject_id, "t_utc": utc_iso(t), **detail})

    # -- gaps ------------------------------------------------------------------------------------
    def _open_gap(self, start: float, cause: str, detail: str | None) -> None:
        if self._gap_future is not None:
            return  # already in a gap: keep its original start and cause
        start_ms = int(round(start * 1000))
        self._gap_future = self.daemon.writer.submit(
            lambda c: repo.open_gap(c, self.session_id, start_ms=start_ms, cause=cause, detail=detail)
        )

    def _close_gap(self, end: float) -> None:
        fut, self._gap_future = self._gap_future, None
        if fut is None:
            return
        end_ms = int(round(end * 1000))
        self.daemon.writer.submit(lambda c: repo.close_gap(c, fut.result(), end_ms=end_ms))

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        self.task = asyncio.create_task(self._supervise(), name=f"night-{self.session_id}")
        self.daemon.ensure_handover()

    async def _supervise(self) -> None:
        """Run the link; if its code fails unexpectedly, record the outage and start it again."""
        while True:
            try:
                await self.link.run()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug in one device's path must not stop this bed or the others
                log.exception("session %s: recorder failed; restarting it", self.session_id)
                now = self.daemon.clock.now()
                self._on_lost(now, "recorder_error", self.link.last_frame_t)
                self.daemon.notify("recorder_error", {"session_id": self.session_id, "subject_id": self.subject_id, "error": repr(exc)})
                await self.daemon.clock.sleep(5.0)

    async def stop(self, t: float) -> None:
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass
        self.pipeline.close(t)
        self._close_gap(t)

    def status(self, now: float) -> dict[str, Any]:
        r = self.pipeline.last_reading
        snap = snapshot_dict(self.live) if self.live is not None else {}
        last = self.pipeline.last_sample_t
        return {
            "session_id": self.session_id,
            "subject_id": self.subject_id,
            "kind": "night",
            "protocol": self.protocol,
            "device": self.target.spec,
            "device_info": self.link.stats.info,
            "link_state": self.link.state,
            "started_utc": self.started_utc,
            "samples": self.pipeline.samples,
            "spo2_pct": r.spo2_pct if r is not None and r.valid else None,
            "pulse_bpm": r.pulse_bpm if r is not None and r.pulse_valid else None,
            "last_sample_utc": utc_iso(last) if last is not None else None,
            "seconds_since_last_sample": round(now - last, 1) if last is not None else None,
            "parser": {"frames": self.pipeline.parser.stats.frames, "errors": self.pipeline.parser.stats.errors,
                       "lost_packets": self.pipeline.parser.stats.lost_packets},
            "link": {"connects": self.link.stats.connects, "disconnects": self.link.stats.disconnects,
                     "watchdog_resets": self.link.stats.watchdog_resets, "last_error": self.link.stats.last_error},
            "live": snap,
            "events": self.events[-20:],
        }


class Daemon:
    """Owns the writer and the recorders; the API and the CLI call its methods."""

    def __init__(
        self,
        db_path: Path | str,
        *,
        clock: Clock | None = None,
        config: dict[str, Any] | None = None,
        ble_backend: type[BaseBleakClient] | None = None,
        scanner_backend: type[BaseBleakScanner] | None = None,
        capture_path: Path | str | None = None,
        operator: str | None = None,
        origin: str = "live",
    ) -> None:
        self.db_path = Path(db_path)
        self.origin = origin  # "simulated" when the devices are simulators: never mistaken for a real night
        self.clock = clock or SystemClock()
        self.config = config or defaults()
        self.ble_backend = ble_backend
        self.scanner_backend = scanner_backend
        self.operator = operator or self.config["operator"]["name"]
        self.capture = CaptureWriter(capture_path) if capture_path else None
        self.writer = Writer(self.db_path, flush_interval_s=self.config["storage"]["flush_interval_s"],
                             synchronous=self.config["storage"].get("synchronous", "FULL"))
        self.recorders: dict[int, NightRecorder] = {}
        self._lock = asyncio.Lock()
        self.started_utc = utc_iso(self.clock.now())
        # Extension points for feature packages (collector/features.py).
        self.services: dict[str, Any] = {}
        self.listeners: list[Callable[[str, dict[str, Any]], None]] = []
        self.status_providers: dict[str, Callable[[], Any]] = {}
        self.shutdown_hooks: list[Callable[[], Awaitable[None]]] = []
        self._handover_task: asyncio.Task[None] | None = None
        self.closing = False
        self.startup_hooks: list[Callable[[], Awaitable[Any]]] = []  # awaited at the end of resume_open_sessions()

    def ensure_handover(self) -> None:
        """Queue every recorder's pending rows for the writer ~10 times a second (real time).

        Durability is a wall-clock promise, so this loop sleeps in real time even
        when the recording runs on a virtual clock.
        """
        if self._handover_task is None or self._handover_task.done():
            self._handover_task = asyncio.create_task(self._handover_loop(), name="handover")

    async def _handover_loop(self) -> None:
        from collector.pipeline import HANDOVER_S

        while True:
            await asyncio.sleep(HANDOVER_S)
            for rec in list(self.recorders.values()):
                rec.pipeline.hand_over()
            if self.capture is not None:
                self.capture.flush()  # raw frames are as durable as the samples

    def notify(self, kind: str, payload: dict[str, Any]) -> None:
        """Tell listeners that something changed (a night crossed 2 %, a night or spirometry session ended)."""
        for listener in list(self.listeners):
            try:
                listener(kind, payload)
            except Exception:
                log.exception("listener failed on %s", kind)

    # -- the public surface for feature modules ----------------------------------------------
    async def write(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        """Run ``fn(conn)`` in the single writer's next transaction and return its result."""
        async with self.clock.frozen():  # the writer works in real time
            return await asyncio.wrap_future(self.writer.submit(fn))

    async def flush(self) -> None:
        """Wait until everything queued so far is committed."""
        async with self.clock.frozen():
            await asyncio.to_thread(self.writer.flush)

    def open_reader(self) -> sqlite3.Connection:
        """A new read connection (WAL: it sees every committed row); the caller closes it."""
        return open_db(self.db_path, check_same_thread=False).conn

    # -- startup ---------------------------------------------------------------------------
    async def resume_open_sessions(self) -> list[int]:
        """Sessions that were open when the daemon stopped (or was killed) continue recording."""
        conn = self.open_reader()
        try:
            rows = [r for r in repo.list_sessions(conn) if r["state"] in ("open", "interrupted") and r["kind"] == "night"
                    and r["origin"] in ("live", "simulated")]
            last_t = {r["id"]: conn.execute("SELECT MAX(host_utc_ms) FROM spo2_samples WHERE session_id = ?", (r["id"],)).fetchone()[0]
                      for r in rows}
            open_gaps = {r["id"]: conn.execute("SELECT MAX(id) FROM gaps WHERE session_id = ? AND end_utc_ms IS NULL", (r["id"],)).fetchone()[0]
                         for r in rows}
        finally:
            conn.close()
        resumed = []
        for row in rows:
            if row["device_protocol"] is None or row["device_address"] is None:
                log.error("session %s has no device recorded; cannot resume it", row["id"])
                continue
            now = self.clock.now()
            last_ms = last_t[row["id"]]
            since = last_ms / 1000 if last_ms is not None else now
            max_gap_h = float(self.config["oximetry"].get("resume_max_gap_h", 12))
            if now - since > max_gap_h * 3600:
                # The oximeter may be on another patient by now: never attach it to this night silently.
                log.warning("session %s (subject %s) stopped recording %.1f h ago: not resumed; stop it with: collector session stop %s",
                            row["id"], row["subject_id"], (now - since) / 3600, row["id"])
                continue
            if row["state"] == "interrupted":
                await self.write(lambda c, sid=row["id"]: repo.resume_session(c, sid, by="collector", at=now))
            else:
                await self.write(lambda c, sid=row["id"], s=row["subject_id"]: repo.audit.append(
                    c, at=now, actor="collector", action="session_resumed", subject_id=s, session_id=sid,
                    reason="collector restarted after an unclean stop"))
            rec = NightRecorder(self, row, protocol=row["device_protocol"], target=LinkTarget(row["device_address"]),
                                resume_from=min(since, now), open_gap_id=open_gaps[row["id"]])
            await self._replay_live(rec)
            self.recorders[row["id"]] = rec
            rec.start()
            resumed.append(row["id"])
            log.info("resumed session %s for subject %s", row["id"], row["subject_id"])
        for hook in self.startup_hooks:  # e.g. spirometry sessions on serial ports
            try:
                await hook()
            except Exception:
                log.exception("startup hook failed")
        return resumed

    async def _replay_live(self, rec: NightRecorder) -> None:
        """Rebuild the live figures of a resumed session from what is stored."""
        if rec.live is None:
            return
        conn = self.open_reader()
        try:
            breaks = [(g["start_utc_ms"], g["cause"]) for g in repo.session_gaps(conn, rec.session_id)]
            samples = conn.execute(
                "SELECT host_utc_ms, spo2_pct, valid FROM spo2_samples WHERE session_id = ? ORDER BY host_utc_ms, rowid",
                (rec.session_id,),
            ).fetchall()
        finally:
            conn.close()
        bi = 0
        breaks = [b for b in breaks if b[1] in BREAKING_CAUSES]
        for t_ms, spo2, valid in samples:
            while bi < len(breaks) and breaks[bi][0] <= t_ms:
                rec.live.interrupt(breaks[bi][0] / 1000, breaks[bi][1])
                bi += 1
            rec.live.add(t_ms / 1000, spo2, bool(valid))
        for start_ms, cause in breaks[bi:]:  # outages after the last sample (e.g. still open at the crash)
            rec.live.interrupt(start_ms / 1000, cause)
        rec.pipeline.samples = len(samples)
        if samples:
            rec.pipeline.last_sample_t = samples[-1][0] / 1000
        if rec.resume_from is not None:  # the new daemon_down gap (not yet visible to this read)
            rec.live.interrupt(max(rec.resume_from, rec.pipeline.last_sample_t or rec.resume_from), "daemon_down")

    # -- commands --------------------------------------------------------------------------
    async def add_subject(self, subject_id: str, *, by: str | None = None) -> dict[str, Any]:
        now = self.clock.now()
        return await self.write(lambda c: repo.add_subject(c, subject_id, by=by or self.operator, at=now))

    async def scan(self, timeout_s: float = 5.0) -> list[dict[str, Any]]:
        found = await ble_scan.scan(timeout_s, backend=self.scanner_backend)
        return [f.as_dict() for f in found]

    def _check_free(self, subject_id: str, oximeter: str, address: str | None = None) -> None:
        """The subject exists and has no open night; the oximeter records no other session."""
        conn = self.open_reader()
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

    async def start_night(
        self, subject_id: str, oximeter: str, *, protocol: str | None = None, by: str | None = None, origin: str | None = None
    ) -> dict[str, Any]:
        by = by or self.operator
        origin = origin or self.origin
        if self.closing:
            raise Conflict("the collector daemon is stopping; start the session again once it is running")
        repo.validate_subject_id(subject_id)
        if protocol is not None and protocol not in PROFILES:
            raise InvalidInput(f"unknown protocol {protocol!r}; known: {', '.join(sorted(PROFILES))}")
        self._check_free(subject_id, oximeter)  # fail fast, before a scan that can take seconds
        # The scan runs without the lock (other beds can be stopped meanwhile); the checks repeat under it.
        target = LinkTarget(oximeter)
        async with self.clock.frozen():  # a scan takes radio (real) time
            found = await ble_scan.find(target, self.config["ble"]["scan_timeout_s"], backend=self.scanner_backend)
        if found is None:
            raise DeviceError(
                f"oximeter {oximeter!r} not found within {self.config['ble']['scan_timeout_s']:g} s: check it is switched on, "
                "a finger is in it, it is in range and not connected to a phone; list what is in range with: collector scan"
            )
        protocol = protocol or found.protocol
        if protocol is None:
            raise DeviceError(
                f"device {oximeter!r} advertises no oximeter service we know; give --protocol ({', '.join(sorted(PROFILES))})"
            )
        async with self._lock:
            if self.closing:
                raise Conflict("the collector daemon is stopping; start the session again once it is running")
            self._check_free(subject_id, oximeter, found.address)
            now = self.clock.now()

            def create(c: sqlite3.Connection) -> dict[str, Any]:
                device_id = repo.upsert_device(c, kind="oximeter", protocol=protocol, address=found.address, at=now, name=found.name)
                sid = repo.open_session(c, subject_id=subject_id, kind="night", device_id=device_id, by=by, at=now, origin=origin,
                                        settings={"protocol": protocol, "oximetry": self.config["oximetry"]})
                return repo.get_session(c, sid)

            session = await self.write(create)
            rec = NightRecorder(self, session, protocol=protocol, target=LinkTarget(found.address))
            self.recorders[session["id"]] = rec
            rec.start()
        timeout = self.config["ble"]["connect_timeout_s"] + self.config["ble"]["scan_timeout_s"]
        try:
            await asyncio.wait_for(rec.link.connected_once.wait(), timeout)
        except asyncio.TimeoutError:
            await self.stop_session(session["id"], by="collector", reason=f"could not connect: {rec.link.stats.last_error}")
            raise DeviceError(
                f"found {oximeter!r} but could not connect within {timeout:g} s ({rec.link.stats.last_error}); "
                "make sure no phone or other computer holds the connection, then start again"
            ) from None
        return self.session_info(session["id"])

    async def stop_session(self, session_id: int, *, by: str | None = None, reason: str | None = None) -> dict[str, Any]:
        by = by or self.operator
        if self.closing:
            raise Conflict("the collector daemon is stopping; the session will be saved as interrupted - stop it after the next start")
        async with self._lock:
            rec = self.recorders.pop(session_id, None)
            now = self.clock.now()
            if rec is not None:
                await rec.stop(now)
            for service in self.services.values():  # e.g. a spirometry recorder on a serial port
                hook = getattr(service, "stop_session_hook", None)
                if hook is not None:
                    await hook(session_id, now)
            row = await self.write(lambda c: repo.close_session(c, session_id, state="stopped", by=by, at=now, reason=reason))
        await self.flush()
        info = self.session_info(row["id"])
        if row["kind"] == "night":
            info["report"] = await self.finalise_night(session_id)
        return info

    async def finalise_night(self, session_id: int) -> dict[str, Any]:
        """Recompute the night from the stored samples (vectorised) and store the report."""
        conn = self.open_reader()
        try:
            async with self.clock.frozen():
                report = await asyncio.to_thread(compute_report, conn, session_id, self.config)
        finally:
            conn.close()
        now = self.clock.now()
        await self.write(lambda c: store_report(c, session_id, report, at=now, actor="collector", reason="session stopped"))
        self.notify("night_report", {"session_id": session_id, "report": report})
        return report

    def session_info(self, session_id: int) -> dict[str, Any]:
        conn = self.open_reader()
        try:
            row = repo.get_session(conn, session_id)
        finally:
            conn.close()
        rec = self.recorders.get(session_id)
        if rec is not None:
            row["live"] = rec.status(self.clock.now())
        return row

    def status(self) -> dict[str, Any]:
        now = self.clock.now()
        return {
            "now_utc": utc_iso(now),
            "daemon_started_utc": self.started_utc,
            "db": str(self.db_path),
            "writer": {"samples_committed": self.writer.samples_committed, "commits": self.writer.commits,
                       "failed": str(self.writer.failed) if self.writer.failed else None},
            "beds": [rec.status(now) for rec in self.recorders.values()],
            **{name: provider() for name, provider in self.status_providers.items()},
        }

    async def shutdown(self) -> None:
        """Flush and close every open session as ``interrupted``; they resume on the next start.

        New commands are refused from here on; a command already running finishes first (the lock).
        """
        if self.closing:
            return
        self.closing = True
        async with self._lock:
            for hook in self.shutdown_hooks:
                try:
                    await hook()
                except Exception:
                    log.exception("shutdown hook failed")
            now = self.clock.now()
            for sid, rec in list(self.recorders.items()):
                try:  # one session's failure must not cost the others their interrupted state
                    await rec.stop(now)
                    await self.write(lambda c, sid=sid: repo.close_session(c, sid, state="interrupted", by="collector", at=now, reason=SHUTDOWN_REASON))
                except Exception:
                    log.exception("session %s could not be closed as interrupted; it stays open and resumes on the next start", sid)
            self.recorders.clear()
        if self._handover_task is not None:
            self._handover_task.cancel()
        await self.flush()
        self.writer.close()
        if self.capture is not None:
            self.capture.close()

