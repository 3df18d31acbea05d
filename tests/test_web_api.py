"""The control API as the page uses it: login sessions, CSRF, attribution, expiry, clear 4xx errors.

The app is the real one (collector.api.create_app) over a real daemon and SQLite file,
driven in-process with Starlette's TestClient.
"""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path
from typing import Any, Iterator

import pytest
from fastapi.testclient import TestClient

from collector.api import create_app
from collector.daemon import Daemon
from collector.features import build_daemon
from collector.storage.db import open_db
from collector.users import store as users
from conftest import fast_config, operator_token

TOKEN = "test-token-0123456789"
PASSWORD = "correct horse battery"
MUTATING = {"POST", "PUT", "PATCH", "DELETE"}


class FakeTime:
    """Wall time for login expiry, moved by the test."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def add_operator(db_path: Path, name: str = "alice", password: str = PASSWORD) -> None:
    conn = open_db(db_path).conn
    conn.execute("BEGIN IMMEDIATE")
    users.add_user(conn, name, password, by="admin", at=1_767_000_000.0)
    conn.execute("COMMIT")
    conn.close()


@pytest.fixture
def app_env(db_path: Path) -> Iterator[tuple[Daemon, Any, TestClient, FakeTime]]:
    add_operator(db_path)
    daemon = build_daemon(db_path, config=fast_config())
    fake = FakeTime()
    web = daemon.services["web"]
    web.sessions.now = fake
    web.throttle.now = fake
    app = create_app(daemon, TOKEN)
    with TestClient(app) as client:
        yield daemon, app, client, fake
    daemon.writer.close()


def login(client: TestClient, name: str = "alice", password: str = PASSWORD) -> str:
    r = client.post("/api/v1/login", json={"name": name, "password": password})
    assert r.status_code == 200, r.text
    return r.json()["csrf_token"]


def audit_rows(db_path: Path, action: str) -> list[dict[str, Any]]:
    conn = sqlite3.connect(str(db_path))
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM audit WHERE action = ? ORDER BY id", (action,))]
    finally:
        conn.close()


def routes(app: Any, methods: set[str]) -> list[tuple[str, str]]:
    """Every documented API operation with these methods, path parameters filled with 1."""
    out = []
    for path, ops in app.openapi()["paths"].items():
        for method in ops:
            if method.upper() in methods and path != "/api/v1/login":
                out.append((method.upper(), re.sub(r"\{[^}]+\}", "1", path)))
    return out


# -- every state-changing route is protected ------------------------------------------------------
def test_every_mutating_route_refuses_without_credentials_or_csrf(app_env) -> None:
    daemon, app, client, _ = app_env
    mutating = routes(app, MUTATING)
    assert {("POST", "/api/v1/subjects"), ("POST", "/api/v1/alerts/1/ack"), ("POST", "/api/v1/sessions/1/stop")} <= set(mutating)
    for method, path in mutating:
        r = client.request(method, path, json={})
        assert r.status_code == 401, (method, path, r.status_code, r.text)
        assert "error" in r.json()
        r = client.request(method, path, json={}, headers={"Authorization": "Bearer wrong-token"})
        assert r.status_code == 401, (method, path, r.text)
    csrf = login(client)
    for method, path in mutating:
        r = client.request(method, path, json={})
        assert r.status_code == 403 and "X-CSRF-Token" in r.json()["error"], (method, path, r.text)
        r = client.request(method, path, json={}, headers={"X-CSRF-Token": csrf[:-2] + "xx"})
        assert r.status_code == 403, (method, path, r.text)
    assert not audit_rows(daemon.db_path, "subject_created")


def test_reads_need_credentials_too(app_env) -> None:
    _, app, client, _ = app_env
    for method, path in routes(app, {"GET"}):
        if path not in ("/api/v1/health", "/api/v1/login/language"):  # the login screen's strings only
            assert client.get(path).status_code == 401, path


def test_page_is_served_without_login_but_with_a_strict_policy(app_env) -> None:
    _, _, client, _ = app_env
    r = client.get("/")
    assert r.status_code == 200 and "login-form" in r.text
    assert "script-src 'self'" in r.headers["content-security-policy"]
    assert r.headers["x-frame-options"] == "DENY"
    for name in ("app.js", "chart.js", "style.css"):
        assert client.get(f"/static/{name}").status_code == 200
    assert client.get("/api/v1/health").headers["cache-control"] == "no-store"


# -- login, CSRF and attribution --------------------------------------------------------------------
def test_cookie_login_acts_as_the_operator_in_the_audit_trail(app_env) -> None:
    daemon, _, client, _ = app_env
    csrf = login(client)
    cookie = client.cookies.get("collector_session")
    assert cookie and csrf
    r = client.post("/api/v1/subjects", json={"id": "SCR-0001"}, headers={"X-CSRF-Token": csrf})
    assert r.status_code == 201, r.text
    assert r.json()["created_by"] == "alice"
    # Naming someone else is refused; naming yourself is fine.
    r = client.post("/api/v1/subjects", json={"id": "SCR-0002", "by": "bob"}, headers={"X-CSRF-Token": csrf})
    assert r.status_code == 403 and "logged-in operator" in r.json()["error"]
    r = client.post("/api/v1/subjects", json={"id": "SCR-0003", "by": "alice"}, headers={"X-CSRF-Token": csrf})
    assert r.status_code == 201
    assert [row["actor"] for row in audit_rows(daemon.db_path, "subject_created")] == ["alice", "alice"]
    assert audit_rows(daemon.db_path, "operator_login")[0]["actor"] == "alice"
    me = client.get("/api/v1/me").json()
    assert me["operator"] == "alice" and me["csrf_token"] == csrf


def test_cross_site_origin_is_refused_even_with_the_token_header(app_env) -> None:
    _, _, client, _ = app_env
    csrf = login(client)
    r = client.post("/api/v1/subjects", json={"id": "SCR-0004"}, headers={"X-CSRF-Token": csrf, "Origin": "http://evil.example"})
    assert r.status_code == 403 and "another site" in r.json()["error"]


def test_login_body_must_be_json(app_env) -> None:
    """A cross-site HTML form can only send form or text bodies: the login refuses them."""
    _, _, client, _ = app_env
    body = json.dumps({"name": "alice", "password": PASSWORD})
    r = client.post("/api/v1/login", content=body, headers={"Content-Type": "text/plain"})
    assert r.status_code == 422
    assert client.cookies.get("collector_session") is None


def test_a_cli_login_token_acts_as_its_registered_operator(app_env) -> None:
    daemon, _, client, _ = app_env
    bearer = {"Authorization": f"Bearer {operator_token(daemon.db_path, 'cli.user', 'technician')}"}
    r = client.post("/api/v1/subjects", json={"id": "SCR-0005"}, headers=bearer)
    assert r.status_code == 201 and r.json()["created_by"] == "cli.user"
    r = client.post("/api/v1/subjects", json={"id": "SCR-0006", "by": "somebody.else"}, headers=bearer)
    assert r.status_code == 403 and "logged-in operator" in r.json()["error"]
    assert [row["actor"] for row in audit_rows(daemon.db_path, "subject_created")] == ["cli.user"]


def test_the_daemons_local_token_reads_but_never_acts(app_env) -> None:
    """It used to act under any name it was given, registered or not, and log anyone in on the page."""
    daemon, app, client, _ = app_env
    local = {"Authorization": f"Bearer {TOKEN}"}
    assert client.get("/api/v1/status", headers=local).status_code == 200
    for method, path in routes(app, MUTATING):
        r = client.request(method, path, json={"by": "night.nurse"}, headers=local)
        assert r.status_code in (401, 403), (method, path, r.status_code, r.text)
    r = client.post("/api/v1/subjects", json={"id": "SCR-0005", "by": "night.nurse"}, headers=local)
    assert r.status_code == 403 and "collector login" in r.json()["error"]
    r = client.post("/api/v1/login", json={"name": "night.nurse", "password": TOKEN})
    assert r.status_code == 401
    assert not audit_rows(daemon.db_path, "subject_created") and not audit_rows(daemon.db_path, "operator_login")


def test_wrong_password_unknown_and_disabled_operators_are_refused(app_env) -> None:
    daemon, _, client, _ = app_env
    assert client.post("/api/v1/login", json={"name": "alice", "password": "nope-nope"}).status_code == 401
    assert client.post("/api/v1/login", json={"name": "mallory", "password": PASSWORD}).status_code == 401
    conn = open_db(daemon.db_path).conn
    conn.execute("BEGIN IMMEDIATE")
    users.set_disabled(conn, "alice", True, by="admin", at=1.0)
    conn.execute("COMMIT")
    conn.close()
    r = client.post("/api/v1/login", json={"name": "alice", "password": PASSWORD})
    assert r.status_code == 401 and "collector user add" in r.json()["error"]


def test_failed_logins_are_throttled(app_env) -> None:
    _, _, client, fake = app_env
    for _ in range(5):
        assert client.post("/api/v1/login", json={"name": "alice", "password": "guess-guess"}).status_code == 401
    r = client.post("/api/v1/login", json={"name": "alice", "password": PASSWORD})
    assert r.status_code == 429 and "wait" in r.json()["error"]
    fake.t += 61
    assert client.post("/api/v1/login", json={"name": "alice", "password": PASSWORD}).status_code == 200


def test_sessions_expire_when_idle_and_after_the_shift(app_env) -> None:
    _, _, client, fake = app_env
    login(client)
    fake.t += 29 * 60
    assert client.get("/api/v1/me").status_code == 200  # activity keeps it alive
    fake.t += 31 * 60
    r = client.get("/api/v1/me")
    assert r.status_code == 401 and "expired" in r.json()["error"]
    login(client)
    for _ in range(12 * 3 + 1):  # busy all night: still ends 12 h after logging in
        fake.t += 20 * 60
        client.get("/api/v1/alerts")
    assert client.get("/api/v1/me").status_code == 401


def test_logout_ends_the_session(app_env) -> None:
    daemon, _, client, _ = app_env
    csrf = login(client)
    cookie = client.cookies.get("collector_session")
    assert client.post("/api/v1/logout", json={}, headers={"X-CSRF-Token": csrf}).status_code == 200
    client.cookies.set("collector_session", cookie)
    assert client.get("/api/v1/me").status_code == 401
    assert audit_rows(daemon.db_path, "operator_logout")[0]["actor"] == "alice"


# -- clear 4xx for bad input ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("method", "path", "body", "fragment"),
    [
        ("GET", "/api/v1/sessions/1/trend?minutes=0", None, "minutes"),
        ("GET", "/api/v1/sessions/1/trend?minutes=abc", None, "minutes"),
        ("GET", "/api/v1/sessions/0/trend", None, "session_id"),
        ("GET", "/api/v1/sessions/99/trend?minutes=30", None, "unknown session"),
        ("GET", "/api/v1/sessions/99/report", None, "unknown session"),
        ("GET", "/api/v1/sessions?limit=100000", None, "limit"),
        ("GET", "/api/v1/scan?timeout_s=100", None, "timeout_s"),
        ("POST", "/api/v1/alerts/0/ack", {}, "alert_id"),
        ("POST", "/api/v1/alerts/5/ack", {}, "no alert 5"),
        ("POST", "/api/v1/alerts/5/ack", {"note": "x" * 501}, "note"),
        ("POST", "/api/v1/subjects", {"id": "John Smith"}, "never a name"),
        ("POST", "/api/v1/subjects", {"id": 5}, "id"),
        ("POST", "/api/v1/sessions", {"subject_id": "SCR-0001", "oximeter": "x", "protocol": "bogus"}, "protocol"),
    ],
)
def test_bad_input_gets_a_clear_4xx(app_env, method: str, path: str, body: Any, fragment: str) -> None:
    daemon, _, client, _ = app_env
    bearer = TOKEN if method == "GET" else operator_token(daemon.db_path, "tech.t", "technician")
    r = client.request(method, path, json=body, headers={"Authorization": f"Bearer {bearer}"})
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    assert fragment in r.json()["error"], r.json()


def test_malformed_json_gets_422(app_env) -> None:
    _, _, client, _ = app_env
    csrf = login(client)
    for path in ("/api/v1/subjects", "/api/v1/alerts/1/ack", "/api/v1/login"):
        r = client.post(path, content=b'{"id": "SCR-', headers={"Content-Type": "application/json", "X-CSRF-Token": csrf})
        assert r.status_code == 422 and "JSON" in r.json()["error"], (path, r.text)
        r = client.post(path, content=b"[1, 2]", headers={"Content-Type": "application/json", "X-CSRF-Token": csrf})
        assert r.status_code == 422, (path, r.text)


def test_page_routes_describe_themselves_in_openapi(app_env) -> None:
    _, app, _, _ = app_env
    spec = app.openapi()
    schemes = spec["components"]["securitySchemes"]
    assert {"HTTPBearer", "APIKeyCookie", "APIKeyHeader"} <= set(schemes)
    for path in ("/api/v1/web/status", "/api/v1/alerts", "/api/v1/sessions/{session_id}/trend", "/api/v1/login"):
        op = next(iter(spec["paths"][path].values()))
        schema = op["responses"]["200"]["content"]["application/json"]["schema"]
        assert schema, path
    assert "StatusOut" in spec["components"]["schemas"] and "BedOut" in spec["components"]["schemas"]


def test_live_stream_sends_updates_and_ends_when_the_login_expires(app_env) -> None:
    _, _, client, fake = app_env
    login(client)
    events: list[tuple[str, dict[str, Any]]] = []
    with client.stream("GET", "/api/v1/events/stream") as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        kind = None
        for line in r.iter_lines():
            if line.startswith("event: "):
                kind = line[len("event: "):]
            elif line.startswith("data: ") and kind:
                events.append((kind, json.loads(line[len("data: "):])))
                if kind == "update":
                    fake.t += 31 * 60  # the page is left alone longer than the idle limit
    assert [k for k, _ in events if k != "heartbeat"] == ["update", "expired"]
    beats = [d for k, d in events if k == "heartbeat"]
    assert beats and all(b["now_utc"].endswith("Z") and b["now_local"].endswith("+08:00") for b in beats)
    update = events[0][1]
    assert update["operator"] == "alice" and update["beds"] == [] and isinstance(update["alerts"], list)
