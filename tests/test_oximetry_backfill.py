"""Back-fill from device memory: whole simulated nights whose gaps the PLX device fills through RACP."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sqlite3

import pytest

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
