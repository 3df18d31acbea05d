"""Who is calling the control API: the bearer token (CLI) or a logged-in operator (the page).

Cookie logins expire (idle and absolute limits), every state-changing request made
with a cookie must carry the session's CSRF token in ``X-CSRF-Token`` (a page on
another site can make the browser send the cookie, but cannot read the token), and
the logged-in operator is the one the audit trail records: a JSON body's ``by`` is
set to the operator, and a different ``by`` is refused.

Session times use the monotonic wall clock, not the daemon's clock: in a simulated
night the daemon's clock runs hundreds of times faster than real time.
"""

from __future__ import annotations

import contextvars
import json
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Callable
from urllib.parse import urlsplit

from fastapi import Depends, HTTPException, Request
from fastapi.security import APIKeyCookie, APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

log = logging.getLogger(__name__)

COOKIE_NAME = "collector_session"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

# The operator of the current request (None for bearer-token calls, which name theirs in ``by``).
current_operator: contextvars.ContextVar[str | None] = contextvars.ContextVar("current_operator", default=None)


@dataclass
class WebSession:
    operator: str
    csrf: str
    via: str  # "password" or "token"
    created: float
    last_seen: float


@dataclass
class SessionStore:
    """Login sessions in memory, keyed by the random cookie value."""

    idle_s: float
    max_s: float
    now: Callable[[], float] = time.monotonic
    _sessions: dict[str, WebSession] = field(default_factory=dict)

    def create(self, operator: str, via: str) -> tuple[str, WebSession]:
        self._expire()
        key = secrets.token_urlsafe(32)
        t = self.now()
        session = WebSession(operator, secrets.token_urlsafe(32), via, t, t)
        self._sessions[key] = session
        return key, session

    def get(self, key: str | None, *, touch: bool = True) -> WebSession | None:
        if not key:
            return None
        session = self._sessions.get(key)
        if session is None:
            return None
        t = self.now()
        if t - session.last_seen > self.idle_s or t - session.created > self.max_s:
            self._sessions.pop(key, None)
            log.info("login session of %s expired", session.operator)
            return None
        if touch:
            session.last_seen = t
        return session

    def remaining_s(self, session: WebSession) -> float:
        t = self.now()
        return max(0.0, min(session.last_seen + self.idle_s, session.created + self.max_s) - t)

    def drop(self, key: str | None) -> WebSession | None:
        return self._sessions.pop(key, None) if key else None

    def _expire(self) -> None:
        for key in list(self._sessions):
            self.get(key, touch=False)


@dataclass
class LoginThrottle:
    """After ``limit`` failed logins for a name within ``window_s``, refuse it for ``lock_s``."""

    limit: int = 5
    window_s: float = 300.0
    lock_s: float = 60.0
    now: Callable[[], float] = time.monotonic
    _failures: dict[str, list[float]] = field(default_factory=dict)

    def locked_for(self, name: str) -> float:
        recent = [t for t in self._failures.get(name.lower(), []) if self.now() - t < self.window_s]
        if len(recent) >= self.limit:
            return max(0.0, recent[-1] + self.lock_s - self.now())
        return 0.0

    def failed(self, name: str) -> None:
        key = name.lower()
        self._failures[key] = [t for t in self._failures.get(key, []) if self.now() - t < self.window_s][-self.limit:] + [self.now()]

    def succeeded(self, name: str) -> None:
        self._failures.pop(name.lower(), None)


def _unauthorised(message: str) -> HTTPException:
    return HTTPException(status_code=401, detail=message)


def make_auth(token: str, sessions: SessionStore) -> Callable[..., Any]:
    """The FastAPI dependency every protected route uses; returns the operator (None for the token)."""
    bearer = HTTPBearer(auto_error=False, description="the local token from the file next to the database (CLI)")
    cookie = APIKeyCookie(name=COOKIE_NAME, auto_error=False, description="login session of the technician's page")
    csrf_header = APIKeyHeader(name=CSRF_HEADER, auto_error=False,
                               description="the session's CSRF token; required on every state-changing request made with the cookie")

    async def auth(
        request: Request,
        creds: HTTPAuthorizationCredentials | None = Depends(bearer),
        session_key: str | None = Depends(cookie),
        csrf: str | None = Depends(csrf_header),
    ) -> str | None:
        if creds is not None:
            if not secrets.compare_digest(creds.credentials.encode(), token.encode()):
                raise _unauthorised("missing or wrong token; the CLI reads it from the token file next to the database")
            current_operator.set(None)
            return None
        session = sessions.get(session_key)
        if session is None:
            raise _unauthorised(
                "not logged in, or the login expired; log in on the page (collector user add NAME creates an operator) "
                "or send the bearer token"
            )
        if request.method not in SAFE_METHODS:
            if not csrf or not secrets.compare_digest(csrf.encode(), session.csrf.encode()):
                raise HTTPException(status_code=403, detail=f"missing or wrong {CSRF_HEADER} header; reload the page and try again")
            origin = request.headers.get("origin")
            if origin and origin != "null" and urlsplit(origin).netloc != request.headers.get("host"):
                raise HTTPException(status_code=403, detail=f"request from another site ({origin}) refused")
            await _attribute(request, session.operator)
        current_operator.set(session.operator)
        request.state.operator = session.operator
        return session.operator

    return auth


async def _attribute(request: Request, operator: str) -> None:
    """Make the audit trail name the logged-in operator: set (or check) a JSON body's ``by``.

    FastAPI parses the body with ``Request.json()``, which caches the parsed object on the
    request; dependencies run before the body is validated, so setting ``by`` here reaches
    the route's model.  A test (test_web_api) asserts the audit rows name the operator.
    """
    if "json" not in request.headers.get("content-type", ""):
        return
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError):
        return  # FastAPI answers 422 with the decode error
    if isinstance(body, dict):
        given = body.get("by")
        if given not in (None, operator):
            raise HTTPException(status_code=403, detail=f"'by' must be the logged-in operator ({operator}), not {json.dumps(given)}")
        body["by"] = operator
