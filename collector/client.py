"""The CLI's side of the control API: finds the daemon of a database and calls it.

Plain ``http.client`` from the standard library: one local request per command, and
importing an HTTP client package cost about a third of a ``collector status`` call.
"""

from __future__ import annotations

import http.client
import json
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from collector.runtime import runtime_path, token_path
from collector.errors import CollectorError, Conflict, DaemonUnavailable, DeviceError, InvalidInput, NotAuthorised, NotFound

_ERRORS = {401: NotAuthorised, 403: NotAuthorised, 404: NotFound, 409: Conflict, 422: InvalidInput, 400: InvalidInput, 503: DeviceError}


class DaemonClient:
    def __init__(self, db_path: Path, *, timeout_s: float = 60.0, token: str | None = None) -> None:
        """``token``: the operator's login token (commands that change something); else the daemon's
        local token, which may only read."""
        self.db_path = db_path
        self.timeout_s = timeout_s
        hint = f"start it with: collector --db {db_path} run"
        try:
            info = json.loads(runtime_path(db_path).read_text(encoding="utf-8"))
            self.token = token or token_path(db_path).read_text(encoding="ascii").strip()
        except FileNotFoundError:
            raise DaemonUnavailable(f"the collector daemon is not running for {db_path}; {hint}") from None
        except (OSError, ValueError) as exc:
            raise DaemonUnavailable(f"cannot read the daemon's runtime files next to {db_path} ({exc}); {hint}") from None
        self.host, self.port = str(info["host"]), int(info["port"])
        self._hint = hint

    def request(self, method: str, path: str, body: dict[str, Any] | None = None, **params: Any) -> Any:
        query = urlencode({k: v for k, v in params.items() if v is not None})
        headers = {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}
        payload = None
        if body is not None:
            payload = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        timeout = (f"the collector daemon did not answer within {self.timeout_s:g} s; check with collector status, and its log")
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_s)
        try:
            try:
                conn.connect()
            except TimeoutError:
                # Not DaemonUnavailable: the daemon may still be working on it (never fall back to offline actions).
                raise CollectorError(timeout) from None
            except OSError:
                raise DaemonUnavailable(f"the collector daemon for {self.db_path} is not answering (stale runtime file?); {self._hint}") from None
            try:
                conn.request(method, path + (f"?{query}" if query else ""), body=payload, headers=headers)
                resp = conn.getresponse()
                status, raw = resp.status, resp.read()
            except TimeoutError:
                raise CollectorError(timeout) from None
            except (OSError, http.client.HTTPException) as exc:
                # The request may have been carried out: say so rather than pretend the daemon is absent.
                raise CollectorError(f"the connection to the collector daemon broke ({exc or type(exc).__name__}); "
                                     "check with collector status whether it was done, and the daemon's log") from None
        finally:
            conn.close()
        text = raw.decode("utf-8", errors="replace")
        if status >= 400:
            try:
                message = json.loads(text).get("error") or text
            except (ValueError, AttributeError):
                message = text
            raise _ERRORS.get(status, CollectorError)(message)
        return json.loads(text)

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, **params)

    def post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        return self.request("POST", path, body or {})


def daemon_running(db_path: Path) -> bool:
    try:
        DaemonClient(db_path, timeout_s=3).get("/api/v1/health")
        return True
    except CollectorError:
        return False
