"""The technician's web page: login, live bed cards over server-sent events, alerts, forms.

Everything the page does goes through the same HTTP+JSON API as the CLI.  This
module wires the feature into the daemon (``attach``), mounts the static page at
``/`` (``install``, called by collector/api.py when it builds the auth dependency)
and adds the page's own API routes (``make_router``).  The static files are plain
HTML/CSS/JS shipped in the package: no build step, no CDN.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any, AsyncIterator

from fastapi import APIRouter, Depends, FastAPI, Query, Request, Response
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException as StarletteHTTPException

from collector.clock import utc_iso
from collector.localtime import local_datetime
from collector.errors import InvalidInput
from collector.i18n import N_
from collector.storage import repo
from collector.web import models
from collector.ward.alerts import DEFAULTS as ALERT_DEFAULTS
from collector.ward.alerts import FINGER_FLAGS
from collector.ward.service import engine_of
from collector.users.roles import ANY_ROLE, INVESTIGATOR, TECHNICIAN
from collector.web.auth import COOKIE_NAME, Auth, LoginThrottle, SessionStore, current_operator, make_auth

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).with_name("static")
WEB_DEFAULTS: dict[str, float] = {
    "session_idle_min": 30.0,   # a login expires after this long without any request (an open page keeps it alive)
    "session_max_h": 12.0,      # and in any case this long after logging in (one night shift)
    "stream_interval_s": 1.0,   # live updates: never more often than once a second
    "max_streams_per_operator": 4.0,  # live-update connections one login may hold open
    "heartbeat_s": 2.0,         # a heartbeat on the live stream this often: the page knows the daemon is there
    **ALERT_DEFAULTS,
}
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}
PAGE_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
            "frame-ancestors 'none'; base-uri 'none'; form-action 'self'")


class SecurityHeaders:
    """Plain ASGI middleware (BaseHTTPMiddleware would buffer the live stream): hardening headers."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        api = scope.get("path", "").startswith("/api/")

        async def send_with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {k.lower() for k, _ in headers}
                extra = dict(SECURITY_HEADERS, **({"Cache-Control": "no-store"} if api else {}))
                headers += [(k.lower().encode(), v.encode()) for k, v in extra.items() if k.lower().encode() not in present]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


class WebService:
    """Per-daemon state of the page: login sessions, login throttle, alerts."""

    def __init__(self, daemon: Any) -> None:
        self.daemon = daemon
        cfg = {**WEB_DEFAULTS, **(daemon.config.get("web") or {})}
        try:
            self.settings = {k: float(v) for k, v in cfg.items() if k in WEB_DEFAULTS}
        except (TypeError, ValueError) as exc:
            raise InvalidInput(f"[web] settings must be numbers ({exc}); fix the config file") from None
        if any(v <= 0 for v in self.settings.values()):
            raise InvalidInput("[web] settings must be positive numbers; fix the config file")
        self.settings["stream_interval_s"] = max(1.0, self.settings["stream_interval_s"])
        self.sessions = SessionStore(daemon.db_path, idle_s=self.settings["session_idle_min"] * 60,
                                     max_s=self.settings["session_max_h"] * 3600)
        self.throttle = LoginThrottle()
        self.streams: dict[str, int] = {}  # open live-update connections per operator
        self.alerts = engine_of(daemon)  # evaluated by the daemon (collector/ward), only shown here
        self.token: str | None = None
        self.closing = asyncio.Event()

    async def shutdown_hook(self) -> None:
        self.closing.set()  # end the live streams, or the HTTP server would wait for them forever

    # -- the live picture ------------------------------------------------------------------------
    def beds(self) -> list[dict[str, Any]]:
        now = self.daemon.clock.now()
        threshold = float(self.daemon.config["oximetry"]["t90_threshold_pct"])
        out = []
        for rec in list(self.daemon.nights.recorders.values()):
            st = rec.status(now)
            live = st.get("live") or {}
            reading = rec.pipeline.last_reading
            info = st.get("device_info") or {}
            out.append({
                "session_id": st["session_id"], "subject_id": st["subject_id"], "protocol": st["protocol"],
                "device": st["device"], "device_name": info.get("name") or info.get("model"),
                "link_state": st["link_state"], "spo2_pct": st["spo2_pct"], "pulse_bpm": st["pulse_bpm"],
                "finger_out": bool(reading is not None and reading.flags & FINGER_FLAGS),
                "samples": st["samples"], "started_utc": st["started_utc"], "last_sample_utc": st["last_sample_utc"],
                "seconds_since_last_sample": st["seconds_since_last_sample"],
                "t90_pct": live.get("t90_pct"), "t90_threshold_pct": threshold,
                "above_threshold": bool(live.get("above_threshold")),
                "analysed_s": float(live.get("analysed_s") or 0.0), "recording_s": float(live.get("recording_s") or 0.0),
                "nadir_spo2": live.get("nadir_spo2"),
            })
        return sorted(out, key=lambda b: b["session_id"])

    def spirometry(self) -> list[dict[str, Any]]:
        """Open spirometry sessions: shown on the page beside the beds, and stoppable there."""
        svc = self.daemon.services.get("spirometry")
        out = []
        for st in (svc.status() if svc is not None else []):
            res = st.get("result") or {}
            out.append({
                "session_id": st["session_id"], "subject_id": st["subject_id"], "protocol": st["protocol"], "model": st.get("model"),
                "link_state": st["link_state"], "started_utc": st["started_utc"],
                "started_local": local_datetime(st["started_utc"], self.alerts.tz),
                "manoeuvres": int(st.get("manoeuvres") or 0), "refused": int(st.get("refused") or 0),
                "valid": res.get("valid"), "fvc_pct_predicted": res.get("fvc_pct_predicted"), "grade_fvc": res.get("grade_fvc"),
            })
        return sorted(out, key=lambda s: s["session_id"])

    def picture(self, operator: str | None) -> dict[str, Any]:
        writer_failed = getattr(self.daemon.writer, "failed", None)
        now = self.daemon.clock.now()
        return {
            "now_utc": utc_iso(now),
            "now_local": local_datetime(now, self.alerts.tz),
            "operator": operator,
            "beds": self.beds(),
            "spirometry": self.spirometry(),
            "alerts": self.alerts.visible(),
            "disk_free_mb": _round(self.alerts.disk_free_mb()),
            "writer_failed": str(writer_failed) if writer_failed else None,
        }


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 1)


def attach(daemon: Any) -> WebService:
    web = WebService(daemon)
    daemon.services["web"] = web
    daemon.shutdown_hooks.append(web.shutdown_hook)
    return web


def _service(daemon: Any) -> WebService:
    return daemon.services.get("web") or attach(daemon)


def install(app: FastAPI, daemon: Any, token: str) -> Auth:
    """Called by collector/api.py: build the auth dependency and serve the page at ``/``."""
    web = _service(daemon)
    web.token = token

    app.add_middleware(SecurityHeaders)

    @app.exception_handler(StarletteHTTPException)
    async def plain_http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        # FastAPI raises Starlette's class for an unparseable body; keep the API's {"error": ...} shape for it too.
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers={"Content-Security-Policy": PAGE_CSP, "Cache-Control": "no-store"})

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return make_auth(token, web.sessions)


# -- routes -----------------------------------------------------------------------------------------
def make_router(daemon: Any, auth: Any) -> APIRouter:
    web = _service(daemon)
    router = APIRouter(tags=["web page"])
    protected = [Depends(auth)]

    @router.post("/login", response_model=models.LoginOut, responses={401: {"description": "wrong name or password"}, 429: {"description": "too many failed logins"}})
    async def login(body: models.LoginIn, request: Request, response: Response) -> dict[str, Any] | JSONResponse:
        """Log an operator in: sets the HttpOnly session cookie and returns the CSRF token."""
        from collector.users.store import verify_login

        client = request.client.host if request.client else "unknown"
        wait = web.throttle.locked_for(body.name, client)
        if wait > 0:
            throttled = N_("too many failed logins; wait {seconds} s and try again")
            return JSONResponse({"error": throttled.format(seconds=f"{wait:.0f}"), "message_id": throttled,
                                 "params": {"seconds": f"{wait:.0f}"}}, status_code=429,
                                headers={"Retry-After": str(max(1, round(wait)))})
        conn = daemon.open_reader()
        try:
            ok = await asyncio.to_thread(verify_login, conn, body.name, body.password)
        finally:
            conn.close()
        now = daemon.clock.now()
        if not ok:
            web.throttle.failed(body.name, client)
            log.warning("failed login for operator %r", body.name)
            await daemon.write(lambda c: repo.audit.append(c, at=now, actor=body.name[:64], action="operator_login_failed", new={"via": "page"}))
            wrong = N_("wrong operator name or password (an admin adds operators with: collector user add NAME --role ROLE)")
            return JSONResponse({"error": wrong, "message_id": wrong, "params": {}}, status_code=401)
        web.throttle.succeeded(body.name, client)
        via = "password"
        key, session = await asyncio.to_thread(web.sessions.create, body.name, via)
        await daemon.write(lambda c: repo.audit.append(c, at=now, actor=body.name, action="operator_login", new={"via": via}))
        response.set_cookie(COOKIE_NAME, key, httponly=True, samesite="strict", path="/", max_age=int(web.sessions.max_s))
        return {"operator": session.operator, "role": session.role, "csrf_token": session.csrf, "via": via,
                "expires_in_s": web.sessions.remaining_s(session)}

    @router.post("/logout", response_model=models.OkOut, dependencies=[Depends(auth.roles(*ANY_ROLE))])
    async def logout(request: Request, response: Response) -> dict[str, Any]:
        """End the login session of this page."""
        session = await asyncio.to_thread(web.sessions.drop, request.cookies.get(COOKIE_NAME))
        if session is not None:
            now = daemon.clock.now()
            await daemon.write(lambda c: repo.audit.append(c, at=now, actor=session.operator, action="operator_logout"))
        response.delete_cookie(COOKIE_NAME, path="/")
        return {"ok": True}

    @router.get("/me", response_model=models.MeOut, dependencies=protected)
    async def me(request: Request) -> dict[str, Any]:
        """Who is logged in, and the CSRF token the page must send (after a reload)."""
        session = await asyncio.to_thread(web.sessions.get, request.cookies.get(COOKIE_NAME), touch=False)
        if session is None or current_operator.get() is None:
            return {"operator": None, "role": None, "csrf_token": None, "expires_in_s": None}
        return {"operator": session.operator, "role": session.role, "csrf_token": session.csrf,
                "expires_in_s": web.sessions.remaining_s(session)}

    @router.get("/web/config", response_model=models.WebConfigOut, dependencies=protected)
    async def web_config() -> dict[str, Any]:
        """Settings the page needs: threshold, alert limits, and the staff facts it can record."""
        from collector.eligibility.facts import FACTS
        from collector.eligibility.labels import CRITERIA as CRITERIA_LABELS
        from drivers.protocols.registry import PROFILES

        facts = [{"name": s.name, "kind": s.kind, "help": s.help, "choices": list(s.choices), "unit": s.unit,
                  "min_value": None if s.min_value is None else float(s.min_value),
                  "max_value": None if s.max_value is None else float(s.max_value)} for s in FACTS.values()]
        return {
            "t90_threshold_pct": float(daemon.config["oximetry"]["t90_threshold_pct"]),
            "alert_settings": {k: web.settings[k] for k in ALERT_DEFAULTS},
            "stream_interval_s": web.settings["stream_interval_s"],
            "heartbeat_s": web.settings["heartbeat_s"],
            "site_timezone": str(daemon.config["site"]["timezone"]),
            "facts": facts,
            "protocols": sorted(PROFILES),
            "criteria_labels": CRITERIA_LABELS,
        }

    @router.get("/web/status", response_model=models.StatusOut, dependencies=protected)
    async def web_status() -> dict[str, Any]:
        """One snapshot of what the live stream sends: every bed and every alert."""
        return web.picture(current_operator.get())

    @router.get(
        "/events/stream", dependencies=protected,
        responses={200: {"content": {"text/event-stream": {}}, "description": "server-sent events: `update` (StatusOut JSON) at most once a second; `heartbeat` (`now_utc`, `now_local`, `writer_failed`) every `[web] heartbeat_s`; `expired` when the login ends"}},
    )
    async def stream(request: Request) -> StreamingResponse:
        """Live updates for the page (server-sent events), at most one per second."""
        key = request.cookies.get(COOKIE_NAME) if current_operator.get() is not None else None
        operator = current_operator.get()
        who = operator or "local-token"
        cap = int(web.settings["max_streams_per_operator"])
        if web.streams.get(who, 0) >= cap:
            return JSONResponse({"error": f"{who} already has {cap} live connections open; close another page and reload"},  # type: ignore[return-value]
                                status_code=429)
        web.streams[who] = web.streams.get(who, 0) + 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                web.streams[who] -= 1

        async def events() -> AsyncIterator[str]:
            try:
                async for chunk in _events():
                    yield chunk
            finally:
                release()

        async def _events() -> AsyncIterator[str]:
            yield "retry: 2000\n\n"
            loop = asyncio.get_running_loop()
            interval, beat = web.settings["stream_interval_s"], web.settings["heartbeat_s"]
            next_update = next_beat = loop.time()
            while not web.closing.is_set():
                if loop.time() >= next_update:
                    if key is not None and await asyncio.to_thread(web.sessions.get, key) is None:
                        yield "event: expired\ndata: {}\n\n"
                        return
                    yield f"event: update\ndata: {json.dumps(web.picture(operator), separators=(',', ':'))}\n\n"
                    next_update = loop.time() + interval
                if loop.time() >= next_beat:
                    # Real time, not the daemon's clock: the page must learn within seconds that the daemon is gone.
                    now = daemon.clock.now()
                    hb = {"now_utc": utc_iso(now), "now_local": local_datetime(now, web.alerts.tz),
                          "writer_failed": bool(getattr(daemon.writer, "failed", None))}
                    yield f"event: heartbeat\ndata: {json.dumps(hb, separators=(',', ':'))}\n\n"
                    next_beat = loop.time() + beat
                try:
                    await asyncio.wait_for(web.closing.wait(), max(0.05, min(next_update, next_beat) - loop.time()))
                except asyncio.TimeoutError:
                    pass
                if await request.is_disconnected():
                    return

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
                                 background=BackgroundTask(release))

    @router.get("/subjects", response_model=list[models.SubjectOut], dependencies=protected)
    async def subjects() -> list[dict[str, Any]]:
        """Every subject (pseudonymous IDs) with its open sessions."""
        conn = daemon.open_reader()
        try:
            rows = repo.list_subjects(conn)
            by_subject = repo.open_sessions_by_subject(conn)
        finally:
            conn.close()
        return [{**r, "open_sessions": by_subject.get(r["id"], [])} for r in rows]

    @router.get("/sessions", response_model=list[models.SessionSummary], dependencies=protected)
    async def sessions(limit: int = Query(30, ge=1, le=500, description="newest sessions first"),
                       subject_id: str | None = Query(None, max_length=64)) -> list[dict[str, Any]]:
        """Recent sessions with the outcome of their stored night report."""
        conn = daemon.open_reader()
        try:
            return await asyncio.to_thread(_session_summaries, conn, limit, subject_id)
        finally:
            conn.close()

    @router.get("/sessions/{session_id}/trend", response_model=models.TrendOut, dependencies=protected)
    async def trend(session_id: int = _path_id("session"),
                    minutes: int | None = Query(None, ge=1, le=1440, description="last N minutes; omit for the whole recording")) -> dict[str, Any]:
        """SpO2 (mean and minimum of valid samples) and pulse, bucketed to at most 240 points."""
        from collector.web.trend import session_trend

        now = daemon.clock.now()
        conn = daemon.open_reader()
        try:
            return await asyncio.to_thread(session_trend, conn, session_id, minutes=minutes, now=now)
        finally:
            conn.close()

    @router.get("/sessions/{session_id}/report", response_model=models.ReportOut, dependencies=protected,
                responses={404: {"description": "unknown session, or no report yet"}})
    async def report(session_id: int = _path_id("session")) -> dict[str, Any]:
        """The newest stored report of a night session (computed when it stopped)."""
        from collector.errors import NotFound
        from collector.oximetry.store import latest_report

        conn = daemon.open_reader()
        try:
            repo.get_session(conn, session_id)
            rep = latest_report(conn, session_id)
        finally:
            conn.close()
        if rep is None:
            raise NotFound(f"session {session_id} has no night report yet; it is computed when the session stops")
        return {"session_id": session_id, "report": rep}

    @router.get("/subjects/{subject_id}/history", response_model=models.HistoryOut, dependencies=protected,
                responses={404: {"description": "unknown subject"}})
    async def history(subject_id: str = _subject_id()) -> dict[str, Any]:
        """All of a subject's nights (T90, validity, review state, gaps in local time) and spirometry sessions."""
        from collector.eligibility.service import thresholds_for_config
        from collector.web.history import subject_history

        now = daemon.clock.now()
        th = thresholds_for_config(daemon.config)
        conn = daemon.open_reader()
        try:
            return await asyncio.to_thread(subject_history, conn, subject_id, now=now, tz=web.alerts.tz, thresholds=th)
        finally:
            conn.close()

    @router.get("/serial-ports", response_model=list[models.SerialPortOut], dependencies=protected)
    async def serial_ports() -> list[dict[str, Any]]:
        """Serial ports of this computer (for a spirometer)."""
        try:
            from serial.tools import list_ports
        except ImportError:
            return []
        ports = await asyncio.to_thread(list_ports.comports)
        return [{"device": p.device, "description": p.description} for p in ports]

    return router


def _path_id(what: str) -> Any:
    from fastapi import Path as PathParam

    return PathParam(ge=1, le=2**62, description=f"{what} id")


def _subject_id() -> Any:
    from fastapi import Path as PathParam

    return PathParam(min_length=1, max_length=64, description="pseudonymous screening ID")


def _session_summaries(conn: Any, limit: int, subject_id: str | None) -> list[dict[str, Any]]:
    from collector.oximetry import store as night_store

    sessions = repo.recent_sessions(conn, limit=limit, subject_id=subject_id)
    reports = night_store.report_columns(conn, [s["id"] for s in sessions if s["kind"] == "night"])
    out = []
    for s in sessions:
        r = reports.get(s["id"], {})
        out.append({
            "id": s["id"], "subject_id": s["subject_id"], "kind": s["kind"], "state": s["state"], "origin": s["origin"],
            "started_utc": s["started_utc"], "stopped_utc": s["stopped_utc"], "device_name": s["device_name"],
            "device_protocol": s["device_protocol"], "t90_pct": r.get("t90_pct"), "night_valid": r.get("night_valid"),
            "meets_t90_criterion": r.get("meets_t90_criterion"), "borderline": r.get("borderline"),
        })
    return out
