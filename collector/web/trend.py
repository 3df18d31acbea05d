"""SpO2 and pulse trends for the bed cards, aggregated in SQL to a few hundred points.

The page draws the last 30 minutes and the whole night; sending every 1 Hz sample
of an 8-hour night (28,800 rows) once a minute per bed would be wasteful, so the
samples are bucketed (by the oximetry store, in SQL): mean and minimum of the *valid* SpO2 (the minimum keeps short
desaturations visible), mean valid pulse.  Buckets without a valid sample are
omitted, so a gap shows as a break in the line.
"""

from __future__ import annotations

import math
import sqlite3
from typing import Any

from collector.clock import utc_iso
from collector.oximetry import store
from collector.storage import repo

MAX_POINTS = 240
MIN_BUCKET_S = 5


def bucket_seconds(window_s: float) -> int:
    return max(MIN_BUCKET_S, int(math.ceil(window_s / MAX_POINTS)))


def session_trend(conn: sqlite3.Connection, session_id: int, *, minutes: int | None, now: float | None) -> dict[str, Any]:
    """Trend of one session; ``minutes=None`` is the whole recording.  ``now`` ends the window of an open session."""
    session = repo.get_session(conn, session_id)  # NotFound for an unknown id
    first, last = store.sample_span(conn, session_id)
    end_ms = int(now * 1000) if (now is not None and session["state"] == "open") else (last or 0)
    if last is not None:
        end_ms = max(end_ms, last)
    if minutes is None:
        start_ms = first if first is not None else end_ms
    else:
        start_ms = end_ms - minutes * 60_000
    window_s = max((end_ms - start_ms) / 1000, 1.0)
    bucket_s = bucket_seconds(window_s)
    bucket_ms = bucket_s * 1000
    rows = store.sample_buckets(conn, session_id, start_ms=start_ms, end_ms=end_ms, bucket_ms=bucket_ms)
    points = [
        {"t_ms": start_ms + int(b) * bucket_ms + bucket_ms // 2, "spo2_mean": _r(mean), "spo2_min": _r(low), "pulse_mean": _r(pulse)}
        for b, mean, low, pulse in rows
        if mean is not None or pulse is not None
    ]
    return {
        "session_id": session_id,
        "minutes": minutes,
        "from_utc": utc_iso(start_ms / 1000),
        "to_utc": utc_iso(end_ms / 1000),
        "from_ms": start_ms,
        "to_ms": end_ms,
        "bucket_s": bucket_s,
        "points": points,
    }


def _r(x: float | None) -> float | None:
    return None if x is None else round(float(x), 1)
