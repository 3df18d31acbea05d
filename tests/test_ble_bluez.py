"""Nights through bleak's own BlueZ backend: a private dbus-daemon, a BlueZ-shaped service
(simulators.bluez) serving the simulated oximeters' real bytes, and the daemon built with no
BLE backend at all, exactly as on a ward laptop."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
from pathlib import Path
from typing import Any, Callable

import pytest

from collector.clock import VirtualClock
from collector.errors import Conflict
from collector.features import build_daemon
from simulators.bluez import FakeBluez
from simulators.oximeter import SimulatedOximeter
from simulators.scenario import Interval, Scenario
from conftest import T0, fast_config, scenario
from private_bus import system_bus  # noqa: F401  (a fixture)

def mac(i: int) -> str:
    return f"C0:FF:EE:00:00:{i:02X}"


@dataclasses.dataclass
class StackRun:
    stack: FakeBluez
    devices: list[SimulatedOximeter]
    session_ids: list[int]
    stopped: list[dict[str, Any]]
    refused: list[str]


async def run_on_bluez(db_path: Path, scenarios: list[Scenario], *, config: dict[str, Any] | None = None,
                       prepare: Callable[[FakeBluez], None] | None = None, max_links: int = 7) -> StackRun:
    """Like conftest.run_night, but the daemon uses the platform BLE stack (here: the fake bluetoothd)."""
    clock = VirtualClock(start=T0)
    stack = FakeBluez(clock, max_links=max_links)
    await stack.start()
    devices = [stack.add(SimulatedOximeter(sc, clock)) for sc in scenarios]
    if prepare is not None:
        prepare(stack)
    pump = asyncio.create_task(clock.run())
    daemon = build_daemon(db_path, clock=clock, config=config or fast_config())  # no backend: bleak's BlueZ
    run = StackRun(stack, devices, [], [], [])
    try:
        plays = []
        for i, dev in enumerate(devices):
            subject = f"SCR-{i + 1:04d}"
            await daemon.add_subject(subject)
            try:
                info = await daemon.start_night(subject, dev.address)
            except Conflict as exc:
                run.refused.append(exc.message)
                continue
            plays.append(asyncio.create_task(dev.run()))
            run.session_ids.append(info["id"])
        await asyncio.wait_for(asyncio.gather(*plays), timeout=120)
        for sid in run.session_ids:
            run.stopped.append(await daemon.stop_session(sid))
    finally:
        await daemon.shutdown()
        pump.cancel()
        await stack.stop()
    return run


def stored(db_path: Path, session_id: int, origin: str | None = None):
    """Samples stored for a session (of one origin if given) and its gaps."""
    conn = sqlite3.connect(db_path)
    n = conn.execute("SELECT COUNT(*) FROM spo2_samples WHERE session_id = ? AND origin = COALESCE(?, origin)",
                     (session_id, origin)).fetchone()[0]
    gaps = conn.execute("SELECT start_utc_ms, end_utc_ms, cause FROM gaps WHERE session_id = ? ORDER BY start_utc_ms",
                        (session_id,)).fetchall()
    return n, gaps


def test_a_night_through_bleaks_bluez_backend(db_path, system_bus):
    sc = scenario(address=mac(1), duration_s=600.0)
    run = asyncio.run(run_on_bluez(db_path, [sc]))
    n, gaps = stored(db_path, run.session_ids[0])
    assert n == len(run.devices[0].delivered) and n >= 595, "every delivered notification is one stored sample"
    assert gaps == []
    members = [m for m, _ in run.stack.calls]
    assert {"StartDiscovery", "Connect", "StartNotify", "ReadValue"} <= set(members)


def test_drop_and_reconnect_is_one_gap_with_its_cause(db_path, system_bus):
    sc = scenario(address=mac(2), duration_s=900.0, disconnects=[Interval(300, 60)])
    run = asyncio.run(run_on_bluez(db_path, [sc]))
    n, gaps = stored(db_path, run.session_ids[0])
    assert [g[2] for g in gaps] == ["device_disconnected"]
    start = gaps[0][0] / 1000 - run.devices[0].started_at
    end = gaps[0][1] / 1000 - run.devices[0].started_at
    assert start == pytest.approx(300, abs=1.01)
    assert 360 <= end <= 360 + 30 + 6  # data again within one backoff step of the device's return
    assert n == len(run.devices[0].delivered)


@pytest.mark.parametrize("fault", ["abort", "in_progress", "forget"])
def test_stack_errors_on_reconnect_are_retried(db_path, system_bus, fault):
    """le-connection-abort-by-local, Operation already in progress, and a stale device object."""
    sc = scenario(address=mac(3), duration_s=900.0, disconnects=[Interval(300, 30)])
    # The first connect succeeds; the first reconnect meets the stack's error.
    run = asyncio.run(run_on_bluez(db_path, [sc], prepare=lambda s: s.faults.update({mac(3): [None, fault]})))
    _, gaps = stored(db_path, run.session_ids[0])
    assert [g[2] for g in gaps] == ["device_disconnected"]
    assert (gaps[0][1] - gaps[0][0]) / 1000 <= 30 + 30 + 6
    assert run.stopped[0]["state"] == "stopped"
    assert run.stack.faults[mac(3)] == [], "the stack's error was met"
    assert sum(m == "Connect" for m, _ in run.stack.calls) >= 3


def test_adapter_off_and_back_is_one_gap(db_path, system_bus):
    """The laptop sleeps (adapter off, calls answer NotReady) and resumes: the outage is one gap."""
    sc = scenario(address=mac(5), duration_s=900.0)

    def prepare(stack: FakeBluez) -> None:
        async def sleep_and_resume() -> None:
            dev = stack.devices[next(iter(stack.devices))]
            await dev.subscribed.wait()
            await stack.clock.sleep(300)
            stack.power(False)
            await stack.settle()
            await stack.clock.sleep(45)
            stack.power(True)

        stack._tasks.add(asyncio.ensure_future(sleep_and_resume()))

    run = asyncio.run(run_on_bluez(db_path, [sc], prepare=prepare))
    n, gaps = stored(db_path, run.session_ids[0])
    assert [g[2] for g in gaps] == ["adapter_off"], "the outage is named for the adapter, not the device"
    start = gaps[0][0] / 1000 - run.devices[0].started_at
    assert start == pytest.approx(300, abs=1.01)
    # The link waits for the adapter (2 s polls), then scans afresh and reconnects (a scan is real time: on a
    # loaded machine it can miss and back off once).
    assert 45 <= (gaps[0][1] - gaps[0][0]) / 1000 <= 45 + 30 + 6
    members = [m for m, _ in run.stack.calls]
    assert members.count("StartDiscovery") >= 2, "a fresh scan after the resume"
    assert run.stopped[0]["report"]["gaps"]["by_cause"]["adapter_off"]["count"] == 1


def test_nonin_is_paired_on_connect(db_path, system_bus):
    sc = scenario(protocol="nonin", address=mac(4), duration_s=300.0)
    run = asyncio.run(run_on_bluez(db_path, [sc]))
    n, gaps = stored(db_path, run.session_ids[0])
    assert ("Pair", "/org/bluez/hci0/dev_" + mac(4).replace(":", "_")) in run.stack.calls
    assert n == len(run.devices[0].delivered) and gaps == []


def test_eight_beds_on_one_adapter_with_five_links(db_path, system_bus):
    scs = [scenario(address=mac(0x10 + i), duration_s=300.0, seed=i) for i in range(8)]
    run = asyncio.run(run_on_bluez(db_path, scs, max_links=5))
    assert len(run.session_ids) == 5 and len(run.refused) == 3
    assert all("\n" not in r and "max_beds_per_adapter = 5" in r for r in run.refused)
    for sid, dev in zip(run.session_ids, run.devices):
        n, gaps = stored(db_path, sid)
        # Beds start one after another, so a device whose night ended first may fall silent before
        # the stop: only a gap inside the device's night would be wrong.
        last_ms = round(dev.delivered[-1][0] * 1000)
        assert n == len(dev.delivered) and [g for g in gaps if g[0] < last_ms] == []


def test_a_gap_is_back_filled_through_bluez(db_path, system_bus):
    """RACP over bleak's BlueZ backend: indications enabled, the request written, the stored records back."""
    sc = scenario(address=mac(6), duration_s=1200.0, memory="undelivered", clock_offset_s=8 * 3600.0,
                  desaturations=[{"count": 6, "depth": 9, "duration_s": 60}], disconnects=[Interval(400, 120)])
    run = asyncio.run(run_on_bluez(db_path, [sc]))
    report = run.stopped[0]["report"]
    (b,) = report["backfills"]
    assert b["status"] == "backfilled" and b["fitted"] == b["received"] > 120
    assert "device_disconnected" not in report["gaps"]["by_cause"]
    assert run.devices[0].racp_requests == [bytes.fromhex("01 01")]
    n, _ = stored(db_path, run.session_ids[0])
    assert n == len(run.devices[0].delivered) + b["fitted"]


def test_o2ring_is_polled_through_bluez_and_a_drop_is_one_gap(db_path, system_bus):
    """The ring answers only when asked: the link's poll writes go through WriteValue, answers come back as
    PropertiesChanged values split over notifications, and a drop is one gap with its cause."""
    sc = scenario(protocol="o2ring", address=mac(9), duration_s=900.0, disconnects=[Interval(300, 60)])
    run = asyncio.run(run_on_bluez(db_path, [sc]))
    n, gaps = stored(db_path, run.session_ids[0], "live")
    assert [g[2] for g in gaps] == ["device_disconnected"]
    assert gaps[0][0] / 1000 - run.devices[0].started_at == pytest.approx(300, abs=1.01)
    assert n == len(run.devices[0].delivered) >= 900 - 60 - 36 - 5
    assert "WriteValue" in {m for m, _ in run.stack.calls}
    # At the stop, the ring's own night came down over the same stack and is kept beside the live one.
    conn = sqlite3.connect(db_path)
    kinds = [k for (k,) in conn.execute("SELECT kind FROM events WHERE session_id = ?", (run.session_ids[0],))]
    assert "device_night_downloaded" in kinds, kinds
    assert conn.execute("SELECT COUNT(*) FROM spo2_samples s JOIN sessions x ON x.id = s.session_id "
                        "WHERE x.origin = 'import'").fetchone()[0] == 900 // 4 + 1
    # ...and its records inside the drop back-filled the live session's gap.
    (status,) = conn.execute("SELECT status FROM gap_backfills WHERE session_id = ?", (run.session_ids[0],)).fetchone()
    filled = conn.execute("SELECT COUNT(*) FROM spo2_samples WHERE session_id = ? AND origin = 'device_memory'",
                          (run.session_ids[0],)).fetchone()[0]
    assert status == "backfilled" and filled >= (gaps[0][1] - gaps[0][0]) / 4000 - 2
