"""Wires alerts and night notes into the daemon and the API.

``attach`` gives the daemon its alert engine and the service that evaluates it on the
daemon's clock (started at daemon start and at the first night, whichever comes first),
and puts the alerts in ``collector status``.  The routes are the page's and the CLI's.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends, Path as PathParam, Query

from collector.localtime import local_datetime
from collector.users.roles import INVESTIGATOR, TECHNICIAN
from collector.web import models
from collector.web.auth import current_operator
from collector.ward import store
from collector.ward.alerts import DEFAULTS as ALERT_DEFAULTS
from collector.ward.alerts import Alert, AlertEngine, AlertService


def engine_settings(config: dict[str, Any]) -> dict[str, float]:
    web = config.get("web") or {}
    return {k: float(web.get(k, v)) for k, v in ALERT_DEFAULTS.items()}


def attach(daemon: Any) -> AlertService:
    engine = AlertEngine(daemon, engine_settings(daemon.config))
    service = AlertService(daemon, engine)
    daemon.services["alerts"] = service
    daemon.status_providers["alerts"] = engine.visible
    daemon.startup_hooks.append(service.start)
    daemon.shutdown_hooks.append(service.stop)

    def on_event(kind: str, _payload: dict[str, Any]) -> None:
        if kind == "night_started" and service.task is None and not daemon.closing:
            asyncio.get_running_loop().create_task(service.start())

    daemon.listeners.append(on_event)
    return service


def engine_of(daemon: Any) -> AlertEngine:
    service = daemon.services.get("alerts") or attach(daemon)
    return service.engine


def make_router(daemon: Any, auth: Any) -> APIRouter:
    engine = engine_of(daemon)
    router = APIRouter(tags=["alerts and notes"])
    protected = [Depends(auth)]
    writers = [Depends(auth.roles(TECHNICIAN, INVESTIGATOR))]

    def _local(note: dict[str, Any]) -> dict[str, Any]:
        return {**note, "noted_local": local_datetime(note["noted_utc"], engine.tz)}

    @router.get("/alerts", response_model=list[models.AlertOut], dependencies=protected)
    async def list_alerts(all: bool = Query(False, description="also resolved alerts (cleared and acknowledged)"),
                          session_id: int | None = Query(None, ge=1, le=2**62)) -> list[dict[str, Any]]:
        """Alerts the daemon raised: those still showing (unacknowledged ones stay until acknowledged), or all."""
        if not all and session_id is None:
            return engine.visible()
        conn = daemon.open_reader()
        try:
            rows = store.list_alerts(conn, include_resolved=all, session_id=session_id)
        finally:
            conn.close()
        return [{**Alert.from_row(r).as_dict(engine.tz), "ack_note": r["ack_note"]} for r in rows]

    @router.post("/alerts/{alert_id}/ack", response_model=models.AlertOut, dependencies=writers,
                 responses={404: {"description": "no such alert"}, 409: {"description": "already acknowledged"}})
    async def ack_alert(body: models.AckIn, alert_id: int = PathParam(ge=1, le=2**62, description="alert id")) -> dict[str, Any]:
        """Acknowledge an alert; the audit trail records who, when, and the note."""
        by = current_operator.get() or body.by or daemon.operator
        return await engine.acknowledge(alert_id, by=by, note=body.note)

    @router.get("/sessions/{session_id}/notes", response_model=list[models.NoteOut], dependencies=protected)
    async def notes(session_id: int = PathParam(ge=1, le=2**62, description="session id")) -> list[dict[str, Any]]:
        """The night's notes, oldest first."""
        conn = daemon.open_reader()
        try:
            return [_local(n) for n in store.list_notes(conn, session_id)]
        finally:
            conn.close()

    @router.post("/sessions/{session_id}/notes", response_model=models.NoteOut, status_code=201, dependencies=writers,
                 responses={404: {"description": "no such session"}})
    async def add_note(body: models.NoteIn, session_id: int = PathParam(ge=1, le=2**62, description="session id")) -> dict[str, Any]:
        """Note what happened in the night ("patient got up", "probe re-taped"), stamped with the daemon's clock."""
        by = current_operator.get() or daemon.operator
        now = daemon.clock.now()
        return _local(await daemon.write(lambda c: store.add_note(c, session_id, body.text, by=by, at=now)))

    return router
