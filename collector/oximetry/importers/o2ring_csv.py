"""Wellue / Viatom O2Ring export (ViHealth app, O2 Insight): one line per 4 s reading.

Header ``Time,Oxygen Level,Pulse Rate,Motion`` (ViHealth) or ``Time,SpO2(%),Pulse
Rate(bpm),Motion,...`` (O2 Insight Pro); extra columns are ignored.  Times are the
ring's local clock with no zone, written in one of the spellings seen in
exports: ``22:20:56 Mar 06 2025``, ``10:20:56 PM Mar 06 2025``,
``10:20:56PM March 6, 2025`` or ``22:20:56 06/03/2025`` (day/month/year).
Invalid readings are ``--`` (or the out-of-range codes 255 for SpO2, 255/65535
for pulse); they stay in as missing samples, never as values: the ring writes
the same code for "no finger" and for SpO2 below its range (< 61 %).
"""

from __future__ import annotations

import math
import re
from datetime import datetime

import numpy as np

from collector.errors import InvalidInput

from . import ImportLimits, ParsedNight, bad, decode_text, local_iso, local_to_utc, naive_seconds, number, read_rows, require_increasing

SPO2_HEADERS = ("oxygen level", "spo2(%)", "spo2", "spo2 (%)")
PULSE_HEADERS = ("pulse rate", "pulse rate(bpm)", "pulse rate (bpm)", "pr(bpm)", "pulse")
SPO2_MISSING_CODES = (255.0,)
PULSE_MISSING_CODES = (255.0, 65535.0)
MONTHS = {m: i + 1 for i, m in enumerate(
    ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"))}

_NAMED = re.compile(
    r"^(\d{1,2}):(\d{2}):(\d{2})\s*([AaPp][Mm])?\s+([A-Za-z]{3,9})\.?\s+(\d{1,2}),?\s+(\d{4})$")
_NUMERIC = re.compile(r"^(\d{1,2}):(\d{2}):(\d{2})\s+(\d{1,2})/(\d{1,2})/(\d{4})$")


def parse_ring_time(text: str, where: str) -> datetime:
    """One export time (device local, no zone) -> naive datetime."""
    s = " ".join(text.split())
    m = _NAMED.match(s)
    try:
        if m:
            hh, mm, ss, ampm, mon, day, year = m.groups()
            month = MONTHS.get(mon[:3].lower())
            if month is None or (len(mon) > 3 and not _full_month(mon)):
                raise ValueError(mon)
            h = int(hh)
            if ampm:
                if not 1 <= h <= 12:
                    raise ValueError(hh)
                h = h % 12 + (12 if ampm.lower() == "pm" else 0)
            return datetime(int(year), month, int(day), h, int(mm), int(ss))
        m = _NUMERIC.match(s)
        if m:
            hh, mm, ss, day, mon, year = m.groups()
            return datetime(int(year), int(mon), int(day), int(hh), int(mm), int(ss))
    except ValueError:
        pass
    raise bad(where, f"Time {text.strip()!r} is not an O2Ring export time like '22:20:56 Mar 06 2025'")


def _full_month(name: str) -> bool:
    full = ("january", "february", "march", "april", "may", "june", "july", "august", "september",
            "october", "november", "december")
    return name.lower() in full or name.lower() == "sept"


def _value(text: str, where: str, name: str, codes: tuple[float, ...]) -> float:
    v = number(text, where, name)
    return math.nan if v in codes else v


def parse_o2ring_csv(raw: bytes, *, tz: str | None = None, utc_offset: str | None = None,
                     limits: ImportLimits | None = None) -> ParsedNight:
    """Parse an O2Ring CSV export (bytes); local times converted with ``tz``/``utc_offset``."""
    text = decode_text(raw, "the O2Ring csv file")
    first = next((ln for ln in text.splitlines() if ln.strip()), "")
    delim = ";" if first.count(";") > first.count(",") else ","
    rows = read_rows(text, delim, limits=limits)
    if not rows:
        raise InvalidInput("the O2Ring csv file is empty; expected a header Time,Oxygen Level,Pulse Rate,Motion")
    hdr_line, header = rows[0]
    names = [" ".join(c.split()).lower() for c in header]
    hdr_where = f"{hdr_line} (header)"
    if "time" not in names:
        raise bad(hdr_where, f"no Time column in {','.join(header)!r}; expected Time,Oxygen Level,Pulse Rate,Motion")
    isp = next((names.index(h) for h in SPO2_HEADERS if h in names), None)
    if isp is None:
        raise bad(hdr_where, f"no Oxygen Level (SpO2) column in {','.join(header)!r}; expected Time,Oxygen Level,Pulse Rate,Motion")
    it = names.index("time")
    ipu = next((names.index(h) for h in PULSE_HEADERS if h in names), None)
    local: list[float] = []
    spo2: list[float] = []
    pulse: list[float] = []
    where: list[str] = []
    need = max(it, isp, ipu if ipu is not None else 0) + 1
    for w, row in rows[1:]:
        if len(row) < need:
            raise bad(w, f"has {len(row)} fields; the header needs at least {need}")
        local.append(naive_seconds(parse_ring_time(row[it], w)))
        spo2.append(_value(row[isp], w, header[isp].strip(), SPO2_MISSING_CODES))
        pulse.append(_value(row[ipu], w, header[ipu].strip(), PULSE_MISSING_CODES) if ipu is not None else math.nan)
        where.append(w)
    la = np.array(local, dtype=np.float64)
    require_increasing(la, where)
    utc, tzinfo = local_to_utc(la, tz, utc_offset, "O2Ring")
    d = np.diff(la)
    source = {
        "format": "o2ring-csv",
        "columns": [c.strip() for c in header],
        "device_clock": tzinfo,
        "median_interval_s": float(np.median(d)),
        "missing_spo2_samples": int(np.isnan(np.array(spo2)).sum()),
    }
    return ParsedNight(utc, np.array(spo2), np.array(pulse), [local_iso(v) for v in la], source)
