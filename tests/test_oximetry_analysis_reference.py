"""Vectorised engine vs literal, loop-by-loop re-implementations of the definitions.

The references below are written straight from oximetry.md / the module docstrings,
sample by sample, with no numpy tricks; random nights (hypothesis) must agree exactly.
"""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from collector.oximetry.analysis.odi import OdiParams, detect_all
from collector.oximetry.analysis.report import AnalysisConfig, NightData, night_report, timeline

T0 = 1_767_225_600.0


def ref_holds(t_ms: list[int], breaks_ms: list[int], max_hold: int) -> list[int]:
    out = []
    for i, t in enumerate(t_ms):
        if i == len(t_ms) - 1:
            out.append(0)
            continue
        end = min(t_ms[i + 1], t + max_hold)
        for b in breaks_ms:
            if b >= t:
                end = min(end, b)
        out.append(end - t)
    return out


def ref_usable(v: float, ok: bool) -> bool:
    # oximetry.md: a device-valid value below 50 % still counts (as below 90 %); 0 is a dropout
    return ok and not math.isnan(v) and 0 < v <= 100


def ref_gaps(t_ms, holds, usable, breaks):  # breaks: sorted [(start_ms, cause)]
    pieces = []  # (label, start, end) in time order
    for i in range(len(t_ms) - 1):
        t, h, nx = t_ms[i], t_ms[i] + holds[i], t_ms[i + 1]
        pieces.append(("analysed" if usable[i] else "invalid_samples", t, h))
        first = next(((b, c) for b, c in breaks if t <= b < nx), None)
        if first is None:
            pieces.append(("max_hold_exceeded", h, nx))
        else:
            p = max(h, first[0])
            pieces.append(("max_hold_exceeded", h, p))
            pieces.append((first[1], p, nx))
    pieces = [x for x in pieces if x[2] > x[1]]
    by, stretches, cur, prev_label = {}, [], None, None
    for lab, a, b in pieces:
        if lab == "analysed":
            cur, prev_label = None, lab
            continue
        e = by.setdefault(lab, [0, 0])
        if lab != prev_label:
            e[0] += 1
        e[1] += b - a
        if cur is None:
            cur = [a, b]
            stretches.append(cur)
        else:
            cur[1] = b
        prev_label = lab
    return by, stretches


def ref_odi(t_ms, spo2, usable, hold_end, drop, p: OdiParams):
    idx = [i for i in range(len(t_ms)) if usable[i]]
    s10 = [round(spo2[i] * 10) for i in idx]
    tv = [t_ms[i] for i in idx]
    events = []
    k = 0
    d10 = round(drop * 10)
    while k < len(idx):
        win = [s10[j] for j in range(len(idx)) if tv[k] - p.window_s * 1000 <= tv[j] < tv[k]]
        if win and s10[k] * len(win) <= sum(win) - d10 * len(win):
            c, tot = len(win), sum(win)
            e = k
            while (e + 1 < len(idx) and idx[e + 1] == idx[e] + 1 and hold_end[idx[e]] == t_ms[idx[e + 1]]
                   and s10[e + 1] * c <= tot - d10 * c):
                e += 1
            dur = hold_end[idx[e]] - tv[k]
            if p.min_event_s * 1000 <= dur <= p.max_event_s * 1000:
                events.append((tv[k], hold_end[idx[e]], min(s10[k : e + 1])))
            k = e + 1
        else:
            k += 1
    return events


values = st.sampled_from([0.0, 49.0, 80.0, 84.0, 85.0, 86.0, 88.0, 89.0, 89.5, 90.0, 91.0, 92.0, 94.0, 95.0, 96.0, math.nan])
# runs of one value (desaturations last several samples), irregular steps, long gaps
nights = st.lists(
    st.tuples(st.sampled_from([0.0, 1.0, 1.0, 1.0, 2.0, 4.0, 0.3, 12.0, 45.0]), values, st.integers(1, 12)),
    min_size=0, max_size=60,
).map(lambda blocks: [(dt if k == 0 else 1.0, v) for dt, v, rep in blocks for k in range(rep)])


def build(rows, breaks_at, seed):
    t = T0 + np.cumsum([r[0] for r in rows]) if rows else np.zeros(0)
    spo2 = np.array([r[1] for r in rows], dtype=float)
    rng = np.random.default_rng(seed)
    valid = rng.random(len(rows)) > 0.05
    br = []
    for k, frac in enumerate(breaks_at):
        if len(rows):
            b = float(t[0] + frac * (t[-1] - t[0] + 5))
            br.append((b, b + 10.0, ["device_disconnected", "daemon_down"][k % 2]))
    return NightData(t, spo2, np.full(len(rows), 60.0), valid, np.ones(len(rows), bool), br)


@settings(max_examples=200, deadline=None)
@given(nights, st.lists(st.floats(0, 1), max_size=3), st.integers(0, 1000), st.sampled_from([10.0, 3.0]))
def test_t90_and_gaps_equal_the_literal_definition(rows, breaks_at, seed, max_hold) -> None:
    d = build(rows, breaks_at, seed)
    cfg = AnalysisConfig(max_hold_s=max_hold)
    r = night_report(d, cfg)
    tl = timeline(d, cfg)
    t_ms = tl.t_ms.tolist()
    bms = sorted((round(b[0] * 1000), b[2]) for b in d.breaks)
    holds = ref_holds(t_ms, [b for b, _ in bms], round(max_hold * 1000))
    usable = [ref_usable(v, ok) for v, ok in zip(d.spo2.tolist(), d.valid.tolist())]
    analysed = sum(h for h, u in zip(holds, usable) if u)
    num = sum(h for h, u, v in zip(holds, usable, d.spo2.tolist()) if u and v < 90)
    assert r["analysed_s"] == analysed / 1000 and r["t90_s"] == num / 1000
    by, stretches = ref_gaps(t_ms, holds, usable, bms)
    assert r["gaps"]["by_cause"] == {k: {"count": v[0], "total_s": v[1] / 1000} for k, v in sorted(by.items())}
    assert r["gaps"]["count"] == len(stretches)
    assert r["gaps"]["longest_s"] == max((b - a for a, b in stretches), default=0) / 1000


@settings(max_examples=150, deadline=None)
@given(nights, st.lists(st.floats(0, 1), max_size=2), st.integers(0, 1000))
def test_odi_equals_the_literal_definition(rows, breaks_at, seed) -> None:
    d = build(rows, breaks_at, seed)
    tl = timeline(d, AnalysisConfig())
    p = OdiParams(window_s=30.0, min_event_s=3.0, max_event_s=20.0)  # short, so small nights have events
    got = detect_all(tl.t_ms, d.spo2, tl.usable, tl.hold_end_ms, (3.0, 4.0), p)
    for drop in (3.0, 4.0):
        ref = ref_odi(tl.t_ms.tolist(), d.spo2.tolist(), tl.usable.tolist(), tl.hold_end_ms.tolist(), drop, p)
        assert [(e.onset_ms, e.end_ms, round(e.nadir_pct * 10)) for e in got[drop]] == ref
