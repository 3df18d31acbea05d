"""The collector daemon: supervision only.

It owns the single :class:`Writer`, the command lock, the capture file and the
clock, and hands each kind of session to its feature service
(``services['oximetry']`` records nights, ``services['spirometry']`` serial
sessions): a failing device never stops the others.  Feature modules use only
the public surface below (``write``, ``flush``, ``open_reader``, ``notify``,
``services``, ``listeners``, ``status_providers``, ``startup_hooks``,
``shutdown_hooks``, ``session_facts``, ``lock``, ``clock``, ``config``, ``capture``, and ``writer``
for the recorders' fire-and-forget rows: ``writer.submit``, ``writer.add_samples``,
``writer.failed``).  On SIGTERM/SIGINT the services keep open sessions as
``interrupted``; on the next start they resume in the same session with the
downtime stored as a gap.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from pathlib import Path
from typing import Any, Awaitable, Callable

from bleak.backends.client import BaseBleakClient
from bleak.backends.scanner import BaseBleakScanner

from collector.clock import Clock, SystemClock, utc_iso
from collector.config import completed, defaults
from collector.errors import CollectorError, Conflict, StorageError
from collector.oximetry.capture import CaptureWriter
from collector.storage import repo
from collector.storage.db import open_db
from collector.storage.writer import Writer

log = logging.getLogger(__name__)


CLOCK_STEP_TOLERANCE_S = 2.0  # NTP slews far less than this over a night; a larger jump is a step


class ClockStepWatch:
    """Notices when the host's wall clock steps away from the monotonic timeline that stamps samples."""

    def __init__(self, clock: Clock, tolerance_s: float = CLOCK_STEP_TOLERANCE_S) -> None:
        self.clock, self.tolerance_s = clock, tolerance_s
        self.offset_s = clock.wall() - clock.now()

    def check(self) -> float | None:
        """The size of a new step (wall clock minus timeline, seconds), or None."""
        offset = self.clock.wall() - self.clock.now()
        step = offset - self.offset_s
        if abs(step) < self.tolerance_s:
            return None
        self.offset_s = offset
        return step

    def reanchor(self) -> None:
        self.clock.reanchor()
        self.offset_s = self.clock.wall() - self.clock.now()


class Daemon:
    """Owns the writer, the command lock and the feature services; the API and the CLI call its methods."""

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
        # A config handed in directly (tests, the demo) passes the same schema as a site file.
        self.config = completed(config, source="given to the daemon") if config is not None else defaults()
        self.ble_backend = ble_backend
        self.scanner_backend = scanner_backend
        self.operator = operator or self.config["operator"]["name"]
        self.capture = CaptureWriter(capture_path) if capture_path else None
        self.writer = Writer(self.db_path, flush_interval_s=self.config["storage"]["flush_interval_s"],
                             synchronous=self.config["storage"].get("synchronous", "FULL"),
                             backlog_samples=int(self.config["storage"]["backlog_samples"]),
                             memory_samples=int(self.config["storage"]["memory_samples"]))
        #: Serialises the commands that start and stop sessions (and shutdown).
        self.lock = asyncio.Lock()
        self.started_utc = utc_iso(self.clock.now())
        # Extension points for feature packages (collector/features.py).
        self.services: dict[str, Any] = {}
        self.listeners: list[Callable[[str, dict[str, Any]], None]] = []
        self.status_providers: dict[str, Callable[[], Any]] = {}
        self.shutdown_hooks: list[Callable[[], Awaitable[None]]] = []
        self.startup_hooks: list[Callable[[], Awaitable[Any]]] = []  # awaited by resume_open_sessions()
        #: Facts stored in the settings of every live session opened (e.g. the clock's synchronisation).
        self.session_facts: dict[str, Callable[[], Any]] = {}
        self.closing = False
        self.clock_watch = ClockStepWatch(self.clock)

    @property
    def nights(self) -> Any:
        """The overnight oximetry service (``services['oximetry']``)."""
        return self.services["oximetry"]

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
        """A new read connection (WAL: it sees every committed row); the caller closes it.

        The writer created the file at start: if it is gone now it was deleted under us, and a
        reader must never create an empty one in its place.
        """
        if not self.db_path.exists():
            raise StorageError(self.writer.lost.message if self.writer.lost else
                               f"the database file {self.db_path} is missing; restore it from its backup and restart the collector")
        return open_db(self.db_path, check_same_thread=False).conn

    def facts_for_session(self) -> dict[str, Any]:
        """What every live session records about the machine it was recorded on."""
        return {name: fact() for name, fact in self.session_facts.items()}

    def recording(self) -> bool:
        """Whether any service has a session recording now."""
        return any(getattr(svc, "recorders", None) for svc in self.services.values())

    def check_clock(self) -> float | None:
        """Record a step of the host clock; called about once a second while sessions record.

        Samples keep their monotonic timeline, so a step never changes analysed time.  The
        step is an event of every open session (and an audit row) with its size, and the
        night's report asks for review.  With nothing recording the clock is re-anchored.
        """
        step = self.clock_watch.check()
        if step is None:
            if not self.recording() and self.clock_watch.offset_s != 0.0:
                self.clock_watch.reanchor()
            return None
        now = self.clock.now()
        detail = {"step_s": round(step, 3), "wall_utc": utc_iso(self.clock.wall()), "timeline_utc": utc_iso(now)}
        log.warning("host clock stepped by %+.1f s (wall %s, samples stay on the monotonic timeline %s)",
                    step, detail["wall_utc"], detail["timeline_utc"])

        def write(c: sqlite3.Connection) -> None:
            for s in repo.list_sessions(c, state="open"):
                repo.add_event(c, s["id"], t_ms=int(round(now * 1000)), kind="clock_step", detail=detail)
            repo.audit.append(c, at=now, actor="collector", action="clock_step", new=detail)

        self.writer.submit(write)
        self.notify("clock_step", detail)
        if not self.recording():
            self.clock_watch.reanchor()
        return step

    # -- startup ---------------------------------------------------------------------------
    async def resume_open_sessions(self) -> list[int]:
        """Sessions that were open when the daemon stopped (or was killed) continue recording.

        Each service resumes its own kind (``startup_hooks``); the ids of the resumed sessions are returned.
        """
        resumed: list[int] = []
        for hook in self.startup_hooks:
            try:
                ids = await hook()
            except Exception:
                log.exception("startup hook failed")
                continue
            if isinstance(ids, list):
                resumed += ids
        return resumed

    # -- commands --------------------------------------------------------------------------
    async def add_subject(self, subject_id: str, *, by: str | None = None) -> dict[str, Any]:
        now = self.clock.now()
        return await self.write(lambda c: repo.add_subject(c, subject_id, by=by or self.operator, at=now,
                                                           pattern=self.config["site"]["subject_id_pattern"]))

    async def scan(self, timeout_s: float = 5.0) -> list[dict[str, Any]]:
        return await self.nights.scan(timeout_s)

    async def start_night(
        self, subject_id: str, oximeter: str, *, protocol: str | None = None, by: str | None = None, origin: str | None = None
    ) -> dict[str, Any]:
        """Start recording a night (see :meth:`collector.oximetry.service.NightService.start`)."""
        return await self.nights.start(subject_id, oximeter, protocol=protocol, by=by, origin=origin)

    async def stop_session(self, session_id: int, *, by: str | None = None, reason: str | None = None) -> dict[str, Any]:
        """Stop any session: its service ends the recording, the row is closed, then the service finishes it."""
        by = by or self.operator
        if self.closing:
            raise Conflict("the collector daemon is stopping; the session will be saved as interrupted - stop it after the next start")
        async with self.lock:
            now = self.clock.now()
            for service in self.services.values():  # the bed's oximeter, a spirometer's serial port
                hook = getattr(service, "stop_session_hook", None)
                if hook is not None:
                    await hook(session_id, now)
            row = await self.write(lambda c: repo.close_session(c, session_id, state="stopped", by=by, at=now, reason=reason))
        await self.flush()
        info = self.session_info(row["id"])
        for service in self.services.values():  # e.g. a night's final report
            closed = getattr(service, "session_closed_hook", None)
            if closed is not None:
                info.update(await closed(row))
        return info

    def session_info(self, session_id: int) -> dict[str, Any]:
        conn = self.open_reader()
        try:
            row = repo.get_session(conn, session_id)
        finally:
            conn.close()
        for service in self.services.values():
            live = getattr(service, "live_status", None)
            status = live(session_id) if live is not None else None
            if status is not None:
                row["live"] = status
        return row

    def status(self) -> dict[str, Any]:
        now = self.clock.now()
        return {
            "now_utc": utc_iso(now),
            "daemon_started_utc": self.started_utc,
            "db": str(self.db_path),
            "writer": {"samples_committed": self.writer.samples_committed, "commits": self.writer.commits,
                       "failed": str(self.writer.failed) if self.writer.failed else None,
                       "recovery_journal": str(self.writer.journal) if self.writer.journal else None,
                       "samples_journaled": self.writer.samples_journaled,
                       "unwritten_samples": self.writer.unwritten, "backlog": self.writer.backlog,
                       "spilled_samples": self.writer.spill.rows + len(self.writer.spill.tail),
                       "spill_file": str(self.writer.spill.path) if self.writer.spilling else None},
            **{name: self._provide(name, provider) for name, provider in self.status_providers.items()},
        }

    @staticmethod
    def _provide(name: str, provider: Callable[[], Any]) -> Any:
        """One feature's part of the status; a failing part says why instead of hiding the rest (e.g. the writer's failure)."""
        try:
            return provider()
        except CollectorError as exc:
            return {"error": exc.message}
        except Exception as exc:
            log.exception("status of %s failed", name)
            return {"error": f"{type(exc).__name__}: {exc}"}

    async def shutdown(self) -> None:
        """Flush and keep every open session as ``interrupted``; they resume on the next start.

        New commands are refused from here on; a command already running finishes first (the lock).
        """
        if self.closing:
            return
        self.closing = True
        async with self.lock:
            for hook in self.shutdown_hooks:
                try:
                    await hook()
                except Exception:
                    log.exception("shutdown hook failed")
        await self.flush()
        self.writer.close()
        if self.capture is not None:
            self.capture.close()
