"""The faster night report equals the version before the speed-up, figure for figure.

``night_report_v1`` / ``night_odi_v1`` are frozen copies of the engine as it was
(commit dbe0e03).  Random nights with gaps, breaks, duplicate timestamps, dropouts,
values off the 0.1 % grid and flags, and whole nights at real scale with hundreds of
gaps, must give the same report dict (every key, bit for bit) and the same ODI events.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

import night_odi_v1
import night_report_v1
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from collector.oximetry.analysis.odi import OdiParams, detect_all
from collector.oximetry.analysis.report import AnalysisConfig, NightData, night_report, timeline
from drivers.protocols.common import Flag

T0 = 1_767_225_600.0

# on and off the 0.1 % grid, around every level the report compares with
VALUES = [0.0, 30.0, 49.0, 49.96, 50.0, 79.95, 80.0, 84.0, 85.0, 87.25, 88.0, 88.04, 89.0, 89.5, 89.95,
          89.96, 90.0, 90.04, 91.0, 92.0, 94.0, 95.0, 96.0, 99.0, 100.0, 100.04, math.nan]
FLAGS = [0, int(Flag.PROVISIONAL_ESTIMATE), int(Flag.QUESTIONABLE), int(Flag.FROM_STORAGE) | int(Flag.LOW_BATTERY)]


def assert_same(data: NightData, cfg: AnalysisConfig) -> dict[str, Any]:
    new = night_report(data, cfg)
    old = night_report_v1.night_report(data, cfg)
    assert new.keys() == old.keys()
    for k in old:
        if k != "mean_spo2":
            assert new[k] == old[k], k
    assert new["mean_spo2"] == exact_mean(data, cfg)
    usable = timeline(data, cfg).usable
    if np.all(data.spo2[usable] == np.round(data.spo2[usable])):
        assert new["mean_spo2"] == old["mean_spo2"]  # the old float dot was exact on whole numbers
    elif old["mean_spo2"] is not None:
        assert math.isclose(new["mean_spo2"], old["mean_spo2"], rel_tol=1e-14)
    tl = timeline(data, cfg)
    got = detect_all(tl.t_ms, data.spo2, tl.usable, tl.hold_end_ms, (3.0, 4.0), cfg.odi)
    ref = night_odi_v1.detect_all(tl.t_ms, data.spo2, tl.usable, tl.hold_end_ms, (3.0, 4.0), cfg.odi)
    for drop in (3.0, 4.0):
        assert [vars_of(e) for e in got[drop]] == [vars_of(e) for e in ref[drop]]
    return new


def exact_mean(data: NightData, cfg: AnalysisConfig) -> float | None:
    """The time-weighted mean of the stored values in exact rationals, rounded once."""
    tl = timeline(data, cfg)
    den = int(tl.hold_ms[tl.usable].sum())
    if den <= 0:
        return None
    num = sum((Fraction(v) * h for v, h in zip(data.spo2[tl.usable].tolist(), tl.hold_ms[tl.usable].tolist())),
              Fraction(0))
    return float(num / den)


def vars_of(e: Any) -> tuple[Any, ...]:
    return (e.onset_ms, e.end_ms, e.baseline_pct, e.nadir_pct, e.drop_pct)


blocks = st.lists(
    st.tuples(
        st.sampled_from([0.0, 0.001, 0.3, 1.0, 1.0, 1.0, 2.0, 4.0, 9.999, 10.0, 12.0, 45.0, 600.0]),
        st.sampled_from(VALUES),
        st.integers(1, 15),
        st.sampled_from([0.0, 0.5, 1.0]),  # spread of the block's values (0: a flat run)
    ),
    min_size=0, max_size=50,
)


def build(rows: list[tuple[float, float, int, float]], breaks: list[tuple[float, float, int]], seed: int,
          with_flags: bool) -> NightData:
    rng = np.random.default_rng(seed)
    dts, vals = [], []
    for dt, v, rep, spread in rows:
        for k in range(rep):
            dts.append(dt if k == 0 else rng.choice([1.0, 1.0, 0.5, 2.0]))
            vals.append(v if (math.isnan(v) or v == 0.0) else v + spread * float(rng.integers(-2, 3)))
    n = len(dts)
    t = T0 + np.cumsum(dts) if n else np.zeros(0)
    spo2 = np.array(vals, dtype=float)
    valid = rng.random(n) > 0.05
    pulse = np.where(rng.random(n) < 0.05, np.nan, rng.integers(15, 260, n).astype(float))
    pulse_valid = rng.random(n) > 0.03
    br = []
    for frac, length, k in breaks:
        if n:
            b = float(t[0] + frac * (t[-1] - t[0] + 5))
            if k == 3:
                b = float(t[min(n - 1, int(frac * n))])  # a break starting exactly at a sample
            br.append((b, b + length, ["device_disconnected", "daemon_down", "link_lost", "device_disconnected"][k]))
    flags = rng.choice(FLAGS, n) if with_flags else None
    return NightData(t, spo2, pulse, valid, pulse_valid, br, flags)


@settings(max_examples=400, deadline=None)
@given(
    blocks,
    st.lists(st.tuples(st.floats(0, 1), st.sampled_from([0.0, 3.0, 10.0, 120.0]), st.integers(0, 3)), max_size=4),
    st.integers(0, 2**32 - 1),
    st.booleans(),
    st.sampled_from([10.0, 3.0, 0.5]),
    st.sampled_from([2.0, 2.1, 0.0, 30.0]),
    st.sampled_from([OdiParams(), OdiParams(window_s=30.0, min_event_s=3.0, max_event_s=20.0),
                     OdiParams(window_s=5.0, min_event_s=0.0, max_event_s=1e6)]),
)
def test_random_nights_give_the_same_report(rows, breaks, seed, with_flags, max_hold, threshold, odi) -> None:
    cfg = AnalysisConfig(max_hold_s=max_hold, threshold_pct=threshold, min_analysed_h=0.001,
                         min_analysed_pct=10.0, odi=odi)
    assert_same(build(rows, breaks, seed, with_flags), cfg)


def whole_night(seed: int, hours: float, interval_s: float, n_gaps: int, dips_per_h: int) -> NightData:
    """A real-scale night: slow drift, dips, dropout runs, hundreds of missing stretches and breaks."""
    rng = np.random.default_rng(seed)
    n = int(hours * 3600 / interval_s) + 1
    ts = np.arange(n) * interval_s
    s = 95.0 + 1.5 * np.sin(ts / 5400.0) + rng.normal(0, 0.8, n)
    for c in rng.uniform(0, ts[-1], int(hours * dips_per_h)):
        s -= rng.uniform(3, 11) * np.exp(-0.5 * ((ts - c) / rng.uniform(5, 40)) ** 2)
    spo2 = np.clip(np.round(s), 45, 100)
    valid = rng.random(n) > 0.01
    for c in rng.integers(0, n - 30, n_gaps // 2):  # dropout runs, some right after a deep dip
        spo2[c : c + rng.integers(1, max(2, int(40 / interval_s)))] = rng.choice([0.0, np.nan])
    keep = np.ones(n, bool)
    for c in rng.integers(0, n - 300, n_gaps // 2):  # samples missing (held up to max_hold, then a gap)
        keep[c : c + rng.integers(2, max(3, int(60 / interval_s)))] = False
    keep[0] = keep[-1] = True
    t = T0 + ts + rng.normal(0, 0.02, n).clip(-0.2, 0.2)  # host jitter
    t.sort()
    pulse = np.round(62 + 5 * np.sin(ts / 3000.0) + rng.normal(0, 2, n))
    breaks = []
    for c in rng.uniform(T0, T0 + ts[-1], 12):
        breaks.append((float(c), float(c + rng.uniform(0, 300)), ["device_disconnected", "daemon_down"][int(c) % 2]))
    flags = rng.choice(FLAGS, n, p=[0.97, 0.01, 0.01, 0.01])
    return NightData(t[keep], spo2[keep], pulse[keep], valid[keep], np.ones(int(keep.sum()), bool), breaks,
                     flags[keep])


def test_whole_nights_with_hundreds_of_gaps_give_the_same_report() -> None:
    decisions = set()
    for seed, hours, interval, gaps, dips in ((1, 11.5, 2.0, 400, 12), (2, 8.7, 4.0, 300, 12),
                                              (3, 10.0, 1.0, 600, 2), (4, 12.0, 0.25, 200, 6)):
        d = whole_night(seed, hours, interval, gaps, dips)
        r = assert_same(d, AnalysisConfig())
        assert r["gaps"]["count"] > 100 and r["odi3_events"] > 10
        decisions.add(r["decision"])
    assert decisions == {"pass", "fail"}
