"""Alerts that need a person, evaluated by the daemon itself (not by whoever looks).

An alert is raised when its condition holds (device disconnected for more than N s,
finger out, T90 above the threshold, no sample for N s, disk almost full, storage
failed) and stays until an operator acknowledges it, even if the condition cleared
meanwhile: a tired technician must not miss a 2-minute disconnect because it fixed
itself.  Each alert is a row of ``alerts`` (collector/ward/store.py) with the moments it
was raised, cleared and acknowledged, each audited; an alert both cleared and
acknowledged is resolved and leaves the screen.  If the condition comes back while the
alert is still unacknowledged, the same alert is raised again and counts the repeat (one row
per bed and kind: a silent link's hundred reconnects are "116 times since 03:00", not 116
rows); once it was acknowledged, the next occurrence is a new alert.  :class:`AlertService` evaluates every ``[web] alert_check_s`` on the
daemon's clock (virtual in simulations), so alerts exist with no page open.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from dataclasses import dataclass
from datetime import tzinfo
from typing import Any

from collector.clock import parse_utc, utc_iso
from collector.errors import NotFound
from collector.localtime import local_time, site_zone
from collector.storage import repo
from collector.ward import messages as msg
from collector.ward import store
from drivers.protocols.common import Flag

log = logging.getLogger(__name__)

FINGER_FLAGS = Flag.FINGER_OUT | Flag.PROBE_UNPLUGGED | Flag.SENSOR_DISPLACED

DEFAULTS: dict[str, float] = {
    "alert_disconnected_s": 30.0,   # link down longer than this
    "alert_no_sample_s": 60.0,      # connected, but no sample for this long
    "alert_finger_out_s": 15.0,     # sensor off the finger for this long
    "disk_min_free_mb": 1024.0,     # free space on the database's disk below this
    "alert_check_s": 2.0,           # the daemon evaluates the conditions this often
}

KIND_TITLES = msg.KIND_TITLES
# One condition that holds: (subject_id, message id, parameters)
Holding = tuple[str | None, str, dict[str, str]]


@dataclass
class Alert:
    id: int
    kind: str
    session_id: int | None
    subject_id: str | None
    message: str  # English
    raised_t: float
    cleared_t: float | None = None
    acknowledged_by: str | None = None
    acknowledged_t: float | None = None
    message_id: str | None = None  # None: a row from before message ids (its English message is all there is)
    params: dict[str, str] | None = None
    count: int = 1                      # raises in this run (first raise + repeats before acknowledgement)
    last_raised_t: float | None = None  # the latest raise; None: the first one

    @property
    def active(self) -> bool:
        return self.cleared_t is None

    @property
    def state(self) -> str:
        return store.alert_state({"acknowledged_utc": self.acknowledged_t, "cleared_utc": self.cleared_t})

    def as_dict(self, tz: tzinfo | None = None) -> dict[str, Any]:
        def iso(t: float | None) -> str | None:
            return utc_iso(t) if t is not None else None

        last = self.last_raised_t if self.last_raised_t is not None else self.raised_t
        local: dict[str, Any] = {} if tz is None else {
            "raised_local": local_time(self.raised_t, tz, seconds=True),
            "last_raised_local": local_time(last, tz, seconds=True),
            "cleared_local": local_time(self.cleared_t, tz, seconds=True) or None,
            "acknowledged_local": local_time(self.acknowledged_t, tz, seconds=True) or None,
        }
        return {**local,
            "id": self.id, "kind": self.kind, "title": KIND_TITLES.get(self.kind, self.kind),
            "session_id": self.session_id, "subject_id": self.subject_id, "message": self.message,
            "message_id": self.message_id, "params": self.params or {},
            "state": self.state, "active": self.active, "raised_utc": utc_iso(self.raised_t),
            "cleared_utc": iso(self.cleared_t), "acknowledged_by": self.acknowledged_by,
            "acknowledged_utc": iso(self.acknowledged_t), "raise_count": self.count, "last_raised_utc": utc_iso(last),
        }

    @classmethod
    def from_row(cls, r: dict[str, Any]) -> Alert:
        def t(s: str | None) -> float | None:
            return parse_utc(s) if s else None

        return cls(r["id"], r["kind"], r["session_id"], r["subject_id"], r["message"], parse_utc(r["raised_utc"]),
                   t(r["cleared_utc"]), r["acknowledged_by"], t(r["acknowledged_utc"]), r.get("message_id"),
                   msg.params_of(r), int(r.get("raise_count") or 1), t(r.get("last_raised_utc")))


class AlertEngine:
    """The alerts not yet resolved, mirrored from the ``alerts`` table (the daemon is its only writer)."""

    def __init__(self, daemon: Any, settings: dict[str, Any]) -> None:
        self.daemon = daemon
        self.settings = {k: float(settings.get(k, v)) for k, v in DEFAULTS.items()}
        self.tz = site_zone(daemon.config)  # people read local time; the rows stay UTC
        self.alerts: dict[int, Alert] = {}
        # The active (not cleared) alert of each (kind, session) key: the check touches only these, so
        # a day of cleared but unacknowledged alerts (a silent link's reconnects) never slows it.
        self._active: dict[tuple[str, int | None], Alert] = {}
        # The latest unacknowledged alert of each key (active or cleared): a repeat re-raises it.
        self._open: dict[tuple[str, int | None], Alert] = {}
        self._next_id: int | None = None
        self._finger_since: dict[int, float] = {}
        self._down_seen: dict[int, float] = {}
        self._up_since: dict[int, float] = {}  # back up after a drop: no_sample counts from the reconnect

    def _load(self) -> None:
        """Alerts still showing when the daemon last stopped stay showing (same ids)."""
        if self._next_id is not None:
            return
        conn = self.daemon.open_reader()
        try:
            self._next_id = store.next_alert_id(conn)
            rows = store.list_alerts(conn)
        finally:
            conn.close()
        self.alerts = {r["id"]: Alert.from_row(r) for r in rows}
        self._active, self._open = {}, {}
        for alert in sorted(self.alerts.values(), key=lambda a: a.id):
            if alert.active:
                self._active[(alert.kind, alert.session_id)] = alert
            if alert.acknowledged_by is None:
                self._open[(alert.kind, alert.session_id)] = alert

    # -- conditions ---------------------------------------------------------------------------
    def _conditions(self, now: float) -> dict[tuple[str, int | None], Holding]:
        """(kind, session_id) -> (subject_id, message id, parameters) for every condition that holds now."""
        s = self.settings
        out: dict[tuple[str, int | None], Holding] = {}
        recorders = getattr(self.daemon.services.get("oximetry"), "recorders", {})
        for sid, rec in list(recorders.items()):
            subject = rec.subject_id
            last = rec.pipeline.last_sample_t
            started = parse_utc(rec.started_utc)
            quiet_s = now - (last if last is not None else started)
            if rec.link.state != "connected":
                self._up_since.pop(sid, None)
                seen = self._down_seen.setdefault(sid, now)
                down_s = now - (last if last is not None else seen)
                if down_s > s["alert_disconnected_s"] and rec.link.state == "adapter_off":
                    out[("device_disconnected", sid)] = (subject, msg.ADAPTER_OFF, {"seconds": f"{down_s:.0f}"})
                elif down_s > s["alert_disconnected_s"]:
                    out[("device_disconnected", sid)] = (
                        subject, msg.NO_LINK, {"seconds": f"{down_s:.0f}",
                                               "state_text": msg.LINK_STATE_TEXT.get(rec.link.state, rec.link.state)})
            else:
                if self._down_seen.pop(sid, None) is not None:
                    self._up_since[sid] = now
                quiet_s = now - max(last if last is not None else started, self._up_since.get(sid, started))
                if quiet_s > s["alert_no_sample_s"]:
                    out[("no_sample", sid)] = (subject, msg.NO_SAMPLE, {"seconds": f"{quiet_s:.0f}"})
            reading = rec.pipeline.last_reading
            if reading is not None and reading.flags & FINGER_FLAGS and rec.link.state == "connected":
                since = self._finger_since.setdefault(sid, last if last is not None else now)
                if now - since >= s["alert_finger_out_s"]:
                    out[("finger_out", sid)] = (subject, msg.FINGER_OUT, {"seconds": f"{now - since:.0f}"})
            else:
                self._finger_since.pop(sid, None)
            live = rec.live.snapshot if rec.live is not None else None
            if live is not None and live.above_threshold:
                ox = self.daemon.config["oximetry"]
                out[("t90_above_threshold", sid)] = (
                    subject, msg.T90_ABOVE, {"t90_pct": f"{live.t90_pct:.2f}", "threshold_pct": f"{ox['t90_threshold_pct']:g}",
                                             "analysed_h": f"{live.analysed_s / 3600:.1f}",
                                             "min_analysed_h": f"{ox['t90_alert_min_analysed_h']:g}"})
        for sid in set(self._down_seen) - set(recorders):
            self._down_seen.pop(sid, None)
        for sid in set(self._up_since) - set(recorders):
            self._up_since.pop(sid, None)
        free_mb = self.disk_free_mb()
        if free_mb is not None and free_mb < s["disk_min_free_mb"]:
            out[("disk_almost_full", None)] = (None, msg.DISK_LOW, {"free_mb": f"{free_mb:.0f}"})
        if getattr(self.daemon.writer, "spilling", False):
            out[("storage_backlog", None)] = (None, msg.STORAGE_SPILLING, {"unwritten": str(self.daemon.writer.unwritten),
                                                                          "file": self.daemon.writer.spill.path.name})
        elif getattr(self.daemon.writer, "backlog", False):
            out[("storage_backlog", None)] = (None, msg.STORAGE_BEHIND, {"unwritten": str(self.daemon.writer.unwritten)})
        if getattr(self.daemon.writer, "failed", None):
            out[("storage_failed", None)] = (None, msg.STORAGE_FAILED, {"error": str(self.daemon.writer.failed)})
        return out

    def disk_free_mb(self) -> float | None:
        try:
            return shutil.disk_usage(self.daemon.db_path.parent).free / 1e6
        except OSError:
            return None

    # -- lifecycle ------------------------------------------------------------------------------
    def evaluate(self) -> list[dict[str, Any]]:
        """Raise, update and clear alerts (rows written through the writer); return what shows now."""
        self.check()
        return self.visible()

    def check(self) -> None:
        """Raise, update and clear alerts; what the daemon runs every alert_check_s (it builds no list)."""
        self._load()
        now = self.daemon.clock.now()
        holding = self._conditions(now)
        for key, alert in [(k, a) for k, a in self._active.items() if k not in holding]:
            self._clear(alert, now)
        for key, (subject, message_id, params) in holding.items():
            current = self._active.get(key)
            if current is None:
                earlier = self._open.get(key)
                if earlier is not None and earlier.acknowledged_by is None and not earlier.active:
                    self._repeat(earlier, message_id, params, now)
                else:
                    self._raise(key, subject, message_id, params, now)
            elif current.acknowledged_by is None:
                current.message_id, current.params = message_id, params
                current.message = msg.render(message_id, params, "", "en")

    def visible(self) -> list[dict[str, Any]]:
        """Alerts not yet resolved, newest first (no evaluation: reading never changes anything)."""
        return [a.as_dict(self.tz) for a in sorted(self.alerts.values(), key=lambda a: -a.id)]

    def _submit(self, fn: Any) -> None:
        if self.daemon.writer.failed:  # nothing can be written; the storage alert itself shows from memory
            return
        self.daemon.writer.submit(fn)

    def _raise(self, key: tuple[str, int | None], subject: str | None, message_id: str, params: dict[str, str],
               now: float) -> None:
        kind, sid = key
        assert self._next_id is not None
        message = msg.render(message_id, params, "", "en")
        alert = Alert(self._next_id, kind, sid, subject, message, now, message_id=message_id, params=params)
        self._next_id += 1
        self.alerts[alert.id] = alert
        self._active[key] = alert
        self._open[key] = alert
        detail = {"alert_id": alert.id, "alert": kind, "message": message, "message_id": message_id, "params": params}
        log.warning("alert %s raised: %s %s", alert.id, kind, f"session {sid}" if sid else "")

        def write(c: Any) -> None:
            store.raise_alert(c, alert_id=alert.id, kind=kind, session_id=sid, subject_id=subject, message=message, at=now,
                              message_id=message_id, params=params)
            if sid is not None:
                repo.add_event(c, sid, t_ms=int(round(now * 1000)), kind="alert_raised", detail=detail)

        self._submit(write)
        self.daemon.notify("alert_raised", alert.as_dict(self.tz))

    def _repeat(self, alert: Alert, message_id: str, params: dict[str, str], now: float) -> None:
        """The condition of a cleared, unacknowledged alert is back: the same alert again, counted and audited."""
        key = (alert.kind, alert.session_id)
        message = msg.render(message_id, params, "", "en")
        alert.cleared_t, alert.message, alert.last_raised_t = None, message, now
        alert.message_id, alert.params = message_id, params
        alert.count += 1
        self._active[key] = alert
        sid, alert_id = alert.session_id, alert.id
        detail = {"alert_id": alert_id, "alert": alert.kind, "message": message, "message_id": message_id,
                  "params": params, "raise_count": alert.count}
        log.warning("alert %s raised again (%d times): %s %s", alert_id, alert.count, alert.kind,
                    f"session {sid}" if sid else "")

        def write(c: Any) -> None:
            store.repeat_alert(c, alert_id, message=message, message_id=message_id, params=params, at=now)
            if sid is not None:
                repo.add_event(c, sid, t_ms=int(round(now * 1000)), kind="alert_raised", detail=detail)

        self._submit(write)
        self.daemon.notify("alert_raised", alert.as_dict(self.tz))

    def _clear(self, alert: Alert, now: float) -> None:
        alert.cleared_t = now
        if self._active.get((alert.kind, alert.session_id)) is alert:
            del self._active[(alert.kind, alert.session_id)]
        alert_id = alert.id
        self._submit(lambda c: store.clear_alert(c, alert_id, at=now))
        if alert.acknowledged_by is not None:
            del self.alerts[alert.id]

    async def acknowledge(self, alert_id: int, *, by: str, note: str | None = None) -> dict[str, Any]:
        self._load()
        now = self.daemon.clock.now()
        try:
            row = await self.daemon.write(lambda c: store.acknowledge(c, alert_id, by=by, at=now, note=note))
        except NotFound:
            raise NotFound(f"no alert {alert_id}; list them with: collector alerts --all") from None
        alert = self.alerts.get(alert_id) or Alert.from_row(row)
        alert.acknowledged_by, alert.acknowledged_t = by, now
        if self._open.get((alert.kind, alert.session_id)) is alert:
            del self._open[(alert.kind, alert.session_id)]  # acknowledged: the next occurrence is a new alert
        if alert.active:
            self.alerts[alert_id] = alert
            self._active.setdefault((alert.kind, alert.session_id), alert)
        else:
            self.alerts.pop(alert_id, None)
        return alert.as_dict(self.tz)


class AlertService:
    """Evaluates the alerts on the daemon's clock while it runs."""

    def __init__(self, daemon: Any, engine: AlertEngine) -> None:
        self.daemon, self.engine = daemon, engine
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> list[int]:
        if self.task is None:
            self.task = asyncio.create_task(self._loop(), name="alerts")
        return []

    async def _loop(self) -> None:
        interval = self.engine.settings["alert_check_s"]
        while not self.daemon.closing:
            try:
                self.engine.check()
            except Exception:  # an alert bug must never stop recording; it is logged and tried again
                log.exception("evaluating alerts failed")
            if self.daemon.recording():
                await self.daemon.clock.sleep(interval)  # on the night's clock (virtual in simulations)
            else:
                # Nothing records: real time, so an idle simulated ward never keeps a virtual clock running.
                await asyncio.sleep(interval)

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass
            self.task = None
