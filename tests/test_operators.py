"""Operators on the real path: first admin, logins that survive a restart and expire when idle, the audit naming them,
files only their user can read, and the API's limits before authentication."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import stat
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from collector.api import create_app
from collector.cli import main
from collector.context import token_file
from collector.features import build_daemon
from conftest import fast_config

CFG = "[operator]\nscrypt_n = 1024\n"  # tests lower the hashing cost through the config, as a site could


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "home"))  # the token file lands here, not in the real home
    monkeypatch.delenv("COLLECTOR_TOKEN", raising=False)
    cfg = tmp_path / "site.toml"
    cfg.write_text(CFG)
    return {"db": tmp_path / "ward" / "c.sqlite", "cfg": cfg}


def run(env: dict[str, Path], *args: str, input: str | None = None, token: str | None = None) -> Any:
    extra = {"COLLECTOR_TOKEN": token} if token else {}
    return CliRunner().invoke(main, ["--db", str(env["db"]), "--config", str(env["cfg"]), *args], input=input, env=extra)


def audit(db: Path, action: str) -> list[tuple[str, str | None]]:
    conn = sqlite3.connect(db)
    try:
        return list(conn.execute("SELECT actor, new_value FROM audit WHERE action = ? ORDER BY id", (action,)))
    finally:
        conn.close()


def test_first_operator_is_admin_then_only_an_admin_adds_operators(env) -> None:
    r = run(env, "subject", "add", "SCR-0001")
    assert r.exit_code == 10 and "create the first (an admin)" in r.stderr and not env["db"].exists()
    r = run(env, "user", "add", "boss", "--role", "technician", "--password-stdin", input="admin pass 1\n")
    assert r.exit_code == 2 and "first operator" in r.stderr
    r = run(env, "user", "add", "boss", "--password-stdin", input="admin pass 1\n")
    assert r.exit_code == 0 and "added as admin" in r.output
    r = run(env, "user", "add", "eve", "--password-stdin", input="eve pass 123\n")
    assert r.exit_code == 10 and "not logged in" in r.stderr  # the database has an operator now
    assert run(env, "login", "boss", "--password-stdin", input="wrong pass 1\n").exit_code == 10
    r = run(env, "login", "boss", "--password-stdin", input="admin pass 1\n")
    assert r.exit_code == 0, r.output
    r = run(env, "user", "add", "tina", "--role", "technician", "--password-stdin", input="tech pass 12\n")
    assert r.exit_code == 0, r.output
    r = run(env, "subject", "add", "SCR-0001")
    assert r.exit_code == 10 and r.stderr.strip() == "error: boss is admin; this needs technician or investigator"
    assert run(env, "login", "tina", "--password-stdin", input="tech pass 12\n").exit_code == 0
    assert run(env, "whoami").output.strip() == "tina (technician)"
    assert run(env, "subject", "add", "SCR-0001").exit_code == 0
    r = run(env, "criteria", "set", "SCR-0001", "wfn_category", "probable")
    assert r.exit_code == 10 and "investigator" in r.stderr
    assert run(env, "criteria", "set", "SCR-0001", "height_cm", "171").exit_code == 0
    conn = sqlite3.connect(env["db"])
    assert conn.execute("SELECT created_by FROM subjects").fetchall() == [("tina",)]
    assert conn.execute("SELECT recorded_by FROM criteria_facts").fetchall() == [("tina",)]
    # the password never, the token only as its hash
    token = token_file(env["db"]).read_text().strip()
    dump = "\n".join(conn.iterdump())
    assert token not in dump and "tech pass 12" not in dump
    conn.close()
    assert [a for a, _ in audit(env["db"], "operator_login_failed")] == ["boss"]
    assert [a for a, _ in audit(env["db"], "operator_login")] == ["boss", "tina"]
    assert run(env, "logout").exit_code == 0
    assert run(env, "whoami").exit_code == 10 and not token_file(env["db"]).exists()


def test_files_are_for_this_user_only(env) -> None:
    run(env, "user", "add", "boss", "--password-stdin", input="admin pass 1\n")
    run(env, "login", "boss", "--password-stdin", input="admin pass 1\n")
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    assert mode(env["db"]) == 0o600 and mode(env["db"].parent) == 0o700
    assert mode(token_file(env["db"])) == 0o600 and mode(token_file(env["db"]).parent) == 0o700


def test_a_cli_login_expires_when_idle(env) -> None:
    run(env, "user", "add", "boss", "--password-stdin", input="admin pass 1\n")
    token = run(env, "login", "boss", "--password-stdin", "--print-token", input="admin pass 1\n").output.strip()
    assert not token_file(env["db"]).exists()  # --print-token: the script keeps it
    assert run(env, "whoami", token=token).exit_code == 0
    conn = sqlite3.connect(env["db"])
    conn.execute("UPDATE login_tokens SET last_seen_s = last_seen_s - 31 * 60")  # half an hour passes
    conn.commit()
    conn.close()
    r = run(env, "whoami", token=token)
    assert r.exit_code == 10 and "expired (idle limit 30 min)" in r.stderr and "collector login boss" in r.stderr


def test_no_login_commands_get_a_read_only_connection(env, monkeypatch: pytest.MonkeyPatch) -> None:
    from collector.context import Access, Ctx

    run(env, "user", "add", "boss", "--password-stdin", input="admin pass 1\n")
    c = Ctx(db_path=env["db"], config={}, access=Access(None, why="reads only", writes=False))
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        c.conn().execute("DELETE FROM users")


# -- the daemon -----------------------------------------------------------------------------------------
def test_page_and_cli_logins_survive_a_daemon_restart(tmp_path: Path) -> None:
    from conftest import operator_token
    from collector.storage.db import open_db, transaction
    from collector.users import store

    db = tmp_path / "r.sqlite"
    cli_token = operator_token(db, "tina", "technician")
    conn = open_db(db).conn
    with transaction(conn):
        store.add_user(conn, "nina", "nina pass 12", by="boss", at=1.0, role="technician", scrypt_n=1024)
    conn.close()
    tokens: dict[str, str] = {}
    for attempt in range(2):
        daemon = build_daemon(db, config=fast_config())
        try:
            with TestClient(create_app(daemon, "local")) as client:
                if attempt == 0:
                    r = client.post("/api/v1/login", json={"name": "nina", "password": "nina pass 12"})
                    assert r.status_code == 200, r.text
                    tokens = {"cookie": client.cookies["collector_session"], "csrf": r.json()["csrf_token"]}
                else:
                    client.cookies.set("collector_session", tokens["cookie"])
                    me = client.get("/api/v1/me").json()
                    assert me["operator"] == "nina" and me["csrf_token"] == tokens["csrf"] and me["role"] == "technician"
                    r = client.post("/api/v1/subjects", json={"id": "SCR-0001"}, headers={"X-CSRF-Token": tokens["csrf"]})
                    assert r.status_code == 201 and r.json()["created_by"] == "nina"
                    client.cookies.clear()
                    r = client.post("/api/v1/subjects", json={"id": "SCR-0002"}, headers={"Authorization": f"Bearer {cli_token}"})
                    assert r.status_code == 201 and r.json()["created_by"] == "tina"
        finally:
            daemon.writer.close()


async def _asgi(app: Any, headers: list[tuple[bytes, bytes]], chunks: Any) -> tuple[int, int, bytes]:
    """One POST straight into the ASGI app; returns (status, body bytes the app pulled, response body)."""
    pulled = 0
    out: dict[str, Any] = {"status": 0, "body": b""}

    async def receive() -> dict[str, Any]:
        nonlocal pulled
        chunk = next(chunks, None)
        if chunk is None:
            return {"type": "http.request", "body": b"", "more_body": False}
        pulled += len(chunk)
        return {"type": "http.request", "body": chunk, "more_body": True}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            out["status"] = message["status"]
        elif message["type"] == "http.response.body":
            out["body"] += message.get("body", b"")

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/api/v1/subjects", "raw_path": b"/api/v1/subjects", "query_string": b"", "root_path": "",
             "headers": [(b"host", b"t"), (b"content-type", b"application/json"), *headers], "client": ("10.0.0.9", 1), "server": ("t", 80)}
    await app(scope, receive, send)
    return out["status"], pulled, out["body"]


def test_a_300_mb_body_is_refused_before_it_is_read_or_authenticated(tmp_path: Path) -> None:
    daemon = build_daemon(tmp_path / "b.sqlite", config=fast_config())
    try:
        app = create_app(daemon, "local")
        limit = daemon.config["api"]["max_body_kb"] * 1024

        def endless() -> Any:
            while True:
                yield b"x" * 65536

        status, pulled, body = asyncio.run(_asgi(app, [(b"content-length", str(300 * 2**20).encode())], endless()))
        assert status == 413 and pulled == 0 and b"max_body_kb" in body
        status, pulled, body = asyncio.run(_asgi(app, [], endless()))  # streamed without a length
        assert status == 413 and limit < pulled <= limit + 65536
    finally:
        daemon.writer.close()


def test_live_streams_are_capped_per_operator(tmp_path: Path) -> None:
    daemon = build_daemon(tmp_path / "s.sqlite", config=fast_config())
    try:
        web = daemon.services["web"]
        with TestClient(create_app(daemon, "local")) as client:
            web.streams["local-token"] = int(web.settings["max_streams_per_operator"])  # that many pages already open
            r = client.get("/api/v1/events/stream", headers={"Authorization": "Bearer local"})
            assert r.status_code == 429 and "live connections" in r.json()["error"]
    finally:
        daemon.writer.close()


def test_one_client_cannot_lock_an_operator_out_of_the_page(tmp_path: Path) -> None:
    from conftest import operator_token
    from collector.storage.db import open_db, transaction
    from collector.users import store

    db = tmp_path / "t.sqlite"
    operator_token(db, "x", "admin")
    conn = open_db(db).conn
    with transaction(conn):
        store.add_user(conn, "nina", "nina pass 12", by="x", at=1.0, role="technician", scrypt_n=1024)
    conn.close()
    daemon = build_daemon(db, config=fast_config())
    try:
        app = create_app(daemon, "local")
        with TestClient(app, client=("10.0.0.66", 5000)) as attacker, TestClient(app) as ward:
            for _ in range(5):
                assert attacker.post("/api/v1/login", json={"name": "nina", "password": "guess guess"}).status_code == 401
            assert attacker.post("/api/v1/login", json={"name": "nina", "password": "nina pass 12"}).status_code == 429
            assert ward.post("/api/v1/login", json={"name": "nina", "password": "nina pass 12"}).status_code == 200
        assert len(audit(db, "operator_login_failed")) == 5
    finally:
        daemon.writer.close()


# -- subject IDs that cannot identify anyone -------------------------------------------------------------
@pytest.mark.parametrize(("subject_id", "words"), [
    ("19640502-1234", "a date"), ("SCR-19640502", "a date"), ("1964-05-02", "a date"), ("02-05-1964", "a date"),
    ("13812345678", "a phone number"), ("138-1234-5678", "a phone number"), ("11010519491231002X", "a national ID"),
])
def test_ids_that_look_like_personal_numbers_are_refused_even_under_a_wide_site_pattern(subject_id: str, words: str) -> None:
    from collector.errors import InvalidInput
    from collector.storage.repo import validate_new_subject_id

    for pattern in (None, r"^.+$"):
        with pytest.raises(InvalidInput, match=words):
            validate_new_subject_id(subject_id, pattern)


def test_the_site_pattern_decides_the_shape(tmp_path: Path) -> None:
    from conftest import invoke

    db = tmp_path / "p.sqlite"
    for sid, ok in (("SCR-0001", True), ("SCR-001234", True), ("JohnSmith1", False), ("scr-0001", False), ("SCR-01", False)):
        r = invoke(db, "subject", "add", sid)
        assert (r.exit_code == 0) is ok, (sid, r.output)
        if not ok:
            assert r.exit_code == 2 and "subject_id_pattern" in r.stderr or "invalid subject ID" in r.stderr, r.stderr
    site = tmp_path / "site.toml"
    site.write_text('[site]\nsubject_id_pattern = "^[A-Z]{2,5}[0-9]{3,6}$"\n')
    assert invoke(db, "subject", "add", "ABC123", config=site).exit_code == 0
    r = invoke(db, "subject", "add", "AB19640502", config=site)
    assert r.exit_code == 2 and "a date" in r.stderr


def test_a_fact_entered_in_error_is_retracted_kept_and_its_criterion_pending(tmp_path: Path) -> None:
    import json

    from conftest import invoke

    db = tmp_path / "f.sqlite"
    assert invoke(db, "subject", "add", "SCR-0001", operator="dr.a").exit_code == 0
    assert invoke(db, "criteria", "set", "SCR-0001", "wfn_category", "probable", operator="dr.a").exit_code == 0
    crit = lambda: next(c for c in json.loads(invoke(db, "eligibility", "SCR-0001", "--json").output)["criteria"] if c["id"] == "als_diagnosis")  # noqa: E731
    r = invoke(db, "criteria", "retract", "SCR-0001", "wfn_category", operator="dr.a")
    assert r.exit_code == 2 and "--reason" in r.stderr
    r = invoke(db, "criteria", "retract", "SCR-0001", "wfn_category", "--reason", "another patient's chart", operator="dr.a")
    assert r.exit_code == 0 and "entered in error" in r.output, r.output
    assert crit()["state"] == "pending"
    rep = json.loads(invoke(db, "criteria", "show", "SCR-0001", "--json").output)
    assert rep["current"] == []
    assert [(h["value"], h["entered_in_error"], h["retraction"]) for h in rep["history"]] == [("probable", True, False), (None, False, True)]
    shown = invoke(db, "criteria", "show", "SCR-0001").output
    assert "\u0336" in shown and "[entered in error]" in shown
    assert audit(db, "criterion_retracted")[0][0] == "dr.a"
    r = invoke(db, "criteria", "retract", "SCR-0001", "wfn_category", "--reason", "again", operator="dr.a")
    assert r.exit_code == 2 and "no current value" in r.stderr
