"""A whole O2Ring night: live through the daemon (polled over the simulated radio), then the ring's
stored night downloaded over BLE, written as its .dat file and imported with its firmware T90 beside ours."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from bleak import BleakClient

from collector.oximetry.store import latest_report
from drivers.ble.o2ring_download import download_nights
from drivers.protocols.o2ring import NightRecord, encode_night_file, parse_night_file
from simulators.ble_backend import SimulatedAir
from simulators.oximeter import SimulatedOximeter
from simulators.scenario import FINGER_OUT, Interval
from conftest import NightRun, invoke, run_night, scenario

NIGHT_S = 8 * 3600.0
FINGER_OUTS = [Interval(600 + 97 * i, 8 + i % 5) for i in range(280)]  # hundreds of short losses of signal
DISCONNECTS = [Interval(1800 + 3600 * i, 120 + 30 * i) for i in range(6)]


@pytest.fixture(scope="module")
def night(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, NightRun, bytes]:
    """One 8 h night recorded live, then the ring's own file downloaded from the same device."""
    db = tmp_path_factory.mktemp("o2ring") / "collector.sqlite"
    sc = scenario(protocol="o2ring", duration_s=NIGHT_S, finger_out=FINGER_OUTS, disconnects=DISCONNECTS,
                  desaturations=[{"count": 40, "depth": 8, "duration_s": 60}])
    run = asyncio.run(run_night(db, [sc]))
    dev = run.devices[0]

    async def fetch() -> dict[str, bytes]:
        air = SimulatedAir(run.clock)
        air.add(dev)
        async with BleakClient(dev.address, backend=air.client_backend) as client:
            return await download_nights(client, timeout_s=30)

    files = asyncio.run(fetch())
    assert list(files) == [dev.ring_file_name()]
    return db, run, files[dev.ring_file_name()]


def test_live_night_is_polled_and_stored_as_the_ring_answered(night):
    db, run, _ = night
    dev, sid = run.devices[0], run.session_ids[0]
    conn = sqlite3.connect(db)
    rows = conn.execute("SELECT host_utc_ms, spo2_pct, pulse_bpm, valid FROM spo2_samples WHERE session_id = ? "
                        "ORDER BY host_utc_ms", (sid,)).fetchall()
    tl = dev.timeline
    assert len(rows) == len(dev.delivered) > 0.9 * (NIGHT_S - sum(d.duration_s for d in DISCONNECTS))
    by_t = {r[0]: r for r in rows}
    for t, k in dev.delivered:
        row = by_t[int(round(t * 1000))]
        if tl.state[k] == FINGER_OUT:
            assert row[3] == 0 and row[1] is None
        else:
            assert (row[1], row[2], row[3]) == (tl.spo2[k], tl.pulse[k], 1)
    gaps = conn.execute("SELECT start_utc_ms, end_utc_ms, cause FROM gaps WHERE session_id = ? ORDER BY start_utc_ms",
                        (sid,)).fetchall()
    assert [g[2] for g in gaps] == ["device_disconnected"] * len(DISCONNECTS)
    for g, d in zip(gaps, DISCONNECTS):
        assert g[0] / 1000 - dev.started_at == pytest.approx(d.at_s, abs=1.01)
    report = latest_report(conn, sid)
    assert report is not None and report["gaps"]["by_cause"]["invalid_samples"]["count"] >= 200


def test_downloaded_file_holds_the_whole_night_the_link_missed(night):
    _, run, raw = night
    dev = run.devices[0]
    f = parse_night_file(raw)
    assert len(f.records) == int(NIGHT_S // 4) + 1
    tl = dev.timeline
    for d in DISCONNECTS:  # the ring kept measuring while the radio was down
        for k in range(int(d.at_s) // 4 + 1, int(d.end_s) // 4):
            rec = f.records[k]
            assert rec.spo2 == (None if tl.state[4 * k] == FINGER_OUT else tl.spo2[4 * k])


def test_import_of_the_downloaded_file_keeps_the_firmware_t90_beside_ours(night, tmp_path):
    db, run, raw = night
    sid = run.session_ids[0]
    path = tmp_path / f"{run.devices[0].ring_file_name()}.dat"
    path.write_bytes(raw)
    r = invoke(db, "import", str(path), "--subject", "SCR-0001", "--format", "o2ring-dat", "--utc-offset", "+08:00",
               "--live-session", str(sid), "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    fw = out["firmware_t90"]
    header = parse_night_file(raw).header
    assert fw["firmware_t90_s"] == header.t90_s > 0
    assert fw["agrees"] and abs(fw["difference_s"]) <= 4.0 and fw["allowed_s"] == 4.0
    assert fw["ours_t90_s"] == pytest.approx(out["report"]["t90_s"], abs=1e-3)
    src = out["source"]
    assert src["format"] == "o2ring-dat" and src["live_session_id"] == sid and src["firmware"]["t90_s"] == header.t90_s
    conn = sqlite3.connect(db)
    imported = out["session_id"]
    settings = json.loads(conn.execute("SELECT settings_json FROM sessions WHERE id = ?", (imported,)).fetchone()[0])
    assert settings["import"]["firmware"]["t90_s"] == header.t90_s and settings["import"]["live_session_id"] == sid
    assert conn.execute("SELECT COUNT(*) FROM events WHERE session_id = ? AND kind = 'firmware_t90_disagrees'",
                        (imported,)).fetchone()[0] == 0
    # Times: record k at the header's local start + 4 k, converted with the ring's offset (UTC+8).
    t = np.array([row[0] for row in conn.execute("SELECT host_utc_ms FROM spo2_samples WHERE session_id = ? "
                                                 "ORDER BY host_utc_ms", (imported,))]) / 1000
    assert abs(t[0] - run.devices[0].started_at) < 1.0 and np.all(np.diff(t) == 4.0)
    # The live session is untouched.
    assert conn.execute("SELECT origin FROM sessions WHERE id = ?", (sid,)).fetchone()[0] != "import"


def test_a_firmware_t90_that_disagrees_is_an_event_and_said(tmp_path):
    db = tmp_path / "c.sqlite"
    assert invoke(db, "subject", "add", "SCR-0042").exit_code == 0
    from datetime import datetime

    recs = [NightRecord(88 if k % 10 == 0 else 95, 60, 0, False) for k in range(3600)]  # 360 records below 90
    raw = encode_night_file(datetime(2025, 3, 6, 22, 0, 0), recs, t90_s=360 * 4 + 60)
    path = tmp_path / "20250306220000.dat"
    path.write_bytes(raw)
    r = invoke(db, "import", str(path), "--subject", "SCR-0042", "--format", "o2ring-dat", "--tz", "Asia/Shanghai")
    assert r.exit_code == 0, r.output
    assert "device firmware's time under 90 %: 1500 s; ours 1440 s: DISAGREES by more than 4 s" in r.output
    conn = sqlite3.connect(db)
    (detail,) = conn.execute("SELECT detail_json FROM events WHERE kind = 'firmware_t90_disagrees'").fetchone()
    d = json.loads(detail)
    assert (d["firmware_t90_s"], d["ours_t90_s"], d["difference_s"], d["agrees"]) == (1500.0, 1440.0, -60.0, False)


def test_o2ring_dat_refusals_are_one_line(tmp_path):
    db = tmp_path / "c.sqlite"
    assert invoke(db, "subject", "add", "SCR-0042").exit_code == 0
    bad = tmp_path / "x.dat"
    bad.write_bytes(b"\x09\x00" + bytes(60))
    r = invoke(db, "import", str(bad), "--subject", "SCR-0042", "--format", "o2ring-dat", "--utc-offset", "+08:00")
    assert r.exit_code == 2 and "signature 0x0009" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    from datetime import datetime

    good = tmp_path / "g.dat"
    good.write_bytes(encode_night_file(datetime(2025, 3, 6, 22, 0, 0), [NightRecord(95, 60, 0, False)] * 10))
    r = invoke(db, "import", str(good), "--subject", "SCR-0042", "--format", "o2ring-dat")
    assert r.exit_code == 2 and "--utc-offset" in r.stderr
    r = invoke(db, "import", str(good), "--subject", "SCR-0042", "--format", "o2ring-dat", "--utc-offset", "+08:00",
               "--live-session", "99")
    assert r.exit_code != 0 and "99" in r.stderr
