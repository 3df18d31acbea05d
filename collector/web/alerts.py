"""Alerts that need a person, derived from the daemon's live state.

An alert is raised when its condition holds (device disconnected for more than N s,
finger out, T90 above the threshold, no sample for N s, disk almost full, storage
failed) and stays -- visible and audible on the page -- until an operator
acknowledges it, even if the condition cleared meanwhile: a tired technician must
not miss a 2-minute disconnect because it fixed itself.  An acknowledged alert
disappears once its condition clears; if the condition comes back, a new alert is
raised.  Raising writes an ``alert_raised`` event row; acknowledging writes an audit
row naming the operator.  Times are the daemon's clock (virtual in simulations).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from typing import Any

from collector.clock import parse_utc, utc_iso
from collector.errors import Conflict, NotFound
from collector.storage import audit, repo
from drivers.protocols.common import Flag

FINGER_FLAGS = Flag.FINGER_OUT | Flag.PROBE_UNPLUGGED | Flag.SENSOR_DISPLACED

DEFAULTS: dict[str, float] = {
    "alert_disconnected_s": 30.0,   # link down longer than this
    "alert_no_sample_s": 60.0,      # connected, but no sample for this long
    "alert_finger_out_s": 15.0,     # sensor off the finger for this long
    "disk_min_free_mb": 1024.0,     # free space on the database's disk below this
}

KIND_TITLES = {
    "device_disconnected": "Device disconnected",
    "no_sample": "No samples",
    "finger_out": "Finger out",
    "t90_above_threshold": "T90 above threshold",
    "disk_almost_full": "Disk almost full",
    "storage_backlog": "Storage behind",
    "storage_failed": "Storage failed",
}


@dataclass
class Alert:
    id: int
    kind: str
    session_id: int | None
    subject_id: str | None
    message: str
    raised_t: float
    active: bool = True
    acknowledged_by: str | None = None
    acknowledged_t: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "kind": self.kind, "title": KIND_TITLES.get(self.kind, self.kind),
            "session_id": self.session_id, "subject_id": self.subject_id, "message": self.message,
            "raised_utc": utc_iso(self.raised_t), "active": self.active,
            "acknowledged_by": self.acknowledged_by,
            "acknowledged_utc": utc_iso(self.acknowledged_t) if self.acknowledged_t is not None else None,
        }


class AlertEngine:
    def __init__(self, daemon: Any, settings: dict[str, Any]) -> None:
        self.daemon = daemon
        self.settings = {k: float(settings.get(k, v)) for k, v in DEFAULTS.items()}
        self.alerts: dict[int, Alert] = {}
        self._next_id = 1
        self._finger_since: dict[int, float] = {}
        self._down_seen: dict[int, float] = {}

    # -- conditions ---------------------------------------------------------------------------
    def _conditions(self, now: float) -> dict[tuple[str, int | None], tuple[str | None, str]]:
        """(kind, session_id) -> (subject_id, message) for every condition that holds now."""
        s = self.settings
        out: dict[tuple[str, int | None], tuple[str | None, str]] = {}
        for sid, rec in list(self.daemon.nights.recorders.items()):
            subject = rec.subject_id
            last = rec.pipeline.last_sample_t
            started = parse_utc(rec.started_utc)
            quiet_s = now - (last if last is not None else started)
            if rec.link.state != "connected":
                seen = self._down_seen.setdefault(sid, now)
                down_s = now - (last if last is not None else seen)
                if down_s > s["alert_disconnected_s"]:
                    out[("device_disconnected", sid)] = (
                        subject, f"no link to {rec.target.spec} for {down_s:.0f} s (now {rec.link.state}): check the device "
                                 "is on, in range and charged")
            else:
                self._down_seen.pop(sid, None)
                if quiet_s > s["alert_no_sample_s"]:
                    out[("no_sample", sid)] = (subject, f"no sample from {rec.target.spec} for {quiet_s:.0f} s although connected")
            reading = rec.pipeline.last_reading
            if reading is not None and reading.flags & FINGER_FLAGS and rec.link.state == "connected":
                since = self._finger_since.setdefault(sid, last if last is not None else now)
                if now - since >= s["alert_finger_out_s"]:
                    out[("finger_out", sid)] = (subject, f"sensor off the finger for {now - since:.0f} s: put the probe back on")
            else:
                self._finger_since.pop(sid, None)
            live = rec.live.snapshot if rec.live is not None else None
            if live is not None and live.above_threshold:
                threshold = self.daemon.config["oximetry"]["t90_threshold_pct"]
                out[("t90_above_threshold", sid)] = (
                    subject, f"provisional T90 {live.t90_pct:.2f} % is above the {threshold:g} % criterion")
        for sid in set(self._down_seen) - set(self.daemon.nights.recorders):
            self._down_seen.pop(sid, None)
        free_mb = self.disk_free_mb()
        if free_mb is not None and free_mb < s["disk_min_free_mb"]:
            out[("disk_almost_full", None)] = (None, f"only {free_mb:.0f} MB free next to the database; free space now or recording stops")
        if getattr(self.daemon.writer, "backlog", False):
            out[("storage_backlog", None)] = (None, f"the database writer is {self.daemon.writer.unwritten} samples behind: "
                                                    "the disk is too slow or stalled; nothing is lost yet, check the disk")
        if getattr(self.daemon.writer, "failed", None):
            out[("storage_failed", None)] = (None, f"the database writer failed ({self.daemon.writer.failed}); samples are not being saved")
        return out

    def disk_free_mb(self) -> float | None:
        try:
            return shutil.disk_usage(self.daemon.db_path.parent).free / 1e6
        except OSError:
            return None

    # -- lifecycle ------------------------------------------------------------------------------
    def evaluate(self) -> list[dict[str, Any]]:
        """Raise, update and retire alerts; return what the page shows (newest first)."""
        now = self.daemon.clock.now()
        holding = self._conditions(now)
        open_by_key = {(a.kind, a.session_id): a for a in self.alerts.values()}
        for key, (subject, message) in holding.items():
            alert = open_by_key.get(key)
            if alert is None:
                self._raise(key, subject, message, now)
            else:
                alert.active = True
                if alert.acknowledged_by is None:
                    alert.message = message
        for key, alert in open_by_key.items():
            if key not in holding:
                alert.active = False
                if alert.acknowledged_by is not None:
                    del self.alerts[alert.id]
        return self.visible()

    def visible(self) -> list[dict[str, Any]]:
        return [a.as_dict() for a in sorted(self.alerts.values(), key=lambda a: -a.id)]

    def _raise(self, key: tuple[str, int | None], subject: str | None, message: str, now: float) -> None:
        kind, sid = key
        alert = Alert(self._next_id, kind, sid, subject, message, now)
        self._next_id += 1
        self.alerts[alert.id] = alert
        detail = {"alert_id": alert.id, "alert": kind, "message": message}
        self.daemon.writer.submit(lambda c: repo.add_event(c, sid, t_ms=int(round(now * 1000)), kind="alert_raised", detail=detail))

    async def acknowledge(self, alert_id: int, *, by: str, note: str | None = None) -> dict[str, Any]:
        alert = self.alerts.get(alert_id)
        if alert is None:
            raise NotFound(f"no alert {alert_id} is showing (it was acknowledged and has cleared); reload the page")
        if alert.acknowledged_by is not None:
            raise Conflict(f"alert {alert_id} was already acknowledged by {alert.acknowledged_by}")
        now = self.daemon.clock.now()
        await self.daemon.write(lambda c: audit.append(
            c, at=now, actor=by, action="alert_acknowledged", subject_id=alert.subject_id, session_id=alert.session_id,
            new={"alert_id": alert.id, "alert": alert.kind, "message": alert.message, "raised_utc": utc_iso(alert.raised_t)},
            reason=note,
        ))
        alert.acknowledged_by, alert.acknowledged_t = by, now
        if not alert.active:
            del self.alerts[alert.id]
        return alert.as_dict()
