"""Fitting records from device memory into a gap: pure (readings in, rows and a summary out).

Why a module of its own: where a stored record lands decides T90 as much as a live
sample does, and it must be the same in the live figures, the final report and any
re-run.  The rules:

* A record's device time (wall clock, no zone) maps to host UTC through the clock
  offset measured when the device reconnected (host time minus the device's Current
  Time).  The device measures on the same ticks its live readings came on, so the
  mapped time is then put on the live grid: the tick nearest to it, counted from the
  last live sample before the gap.  A record more than ``tolerance_ms`` off that grid
  (a drifting or stepped device clock) keeps its mapped time and is flagged
  BACKFILL_OFF_GRID; it still counts.
* A record that fits (after the last live sample, before the reconnect, not on a tick
  another record already took) is stored as the device sent it, flagged FROM_STORAGE.
* A record that does not fit (on time the live samples or another record already
  cover, or later than the reconnect) is kept too, flagged BACKFILL_OVERLAP: stored,
  never counted (the analysis reads it as no sample at all), so nothing is doubled.
* A record already stored by an earlier back-fill (same tick) is not stored again;
  one mapped before the session started belongs to no subject here and is counted,
  not stored; one without a usable device time cannot be placed and is kept in the
  summary.
* A record covers one grid step, or ``record_ms`` when the device stores coarser
  records than it sends live (the O2Ring's 4 s night file on the 1 s live grid).
* What the records cover no longer breaks the hold; the parts of the gap they leave
  uncovered (before the first, after the last) stay breaks with the gap's cause.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from drivers.protocols.common import Flag, OximeterReading
from drivers.protocols.cts import device_epoch

_STORAGE = int(Flag.FROM_STORAGE)
_OVERLAP = int(Flag.BACKFILL_OVERLAP)
_OFF_GRID = int(Flag.BACKFILL_OFF_GRID)


@dataclass(frozen=True)
class FitInput:
    """Everything a fit depends on (recorded in the summary so a back-fill can be re-checked)."""

    session_id: int
    gap_start_ms: int
    anchor_ms: int | None  # the last live sample before the gap (the grid's origin), None if there is none
    reconnect_ms: int  # host time of the reconnect: live samples follow from here
    session_start_ms: int
    clock_offset_ms: int  # host UTC minus device wall time (as if UTC)
    interval_ms: int  # the device's reading interval (the live grid's step)
    tolerance_ms: int  # how far off the grid a mapped record may be and still be put on it
    record_ms: int | None = None  # how long one record holds when it is longer than the grid step (O2Ring: 4 s)

    @property
    def span_ms(self) -> int:
        return self.interval_ms if self.record_ms is None else self.record_ms


@dataclass
class Fit:
    rows: list[tuple[Any, ...]] = field(default_factory=list)  # writer column order, for origin device_memory
    fitted_ms: list[int] = field(default_factory=list)
    covered_ms: list[int] = field(default_factory=list)  # fitted + already stored ticks of this gap
    counts: dict[str, int] = field(default_factory=dict)
    unplaced: list[dict[str, Any]] = field(default_factory=list)
    residual_breaks: list[tuple[int, int | None]] = field(default_factory=list)
    status: str = "no_records"


def _row(session_id: int, t_ms: int, r: OximeterReading) -> tuple[Any, ...]:
    return (session_id, t_ms, r.device_time, r.spo2_pct, r.pulse_bpm, r.pai_pct, int(r.valid), int(r.pulse_valid),
            int(r.flags), r.status_raw, r.counter)


def fit_records(records: list[OximeterReading], inp: FitInput, already_stored_ms: set[int]) -> Fit:
    """Place every record (see the module docstring); ``already_stored_ms``: ticks earlier back-fills stored."""
    fit = Fit(counts={"received": len(records), "fitted": 0, "overlap": 0, "off_grid": 0, "already_stored": 0,
                      "outside_session": 0, "unplaced": 0})
    taken: set[int] = set()
    placed: list[tuple[int, int, OximeterReading]] = []
    for r in records:
        if r.device_time is None:
            fit.counts["unplaced"] += 1
            fit.unplaced.append({"spo2_pct": r.spo2_pct, "pulse_bpm": r.pulse_bpm, "flags": int(r.flags)})
            continue
        raw = int(round(device_epoch(r.device_time) * 1000)) + inp.clock_offset_ms
        extra = 0
        t = raw
        if inp.anchor_ms is not None:
            k = round((raw - inp.anchor_ms) / inp.interval_ms)
            tick = inp.anchor_ms + k * inp.interval_ms
            if abs(raw - tick) <= inp.tolerance_ms:
                t = tick
            else:
                extra |= _OFF_GRID
        placed.append((t, extra, r))
    placed.sort(key=lambda p: p[0])
    lower = inp.anchor_ms if inp.anchor_ms is not None else inp.gap_start_ms - 1
    for t, extra, r in placed:
        if t < inp.session_start_ms:
            fit.counts["outside_session"] += 1
            continue
        if t in already_stored_ms:
            fit.counts["already_stored"] += 1
            if lower < t <= inp.reconnect_ms:
                fit.covered_ms.append(t)
            continue
        if not (lower < t <= inp.reconnect_ms) or t in taken:
            extra |= _OVERLAP
            fit.counts["overlap"] += 1
        else:
            taken.add(t)
            fit.fitted_ms.append(t)
            fit.covered_ms.append(t)
            fit.counts["fitted"] += 1
        if extra & _OFF_GRID:
            fit.counts["off_grid"] += 1
        fit.rows.append(_row(inp.session_id, t, dataclasses.replace(r, flags=int(r.flags) | _STORAGE | extra)))
    if fit.covered_ms:
        first, last = min(fit.covered_ms), max(fit.covered_ms) + inp.span_ms
        if inp.anchor_ms is None or first > inp.anchor_ms + inp.span_ms + inp.tolerance_ms:
            fit.residual_breaks.append((inp.gap_start_ms, first))
        if last + inp.tolerance_ms < inp.reconnect_ms:
            fit.residual_breaks.append((last, None))
        fit.status = "partial" if fit.residual_breaks else "backfilled"
    return fit


def summary(fit: Fit, inp: FitInput) -> dict[str, Any]:
    """What the back-fill row and its audit entry keep: the counts, the mapping and the coverage."""
    return {
        "status": fit.status,
        **fit.counts,
        "clock_offset_ms": inp.clock_offset_ms,
        "interval_ms": inp.interval_ms,
        "tolerance_ms": inp.tolerance_ms,
        "anchor_ms": inp.anchor_ms,
        "reconnect_ms": inp.reconnect_ms,
        "covered_start_ms": min(fit.covered_ms) if fit.covered_ms else None,
        "record_ms": inp.span_ms,
        "covered_end_ms": max(fit.covered_ms) + inp.span_ms if fit.covered_ms else None,
        "residual_breaks": [list(b) for b in fit.residual_breaks],
        "unplaced_records": fit.unplaced,
    }
