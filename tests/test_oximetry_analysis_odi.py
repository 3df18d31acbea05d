"""ODI3/ODI4: hand-computed events under the named algorithm (oximetry.md)."""

from __future__ import annotations

import numpy as np

from collector.oximetry.analysis.odi import OdiParams, detect_events
from collector.oximetry.analysis.report import AnalysisConfig, NightData, night_report, timeline

T0 = 1_767_225_600.0


def dip_night(dip_values: list[float], base: float = 95.0, pre: int = 200, post: int = 200,
              invalid_at: tuple[int, ...] = ()) -> NightData:
    spo2 = np.array([base] * pre + dip_values + [base] * post, dtype=float)
    valid = np.ones(spo2.size, bool)
    for k in invalid_at:
        valid[pre + k] = False
        spo2[pre + k] = np.nan
    t = T0 + np.arange(spo2.size, dtype=float)
    return NightData(t, spo2, np.full(spo2.size, 60.0), valid, np.ones(spo2.size, bool))


def events(d: NightData, drop: float, params: OdiParams = OdiParams()):
    tl = timeline(d, AnalysisConfig())
    return detect_events(tl.t_ms, d.spo2, tl.usable, tl.hold_end_ms, drop, params)


def test_a_4_point_dip_of_15_s_is_one_odi3_and_one_odi4_event() -> None:
    d = dip_night([91.0] * 15)  # exactly baseline - 4
    e3, e4 = events(d, 3), events(d, 4)
    assert len(e3) == len(e4) == 1
    ev = e4[0]
    assert ev.duration_s == 15.0 and ev.baseline_pct == 95.0 and ev.nadir_pct == 91.0
    r = night_report(d)
    assert r["odi4_events"] == 1 and r["odi4_per_h"] == 3600 / r["analysed_s"]


def test_drop_of_3_9_is_odi3_only() -> None:
    d = dip_night([91.1] * 15)
    assert len(events(d, 3)) == 1 and events(d, 4) == []


def test_duration_limits_10_to_120_s_inclusive() -> None:
    assert events(dip_night([90.0] * 9), 4) == []
    assert len(events(dip_night([90.0] * 10), 4)) == 1
    assert len(events(dip_night([90.0] * 120), 4)) == 1
    assert events(dip_night([90.0] * 121), 4) == []


def test_baseline_is_frozen_at_onset() -> None:
    # 100 s at 90 after 95: a baseline recomputed during the event would sink toward 90 and
    # end it early; the baseline frozen at onset keeps one 100 s event
    evs = events(dip_night([94.0] + [90.0] * 100), 4)
    assert len(evs) == 1
    assert evs[0].duration_s == 100.0
    assert evs[0].baseline_pct == (119 * 950 + 940) / 120 / 10


def test_a_gap_ends_the_event() -> None:
    d = dip_night([90.0] * 15, invalid_at=(6,))  # 6 s + gap + 8 s: neither piece lasts 10 s
    assert events(d, 4) == []


def test_no_onset_without_a_baseline() -> None:
    d = dip_night([85.0] * 30, pre=0)
    assert events(d, 4) == []


def test_odi_matches_o2ring_event_counts_on_a_clean_1hz_night() -> None:
    """Same algorithm family: o2ring measures t_last - t_first, we measure held time (+1 s at 1 Hz)."""
    import pandas as pd
    from o2ring_analyzer.cleaning import clean
    from o2ring_analyzer.metrics import compute_metrics
    from test_oximetry_analysis_nights import make_night

    for seed in (11, 12):
        d = make_night(seed, hours=3, with_gaps=False)
        d.spo2[-200:] = 96.0  # end on a stable baseline (no event cut by end of record)
        r = night_report(d)
        df = pd.DataFrame({"time": pd.to_datetime(d.t_s, unit="s"), "spo2": d.spo2, "pulse": d.pulse})
        m = compute_metrics(clean(df), "synthetic", min_event_duration=9.0, max_event_duration=119.0)
        assert len(m.events["3"]) == r["odi3_events"]
        assert len(m.events["4"]) == r["odi4_events"]
        assert r["odi3_events"] > 10
