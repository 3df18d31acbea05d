"""``collector doctor``: is this laptop ready for a screening night?  Each finding says what to do.

The checks only read: the Bluetooth adapter (BlueZ over the system bus), the groups that open
serial ports and Bluetooth, the serial ports present, the free disk for the nights to come, the
clock's synchronisation, the database's integrity and the daemon's health.  A check that cannot
run is a warning naming why, never a crash.
"""

from __future__ import annotations

import asyncio
import glob
import os
import shutil
import sqlite3
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from collector.host import clock_sync

OK, WARN, FAIL = "ok", "warn", "fail"


@dataclass(frozen=True)
class Finding:
    check: str
    status: str  # ok | warn | fail
    summary: str
    action: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Setup:
    """What the checks look at; tests build one pointing at their own parts."""

    db_path: Path
    config: dict[str, Any]
    dev_root: Path = Path("/dev")


# -- Bluetooth --------------------------------------------------------------------------------
async def _bluez_adapters() -> list[dict[str, Any]]:
    from dbus_fast import BusType, Message, MessageType
    from dbus_fast.aio import MessageBus

    bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
    try:
        reply = await bus.call(Message(destination="org.bluez", path="/", interface="org.freedesktop.DBus.ObjectManager",
                                       member="GetManagedObjects"))
    finally:
        bus.disconnect()
    if reply is None or reply.message_type == MessageType.ERROR:
        raise OSError(reply.error_name if reply else "no reply from org.bluez")
    adapters = []
    for path, interfaces in reply.body[0].items():
        props = interfaces.get("org.bluez.Adapter1")
        if props is not None:
            adapters.append({"path": path, "powered": bool(props["Powered"].value),
                             "name": str(props.get("Alias", props.get("Name")).value) if props.get("Alias") or props.get("Name") else path})
    return adapters


def check_bluetooth(setup: Setup) -> Finding:
    if sys.platform == "win32":
        return Finding("bluetooth", WARN, "not checked on Windows", "open Settings > Bluetooth and make sure it is on")
    try:
        adapters = asyncio.run(asyncio.wait_for(_bluez_adapters(), 5))
    except (FileNotFoundError, ConnectionRefusedError):  # the bus socket is not there: no D-Bus at all
        return Finding("bluetooth", FAIL, "the system message bus (D-Bus) is not running, so Bluetooth cannot be reached",
                       "install and start D-Bus and BlueZ: sudo apt install dbus bluez && sudo systemctl enable --now bluetooth")
    except Exception as exc:  # no bluetoothd on the bus, a policy refusal
        return Finding("bluetooth", FAIL, f"the Bluetooth service does not answer ({type(exc).__name__}: {exc})".strip(),
                       "install and start BlueZ: sudo apt install bluez && sudo systemctl enable --now bluetooth")
    if not adapters:
        return Finding("bluetooth", FAIL, "no Bluetooth adapter", "plug in the USB Bluetooth adapter (or enable Bluetooth in the BIOS)")
    off = [a["path"].rsplit("/", 1)[-1] for a in adapters if not a["powered"]]
    names = ", ".join(a["path"].rsplit("/", 1)[-1] for a in adapters)
    if len(off) == len(adapters):
        return Finding("bluetooth", FAIL, f"Bluetooth adapter {names} is switched off",
                       f"switch it on: bluetoothctl power on (or: rfkill unblock bluetooth)")
    return Finding("bluetooth", OK, f"adapter {names} present and powered" + (f" ({', '.join(off)} off)" if off else ""))


# -- permissions and ports --------------------------------------------------------------------
def _in_group(name: str) -> bool | None:
    try:
        import grp
    except ImportError:
        return None
    try:
        gid = grp.getgrnam(name).gr_gid
    except KeyError:
        return None
    return gid in os.getgroups() or gid == os.getgid()


def check_permissions(setup: Setup) -> Finding:
    if sys.platform == "win32" or os.geteuid() == 0:
        return Finding("permissions", OK, "running as administrator: serial ports and Bluetooth are open to it"
                       if sys.platform != "win32" else "not needed on Windows")
    missing = [g for g in ("dialout", "bluetooth") if _in_group(g) is False]
    if missing:
        return Finding("permissions", WARN, f"this user is not in the group(s) {', '.join(missing)}",
                       f"sudo usermod -aG {','.join(missing)} $USER, then log out and in again")
    return Finding("permissions", OK, "this user may open serial ports and use Bluetooth")


def serial_ports(dev_root: Path) -> list[str]:
    """Stable names first (``/dev/serial/by-id``: they survive re-plugging), then the raw USB ports."""
    by_id = sorted(glob.glob(str(dev_root / "serial" / "by-id" / "*")))
    raw = sorted(glob.glob(str(dev_root / "ttyUSB*")) + glob.glob(str(dev_root / "ttyACM*")))
    return by_id or raw


def check_serial(setup: Setup) -> Finding:
    if sys.platform == "win32":
        return Finding("serial", WARN, "not checked on Windows", "see the spirometer's COM port in Device Manager")
    ports = serial_ports(setup.dev_root)
    if not ports:
        return Finding("serial", WARN, "no USB serial port (spirometer cable) is plugged in",
                       "plug in the spirometer's cable before a spirometry session, or use its exchange folder")
    unreadable = [p for p in ports if not os.access(p, os.R_OK | os.W_OK)]
    if unreadable:
        return Finding("serial", FAIL, f"cannot open {', '.join(unreadable)}", "sudo usermod -aG dialout $USER, then log out and in again")
    return Finding("serial", OK, "serial ports: " + ", ".join(ports))


# -- disk, clock, database, daemon ------------------------------------------------------------
NIGHT_BYTES_FLOOR = 8 * 1024 * 1024  # a 12 h night at 1 Hz with its indexes, seals and report, rounded up


def check_disk(setup: Setup) -> Finding:
    folder = setup.db_path.parent if setup.db_path.parent.exists() else Path.cwd()
    free = shutil.disk_usage(folder).free
    nights = int(setup.config["host"]["disk_nights"])
    per_night = NIGHT_BYTES_FLOOR
    need = nights * per_night
    text = f"{free / 2**30:.1f} GiB free in {folder}; {nights} nights need about {need / 2**30:.1f} GiB"
    if free < need:
        return Finding("disk", FAIL, text, "free disk space (or move the database to a larger disk) before the next night")
    return Finding("disk", OK, text)


def check_clock(setup: Setup) -> Finding:
    state = clock_sync.read()
    if state.synchronised is None:
        return Finding("clock", WARN, f"cannot tell whether the clock is synchronised ({state.detail})",
                       "enable time synchronisation: sudo timedatectl set-ntp true (or install chrony)")
    if not state.synchronised:
        return Finding("clock", WARN, f"the clock is not synchronised ({state.source}: {state.detail})",
                       "every sample is labelled with this clock: enable NTP (sudo timedatectl set-ntp true) or set it by hand, then check again")
    if state.offset_s is not None and abs(state.offset_s) > clock_sync.MAX_OFFSET_S:
        return Finding("clock", FAIL, f"the clock is {state.offset_s:+.3f} s off ({state.source})",
                       "wait for the time service to correct it (chronyc makestep steps it now) before a night starts")
    offset = "" if state.offset_s is None else f", offset {state.offset_s * 1000:+.1f} ms"
    return Finding("clock", OK, f"synchronised ({state.source}{offset})")


def check_database(setup: Setup) -> Finding:
    from collector.storage.db import quick_check

    if not setup.db_path.exists():
        return Finding("database", WARN, f"no database at {setup.db_path} yet",
                       "it is created by the first command that records (collector subject add ...), or give --db")
    try:
        problems = quick_check(setup.db_path)
    except sqlite3.Error as exc:
        return Finding("database", FAIL, f"cannot read {setup.db_path} ({exc})", "check the file's permissions; restore it from its backup if damaged")
    if problems:
        return Finding("database", FAIL, f"{setup.db_path} is damaged: {problems[0]}",
                       "stop the collector, keep the file, restore the last backup and call the study team")
    return Finding("database", OK, f"{setup.db_path} passes SQLite's integrity check")


def check_daemon(setup: Setup) -> Finding:
    from collector.client import DaemonClient
    from collector.errors import CollectorError

    try:
        status = DaemonClient(setup.db_path, timeout_s=3).get("/api/v1/status")
    except CollectorError:
        return Finding("daemon", WARN, "the collector daemon is not running",
                       f"start it before a night: collector --db {setup.db_path} run (or the collector service)")
    writer = status.get("writer") or {}
    if writer.get("failed"):
        return Finding("daemon", FAIL, f"the daemon runs but cannot store: {writer['failed']}", "see collector status; fix the database, then restart the daemon")
    host = status.get("host") or {}
    awake = host.get("keep_awake") or {}
    if awake.get("problem"):
        return Finding("daemon", WARN, awake["problem"], "set the laptop's power settings to never sleep while plugged in")
    return Finding("daemon", OK, f"running since {status['daemon_started_utc']}, {len(status.get('beds') or [])} bed(s) recording")


CHECKS: tuple[Callable[[Setup], Finding], ...] = (
    check_bluetooth, check_permissions, check_serial, check_disk, check_clock, check_database, check_daemon,
)


def run_checks(setup: Setup) -> list[Finding]:
    findings = []
    for check in CHECKS:
        name = check.__name__.removeprefix("check_")
        try:
            findings.append(check(setup))
        except Exception as exc:  # a check that breaks is itself a finding, never a traceback
            findings.append(Finding(name, WARN, f"could not check ({type(exc).__name__}: {exc})", "run collector doctor -v and send the output to support"))
    return findings
