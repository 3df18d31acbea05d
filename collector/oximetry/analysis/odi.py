"""Oxygen desaturation index (ODI3/ODI4), as fixed by oximetry.md.

ODI differs up to 3x between tools on the same night, so this module implements
exactly one named algorithm and the report always names it with its parameters.

Algorithm ``trailing-mean-frozen-baseline`` (all times on the integer-millisecond
grid shared with the T90 engine, see :mod:`collector.oximetry.analysis.report`):

1. Only usable SpO2 samples take part (valid flag, 50..100 %).  Values are
   compared at 0.1 % resolution (``round(spo2 * 10)``) with integer arithmetic,
   so the result never depends on float summation order.
2. Baseline ``B_i`` = mean of usable SpO2 with ``t_i - window <= t < t_i``
   (strictly before the sample).  No earlier sample in the window: no onset at i.
3. Onset at the first usable sample (outside an event) with ``spo2_i <= B_i - drop``;
   ``B_i`` is then frozen for the whole event.
4. The event continues over the following usable samples while
   ``spo2 <= B - drop`` *and* the recording is continuous (each sample's
   zero-order hold reaches the next sample; an invalid sample, a break or a hold
   cut by ``max_hold_s`` ends the event: a gap never counts as desaturated).
5. Duration = held time from onset to the end of the last in-event sample's hold.
   The event counts if ``min_event_s <= duration <= max_event_s``.
6. Scanning resumes at the sample after the event.  ODI = counted events per
   analysed hour (analysed time as in the T90 definition).
"""

from __future__ import annotations

from typing import Any

from dataclasses import dataclass

import numpy as np

ALGORITHM_NAME = "trailing-mean-frozen-baseline"


@dataclass(frozen=True, slots=True)
class OdiParams:
    window_s: float = 120.0
    min_event_s: float = 10.0
    max_event_s: float = 120.0


@dataclass(frozen=True, slots=True)
class OdiEvent:
    onset_ms: int  # epoch milliseconds
    end_ms: int
    baseline_pct: float
    nadir_pct: float
    drop_pct: float

    @property
    def duration_s(self) -> float:
        return (self.end_ms - self.onset_ms) / 1000.0


def describe(params: OdiParams, drops: tuple[float, ...] = (3.0, 4.0)) -> dict[str, Any]:
    """JSON description of the algorithm and parameters (goes into every report)."""
    return {
        "name": ALGORITHM_NAME,
        "baseline": "mean of usable SpO2 in [t - window_s, t), frozen at onset",
        "window_s": params.window_s,
        "min_event_s": params.min_event_s,
        "max_event_s": params.max_event_s,
        "drops_pct": list(drops),
        "resolution_pct": 0.1,
        "event_ends_at_gap": True,
        "per": "analysed hour",
    }


def _run_ends(cand: np.ndarray, levels: list[np.ndarray], thr: np.ndarray) -> np.ndarray:
    """Last index of each candidate's run (all later samples <= thr, no gap), by binary lifting.

    ``levels[j][p]`` = max of the gap-marked tenths over ``[p, p + 2**j)``; extending by
    the largest power that keeps the maximum <= thr is exact because the run condition
    holds for a prefix.  O(C log n) for C candidates, no Python loop.
    """
    n = levels[0].size
    pos = cand + 1
    for j in range(len(levels) - 1, -1, -1):
        size = 1 << j
        lv = levels[j]
        can = pos + size <= n
        probe = lv[np.where(can, pos, 0)]
        pos = np.where(can & (probe <= thr), pos + size, pos)
    return pos - 1


class _Prepared:
    """Per-night arrays shared by every drop size (usable samples only)."""

    def __init__(self, idx: np.ndarray, tv: np.ndarray, hv: np.ndarray, s10: np.ndarray, params: OdiParams,
                 linked: np.ndarray | None = None) -> None:
        n = idx.size
        self.n = n
        self.tv = tv
        self.hv = hv
        self.s10 = s10
        self.contig = np.zeros(n, dtype=bool)
        if n > 1:
            self.contig[:-1] = (idx[1:] == idx[:-1] + 1) & (hv[:-1] == tv[1:]) if linked is None else linked
        csum = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(s10, out=csum[1:])
        window_ms = int(round(params.window_s * 1000.0))
        lo = np.searchsorted(tv, tv - window_ms, side="left")
        # hi[i] = first index with t == t_i (strictly-before window end), without a second search
        first = np.ones(n, dtype=bool)
        first[1:] = tv[1:] != tv[:-1]
        hi = np.arange(n)
        if not first.all():  # duplicate timestamps
            hi = np.maximum.accumulate(np.where(first, hi, 0))
        self.cnt = cnt = hi - lo
        self.total = total = csum[hi] - csum[lo]
        # onset test s10 * cnt <= total - drop * cnt  <=>  excess >= drop * cnt; -1: no baseline, never
        self.excess = np.where(cnt > 0, total - s10 * cnt, -1)
        # sparse table of maxima; a sample not reached by the previous one's hold is a wall
        wall = s10.astype(np.int16)  # 0..1000 tenths; int16 keeps the table small and fast
        starts = np.flatnonzero(~self.contig[:-1]) + 1
        wall[starts] = np.iinfo(np.int16).max
        # a run never crosses a wall, so no run is longer than the longest stretch between two:
        # levels wider than that could only fail, and are not built
        longest = int(np.diff(starts, prepend=0, append=n).max()) if n else 0
        self.levels = [wall]
        while (1 << len(self.levels)) <= longest:
            prev, half = self.levels[-1], 1 << (len(self.levels) - 1)
            self.levels.append(np.maximum(prev[:-half], prev[half:]))


def _candidates(p: _Prepared, d10: int, within: np.ndarray | None) -> np.ndarray:
    """Onset candidates of a drop of ``d10`` tenths; ``within``: those of a smaller drop (a superset)."""
    if within is None:
        return np.flatnonzero(p.excess >= d10 * p.cnt)
    sub: np.ndarray = within[p.excess[within] >= d10 * p.cnt[within]]
    return sub


def _detect(p: _Prepared, drop_pct: float, params: OdiParams, cand: np.ndarray) -> list[OdiEvent]:
    if p.n == 0 or cand.size == 0:
        return []
    d10 = int(round(drop_pct * 10.0))
    # s10 * cnt <= total - d10 * cnt  <=>  s10 <= floor(total / cnt) - d10  (cnt > 0)
    thr = p.total[cand] // p.cnt[cand] - d10
    ends = _run_ends(cand, p.levels, thr)
    nxt = np.searchsorted(cand, ends + 1, side="left").tolist()  # next candidate after each run
    taken = []
    j = 0
    while j < cand.size:  # greedy chain: scanning resumes after each event
        taken.append(j)
        j = nxt[j]
    tk = np.array(taken, dtype=np.int64)
    on, en = cand[tk], ends[tk]
    dur = p.hv[en] - p.tv[on]
    keep = (dur >= int(round(params.min_event_s * 1000.0))) & (dur <= int(round(params.max_event_s * 1000.0)))
    on, en = on[keep], en[keep]
    if on.size == 0:
        return []
    bounds = np.stack([on, en + 1], axis=1).ravel()
    nadirs = np.minimum.reduceat(np.append(p.s10, 0), bounds)[::2]
    base = p.total[on] / p.cnt[on] / 10.0
    return [
        OdiEvent(onset_ms=a, end_ms=b, baseline_pct=c, nadir_pct=dn / 10.0, drop_pct=float(drop_pct))
        for a, b, c, dn in zip(p.tv[on].tolist(), p.hv[en].tolist(), base.tolist(), nadirs.tolist())
    ]


def detect_all(
    t_ms: np.ndarray,
    spo2: np.ndarray,
    usable: np.ndarray,
    hold_end_ms: np.ndarray,
    drops: tuple[float, ...] = (3.0, 4.0),
    params: OdiParams = OdiParams(),
) -> dict[float, list[OdiEvent]]:
    """Events for each drop size (3 and 4 %) over a whole night, sharing the baseline work.

    ``t_ms``/``hold_end_ms`` are int64 epoch milliseconds for every sample (as
    produced by the report's hold computation); ``usable`` selects samples.
    """
    idx = np.flatnonzero(usable)
    s10 = np.rint(spo2[idx] * 10.0).astype(np.int64)
    return detect_usable(idx, t_ms[idx], hold_end_ms[idx], s10, drops, params)


def detect_usable(
    idx: np.ndarray,
    tv: np.ndarray,
    hv: np.ndarray,
    s10: np.ndarray,
    drops: tuple[float, ...] = (3.0, 4.0),
    params: OdiParams = OdiParams(),
    linked: np.ndarray | None = None,
) -> dict[float, list[OdiEvent]]:
    """:func:`detect_all` from the usable samples the caller already gathered.

    ``idx`` = indices of the usable samples, ``tv``/``hv`` = their times and hold ends
    (int64 ms), ``s10`` = ``rint(spo2 * 10)`` as int64.  The night report has these
    arrays already; gathering them again would cost as much as a drop size's search.
    ``linked`` (optional, n - 1 values): usable sample k + 1 directly follows k and k's hold
    reaches it, if the caller has it too.
    """
    p = _Prepared(idx, tv, hv, s10, params, linked)
    out: dict[float, list[OdiEvent]] = {}
    within: np.ndarray | None = None
    for d in sorted(set(drops)):  # a larger drop's candidates are among a smaller one's
        cand = _candidates(p, int(round(d * 10.0)), within) if p.n else np.zeros(0, dtype=np.int64)
        out[d] = _detect(p, d, params, cand)
        within = cand
    return {d: out[d] for d in drops}


def detect_events(
    t_ms: np.ndarray,
    spo2: np.ndarray,
    usable: np.ndarray,
    hold_end_ms: np.ndarray,
    drop_pct: float,
    params: OdiParams = OdiParams(),
) -> list[OdiEvent]:
    """Desaturation events of one drop size over a whole night."""
    return detect_all(t_ms, spo2, usable, hold_end_ms, (drop_pct,), params)[drop_pct]


def per_hour(n_events: int, analysed_ms: int) -> float | None:
    """Events per analysed hour; None when nothing was analysed."""
    if analysed_ms <= 0:
        return None
    return n_events * 3_600_000 / analysed_ms
