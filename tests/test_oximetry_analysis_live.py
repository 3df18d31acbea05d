"""Live engine: O(1) figures equal the final report exactly; alert once per crossing."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collector.oximetry.analysis.live import EVENT_T90_EXCEEDED, LiveBurden, OutOfOrderError
from collector.oximetry.analysis.report import AnalysisConfig, NightData, night_report

T0 = 1_767_225_600.0
SPO2 = st.sampled_from([None, 0.0, 49.0, 50.0, 80.0, 85.0, 88.0, 89.0, 89.9, 90.0, 90.1, 93.0, 95.0, 100.0, 101.0, math.nan])

step = st.one_of(
    st.tuples(st.just("s"), st.one_of(st.floats(0, 3), st.floats(0, 40), st.just(0.0)), SPO2, st.booleans()),
    st.tuples(st.just("b"), st.floats(0, 20), st.sampled_from(["device_disconnected", "daemon_down"]), st.just(True)),
)


def run(steps, cfg: AnalysisConfig):
    """Feed steps to the live engine and build the NightData the store would hold."""
    live = LiveBurden(cfg)
    t = T0 + 0.0004
    last = None
    ts, sp, va, br = [], [], [], []
    for kind, x, v, ok in steps:
        if kind == "s":
            t += x
            live.add(t, v, ok)
            last = t
            ts.append(t)
            sp.append(v)
            va.append(ok)
        else:
            b = (last if last is not None else t) + x
            live.interrupt(b, v)
            br.append((b, b + 5.0, v))
            t = max(t, b)  # the daemon's clock has moved past the break start
    data = NightData.from_samples(ts, sp, valid=va, breaks=br)
    return live, data


def assert_equal(live: LiveBurden, r: dict) -> None:
    s = live.snapshot
    assert s.numerator_ms / 1000.0 == r["t90_s"]
    assert s.numerator_inclusive_ms / 1000.0 == r["t90_s_inclusive"]
    assert s.analysed_s == r["analysed_s"]
    assert s.recording_s == r["recording_s"]
    assert s.t90_pct == r["t90_pct"]
    assert s.t90_pct_inclusive == r["t90_pct_inclusive"]
    assert s.nadir_spo2 == r["nadir_spo2"]
    assert s.n_samples == r["n_samples"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(step, max_size=60), st.sampled_from([10.0, 4.0, 0.5]))
def test_live_equals_final_on_random_nights(steps, max_hold) -> None:
    cfg = AnalysisConfig(max_hold_s=max_hold)
    live, data = run(steps, cfg)
    assert_equal(live, night_report(data, cfg))


@settings(max_examples=100, deadline=None)
@given(st.lists(step, min_size=1, max_size=40), st.data())
def test_every_prefix_matches_and_replay_matches(steps, dd) -> None:
    cfg = AnalysisConfig()
    k = dd.draw(st.integers(0, len(steps)))
    live, data = run(steps[:k], cfg)
    assert_equal(live, night_report(data, cfg))
    replayed, _ = LiveBurden.replay(data, cfg)
    assert replayed.snapshot == live.snapshot


def test_current_spo2_and_nadir() -> None:
    live = LiveBurden()
    live.add(T0, 95, True)
    live.add(T0 + 1, 87, True)
    assert live.snapshot.current_spo2 == 87.0 and live.snapshot.nadir_spo2 == 87.0
    live.add(T0 + 2, 0, True)  # dropout: not a desaturation
    s = live.snapshot
    assert s.current_spo2 is None and s.nadir_spo2 == 87.0
    assert s.numerator_s == 1.0 and s.analysed_s == 2.0 and s.recording_s == 2.0


def test_alert_once_per_crossing_and_only_after_one_hour() -> None:
    live = LiveBurden()
    events = []
    t = T0
    def feed(n, v):
        nonlocal t
        for _ in range(n):
            events.extend((t, e) for e in live.add(t, v, True))
            t += 1.0
    feed(100, 85)  # 100 % below, but < 1 h analysed: no alert
    assert events == []
    feed(3501, 95)  # reaches 1 h analysed at 100/3600 = 2.78 % > 2 %: one alert
    assert len(events) == 1
    ts, ev = events[0]
    assert ev.kind == EVENT_T90_EXCEEDED and ev.analysed_s == 3600.0 and ts == T0 + 3600
    assert live.snapshot.above_threshold
    feed(2000, 95)  # falls to 100/5600 = 1.79 %: re-armed, no event
    assert len(events) == 1 and not live.snapshot.above_threshold
    feed(50, 85)  # crosses again -> second event, exactly one
    assert len(events) == 2
    feed(10, 85)
    assert len(events) == 2


def test_alert_equal_to_2_percent_does_not_fire() -> None:
    live = LiveBurden()
    t = T0
    ev = []
    for i in range(3601):
        ev += live.add(t + i, 85 if i < 72 else 95, True)  # 72 / 3600 = 2.00 %
    assert live.snapshot.t90_pct == 2.0 and ev == []


def test_interrupt_cuts_the_hold_of_the_latest_sample() -> None:
    live = LiveBurden()
    live.add(T0, 85, True)
    live.interrupt(T0 + 2.5, "device_disconnected")
    live.add(T0 + 300, 95, True)
    assert live.snapshot.numerator_s == 2.5 and live.snapshot.analysed_s == 2.5


def test_out_of_order_raises() -> None:
    live = LiveBurden()
    live.add(T0 + 5, 95, True)
    with pytest.raises(OutOfOrderError):
        live.add(T0 + 4, 95, True)
    with pytest.raises(OutOfOrderError):
        live.interrupt(T0 + 1, "x")


def test_live_equals_final_on_a_realistic_night() -> None:
    from test_oximetry_analysis_nights import make_night

    d = make_night(7, hours=6, base=93.0)
    live, events = LiveBurden.replay(d)
    r = night_report(d)
    assert_equal(live, r)
    assert len(events) >= 1 if r["t90_pct"] > 2 else events == []
    assert np.isfinite(r["t90_pct"])


def test_a_valid_reading_below_50_raises_one_review_event_per_run():
    from collector.oximetry.analysis.live import EVENT_DEEP_DESAT

    live = LiveBurden(AnalysisConfig())
    kinds = []
    for i, v in enumerate([95, 60, 45, 44, 47, 70, 48, 95]):
        kinds += [(e.kind, e.spo2_pct) for e in live.add(T0 + i, v, True) if e.kind == EVENT_DEEP_DESAT]
    assert kinds == [(EVENT_DEEP_DESAT, 45.0), (EVENT_DEEP_DESAT, 48.0)]
    snap = live.snapshot
    assert snap.numerator_ms == 6000 and snap.analysed_ms == 7000  # below 50 counts as below 90
    data = NightData.from_samples([T0 + i for i in range(8)], [95, 60, 45, 44, 47, 70, 48, 95])
    assert night_report(data)["t90_s"] == snap.numerator_s
