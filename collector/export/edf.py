"""The night as EDF+, for EDFbrowser, pyEDFlib and edfio: one continuous and one discontinuous file.

Two files per night, the same samples on the same grid:

* ``night_<s>.edf`` (EDF+C, 30-second records): every EDF reader opens it, pyEDFlib
  included (pyEDFlib refuses EDF+D).  A second with no valid value holds the digital
  minimum (-1, i.e. -0.1 in physical units; the header's prefiltering field and the
  first annotation say so), and every gap is an annotation with its duration, which
  EDFbrowser draws as a band over the missing span.
* ``night_<s>.discontinuous.edf`` (EDF+D, 1-second records): a record exists only for a
  second that holds a valid value, each record carrying its own start in its
  time-keeping annotation, so gaps and finger-out periods are absent from the file,
  never drawn as values.  Inside a written second a signal whose value is invalid (the
  other one is valid) holds the digital minimum.

Both: EDF start times are UTC, the file starts at the first sample's whole UTC second.
Sample ``i`` goes into cell ``round((t_i - start) * fs)`` (``fs`` = the stored sample
rate, 1 Hz for every oximeter we store); when host-time jitter puts two samples into
one cell the later one moves to the next cell (``c_i = max(r_i, c_{i-1} + 1)``), so
every sample keeps its own cell and the order is kept; the largest such shift is in
the first annotation.  SpO2 and pulse hold the *valid* values at 0.1 resolution;
invalid values, flags and exact host times are in ``samples_<s>.csv``.  Gaps and events
are annotations (``gap: <cause>`` with duration, ``event: <kind>``, ``note: <text>``).

Annotation texts are UTF-8, as EDF+ (section 2.2.2) has them: a technician's Chinese note
is written byte for byte as stored.  EDFlib, which pyEDFlib and other viewers use, keeps at
most :data:`ANNOTATION_TEXT_MAX_BYTES` bytes of one annotation and cuts the rest in the
middle of a character, so a longer note is written as several annotations at the same
onset (``note 1/2: ...``, ``note 2/2: ...``), cut between characters, whose texts joined
give the note back exactly.  Header fields stay printable ASCII, as the standard asks.

The bytes are written here, field by field as the EDF/EDF+ specification lays them out,
rather than through edfio: edfio writes EDF+C only, and its own duration check rejects
some long nights (``Inconsistent signal durations``: float rounding of the annotation
signal's rate).  Nothing here depends on the edfio version; edfio and pyEDFlib read
the files back in the tests and ``collector verify`` reads them with edfio.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np

SPO2_LABEL = "SpO2"
PULSE_LABEL = "Pulse"
RECORD_S = 30  # EDF+C: long records keep the per-record annotation slot small
RECORD_S_D = 1  # EDF+D: one second per record, so a missing second is a missing record
CONTINUOUS, DISCONTINUOUS = "EDF+C", "EDF+D"
SPO2_RANGE = ((-0.1, 100.0), (-1, 1000))   # physical, digital: 0.1 % per step
PULSE_RANGE = ((-0.1, 300.0), (-1, 3000))  # 0.1 bpm per step
ANNOTATIONS_LABEL = "EDF Annotations"
#: EDFlib's limit on one annotation's text (longer texts are cut by pyEDFlib, mid-character).
ANNOTATION_TEXT_MAX_BYTES = 512
_MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")


@dataclass(frozen=True)
class Grid:
    fs_hz: int
    start_ms: int
    cells: np.ndarray  # cell index per sample
    n_cells: int
    max_shift_s: float

    def as_dict(self) -> dict[str, Any]:
        return {"fs_hz": self.fs_hz, "start_ms": self.start_ms, "n_cells": self.n_cells,
                "max_shift_s": self.max_shift_s, "record_s": RECORD_S, "discontinuous_record_s": RECORD_S_D}


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


def _digital(values: np.ndarray, ok: np.ndarray, g: Grid, rng: tuple[tuple[float, float], tuple[int, int]]) -> np.ndarray:
    """Digital samples on the whole grid (digital minimum where there is no valid value)."""
    (pmin, pmax), (dmin, dmax) = rng
    out = np.full(g.n_cells, dmin, dtype=np.int16)
    with np.errstate(invalid="ignore"):
        use = ok & np.isfinite(values)
    phys = np.clip(values[use], 0.0, pmax)
    out[g.cells[use]] = np.rint((phys - pmin) * (dmax - dmin) / (pmax - pmin) + dmin).astype(np.int16)
    return out


def _field(text: str) -> str:
    """EDF+ header subfields may not contain spaces; keep printable ASCII."""
    s = "".join(ch if 33 <= ord(ch) < 127 else "_" for ch in (text or "X"))
    return s or "X"


def _ascii(text: str, width: int) -> bytes:
    b = text.encode("ascii", "replace")
    if len(b) > width:
        raise ValueError(f"EDF header field {text!r} is longer than {width} characters")
    return b.ljust(width)


def _num(v: float) -> str:
    """Shortest text of a number that fits an 8-character header field."""
    return format(v, "g") if len(format(v, "g")) <= 8 else format(v, ".6g")


def _onset(s: float) -> str:
    text = f"{s:.3f}".rstrip("0").rstrip(".")
    return ("+" if not text.startswith("-") else "") + text


def _tal(onset: float, duration: float | None, text: str) -> bytes:
    """One time-stamped annotation list (EDF+ section 2.2.2): +onset[\\x15duration]\\x14text\\x14\\x00."""
    head = _onset(onset) + ("" if duration is None else "\x15" + _onset(duration).lstrip("+"))
    return (head + "\x14" + _tal_text(text) + "\x14\x00").encode("utf-8")


def _tal_text(text: str) -> str:
    """Annotation text as UTF-8 allows it, without control characters: 0x14, 0x15 and 0x00 separate
    the parts of a TAL (every byte of a multi-byte UTF-8 character is 0x80 or above, so none clashes)."""
    return "".join("_" if ord(ch) < 32 or ord(ch) == 127 else ch for ch in text)


def note_texts(text: str, *, limit: int = ANNOTATION_TEXT_MAX_BYTES) -> list[str]:
    """The annotation texts of one night note: ``note: <text>``, or parts ``note k/n: <piece>`` of at most
    ``limit`` UTF-8 bytes each, cut between characters, when the whole would be longer."""
    text = _tal_text(text)
    whole = f"note: {text}"
    if len(whole.encode("utf-8")) <= limit:
        return [whole]
    n = 2
    while True:
        budget = limit - len(f"note {n}/{n}: ".encode("utf-8"))
        pieces: list[str] = []
        piece: list[str] = []
        size = 0
        for ch in text:
            b = len(ch.encode("utf-8"))
            if size + b > budget:
                pieces.append("".join(piece))
                piece, size = [], 0
            piece.append(ch)
            size += b
        pieces.append("".join(piece))
        if len(pieces) <= n:
            return [f"note {k}/{len(pieces)}: {p}" for k, p in enumerate(pieces, 1)]
        n = len(pieces)


def _place(records: np.ndarray, notes: list[tuple[float, float | None, str]],
           record_s: int) -> tuple[list[list[bytes]], int]:
    """Annotations into records (their own second or the next written record with room).

    Every record holds its time-keeping annotation and up to one slot's worth of others;
    the slot grows only when the annotations would not otherwise fit before the end."""
    tals = sorted(((o, _tal(o, d, t)) for o, d, t in notes), key=lambda x: x[0])
    keep = max((len(_tal(float(r * record_s), None, "")) for r in records[-1:]), default=8)
    slot = max([len(b) for _, b in tals], default=0)
    while True:
        out: list[list[bytes]] = [[] for _ in records]
        free = [slot] * len(records)
        k = 0
        ok = True
        for onset, b in tals:
            k = max(k, int(np.searchsorted(records, int(onset // record_s), side="right")) - 1, 0)
            while k < len(records) and free[k] < len(b):
                k += 1
            if k == len(records):
                ok = False
                break
            out[k].append(b)
            free[k] -= len(b)
        if ok:
            return out, keep + slot
        slot *= 2


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
    night_notes: list[dict[str, Any]] | None = None,
    layout: str = CONTINUOUS,
) -> tuple[bytes, Grid]:
    """EDF+ bytes of one night (``layout`` EDF+C or EDF+D) and the grid used (see the module docstring)."""
    record_s = RECORD_S if layout == CONTINUOUS else RECORD_S_D
    g = grid(t_ms)
    fs = g.fs_hz
    per_record = fs * record_s
    sig = [_digital(spo2, valid, g, SPO2_RANGE), _digital(pulse, pulse_valid, g, PULSE_RANGE)]
    if layout == CONTINUOUS:
        records = np.arange(g.n_cells // per_record, dtype=np.int64)
    else:
        has = (sig[0] != SPO2_RANGE[1][0]) | (sig[1] != PULSE_RANGE[1][0])
        records = np.flatnonzero(has.reshape(-1, per_record).any(axis=1)).astype(np.int64)
    if records.size == 0:
        records = np.zeros(1, dtype=np.int64)  # EDF needs one record: a night without any valid value
    end_s = float(records[-1] + 1) * record_s

    def onset(ms: int) -> float:
        return min(max((ms - g.start_ms) / 1000.0, 0.0), end_s)

    notes: list[tuple[float, float | None, str]] = [
        (0.0, None, f"UTC {fs}Hz, no value=dig.min{'' if layout == CONTINUOUS else ' or no record'}, shift<={g.max_shift_s:g}s")]
    for gap in gaps:
        s = onset(gap["start_utc_ms"])
        d = None if gap["end_utc_ms"] is None else max(0.0, onset(gap["end_utc_ms"]) - s)
        notes.append((s, d, f"gap: {gap['cause']}"))
    for ev in events:
        notes.append((onset(ev["t_utc_ms"]), None, f"event: {ev['kind']}"))
    for note in night_notes or ():  # UTF-8 as written; a long one in parts of at most 512 bytes
        notes.extend((onset(note["t_utc_ms"]), None, part) for part in note_texts(note["text"]))
    placed, ann_bytes = _place(records, notes, record_s)
    ann_spr = -(-ann_bytes // 2)

    start = datetime.fromtimestamp(g.start_ms / 1000, tz=timezone.utc)
    labels = [(SPO2_LABEL, "pulse oximeter", "%", SPO2_RANGE, "invalid=dig.min"),
              (PULSE_LABEL, "pulse oximeter", "bpm", PULSE_RANGE, "invalid=dig.min")]
    ns = len(labels) + 1
    head = io.BytesIO()
    head.write(_ascii("0", 8))
    head.write(_ascii(f"{_field(pseudonym)} X X X", 80))
    startdate = f"{start.day:02d}-{_MONTHS[start.month - 1]}-{start.year}"
    head.write(_ascii(f"Startdate {startdate} session_{session_id} X {_field(equipment)}"[:80], 80))
    head.write(_ascii(start.strftime("%d.%m.%y"), 8))
    head.write(_ascii(start.strftime("%H.%M.%S"), 8))
    head.write(_ascii(str(256 * (ns + 1)), 8))
    head.write(_ascii(layout, 44))
    head.write(_ascii(str(int(records.size)), 8))
    head.write(_ascii(str(record_s), 8))
    head.write(_ascii(str(ns), 4))
    cols: list[list[str]] = [
        [lab for lab, *_ in labels] + [ANNOTATIONS_LABEL],
        [tr for _, tr, *_ in labels] + [""],
        [dim for _, _, dim, *_ in labels] + [""],
        [_num(r[0][0]) for *_, r, _ in labels] + ["-1"],
        [_num(r[0][1]) for *_, r, _ in labels] + ["1"],
        [str(r[1][0]) for *_, r, _ in labels] + ["-32768"],
        [str(r[1][1]) for *_, r, _ in labels] + ["32767"],
        [pf for *_, pf in labels] + [""],
        [str(per_record)] * len(labels) + [str(ann_spr)],
        [""] * ns,
    ]
    for values, width in zip(cols, (16, 80, 8, 8, 8, 8, 8, 80, 8, 32)):
        for v in values:
            head.write(_ascii(v, width))

    return head.getvalue() + _body(sig, records, per_record, record_s, placed, ann_spr), g


def _body(sig: list[np.ndarray], records: np.ndarray, per_record: int, record_s: int, placed: list[list[bytes]],
          ann_spr: int) -> bytes:
    """All data records as one array (SpO2 cells, pulse cells, annotation bytes per row), written at once.

    A 12 h EDF+D night has 40 000 one-second records: a Python write per record cost more than the rest."""
    cells = [s.reshape(-1, per_record).astype("<i2")[records].view(np.uint8) for s in sig]
    # the time-keeping TAL of a whole second (:func:`_tal` of an integer onset is "+N"), then the record's others;
    # numpy's fixed-width bytes pad with NUL exactly as the annotation signal must be padded
    ann = [b"+%d\x14\x14\x00" % start for start in (records * record_s).tolist()]
    for k, notes in enumerate(placed):
        if notes:
            ann[k] += b"".join(notes)
    ann_block = np.array(ann, dtype=f"S{ann_spr * 2}").view(np.uint8).reshape(len(ann), ann_spr * 2)
    return np.concatenate([*cells, ann_block], axis=1).tobytes()


def read_signals(data: bytes) -> dict[str, Any]:
    """Parse EDF bytes (edfio): labels, sample rates, physical values, annotations, record starts."""
    from edfio import read_edf

    e = read_edf(io.BytesIO(data))
    out: dict[str, Any] = {"annotations": [(a.onset, a.duration, a.text) for a in e.annotations],
                           "record_starts_s": record_starts(data)}
    for s in e.signals:
        out[s.label] = {"fs": s.sampling_frequency, "data": np.asarray(s.data, dtype=np.float64),
                        "digital": np.asarray(s.digital)}
    return out


def record_starts(data: bytes) -> np.ndarray:
    """Each data record's start (s after the file start) from its time-keeping annotation.

    EDF+D keeps the time of a record only there; neither edfio nor pyEDFlib returns it."""
    ns = int(data[252:256])
    n_records = int(data[236:244])
    labels = [data[256 + 16 * i: 256 + 16 * (i + 1)].decode("ascii").strip() for i in range(ns)]
    spr_at = 256 + ns * (16 + 80 + 8 * 5 + 80)
    spr = [int(data[spr_at + 8 * i: spr_at + 8 * (i + 1)]) for i in range(ns)]
    ann = labels.index(ANNOTATIONS_LABEL)
    rec_bytes = 2 * sum(spr)
    before = 2 * sum(spr[:ann])
    base = 256 * (ns + 1)
    out = np.empty(n_records, dtype=np.float64)
    for k in range(n_records):
        at = base + k * rec_bytes + before
        chunk = data[at: at + 2 * spr[ann]]
        out[k] = float(chunk[: chunk.index(b"\x14")].decode("ascii"))
    return out
