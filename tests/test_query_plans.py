"""No screen, listing or start-up reads the whole samples table.

A study of 600 nights stores about 17 M samples: a query that scans them made ``session
list`` 172 times slower at 100x the data and the daemon's start-up grow from 3.4 s to 8 s.
Each statement the real paths run (the CLI's read commands, every GET route of the API, the
daemon's start-up) is recorded as SQLite runs it, then its plan is asked for with
``EXPLAIN QUERY PLAN``: none may ``SCAN`` the samples table (an index search or the
per-session stats row is fine).  Statements are recorded with a trace callback on the
connections the code opens itself; nothing is replaced.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
from pathlib import Path
from typing import Any, Iterator

import pytest
from fastapi.testclient import TestClient

from collector.api import create_app
from collector.features import build_daemon
from collector.oximetry import store as night_store
from collector.runner import latest_stored_time
from collector.storage import db as storage_db
from collector.storage import repo, writer as storage_writer
from conftest import fast_config, invoke, run_night, scenario
from simulators.scenario import Interval

TOKEN = "test-token-0123456789"
BIG_TABLES = ("spo2_samples",)


class Recorder:
    """Every statement run on connections opened while it is installed."""

    def __init__(self) -> None:
        self.statements: list[str] = []

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        real = storage_db.connect

        def traced(*args: Any, **kwargs: Any) -> sqlite3.Connection:
            conn = real(*args, **kwargs)
            conn.set_trace_callback(self.statements.append)
            return conn

        monkeypatch.setattr(storage_db, "connect", traced)
        monkeypatch.setattr(storage_writer, "connect", traced)

    def reads(self) -> list[str]:
        """Distinct statements that read (SELECT / WITH, INSERT ... SELECT), trigger lines left out."""
        out = []
        for sql in dict.fromkeys(s.strip() for s in self.statements):
            head = sql.split(None, 1)[0].upper() if sql else ""
            if head in ("SELECT", "WITH") or (head == "INSERT" and re.search(r"\bSELECT\b", sql, re.I)):
                out.append(sql)
        return out


def scans(db: Path, sql: str) -> list[str]:
    """Plan steps that read the samples table in full, or once per row of another table.

    SQLite names a table by its alias in a plan, so aliases count too.  A search of the index
    without a key walks all of it, like a scan.  A correlated subquery over the samples (a
    count per session in a list of all sessions) reads every sample of every listed session
    even through the index: that is a scan as well.
    """
    names = set(BIG_TABLES)
    for table in BIG_TABLES:
        names |= set(re.findall(rf"\b{table}\s+(?:AS\s+)?(?!WHERE|ON|JOIN|LEFT|ORDER|GROUP|LIMIT|USING)(\w+)", sql, re.I))
    conn = sqlite3.connect(str(db))
    try:
        plan = [(row[0], row[1], row[3]) for row in conn.execute("EXPLAIN QUERY PLAN " + sql)]
    finally:
        conn.close()
    parents = {node: detail for node, _, detail in plan}
    bad = []
    for node, parent, detail in plan:
        m = re.match(r"(SCAN|SEARCH) (\w+)", detail)
        if not m or m.group(2) not in names:
            continue
        # A SEARCH without a key constraint walks the whole index (a MAX over every session's samples);
        # a bare "SEARCH t" is SQLite's one-step MIN/MAX of the rowid.
        unbounded = m.group(1) == "SCAN" or (detail != m.group(0) and not re.search(r"\((session_id=|rowid[<>=])", detail))
        if unbounded or parents.get(parent, "").startswith("CORRELATED"):
            bad.append(detail)
    return bad


@pytest.fixture(scope="module")
def night_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two stored nights for two subjects (samples, gaps, reports), made by the real daemon."""
    db = tmp_path_factory.mktemp("plans") / "collector.sqlite"
    asyncio.run(run_night(db, [scenario(), scenario(address="SIM-TEST-02", disconnects=[Interval(600, 60)])]))
    return db


def assert_no_scan(db: Path, recorder: Recorder) -> None:
    reads = recorder.reads()
    assert reads, "nothing was recorded"
    bad = {sql: steps for sql in reads if (steps := scans(db, sql))}
    assert not bad, "full scans of the samples table:\n" + "\n".join(f"{steps}: {sql}" for sql, steps in bad.items())


@pytest.mark.parametrize("args", [
    ("subject", "list"),
    ("session", "list"),
    ("session", "list", "--subject", "SCR-0001"),
    ("session", "list", "--state", "stopped"),
    ("report", "1"),
    ("criteria", "show", "SCR-0001"),
    ("eligibility", "SCR-0001"),
])
def test_cli_read_commands_use_indexes(night_db: Path, monkeypatch: pytest.MonkeyPatch, args: tuple[str, ...]) -> None:
    recorder = Recorder()
    recorder.install(monkeypatch)
    result = invoke(night_db, *args)
    assert result.exit_code == 0, result.output
    assert_no_scan(night_db, recorder)


def test_every_api_read_and_the_daemon_start_up_use_indexes(night_db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = Recorder()
    recorder.install(monkeypatch)
    assert latest_stored_time(night_db) is not None  # a virtual clock resumes after the newest stored sample
    daemon = build_daemon(night_db, config=fast_config())
    try:
        asyncio.run(daemon.resume_open_sessions())
        app = create_app(daemon, TOKEN)
        with TestClient(app) as client:
            called = []
            for path, ops in app.openapi()["paths"].items():
                if "get" not in ops or path.endswith(("/scan", "/events/stream")):  # the radio; an endless stream
                    continue
                url = path.replace("{subject_id}", "SCR-0001").replace("{session_id}", "1")
                r = client.get(url, headers={"Authorization": f"Bearer {TOKEN}"})
                assert r.status_code < 500, (url, r.text)
                called.append(url)
            assert any("/trend" in u for u in called) and any(u.endswith("/sessions") for u in called)
    finally:
        daemon.writer.close()
    assert_no_scan(night_db, recorder)


def test_session_stats_match_the_samples(night_db: Path) -> None:
    """The per-session row the listings read is exactly what counting the samples gives."""
    conn = storage_db.open_db(night_db).conn
    try:
        for s in repo.list_sessions(conn):
            n, first, last = conn.execute("SELECT COUNT(*), MIN(host_utc_ms), MAX(host_utc_ms) FROM spo2_samples "
                                          "WHERE session_id = ?", (s["id"],)).fetchone()
            assert s["samples"] == n == night_store.sample_count(conn, s["id"]) and n > 0
            assert night_store.sample_span(conn, s["id"]) == (first, last)
            assert night_store.last_sample_ms(conn, s["id"]) == last
        assert night_store.latest_sample_ms(conn) == conn.execute("SELECT MAX(host_utc_ms) FROM spo2_samples").fetchone()[0]
    finally:
        conn.close()


def test_the_migration_fills_the_stats_of_an_older_database(tmp_path: Path, night_db: Path) -> None:
    """A database made before the stats table gets them from its samples, once, when it is opened."""
    old = tmp_path / "old.sqlite"
    src = sqlite3.connect(str(night_db))
    dst = sqlite3.connect(str(old))
    src.backup(dst)
    src.close()
    dst.execute("DROP TRIGGER spo2_samples_stats")
    dst.execute("DROP TABLE session_sample_stats")
    dst.execute("DELETE FROM schema_migrations WHERE name = 'session sample stats'")
    dst.commit()
    dst.close()
    conn = storage_db.open_db(old).conn
    try:
        counts = dict(conn.execute("SELECT session_id, COUNT(*) FROM spo2_samples GROUP BY session_id").fetchall())
        assert {s["id"]: s["samples"] for s in repo.list_sessions(conn)} == counts
    finally:
        conn.close()
