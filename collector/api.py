"""Local control API: HTTP + JSON over 127.0.0.1; every change is made by a logged-in operator.

The CLI and the technician's page use the same routes.  Who may call a state-changing
route is declared on it with ``Depends(auth.roles(...))`` (collector/web/auth.py).
Request bodies over ``[api] max_body_kb`` are refused before anything reads them.
Every error is ``{"error": "<one line saying what is wrong and what to do>"}``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, HTTPException, Path as PathParam, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from collector import __version__, features
from collector.errors import CollectorError, Conflict, DeviceError, InvalidInput, NotAuthorised, NotFound
from collector.users.roles import INVESTIGATOR, TECHNICIAN
from collector.web.limits import BodyLimit
from collector.web.service import install as install_web

# Session IDs are SQLite integers: anything outside is refused as a 422, never a 500.
SessionId = Annotated[int, PathParam(ge=1, le=2**63 - 1, description="session ID")]

STATUS_FOR = {InvalidInput: 422, NotFound: 404, Conflict: 409, DeviceError: 503, NotAuthorised: 403}


# -- request bodies -----------------------------------------------------------------------------
class SubjectIn(BaseModel):
    id: str = Field(min_length=1, max_length=64, description="pseudonymous screening ID")
    by: str | None = Field(default=None, max_length=100)


class SessionIn(BaseModel):
    subject_id: str = Field(min_length=1, max_length=64)
    kind: Literal["night"] = "night"
    oximeter: str = Field(min_length=1, max_length=200, description="BLE address, macOS UUID or advertised name")
    protocol: Literal["plx", "nonin", "berrymed", "o2ring"] | None = None
    by: str | None = Field(default=None, max_length=100)


class StopIn(BaseModel):
    by: str | None = Field(default=None, max_length=100)
    reason: str | None = Field(default=None, max_length=500)


def create_app(daemon: Any, token: str) -> FastAPI:
    app = FastAPI(title="ALS screening collector", version=__version__, description=__doc__)
    # Auth: the bearer token (CLI) or a logged-in operator's cookie + CSRF header (the page at /).
    auth = install_web(app, daemon, token)
    app.add_middleware(BodyLimit, max_bytes=int(daemon.config["api"]["max_body_kb"]) * 1024)  # outermost: before routing and auth

    @app.exception_handler(CollectorError)
    async def collector_error(_: Request, exc: CollectorError) -> JSONResponse:
        return JSONResponse({"error": exc.message}, status_code=STATUS_FOR.get(type(exc), 400))

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return JSONResponse({"error": f"invalid request: {where or 'body'}: {first.get('msg', 'malformed')}"}, status_code=422)

    @app.get("/api/v1/health")
    async def health() -> dict[str, Any]:
        return {"ok": True, "version": __version__}

    @app.get("/api/v1/status", dependencies=[Depends(auth)])
    async def status() -> dict[str, Any]:
        return daemon.status()

    @app.post("/api/v1/subjects", status_code=201, dependencies=[Depends(auth.roles(TECHNICIAN, INVESTIGATOR))])
    async def add_subject(body: SubjectIn) -> dict[str, Any]:
        return await daemon.add_subject(body.id, by=body.by)

    @app.get("/api/v1/scan", dependencies=[Depends(auth)])
    async def scan(timeout_s: float = 5.0) -> list[dict[str, Any]]:
        if not (0.5 <= timeout_s <= 60):
            raise InvalidInput("timeout_s must be between 0.5 and 60 seconds")
        return await daemon.scan(timeout_s)

    @app.post("/api/v1/sessions", status_code=201, dependencies=[Depends(auth.roles(TECHNICIAN))])
    async def start_session(body: SessionIn) -> dict[str, Any]:
        return await daemon.start_night(body.subject_id, body.oximeter, protocol=body.protocol, by=body.by)

    @app.get("/api/v1/sessions/{session_id}", dependencies=[Depends(auth)])
    async def get_session(session_id: SessionId) -> dict[str, Any]:
        return daemon.session_info(session_id)

    @app.post("/api/v1/sessions/{session_id}/stop", dependencies=[Depends(auth.roles(TECHNICIAN))])
    async def stop_session(session_id: SessionId, body: StopIn) -> dict[str, Any]:
        return await daemon.stop_session(session_id, by=body.by, reason=body.reason)

    for router in features.routers(daemon, auth):
        app.include_router(router, prefix="/api/v1")
    return app
