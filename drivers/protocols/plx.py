"""Bluetooth SIG Pulse Oximeter profile (PLX, service 0x1822), sans-I/O.

Field layouts follow the GATT Specification Supplement (checked against it and
two vendor stacks): little-endian, SFLOAT numbers, lengths implied by the flags.
A notification is exactly one frame, so a bad notification is counted and
dropped and the next one decodes; bytes past the flags-implied length are
reserved for future use and ignored.

``status_raw`` of a reading is ``(device_and_sensor_status << 16) |
measurement_status`` (40 bits at most); a field the frame did not carry counts
as 0, and ``status_raw`` is None when the frame carried neither.

Mapping of the device's bits to :class:`Flag` (ble-oximeters.md): bits that make
the SpO2 unusable for T90 map to invalidating flags; every other warning maps to
a non-invalidating flag (stored, counted toward T90, shown in the report).

Validity rule for the two "not settled yet" bits, measurement-status bit 6 (early
estimated data) and device-and-sensor-status bit 9 (signal analysis ongoing): the
reading is valid and counts toward T90 (the SIG lists neither as invalid and the
design page counts them), flagged QUESTIONABLE and PROVISIONAL_ESTIMATE.  The night
report recomputes T90 without them and marks the night borderline (investigator
review) when that alternative would reverse the decision; the rule is recorded in
the report's definitions (``plx_provisional``).  A reading that also carries an
invalidating bit (13, 15; sensor bits 1, 3, 11, 13-15) is invalid as always.
"""

from __future__ import annotations

import datetime as _dt
import enum
import functools
from dataclasses import dataclass
from typing import Any, Iterable

from drivers.protocols.common import (
    DeviceClock,
    Flag,
    OximeterEvent,
    OximeterReading,
    ParserStats,
    PlxFeatures as PlxFeatures,
    RacpCode as RacpCode,
    RacpOpcode as RacpOpcode,
    RacpReply as RacpReply,
    apply_range_rules,
)
from drivers.protocols.cts import CURRENT_TIME_UUID, CurrentTimeError, decode_current_time
from drivers.protocols.sfloat import SFloat, Special, encode_sfloat, read_sfloat


def sig_uuid(short: int) -> str:
    """Full lower-case 128-bit UUID of a 16-bit Bluetooth SIG number."""
    return f"0000{short:04x}-0000-1000-8000-00805f9b34fb"


PLX_SERVICE_UUID = sig_uuid(0x1822)
PLX_SPOT_CHECK_UUID = sig_uuid(0x2A5E)  # indicate
PLX_CONTINUOUS_UUID = sig_uuid(0x2A5F)  # notify
PLX_FEATURES_UUID = sig_uuid(0x2A60)  # read
RACP_UUID = sig_uuid(0x2A52)  # write + indicate


@functools.lru_cache(maxsize=256)
def normalize_uuid(uuid: str) -> str:
    """Lower-case 128-bit form; accepts '2a5f', '0x2A5F' and full UUIDs."""
    u = uuid.strip().lower()
    if u.startswith("0x"):
        u = u[2:]
    if len(u) == 4:
        try:
            return sig_uuid(int(u, 16))
        except ValueError:
            return u
    return u


# --- bit definitions ---------------------------------------------------------------

class ContFlags(enum.IntFlag):
    FAST = 1 << 0
    SLOW = 1 << 1
    MEAS_STATUS = 1 << 2
    DEV_STATUS = 1 << 3
    PAI = 1 << 4


class SpotFlags(enum.IntFlag):
    TIMESTAMP = 1 << 0
    MEAS_STATUS = 1 << 1
    DEV_STATUS = 1 << 2
    PAI = 1 << 3
    CLOCK_NOT_SET = 1 << 4


class MeasStatus(enum.IntFlag):
    ONGOING = 1 << 5
    EARLY_ESTIMATE = 1 << 6
    VALIDATED = 1 << 7
    FULLY_QUALIFIED = 1 << 8
    FROM_STORAGE = 1 << 9
    DEMO = 1 << 10
    TESTING = 1 << 11
    CALIBRATION_ONGOING = 1 << 12
    UNAVAILABLE = 1 << 13
    QUESTIONABLE = 1 << 14
    INVALID = 1 << 15


class DevStatus(enum.IntFlag):
    EXT_DISPLAY_UPDATE = 1 << 0
    EQUIPMENT_MALFUNCTION = 1 << 1
    SIGNAL_PROCESSING_IRREGULARITY = 1 << 2
    INADEQUATE_SIGNAL = 1 << 3
    POOR_SIGNAL = 1 << 4
    LOW_PERFUSION = 1 << 5
    ERRATIC_SIGNAL = 1 << 6
    NONPULSATILE_SIGNAL = 1 << 7
    QUESTIONABLE_PULSE = 1 << 8
    SIGNAL_ANALYSIS_ONGOING = 1 << 9
    SENSOR_INTERFERENCE = 1 << 10
    SENSOR_UNCONNECTED = 1 << 11
    UNKNOWN_SENSOR = 1 << 12
    SENSOR_DISPLACED = 1 << 13
    SENSOR_MALFUNCTION = 1 << 14
    SENSOR_DISCONNECTED = 1 << 15


# Measurement-status bit -> Flag.  Invalid for T90: 13, 15 (device says no valid
# value) and 10/11 (demo/test data never counts for a subject).  6 (early estimate)
# and 12 (calibration ongoing) are cautions the design does not call invalid, so
# they become QUESTIONABLE (stored, counted, reported).  5/7/8 carry no warning.
MEAS_STATUS_FLAGS: dict[MeasStatus, Flag] = {
    MeasStatus.EARLY_ESTIMATE: Flag.QUESTIONABLE | Flag.PROVISIONAL_ESTIMATE,
    MeasStatus.FROM_STORAGE: Flag.FROM_STORAGE,
    MeasStatus.DEMO: Flag.DEMO_OR_TEST,
    MeasStatus.TESTING: Flag.DEMO_OR_TEST,
    MeasStatus.CALIBRATION_ONGOING: Flag.QUESTIONABLE,
    MeasStatus.UNAVAILABLE: Flag.DEVICE_INVALID,
    MeasStatus.QUESTIONABLE: Flag.QUESTIONABLE,
    MeasStatus.INVALID: Flag.DEVICE_INVALID,
}

# Device-and-sensor-status bit -> Flag.  Invalid for T90: 1, 3, 11, 13, 14, 15.
# Bit 9 (signal analysis ongoing) is deliberately NOT mapped to SEARCHING, which
# invalidates: the design lists it among the store/flag/count bits.
DEV_STATUS_FLAGS: dict[DevStatus, Flag] = {
    DevStatus.EQUIPMENT_MALFUNCTION: Flag.DEVICE_INVALID,
    DevStatus.SIGNAL_PROCESSING_IRREGULARITY: Flag.QUESTIONABLE,
    DevStatus.INADEQUATE_SIGNAL: Flag.WEAK_SIGNAL | Flag.DEVICE_INVALID,
    DevStatus.POOR_SIGNAL: Flag.WEAK_SIGNAL,
    DevStatus.LOW_PERFUSION: Flag.WEAK_SIGNAL,
    DevStatus.ERRATIC_SIGNAL: Flag.QUESTIONABLE,
    DevStatus.NONPULSATILE_SIGNAL: Flag.WEAK_SIGNAL,
    DevStatus.QUESTIONABLE_PULSE: Flag.QUESTIONABLE,
    DevStatus.SIGNAL_ANALYSIS_ONGOING: Flag.QUESTIONABLE | Flag.PROVISIONAL_ESTIMATE,
    DevStatus.SENSOR_INTERFERENCE: Flag.QUESTIONABLE,
    DevStatus.SENSOR_UNCONNECTED: Flag.FINGER_OUT,
    DevStatus.UNKNOWN_SENSOR: Flag.QUESTIONABLE,
    DevStatus.SENSOR_DISPLACED: Flag.SENSOR_DISPLACED,
    DevStatus.SENSOR_MALFUNCTION: Flag.DEVICE_INVALID,
    DevStatus.SENSOR_DISCONNECTED: Flag.PROBE_UNPLUGGED,
}


@functools.lru_cache(maxsize=4096)
def status_flags(meas_status: int | None, dev_status: int | None) -> int:
    """Normalised flag bits for the two PLX status fields (None = field absent).

    Cached: a device repeats the same few status words all night, and this runs per sample.
    """
    flags = 0
    for bit, flag in MEAS_STATUS_FLAGS.items():
        if meas_status is not None and meas_status & bit:
            flags |= int(flag)
    for dev_bit, dev_flag in DEV_STATUS_FLAGS.items():
        if dev_status is not None and dev_status & dev_bit:
            flags |= int(dev_flag)
    return flags


def _status_raw(meas_status: int | None, dev_status: int | None) -> int | None:
    if meas_status is None and dev_status is None:
        return None
    return ((dev_status or 0) << 16) | (meas_status or 0)


# --- decoded frames ----------------------------------------------------------------

class PlxFrameError(ValueError):
    """A PLX frame is malformed (used inside the codec; the parser counts it)."""


@dataclass(slots=True)  # per-sample object: plain init is much cheaper than frozen
class PlxContinuous:
    """Every field of one 0x2A5F frame (fast/slow are not stored as readings)."""

    flags: int
    spo2: SFloat
    pr: SFloat
    spo2_fast: SFloat | None = None
    pr_fast: SFloat | None = None
    spo2_slow: SFloat | None = None
    pr_slow: SFloat | None = None
    meas_status: int | None = None
    dev_status: int | None = None
    pai: SFloat | None = None


@dataclass(frozen=True, slots=True)
class PlxSpotCheck:
    """Every field of one 0x2A5E frame; ``timestamp`` is the 6 raw date-time numbers."""

    flags: int
    spo2: SFloat
    pr: SFloat
    timestamp: tuple[int, int, int, int, int, int] | None = None
    meas_status: int | None = None
    dev_status: int | None = None
    pai: SFloat | None = None

    @property
    def clock_not_set(self) -> bool:
        return bool(self.flags & SpotFlags.CLOCK_NOT_SET)


# --- pure decoders -----------------------------------------------------------------

def _need(data: bytes, n: int, what: str) -> None:
    if len(data) < n:
        raise PlxFrameError(f"{what}: {len(data)} bytes, flags imply {n}")


_C_FAST, _C_SLOW, _C_MEAS_STATUS, _C_DEV_STATUS, _C_PAI = (
    int(ContFlags.FAST), int(ContFlags.SLOW), int(ContFlags.MEAS_STATUS), int(ContFlags.DEV_STATUS), int(ContFlags.PAI)
)


def decode_continuous(data: bytes) -> PlxContinuous:
    """Decode a 0x2A5F frame; raises :class:`PlxFrameError` if shorter than its flags imply."""
    _need(data, 1, "continuous")
    f = data[0]  # compared with plain ints below: IntFlag arithmetic is slow on this per-sample path
    n = 5 + 4 * bool(f & _C_FAST) + 4 * bool(f & _C_SLOW)
    n += 2 * bool(f & _C_MEAS_STATUS) + 3 * bool(f & _C_DEV_STATUS) + 2 * bool(f & _C_PAI)
    _need(data, n, "continuous")
    fields: dict[str, Any] = {"flags": f, "spo2": read_sfloat(data, 1), "pr": read_sfloat(data, 3)}
    i = 5
    if f & _C_FAST:
        fields["spo2_fast"], fields["pr_fast"] = read_sfloat(data, i), read_sfloat(data, i + 2)
        i += 4
    if f & _C_SLOW:
        fields["spo2_slow"], fields["pr_slow"] = read_sfloat(data, i), read_sfloat(data, i + 2)
        i += 4
    if f & _C_MEAS_STATUS:
        fields["meas_status"] = int.from_bytes(data[i:i + 2], "little")
        i += 2
    if f & _C_DEV_STATUS:
        fields["dev_status"] = int.from_bytes(data[i:i + 3], "little")
        i += 3
    if f & _C_PAI:
        fields["pai"] = read_sfloat(data, i)
    return PlxContinuous(**fields)


def decode_spot_check(data: bytes) -> PlxSpotCheck:
    """Decode a 0x2A5E frame; raises :class:`PlxFrameError` if shorter than its flags imply."""
    _need(data, 1, "spot-check")
    f = data[0]
    n = 5 + 7 * bool(f & SpotFlags.TIMESTAMP) + 2 * bool(f & SpotFlags.MEAS_STATUS)
    n += 3 * bool(f & SpotFlags.DEV_STATUS) + 2 * bool(f & SpotFlags.PAI)
    _need(data, n, "spot-check")
    fields: dict[str, Any] = {"flags": f, "spo2": read_sfloat(data, 1), "pr": read_sfloat(data, 3)}
    i = 5
    if f & SpotFlags.TIMESTAMP:
        year = int.from_bytes(data[i:i + 2], "little")
        fields["timestamp"] = (year, data[i + 2], data[i + 3], data[i + 4], data[i + 5], data[i + 6])
        i += 7
    if f & SpotFlags.MEAS_STATUS:
        fields["meas_status"] = int.from_bytes(data[i:i + 2], "little")
        i += 2
    if f & SpotFlags.DEV_STATUS:
        fields["dev_status"] = int.from_bytes(data[i:i + 3], "little")
        i += 3
    if f & SpotFlags.PAI:
        fields["pai"] = read_sfloat(data, i)
    return PlxSpotCheck(**fields)


def decode_features(data: bytes) -> PlxFeatures:
    _need(data, 2, "features")
    supported = int.from_bytes(data[0:2], "little")
    n = 2 + 2 * bool(supported & 1) + 3 * bool(supported & 2)
    _need(data, n, "features")
    i = 2
    meas = dev = None
    if supported & 1:
        meas = int.from_bytes(data[i:i + 2], "little")
        i += 2
    if supported & 2:
        dev = int.from_bytes(data[i:i + 3], "little")
    return PlxFeatures(supported, meas, dev)


def decode_racp(data: bytes, t: float = 0.0) -> RacpReply:
    """A RACP indication received at host time ``t``."""
    if len(data) >= 4 and data[0] == RacpOpcode.COUNT_RESPONSE and data[1] == 0x00:
        return RacpReply(t, count=int.from_bytes(data[2:4], "little"))
    if len(data) >= 4 and data[0] == RacpOpcode.RESPONSE_CODE and data[1] == 0x00:
        return RacpReply(t, request_opcode=data[2], code=data[3])
    raise PlxFrameError(f"RACP: unexpected indication {data.hex(' ')}")


def device_time_iso(ts: tuple[int, int, int, int, int, int] | None) -> str | None:
    """ISO-8601 (no zone) for a PLX date-time, or None when any part is unknown (0) or invalid."""
    if ts is None:
        return None
    year, month, day, hour, minute, second = ts
    if year == 0 or month == 0 or day == 0:
        return None  # the Date Time format's "unknown"; an all-zero stamp lands here
    try:
        return _dt.datetime(year, month, day, hour, minute, second).isoformat()
    except ValueError:
        return None


def _value(x: SFloat | None) -> float | None:
    return None if x is None else x.value


def continuous_reading(frame: PlxContinuous) -> OximeterReading:
    spo2, pr = frame.spo2.value, frame.pr.value
    flags = apply_range_rules(spo2, pr, status_flags(frame.meas_status, frame.dev_status))
    return OximeterReading(
        spo2_pct=spo2,
        pulse_bpm=pr,
        flags=flags,
        status_raw=_status_raw(frame.meas_status, frame.dev_status),
        pai_pct=_value(frame.pai),
        kind="continuous",
    )


def spot_check_reading(frame: PlxSpotCheck) -> OximeterReading:
    spo2, pr = frame.spo2.value, frame.pr.value
    flags = status_flags(frame.meas_status, frame.dev_status)
    device_time = None
    if frame.clock_not_set:
        flags |= int(Flag.DEVICE_CLOCK_NOT_SET)
    else:
        device_time = device_time_iso(frame.timestamp)
    flags = apply_range_rules(spo2, pr, flags)
    return OximeterReading(
        spo2_pct=spo2,
        pulse_bpm=pr,
        flags=flags,
        status_raw=_status_raw(frame.meas_status, frame.dev_status),
        pai_pct=_value(frame.pai),
        device_time=device_time,
        kind="spot_check",
    )


# --- the parser ----------------------------------------------------------------------

class PlxParser:
    """Sans-I/O PLX codec: ``feed(t, characteristic, data)`` per notification/indication/read.

    Events out: an :class:`OximeterReading` per continuous or spot-check frame
    (received at ``t``; spot-checks carry their device time, and those with
    measurement-status bit 9 are stored records sent back through RACP),
    :class:`PlxFeatures` for a features read,
    :class:`RacpReply` for a control-point answer, :class:`DeviceClock` for a
    Current Time read (the device clock next to the host's, for back-fill).  The features are also kept in
    ``features`` (state the transport asks about later); the most recent full
    continuous frame (with fast/slow values) in ``last_continuous``.
    """

    protocol = "plx"

    def __init__(self) -> None:
        self.stats = ParserStats()
        self.features: PlxFeatures | None = None
        self.last_continuous: PlxContinuous | None = None
        # frame bytes -> (frame, reading); readings are frozen, so one object serves every copy of a frame
        self._continuous_cache: dict[bytes, tuple[PlxContinuous, OximeterReading]] = {}

    def feed(self, t: float, characteristic: str, data: bytes) -> list[OximeterEvent]:
        uuid = normalize_uuid(characteristic)
        data = bytes(data)
        if uuid == PLX_CONTINUOUS_UUID:
            # The per-second path: a night repeats a few hundred distinct frames, each decoded once.
            hit = self._continuous_cache.get(data)
            if hit is not None:
                self.last_continuous = hit[0]
                self.stats.frames += 1
                return [hit[1]]
        out: list[OximeterEvent]
        try:
            if uuid == PLX_CONTINUOUS_UUID:
                frame = decode_continuous(data)
                reading = continuous_reading(frame)
                if len(self._continuous_cache) >= 4096:
                    self._continuous_cache.clear()
                self._continuous_cache[data] = (frame, reading)
                self.last_continuous = frame
                out = [reading]
            elif uuid == PLX_SPOT_CHECK_UUID:
                out = [spot_check_reading(decode_spot_check(data))]
            elif uuid == PLX_FEATURES_UUID:
                self.features = decode_features(data)
                out = [self.features]
            elif uuid == RACP_UUID:
                out = [decode_racp(data, t)]
            elif uuid == CURRENT_TIME_UUID:
                out = [DeviceClock(t, decode_current_time(data))]
            else:
                self.stats.error(f"PLX: data on unexpected characteristic {uuid}", len(data))
                return []
        except (PlxFrameError, CurrentTimeError) as exc:
            self.stats.error(str(exc), len(data))
            return []
        self.stats.frames += 1
        return out

    def feed_many(self, characteristic: str, stamped: Iterable[tuple[float, bytes]]) -> list[tuple[float, OximeterEvent]]:
        """Many notifications of one characteristic (e.g. a replayed capture): ``(t, event)`` pairs.

        The same events, stats and state as :meth:`feed` called on each in turn; a continuous
        frame seen before costs one dictionary look-up, with no list built per frame.
        """
        uuid = normalize_uuid(characteristic)
        out: list[tuple[float, OximeterEvent]] = []
        if uuid != PLX_CONTINUOUS_UUID:
            for t, data in stamped:
                out.extend((t, ev) for ev in self.feed(t, uuid, data))
            return out
        cache, add = self._continuous_cache, out.append
        hits = 0
        last_hit: PlxContinuous | None = None
        for t, data in stamped:
            if type(data) is not bytes:
                data = bytes(data)
            hit = cache.get(data)
            if hit is not None:
                hits += 1
                last_hit = hit[0]
                add((t, hit[1]))
            else:
                if last_hit is not None:
                    self.last_continuous, last_hit = last_hit, None
                out.extend((t, ev) for ev in self.feed(t, uuid, data))
        if last_hit is not None:
            self.last_continuous = last_hit
        self.stats.frames += hits
        return out

    def end_of_input(self) -> list[OximeterEvent]:
        return []  # every notification is a whole frame: nothing is held back


# --- encoders (the codec in reverse: simulators, tests, RACP requests) -----------------

RACP_REPORT_ALL = bytes([RacpOpcode.REPORT_RECORDS, 0x01])
RACP_REPORT_COUNT = bytes([RacpOpcode.REPORT_COUNT, 0x01])
RACP_DELETE_ALL = bytes([RacpOpcode.DELETE_RECORDS, 0x01])
RACP_ABORT = bytes([RacpOpcode.ABORT, 0x00])


def encode_racp_report_all() -> bytes:
    """Ask for every stored record (they arrive as 0x2A5E with measurement-status bit 9)."""
    return RACP_REPORT_ALL


def encode_racp_count() -> bytes:
    return RACP_REPORT_COUNT


def encode_racp_delete_all() -> bytes:
    return RACP_DELETE_ALL


def encode_racp_abort() -> bytes:
    return RACP_ABORT


def encode_racp_response(request_opcode: int, code: int) -> bytes:
    """Device side: ``06 00 <request opcode> <code>``."""
    return bytes([RacpOpcode.RESPONSE_CODE, 0x00, request_opcode & 0xFF, code & 0xFF])


def encode_racp_count_response(count: int) -> bytes:
    """Device side: ``05 00 <u16 count>``."""
    return bytes([RacpOpcode.COUNT_RESPONSE, 0x00]) + (count & 0xFFFF).to_bytes(2, "little")


Num = float | Special | None  # None encodes NaN; a Special encodes that word


def _sf(value: Num) -> bytes:
    return encode_sfloat(value, exact=False).to_bytes(2, "little")


def encode_continuous(
    spo2: Num,
    pr: Num,
    *,
    meas_status: int | None = None,
    dev_status: int | None = None,
    pai: Num = None,
    fast: tuple[Num, Num] | None = None,
    slow: tuple[Num, Num] | None = None,
) -> bytes:
    """Build a 0x2A5F frame; an optional field is present iff its argument is not None.

    None for SpO2/PR encodes NaN (the "no reading" word); numbers that need more than
    the SFLOAT's digits are rounded (``exact=False``).
    """
    flags = 0
    body = _sf(spo2) + _sf(pr)
    if fast is not None:
        flags |= ContFlags.FAST
        body += _sf(fast[0]) + _sf(fast[1])
    if slow is not None:
        flags |= ContFlags.SLOW
        body += _sf(slow[0]) + _sf(slow[1])
    if meas_status is not None:
        flags |= ContFlags.MEAS_STATUS
        body += (meas_status & 0xFFFF).to_bytes(2, "little")
    if dev_status is not None:
        flags |= ContFlags.DEV_STATUS
        body += (dev_status & 0xFFFFFF).to_bytes(3, "little")
    if pai is not None:
        flags |= ContFlags.PAI
        body += _sf(pai)
    return bytes([int(flags)]) + body


def encode_spot_check(
    spo2: Num,
    pr: Num,
    *,
    timestamp: tuple[int, int, int, int, int, int] | None = None,
    clock_not_set: bool = False,
    meas_status: int | None = None,
    dev_status: int | None = None,
    pai: Num = None,
) -> bytes:
    """Build a 0x2A5E frame; ``timestamp`` is (year, month, day, hour, minute, second)."""
    flags = SpotFlags.CLOCK_NOT_SET if clock_not_set else 0
    body = _sf(spo2) + _sf(pr)
    if timestamp is not None:
        flags |= SpotFlags.TIMESTAMP
        y, mo, d, h, mi, s = timestamp
        body += (y & 0xFFFF).to_bytes(2, "little") + bytes([mo & 0xFF, d & 0xFF, h & 0xFF, mi & 0xFF, s & 0xFF])
    if meas_status is not None:
        flags |= SpotFlags.MEAS_STATUS
        body += (meas_status & 0xFFFF).to_bytes(2, "little")
    if dev_status is not None:
        flags |= SpotFlags.DEV_STATUS
        body += (dev_status & 0xFFFFFF).to_bytes(3, "little")
    if pai is not None:
        flags |= SpotFlags.PAI
        body += _sf(pai)
    return bytes([int(flags)]) + body


def encode_features(
    supported: int = 0,
    *,
    meas_status_support: int | None = None,
    dev_status_support: int | None = None,
) -> bytes:
    """Build a 0x2A60 value; bits 0/1 of ``supported`` follow the presence of the support fields."""
    supported &= 0xFFFC
    body = b""
    if meas_status_support is not None:
        supported |= 1
        body += (meas_status_support & 0xFFFF).to_bytes(2, "little")
    if dev_status_support is not None:
        supported |= 2
        body += (dev_status_support & 0xFFFFFF).to_bytes(3, "little")
    return supported.to_bytes(2, "little") + body
