"""Whole simulated nights through the real path: simulator bleak backend -> link -> codec -> writer -> SQLite."""

from __future__ import annotations

import asyncio
import sqlite3

import numpy as np
import pytest

from collector.oximetry.store import latest_report
from simulators.scenario import FINGER_OUT, Interval
from conftest import fast_config, run_night, scenario


def stored(db_path, session_id):
    conn = sqlite3.connect(db_path)
    rows = conn.execute(
        "SELECT host_utc_ms, spo2_pct, pulse_bpm, valid, flags FROM spo2_samples WHERE session_id = ? ORDER BY host_utc_ms", (session_id,)
    ).fetchall()
    gaps = conn.execute("SELECT start_utc_ms, end_utc_ms, cause FROM gaps WHERE session_id = ? ORDER BY start_utc_ms", (session_id,)).fetchall()
    return rows, gaps


@pytest.mark.parametrize("protocol", ["plx", "nonin"])
def test_night_samples_match_the_scenario(db_path, protocol):
    sc = scenario(protocol=protocol, duration_s=3600.0, finger_out=[Interval(1200, 60)],
                  desaturations=[{"count": 4, "depth": 9, "duration_s": 60}])
    run = asyncio.run(run_night(db_path, [sc]))
    dev, sid = run.devices[0], run.session_ids[0]
    rows, gaps = stored(db_path, sid)
    tl = dev.timeline
    # Every tick the device delivered is stored once, at its host time, with the device's values.
    assert len(rows) == len(dev.delivered)
    by_t = {r[0]: r for r in rows}
    for t, k in dev.delivered:
        row = by_t[int(round(t * 1000))]
        if tl.state[k] == FINGER_OUT:
            assert row[3] == 0 and row[1] is None, "finger out must be stored as invalid, never as a value"
        else:
            assert row[3] == 1
            assert row[1] == tl.spo2[k] and row[2] == tl.pulse[k]
    assert gaps == []
    report = latest_report(sqlite3.connect(db_path), sid)
    assert report == run.stopped[0]["report"], "the stored report is the one computed at stop"
    assert report["gaps"]["by_cause"]["invalid_samples"]["total_s"] == pytest.approx(60, abs=1)


def test_berrymed_stream_is_reduced_to_one_reading_per_second(db_path):
    sc = scenario(protocol="berrymed", interval_s=0.25, duration_s=600.0)
    run = asyncio.run(run_night(db_path, [sc]))
    rows, _ = stored(db_path, run.session_ids[0])
    t = np.array([r[0] for r in rows]) / 1000
    packets = len(run.devices[0].delivered)
    assert abs(len(rows) - packets / 4) <= 2, "four packets a second reduce to one reading a second"
    assert np.all(np.diff(np.floor(t)) >= 1), "at most one stored reading per host second"
    assert all(r[3] == 1 for r in rows)


def test_disconnect_becomes_a_gap_of_the_right_length(db_path):
    sc = scenario(duration_s=3600.0, disconnects=[Interval(1000, 300)])
    run = asyncio.run(run_night(db_path, [sc]))
    rows, gaps = stored(db_path, run.session_ids[0])
    assert [g[2] for g in gaps] == ["device_disconnected"]
    start, end = gaps[0][0] / 1000 - run.devices[0].started_at, gaps[0][1] / 1000 - run.devices[0].started_at
    assert start == pytest.approx(1000, abs=1.01)
    # Reconnection waits for the backoff after the device returns: the gap ends within one backoff step.
    assert 1300 <= end <= 1300 + 30 + 6
    # No sample is stored inside the gap.
    assert not any(gaps[0][0] < r[0] < gaps[0][1] for r in rows)
    report = latest_report(sqlite3.connect(db_path), run.session_ids[0])
    assert report["gaps"]["by_cause"]["device_disconnected"]["total_s"] == pytest.approx((gaps[0][1] - gaps[0][0]) / 1000)


def test_silent_link_is_reset_by_the_watchdog(db_path):
    sc = scenario(duration_s=1800.0, silences=[Interval(600, 40)])
    run = asyncio.run(run_night(db_path, [sc]))
    _, gaps = stored(db_path, run.session_ids[0])
    assert [g[2] for g in gaps] == ["watchdog_silence"]
    assert (gaps[0][1] - gaps[0][0]) / 1000 == pytest.approx(41, abs=2)
    bed_link = run.stopped[0]
    assert bed_link["state"] == "stopped"


def test_garbage_frames_are_counted_and_do_not_stop_the_night(db_path):
    # Three bad frames in a row: fewer than the watchdog's five silent periods, so the link stays up.
    sc = scenario(duration_s=900.0, garbage=[(100.0, 3), (500.0, 3)])
    run = asyncio.run(run_night(db_path, [sc], before_stop=lambda r: r.__dict__.setdefault(
        "errors", r.daemon.nights.recorders[r.session_ids[0]].pipeline.parser.stats.errors)))
    assert run.__dict__["errors"] == 6
    rows, _ = stored(db_path, run.session_ids[0])
    assert len(rows) == len(run.devices[0].delivered)


def test_live_figures_equal_the_final_report(db_path):
    sc = scenario(duration_s=7200.0, desaturations=[{"count": 20, "depth": 10, "duration_s": 90}],
                  disconnects=[Interval(3000, 100)], finger_out=[Interval(5000, 120)])
    live = {}
    run = asyncio.run(run_night(db_path, [sc], config=fast_config(min_analysed_h=1.0),
                                before_stop=lambda r: live.update(r.daemon.nights.recorders[r.session_ids[0]].status(r.clock.now())["live"])))
    report = run.stopped[0]["report"]
    assert report["t90_s"] == live["t90_s"]
    assert report["analysed_s"] == live["analysed_s"]
    assert report["recording_s"] == live["recording_s"]
    assert report["t90_pct"] > 2.0 and report["meets_t90_criterion"] is False


def test_threshold_crossing_is_an_event(db_path):
    sc = scenario(duration_s=3 * 3600.0, desaturations=[{"at_s": [4000.0], "depth": 12, "duration_s": 600}])
    run = asyncio.run(run_night(db_path, [sc]))
    conn = sqlite3.connect(db_path)
    kinds = [r[0] for r in conn.execute("SELECT kind FROM events WHERE session_id = ?", (run.session_ids[0],))]
    assert kinds.count("t90_threshold_exceeded") == 1


def test_several_beds_at_once(db_path):
    scs = [scenario(protocol=p, address=f"SIM-BED-{i}", duration_s=1200.0, seed=i) for i, p in enumerate(["plx", "nonin", "plx"])]
    scs[1] = scenario(protocol="nonin", address="SIM-BED-1", duration_s=1200.0, disconnects=[Interval(300, 120)])
    run = asyncio.run(run_night(db_path, scs))
    for dev, sid in zip(run.devices, run.session_ids):
        rows, _ = stored(db_path, sid)
        assert len(rows) == len(dev.delivered) > 300


def test_a_valid_reading_below_50_counts_and_raises_a_review_event(db_path):
    # One deep episode: the device reports 45-49 % as valid readings for about 20 s.
    sc = scenario(duration_s=1800.0, noise_spo2=0.0, desaturations=[{"at_s": [600.0], "depth": 50, "duration_s": 60}])
    run = asyncio.run(run_night(db_path, [sc]))
    sid = run.session_ids[0]
    conn = sqlite3.connect(db_path)
    kinds = [r[0] for r in conn.execute("SELECT kind FROM events WHERE session_id = ?", (sid,))]
    assert kinds.count("suspected_deep_desaturation") == 1
    report = run.stopped[0]["report"]
    (run50,) = report["valid_below_50"]
    assert run50["min_spo2"] == 45.0 and run50["n_samples"] >= 15
    assert "suspected_deep_desaturation" in report["review_reasons"]
    rows, _ = stored(db_path, sid)
    below = [r for r in rows if r[1] is not None and r[1] < 50]
    assert below and all(r[3] == 1 for r in below), "stored valid, counted below 90"
    assert report["t90_s"] >= len(below)
