"""The daemon as a real process: CLI -> HTTP API -> daemon -> simulator, kill -9 and resume, clean stop."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import operator_env, role_for

from conftest import wait_until

SCENARIO = """
[device]
protocol = "plx"
address = "SIM-PROC-01"
interval_s = 1.0
[night]
duration_s = 36000
seed = 5
"""


def collector(db: Path, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "collector", "--db", str(db), *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **operator_env(db, "tester", role_for(args) or "admin")})
    if check and proc.returncode != 0:
        raise AssertionError(f"collector {' '.join(args)} failed ({proc.returncode}): {proc.stderr}")
    return proc


class Daemon:
    """``collector run --simulate`` in a subprocess; ready when it prints its address."""

    def __init__(self, db: Path, scenario: Path, speed: str = "1", config: Path | None = None) -> None:
        extra = ["--config", str(config)] if config else []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "collector", "--db", str(db), *extra, "run", "--port", "0", "--simulate", str(scenario), "--speed", speed],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        line = self.proc.stdout.readline()  # blocks until the daemon is ready (or dies)
        if "ready" not in line:
            raise AssertionError(f"daemon did not start: {line!r} {self.proc.stderr.read()}")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=60)


@pytest.fixture
def scenario_file(tmp_path: Path) -> Path:
    path = tmp_path / "night.toml"
    path.write_text(SCENARIO)
    return path


def samples(db: Path, session_id: int) -> list[tuple]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute("SELECT host_utc_ms, spo2_pct FROM spo2_samples WHERE session_id = ? ORDER BY host_utc_ms", (session_id,)).fetchall()
    finally:
        conn.close()


def test_cli_drives_the_daemon_and_sigterm_closes_sessions_as_interrupted(db_path, scenario_file):
    collector(db_path, "subject", "add", "SCR-0100")
    d = Daemon(db_path, scenario_file, speed="20")
    try:
        started = json.loads(collector(db_path, "session", "start", "--subject", "SCR-0100", "--kind", "night", "--oximeter", "SIM-PROC-01", "--json").stdout)
        sid = started["id"]
        wait_until(lambda: len(samples(db_path, sid)) >= 40, what="samples to arrive")
        status = json.loads(collector(db_path, "status", "--json").stdout)
        assert status["beds"][0]["session_id"] == sid and status["beds"][0]["link_state"] == "connected"
        # A second night for the same subject, or on the same oximeter, is refused with one line.
        again = collector(db_path, "session", "start", "--subject", "SCR-0100", "--oximeter", "SIM-PROC-01", check=False)
        assert again.returncode == 5 and again.stderr.startswith("error: ") and len(again.stderr.strip().splitlines()) == 1
    finally:
        assert d.stop(signal.SIGTERM) == 0
    conn = sqlite3.connect(db_path)
    assert conn.execute("SELECT state FROM sessions WHERE id = ?", (sid,)).fetchone()[0] == "interrupted"
    actions = [r[0] for r in conn.execute("SELECT action FROM audit WHERE session_id = ? ORDER BY id", (sid,))]
    assert actions[0] == "session_started" and "session_interrupted" in actions
    assert not (db_path.parent / (db_path.name + ".daemon.json")).exists()
    # Offline: the session can still be stopped, and its report is computed.
    stopped = json.loads(collector(db_path, "session", "stop", str(sid), "--json").stdout)
    assert stopped["state"] == "stopped" and stopped["report"]["recording_s"] > 0
    again = collector(db_path, "session", "stop", str(sid), check=False)
    assert again.returncode == 5 and "not open" in again.stderr


def test_kill_9_loses_at_most_a_second_and_the_session_resumes(db_path, scenario_file):
    collector(db_path, "subject", "add", "SCR-0101")
    d = Daemon(db_path, scenario_file, speed="1")
    sid = json.loads(collector(db_path, "session", "start", "--subject", "SCR-0101", "--oximeter", "SIM-PROC-01", "--json").stdout)["id"]
    wait_until(lambda: len(samples(db_path, sid)) >= 4, what="samples to arrive")
    killed_at = time.time()
    d.proc.kill()  # SIGKILL: no flush, no goodbye
    d.proc.wait(timeout=30)
    conn = sqlite3.connect(db_path)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    last_ms = conn.execute("SELECT MAX(host_utc_ms) FROM spo2_samples WHERE session_id = ?", (sid,)).fetchone()[0]
    assert killed_at - last_ms / 1000 <= 1.6, "a received sample is durable within about a second"
    assert conn.execute("SELECT state FROM sessions WHERE id = ?", (sid,)).fetchone()[0] == "open"
    conn.close()

    d2 = Daemon(db_path, scenario_file, speed="1")
    try:
        wait_until(lambda: any(t > last_ms + 1000 for t, _ in samples(db_path, sid)), what="recording to resume")
    finally:
        d2.stop()
    conn = sqlite3.connect(db_path)
    gaps = conn.execute("SELECT start_utc_ms, end_utc_ms, cause FROM gaps WHERE session_id = ?", (sid,)).fetchall()
    assert [g[2] for g in gaps] == ["daemon_down"]
    assert gaps[0][0] == last_ms and gaps[0][1] > last_ms
    assert conn.execute("SELECT COUNT(*) FROM sessions").fetchone()[0] == 1, "resumed in the same session"
    assert any(r[0] == "session_resumed" for r in conn.execute("SELECT action FROM audit WHERE session_id = ?", (sid,)))


def test_commands_that_need_the_daemon_say_so(db_path):
    proc = collector(db_path, "status", check=False)
    assert proc.returncode == 6
    assert proc.stderr.strip().startswith("error: the collector daemon is not running") and "collector --db" in proc.stderr


def test_unknown_oximeter_is_a_clear_error_and_nothing_is_created(db_path, tmp_path, scenario_file):
    cfg = tmp_path / "site.toml"
    cfg.write_text("[ble]\nscan_timeout_s = 0.5\n")
    collector(db_path, "subject", "add", "SCR-0102")
    d = Daemon(db_path, scenario_file, config=cfg)
    try:
        proc = collector(db_path, "session", "start", "--subject", "SCR-0102", "--oximeter", "AA:BB:CC:DD:EE:FF", check=False)
    finally:
        d.stop()
    assert proc.returncode == 7 and "not found" in proc.stderr and "collector scan" in proc.stderr
    assert sqlite3.connect(db_path).execute("SELECT COUNT(*) FROM sessions").fetchone()[0] == 0


def test_busy_api_port_is_a_one_line_error(db_path, scenario_file):
    import socket

    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    try:
        proc = collector(db_path, "run", "--port", str(holder.getsockname()[1]), "--simulate", str(scenario_file), check=False)
    finally:
        holder.close()
    assert proc.returncode == 3
    assert proc.stderr.startswith("error: cannot serve the control API") and len(proc.stderr.strip().splitlines()) == 1


def test_simulated_nights_are_marked_and_need_an_explicit_database(db_path, scenario_file, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "collector", "run", "--simulate", str(scenario_file)], capture_output=True, text=True,
                          timeout=60, env={k: v for k, v in os.environ.items() if k != "COLLECTOR_DB"}, cwd=tmp_path)
    assert proc.returncode == 2 and "explicit database" in proc.stderr
    collector(db_path, "subject", "add", "SCR-0103")
    d = Daemon(db_path, scenario_file, speed="20")
    try:
        sid = json.loads(collector(db_path, "session", "start", "--subject", "SCR-0103", "--oximeter", "SIM-PROC-01", "--json").stdout)["id"]
    finally:
        d.stop()
    assert sqlite3.connect(db_path).execute("SELECT origin FROM sessions WHERE id = ?", (sid,)).fetchone()[0] == "simulated"


def test_two_daemons_started_at_the_same_moment_one_records_the_other_exits(db_path, scenario_file):
    """The OS lock is taken before anything resumes: exactly one daemon runs, the other says so in one line."""
    cmd = [sys.executable, "-m", "collector", "--db", str(db_path), "run", "--port", "0", "--simulate", str(scenario_file)]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        firsts = [p.stdout.readline() for p in procs]  # a ready line, or EOF when the process exits
        ready = [p for p, line in zip(procs, firsts) if "ready" in line]
        refused = [p for p in procs if p not in ready]
        assert len(ready) == 1 and len(refused) == 1, firsts
        loser = refused[0]
        assert loser.wait(timeout=30) == 5  # Conflict
        err = loser.stderr.read().strip().splitlines()
        # Whichever check it reaches first: the running daemon's API, or the lock taken before resuming.
        assert len(err) == 1 and ("already recording" in err[0] or "already running" in err[0]), err
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                p.wait(timeout=60)
