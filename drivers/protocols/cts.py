"""Current Time Service (0x1805), Current Time characteristic (0x2A2B), sans-I/O.

Why: records a PLX device stored while disconnected carry its own wall-clock time
(device local, no zone).  Reading the device's clock next to the host clock gives
the offset that maps those stamps to host UTC.

Layout (little-endian, 10 bytes): year uint16, month, day, hours, minutes,
seconds, day of week (1 = Monday, 0 = unknown), fractions of a second in 1/256,
adjust reason.  Bytes past the tenth are reserved and ignored.
"""

from __future__ import annotations

import datetime as _dt

CTS_SERVICE_UUID = "00001805-0000-1000-8000-00805f9b34fb"
CURRENT_TIME_UUID = "00002a2b-0000-1000-8000-00805f9b34fb"


class CurrentTimeError(ValueError):
    """The Current Time value is too short or names an impossible date."""


def decode_current_time(data: bytes) -> float:
    """The device's wall time as if it were UTC, in epoch seconds (1/256 s resolution)."""
    if len(data) < 10:
        raise CurrentTimeError(f"current time: {len(data)} bytes, need 10")
    year = int.from_bytes(data[0:2], "little")
    month, day, hour, minute, second = data[2], data[3], data[4], data[5], data[6]
    if year == 0 or month == 0 or day == 0:
        raise CurrentTimeError("current time: the device clock is not set (date unknown)")
    try:
        wall = _dt.datetime(year, month, day, hour, minute, second, tzinfo=_dt.timezone.utc)
    except ValueError as exc:
        raise CurrentTimeError(f"current time: impossible date ({exc})") from None
    return wall.timestamp() + data[8] / 256.0


def encode_current_time(device_s: float, *, adjust_reason: int = 0) -> bytes:
    """Device side: the value for a device whose wall time is ``device_s`` (epoch seconds as if UTC)."""
    whole = int(device_s // 1)
    frac = min(255, int(round((device_s - whole) * 256)))
    wall = _dt.datetime.fromtimestamp(whole, _dt.timezone.utc)
    return (wall.year.to_bytes(2, "little") + bytes([wall.month, wall.day, wall.hour, wall.minute, wall.second,
                                                    wall.isoweekday(), frac, adjust_reason & 0xFF]))


def device_epoch(iso: str) -> float:
    """A device time as stored (ISO-8601 without zone) as epoch seconds, read as if UTC."""
    return _dt.datetime.fromisoformat(iso).replace(tzinfo=_dt.timezone.utc).timestamp()
