"""Differential test against o2ring-analyzer 1.0.3 (metrics.compute_metrics).

o2ring computes T90 as (samples < 90) / (valid samples), i.e. every sample weighs
one interval.  Under our zero-order hold on a regular night without gaps every
sample holds exactly one interval except the last (0 s).  So on such a night
whose final sample is a dropout the two definitions coincide, bit for bit.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st
from o2ring_analyzer.cleaning import clean
from o2ring_analyzer.metrics import compute_metrics

from collector.oximetry.analysis.report import AnalysisConfig, NightData, night_report

T0 = 1_767_225_600.0


def o2ring_t90(t_s: np.ndarray, spo2: np.ndarray) -> float:
    df = pd.DataFrame({"time": pd.to_datetime(t_s, unit="s"), "spo2": spo2, "pulse": np.full(t_s.size, 60.0)})
    m = compute_metrics(clean(df), "diff", thresholds=(90.0,))
    return m.threshold_times[0].pct_of_valid


def ours(t_s: np.ndarray, spo2: np.ndarray, max_hold: float = 10.0) -> dict:
    valid = np.isfinite(spo2) & (spo2 != 0)  # what a codec would flag
    d = NightData(t_s, spo2, np.full(t_s.size, 60.0), valid, np.ones(t_s.size, bool))
    return night_report(d, AnalysisConfig(max_hold_s=max_hold))


@settings(max_examples=60, deadline=None)
@given(
    st.integers(20, 4000),
    st.sampled_from([1.0, 2.0, 4.0]),
    st.integers(0, 2**32 - 1),
    st.floats(0.0, 0.3),
)
def test_t90_equals_o2ring_on_regular_nights(n: int, interval: float, seed: int, p_drop: float) -> None:
    rng = np.random.default_rng(seed)
    spo2 = rng.integers(84, 99, n).astype(float)
    drop = rng.random(n) < p_drop
    spo2[drop] = rng.choice([0.0, np.nan], drop.sum())  # dropouts (0 and missing code)
    spo2[-1] = np.nan  # the last sample holds 0 s under our definition
    spo2[0] = 95.0
    t = T0 + np.arange(n) * interval
    ref = o2ring_t90(t, spo2)
    r = ours(t, spo2)
    assert r["t90_pct"] == ref


def test_general_relation_ours_equals_o2ring_on_the_samples_that_hold_time() -> None:
    rng = np.random.default_rng(3)
    n = 36_000
    spo2 = np.round(93 + 2 * np.sin(np.arange(n) / 900.0) + rng.normal(0, 1.2, n))
    t = T0 + np.arange(n, dtype=float)
    r = ours(t, spo2)
    assert r["t90_pct"] == o2ring_t90(t[:-1], spo2[:-1])
    assert r["t90_pct"] != 0.0


def test_with_missing_samples_we_differ_by_design() -> None:
    """Count-based T90 ignores how long each sample stood; the hold does not."""
    t = T0 + np.array([0, 1, 2, 3, 9, 10, 11], dtype=float)  # 5 s missing after an 88
    spo2 = np.array([95, 95, 95, 88, 95, 95, np.nan])
    assert o2ring_t90(t, spo2) == 100 / 6
    assert ours(t, spo2)["t90_pct"] == 600 / 11  # holds 1,1,1,6,1,1,0
