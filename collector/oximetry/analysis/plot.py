"""A4 landscape night plot for the investigator (PNG/PDF by file extension).

Draws exactly what the report counted: each usable sample as a step held for its
zero-order-hold time, with nothing drawn across gaps (the line is broken, and
gaps are shaded grey), time below 90 % shaded red, the 90 % line, the pulse
below, and the key figures with the definition used in a title block.
"""

from __future__ import annotations

from datetime import datetime, timezone, tzinfo
from pathlib import Path
from typing import Any, Callable

import matplotlib

matplotlib.use("Agg")

import matplotlib.dates as mdates  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from collector.i18n import N_, fonts, translator  # noqa: E402

from .report import AnalysisConfig, NightData, gap_intervals, pulse_usable_array, timeline  # noqa: E402

A4_LANDSCAPE_IN = (11.69, 8.27)


def _step_xy(t_ms: np.ndarray, end_ms: np.ndarray, y: np.ndarray, show: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each sample as a held segment; NaN after any sample whose hold does not reach the next one."""
    n = t_ms.size
    if n == 0:
        return np.zeros(0), np.zeros(0)
    yy = np.where(show, y, np.nan)
    nxt = np.empty(n, dtype=np.int64)
    nxt[:-1] = t_ms[1:]
    nxt[-1] = -1
    broken = end_ms != nxt
    x = np.stack([t_ms, end_ms, end_ms], axis=1).astype(np.float64)
    v = np.stack([yy, yy, np.where(broken, np.nan, yy)], axis=1)
    return _merge_runs(x.ravel(), v.ravel())


def _merge_runs(x: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The same polyline with fewer points: first every point equal to the one before it goes (and every NaN
    after a NaN: one NaN breaks the line as well as many), then every point inside a run of equal values
    (it lies on the horizontal segment between its neighbours; x never decreases).  A night of 20 000 held
    samples at SpO2's whole-percent steps keeps about a third of its points; the geometry is unchanged."""
    if v.size < 3:
        return x, v
    nan = np.isnan(v)
    dup = np.zeros(v.size, dtype=bool)
    dup[1:] = ((x[1:] == x[:-1]) & (v[1:] == v[:-1])) | (nan[1:] & nan[:-1])
    x, v = x[~dup], v[~dup]
    flat = np.zeros(v.size, dtype=bool)
    flat[1:-1] = (v[1:-1] == v[:-2]) & (v[1:-1] == v[2:])  # False for NaN
    return x[~flat], v[~flat]


def _below_intervals(t_ms: np.ndarray, end_ms: np.ndarray, spo2: np.ndarray, usable: np.ndarray) -> list[tuple[int, int]]:
    """Merged [start, end) ms intervals of held time with SpO2 < 90 (what T90 counts)."""
    with np.errstate(invalid="ignore"):
        m = usable & (spo2 < 90.0) & (end_ms > t_ms)
    if not m.any():
        return []
    s, e = t_ms[m], end_ms[m]
    new = np.ones(s.size, dtype=bool)
    new[1:] = s[1:] != e[:-1]
    last = np.ones(s.size, dtype=bool)
    last[:-1] = new[1:]
    return list(zip(s[new].tolist(), e[last].tolist()))


def _fmt(v: Any, spec: str = ".1f", unit: str = "") -> str:
    return "n/a" if v is None else f"{v:{spec}}{unit}"


NIGHT_DECISIONS = {"pass": N_("PASS"), "fail": N_("FAIL"), "invalid": N_("INVALID")}
NIGHT_INVALID_REASONS = {"analysed_time_below_minimum": N_("analysed time below the minimum"),
                         "analysed_pct_below_minimum": N_("analysed share of the recording below the minimum")}


def _summary_lines(report: dict[str, Any], _: Callable[[str], str]) -> list[str]:
    d = report["definitions"]
    decision = _(NIGHT_DECISIONS[report["decision"]])
    if report.get("borderline"):
        decision += _("  (BORDERLINE: review)")
    night = _("VALID") if report["night_valid"] else _("INVALID: {reasons}").format(
        reasons=", ".join(_(NIGHT_INVALID_REASONS.get(r, r)) for r in report["night_invalid_reasons"]))
    line1 = _("Decision: {decision}    T90 {t90} of analysed time (threshold {threshold} %)    Night {night}").format(
        decision=decision, t90=_fmt(report["t90_pct"], ".2f", " %"), threshold=f"{d['threshold_pct']:g}", night=night)
    line2 = _("Recording {recording} h    Analysed {analysed} h ({analysed_pct})    T90 {t90_min} min    "
              "T90 (<=90) {t90_incl}    T90 of recording {t90_rec}").format(
        recording=f"{report['recording_s'] / 3600:.2f}", analysed=f"{report['analysed_s'] / 3600:.2f}",
        analysed_pct=_fmt(report["analysed_pct"], ".1f", " %"), t90_min=f"{report['t90_s'] / 60:.1f}",
        t90_incl=_fmt(report["t90_pct_inclusive"], ".2f", " %"), t90_rec=_fmt(report["t90_pct_of_recording"], ".2f", " %"))
    line3 = _("Nadir {nadir}    Sustained nadir (>=8 s) {sustained}    Mean {mean}    T88 {t88}    "
              "Longest <=88 % {longest} min    ODI3 {odi3}    ODI4 {odi4}    Gaps {gaps} ({gap_min} min)").format(
        nadir=_fmt(report["nadir_spo2"], ".0f", " %"), sustained=_fmt(report["sustained_nadir_spo2"], ".0f", " %"),
        mean=_fmt(report["mean_spo2"], ".1f", " %"), t88=_fmt(report["t88_pct"], ".2f", " %"),
        longest=f"{report['longest_run_le88_s'] / 60:.1f}", odi3=_fmt(report["odi3_per_h"], ".1f", "/h"),
        odi4=_fmt(report["odi4_per_h"], ".1f", "/h"), gaps=report["gaps"]["count"], gap_min=f"{report['gaps']['total_s'] / 60:.1f}")
    odi = report["odi_algorithm"]
    line4 = _("Definition {definition}: SpO2 < 90 strictly, zero-order hold <= {hold} s, gaps excluded from numerator "
              "and denominator.") .format(definition=d["t90"], hold=f"{d['max_hold_s']:g}") + "\n" + _(
        "ODI: {name}, {window} s baseline, events {min}-{max} s.").format(
        name=odi["name"], window=f"{odi['window_s']:g}", min=f"{odi['min_event_s']:g}", max=f"{odi['max_event_s']:g}")
    return [line1, line2, line3, line4]


def plot_night(
    data: NightData,
    report: dict[str, Any],
    path: str | Path,
    config: AnalysisConfig = AnalysisConfig(),
    title: str = "Overnight oximetry",
    tz: tzinfo = timezone.utc,
    lang: str = "en",
) -> Path:
    """Render the night to ``path`` (A4 landscape).  ``title`` must not contain personal data."""
    path = Path(path)
    fig = night_figure(data, report, config, title, tz, lang)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def night_figure(
    data: NightData,
    report: dict[str, Any],
    config: AnalysisConfig = AnalysisConfig(),
    title: str = "Overnight oximetry",
    tz: tzinfo = timezone.utc,
    lang: str = "en",
) -> Any:
    """The night's A4 landscape figure (the caller saves and closes it: a page of a vector PDF, a PNG).

    ``lang``: the reader's language for every label (``title`` comes translated by the caller).
    """
    with plt.rc_context({"font.family": fonts.families()}):
        fig = _night_figure(data, report, config, title, tz, translator(lang))
    return fig


#: Each figure's words: the text artists and how to write each in a language (``_`` -> text); the figure's
#: own attribute, so it lives and goes with the figure.
_LABELS = "_collector_night_labels"


def relabel(fig: Any, title: str, lang: str) -> Any:
    """The same night figure with every word in ``lang`` (``title`` comes translated by the caller).

    The picture is built once: the bundle's PNG (English) and report.pdf's page in the site's language
    differ only in their words, and every position is computed when the figure is drawn."""
    _ = translator(lang)
    for artist, text_for in getattr(fig, _LABELS):
        artist.set_text(title if text_for is None else text_for(_))
    return fig


def _words(msgid: str) -> Callable[[Callable[[str], str]], str]:
    return lambda t: t(msgid)


def _night_figure(data: NightData, report: dict[str, Any], config: AnalysisConfig, title: str, tz: tzinfo,
                  _: Callable[[str], str]) -> Any:
    labels: list[tuple[Any, Callable[[Callable[[str], str]], str] | None]] = []
    tl = timeline(data, config)
    origin = datetime(1970, 1, 1, tzinfo=timezone.utc)
    to_num = lambda ms: mdates.date2num(origin) + np.asarray(ms, dtype=np.float64) / 86_400_000.0  # noqa: E731

    fig = plt.figure(figsize=A4_LANDSCAPE_IN, dpi=150)
    gs = fig.add_gridspec(3, 1, height_ratios=[1.25, 3.2, 1.3], hspace=0.14, left=0.065, right=0.955, top=0.985, bottom=0.07)
    ax_t = fig.add_subplot(gs[0])
    ax_s = fig.add_subplot(gs[1])
    ax_p = fig.add_subplot(gs[2], sharex=ax_s)

    ax_t.axis("off")
    lines = _summary_lines(report, _)
    colour = {"pass": "#1a7f37", "fail": "#b42318", "invalid": "#9a6700"}[report["decision"]]
    labels.append((ax_t.text(0.0, 1.0, title, fontsize=15, fontweight="bold", va="top", transform=ax_t.transAxes), None))
    labels.append((ax_t.text(0.0, 0.77, lines[0], fontsize=12, fontweight="bold", color=colour, va="top",
                             transform=ax_t.transAxes), lambda t: _summary_lines(report, t)[0]))
    labels.append((ax_t.text(0.0, 0.55, lines[1] + "\n" + lines[2], fontsize=9.5, va="top", transform=ax_t.transAxes,
                             linespacing=1.5), lambda t: "\n".join(_summary_lines(report, t)[1:3])))
    labels.append((ax_t.text(0.0, -0.04, lines[3], fontsize=8.5, color="#444444", va="bottom", transform=ax_t.transAxes),
                   lambda t: _summary_lines(report, t)[3]))

    x, y = _step_xy(tl.t_ms, tl.hold_end_ms, data.spo2, tl.usable)
    xn = to_num(x)
    ax_s.plot(xn, y, color="#1f4e99", lw=0.45, label=_("SpO2 (held samples)"))
    with np.errstate(invalid="ignore"):
        ax_s.fill_between(xn, y, 90.0, where=y < 90.0, color="#d62728", alpha=0.8, lw=0, zorder=3,
                          label=_("time < 90 % (counted)"))
    below = _below_intervals(tl.t_ms, tl.hold_end_ms, data.spo2, tl.usable)
    if below:  # a rug along the bottom keeps short dips visible at whole-night scale
        ax_s.broken_barh([(to_num(a), (b - a) / 86_400_000.0) for a, b in below], (0.0, 0.035),
                         transform=ax_s.get_xaxis_transform(), color="#d62728", lw=0, zorder=3)
    ax_s.axhline(90.0, color="#d62728", lw=1.0, ls="--")
    ax_s.text(1.0, 90.0, " 90 %", color="#d62728", fontsize=9, va="center", ha="left",
              transform=ax_s.get_yaxis_transform(), clip_on=False)
    gaps = gap_intervals(data, config)
    for ax in (ax_s, ax_p):
        if gaps:
            ax.broken_barh(
                [(to_num(a * 1000.0), (b - a) / 86_400.0) for a, b in gaps],
                (0, 1), transform=ax.get_xaxis_transform(), color="#bbbbbb", alpha=0.5, lw=0,
                label=_("gap (not analysed)") if ax is ax_s else None,
            )
    for ev in report.get("suspected_deep_desaturation", []):
        ax_s.axvspan(to_num(ev["start_s"] * 1000.0), to_num(ev["end_s"] * 1000.0), color="#9467bd", alpha=0.35, lw=0)
    lo = 50.0
    if report.get("nadir_spo2") is not None:
        lo = max(50.0, min(80.0, 5.0 * np.floor((report["nadir_spo2"] - 2.0) / 5.0)))
    ax_s.set_ylim(lo, 101)
    labels.append((ax_s.set_ylabel(_("SpO2 (%)"), fontsize=11), _words("SpO2 (%)")))
    ax_s.grid(True, color="#dddddd", lw=0.6)
    legend = ax_s.legend(loc="lower left", bbox_to_anchor=(0.0, 0.045), fontsize=9, framealpha=0.9, ncol=3)
    legend_ids = {_("SpO2 (held samples)"): "SpO2 (held samples)", _("time < 90 % (counted)"): "time < 90 % (counted)",
                  _("gap (not analysed)"): "gap (not analysed)"}
    for text in legend.get_texts():
        labels.append((text, _words(legend_ids[text.get_text()])))
    ax_s.tick_params(labelbottom=False, labelsize=10)

    pu = pulse_usable_array(data.pulse, data.pulse_valid)
    px, py = _step_xy(tl.t_ms, tl.hold_end_ms, data.pulse, pu)
    ax_p.plot(to_num(px), py, color="#444444", lw=0.6)
    labels.append((ax_p.set_ylabel(_("Pulse (bpm)"), fontsize=11), _words("Pulse (bpm)")))
    ax_p.grid(True, color="#dddddd", lw=0.6)
    ax_p.tick_params(labelsize=10)
    if np.isfinite(py).any():
        pmin, pmax = np.nanmin(py), np.nanmax(py)
        ax_p.set_ylim(max(20.0, pmin - 10), min(250.0, pmax + 10))
    ref = datetime.fromtimestamp(tl.t_ms[0] / 1000.0, tz) if tl.t_ms.size else datetime.now(tz)
    off = ref.strftime("%z") or "+0000"
    tzname = f"{ref.tzname() or 'UTC'}, UTC{off[:3]}:{off[3:]}"
    ax_p.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M", tz=tz))
    ax_p.xaxis.set_major_locator(mdates.HourLocator(tz=tz))
    labels.append((ax_p.set_xlabel(_("Time ({zone})").format(zone=tzname), fontsize=11),
                   lambda t: t("Time ({zone})").format(zone=tzname)))
    if tl.t_ms.size:
        pad = max(60_000, (tl.t_ms[-1] - tl.t_ms[0]) // 100)
        ax_s.set_xlim(to_num(tl.t_ms[0] - pad), to_num(tl.t_ms[-1] + pad))
    setattr(fig, _LABELS, labels)
    return fig


__all__ = ["plot_night", "night_figure", "relabel", "A4_LANDSCAPE_IN"]
