"""Shared fixtures: simulated nights through the real daemon, on a virtual clock."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from collector.clock import VirtualClock
from collector.config import defaults
from collector.daemon import Daemon
from collector.features import build_daemon
from simulators.ble_backend import SimulatedAir
from simulators.oximeter import SimulatedOximeter
from simulators.scenario import Scenario, parse_scenario

# The tests never read or write the user's own data directory (site config.toml, the config
# cache, a default database): one private folder per run, inherited by every child process.
os.environ["XDG_DATA_HOME"] = tempfile.mkdtemp(prefix="collector-tests-xdg-")

T0 = 1_767_000_000.0  # a fixed virtual start time (2025-12-29T09:20:00Z)


def scenario(**overrides: Any) -> Scenario:
    """A short, quiet night; tests override what they exercise."""
    base = parse_scenario({"device": {"protocol": "plx", "address": "SIM-TEST-01"}, "night": {"duration_s": 1800, "seed": 3}})
    return dataclasses.replace(base, **overrides)


def fast_config(**oximetry: Any) -> dict[str, Any]:
    cfg = defaults()
    cfg["ble"]["scan_timeout_s"] = 0.5
    cfg["storage"]["flush_interval_s"] = 0.05
    cfg["storage"]["synchronous"] = "NORMAL"  # WAL + NORMAL survives a killed process; no fsync per test commit
    cfg["oximetry"].update(oximetry)
    return cfg


@dataclasses.dataclass
class NightRun:
    daemon: Daemon
    devices: list[SimulatedOximeter]
    session_ids: list[int]
    stopped: list[dict[str, Any]]
    clock: VirtualClock


async def run_night(
    db_path: Path,
    scenarios: list[Scenario],
    *,
    config: dict[str, Any] | None = None,
    capture: Path | None = None,
    subjects: list[str] | None = None,
    before_stop: Callable[[NightRun], Any] | None = None,
    on_start: Callable[[NightRun], Any] | None = None,
    play_timeout_s: float = 120.0,
) -> NightRun:
    """Play every scenario to its end through the daemon, stop the sessions, shut down."""
    clock = VirtualClock(start=T0)
    air = SimulatedAir(clock)
    devices = [air.add(SimulatedOximeter(sc, clock)) for sc in scenarios]
    pump = asyncio.create_task(clock.run())
    daemon = build_daemon(db_path, clock=clock, config=config or fast_config(), ble_backend=air.client_backend,
                    scanner_backend=air.scanner_backend, capture_path=capture)
    run = NightRun(daemon, devices, [], [], clock)
    try:
        plays = []
        for i, dev in enumerate(devices):
            subject = (subjects or [f"SCR-{i + 1:04d}" for i in range(len(devices))])[i]
            await daemon.add_subject(subject)
            plays.append(asyncio.create_task(dev.run()))
            info = await daemon.start_night(subject, dev.address)
            run.session_ids.append(info["id"])
        if on_start is not None:
            on_start(run)
        await asyncio.wait_for(asyncio.gather(*plays), timeout=play_timeout_s)
        if before_stop is not None:
            before_stop(run)
        for sid in run.session_ids:
            run.stopped.append(await daemon.stop_session(sid))
    finally:
        await daemon.shutdown()
        pump.cancel()
    return run


def wait_until(predicate: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    """Poll a condition owned by another process (a subprocess daemon); fail loudly on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "collector.sqlite"


# -- operators: tests act as a logged-in operator, as a person does ---------------------------------------
TEST_PASSWORD = "test password 1"
TEST_SCRYPT_N = 2**10  # the lowest cost [operator] scrypt_n allows: tests hash quickly, production keeps its own
ROLE_PREFERENCE = ("investigator", "technician", "data_manager", "admin")


def operator_token(db: Path, name: str = "tester", role: str = "admin") -> str:
    """A login token for operator NAME with ROLE, as ``collector login`` makes one.

    Test setup only: the operator is written (or given ROLE) straight into its table, without
    the audit row ``collector user add`` writes, so each test's audit trail holds what it tests.
    """
    from collector.clock import utc_iso
    from collector.storage.db import open_db, transaction
    from collector.users import store
    from collector.users.passwords import hash_password

    conn = open_db(db).conn
    try:
        with transaction(conn):
            if conn.execute("SELECT 1 FROM users WHERE name = ?", (name,)).fetchone() is None:
                conn.execute("INSERT INTO users (name, password_hash, role, created_utc, created_by, password_changed_utc) "
                             "VALUES (?, ?, ?, ?, 'test-setup', ?)", (name, _test_hash(), role, utc_iso(T0), utc_iso(T0)))
            else:
                conn.execute("UPDATE users SET role = ? WHERE name = ?", (role, name))
            token, _ = store.create_token(conn, name, kind="cli", at=time.time())
    finally:
        conn.close()
    return token


_HASH: list[str] = []


def _test_hash() -> str:
    from collector.users.passwords import hash_password

    if not _HASH:
        _HASH.append(hash_password(TEST_PASSWORD, n=TEST_SCRYPT_N))
    return _HASH[0]


def operator_env(db: Path, name: str = "tester", role: str = "admin") -> dict[str, str]:
    """Environment for a CLI call (CliRunner ``env=`` or a subprocess) acting as NAME with ROLE."""
    return {"COLLECTOR_TOKEN": operator_token(db, name, role)}


def role_for(args: list[str] | tuple[str, ...]) -> str | None:
    """A role allowed to run the command named at the start of ARGS (None: it needs no login)."""
    import click

    from collector.cli import main
    from collector.context import access_of

    cmd: click.Command = main
    rest = list(args)
    while rest:
        a = rest.pop(0)
        if a in ("--db", "--config"):
            rest = rest[1:]
        elif isinstance(cmd, click.Group) and a in cmd.commands:
            cmd = cmd.commands[a]
        elif not a.startswith("-"):
            break
    access = access_of(cmd)
    if access is None or access.roles is None:
        return None
    return next(r for r in ROLE_PREFERENCE if r in access.roles)


def invoke(db: Path, *args: str, operator: str = "tester", config: Path | None = None, env: dict[str, str] | None = None,
           **kwargs: Any) -> Any:
    """``collector --db DB [--config CONFIG] ARGS`` through click's CliRunner, logged in as OPERATOR with a role
    the command allows (the audit trail then names OPERATOR)."""
    from click.testing import CliRunner

    from collector.cli import main

    role = role_for(args)
    env = dict(env or {})
    if role is not None:
        env.update(operator_env(db, operator, role))
    opts = ["--db", str(db)] + (["--config", str(config)] if config else [])
    return CliRunner().invoke(main, [*opts, *args], env=env, **kwargs)
