"""The laptop: keep-awake through logind's real D-Bus API, systemd's notify protocol from the real
daemon process, the clock's synchronisation state, and ``collector doctor``."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from dbus_fast import BusType, Message, MessageType
from dbus_fast.aio import MessageBus

from collector.host import clock_sync, sd_notify
from collector.host.doctor import Setup, check_bluetooth, check_database, check_disk, check_serial, run_checks
from collector.config import defaults
from collector.clock import VirtualClock
from simulators.bluez import FakeBluez
from conftest import fast_config, invoke, run_night, scenario
from private_bus import system_bus  # noqa: F401  (a fixture)


class FakeLogind:
    """``org.freedesktop.login1`` as far as inhibitor locks go: Inhibit hands out one end of a pipe,
    and the lock lasts until the caller closes it (we watch the other end, as logind does)."""

    def __init__(self) -> None:
        self.bus: MessageBus | None = None
        self.calls: list[list[Any]] = []
        self.watch_ends: list[int] = []
        self._tasks: set[asyncio.Future[None]] = set()

    async def start(self) -> None:
        self.bus = await MessageBus(bus_type=BusType.SYSTEM, negotiate_unix_fd=True).connect()
        self.bus.add_message_handler(self._handle)
        await self.bus.request_name("org.freedesktop.login1")

    def _handle(self, msg: Message) -> bool | None:
        if msg.message_type != MessageType.METHOD_CALL or msg.member != "Inhibit":
            return None
        self.calls.append(list(msg.body))
        ours, theirs = os.pipe()
        self.watch_ends.append(ours)
        self._tasks.add(asyncio.ensure_future(self._reply(Message.new_method_return(msg, "h", [0], unix_fds=[theirs]), theirs)))
        return True

    async def _reply(self, reply: Message, theirs: int) -> None:
        assert self.bus is not None
        await self.bus.send(reply)
        os.close(theirs)  # as logind does: once sent, only the caller holds the lock's end

    def held(self) -> list[bool]:
        """Per lock handed out: still held (the caller's end is open)?"""
        out = []
        for fd in self.watch_ends:
            os.set_blocking(fd, False)
            try:
                data = os.read(fd, 1)
                out.append(data != b"")  # EOF: every copy of the caller's end is closed
            except BlockingIOError:
                out.append(True)
        return out

    def stop(self) -> None:
        if self.bus is not None:
            self.bus.disconnect()


# -- keep-awake --------------------------------------------------------------------------------------
INHIBIT_ARGS = ["sleep:idle", "ALS screening collector", "recording a screening night", "block"]


def test_a_night_holds_a_logind_sleep_lock_and_releases_it_when_it_ends(db_path, system_bus):
    async def main() -> tuple[FakeLogind, Any]:
        logind = FakeLogind()
        await logind.start()
        checks: list[asyncio.Future[Any]] = []

        async def check(run: Any) -> Any:
            host = run.daemon.services["host"]
            await host.sync()
            return host.keep_awake.held, logind.held()

        try:
            await run_night(db_path, [scenario()], on_start=lambda run: checks.append(asyncio.ensure_future(check(run))))
            during = await checks[0]
        finally:
            logind.stop()
        return logind, during

    logind, during = asyncio.run(main())
    assert during == (True, [True])            # held while the night recorded
    assert logind.calls == [INHIBIT_ARGS]      # one lock, with the documented arguments
    assert logind.held() == [False]            # and released when nothing records any more


def test_without_logind_the_night_records_and_says_why_once(db_path, system_bus, caplog):
    run = asyncio.run(run_night(db_path, [scenario()]))
    assert run.stopped and run.stopped[0]["report"]["analysed_s"] > 0
    problems = [r.getMessage() for r in caplog.records if "cannot keep the laptop awake" in r.getMessage()]
    assert len(problems) == 1 and "never sleep" in problems[0]
    assert run.daemon.services["host"].keep_awake.held is False


def test_keep_awake_off_in_config_takes_no_lock(db_path, system_bus):
    async def main() -> FakeLogind:
        logind = FakeLogind()
        await logind.start()
        config = fast_config()
        config["host"]["keep_awake"] = False
        try:
            await run_night(db_path, [scenario()], config=config)
        finally:
            logind.stop()
        return logind

    assert asyncio.run(main()).calls == []


# -- the clock's synchronisation ---------------------------------------------------------------------
CHRONY_SYNCED = """Reference ID    : C0A80001 (ntp.example.cn)
Stratum         : 3
Ref time (UTC)  : Tue Dec 01 02:10:11 2026
System time     : 0.000123456 seconds slow of NTP time
Last offset     : -0.000011000 seconds
RMS offset      : 0.000050000 seconds
Frequency       : 12.345 ppm fast
Leap status     : Normal
"""

CHRONY_UNSYNCED = """Reference ID    : 00000000 ()
Stratum         : 0
System time     : 0.000000000 seconds fast of NTP time
Leap status     : Not synchronised
"""


def test_clock_sync_parsers_read_the_tools_documented_output():
    synced = clock_sync.parse_chrony_tracking(CHRONY_SYNCED)
    assert synced is not None and synced.synchronised and synced.source == "chrony"
    assert synced.offset_s == pytest.approx(-0.000123456)
    assert clock_sync.parse_chrony_tracking(CHRONY_UNSYNCED).synchronised is False
    assert clock_sync.parse_chrony_tracking("506 Cannot talk to daemon") is None
    assert clock_sync.parse_timedatectl("Timezone=Asia/Shanghai\nNTP=yes\nNTPSynchronized=yes\n").synchronised is True
    assert clock_sync.parse_timedatectl("NTP=no\nNTPSynchronized=no\n").synchronised is False
    assert clock_sync.parse_timedatectl("garbage") is None
    w32 = "Leap Indicator: 0(no warning)\nStratum: 4 (secondary reference)\nSource: time.windows.com,0x9\n"
    assert clock_sync.parse_w32tm(w32).synchronised is True
    assert clock_sync.parse_w32tm("Leap Indicator: 3(not synchronized)\nSource: Local CMOS Clock\n").synchronised is False
    # The kernel's adjtimex state: TIME_ERROR (5) or STA_UNSYNC means not synchronised; STA_NANO scales the offset.
    assert clock_sync.kernel_state(5, 0x0040, 0, 16_000_000).synchronised is False
    k = clock_sync.kernel_state(0, 0x2001, 250_000, 1000)
    assert k.synchronised and k.offset_s == pytest.approx(0.00025)


def test_this_host_answers_with_some_source():
    state = clock_sync.read()
    assert state.source in ("chrony", "timedatectl", "w32tm", "kernel", "none")
    assert state.synchronised in (True, False, None)


def test_every_session_records_the_clock_state_it_was_recorded_under(db_path):
    run = asyncio.run(run_night(db_path, [scenario()]))
    conn = sqlite3.connect(db_path)
    settings = json.loads(conn.execute("SELECT settings_json FROM sessions WHERE id = ?", (run.session_ids[0],)).fetchone()[0])
    conn.close()
    assert settings["clock_sync"]["source"] in ("chrony", "timedatectl", "w32tm", "kernel", "none")
    assert "synchronised" in settings["clock_sync"]


# -- systemd's notify protocol from the real daemon process -------------------------------------------
SCENARIO = """[device]
protocol = "plx"
address = "SIM-NOTIFY-1"
[night]
duration_s = 36000
seed = 1
"""


def test_the_daemon_tells_systemd_it_is_ready_pings_the_watchdog_and_says_it_stops(tmp_path):
    notify_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify_path))
    sock.settimeout(30)  # a failing daemon must not hang the test; datagrams arrive as they are sent
    scenario_file = tmp_path / "night.toml"
    scenario_file.write_text(SCENARIO)
    env = {**os.environ, "NOTIFY_SOCKET": str(notify_path), "WATCHDOG_USEC": "200000"}
    proc = subprocess.Popen([sys.executable, "-m", "collector", "--db", str(tmp_path / "c.sqlite"), "run", "--port", "0",
                             "--simulate", str(scenario_file)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        messages = []
        while not any(m.startswith("READY=1") for m in messages) or sum(m == "WATCHDOG=1" for m in messages) < 2:
            messages.append(sock.recv(4096).decode())
        proc.send_signal(signal.SIGTERM)
        while "STOPPING=1" not in messages:
            messages.append(sock.recv(4096).decode())
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        sock.close()
    ready = next(m for m in messages if m.startswith("READY=1"))
    assert "STATUS=" in ready
    # The log went to a rotating file next to the database as well.
    assert "collector daemon on http://" in (tmp_path / "logs" / "collector.log").read_text(encoding="utf-8")


def test_sd_notify_outside_systemd_is_a_no_op():
    assert sd_notify.notify("READY=1", environ={}) is False
    assert sd_notify.watchdog_interval_s(environ={"WATCHDOG_USEC": "30000000"}) == 15.0
    assert sd_notify.watchdog_interval_s(environ={"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None
    assert sd_notify.watchdog_interval_s(environ={}) is None


def test_service_unit_is_a_notify_unit_with_watchdog_for_this_database(db_path):
    res = invoke(db_path, "service", "unit")
    assert res.exit_code == 0, res.output
    assert "Type=notify" in res.output and "WatchdogSec=" in res.output and "Restart=on-failure" in res.output
    assert f"--db {db_path.resolve()} run" in res.output


# -- collector doctor --------------------------------------------------------------------------------
async def _adapter_finding(powered: bool) -> Any:
    stack = FakeBluez(VirtualClock(start=0))
    await stack.start()
    try:
        if not powered:
            stack.power(False)
        return await asyncio.to_thread(check_bluetooth, Setup(Path("x"), defaults()))
    finally:
        await stack.stop()


def test_doctor_sees_the_adapter_through_bluez(system_bus):
    on = asyncio.run(_adapter_finding(True))
    assert on.status == "ok" and "hci0" in on.summary
    off = asyncio.run(_adapter_finding(False))
    assert off.status == "fail" and "switched off" in off.summary and "power on" in off.action


def test_doctor_without_bluetooth_service_says_what_to_install(system_bus):
    found = check_bluetooth(Setup(Path("x"), defaults()))
    assert found.status == "fail" and "bluez" in found.action


def test_doctor_finds_a_damaged_database_and_passes_a_sound_one(tmp_path):
    good = tmp_path / "good.sqlite"
    res = invoke(good, "subject", "add", "SCR-0001")
    assert res.exit_code == 0, res.output
    assert check_database(Setup(good, defaults())).status == "ok"
    bad = tmp_path / "bad.sqlite"
    data = bytearray(good.read_bytes())
    page = int.from_bytes(data[16:18], "big")
    for start in range(page, len(data), page):  # every page after the header page: its b-tree header scrambled
        data[start: start + 64] = b"\x0d" + b"\xff" * 63
    bad.write_bytes(bytes(data))
    found = check_database(Setup(bad, defaults()))
    assert found.status == "fail" and "restore" in found.action


def test_doctor_lists_stable_serial_names_and_checks_the_disk(tmp_path):
    dev = tmp_path / "dev"
    (dev / "serial" / "by-id").mkdir(parents=True)
    assert check_serial(Setup(tmp_path / "c.sqlite", defaults(), dev_root=dev)).status == "warn"
    port = dev / "serial" / "by-id" / "usb-FTDI_Spirometer_A123-if00-port0"
    port.write_text("")
    found = check_serial(Setup(tmp_path / "c.sqlite", defaults(), dev_root=dev))
    assert found.status == "ok" and "usb-FTDI_Spirometer_A123" in found.summary
    cfg = defaults()
    assert check_disk(Setup(tmp_path / "c.sqlite", cfg)).status == "ok"
    cfg["host"]["disk_nights"] = 1000
    cfg_huge = json.loads(json.dumps(cfg))
    finding = check_disk(Setup(tmp_path / "c.sqlite", cfg_huge))
    assert "1000 nights" in finding.summary


def test_doctor_cli_prints_every_check_with_what_to_do_and_exits_12_on_a_failure(db_path, system_bus):
    res = invoke(db_path, "doctor")
    assert res.exit_code == 12, res.output  # no Bluetooth service on the private bus
    for name in ("bluetooth", "permissions", "serial", "disk", "clock", "database", "daemon"):
        assert name in res.output
    assert "-> install and start BlueZ" in res.output
    assert "Traceback" not in res.output
    js = invoke(db_path, "doctor", "--json")
    body = json.loads(js.stdout)
    assert body["ok"] is False and {f["check"] for f in body["findings"]} >= {"bluetooth", "clock", "database"}
    assert all(set(f) == {"check", "status", "summary", "action"} for f in body["findings"])


def test_every_check_runs_even_when_one_breaks(tmp_path, monkeypatch):
    from collector.host import doctor

    def broken(setup: Setup) -> Any:
        raise RuntimeError("boom")

    monkeypatch.setattr(doctor, "CHECKS", (broken, doctor.check_disk))
    found = run_checks(Setup(tmp_path / "c.sqlite", defaults()))
    assert [f.status for f in found][0] == "warn" and "boom" in found[0].summary and found[1].check == "disk"
