"""Synthetic nights shared by the analysis tests, plus whole-night invariants.

``make_night`` builds a plausible 1 Hz night: slowly drifting baseline, periodic
desaturation dips, finger-out runs (invalid samples), missing samples and a
disconnect (a break).  Integer SpO2 like real devices.
"""

from __future__ import annotations

import numpy as np
import pytest

from collector.oximetry.analysis.report import AnalysisConfig, NightData, night_report, timeline

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z


def make_night(
    seed: int = 1,
    hours: float = 8.0,
    interval_s: float = 1.0,
    dips_per_h: float = 12.0,
    with_gaps: bool = True,
    base: float = 95.0,
) -> NightData:
    rng = np.random.default_rng(seed)
    n = int(hours * 3600 / interval_s) + 1
    t = T0 + np.arange(n) * interval_s
    ts = np.arange(n) * interval_s
    drift = 1.5 * np.sin(ts / 5400.0) + 0.5 * np.sin(ts / 700.0 + seed)
    s = base + drift + rng.normal(0, 0.6, n)
    for c in rng.uniform(0, ts[-1], int(dips_per_h * hours)):
        depth = rng.uniform(3, 9)
        width = rng.uniform(15, 50)
        s -= depth * np.exp(-0.5 * ((ts - c) / (width / 2.5)) ** 2)
    spo2 = np.clip(np.round(s), 50, 100)
    pulse = np.round(62 + 6 * np.sin(ts / 3000.0) + rng.normal(0, 2, n))
    valid = np.ones(n, dtype=bool)
    breaks: list[tuple[float, float, str]] = []
    if with_gaps:
        for st in rng.integers(0, n - 200, 6):  # finger-out runs
            ln = int(rng.integers(5, 120))
            valid[st : st + ln] = False
            spo2[st : st + ln] = np.nan
        keep = rng.random(n) > 0.01  # 1 % missing samples
        keep[[0, -1]] = True
        # a 20-minute disconnect in the middle of the night
        mid = n // 2
        keep[mid : mid + int(1200 / interval_s)] = False
        breaks.append((float(t[mid - 1] + 2.0), float(t[mid + int(1200 / interval_s)] - 1.0), "device_disconnected"))
        t, spo2, pulse, valid = t[keep], spo2[keep], pulse[keep], valid[keep]
    return NightData(t, spo2, pulse, valid, np.isfinite(pulse), breaks)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_gap_partition_adds_up(seed: int) -> None:
    """Analysed time + every gap cause = recording time, to the millisecond."""
    d = make_night(seed, hours=6)
    r = night_report(d)
    total_gap = sum(v["total_s"] for v in r["gaps"]["by_cause"].values())
    assert round((r["analysed_s"] + total_gap) * 1000) == round(r["recording_s"] * 1000)
    assert round(r["gaps"]["total_s"] * 1000) == round(total_gap * 1000)
    # 1 Hz with single missing samples: holds bridge them, so no max_hold gaps
    assert set(r["gaps"]["by_cause"]) == {"invalid_samples", "device_disconnected"}
    assert r["gaps"]["by_cause"]["device_disconnected"]["count"] == 1


def test_realistic_night_figures_are_plausible() -> None:
    d = make_night(4, hours=8)
    r = night_report(d)
    assert r["night_valid"] is True
    assert 90 < r["analysed_pct"] < 100
    assert r["nadir_spo2"] <= r["sustained_nadir_spo2"] <= r["median_spo2"]
    assert 5 < r["odi3_per_h"] < 25 and r["odi4_per_h"] <= r["odi3_per_h"]
    assert r["t80_s"] <= r["t85_s"] <= r["t88_s"] <= r["t90_s"] <= r["t90_s_inclusive"]
    assert abs(sum(b["s"] for b in r["spo2_histogram"]) - r["analysed_s"]) < 1e-6
    assert 40 < r["pulse_min"] < r["pulse_mean"] < r["pulse_max"] < 100


def test_timeline_holds_never_negative_or_past_next_sample() -> None:
    d = make_night(5, hours=3)
    tl = timeline(d, AnalysisConfig())
    assert (tl.hold_ms >= 0).all()
    assert (tl.hold_end_ms[:-1] <= tl.t_ms[1:]).all()
    assert tl.hold_ms[-1] == 0
    assert (tl.hold_ms <= 10_000).all()
