"""One night on one oximeter: link -> reading pipeline -> writer, a gap for every outage.

The recorder owns the BLE link and the pipeline of its bed.  An outage opens a
gap when it starts and closes it when data flows again (not when the link is
up), so a connected but silent link is a gap too.  After a daemon restart the
live figures are rebuilt from what is stored by the live engine's own replay
(:meth:`LiveBurden.replay`), so the provisional T90 continues exactly.

Back-fill: when a PLX device that keeps records (PLX Features bit 2) reconnects
after a gap, the recorder asks its Record Access Control Point for every stored
record before live notifications start (the link holds the virtual clock meanwhile),
maps their device times to host UTC through the clock offset measured at this
reconnect (Current Time read), stores them (:func:`collector.oximetry.store.backfill_gap`,
rules in :mod:`collector.oximetry.backfill`) and rebuilds the live figures from what
is stored, so live and final T90 stay equal.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import datetime as _dt
import logging
import sqlite3
from typing import TYPE_CHECKING, Any, Callable

from bleak.exc import BleakError

from collector.clock import utc_iso
from collector.oximetry import refill
from collector.oximetry.analysis.live import LiveBurden
from collector.oximetry.analysis.report import NightData
from collector.oximetry.live import alert_min_analysed_ms, analysis_config, make_live, snapshot_dict
from collector.oximetry.pipeline import ReadingPipeline
from collector.storage import repo
from drivers.ble.adapters import AdapterSlots
from drivers.ble.link import GattSession, LinkTarget, OximeterLink
from drivers.ble.silence import SilenceWatch
from drivers.protocols import plx
from drivers.protocols.common import DeviceClock, OximeterEvent, OximeterReading, PlxFeatures, RacpReply
from drivers.protocols.registry import PROFILES

if TYPE_CHECKING:
    from collector.daemon import Daemon

log = logging.getLogger(__name__)
RECENT_KEPT = 100  # events and back-fill summaries a bed keeps in memory (the status shows the last 20)


class NightRecorder:
    """One night session on one oximeter: link -> pipeline -> writer, gaps for every outage."""

    def __init__(
        self,
        daemon: Daemon,
        session: dict[str, Any],
        *,
        protocol: str,
        target: LinkTarget,
        resume_from: float | None = None,
        open_gap_id: int | None = None,
        slots: AdapterSlots | None = None,
        silence: SilenceWatch | None = None,
        on_pending: Callable[[], None] | None = None,
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
            self.session_id, protocol, daemon.writer, live=self.live, on_event=self._on_event,
            on_device_event=self._on_device_event, on_stored_record=self._on_stored_record, on_pending=on_pending,
        )
        ble = cfg["ble"]
        self.backfill_enabled = bool(ble["backfill"]) and protocol == "plx"
        self.backfill_timeout_s = float(ble["backfill_timeout_s"])
        self.backfill_tolerance_ms = int(round(float(ble["backfill_grid_tolerance_s"]) * 1000))
        self.clock_offset_ms: int | None = None  # host UTC minus device wall time, measured at this connection
        # The latest back-fill summaries (each is stored in gap_backfills): a bounded memory, not the night's list.
        self.backfills: collections.deque[dict[str, Any]] = collections.deque(maxlen=RECENT_KEPT)
        self._records: list[OximeterReading] | None = None  # collecting a RACP download
        self._racp_done = asyncio.Event()
        self._racp_reply: RacpReply | None = None
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
            connect_attempts=ble["connect_attempts"],
            slots=slots,
            on_setup=self._setup if self.backfill_enabled else None,
            watchdog=silence,
        )
        # The latest events for the status (every event is stored): a day of reconnects must not grow the daemon.
        self.events: collections.deque[dict[str, Any]] = collections.deque(maxlen=RECENT_KEPT)
        # Connections in a row that ended without data: audited as one row with their count
        # (a silent device reconnects all night; a row and a disk sync per attempt grew without bound).
        self._fruitless: dict[str, Any] | None = None
        self._gap_future = None
        self.task: asyncio.Task[None] | None = None
        self.resume_from: float | None = None  # set when the night resumes after the daemon was down
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
        if frames and characteristic in self.link.profile.notify_uuids:
            if self._fruitless is not None:
                self._end_fruitless_run(t, data_resumed=True)
            if self._gap_future is not None:
                self.pipeline.hand_over()  # the sample that ends the outage is stored before the gap closes
                self._close_gap(t)  # an outage ends when data flows again, not when the link is up
        return frames

    def _on_device_event(self, ev: OximeterEvent) -> None:
        if isinstance(ev, DeviceClock):
            self.clock_offset_ms = int(round((ev.t - ev.device_s) * 1000))
        elif isinstance(ev, RacpReply) and self._records is not None and ev.done:
            self._racp_reply = ev
            self._racp_done.set()

    def _on_stored_record(self, r: OximeterReading) -> None:
        if self._records is not None:
            self._records.append(r)
        else:
            log.info("session %s: a record from device memory arrived outside a back-fill; ignored", self.session_id)

    # -- back-fill from device memory ------------------------------------------------------------
    async def _setup(self, gatt: GattSession) -> None:
        """After a gap: download the device's stored records and fill the gap (before live data flows)."""
        offset, self.clock_offset_ms = self.clock_offset_ms, None  # measured afresh at every connection
        features = getattr(self.pipeline.parser, "features", None)
        gap = self._gap_future
        if gap is None or not isinstance(features, PlxFeatures) or not features.has_storage:
            return
        if not (gatt.has(plx.RACP_UUID) and gatt.has(plx.PLX_SPOT_CHECK_UUID)):
            return
        now = self.daemon.clock.now()
        if offset is None:
            self._note_backfill_skipped(now, "the device did not tell its clock (no Current Time): its records cannot be placed")
            return
        self._records, self._racp_reply = [], None
        self._racp_done = asyncio.Event()
        failure: str | None = None
        try:
            await gatt.subscribe(plx.PLX_SPOT_CHECK_UUID)
            await gatt.subscribe(plx.RACP_UUID)
            await gatt.write(plx.RACP_UUID, plx.encode_racp_report_all())
            await gatt.wait(self._racp_done, self.backfill_timeout_s)
            reply = self._racp_reply
            if reply is not None and not reply.ok and not reply.no_records:
                failure = f"the device answered RACP code {reply.code}"
        except asyncio.TimeoutError:
            failure = f"the record download did not finish within {self.backfill_timeout_s:g} s"
            try:  # stop the device sending: what arrived is stored, the rest stays in its memory
                await gatt.write(plx.RACP_UUID, plx.encode_racp_abort())
            except (BleakError, OSError, EOFError) as exc:
                log.info("session %s: RACP abort failed: %s", self.session_id, exc)
        except (BleakError, OSError, EOFError) as exc:
            failure = f"the record download failed: {exc}"
        records, self._records = self._records, None
        # The download's end: every record up to here is the device's; live readings follow (replay uses the same time).
        end = self._racp_reply.t if self._racp_reply is not None else self.daemon.clock.now()
        await self._store_backfill(gap, records, offset, end, failure)

    def _note_backfill_skipped(self, t: float, why: str) -> None:
        log.warning("session %s: no back-fill: %s", self.session_id, why)
        self.daemon.writer.submit(lambda c: repo.add_event(c, self.session_id, t_ms=int(round(t * 1000)),
                                                            kind="gap_backfill_skipped", detail={"reason": why}))

    async def _store_backfill(self, gap: concurrent.futures.Future[int], records: list[OximeterReading], offset_ms: int,
                              now: float, failure: str | None) -> None:
        fut = refill.submit(self.pipeline, gap, records, clock_offset_ms=offset_ms, reconnect_t=now,
                            session_start_t=_utc_epoch(self.started_utc), interval_s=self.link.profile.expected_period_s,
                            tolerance_ms=self.backfill_tolerance_ms, failure=failure)
        try:
            summ, data = await asyncio.wrap_future(fut)
        except Exception as exc:  # storage failed: the night goes on, the gap stays a gap, the device keeps its records
            log.error("session %s: the back-fill could not be stored (%s); the gap stays", self.session_id, exc)
            self.daemon.notify("backfill_failed", {"session_id": self.session_id, "subject_id": self.subject_id,
                                                   "error": str(exc)})
            return
        self.backfills.append(summ)
        log.info("session %s: gap back-fill %s: %s of %s records fitted", self.session_id, summ["status"], summ["fitted"], summ["received"])
        self.live = refill.rebuild_live(self.pipeline, summ, data, analysis_config(self.daemon.config))

    def _on_connected(self, t: float, info: dict[str, str]) -> None:
        if self.daemon.capture is not None:
            self.daemon.capture.event(t, self.target.spec, self.protocol, "connected")
        address = info.get("address") or self.target.spec
        if self._fruitless is not None:
            # One more attempt of a run without data: counted, audited once when the run ends.
            self._fruitless["connects"] += 1
            self._fruitless["info"] = info
            return

        def write(conn: sqlite3.Connection) -> None:
            self.device_id = repo.upsert_device(
                conn, kind="oximeter", protocol=self.protocol, address=address, at=t, name=info.get("name"),
                model=info.get("model"), serial_number=info.get("serial_number"), firmware=info.get("firmware"),
            )
            repo.audit.append(
                conn, at=t, actor="collector", action="device_connected", subject_id=self.subject_id,
                session_id=self.session_id, new={k: v for k, v in info.items() if k != "address"},
            )

        self.daemon.writer.submit(write, retry=True)

    def _on_lost(self, t: float, cause: str, last_frame_t: float | None) -> None:
        start = last_frame_t if cause == "watchdog_silence" and last_frame_t is not None else t
        if self.daemon.capture is not None:
            self.daemon.capture.event(start, self.target.spec, self.protocol, "lost", cause)
        self.pipeline.interrupt(start, cause)
        self._open_gap(start, cause, None)
        if self.link.connection_frames == 0 and cause != "recorder_error":
            if self._fruitless is not None:
                self._fruitless["lost"] += 1
                self._fruitless["last_t"] = t
                self._fruitless["cause"] = cause
                return
            # The first connection of a run that brought no data: audited now, the rest counted.
            self._fruitless = {"first_t": t, "last_t": t, "connects": 0, "lost": 1, "cause": cause, "info": None}

        def write(conn: sqlite3.Connection) -> None:
            repo.audit.append(
                conn, at=t, actor="collector", action="device_lost", subject_id=self.subject_id,
                session_id=self.session_id, new={"cause": cause},
            )

        self.daemon.writer.submit(write, retry=True)

    def _end_fruitless_run(self, t: float, *, data_resumed: bool) -> None:
        """One audit row for a run of connections without data (and the connection that ended it)."""
        run, self._fruitless = self._fruitless, None
        if run is None or (run["connects"] == 0 and not data_resumed):
            return
        info = run["info"] or {}
        address = info.get("address") or self.target.spec
        summary = {"connections_without_data": run["connects"], "losses": run["lost"], "last_cause": run["cause"],
                   "first_utc": utc_iso(run["first_t"]), "last_utc": utc_iso(run["last_t"]),
                   "ended": "data resumed" if data_resumed else "session stopped"}

        def write(conn: sqlite3.Connection) -> None:
            if data_resumed and info:
                self.device_id = repo.upsert_device(
                    conn, kind="oximeter", protocol=self.protocol, address=address, at=t, name=info.get("name"),
                    model=info.get("model"), serial_number=info.get("serial_number"), firmware=info.get("firmware"),
                )
            repo.audit.append(conn, at=t, actor="collector", action="device_reconnects_without_data",
                              subject_id=self.subject_id, session_id=self.session_id, new=summary)
            if data_resumed:
                repo.audit.append(conn, at=t, actor="collector", action="device_connected", subject_id=self.subject_id,
                                  session_id=self.session_id, new={k: v for k, v in info.items() if k != "address"})

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
            lambda c: repo.open_gap(c, self.session_id, start_ms=start_ms, cause=cause, detail=detail), retry=True
        )

    def _close_gap(self, end: float) -> None:
        fut, self._gap_future = self._gap_future, None
        if fut is None:
            return
        end_ms = int(round(end * 1000))
        # retry: kept in order behind its open_gap when the disk is full, so fut.result() never waits on the writer itself
        self.daemon.writer.submit(lambda c: repo.close_gap(c, fut.result(), end_ms=end_ms), retry=True)

    # -- restart -------------------------------------------------------------------------------
    def restore(self, stored: NightData) -> None:
        """Continue the live figures of a resumed night from its stored samples and breaks."""
        live, _ = LiveBurden.replay(stored, analysis_config(self.daemon.config),
                                   alert_min_analysed_ms=alert_min_analysed_ms(self.daemon.config))  # its alerts were stored at the time
        self.live = self.pipeline.live = live
        self.pipeline.samples = int(stored.t_s.size)
        if stored.t_s.size:
            self.pipeline.last_sample_t = float(stored.t_s[-1])
        if self.resume_from is not None:  # the new daemon_down gap (queued, not yet visible to the read)
            live.interrupt(max(self.resume_from, self.pipeline.last_sample_t or self.resume_from), "daemon_down")

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        self.task = asyncio.create_task(self._supervise(), name=f"night-{self.session_id}")

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
        self._end_fruitless_run(t, data_resumed=False)
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
                       "lost_packets": self.pipeline.lost_packets},
            "link": {"connects": self.link.stats.connects, "disconnects": self.link.stats.disconnects,
                     "watchdog_resets": self.link.stats.watchdog_resets, "last_error": self.link.stats.last_error},
            "live": snap,
            "events": list(self.events)[-20:],
        }


def _utc_epoch(iso: str) -> float:
    t = _dt.datetime.fromisoformat(iso.replace("Z", "+00:00"))
    return (t if t.tzinfo else t.replace(tzinfo=_dt.timezone.utc)).timestamp()
