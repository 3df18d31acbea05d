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
from drivers.protocols.common import Flag
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
                        "AND origin = 'live' ORDER BY host_utc_ms", (sid,)).fetchall()
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


def test_the_daemon_keeps_the_rings_own_night_linked_to_the_live_one(night):
    db, run, raw = night
    sid, dev = run.session_ids[0], run.devices[0]
    conn = sqlite3.connect(db)
    rows = conn.execute("SELECT id, origin, settings_json FROM sessions WHERE id != ?", (sid,)).fetchall()
    assert len(rows) == 1 and rows[0][1] == "import"
    imported, settings = rows[0][0], json.loads(rows[0][2])["import"]
    header = parse_night_file(raw).header
    assert settings["live_session_id"] == sid and settings["format"] == "o2ring-dat"
    assert settings["downloaded"] == {"file": dev.ring_file_name(), "over": "ble"}
    assert settings["firmware"]["t90_s"] == header.t90_s > 0
    # The ring's clock was measured at download (UTC+8 and no drift here), not guessed from a zone.
    assert settings["device_clock"]["measured_offset_s"] == pytest.approx(8 * 3600, abs=1.0)
    t = np.array([r[0] for r in conn.execute("SELECT host_utc_ms FROM spo2_samples WHERE session_id = ? "
                                             "ORDER BY host_utc_ms", (imported,))]) / 1000
    assert len(t) == int(NIGHT_S // 4) + 1 and abs(t[0] - dev.started_at) < 1.0 and np.all(np.diff(t) == 4.0)
    (detail,) = conn.execute("SELECT detail_json FROM events WHERE session_id = ? AND kind = 'device_night_downloaded'",
                             (sid,)).fetchone()
    fw = json.loads(detail)["firmware_t90"]
    assert fw["firmware_t90_s"] == header.t90_s and fw["agrees"] and abs(fw["difference_s"]) <= 4.0
    ours = latest_report(conn, imported)
    assert ours is not None and fw["ours_t90_s"] == pytest.approx(ours["t90_s"], abs=1e-3)
    assert conn.execute("SELECT COUNT(*) FROM events WHERE kind IN ('firmware_t90_disagrees', "
                        "'device_night_download_failed')").fetchone()[0] == 0
    # The same file by hand is the same night: refused, naming the session that has it.
    path = Path(str(db) + ".dat")
    path.write_bytes(raw)
    r = invoke(db, "import", str(path), "--subject", "SCR-0001", "--format", "o2ring-dat", "--utc-offset", "+08:00")
    assert r.exit_code != 0 and f"already imported as session {imported}" in r.stderr


def test_a_file_the_simulator_wrote_imports_with_the_firmware_t90_beside_ours(night, tmp_path):
    _, run, _ = night
    dev = run.devices[0]
    db = tmp_path / "c.sqlite"
    assert invoke(db, "subject", "add", "SCR-0042").exit_code == 0
    path = tmp_path / f"{dev.ring_file_name()}.dat"
    path.write_bytes(dev.ring_night_file())
    r = invoke(db, "import", str(path), "--subject", "SCR-0042", "--format", "o2ring-dat", "--utc-offset", "+08:00",
               "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    header = parse_night_file(path.read_bytes()).header
    fw = out["firmware_t90"]
    assert fw["firmware_t90_s"] == header.t90_s and fw["agrees"] and fw["allowed_s"] == 4.0
    assert out["source"]["firmware"]["t90_s"] == header.t90_s and out["source"]["device_clock"]["utc_offset"] == "+08:00"
    text = invoke(db, "import", str(path), "--subject", "SCR-0042", "--format", "o2ring-dat", "--utc-offset", "+08:00")
    assert "already imported" in text.stderr
    r = invoke(tmp_path / "d.sqlite", "subject", "add", "SCR-0042")
    r = invoke(tmp_path / "d.sqlite", "import", str(path), "--subject", "SCR-0042", "--format", "o2ring-dat",
               "--utc-offset", "+08:00")
    assert r.exit_code == 0 and "device firmware's time under 90 %" in r.output and ": agrees" in r.output


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


def test_a_ring_out_of_reach_at_the_end_costs_one_event_not_the_night(db_path):
    sc = scenario(protocol="o2ring", duration_s=1800.0, disconnects=[Interval(1500, 301)])
    run = asyncio.run(run_night(db_path, [sc]))
    sid = run.session_ids[0]
    assert run.stopped[0]["report"]["analysed_s"] > 1400 and run.stopped[0]["device_night"] == "downloading"
    conn = sqlite3.connect(db_path)
    assert conn.execute("SELECT COUNT(*) FROM sessions").fetchone()[0] == 1
    (detail,) = conn.execute("SELECT detail_json FROM events WHERE session_id = ? AND kind = 'device_night_download_failed'",
                             (sid,)).fetchone()
    assert "out of range" in json.loads(detail)["reason"]
    assert conn.execute("SELECT state FROM sessions WHERE id = ?", (sid,)).fetchone()[0] == "stopped"


DROPS = [Interval(3600 * 2, 600), Interval(3600 * 4 + 7, 600), Interval(3600 * 6 + 13, 600)]


@pytest.fixture(scope="module")
def with_and_without_drops(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, NightRun, dict[str, object]]:
    """The same 8 h ring night twice: with three 10-minute radio drops (ring downloaded at the stop), and without."""
    desats = [{"count": 60, "depth": 9, "duration_s": 90}]
    base = tmp_path_factory.mktemp("o2ring-fill")
    dropped = asyncio.run(run_night(base / "drops.sqlite", [scenario(protocol="o2ring", duration_s=NIGHT_S,
                                                                     disconnects=DROPS, desaturations=desats)]))
    clean = asyncio.run(run_night(base / "clean.sqlite", [scenario(protocol="o2ring", duration_s=NIGHT_S,
                                                                   desaturations=desats)]))
    return base / "drops.sqlite", dropped, clean.stopped[0]["report"]


def test_the_downloaded_night_back_fills_the_live_gaps_to_the_uninterrupted_night(with_and_without_drops):
    db, run, clean = with_and_without_drops
    sid = run.session_ids[0]
    conn = sqlite3.connect(db)
    gaps = conn.execute("SELECT id, start_utc_ms, end_utc_ms FROM gaps WHERE session_id = ? ORDER BY start_utc_ms",
                        (sid,)).fetchall()
    assert len(gaps) == len(DROPS)
    fills = conn.execute("SELECT gap_id, status, summary_json FROM gap_backfills WHERE session_id = ? ORDER BY gap_id",
                         (sid,)).fetchall()
    assert [(f[0], f[1]) for f in fills] == [(g[0], "backfilled") for g in gaps]
    for (_, _, summ), (_, start, end) in zip(fills, gaps):
        s = json.loads(summ)
        assert s["record_ms"] == 4000 and s["residual_breaks"] == [] and s["fitted"] >= (end - start) / 4000 - 2
        assert s["clock_offset_ms"] == pytest.approx(-8 * 3600 * 1000, abs=1000)
    # Every stored ring record lies inside a gap (the rest of the ring's night is its own session), none doubled.
    stored = conn.execute("SELECT host_utc_ms, flags FROM spo2_samples WHERE session_id = ? AND origin = 'device_memory'",
                          (sid,)).fetchall()
    assert stored and all(any(s - 4000 < t <= e for _, s, e in gaps) for t, _ in stored)
    counted = [t for (t,) in conn.execute("SELECT host_utc_ms FROM spo2_samples WHERE session_id = ? AND (flags & ?) = 0",
                                          (sid, int(Flag.BACKFILL_OVERLAP)))]
    assert len(counted) == len(set(counted))
    # The live night's report was recomputed (a new, audited row) and equals the night without drops.
    assert conn.execute("SELECT COUNT(*) FROM night_reports WHERE session_id = ?", (sid,)).fetchone()[0] == 2
    assert conn.execute("SELECT COUNT(*) FROM audit WHERE session_id = ? AND action = 'night_report_recomputed'",
                        (sid,)).fetchone()[0] == 1
    before, after = run.stopped[0]["report"], latest_report(conn, sid)
    assert after is not None
    edge_s = 2 * len(DROPS) * 4.0  # one 4 s record per gap edge
    assert before["analysed_s"] < clean["analysed_s"] - 3 * 590
    assert after["analysed_s"] == pytest.approx(clean["analysed_s"], abs=edge_s)
    assert after["t90_s"] == pytest.approx(clean["t90_s"], abs=edge_s)
    assert after["t90_pct"] == pytest.approx(clean["t90_pct"], abs=100 * edge_s / clean["analysed_s"])
    assert after["definitions"]["max_hold_s"] >= 4.0  # a 4 s record holds its whole 4 s: the analysed time is exact
    assert after["backfills"] and all(b["status"] == "backfilled" for b in after["backfills"])
    print(f"\nO2Ring 8 h, 3 x 10 min drops: T90 clean {clean['t90_s']:.1f} s, dropped {before['t90_s']:.1f} s, "
          f"back-filled {after['t90_s']:.1f} s; analysed clean {clean['analysed_s']:.0f} s, dropped "
          f"{before['analysed_s']:.0f} s, back-filled {after['analysed_s']:.0f} s")
