"""A raw capture replayed through the same decoders gives the same rows as the live session."""

from __future__ import annotations

import asyncio
import json
import sqlite3

from click.testing import CliRunner

from collector.cli import main
from simulators.scenario import Interval
from conftest import run_night, scenario, invoke


def rows(db, sid):
    conn = sqlite3.connect(db)
    s = conn.execute("SELECT host_utc_ms, device_time, spo2_pct, pulse_bpm, pai_pct, valid, pulse_valid, flags, status_raw, counter"
                     " FROM spo2_samples WHERE session_id = ? ORDER BY host_utc_ms", (sid,)).fetchall()
    g = conn.execute("SELECT start_utc_ms, end_utc_ms, cause FROM gaps WHERE session_id = ? ORDER BY start_utc_ms", (sid,)).fetchall()
    return s, g


def test_replay_reproduces_samples_and_gaps(tmp_path):
    live_db, replay_db, capture = tmp_path / "live.sqlite", tmp_path / "replay.sqlite", tmp_path / "night.jsonl"
    sc = scenario(protocol="nonin", duration_s=2400.0, disconnects=[Interval(600, 200)], finger_out=[Interval(1500, 60)],
                  garbage=[(300.0, 3)], desaturations=[{"count": 3, "depth": 9, "duration_s": 60}])
    run = asyncio.run(run_night(live_db, [sc], capture=capture))
    first = json.loads(capture.read_text().splitlines()[0])
    assert set(first) >= {"t", "device", "protocol"}
    runner = CliRunner()
    assert invoke(replay_db, "subject", "add", "SCR-0200").exit_code == 0
    res = invoke(replay_db, "replay", str(capture), "--subject", "SCR-0200", "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    replay_sid = out["sessions"][0]["session_id"]
    live_samples, live_gaps = rows(live_db, run.session_ids[0])
    replay_samples, replay_gaps = rows(replay_db, replay_sid)
    assert replay_samples == live_samples
    assert replay_gaps == live_gaps
    assert out["sessions"][0]["report"]["t90_s"] == run.stopped[0]["report"]["t90_s"]


def test_corrupt_capture_names_the_line_and_writes_nothing(tmp_path):
    db, capture = tmp_path / "c.sqlite", tmp_path / "bad.jsonl"
    good = '{"t": "2025-01-01T00:00:00Z", "device": "X1", "protocol": "plx", "characteristic": "00002a5f-0000-1000-8000-00805f9b34fb", "hex": "0061004800"}'
    capture.write_text(good + "\n" + good.replace('"hex": "0061004800"', '"hex": "zz"') + "\n")
    runner = CliRunner()
    invoke(db, "subject", "add", "SCR-0201")
    res = invoke(db, "replay", str(capture), "--subject", "SCR-0201")
    assert res.exit_code == 2
    assert "line 2" in res.output and res.output.startswith("error: ")
    assert sqlite3.connect(db).execute("SELECT COUNT(*) FROM sessions").fetchone()[0] == 0


def test_a_capture_of_several_beds_is_replayed_one_device_at_a_time(tmp_path):
    db, capture = tmp_path / "m.sqlite", tmp_path / "two.jsonl"
    line = '{{"t": "2025-01-01T00:00:0{i}Z", "device": "{d}", "protocol": "plx", "characteristic": "00002a5f-0000-1000-8000-00805f9b34fb", "hex": "0061004800"}}'
    capture.write_text("\n".join(line.format(i=i, d=d) for i in range(3) for d in ("BED-A", "BED-B")) + "\n")
    runner = CliRunner()
    invoke(db, "subject", "add", "SCR-0202")
    res = invoke(db, "replay", str(capture), "--subject", "SCR-0202")
    assert res.exit_code == 2 and "--device" in res.output and "BED-A" in res.output
    res = invoke(db, "replay", str(capture), "--subject", "SCR-0202", "--device", "BED-B", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["sessions"][0]["samples"] == 3


def test_replay_of_a_back_filled_night_stores_the_same_rows(tmp_path):
    """The capture holds the clock read, the stored records and the RACP answer: replay back-fills the same way."""
    live_db, replay_db, capture = tmp_path / "live.sqlite", tmp_path / "replay.sqlite", tmp_path / "night.jsonl"
    sc = scenario(duration_s=2400.0, memory="undelivered", clock_offset_s=8 * 3600.0, disconnects=[Interval(600, 200)],
                  desaturations=[{"count": 4, "depth": 9, "duration_s": 60}])
    run = asyncio.run(run_night(live_db, [sc], capture=capture))
    assert invoke(replay_db, "subject", "add", "SCR-0202").exit_code == 0
    res = invoke(replay_db, "replay", str(capture), "--subject", "SCR-0202", "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    live_samples, live_gaps = rows(live_db, run.session_ids[0])
    replay_samples, replay_gaps = rows(replay_db, out["sessions"][0]["session_id"])
    assert replay_samples == live_samples and replay_gaps == live_gaps
    live_report, replay_report = run.stopped[0]["report"], out["sessions"][0]["report"]
    assert live_report["backfills"][0]["status"] == "backfilled"
    assert [{k: v for k, v in b.items() if k != "gap_id"} for b in replay_report["backfills"]] == \
        [{k: v for k, v in b.items() if k != "gap_id"} for b in live_report["backfills"]]
    assert replay_report["t90_s"] == live_report["t90_s"] and replay_report["analysed_s"] == live_report["analysed_s"]
