"""The night as EDF+ (edfio), for EDFbrowser and pyEDFlib.

Representation (documented in the bundle README and in an annotation):

* EDF+C with a regular grid of ``fs`` cells per second (``fs`` = the stored sample
  rate, 1 Hz for every oximeter we store), 30-second data records (the end padded
  with "no value"), starting at the first sample's whole UTC second.  EDF start
  times are UTC.
* Sample ``i`` goes into cell ``round((t_i - start) * fs)``; when host-time jitter
  puts two samples into one cell the later one moves to the next cell
  (``c_i = max(r_i, c_{i-1} + 1)``), so every sample keeps its own cell and the order
  is kept.  The largest such shift is recorded in an annotation.
* The SpO2 and pulse signals hold the *valid* values at 0.1 resolution; a cell with
  no sample, or a sample whose value is invalid or missing, holds the digital
  minimum (-1, i.e. -0.1 in physical units).  Invalid values, flags and exact host
  times are in ``samples_<session>.csv``.
* Gaps and events are EDF+ annotations (``gap: <cause>`` with duration, ``event: <kind>``).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np

SPO2_LABEL = "SpO2"
PULSE_LABEL = "Pulse"
RECORD_S = 30  # long records keep the per-record annotation slot small
SPO2_RANGE = ((-0.1, 100.0), (-1, 1000))   # physical, digital: 0.1 % per step
PULSE_RANGE = ((-0.1, 300.0), (-1, 3000))  # 0.1 bpm per step


@dataclass(frozen=True)
class Grid:
    fs_hz: int
    start_ms: int
    cells: np.ndarray  # cell index per sample
    n_cells: int
    max_shift_s: float

    def as_dict(self) -> dict[str, Any]:
        return {"fs_hz": self.fs_hz, "start_ms": self.start_ms, "n_cells": self.n_cells,
                "max_shift_s": self.max_shift_s, "record_s": RECORD_S}


def sample_rate(t_ms: np.ndarray) -> int:
    """Whole samples per second from the median spacing (1 for ~1 Hz oximeters)."""
    if t_ms.size < 2:
        return 1
    d = np.diff(t_ms)
    d = d[d > 0]
    if d.size == 0:
        return 1
    return int(max(1, round(1000.0 / float(np.median(d)))))


def grid(t_ms: np.ndarray, fs: int | None = None) -> Grid:
    t_ms = np.asarray(t_ms, dtype=np.int64)
    fs = fs or sample_rate(t_ms)
    if t_ms.size == 0:
        return Grid(fs, 0, np.zeros(0, dtype=np.int64), fs * RECORD_S, 0.0)
    start = (int(t_ms[0]) // 1000) * 1000
    r = np.rint((t_ms - start) * fs / 1000.0).astype(np.int64)
    i = np.arange(r.size, dtype=np.int64)
    c = i + np.maximum.accumulate(r - i)  # c_i = max(r_i, c_{i-1} + 1)
    per_record = fs * RECORD_S
    n_cells = int(-(-(int(c[-1]) + 1) // per_record) * per_record)  # whole records
    return Grid(fs, start, c, n_cells, float((c - r).max()) / fs)


def _signal(values: np.ndarray, ok: np.ndarray, g: Grid, rng: tuple[tuple[float, float], tuple[int, int]]) -> np.ndarray:
    (pmin, pmax), _ = rng
    out = np.full(g.n_cells, pmin, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        use = ok & np.isfinite(values)
    out[g.cells[use]] = np.clip(values[use], 0.0, pmax)
    return out


def _field(text: str) -> str:
    """EDF+ header subfields may not contain spaces; keep printable ASCII."""
    s = "".join(ch if 33 <= ord(ch) < 127 else "_" for ch in (text or "X"))
    return s or "X"


def night_edf(
    *,
    t_ms: np.ndarray,
    spo2: np.ndarray,
    pulse: np.ndarray,
    valid: np.ndarray,
    pulse_valid: np.ndarray,
    gaps: list[dict[str, Any]],
    events: list[dict[str, Any]],
    pseudonym: str,
    equipment: str,
    session_id: int,
) -> tuple[bytes, Grid]:
    """EDF+ bytes of one night and the grid used (see the module docstring)."""
    from edfio import Edf, EdfAnnotation, EdfSignal, Patient, Recording

    g = grid(t_ms)
    start = datetime.fromtimestamp(g.start_ms / 1000, tz=timezone.utc)
    duration = g.n_cells / g.fs_hz
    sig = [
        EdfSignal(_signal(spo2, valid, g, SPO2_RANGE), g.fs_hz, label=SPO2_LABEL, physical_dimension="%",
                  transducer_type="pulse oximeter", prefiltering="invalid=digital minimum",
                  physical_range=SPO2_RANGE[0], digital_range=SPO2_RANGE[1]),
        EdfSignal(_signal(pulse, pulse_valid, g, PULSE_RANGE), g.fs_hz, label=PULSE_LABEL, physical_dimension="bpm",
                  transducer_type="pulse oximeter", prefiltering="invalid=digital minimum",
                  physical_range=PULSE_RANGE[0], digital_range=PULSE_RANGE[1]),
    ]

    def onset(ms: int) -> float:
        return min(max((ms - g.start_ms) / 1000.0, 0.0), duration)

    notes = [EdfAnnotation(0.0, None, f"UTC {g.fs_hz}Hz grid, no value=dig.min, shift<={g.max_shift_s:g}s")]
    for gap in gaps:
        s = onset(gap["start_utc_ms"])
        d = None if gap["end_utc_ms"] is None else max(0.0, onset(gap["end_utc_ms"]) - s)
        notes.append(EdfAnnotation(s, d, f"gap: {gap['cause']}"))
    for ev in events:
        notes.append(EdfAnnotation(onset(ev["t_utc_ms"]), None, f"event: {ev['kind']}"))
    edf = Edf(
        sig,
        patient=Patient(code=_field(pseudonym), sex="X", birthdate=None, name="X"),
        recording=Recording(startdate=start.date(), hospital_administration_code=f"session_{session_id}",
                            investigator_technician_code="X", equipment_code=_field(equipment)),
        starttime=start.time().replace(microsecond=0),
        data_record_duration=float(RECORD_S),
        annotations=notes,
    )
    buf = io.BytesIO()
    edf.write(buf)
    return buf.getvalue(), g


def read_signals(data: bytes) -> dict[str, Any]:
    """Parse EDF bytes (edfio): labels, sample rates, physical values, annotations."""
    from edfio import read_edf

    edf = read_edf(io.BytesIO(data))
    out: dict[str, Any] = {"annotations": [(a.onset, a.duration, a.text) for a in edf.annotations]}
    for s in edf.signals:
        out[s.label] = {"fs": s.sampling_frequency, "data": np.asarray(s.data, dtype=np.float64),
                        "digital": np.asarray(s.digital)}
    return out
