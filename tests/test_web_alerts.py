"""Alerts over a simulated night through the real daemon, and the operator accounts.

The night runs on a virtual clock; the alert engine is evaluated every 5 virtual
seconds, as the page's live stream would.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from collector.users import passwords
from collector.users import store as users
from collector.cli import main as cli
from collector.clock import VirtualClock
from collector.features import build_daemon
from collector.storage.db import open_db
from collector.web.auth import LoginThrottle, SessionStore
from collector.web.trend import session_trend
from simulators.ble_backend import SimulatedAir
from simulators.oximeter import SimulatedOximeter
from simulators.scenario import Interval
from conftest import T0, fast_config, invoke, operator_token, scenario


async def _night_with_alerts(db_path: Path, sc: Any, config: dict[str, Any]) -> dict[str, Any]:
    clock = VirtualClock(start=T0)
    air = SimulatedAir(clock)
    dev = air.add(SimulatedOximeter(sc, clock))
    pump = asyncio.create_task(clock.run())
    daemon = build_daemon(db_path, clock=clock, config=config, ble_backend=air.client_backend, scanner_backend=air.scanner_backend)
    web = daemon.services["web"]
    seen: list[dict[str, Any]] = []
    acked: list[dict[str, Any]] = []
    try:
        await daemon.add_subject("SCR-0007")
        play = asyncio.create_task(dev.run())
        info = await daemon.start_night("SCR-0007", dev.address)
        while not play.done():
            await clock.sleep(5)
            for a in web.alerts.evaluate():
                if a["id"] not in {s["id"] for s in seen}:
                    seen.append(a)
            # The operator acknowledges the first disconnect alert while it is still active.
            for a in web.alerts.visible():
                if a["kind"] == "device_disconnected" and not a["acknowledged_by"] and not acked:
                    acked.append(await web.alerts.acknowledge(a["id"], by="alice", note="moved the laptop closer"))
        visible_at_end = web.alerts.evaluate()
        conn = daemon.open_reader()
        trend = session_trend(conn, info["id"], minutes=None, now=clock.now())
        conn.close()
        await daemon.stop_session(info["id"], by="alice")
    finally:
        await daemon.shutdown()
        pump.cancel()
    return {"seen": seen, "acked": acked, "end": visible_at_end, "session_id": info["id"], "trend": trend}


def test_alerts_are_raised_held_until_acknowledged_and_audited(db_path: Path) -> None:
    cfg = fast_config()
    cfg["web"] = {"alert_disconnected_s": 30, "alert_finger_out_s": 15, "alert_no_sample_s": 30}
    sc = scenario(
        duration_s=4200, baseline_spo2=87.0, noise_spo2=0.5,  # a low night: the live T90 alert comes after 1 h analysed
        disconnects=[Interval(300, 120)], finger_out=[Interval(700, 60)], silences=[Interval(1000, 90)],
    )
    out = asyncio.run(_night_with_alerts(db_path, sc, cfg))
    kinds = [a["kind"] for a in out["seen"]]
    assert "device_disconnected" in kinds and "finger_out" in kinds and "t90_above_threshold" in kinds, kinds
    assert "no_sample" in kinds or kinds.count("device_disconnected") >= 2, kinds  # the silent link
    assert all(a["session_id"] == out["session_id"] and a["subject_id"] == "SCR-0007" for a in out["seen"])
    # Acknowledged while active: it stays until the link is back, then goes; the others wait for a person.
    ack = out["acked"][0]
    assert ack["acknowledged_by"] == "alice"
    end_ids = {a["id"] for a in out["end"]}
    assert ack["id"] not in end_ids
    finger = next(a for a in out["seen"] if a["kind"] == "finger_out")
    held = next(a for a in out["end"] if a["id"] == finger["id"])
    assert held["active"] is False and held["acknowledged_by"] is None  # cleared, still showing until acknowledged

    conn = sqlite3.connect(str(db_path))
    try:
        audit = conn.execute("SELECT actor, session_id, new_value, reason FROM audit WHERE action = 'alert_acknowledged'").fetchall()
        raised = conn.execute("SELECT detail_json FROM events WHERE kind = 'alert_raised'").fetchall()
        raises = conn.execute("SELECT COUNT(*), SUM(raise_count) FROM alerts").fetchone()
    finally:
        conn.close()
    assert audit == [("alice", out["session_id"], audit[0][2], "moved the laptop closer")]
    assert json.loads(audit[0][2])["alert"] == "device_disconnected"
    # One row per alert (a repeat before acknowledgement counts on its row); every raise is one event.
    assert raises[0] == len(out["seen"]) and len(raised) == raises[1]
    # The whole-night trend is bucketed and has a break where the link was down.
    pts = out["trend"]["points"]
    assert 0 < len(pts) <= 240 and out["trend"]["bucket_s"] >= 5
    gaps = [b["t_ms"] - a["t_ms"] for a, b in zip(pts, pts[1:])]
    assert max(gaps) >= 100_000


def test_disk_and_storage_alerts(db_path: Path) -> None:
    cfg = fast_config()
    cfg["web"] = {"disk_min_free_mb": 1e12}
    daemon = build_daemon(db_path, config=cfg)
    try:
        alerts = daemon.services["web"].alerts.evaluate()
        assert [a["kind"] for a in alerts] == ["disk_almost_full"] and alerts[0]["session_id"] is None
        assert "MB free" in alerts[0]["message"]
    finally:
        daemon.writer.close()


def test_session_store_and_throttle_units(tmp_path: Path) -> None:
    t = [1000.0]
    db = tmp_path / "s.sqlite"
    operator_token(db, "alice", "technician")
    store = SessionStore(db, idle_s=60, max_s=600, now=lambda: t[0])
    key, s = store.create("alice", "password")
    got = store.get(key)
    assert got is not None and got.operator == "alice" and got.role == "technician" and got.csrf == s.csrf
    assert store.get("nope") is None and store.get(None) is None
    t[0] += 59
    assert store.get(key) is not None
    t[0] += 120
    assert store.get(key) is None
    # one client and one name: locked after `limit` failures, for that client only
    throttle = LoginThrottle(limit=2, window_s=100, lock_s=30, client_limit=5, global_per_min=1000, now=lambda: t[0])
    throttle.failed("Alice", "10.0.0.9")
    assert throttle.locked_for("alice", "10.0.0.9") == 0
    throttle.failed("alice", "10.0.0.9")
    assert throttle.locked_for("ALICE", "10.0.0.9") == pytest.approx(30)
    assert throttle.locked_for("alice", "127.0.0.1") == 0  # the operator at the ward laptop is not locked out
    t[0] += 31
    assert throttle.locked_for("alice", "10.0.0.9") == 0
    # one client spraying one password over many names
    for i in range(5):
        throttle.failed(f"name{i}", "10.0.0.7")
    assert throttle.locked_for("somebody-new", "10.0.0.7") > 0 and throttle.locked_for("somebody-new", "10.0.0.8") == 0
    # everyone: a flood is slowed, briefly
    flood = LoginThrottle(global_per_min=3, now=lambda: t[0])
    for i in range(3):
        flood.failed(f"n{i}", f"10.1.0.{i}")
    assert 0 < flood.locked_for("alice", "127.0.0.1") <= 60


# -- operators ----------------------------------------------------------------------------------------
def test_password_hashes_are_salted_and_checked() -> None:
    a, b = passwords.hash_password("same password"), passwords.hash_password("same password")
    assert a != b and a.startswith("scrypt$") and "same password" not in a
    assert passwords.check_password("same password", a) and not passwords.check_password("same passwore", a)
    assert not passwords.check_password("x", "garbage") and not passwords.check_password("x", "scrypt$1$2$3$!!$??")


def test_user_cli_add_list_disable(tmp_path: Path) -> None:
    db = tmp_path / "c.sqlite"
    run = lambda *args, input=None: invoke(db, *args, operator="admin", input=input)  # noqa: E731
    r = run("user", "add", "alice", "--role", "technician", "--password-stdin", input="long enough pw\n")
    assert r.exit_code == 0, r.output
    r = run("user", "add", "alice", "--role", "technician", "--password-stdin", input="long enough pw\n")
    assert r.exit_code == 5 and "already exists" in r.output
    r = run("user", "add", "bob", "--role", "technician", "--password-stdin", input="short\n")
    assert r.exit_code == 2 and "8-200 characters" in r.output
    r = run("user", "add", "9lives", "--role", "technician", "--password-stdin", input="long enough pw\n")
    assert r.exit_code == 2 and "operator name" in r.output
    r = run("user", "add", "carol", "--role", "investigator", input="prompted pw 1\nprompted pw 1\n")
    assert r.exit_code == 0, r.output
    r = run("user", "list", "--json")
    rows = json.loads(r.output)
    assert [(u["name"], u["role"]) for u in rows] == [("admin", "admin"), ("alice", "technician"), ("carol", "investigator")] and all("hash" not in json.dumps(u) for u in rows)
    assert run("user", "disable", "alice").exit_code == 0
    assert run("user", "password", "carol", "--password-stdin", input="a new password\n").exit_code == 0
    conn = open_db(db).conn
    try:
        assert users.verify_login(conn, "carol", "a new password") and not users.verify_login(conn, "carol", "prompted pw 1")
        assert not users.verify_login(conn, "alice", "long enough pw")  # disabled
        actions = [r[0] for r in conn.execute("SELECT action FROM audit WHERE actor = 'admin' ORDER BY id")]
    finally:
        conn.close()
    assert actions == ["operator_added", "operator_added", "operator_disabled", "operator_password_changed"]
