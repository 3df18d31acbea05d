"""The night plot renders an A4 landscape PNG with gaps and shading."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image as mpimg
import numpy as np

from collector.oximetry.analysis.plot import A4_LANDSCAPE_IN, _below_intervals, _step_xy, plot_night
from collector.oximetry.analysis.report import night_report
from test_oximetry_analysis_nights import make_night


def test_plot_writes_a4_landscape_png(tmp_path: Path) -> None:
    d = make_night(4, hours=2, base=93.5)
    out = plot_night(d, night_report(d), tmp_path / "night.png", title="Night 1 (synthetic)")
    img = mpimg.imread(out)
    h, w = img.shape[:2]
    assert abs(w / h - A4_LANDSCAPE_IN[0] / A4_LANDSCAPE_IN[1]) < 0.01
    assert w >= 1600


def test_plot_handles_an_empty_night(tmp_path: Path) -> None:
    from collector.oximetry.analysis.report import NightData

    d = NightData.from_samples([], [])
    assert plot_night(d, night_report(d), tmp_path / "empty.png").exists()


def test_steps_break_at_gaps_and_below_intervals_match_t90() -> None:
    t = np.array([0, 1000, 2000, 30_000, 31_000], dtype=np.int64)
    end = np.array([1000, 2000, 12_000, 31_000, 31_000], dtype=np.int64)
    y = np.array([95.0, 89.0, 88.0, 85.0, 95.0])
    x, v = _step_xy(t, end, y, np.ones(5, bool))
    assert np.isnan(v[8])  # after the sample at 2000 whose hold stops at 12000
    assert not np.isnan(v[2])  # contiguous samples are joined by a vertical step
    assert _below_intervals(t, end, y, np.ones(5, bool)) == [(1000, 12_000), (30_000, 31_000)]
