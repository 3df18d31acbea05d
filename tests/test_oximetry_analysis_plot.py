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
    segs = _segments(x, v)
    assert not any(a < 30_000 and b >= 30_000 for a, _, b, _ in segs)  # broken after the hold that stops at 12000
    assert (1000, 95.0, 1000, 89.0) in segs  # contiguous samples are joined by a vertical step
    assert (2000, 88.0, 12_000, 88.0) in segs
    assert _below_intervals(t, end, y, np.ones(5, bool)) == [(1000, 12_000), (30_000, 31_000)]


def _segments(x, v):
    """The drawn geometry of a polyline: its non-empty segments, touching horizontal ones merged."""
    out = []
    for i in range(len(x) - 1):
        s = (x[i], v[i], x[i + 1], v[i + 1])
        if np.isnan(v[i]) or np.isnan(v[i + 1]) or (s[0] == s[2] and s[1] == s[3]):
            continue
        if out and s[1] == s[3] == out[-1][1] == out[-1][3] and out[-1][2] == s[0]:
            out[-1] = (out[-1][0], s[1], s[2], s[3])
            continue
        out.append(s)
    return out


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3000), st.integers(0, 3000), st.sampled_from([np.nan, 88.0, 89.0, 90.0, 95.0]),
                          st.booleans()), min_size=0, max_size=80))
def test_the_step_line_drops_points_but_not_geometry(samples):
    """Runs of equal values are drawn with two points, not three per sample: the same segments are drawn."""
    from collector.oximetry.analysis import plot

    steps = np.array([s[0] for s in samples], dtype=np.int64)
    t = 1_767_000_000_000 + np.cumsum(steps)
    hold = np.array([s[1] for s in samples], dtype=np.int64)
    nxt = np.append(t[1:], t[-1] + 10_000) if t.size else t
    end = np.minimum(t + hold, nxt)  # a hold ends at the next sample or earlier, as the timeline makes it
    y = np.array([s[2] for s in samples], dtype=np.float64)
    show = np.array([s[3] for s in samples], dtype=bool)
    x, v = plot._step_xy(t, end, y, show)
    real = plot._merge_runs
    try:
        plot._merge_runs = lambda a, b: (a, b)
        x_all, v_all = plot._step_xy(t, end, y, show)
    finally:
        plot._merge_runs = real
    assert x.size <= x_all.size
    assert _segments(x, v) == _segments(x_all, v_all)


def test_a_figure_relabelled_in_chinese_is_the_figure_drawn_in_chinese() -> None:
    """The export draws a night once: its English PNG, then the same figure in the site's language as the
    report page.  Relabelling must give exactly the page a figure built in that language gives."""
    import io
    from datetime import timezone

    import matplotlib.pyplot as plt
    from matplotlib.text import Text

    from collector.oximetry.analysis.plot import night_figure, relabel

    d = make_night(4, hours=3, base=91.5)
    r = night_report(d)
    relabelled = night_figure(d, r, title="Overnight oximetry", tz=timezone.utc, lang="en")
    relabelled.savefig(io.BytesIO(), format="png")  # as the export does before relabelling
    relabel(relabelled, "夜间血氧", "zh-CN")
    built = night_figure(d, r, title="夜间血氧", tz=timezone.utc, lang="zh-CN")
    built.savefig(io.BytesIO(), format="png")  # tick labels are written when a figure is drawn
    try:
        def texts(fig: object) -> list[str]:
            return [t.get_text() for t in fig.findobj(Text)]  # type: ignore[attr-defined]

        assert texts(relabelled) == texts(built)
        assert any("\u4e00" <= ch <= "\u9fff" for t in texts(built) for ch in t)

        def pdf(fig: object) -> bytes:
            buf = io.BytesIO()
            fig.savefig(buf, format="pdf", metadata={"CreationDate": None})  # type: ignore[attr-defined]
            return buf.getvalue()

        assert pdf(relabelled) == pdf(built)
    finally:
        plt.close(relabelled)
        plt.close(built)
