"""Back-fill from device memory: whole simulated nights whose gaps the PLX device fills through RACP."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sqlite3

import pytest
from hypothesis import given, settings, strategies as st

from collector.oximetry.store import latest_report
from drivers.protocols.common import Flag
from simulators.scenario import Interval
from conftest import fast_config, run_night, scenario

DROPS = [Interval(2 * 3600, 600), Interval(4 * 3600 + 123, 600), Interval(6 * 3600 + 17, 600)]
DESATS = [{"count": 60, "depth": 9, "duration_s": 80}]


def night(**kw):
    base = dict(duration_s=8 * 3600.0, desaturations=DESATS, memory="undelivered", clock_offset_s=8 * 3600 + 3.4, seed=11)
    return scenario(**{**base, **kw})


def live_and_final(db_path, sc, config=None):
    live: dict = {}
    run = asyncio.run(run_night(db_path, [sc], config=config or fast_config(min_analysed_h=1.0), before_stop=lambda r: live.update(
        r.daemon.nights.recorders[r.session_ids[0]].status(r.clock.now())["live"])))
    return run, live, run.stopped[0]["report"]


def rows(db_path, sid):
    conn = sqlite3.connect(db_path)
    return conn.execute("SELECT host_utc_ms, spo2_pct, valid, flags, origin FROM spo2_samples WHERE session_id = ? ORDER BY host_utc_ms, rowid",
                        (sid,)).fetchall()


FIGURES = ("t90_s", "t90_pct", "analysed_s", "recording_s", "n_samples", "n_usable_samples", "t90_s_inclusive", "nadir_spo2", "odi4_events")


def test_three_ten_minute_drops_back_fill_to_the_uninterrupted_t90(tmp_path):
    whole, whole_live, whole_report = live_and_final(tmp_path / "whole.sqlite", night())
    dropped, live, report = live_and_final(tmp_path / "dropped.sqlite", night(disconnects=DROPS))
    for k in FIGURES:
        assert report[k] == whole_report[k], k
    assert report["t90_s"] == live["t90_s"] and report["analysed_s"] == live["analysed_s"], "live equals final after back-fill"
    assert whole_live["t90_s"] == live["t90_s"]
    stored = rows(tmp_path / "dropped.sqlite", dropped.session_ids[0])
    memory = [r for r in stored if r[4] == "device_memory"]
    assert memory and all(r[3] & Flag.FROM_STORAGE for r in memory)
    assert len({r[0] for r in stored}) == len(stored), "no sample stored twice"
    assert [b["status"] for b in report["backfills"]] == ["backfilled"] * 3
    assert report["gaps"]["by_cause"].get("device_disconnected") is None
    print(json.dumps({"uninterrupted": {k: whole_report[k] for k in FIGURES}, "backfilled": {k: report[k] for k in FIGURES},
                      "backfills": report["backfills"]}, indent=1))


def test_records_of_time_already_covered_are_kept_flagged_and_never_doubled(tmp_path):
    # The device keeps every reading, also those it sent live: each back-fill returns the whole night so far.
    drops = [Interval(1800, 600), Interval(4000, 300)]
    kw = dict(duration_s=2 * 3600.0, memory="all")
    _, _, whole = live_and_final(tmp_path / "whole.sqlite", night(**kw))
    run, live, report = live_and_final(tmp_path / "dropped.sqlite", night(disconnects=drops, **kw))
    for k in FIGURES:
        assert report[k] == whole[k], k
    assert report["t90_s"] == live["t90_s"]
    b1, b2 = report["backfills"]
    assert b1["overlap"] == 1800 and b1["fitted"] == b1["received"] - 1800 and b1["status"] == "backfilled"
    assert b2["already_stored"] == b1["received"] and b2["status"] == "backfilled"
    stored = rows(tmp_path / "dropped.sqlite", run.session_ids[0])
    memory = [r for r in stored if r[4] == "device_memory"]
    assert len(memory) == b1["received"] + b2["received"] - b2["already_stored"], "every record kept once"
    assert len({r[0] for r in memory}) == len(memory), "no record stored twice"
    overlap = [r for r in memory if r[3] & Flag.BACKFILL_OVERLAP]
    assert len(overlap) == b1["overlap"] + b2["overlap"] and all(r[2] == 0 for r in overlap), "kept, never counted"


def test_a_drifting_device_clock_keeps_every_record_and_flags_the_misfits(tmp_path):
    # 2000 ppm: the device clock gains 2 ms a second, so its stamps slide off the live grid.
    kw = dict(duration_s=2 * 3600.0, clock_drift_ppm=2000.0)
    _, _, whole = live_and_final(tmp_path / "whole.sqlite", night(**kw))
    run, live, report = live_and_final(tmp_path / "dropped.sqlite", night(disconnects=[Interval(3600, 600)], **kw))
    (b,) = report["backfills"]
    assert b["received"] == b["fitted"] + b["overlap"] and b["off_grid"] > 0
    stored = rows(tmp_path / "dropped.sqlite", run.session_ids[0])
    memory = [r for r in stored if r[4] == "device_memory"]
    assert len(memory) == b["received"], "no record dropped"
    assert sum(1 for r in memory if r[3] & Flag.BACKFILL_OFF_GRID) == b["off_grid"]
    assert report["t90_s"] == live["t90_s"] and report["analysed_s"] == live["analysed_s"]
    assert abs(report["t90_s"] - whole["t90_s"]) <= 5.0 and abs(report["analysed_s"] - whole["analysed_s"]) <= 5.0


def test_a_device_without_memory_leaves_the_gap(tmp_path):
    run, live, report = live_and_final(tmp_path / "db.sqlite", night(duration_s=3600.0, memory="", disconnects=[Interval(1200, 300)]))
    assert report["backfills"] == [] and report["gaps"]["by_cause"]["device_disconnected"]["count"] == 1
    assert report["t90_s"] == live["t90_s"]


def _rec(device_time, spo2=93.0, flags=Flag.FROM_STORAGE):
    from drivers.protocols.common import OximeterReading

    return OximeterReading(spo2, 70.0, flags=int(flags), device_time=device_time, kind="spot_check")


def test_fit_places_records_on_the_live_grid_and_accounts_for_every_one():
    from collector.oximetry.backfill import FitInput, fit_records

    # live samples at ...:40.250 UTC; the device (Beijing time) ticks on its whole seconds, read 50 ms late
    anchor = 1_767_000_100_250
    inp = FitInput(session_id=1, gap_start_ms=anchor + 900, anchor_ms=anchor, reconnect_ms=anchor + 20_000,
                   session_start_ms=anchor - 100_000, clock_offset_ms=-8 * 3600_000 + 300, interval_ms=1000, tolerance_ms=250)
    recs = [_rec("2025-12-29T17:21:40"),  # host ...100.300 -> tick ...100.250: the anchor itself (live has it)
            _rec("2025-12-29T17:21:41"), _rec("2025-12-29T17:21:42"), _rec("2025-12-29T17:21:42"),  # a duplicate
            _rec("2025-12-29T17:21:50", spo2=85.0),
            _rec("2025-12-29T17:01:00"),  # before the session: another subject's night
            _rec(None)]  # clock not set: cannot be placed
    fit = fit_records(recs, inp, already_stored_ms=set())
    assert fit.counts == {"received": 7, "fitted": 3, "overlap": 2, "off_grid": 0, "already_stored": 0,
                          "outside_session": 1, "unplaced": 1}
    assert fit.fitted_ms == [anchor + 1000, anchor + 2000, anchor + 10_000]
    # what the records leave uncovered (after ...110.250 + 1 s, up to the reconnect) still breaks the hold
    assert fit.status == "partial" and fit.residual_breaks == [(anchor + 11_000, None)]
    overlap = [r for r in fit.rows if r[8] & Flag.BACKFILL_OVERLAP]
    assert len(overlap) == 2 and all(r[6] == 0 for r in overlap)
    assert all(r[8] & Flag.FROM_STORAGE for r in fit.rows) and len(fit.rows) == 5
    assert fit.unplaced == [{"spo2_pct": 93.0, "pulse_bpm": 70.0, "flags": int(Flag.FROM_STORAGE)}]
    # a clock 400 ms off the grid: kept at its own time and flagged
    off = fit_records([_rec("2025-12-29T17:21:45")], dataclasses.replace(inp, clock_offset_ms=inp.clock_offset_ms + 400), set())
    assert off.counts["off_grid"] == 1 and off.rows[0][1] == anchor + 5000 + 450 and off.rows[0][6] == 1


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.none(), st.integers(-3000, 3000)), max_size=60), st.integers(-900, 900),
       st.sets(st.integers(-3000, 3000), max_size=10))
def test_every_record_is_accounted_for_once(offsets_s, phase_ms, stored_s):
    import datetime as dt

    from collector.oximetry.backfill import FitInput, fit_records

    base = 1_767_000_000
    anchor = base * 1000 + 250
    inp = FitInput(session_id=1, gap_start_ms=anchor + 500, anchor_ms=anchor, reconnect_ms=anchor + 1_200_000,
                   session_start_ms=anchor - 1_000_000, clock_offset_ms=phase_ms, interval_ms=1000, tolerance_ms=250)
    recs = [_rec(None if o is None else dt.datetime.fromtimestamp(base + o, dt.timezone.utc).replace(tzinfo=None).isoformat())
            for o in offsets_s]
    already = {anchor + s * 1000 for s in stored_s}
    fit = fit_records(recs, inp, already)
    c = fit.counts
    assert c["received"] == c["fitted"] + c["overlap"] + c["already_stored"] + c["outside_session"] + c["unplaced"]
    assert len(fit.rows) == c["fitted"] + c["overlap"], "every placed record is stored, or counted as stored before"
    assert len(set(fit.fitted_ms)) == len(fit.fitted_ms) and not set(fit.fitted_ms) & already, "nothing doubled"
    assert all(anchor < t <= inp.reconnect_ms for t in fit.fitted_ms)
    for r in fit.rows:
        assert r[8] & Flag.FROM_STORAGE
        if r[8] & Flag.BACKFILL_OVERLAP:
            assert r[6] == 0, "an overlapping record never counts"


def test_a_back_filled_night_exports_and_verifies(tmp_path):
    """The bundle says what the analysis did: the gap is listed, not breaking; overlap records are in the
    samples file but not in the signal; verify recomputes the same T90 from the files."""
    from collector.export.verify import verify_bundle
    from conftest import invoke

    db = tmp_path / "site.sqlite"
    sc = night(duration_s=5400.0, memory="all", disconnects=[Interval(2000, 600)])
    run = asyncio.run(run_night(db, [sc], subjects=["SCR-0043"]))
    cfg = tmp_path / "site.toml"
    cfg.write_text('[site]\nname = "Test Hospital 1"\n')
    r = invoke(db, "export", "SCR-0043", "--out", str(tmp_path / "out"), "--json", config=cfg, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    folder = json.loads(r.output)[0]["path"]
    res = verify_bundle(folder)
    assert res.ok, res.problems
    import csv
    from pathlib import Path

    sid = run.session_ids[0]
    gaps = list(csv.DictReader((Path(folder) / "data" / f"gaps_{sid}.csv").open()))
    assert [(g["cause"], g["breaks_hold"]) for g in gaps] == [("device_disconnected", "0")]
    assert "back-filled from device memory" in gaps[0]["detail"]
    samples = list(csv.DictReader((Path(folder) / "data" / f"samples_{sid}.csv").open()))
    assert sum("BACKFILL_OVERLAP" in s["flag_names"] for s in samples) == run.stopped[0]["report"]["backfills"][0]["overlap"] > 0


def test_a_download_that_never_ends_stores_what_arrived_and_aborts(tmp_path):
    cfg = fast_config(min_analysed_h=0.5)
    cfg["ble"]["backfill_timeout_s"] = 0.3
    sc = night(duration_s=3600.0, disconnects=[Interval(1200, 300)])
    run = asyncio.run(run_night(tmp_path / "db.sqlite", [sc], config=cfg,
                                on_start=lambda r: setattr(r.devices[0], "racp_completes", False)))
    (b,) = run.stopped[0]["report"]["backfills"]
    assert b["fitted"] == b["received"] > 300, "every record that arrived is stored"
    assert run.devices[0].racp_requests == [bytes.fromhex("01 01"), bytes.fromhex("03 00")], "the download is aborted"
    conn = sqlite3.connect(tmp_path / "db.sqlite")
    (summary,) = [json.loads(r[0]) for r in conn.execute("SELECT summary_json FROM gap_backfills")]
    assert "did not finish" in summary["failure"]


def test_four_second_records_on_the_one_second_live_grid_cover_their_whole_span():
    """The O2Ring's night file: a record every 4 s fills the gap between live 1 s samples without a residual break."""
    import datetime as dt

    from collector.oximetry.backfill import FitInput, fit_records
    from drivers.protocols.o2ring import NightRecord, encode_night_file, night_readings, parse_night_file

    anchor = 1_767_000_100_000
    start = dt.datetime(2025, 12, 29, 17, 21, 43)  # ring local, UTC+8: anchor + 3 s
    recs = night_readings(parse_night_file(encode_night_file(
        start, [NightRecord(None if k == 5 else 88, 60, 0, False) for k in range(150)])))
    assert [r.device_time for r in recs[:2]] == ["2025-12-29T17:21:43", "2025-12-29T17:21:47"]
    assert recs[5].spo2_pct is None and not recs[5].valid and recs[0].valid
    inp = FitInput(session_id=1, gap_start_ms=anchor + 900, anchor_ms=anchor, reconnect_ms=anchor + 3000 + 150 * 4000 - 1,
                   session_start_ms=anchor - 100_000, clock_offset_ms=-8 * 3600_000, interval_ms=1000, tolerance_ms=250,
                   record_ms=4000)
    fit = fit_records(recs, inp, set())
    assert fit.status == "backfilled" and fit.residual_breaks == [] and fit.counts["fitted"] == 150
    assert fit.fitted_ms[:2] == [anchor + 3000, anchor + 7000]
    # Without the first 3 records the gap's start stays a break (up to the first record), not the whole gap.
    late = fit_records(recs[3:], inp, set())
    assert late.status == "partial" and late.residual_breaks == [(anchor + 900, anchor + 15_000)]
