"""Whole-night desaturation report (vectorised), and the definitions it fixes.

This module owns the definitions; :mod:`collector.oximetry.analysis.live` reuses the
same primitives so that the live figures equal the final report exactly.

Definition ``T90/strict-lt90/zero-order-hold/v1`` (oximetry.md):

* **Time grid.** Every timestamp is converted once to integer milliseconds,
  ``t_ms = round(t_s * 1000)`` (round half to even; ``np.rint`` and Python's
  ``round`` agree).  All durations are sums of integers, so the O(1) live
  accumulator and the vectorised report agree bit for bit.
* **Usable SpO2 sample.** ``valid`` is true, the value is finite and
  ``50 <= spo2 <= 100``.  SpO2 0 or NaN (the device's missing code) is a
  dropout, never a desaturation, even if a caller marked it valid.
* **Zero-order hold.** Sample ``i`` holds its value from ``t_i`` until
  ``min(t_{i+1}, t_i + max_hold_s, first break start >= t_i)``.  The last
  sample holds 0 s, so recording time is first to last sample.  Time not held
  by a usable sample is a gap and never inherits the last value.
* **Analysed time** = held time of usable samples.  **Numerator** = held time of
  usable samples with ``spo2 < 90`` (primary); the ``<= 90`` variant is also
  reported.  ``t90_pct = numerator * 100 / analysed``.
* **Decision.** Pass iff ``t90_pct <= threshold_pct``, compared exactly in
  integers (``num_ms * 100 * q <= p * analysed_ms`` with the threshold as the
  exact decimal ``p/q``), so 2.00 % passes with no float surprise.  The night is
  *invalid* (neither pass nor fail) unless analysed >= ``min_analysed_h`` and
  analysed >= ``min_analysed_pct`` % of recording.  ``borderline`` is set when
  the ``<=`` variant or T90 as % of recording time falls on the other side of
  the threshold; the primary figure still decides.

Secondary metrics (time-weighted by the same holds unless stated): T88/T85/T80
(strict ``<``), longest continuous run ``<= 88`` (consecutive usable samples
whose holds touch), nadir (lowest usable sample), sustained nadir (lowest
level ``v``, at 0.1 % resolution, such that SpO2 stayed ``<= v`` for >= 8 s of
continuous held time), time-weighted mean (exact, rounded once), time-weighted (lower) median at
0.1 % resolution, an SpO2 histogram, pulse min/mean/max over
usable pulse samples (plain sample statistics), gaps by cause, suspected deep
desaturations and ODI (see :mod:`collector.oximetry.analysis.odi`).

Gaps: every millisecond of the recording is either analysed or a gap piece with
one cause: ``invalid_samples`` (held by an unusable sample), ``max_hold_exceeded``
(no sample within ``max_hold_s``), or the cause of the first break starting in
that interval (from the break start to the next sample).  ``count`` counts
maximal unanalysed stretches; per cause, maximal runs of that cause.

Suspected deep desaturation: a run of unusable samples that starts right after
(within the previous sample's hold) a usable value below 80 % that is lower than
the highest usable value of the preceding 30 s (i.e. SpO2 was falling).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Sequence

import numpy as np

from collector.errors import InvalidInput
from drivers.protocols.common import (
    PULSE_MAX_BPM,
    PULSE_MIN_BPM,
    SPO2_MAX_PCT,
    SPO2_MIN_PCT,
    Flag,
)

from . import odi as odi_mod

DEFINITION_NAME = "T90/strict-lt90/zero-order-hold/v1"
REPORT_SCHEMA = "night-report/1"
MS_PER_H = 3_600_000
SUSTAINED_NADIR_MIN_S = 8.0
LONGEST_RUN_LEVEL = 88.0
DEEP_DESAT_LEVEL = 80.0
DEEP_DESAT_FALL_WINDOW_S = 30.0
_NO_BREAK = np.iinfo(np.int64).max

# Histogram bands [lo, hi) in % SpO2 (last band includes 100).
# The first band starts above 0: a device-valid reading below 50 % counts (as below 90 %).
HISTOGRAM_BANDS: tuple[tuple[float, float], ...] = (
    (0.0, 80.0),
    (80.0, 85.0),
    (85.0, 88.0),
    (88.0, 90.0),
    (90.0, 92.0),
    (92.0, 95.0),
    (95.0, 100.0),
)

# Gap causes produced by the engine itself (break causes come from the data).
CAUSE_INVALID = "invalid_samples"
CAUSE_MAX_HOLD = "max_hold_exceeded"


class AnalysisInputError(InvalidInput):
    """Night data or analysis configuration the engine cannot use."""


# --------------------------------------------------------------------------- config


@dataclass(frozen=True, slots=True)
class AnalysisConfig:
    """Analysis parameters (oximetry.md defaults)."""

    max_hold_s: float = 10.0
    threshold_pct: float = 2.0
    min_analysed_h: float = 4.0
    min_analysed_pct: float = 70.0
    odi: odi_mod.OdiParams = field(default_factory=odi_mod.OdiParams)

    def __post_init__(self) -> None:
        for name in ("max_hold_s", "threshold_pct", "min_analysed_h", "min_analysed_pct"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise AnalysisInputError(
                    f"analysis config {name}={v!r} is not a finite number >= 0; fix it in the config file"
                )
        if self.max_hold_s <= 0:
            raise AnalysisInputError("analysis config max_hold_s must be > 0 (default 10); fix it in the config file")

    @property
    def max_hold_ms(self) -> int:
        return to_ms(self.max_hold_s)

    @property
    def threshold(self) -> Fraction:
        return exact(self.threshold_pct)


# --------------------------------------------------------------- shared primitives


def to_ms(t_s: float) -> int:
    """Seconds -> integer milliseconds (half to even, same as ``np.rint``)."""
    return round(float(t_s) * 1000.0)


def to_ms_array(t_s: np.ndarray) -> np.ndarray:
    return np.rint(np.asarray(t_s, dtype=np.float64) * 1000.0).astype(np.int64)


def exact(x: float) -> Fraction:
    """The decimal a config value was written as (2.0 -> 2, 2.1 -> 21/10)."""
    return Fraction(repr(float(x)))


def pct(num_ms: int, den_ms: int) -> float | None:
    """``num * 100 / den`` from Python ints (correctly rounded; identical live and final)."""
    if den_ms <= 0:
        return None
    return int(num_ms) * 100 / int(den_ms)


def exceeds(num_ms: int, den_ms: int, threshold: Fraction) -> bool:
    """Exactly: is ``num / den * 100 > threshold``?  (den > 0)"""
    return int(num_ms) * 100 * threshold.denominator > threshold.numerator * int(den_ms)


def spo2_usable(spo2: float | None, valid: bool) -> bool:
    """May this SpO2 value count (numerator/denominator)?  Scalar twin of the array rule.

    Valid and 0 < spo2 <= 100: a device-valid value below 50 % counts (it is below 90 %
    whatever its accuracy; dropping it could only lower T90) and is reviewed
    (``valid_below_50``); 0 is a dropout.
    """
    return bool(valid) and spo2 is not None and 0 < spo2 <= SPO2_MAX_PCT


def spo2_usable_array(spo2: np.ndarray, valid: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        return valid & (spo2 > 0) & (spo2 <= SPO2_MAX_PCT)


def pulse_usable_array(pulse: np.ndarray, pulse_valid: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        return pulse_valid & (pulse >= PULSE_MIN_BPM) & (pulse <= PULSE_MAX_BPM)


# ----------------------------------------------------------------------- input


Break = tuple[float, float, str]


@dataclass(slots=True)
class NightData:
    """One night's samples, sorted by host time (UTC epoch seconds).

    ``breaks`` are intervals where recording was interrupted (start_s, end_s, cause),
    e.g. device disconnected or daemon down.  ``flags`` (optional) is the stored
    :class:`~drivers.protocols.common.Flag` bitmask per sample, used for counts only.
    """

    t_s: np.ndarray
    spo2: np.ndarray
    pulse: np.ndarray
    valid: np.ndarray
    pulse_valid: np.ndarray
    breaks: list[Break] = field(default_factory=list)
    flags: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.t_s = np.asarray(self.t_s, dtype=np.float64)
        n = self.t_s.size
        self.spo2 = np.asarray(self.spo2, dtype=np.float64)
        self.pulse = np.asarray(self.pulse, dtype=np.float64)
        self.valid = np.asarray(self.valid, dtype=bool)
        self.pulse_valid = np.asarray(self.pulse_valid, dtype=bool)
        arrays = {"spo2": self.spo2, "pulse": self.pulse, "valid": self.valid, "pulse_valid": self.pulse_valid}
        if self.flags is not None:
            self.flags = np.asarray(self.flags, dtype=np.int64)
            arrays["flags"] = self.flags
        for name, a in arrays.items():
            if a.shape != (n,):
                raise AnalysisInputError(
                    f"night data: {name} has shape {a.shape} but t_s has {n} samples; pass one value per sample"
                )
        if n and not np.all(np.isfinite(self.t_s)):
            raise AnalysisInputError("night data: t_s contains NaN/inf timestamps; drop those samples before analysis")
        if n > 1 and np.any(np.diff(self.t_s) < 0):
            raise AnalysisInputError("night data: t_s is not sorted; order samples by host time before analysis")
        clean: list[Break] = []
        for b in self.breaks:
            try:
                s, e, cause = float(b[0]), float(b[1]), str(b[2])
            except (TypeError, ValueError, IndexError):
                raise AnalysisInputError(
                    f"night data: break {b!r} is not (start_s, end_s, cause); fix the break records"
                ) from None
            if not (math.isfinite(s) and math.isfinite(e)) or e < s:
                raise AnalysisInputError(f"night data: break {b!r} has end before start or a non-finite time")
            clean.append((s, e, cause))
        self.breaks = clean

    @classmethod
    def from_samples(
        cls,
        t_s: Sequence[float],
        spo2: Sequence[float | None],
        valid: Sequence[bool] | None = None,
        pulse: Sequence[float | None] | None = None,
        pulse_valid: Sequence[bool] | None = None,
        breaks: Sequence[Break] = (),
        flags: Sequence[int] | None = None,
    ) -> "NightData":
        """Convenience constructor from lists (None -> NaN; validity defaults to 'finite')."""
        sp = np.array([np.nan if v is None else v for v in spo2], dtype=np.float64)
        pu = np.full(sp.size, np.nan) if pulse is None else np.array(
            [np.nan if v is None else v for v in pulse], dtype=np.float64
        )
        va = np.isfinite(sp) if valid is None else np.asarray(valid, dtype=bool)
        pv = np.isfinite(pu) if pulse_valid is None else np.asarray(pulse_valid, dtype=bool)
        return cls(np.asarray(t_s, dtype=np.float64), sp, pu, va, pv, list(breaks),
                   None if flags is None else np.asarray(flags, dtype=np.int64))


# ------------------------------------------------------------------- timeline


@dataclass(slots=True)
class Timeline:
    """Per-sample hold intervals on the millisecond grid (shared by report, ODI, plot)."""

    t_ms: np.ndarray  # int64
    hold_end_ms: np.ndarray  # int64, >= t_ms
    hold_ms: np.ndarray  # int64
    usable: np.ndarray  # bool
    next_break: np.ndarray  # int64 index into sorted breaks of first break start >= t (len = none)
    break_start_ms: np.ndarray  # int64, sorted
    break_cause: list[str]  # aligned with break_start_ms

    @property
    def contig(self) -> np.ndarray:
        """contig[i]: sample i's hold reaches sample i+1 (no gap in between); False for the last."""
        c = np.zeros(self.t_ms.size, dtype=bool)
        c[:-1] = self.hold_end_ms[:-1] == self.t_ms[1:]
        return c


def timeline(data: NightData, config: AnalysisConfig) -> Timeline:
    t = to_ms_array(data.t_s)
    n = t.size
    # sorted by (start, cause): the result never depends on the order breaks were listed
    brk = sorted((to_ms(b[0]), b[2]) for b in data.breaks)
    bstarts = np.array([b[0] for b in brk], dtype=np.int64)
    causes = [b[1] for b in brk]
    nxt = np.empty(n, dtype=np.int64)
    if n:
        nxt[:-1] = t[1:]
        nxt[-1] = t[-1]
    end = t + config.max_hold_ms
    np.minimum(nxt, end, out=end)
    kb = np.searchsorted(bstarts, t, side="left") if bstarts.size else np.zeros(n, dtype=np.int64)
    if bstarts.size:
        cut = np.where(kb < bstarts.size, bstarts[np.minimum(kb, bstarts.size - 1)], _NO_BREAK)
        end = np.minimum(end, cut)
    usable = spo2_usable_array(data.spo2, data.valid)
    return Timeline(t, end, end - t, usable, kb, bstarts, causes)


# ------------------------------------------------------------------ helpers


def _run_lengths(mask: np.ndarray, tl: Timeline, contig: np.ndarray) -> np.ndarray:
    """Held ms of each maximal run of consecutive ``mask`` samples whose holds touch."""
    if not mask.any():
        return np.zeros(0, dtype=np.int64)
    link = np.zeros(mask.size, dtype=bool)  # link[i]: sample i continues the run of i-1
    link[1:] = mask[1:] & mask[:-1] & contig[:-1]
    start = mask & ~link
    rid = np.cumsum(start)[mask] - 1
    return np.bincount(rid, weights=tl.hold_ms[mask].astype(np.float64)).astype(np.int64)


def _longest_run_ms(mask: np.ndarray, tl: Timeline, contig: np.ndarray) -> int:
    r = _run_lengths(mask, tl, contig)
    return int(r.max()) if r.size else 0


def _longest_linked_run_ms(mask: np.ndarray, hold: np.ndarray, linked: np.ndarray) -> int:
    """:func:`_longest_run_ms` over the usable samples: ``mask``/``hold`` per usable sample, ``linked[k]``:
    usable sample k + 1 directly follows k and k's hold reaches it."""
    if not mask.any():
        return 0
    cont = np.zeros(mask.size, dtype=bool)  # cont[k]: sample k continues the run of k - 1
    cont[1:] = mask[1:] & mask[:-1] & linked
    rid = np.cumsum(mask & ~cont)[mask] - 1
    return int(np.bincount(rid, weights=hold[mask].astype(np.float64)).max())


def _tenths(spo2: np.ndarray) -> np.ndarray:
    """SpO2 as integer tenths (usable values only; 500..1000)."""
    x = spo2 * 10.0
    return np.rint(x, out=x).astype(np.int64)


def _sustained_nadir(key: np.ndarray, hold: np.ndarray, link: np.ndarray, min_ms: int,
                     per_tenth: np.ndarray) -> float | None:
    """Lowest level (0.1 % resolution) that SpO2 stayed at or below for >= min_ms held time.

    ``key``/``hold`` are the tenths and held ms of the usable samples with a hold > 0, in
    order; ``link[j]``: sample j continues the run of sample j-1 (adjacent and held up to
    it).  The answer is the least, over every stretch of linked samples holding >= min_ms,
    of the stretch's highest value; the shortest such stretch from each start suffices.
    Starts above a cheap upper bound cannot win, so only the low starts are searched.
    ``per_tenth``: held ms per tenth (its non-zero entries are the values of ``key``).
    """
    m = key.size
    if m == 0:
        return None
    ends = np.zeros(m + 1, dtype=np.int64)  # ends[j]: held ms before sample j
    np.cumsum(hold, out=ends[1:])
    chain_start = np.ones(m, dtype=bool)
    chain_start[1:] = ~link
    next_first = np.append(np.flatnonzero(chain_start)[1:], m)  # where the chain after each chain starts
    values = np.flatnonzero(per_tenth)
    rank = np.cumsum(per_tenth[values])
    total = float(rank[-1])
    table = [key]  # table[l][j] = max key over [j, j + 2**l)
    for share in (0.05, 0.3, 1.0):  # bound = the value below which this share of held time lies
        bound = int(values[min(values.size - 1, int(np.searchsorted(rank, share * total, side="left")))])
        starts = np.flatnonzero(key <= bound) if share < 1.0 else np.arange(m)
        stop = np.searchsorted(ends, ends[starts] + min_ms, side="left")  # window [start, stop)
        np.maximum(stop, starts + 1, out=stop)
        ok = stop <= next_first[np.searchsorted(next_first, starts, side="right")]  # window inside its chain
        if ok.any():
            starts, stop = starts[ok], stop[ok]
            length = stop - starts
            lvl = np.frexp(length.astype(np.float64))[1] - 1  # floor(log2(length))
            while len(table) <= int(lvl.max()):
                prev, half = table[-1], 1 << (len(table) - 1)
                table.append(np.maximum(prev[:-half], prev[half:]))
            best = None
            for lv in np.unique(lvl).tolist():
                sel = lvl == lv
                a, b = starts[sel], stop[sel] - (1 << lv)
                v = int(np.maximum(table[lv][a], table[lv][b]).min())
                best = v if best is None else min(best, v)
            assert best is not None
            if best <= bound or share == 1.0:
                return float(best) / 10.0
        elif share == 1.0:
            return None
    return None  # not reached: the last share searches every start


def _next_up(x: float) -> float:
    """The next float above ``x``: ``v <= x`` is ``v < _next_up(x)``."""
    return float(np.nextafter(x, math.inf))


_INCLUSIVE_90 = _next_up(90.0)
# every level a report figure compares SpO2 with (strict "<"; "<=" as "< next float up")
_LEVELS = np.array(sorted({90.0, _INCLUSIVE_90, 88.0, 85.0, 80.0}
                          | {lo for lo, _ in HISTOGRAM_BANDS} | {hi for _, hi in HISTOGRAM_BANDS[:-1]}
                          | {_next_up(HISTOGRAM_BANDS[-1][1])}))


def _held_below(spo2: np.ndarray, hold: np.ndarray) -> dict[float, int]:
    """Held ms of the samples below each of ``_LEVELS``, from one pass over the samples.

    Each sample falls in one band between consecutive levels; a band's held time is an
    integer sum (exact in float64 far beyond any night), and "below a level" adds up the
    bands under it, so every figure equals the masked sum it replaces.
    """
    band = np.searchsorted(_LEVELS, spo2, side="right")
    per_band = np.bincount(band, weights=hold, minlength=_LEVELS.size + 1)
    below = np.cumsum(per_band)
    return {float(lvl): int(below[k]) for k, lvl in enumerate(_LEVELS.tolist())}


def _held_below_grid(per_tenth: np.ndarray) -> dict[float, int]:
    """:func:`_held_below` when every value is a whole tenth, from the held ms per tenth.

    A value ``k / 10`` is below a level exactly when ``k`` is below the number of grid
    values under the level, so the bands are prefix sums of ``per_tenth``.
    """
    grid = np.arange(per_tenth.size) / 10.0
    n_under = np.searchsorted(grid, _LEVELS, side="left").tolist()
    below = np.concatenate(([0.0], np.cumsum(per_tenth)))
    return {float(lvl): int(below[k]) for lvl, k in zip(_LEVELS.tolist(), n_under)}


def _weighted_mean(spo2: np.ndarray, hold_ms: np.ndarray, per_tenth: np.ndarray, analysed_ms: int,
                   on_grid: bool) -> float | None:
    """Time-weighted mean SpO2: the exact mean of the stored values, correctly rounded.

    Summed per distinct value (held ms per value are exact integer sums), then in Python
    integers, so the figure is the same on every machine.  It equals the float dot
    product used before whenever that one was exact (every integer-valued night); a
    BLAS dot depended on the build and its thread count, and its threads cost more CPU
    than the rest of the report.
    """
    if analysed_ms <= 0:
        return None
    values: list[float]
    held: list[float]
    if on_grid:
        nz = np.flatnonzero(per_tenth)
        values, held = (nz / 10.0).tolist(), per_tenth[nz].tolist()
    else:
        uniq, inverse = np.unique(spo2, return_inverse=True)
        values, held = uniq.tolist(), np.bincount(inverse, weights=hold_ms).tolist()
    ratios = [v.as_integer_ratio() for v in values]
    den = max(d for _, d in ratios)  # powers of two: each divides the largest
    num = sum(n * (den // d) * int(h) for (n, d), h in zip(ratios, held))
    return num / (den * analysed_ms)


def _weighted_median(per_tenth: np.ndarray) -> float | None:
    """Time-weighted median at 0.1 % resolution (lower median), from the held ms per tenth."""
    if per_tenth.size == 0 or per_tenth.sum() <= 0:
        return None
    cw = np.cumsum(per_tenth)
    k = int(np.searchsorted(cw, cw[-1] / 2.0, side="left"))
    return k / 10.0


def _segments(tl: Timeline, break_code: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The unanalysed pieces of [first, last sample], in time order, with separators.

    Per interval i -> i+1: the held piece [t_i, h_i) (a gap, label 1, if the sample
    is not usable), then [h_i, p_i) label 2 (hold cut by max_hold_s: samples
    missing), then [p_i, t_{i+1}) label 3+k (break k's cause), where p_i is the
    first break start in the interval (or t_{i+1}).  Intervals without any gap are
    skipped; a label-0 *separator* (duration meaningless) marks analysed time
    between two gap pieces.  Returns (start_ms, duration_ms, label), zero-length
    gap pieces removed.
    """
    t, h = tl.t_ms[:-1], tl.hold_end_ms[:-1]
    nxt = tl.t_ms[1:]
    u = tl.usable[:-1]
    analysed = u & (h > t)
    kept = np.flatnonzero((~u & (h > t)) | (h < nxt))
    if kept.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
    cum = np.cumsum(analysed)
    sep = np.ones(kept.size, dtype=bool)  # analysed time since the previous kept interval?
    sep[1:] = cum[kept[1:]] > cum[kept[:-1]]
    sep[0] = bool(cum[kept[0]] > 0)
    t, h, nxt, u = t[kept], h[kept], nxt[kept], u[kept]
    m = kept.size
    nb = tl.break_start_ms.size
    if nb:
        kb = tl.next_break[:-1][kept]
        kbc = np.minimum(kb, nb - 1)
        bs = np.where(kb < nb, tl.break_start_ms[kbc], _NO_BREAK)
        has_break = bs < nxt
        p = np.where(has_break, np.maximum(h, bs), nxt)
        blabel = np.where(has_break, 3 + break_code[kbc], 2)
    else:
        p = nxt
        blabel = np.full(m, 2, dtype=np.int64)
    starts = np.stack([t, t, h, p], axis=1).ravel()
    durs = np.stack([sep.astype(np.int64), np.where(u, 0, h - t), p - h, nxt - p], axis=1).ravel()
    labels = np.stack([np.zeros(m, np.int64), np.ones(m, np.int64), np.full(m, 2), blabel], axis=1).ravel()
    keep = durs > 0
    return starts[keep], durs[keep], labels[keep].astype(np.int64)


def gap_intervals(data: NightData, config: AnalysisConfig = AnalysisConfig()) -> list[tuple[float, float]]:
    """Merged unanalysed stretches (start_s, end_s) inside the recording (for plots)."""
    tl = timeline(data, config)
    if tl.t_ms.size < 2:
        return []
    codes = _break_codes(tl)[1]
    st, du, lab = _segments(tl, codes)
    g = lab != 0
    if not g.any():
        return []
    prev = np.concatenate(([False], g[:-1]))
    nxt = np.concatenate((g[1:], [False]))
    s = st[g & ~prev]
    e = (st + du)[g & ~nxt]
    return [(a / 1000.0, b / 1000.0) for a, b in zip(s.tolist(), e.tolist())]


def _break_codes(tl: Timeline) -> tuple[list[str], np.ndarray]:
    names = sorted(set(tl.break_cause))
    idx = {c: k for k, c in enumerate(names)}
    return names, np.array([idx[c] for c in tl.break_cause], dtype=np.int64)


def _gaps(tl: Timeline, data: NightData) -> dict[str, Any]:
    names, codes = _break_codes(tl)
    label_names = ["analysed", CAUSE_INVALID, CAUSE_MAX_HOLD] + names
    by_cause: dict[str, dict[str, Any]] = {}
    count = 0
    longest = 0
    total = 0
    if tl.t_ms.size >= 2:
        _, du, lab = _segments(tl, codes)
        gap = lab != 0
        # stretches per cause: a change of label starts a new stretch
        new = np.ones(lab.size, dtype=bool)
        new[1:] = lab[1:] != lab[:-1]
        for code in np.unique(lab[gap]).tolist():
            sel = lab == code
            name = label_names[code]
            prev = by_cause.setdefault(name, {"count": 0, "total_s": 0.0, "_ms": 0})
            prev["count"] += int((sel & new).sum())
            prev["_ms"] += int(du[sel].sum())
        gprev = np.concatenate(([False], gap[:-1]))
        gstart = gap & ~gprev
        count = int(gstart.sum())
        if count:
            rid = np.cumsum(gstart)[gap] - 1
            lens = np.bincount(rid, weights=du[gap].astype(np.float64))
            longest = int(lens.max())
            total = int(du[gap].sum())
    for v in by_cause.values():
        v["total_s"] = v.pop("_ms") / 1000.0
    breaks = [
        {"start_s": s, "end_s": e, "duration_s": e - s, "cause": c}
        for s, e, c in sorted(data.breaks, key=lambda b: b[0])
    ]
    return {
        "count": count,
        "total_s": total / 1000.0,
        "longest_s": longest / 1000.0,
        "by_cause": dict(sorted(by_cause.items())),
        "breaks": breaks,
    }


def _suspected_deep(data: NightData, tl: Timeline, contig: np.ndarray) -> list[dict[str, Any]]:
    """Invalid runs starting right after a falling SpO2 below 80 % (for review)."""
    u = tl.usable
    n = u.size
    if n < 2:
        return []
    starts = np.flatnonzero(~u[1:] & u[:-1] & contig[:-1]) + 1
    if starts.size == 0:
        return []
    prev = starts - 1
    low = data.spo2[prev] < DEEP_DESAT_LEVEL
    starts, prev = starts[low], prev[low]
    if starts.size == 0:
        return []
    uidx = np.flatnonzero(u)
    ut = tl.t_ms[uidx]
    us = data.spo2[uidx]
    fall_ms = to_ms(DEEP_DESAT_FALL_WINDOW_S)
    # end of each invalid run: index of the next usable sample (or n)
    pos_next = np.searchsorted(uidx, starts, side="left")
    out: list[dict[str, Any]] = []
    for s, p, pn in zip(starts.tolist(), prev.tolist(), pos_next.tolist()):
        k = int(np.searchsorted(uidx, p))  # position of p among usable samples
        lo = int(np.searchsorted(ut, tl.t_ms[p] - fall_ms, side="left"))
        if k <= lo or not (data.spo2[p] < us[lo:k].max()):
            continue  # not falling
        last = (uidx[pn] - 1) if pn < uidx.size else n - 1
        end_ms = int(tl.hold_end_ms[last])
        out.append(
            {
                "start_s": tl.t_ms[s] / 1000.0,
                "end_s": end_ms / 1000.0,
                "duration_s": (end_ms - int(tl.t_ms[s])) / 1000.0,
                "last_valid_spo2": float(data.spo2[p]),
                "n_invalid_samples": int(last - s + 1),
            }
        )
    return out


def _valid_below_50(data: NightData, tl: Timeline, contig: np.ndarray) -> list[dict[str, Any]]:
    """Runs of usable samples below 50 %: counted as below 90 %, listed for review."""
    with np.errstate(invalid="ignore"):
        low = tl.usable & (data.spo2 < SPO2_MIN_PCT)
    idx = np.flatnonzero(low)
    out: list[dict[str, Any]] = []
    if idx.size == 0:
        return out
    # a new run starts where the previous sample is not low or its hold does not reach this one
    new = np.ones(idx.size, dtype=bool)
    new[1:] = ~((idx[1:] == idx[:-1] + 1) & contig[idx[:-1]])
    starts = np.flatnonzero(new)
    ends = np.append(starts[1:], idx.size) - 1
    for a, b in zip(starts.tolist(), ends.tolist()):
        first, last = int(idx[a]), int(idx[b])
        end_ms = int(tl.hold_end_ms[last])
        out.append({"start_s": int(tl.t_ms[first]) / 1000.0, "end_s": end_ms / 1000.0,
                    "duration_s": (end_ms - int(tl.t_ms[first])) / 1000.0,
                    "min_spo2": float(data.spo2[idx[a:b + 1]].min()), "n_samples": b - a + 1})
    return out


def _flag_counts(data: NightData, tl: Timeline) -> dict[str, Any] | None:
    if data.flags is None:
        return None
    out: dict[str, Any] = {}
    for name, flag in (
        ("questionable", Flag.QUESTIONABLE),
        ("weak_signal", Flag.WEAK_SIGNAL),
        ("from_storage", Flag.FROM_STORAGE),
        ("provisional_estimate", Flag.PROVISIONAL_ESTIMATE),
        ("deep_desaturation", Flag.DEEP_DESATURATION),
        ("backfill_overlap", Flag.BACKFILL_OVERLAP),
        ("backfill_off_grid", Flag.BACKFILL_OFF_GRID),
        ("low_battery", Flag.LOW_BATTERY),
    ):
        has = (data.flags & int(flag)) != 0
        out[name] = {
            "samples": int(has.sum()),
            "usable_samples": int((has & tl.usable).sum()),
            "analysed_s": int(tl.hold_ms[has & tl.usable].sum()) / 1000.0,
        }
    return out


# -------------------------------------------------------------------- report


def night_report(data: NightData, config: AnalysisConfig = AnalysisConfig()) -> dict[str, Any]:
    """The final, vectorised night report (JSON-ready dict with stable keys)."""
    tl = timeline(data, config)
    n = tl.t_ms.size
    thr = config.threshold
    u = tl.usable
    spo2 = data.spo2
    # the usable samples, gathered once: every SpO2 figure below is a sum over them
    uidx = np.flatnonzero(u)
    us = spo2[uidx]
    hu = tl.hold_ms[uidx]
    w = hu.astype(np.float64)
    key_u = _tenths(us)
    per_tenth = np.bincount(key_u, weights=w)  # held ms at each 0.1 % (integer sums: exact)
    on_grid = bool(np.array_equal(key_u / 10.0, us))  # every usable value is a whole tenth (all devices)
    below_ms = _held_below_grid(per_tenth) if on_grid else _held_below(us, hu)
    tu, endu = tl.t_ms[uidx], tl.hold_end_ms[uidx]
    linked = (uidx[1:] == uidx[:-1] + 1) & (endu[:-1] == tu[1:])  # usable k+1 follows k with no gap
    analysed = int(hu.sum())
    num = below_ms[90.0]
    num_incl = below_ms[_INCLUSIVE_90]
    recording = int(tl.t_ms[-1] - tl.t_ms[0]) if n else 0
    contig = tl.contig

    t90_pct = pct(num, analysed)
    primary_exceeds = exceeds(num, analysed, thr) if analysed > 0 else None
    variants: list[str] = []
    if primary_exceeds is not None:
        if exceeds(num_incl, analysed, thr) != primary_exceeds:
            variants.append("inclusive_le90")
        if recording > 0 and exceeds(num, recording, thr) != primary_exceeds:
            variants.append("pct_of_recording")
        if data.flags is not None:
            # PLX "early estimate" / "signal analysis ongoing" readings count (primary rule); the
            # alternative leaves them out of numerator and denominator.
            prov = (data.flags & int(Flag.PROVISIONAL_ESTIMATE)) != 0
            if prov.any():
                keep = np.where(prov, 0, np.where(u, tl.hold_ms, 0))
                den_alt = int(keep.sum())
                with np.errstate(invalid="ignore"):
                    num_alt = int(keep[spo2 < 90.0].sum())
                if den_alt > 0 and exceeds(num_alt, den_alt, thr) != primary_exceeds:
                    variants.append("excluding_provisional_estimates")
    borderline = bool(variants)

    invalid_reasons: list[str] = []
    min_h = exact(config.min_analysed_h)
    if analysed * min_h.denominator < min_h.numerator * MS_PER_H:
        invalid_reasons.append("analysed_time_below_minimum")
    min_pct = exact(config.min_analysed_pct)
    if recording <= 0 or analysed * 100 * min_pct.denominator < min_pct.numerator * recording:
        invalid_reasons.append("analysed_pct_below_minimum")
    night_valid = not invalid_reasons
    meets = (not primary_exceeds) if (night_valid and primary_exceeds is not None) else None
    decision = "invalid" if meets is None else ("pass" if meets else "fail")

    # secondary SpO2 metrics
    below: dict[str, Any] = {}
    for lvl in (88, 85, 80):
        ms = below_ms[float(lvl)]
        below[f"t{lvl}_s"] = ms / 1000.0
        below[f"t{lvl}_pct"] = pct(ms, analysed)
    run88 = _longest_linked_run_ms(us <= LONGEST_RUN_LEVEL, hu, linked)
    nadir = float(us.min()) if us.size else None
    mean = _weighted_mean(us, hu, per_tenth, analysed, on_grid)
    median = _weighted_median(per_tenth)
    held = hu > 0
    if held.all():
        sustained = _sustained_nadir(key_u, hu, linked, to_ms(SUSTAINED_NADIR_MIN_S), per_tenth)
    else:  # duplicate timestamps or a break at a sample: those hold nothing and end a stretch
        e = uidx[held]
        sustained = _sustained_nadir(key_u[held], hu[held], (e[1:] == e[:-1] + 1) & contig[e[:-1]],
                                     to_ms(SUSTAINED_NADIR_MIN_S), per_tenth)

    hist = []
    for k, (lo, hi) in enumerate(HISTOGRAM_BANDS):
        last = k == len(HISTOGRAM_BANDS) - 1
        ms = below_ms[_next_up(hi) if last else hi] - below_ms[lo]
        label = f"{lo:g}-{hi:g}" if last else f"{lo:g}-<{hi:g}"
        hist.append({"band": label, "lo": lo, "hi": hi, "s": ms / 1000.0, "pct": pct(ms, analysed)})

    pu = pulse_usable_array(data.pulse, data.pulse_valid)
    pv = data.pulse[pu]

    # ODI
    events = odi_mod.detect_usable(uidx, tu, endu, key_u, (3.0, 4.0), config.odi, linked=linked)

    suspected = _suspected_deep(data, tl, contig)
    below50 = _valid_below_50(data, tl, contig)
    review: list[str] = []
    if borderline and night_valid:
        review.append("borderline_t90")
    if suspected or below50:
        review.append("suspected_deep_desaturation")

    return {
        "schema": REPORT_SCHEMA,
        "definitions": {
            "t90": DEFINITION_NAME,
            "below_90": "spo2 < 90 (strict); variant spo2 <= 90 reported",
            "time_weighting": "zero-order hold, capped by max_hold_s and break starts; last sample holds 0 s",
            "denominator": "analysed time = held time of usable samples",
            "usable_sample": "valid flag and 0 < spo2 <= 100 (0/NaN are dropouts)",
            "below_50": "a device-valid spo2 below 50 counts as below 90 in numerator and denominator; reviewed",
            "plx_provisional": ("PLX early estimate / signal analysis ongoing readings count (flagged questionable);"
                                " borderline when leaving them out would reverse the decision"),
            "time_resolution_s": 0.001,
            "max_hold_s": config.max_hold_s,
            "threshold_pct": config.threshold_pct,
            "pass_rule": "t90_pct <= threshold_pct (exact decimal comparison)",
            "min_analysed_h": config.min_analysed_h,
            "min_analysed_pct": config.min_analysed_pct,
            "sustained_nadir_min_s": SUSTAINED_NADIR_MIN_S,
            "mean_median": "time-weighted over analysed time; median and sustained nadir at 0.1 % resolution",
            "pulse_stats": "plain statistics of usable pulse samples (20..250 bpm)",
        },
        "n_samples": int(n),
        "n_usable_samples": int(u.sum()),
        "start_s": tl.t_ms[0] / 1000.0 if n else None,
        "end_s": tl.t_ms[-1] / 1000.0 if n else None,
        "recording_s": recording / 1000.0,
        "analysed_s": analysed / 1000.0,
        "analysed_pct": pct(analysed, recording),
        "t90_s": num / 1000.0,
        "t90_pct": t90_pct,
        "t90_pct_of_recording": pct(num, recording),
        "t90_s_inclusive": num_incl / 1000.0,
        "t90_pct_inclusive": pct(num_incl, analysed),
        "borderline": borderline,
        "borderline_variants": variants,
        "night_valid": night_valid,
        "night_invalid_reasons": invalid_reasons,
        "meets_t90_criterion": meets,
        "decision": decision,
        "needs_review": bool(review),
        "review_reasons": review,
        "odi3_per_h": odi_mod.per_hour(len(events[3.0]), analysed),
        "odi4_per_h": odi_mod.per_hour(len(events[4.0]), analysed),
        "odi3_events": len(events[3.0]),
        "odi4_events": len(events[4.0]),
        "odi_algorithm": odi_mod.describe(config.odi),
        "nadir_spo2": nadir,
        "sustained_nadir_spo2": sustained,
        "mean_spo2": mean,
        "median_spo2": median,
        **below,
        "longest_run_le88_s": run88 / 1000.0,
        "pulse_min": float(pv.min()) if pv.size else None,
        "pulse_mean": float(pv.mean()) if pv.size else None,
        "pulse_max": float(pv.max()) if pv.size else None,
        "spo2_histogram": hist,
        "gaps": _gaps(tl, data),
        "suspected_deep_desaturation": suspected,
        "valid_below_50": below50,
        "flag_counts": _flag_counts(data, tl),
    }
