"""Generic CSV night: ``time,spo2[,pulse]``.

``time`` is either UTC ISO-8601 with its zone written out (``2025-03-06T22:20:56Z``
or ``+00:00``; any explicit offset is converted) or seconds from the start of the
recording, in which case the caller gives the start as UTC (``--start``).  One
file uses one kind of time.  Empty fields and ``--`` mean "no value".
"""

from __future__ import annotations

import math
import re
from datetime import datetime, timezone

import numpy as np

from collector.errors import InvalidInput

from . import ImportLimits, ParsedNight, bad, decode_text, number, read_rows, require_increasing

COLUMNS = ("time", "spo2", "pulse")
_SECONDS_RE = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)$")


def _iso_utc(text: str, where: str) -> float:
    s = text.strip()
    try:
        dt = datetime.fromisoformat(s[:-1] + "+00:00" if s[-1:] in "Zz" and s else s)
    except ValueError:
        raise bad(where, f"time {s!r} is neither UTC ISO-8601 (2025-03-06T22:20:56Z) nor seconds from the start") from None
    if dt.tzinfo is None:
        raise bad(where, f"time {s!r} has no zone; the csv format takes UTC, written like {s}Z")
    return dt.astimezone(timezone.utc).timestamp()


def parse_csv_night(raw: bytes, *, start_utc: str | None = None, limits: ImportLimits | None = None) -> ParsedNight:
    """Parse a ``time,spo2[,pulse]`` file (bytes); raises InvalidInput naming the line."""
    text = decode_text(raw, "the csv file")
    rows = read_rows(text, limits=limits)
    if not rows:
        raise InvalidInput("the csv file is empty; it needs a header line time,spo2[,pulse] and one line per sample")
    hdr_where, header = rows[0]
    names = [c.strip().lower() for c in header]
    unknown = [c for c in names if c not in COLUMNS]
    if unknown or "time" not in names or "spo2" not in names or len(set(names)) != len(names):
        raise bad(f"{hdr_where} (header)",
                  f"columns {','.join(header)!r} are not time,spo2[,pulse] (each once, in any order)")
    it, isp = names.index("time"), names.index("spo2")
    ipu = names.index("pulse") if "pulse" in names else None
    start: float | None = None
    if start_utc is not None:
        start = _iso_utc(start_utc, "--start")
    t: list[float] = []
    spo2: list[float] = []
    pulse: list[float] = []
    where: list[str] = []
    mode: str | None = None
    for w, row in rows[1:]:
        if len(row) != len(names):
            raise bad(w, f"has {len(row)} fields but the header has {len(names)}")
        tt = row[it].strip()
        if not tt:
            raise bad(w, "time is empty; every line needs a time")
        kind = "seconds" if _SECONDS_RE.match(tt) else "iso"
        if mode is None:
            mode = kind
            if mode == "seconds" and start is None:
                raise InvalidInput(f"{w}: times are seconds from the start; give the start as UTC with --start 2025-03-06T22:20:56Z")
            if mode == "iso" and start is not None:
                raise InvalidInput("--start is only for files whose times are seconds from the start; this file has ISO-8601 times")
        elif kind != mode:
            raise bad(w, f"time {tt!r} mixes {kind} with the {mode} times of the lines above; use one kind")
        if mode == "seconds":
            v = float(tt)
            if not math.isfinite(v) or v < 0:
                raise bad(w, f"time {tt!r} seconds from the start must be >= 0")
            t.append(start + v)  # type: ignore[operator]
        else:
            t.append(_iso_utc(tt, w))
        spo2.append(number(row[isp], w, "spo2"))
        pulse.append(number(row[ipu], w, "pulse") if ipu is not None else math.nan)
        where.append(w)
    ta = np.array(t, dtype=np.float64)
    require_increasing(ta, where)
    return ParsedNight(
        ta, np.array(spo2), np.array(pulse), None,
        {"format": "csv", "time": "utc-iso" if mode == "iso" else "seconds-from-start",
         "columns": names, **({"start_utc": start_utc} if start is not None else {})},
    )
