"""The collector's simple spirometry CSV (one row per trial), sans-I/O.

For sites whose software exports nothing standard: the technician copies the trial values into
a file of this layout (documented in docs/spirometry-vendors.md and the README)::

    # lines starting with # are comments
    trial,fvc_l,fev1_l,pef_l_s,bev_l,fet_s,last_second_volume_l,hesitation_s,type,device_acceptable,quality
    1,2.20,1.86,5.10,0.05,9.5,0.010,0.4,FVC,yes,
    2,2.12,1.80,5.00,0.06,8.9,0.015,,FVC,yes,
    best,2.20,1.86,5.10,,,,,FVC,,

Required columns: ``trial`` (a number, or ``best`` / ``summary`` for the device's own session
summary), ``fvc_l`` and ``fev1_l``; the others are optional, in any order.  Volumes in litres,
flows in L/s, times in seconds; an empty cell is "not measured".  ``quality`` holds device
quality codes separated by ``;``.  Other columns are kept as observations, except columns whose
name suggests personal data (name, birth, address, ...), which refuse the file: a pseudonymous
database must not receive them.  The file is refused whole at the first bad cell, named by line
and column.
"""

from __future__ import annotations

from typing import Final

import csv
import io
import re

from drivers.spirometry.results import (
    DecodedMessage,
    DecodeError,
    ManoeuvreResult,
    Observation,
    check_result,
    parse_number,
)

SOURCE: Final = "csv"
MAX_BYTES = 1_000_000
MAX_ROWS = 50  # ATS/ERS: rarely more than 8 attempts in a session
NUMERIC = {"fvc_l": "fvc_l", "fev1_l": "fev1_l", "fev1_fvc": "fev1_fvc", "pef_l_s": "pef_l_s", "bev_l": "bev_l", "fet_s": "fet_s",
           "vc_l": "vc_l", "last_second_volume_l": "last_second_volume_l", "hesitation_s": "hesitation_s"}
TEXT = {"trial", "type", "posture", "device_acceptable", "quality"}
REQUIRED = ("trial", "fvc_l", "fev1_l")
_PERSONAL = re.compile(r"name|birth|dob|address|phone|mrn|hospital|patient|insur|street|city|email|id_?card", re.I)


class _Refused(Exception):
    def __init__(self, reason: str, where: str | None = None) -> None:
        super().__init__(reason)
        self.reason, self.where = reason, where


def parse_csv_trials(data: bytes) -> DecodedMessage | DecodeError:
    """The whole file or the one reason it is refused; never raises."""
    try:
        return _parse(data)
    except _Refused as r:
        return DecodeError(SOURCE, r.reason, location=r.where)
    except Exception as exc:  # a parser bug must not kill the CLI
        return DecodeError(SOURCE, f"internal decoder error ({type(exc).__name__}); file not accepted")


def _parse(data: bytes) -> DecodedMessage:
    if len(data) > MAX_BYTES:
        raise _Refused(f"file larger than {MAX_BYTES // 1000} kB: not one session's trials")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _Refused("not UTF-8 text", f"byte {exc.start}") from None
    if "\x00" in text:
        raise _Refused("file contains NUL bytes: not a CSV text file")
    lines = [(i, line) for i, line in enumerate(text.splitlines(), 1) if line.strip() and not line.lstrip().startswith("#")]
    if not lines:
        raise _Refused("no header line (trial,fvc_l,fev1_l,...)")
    header_no, header_line = lines[0]
    header = [h.strip().lower() for h in next(csv.reader([header_line]))]
    where_h = f"line {header_no}"
    for h in header:
        if not h:
            raise _Refused("empty column name in the header", where_h)
        if h not in NUMERIC and h not in TEXT and _PERSONAL.search(h):
            raise _Refused(f"column {h!r} looks like personal data: remove it (pseudonyms only)", where_h)
    if len(set(header)) != len(header):
        raise _Refused("a column name occurs twice in the header", where_h)
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise _Refused(f"header lacks column(s) {', '.join(missing)} (needed: {', '.join(REQUIRED)})", where_h)
    if len(lines) - 1 > MAX_ROWS:
        raise _Refused(f"{len(lines) - 1} trial rows: more than {MAX_ROWS}, not one session")
    results: list[ManoeuvreResult] = []
    seen: set[int] = set()
    summaries = 0
    for line_no, line in lines[1:]:
        cells = next(csv.reader(io.StringIO(line)), [])
        where = f"line {line_no}"
        if len(cells) != len(header):
            raise _Refused(f"{len(cells)} cells, the header has {len(header)}", where)
        row = {h: c.strip() for h, c in zip(header, cells)}
        trial = row["trial"].lower()
        summary = trial in ("best", "summary")
        number = None
        if summary:
            summaries += 1
            if summaries > 1:
                raise _Refused("a second summary row", f"{where}, column trial")
        else:
            n = parse_number(trial)
            if n is None or n != int(n) or not (1 <= n <= 999):
                raise _Refused(f"trial {row['trial']!r} is not a trial number (1-999) or 'best'", f"{where}, column trial")
            number = int(n)
            if number in seen:
                raise _Refused(f"trial {number} occurs twice", f"{where}, column trial")
            seen.add(number)
        vals: dict[str, float | None] = {}
        for col, attr in NUMERIC.items():
            cell = row.get(col, "")
            if cell == "":
                vals[attr] = None
                continue
            v = parse_number(cell)
            if v is None:
                raise _Refused(f"{cell!r} is not a number", f"{where}, column {col}")
            vals[attr] = v
        if vals["fvc_l"] is None or vals["fev1_l"] is None:
            raise _Refused("fvc_l and fev1_l are required in every row", where)
        if vals["fev1_fvc"] is not None and vals["fev1_fvc"] > 1.0:
            vals["fev1_fvc"] = round(vals["fev1_fvc"] / 100.0, 9)  # written as a percentage
        mtype = (row.get("type") or "FVC").upper()
        if mtype not in ("FVC", "SVC"):
            raise _Refused(f"type {row.get('type')!r} is not FVC or SVC", f"{where}, column type")
        acc_text = (row.get("device_acceptable") or "").lower()
        if acc_text not in ("", "yes", "no", "true", "false", "1", "0"):
            raise _Refused(f"device_acceptable {row.get('device_acceptable')!r} is not yes or no", f"{where}, column device_acceptable")
        accepted = None if acc_text == "" else acc_text in ("yes", "true", "1")
        quality = tuple(q.strip() for q in (row.get("quality") or "").split(";") if q.strip())
        extra = tuple(Observation(number or 0, h, row[h], None, "csv-column", sub_id=str(line_no))
                      for h in header if h not in NUMERIC and h not in TEXT and row[h] != "")
        r = ManoeuvreResult(source=SOURCE, number=number, manoeuvre_type=mtype,  # type: ignore[arg-type]
                            posture=row.get("posture") or None, device_quality=quality, summary=summary,
                            observations=extra, device_acceptable=accepted, **vals)  # type: ignore[arg-type]
        if (why := check_result(r)) is not None:
            raise _Refused(why, where)
        results.append(r)
    if not results:
        raise _Refused("no trial rows after the header")
    return DecodedMessage(SOURCE, None, tuple(results))
