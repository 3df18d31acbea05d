"""Who is calling the control API: an operator's login (CLI token or the page's cookie), or the daemon's local token.

Every login is a row in the database (``login_tokens``, only the token's SHA-256 stored), so
logins survive a daemon restart and end after the idle limit (``[web] session_idle_min``) or
``session_max_h`` after logging in, whichever comes first.  A bearer token is either a
``collector login`` token, bound to its registered operator, or the daemon's local token
from the file next to the database, which names nobody and may only read.  Every
state-changing request made with the cookie must carry the session's CSRF token in
``X-CSRF-Token``; the verified operator is the one the audit trail records (a JSON body's
``by`` is set to the operator; a different ``by`` is refused).

Roles: every state-changing route declares the roles that may call it with
``Depends(auth.roles(...))`` (tests/test_roles.py refuses a route that does not).

Login times use the wall clock (a login must outlive the process), never the daemon's clock,
which runs hundreds of times faster in a simulated night.
"""

from __future__ import annotations

import contextvars
import json
import logging
import secrets
import sqlite3
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

from fastapi import Depends, HTTPException, Request
from fastapi.security import APIKeyCookie, APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from collector.users.roles import Principal, check_roles, describe

log = logging.getLogger(__name__)

COOKIE_NAME = "collector_session"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
ROLES_ATTR = "__collector_roles__"
TOUCH_EVERY_S = 30.0  # a login's last-seen time is written at most this often (the idle limit is minutes)

# The operator of the current request (None for the daemon's local token, which names nobody).
current_operator: contextvars.ContextVar[str | None] = contextvars.ContextVar("current_operator", default=None)


@dataclass
class WebSession:
    operator: str
    role: str
    csrf: str | None
    via: str  # "password" (page cookie) or "cli-token"
    created: float
    last_seen: float


@dataclass
class SessionStore:
    """Logins in the database: ``create`` at login, ``get`` on every request (expiring idle ones), ``drop`` at logout."""

    db_path: Path
    idle_s: float
    max_s: float
    now: Callable[[], float] = time.time

    def _conn(self) -> sqlite3.Connection:
        from collector.storage.db import connect

        return connect(self.db_path, synchronous="NORMAL")

    def _run(self, fn: Callable[[sqlite3.Connection], Any], *, write: bool) -> Any:
        from collector.storage.db import transaction

        conn = self._conn()
        try:
            if not write:
                return fn(conn)
            with transaction(conn):
                return fn(conn)
        finally:
            conn.close()

    def create(self, operator: str, via: str) -> tuple[str, WebSession]:
        from collector.users import store

        t = self.now()

        def make(conn: sqlite3.Connection) -> tuple[str, str | None, str]:
            store.drop_expired_tokens(conn, at=t, idle_s=self.idle_s, max_s=self.max_s)
            token, csrf = store.create_token(conn, operator, kind="web", at=t)
            return token, csrf, store.get_user(conn, operator)["role"]

        key, csrf, role = self._run(make, write=True)
        return key, WebSession(operator, role, csrf, via, t, t)

    def get(self, key: str | None, *, kind: str = "web", touch: bool = True) -> WebSession | None:
        from collector.users import store

        if not key:
            return None
        row = self._run(lambda c: store.find_token(c, key, kind=kind), write=False)
        if row is None:
            return None
        t = self.now()
        if t - row["last_seen_s"] > self.idle_s or t - row["created_s"] > self.max_s:
            self._run(lambda c: store.drop_token(c, key), write=True)
            log.info("login of %s expired", row["operator"])
            return None
        if touch and t - row["last_seen_s"] >= TOUCH_EVERY_S:
            self._run(lambda c: store.touch_token(c, key, at=t), write=True)
            row["last_seen_s"] = t
        return WebSession(row["operator"], row["role"], row["csrf"], "password" if kind == "web" else "cli-token",
                          row["created_s"], row["last_seen_s"])

    def remaining_s(self, session: WebSession) -> float:
        return max(0.0, min(session.last_seen + self.idle_s, session.created + self.max_s) - self.now())

    def drop(self, key: str | None) -> WebSession | None:
        from collector.users import store

        session = self.get(key, touch=False)
        if key:
            self._run(lambda c: store.drop_token(c, key), write=True)
        return session


@dataclass
class _Window:
    """Failure times within a sliding window."""

    times: deque[float] = field(default_factory=deque)

    def count(self, now: float, window_s: float) -> int:
        while self.times and now - self.times[0] >= window_s:
            self.times.popleft()
        return len(self.times)


@dataclass
class LoginThrottle:
    """Failed logins, limited three ways so guessing is slow and nobody can lock an operator out.

    - one client and one name: after ``limit`` failures within ``window_s``, that client may not
      try that name for ``lock_s`` (another client, e.g. the operator at the ward laptop, still can);
    - one client, any names: after ``client_limit`` failures within ``window_s`` the client waits
      ``lock_s`` (one password tried across many names);
    - everyone: at most ``global_per_min`` failed logins a minute in all, then each new attempt
      waits its turn (seconds), so a flood from many clients slows guessing without refusing anyone for long.
    """

    limit: int = 5
    window_s: float = 300.0
    lock_s: float = 60.0
    client_limit: int = 20
    global_per_min: int = 60
    now: Callable[[], float] = time.monotonic
    _pairs: dict[tuple[str, str], _Window] = field(default_factory=dict)
    _clients: dict[str, _Window] = field(default_factory=dict)
    _global: _Window = field(default_factory=_Window)

    def locked_for(self, name: str, client: str = "local") -> float:
        t = self.now()
        waits = [0.0]
        pair = self._pairs.get((client, name.lower()))
        if pair is not None and pair.count(t, self.window_s) >= self.limit:
            waits.append(pair.times[-1] + self.lock_s - t)
        per_client = self._clients.get(client)
        if per_client is not None and per_client.count(t, self.window_s) >= self.client_limit:
            waits.append(per_client.times[-1] + self.lock_s - t)
        if self._global.count(t, 60.0) >= self.global_per_min:
            waits.append(self._global.times[0] + 60.0 - t)
        return max(0.0, *waits)

    def failed(self, name: str, client: str = "local") -> None:
        t = self.now()
        for window, keep in ((self._pairs.setdefault((client, name.lower()), _Window()), self.limit),
                             (self._clients.setdefault(client, _Window()), self.client_limit),
                             (self._global, self.global_per_min)):
            window.times.append(t)
            while len(window.times) > keep:
                window.times.popleft()
        if len(self._pairs) > 10_000:  # a spray of names must not grow memory without bound
            self._pairs = {k: w for k, w in self._pairs.items() if w.count(t, self.window_s)}

    def succeeded(self, name: str, client: str = "local") -> None:
        self._pairs.pop((client, name.lower()), None)


def _unauthorised(message: str) -> HTTPException:
    return HTTPException(status_code=401, detail=message)


_bearer = HTTPBearer(auto_error=False, description="a `collector login` token (an operator), or the daemon's local token (read only)")
_cookie = APIKeyCookie(name=COOKIE_NAME, auto_error=False, description="login session of the technician's page")
_csrf_header = APIKeyHeader(name=CSRF_HEADER, auto_error=False,
                            description="the session's CSRF token; required on every state-changing request made with the cookie")

#: The principal of the daemon's local token: reads only, names nobody.
LOCAL = Principal("", "", "local-token")


class Auth:
    """The FastAPI dependency of every protected route (``Depends(auth)``: any login or the local token);
    ``auth.roles(...)`` is the dependency of a state-changing route."""

    def __init__(self, token: str, sessions: SessionStore) -> None:
        self.token = token
        self.sessions = sessions
        self._role_deps: dict[frozenset[str], Callable[..., Any]] = {}

    async def __call__(
        self,
        request: Request,
        creds: HTTPAuthorizationCredentials | None = Depends(_bearer),
        session_key: str | None = Depends(_cookie),
        csrf: str | None = Depends(_csrf_header),
    ) -> Principal:
        import asyncio

        if creds is not None:
            if secrets.compare_digest(creds.credentials.encode(), self.token.encode()):
                current_operator.set(None)
                return LOCAL
            session = await asyncio.to_thread(self.sessions.get, creds.credentials, kind="cli")
            if session is None:
                raise _unauthorised("missing, wrong or expired token; log in again with: collector login NAME")
        else:
            session = await asyncio.to_thread(self.sessions.get, session_key)
            if session is None:
                raise _unauthorised("not logged in, or the login expired; log in on the page (an admin adds operators with: collector user add NAME --role ROLE)")
            if request.method not in SAFE_METHODS:
                if not csrf or not session.csrf or not secrets.compare_digest(csrf.encode(), session.csrf.encode()):
                    raise HTTPException(status_code=403, detail=f"missing or wrong {CSRF_HEADER} header; reload the page and try again")
                origin = request.headers.get("origin")
                if origin and origin != "null" and urlsplit(origin).netloc != request.headers.get("host"):
                    raise HTTPException(status_code=403, detail=f"request from another site ({origin}) refused")
        if request.method not in SAFE_METHODS:
            await _attribute(request, session.operator)
        current_operator.set(session.operator)
        request.state.operator = session.operator
        return Principal(session.operator, session.role, session.via)

    def roles(self, *roles: str) -> Callable[..., Any]:
        """The dependency of a route only operators with one of ``roles`` may call (403 for others)."""
        wanted = check_roles(roles)
        dep = self._role_deps.get(wanted)
        if dep is None:
            async def require(principal: Principal = Depends(self)) -> Principal:
                if principal is LOCAL:
                    raise HTTPException(status_code=403, detail="the daemon's local token may only read; log in with: collector login NAME")
                if principal.role not in wanted:
                    raise HTTPException(status_code=403, detail=f"{principal.name} is {describe(frozenset({principal.role}))}; this needs {describe(wanted)}")
                return principal

            setattr(require, ROLES_ATTR, wanted)
            dep = self._role_deps[wanted] = require
        return dep


def make_auth(token: str, sessions: SessionStore) -> Auth:
    return Auth(token, sessions)


async def _attribute(request: Request, operator: str) -> None:
    """Make the audit trail name the verified operator: set (or check) a JSON body's ``by``.

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
