"""The bundle's CSV files: fixed columns, exact values, and their readers.

Times are UTC ISO-8601 with milliseconds (exact: the database keeps integer ms),
floats are written with ``repr`` so they read back bit for bit, NULL is an empty
cell.  The audit extract also names its NULL fields, because a row's hash
distinguishes NULL from an empty string.
"""

from __future__ import annotations

import csv
import io
from datetime import datetime, timedelta, timezone
from itertools import repeat
from typing import Any, Iterable, Sequence

import numpy as np

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MS = timedelta(milliseconds=1)

IDENTITY = ["site_uuid", "session_uuid"]  # first on every row: where and in which session it was recorded
SAMPLE_COLUMNS = [*IDENTITY, "host_utc", "device_time", "spo2_pct", "pulse_bpm", "pai_pct", "valid", "pulse_valid",
                  "flags", "flag_names", "status_raw", "counter"]
GAP_COLUMNS = [*IDENTITY, "start_utc", "end_utc", "duration_s", "cause", "breaks_hold", "detail"]
EVENT_COLUMNS = [*IDENTITY, "t_utc", "kind", "detail_json"]
NOTE_COLUMNS = [*IDENTITY, "t_utc", "noted_by", "text"]  # the technician's night notes (collector note), as written
# the night's alerts: title and message in the export's language, with the English text, message id and parameters
ALERT_COLUMNS = [*IDENTITY, "alert_id", "kind", "state", "raised_utc", "cleared_utc", "acknowledged_utc", "acknowledged_by",
                 "language", "title", "message", "message_en", "message_id", "params_json"]
AUDIT_COLUMNS = [*IDENTITY, "id", "at_utc", "actor", "action", "subject_id", "session_id", "old_value", "new_value", "reason",
                 "prev_hash", "row_hash", "null_fields", "withheld_fields"]
MANOEUVRE_COLUMNS = [*IDENTITY, "id", "received_utc", "number", "manoeuvre_type", "posture", "is_summary", "fvc_l", "fev1_l",
                     "fev1_fvc", "pef_l_s", "bev_l", "fet_s", "device_quality_json"]


def iso_ms(ms: int) -> str:
    """Integer epoch ms -> ``YYYY-MM-DDTHH:MM:SS.mmmZ`` (exact, no float on the way)."""
    return (_EPOCH + int(ms) * _MS).strftime("%Y-%m-%dT%H:%M:%S.") + f"{int(ms) % 1000:03d}Z"


def parse_iso_ms(text: str) -> int:
    """Inverse of :func:`iso_ms` (also accepts +00:00)."""
    dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if dt.tzinfo is None:
        raise ValueError(f"time {text!r} has no UTC marker")
    return (dt - _EPOCH) // _MS


def cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, float):
        return repr(v)
    return str(v)


def write_csv(columns: list[str], rows: Iterable[dict[str, Any]]) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for r in rows:
        w.writerow([cell(r.get(c)) for c in columns])
    return buf.getvalue().encode("utf-8")


def iso_ms_column(ms: np.ndarray) -> list[str]:
    """:func:`iso_ms` of a whole column at once (numpy's ms datetimes print the same digits)."""
    text = np.datetime_as_string(np.asarray(ms, dtype=np.int64).astype("datetime64[ms]"), unit="ms")
    return np.char.add(text, "Z").tolist()


def cells(values: Sequence[Any]) -> Iterable[str]:
    """:func:`cell` of a whole column: one C-level ``map`` when the column holds a single plain type."""
    kinds = set(map(type, values))
    if kinds == {float}:
        return map(repr, values)
    if kinds == {int} or kinds == {str}:
        return map(str, values)
    if kinds == {type(None)}:
        return repeat("", len(values))
    return map(cell, values)


def write_columns(columns: list[str], data: dict[str, Iterable[str] | str], n: int) -> bytes:
    """The bytes :func:`write_csv` writes, from columns of cell text (a plain ``str`` repeats on every row).

    Built column by column so a 12 h night is not a Python loop over 40 000 dicts."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    w.writerows(zip(*[repeat(v, n) if isinstance(v, str) else v for v in (data[c] for c in columns)]))
    return buf.getvalue().encode("utf-8")


def read_csv(data: bytes, columns: list[str]) -> list[dict[str, str]]:
    """Rows as dicts of text; raises ValueError when the header or a row's width is wrong."""
    reader = csv.reader(io.StringIO(data.decode("utf-8")))
    header = next(reader, None)
    if header != columns:
        raise ValueError(f"header is {header}, expected {columns}")
    rows = []
    for n, row in enumerate(reader, 2):
        if len(row) != len(columns):
            raise ValueError(f"line {n} has {len(row)} fields, expected {len(columns)}")
        rows.append(dict(zip(columns, row)))
    return rows


# -- audit rows: NULL-exact round trip ---------------------------------------------------------------
AUDIT_TEXT = ("at_utc", "actor", "action", "subject_id", "old_value", "new_value", "reason")


def audit_row_out(row: dict[str, Any], withheld: list[str]) -> dict[str, Any]:
    nulls = [f for f in (*AUDIT_TEXT, "session_id") if row.get(f) is None]
    return {**row, "null_fields": "|".join(nulls), "withheld_fields": "|".join(withheld)}


def audit_row_in(rec: dict[str, str]) -> dict[str, Any]:
    """A CSV record -> the row as the database held it (NULLs restored, session_id an int)."""
    nulls = set(filter(None, rec["null_fields"].split("|")))
    row: dict[str, Any] = {f: (None if f in nulls else rec[f]) for f in AUDIT_TEXT}
    row["session_id"] = None if "session_id" in nulls else int(rec["session_id"])
    row["id"] = int(rec["id"])
    row["prev_hash"] = rec["prev_hash"]
    row["row_hash"] = rec["row_hash"]
    row["withheld"] = list(filter(None, rec["withheld_fields"].split("|")))
    return row
