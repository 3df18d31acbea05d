"""Import of nights recorded elsewhere (standalone overnight oximeters).

Each format has a pure parser (``bytes``/path in, :class:`ParsedNight` out) that
raises :class:`~collector.errors.InvalidInput` naming the line or field it could
not use; :mod:`.store` writes the result as one night session in one
transaction.  Parsers keep invalid readings as NaN samples instead of dropping
them, so the report counts them as gaps and can flag a run of "missing" codes
after a falling SpO2 (Viatom writes its missing code both for "no finger" and
for SpO2 below its range) as a suspected deep desaturation.

Device-local clocks (O2Ring exports, EDF headers) carry no time zone: the
caller must say which zone (``--tz``) or offset (``--utc-offset``) the device
clock was set to; see :func:`local_to_utc`.
"""

from __future__ import annotations

import csv
import io
import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np

from collector.errors import InvalidInput

FORMATS = ("csv", "o2ring-csv", "o2ring-dat", "edf")
TEXT_FORMATS = ("csv", "o2ring-csv")
EARLIEST_UTC_S = 946_684_800.0  # 2000-01-01T00:00:00Z: no overnight oximeter file we import is older
FUTURE_SLACK_S = 86_400.0  # a device clock may run ahead, not by more than a day
BYTES_PER_LINE = 200  # generous for time,spo2,pulse lines of every text format


@dataclass(frozen=True)
class ImportLimits:
    """What a night from elsewhere may be; a file beyond it is refused whole, the limit named.

    Why: a file of 10^6 lines spanning days was imported as one night that "passed", and a
    10^7-line file ran for 20 minutes at 4 GiB.  Text files are refused by size before they
    are read, by sample count while they are read, and every format by its span and dates.
    """

    max_night_h: float = 16.0
    max_rate_hz: float = 2.0

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "ImportLimits":
        ox = config["oximetry"]
        return cls(float(ox["import_max_night_h"]), float(ox["import_max_rate_hz"]))

    @property
    def max_samples(self) -> int:
        return int(self.max_night_h * 3600 * self.max_rate_hz)

    @property
    def max_text_bytes(self) -> int:
        return self.max_samples * BYTES_PER_LINE

    def _night(self) -> str:
        return f"[oximetry] import_max_night_h = {self.max_night_h:g} h at import_max_rate_hz = {self.max_rate_hz:g} Hz"

    def check_size(self, n_bytes: int, fmt: str) -> None:
        if fmt in TEXT_FORMATS and n_bytes > self.max_text_bytes:
            raise InvalidInput(f"the file is {n_bytes / 1e6:.1f} MB, more than one night can be "
                               f"({self.max_text_bytes / 1e6:.0f} MB for {self._night()}); import one night per file")

    def check_rows(self, n_rows: int, where: str) -> None:
        if n_rows > self.max_samples:
            raise InvalidInput(f"{where}: more than {self.max_samples} samples, more than one night ({self._night()}); "
                               "import one night per file")

    def check_night(self, t_utc_s: np.ndarray, now_utc_s: float) -> None:
        """The span and the dates of a parsed night (times strictly increasing)."""
        if t_utc_s.size == 0:
            return
        first, last = float(t_utc_s[0]), float(t_utc_s[-1])
        if first < EARLIEST_UTC_S:
            raise InvalidInput(f"the night starts {_iso(first)}, before 2000-01-01: check the device clock, --tz/--utc-offset "
                               "or --start")
        if last > now_utc_s + FUTURE_SLACK_S:
            raise InvalidInput(f"the night ends {_iso(last)}, more than a day in the future: check the device clock, "
                               "--tz/--utc-offset or --start")
        if last - first > self.max_night_h * 3600:
            raise InvalidInput(f"the file spans {(last - first) / 3600:.1f} h, longer than one night "
                               f"([oximetry] import_max_night_h = {self.max_night_h:g} h); import one night per file")
        self.check_rows(int(t_utc_s.size), "the file")


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(slots=True)
class ParsedNight:
    """One imported night as arrays (one element per sample, strictly increasing time).

    ``spo2``/``pulse`` are NaN where the file had an empty field or a missing code;
    validity flags are derived later (:func:`collector.oximetry.importers.ingest.sample_flags`)
    with the same range rules the live codecs use.  ``source`` describes how the
    file was read (format, columns, channel, time zone); it never holds names.
    """

    t_utc_s: np.ndarray
    spo2: np.ndarray
    pulse: np.ndarray
    device_time: list[str | None] | None = None
    source: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.t_utc_s = np.asarray(self.t_utc_s, dtype=np.float64)
        self.spo2 = np.asarray(self.spo2, dtype=np.float64)
        self.pulse = np.asarray(self.pulse, dtype=np.float64)
        n = self.t_utc_s.size
        if self.spo2.shape != (n,) or self.pulse.shape != (n,):
            raise ValueError("ParsedNight arrays must have one value per sample")
        if self.device_time is not None and len(self.device_time) != n:
            raise ValueError("ParsedNight.device_time must have one entry per sample")

    @property
    def n(self) -> int:
        return int(self.t_utc_s.size)


def bad(where: str, what: str) -> InvalidInput:
    """An import error naming the place in the file (``line 12``, ``header``, ``channel 'SpO2'``)."""
    return InvalidInput(f"{where}: {what}")


def require_increasing(t: np.ndarray, where: list[str]) -> None:
    """Times must strictly increase; name the first line where they do not."""
    if t.size < 2:
        raise InvalidInput(
            f"the file has {t.size} sample{'s' if t.size != 1 else ''}; a night needs at least 2 timed samples"
        )
    d = np.diff(t)
    bad_i = np.flatnonzero(~(d > 0))
    if bad_i.size:
        i = int(bad_i[0]) + 1
        raise bad(where[i], f"time is not after the previous sample's ({where[i - 1]}); "
                  "samples must be in time order without duplicates; fix or re-export the file")


_OFFSET_RE = re.compile(r"^(?:UTC|GMT)?\s*([+-])(\d{1,2})(?::?(\d{2}))?$", re.IGNORECASE)


def parse_utc_offset(text: str) -> timedelta:
    """``+01:00``, ``-0500``, ``+1``, ``Z``/``UTC`` -> timedelta (east of UTC positive)."""
    s = text.strip()
    if s.upper() in ("Z", "UTC", "GMT", "+00:00", "-00:00"):
        return timedelta(0)
    m = _OFFSET_RE.match(s)
    if not m:
        raise InvalidInput(f"--utc-offset {text!r} is not an offset; write it like +01:00 or -05:00")
    h, mnt = int(m.group(2)), int(m.group(3) or 0)
    if h > 14 or mnt >= 60:
        raise InvalidInput(f"--utc-offset {text!r} is out of range (-14:00 .. +14:00)")
    sign = -1 if m.group(1) == "-" else 1
    return sign * timedelta(hours=h, minutes=mnt)


def _fmt_offset(off: timedelta) -> str:
    total = int(off.total_seconds())
    sign = "-" if total < 0 else "+"
    total = abs(total)
    return f"{sign}{total // 3600:02d}:{total % 3600 // 60:02d}"


def local_to_utc(local_s: np.ndarray, tz: str | None, utc_offset: str | None, fmt: str) -> tuple[np.ndarray, dict[str, Any]]:
    """Device-local wall-clock seconds (naive, counted as if UTC) -> UTC epoch seconds.

    A device clock runs on through the night and is not moved at a daylight-saving
    change, so one offset applies to the whole file: the zone's offset at the first
    sample.  A first sample in a repeated or skipped local hour is refused (the
    offset would be a guess); give ``--utc-offset`` then.
    """
    if tz and utc_offset:
        raise InvalidInput("give either --tz or --utc-offset, not both")
    if not tz and not utc_offset:
        raise InvalidInput(
            f"{fmt} times are the device's local clock time with no time zone; say where the device clock was set: "
            "--tz Europe/Berlin (IANA zone name) or --utc-offset +01:00"
        )
    info: dict[str, Any] = {}
    first = datetime(1970, 1, 1) + timedelta(seconds=float(local_s[0]))
    if utc_offset:
        off = parse_utc_offset(utc_offset)
        info["utc_offset"] = _fmt_offset(off)
    else:
        try:
            zone = ZoneInfo(tz)  # type: ignore[arg-type]
        except (ZoneInfoNotFoundError, ValueError):
            raise InvalidInput(f"--tz {tz!r} is not a known IANA time zone; use a name like Europe/Berlin or America/New_York") from None
        off0 = zone.utcoffset(first.replace(fold=0))
        off1 = zone.utcoffset(first.replace(fold=1))
        if off0 != off1:
            raise InvalidInput(
                f"the first sample's local time {first.isoformat()} is ambiguous or does not exist in {tz} "
                "(daylight-saving change); give the device clock's offset instead, e.g. --utc-offset +01:00"
            )
        off = off0 or timedelta(0)
        last = datetime(1970, 1, 1) + timedelta(seconds=float(local_s[-1]))
        info["tz"] = tz
        info["utc_offset"] = _fmt_offset(off)
        off_last = zone.utcoffset(last.replace(fold=0))
        if off_last != off:
            info["note"] = (
                f"the night spans a daylight-saving change in {tz}; every time was converted with the offset at the "
                f"first sample ({_fmt_offset(off)}), as the device clock runs on unchanged"
            )
    return np.asarray(local_s, dtype=np.float64) - off.total_seconds(), info


def naive_seconds(dt: datetime) -> float:
    """Wall-clock datetime (no zone) -> seconds since 1970-01-01 counted as if UTC."""
    return (dt - datetime(1970, 1, 1)).total_seconds()


def local_iso(local_s: float) -> str:
    """Device-local seconds -> ISO-8601 text without zone (the ``device_time`` column)."""
    dt = datetime(1970, 1, 1) + timedelta(seconds=float(local_s))
    return dt.isoformat(timespec="milliseconds" if local_s % 1 else "seconds")


def number(text: str, where: str, name: str) -> float:
    """A numeric field; NaN for empty or ``--`` (the formats' "no value")."""
    s = text.strip()
    if s == "" or s.strip("-") == "" or s.upper() in ("NAN", "N/A", "NA"):
        return math.nan
    try:
        v = float(s)
    except ValueError:
        raise bad(where, f"{name} {text.strip()!r} is not a number (empty or -- mean no value)") from None
    if not math.isfinite(v):
        return math.nan
    return v


def decode_text(raw: bytes, what: str) -> str:
    """File bytes -> text (UTF-8 with/without BOM, or UTF-16 with BOM)."""
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        return raw.decode("utf-16")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"{what} is not UTF-8 text (byte {exc.start}); export it again as UTF-8 CSV") from None


def read_rows(text: str, delimiter: str = ",", limits: ImportLimits | None = None) -> list[tuple[str, list[str]]]:
    """CSV text -> [(``line N``, fields)] without blank lines; malformed CSV -> InvalidInput naming the line.

    With ``limits``, reading stops (refused) at the first row beyond one night's samples.
    """
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    out: list[tuple[str, list[str]]] = []
    cap = None if limits is None else limits.max_samples + 1  # + the header line
    try:
        for row in reader:
            if any(c.strip() for c in row):
                out.append((f"line {reader.line_num}", row))
                if cap is not None and len(out) > cap:
                    assert limits is not None
                    limits.check_rows(len(out) - 1, f"line {reader.line_num}")
    except csv.Error as exc:
        raise InvalidInput(f"line {reader.line_num + 1}: not readable as CSV ({exc}); export the file again as plain CSV") from None
    return out


__all__ = [
    "FORMATS",
    "ImportLimits",
    "ParsedNight",
    "bad",
    "decode_text",
    "local_iso",
    "local_to_utc",
    "naive_seconds",
    "number",
    "parse_utc_offset",
    "read_rows",
    "require_increasing",
]
