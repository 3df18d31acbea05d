"""Types shared by every oximeter codec.

A codec turns the bytes of one device, stamped with the host time they arrived,
into frozen events (:data:`OximeterEvent`): an :class:`OximeterReading` for a
reading received at that time, a :class:`Sample` for a reading that stands for
another host time (BerryMed's one reading a second is the last packet of that
second), :class:`LostPackets` when the device's packet counter jumps,
:class:`RacpReply` for a control-point answer, :class:`PlxFeatures` for what a
device says it supports.  A bare reading costs nothing per sample: the codec may
hand out one frozen object for every copy of a frame.  It never raises on bad input: it counts the error in
:class:`ParserStats` and resynchronises.  The normalised ``flags`` bitmask lets
storage and analysis treat all devices alike, while ``status_raw`` keeps the
device's own bits verbatim.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Iterable, NamedTuple, Protocol, Union

# Physiological plausibility limits (oximetry.md, "What counts as a valid sample").  Below SPO2_MIN_PCT a
# device-valid reading still counts (as below 90 %) and is flagged DEEP_DESATURATION for review.
SPO2_MIN_PCT = 50.0
SPO2_MAX_PCT = 100.0
PULSE_MIN_BPM = 20.0
PULSE_MAX_BPM = 250.0


class Flag(enum.IntFlag):
    """Normalised reading flags, stored as an integer column (bit meanings are stable)."""

    NONE = 0
    FINGER_OUT = 1 << 0  # sensor not on the finger / unconnected to user
    SEARCHING = 1 << 1  # searching for pulse, signal analysis ongoing
    PROBE_UNPLUGGED = 1 << 2  # sensor disconnected from the device
    SPO2_MISSING = 1 << 3  # no SpO2 value (missing code, NaN, NRes, 0)
    PULSE_MISSING = 1 << 4  # no pulse value
    SPO2_OUT_OF_RANGE = 1 << 5  # value above 100 or negative (below 50 is DEEP_DESATURATION, still counted)
    PULSE_OUT_OF_RANGE = 1 << 6  # value outside 20..250 (invalidates the pulse only)
    WEAK_SIGNAL = 1 << 7  # weak / poor / inadequate signal, low perfusion
    QUESTIONABLE = 1 << 8  # device says questionable measurement (counted, flagged)
    DEVICE_INVALID = 1 << 9  # device says invalid / unavailable / malfunction
    DEMO_OR_TEST = 1 << 10  # demonstration or testing data: never counts for a subject
    FROM_STORAGE = 1 << 11  # back-filled from device memory
    LOW_BATTERY = 1 << 12
    SENSOR_DISPLACED = 1 << 13
    DEVICE_CLOCK_NOT_SET = 1 << 14
    DEEP_DESATURATION = 1 << 15  # device-valid SpO2 below 50 %: counts as below 90 %, raises a review event
    PROVISIONAL_ESTIMATE = 1 << 16  # PLX early estimate / signal analysis ongoing (counted; variant excludes it)
    BACKFILL_OVERLAP = 1 << 17  # a device-memory record on time already covered: kept, never counted twice
    BACKFILL_OFF_GRID = 1 << 18  # a device-memory record whose mapped time is off the live grid (clock drift)



def flag_names(flags: int) -> str:
    """The names of the set bits, ``|``-joined in bit order (the exports' ``flag_names`` column)."""
    return "|".join(f.name for f in Flag if f and f.name and f in Flag(flags))


# Flags that make a sample unusable for SpO2 analysis (T90 numerator and denominator).
INVALIDATING = (
    Flag.FINGER_OUT
    | Flag.SEARCHING
    | Flag.PROBE_UNPLUGGED
    | Flag.SPO2_MISSING
    | Flag.SPO2_OUT_OF_RANGE
    | Flag.DEVICE_INVALID
    | Flag.DEMO_OR_TEST
    | Flag.SENSOR_DISPLACED
    | Flag.BACKFILL_OVERLAP
)

# Plain-int copies for the per-sample hot path (IntFlag arithmetic is ~20x slower).
_INVALIDATING = int(INVALIDATING)
_PULSE_INVALIDATING = int(
    Flag.PULSE_MISSING | Flag.PULSE_OUT_OF_RANGE | Flag.FINGER_OUT | Flag.PROBE_UNPLUGGED | Flag.DEVICE_INVALID | Flag.DEMO_OR_TEST
)
_SPO2_MISSING, _SPO2_OUT_OF_RANGE = int(Flag.SPO2_MISSING), int(Flag.SPO2_OUT_OF_RANGE)
_DEEP_DESATURATION = int(Flag.DEEP_DESATURATION)
_PULSE_MISSING, _PULSE_OUT_OF_RANGE = int(Flag.PULSE_MISSING), int(Flag.PULSE_OUT_OF_RANGE)


@dataclass(frozen=True, slots=True)
class OximeterReading:
    """One decoded SpO2/pulse reading (the values; :class:`Sample` adds the host time).

    ``spo2_pct``/``pulse_bpm`` are ``None`` when the device sent its "missing"
    code.  ``valid`` is the single answer analysis needs: may this SpO2 value
    count toward T90?  Pulse validity is separate (``pulse_valid``).  Frozen, so a
    codec may hand out the same object for every identical frame.
    """

    spo2_pct: float | None
    pulse_bpm: float | None
    # Flag bits as a plain int: codecs combine them with int arithmetic (IntFlag ops are slow on
    # the per-sample path) and apply_range_rules returns int; Flag(reading.flags) names them.
    flags: int = Flag.NONE
    status_raw: int | None = None  # the device's own status bits, verbatim
    pai_pct: float | None = None  # perfusion / pulse amplitude index, %
    device_time: str | None = None  # device clock as ISO-8601 without zone (device local)
    counter: int | None = None  # device packet counter, when it has one
    kind: str = "continuous"  # "continuous" or "spot_check"

    @property
    def valid(self) -> bool:
        return self.spo2_pct is not None and not (int(self.flags) & _INVALIDATING)

    @property
    def pulse_valid(self) -> bool:
        return self.pulse_bpm is not None and not (int(self.flags) & _PULSE_INVALIDATING)


def apply_range_rules(spo2: float | None, pulse: float | None, flags: int) -> int:
    """Add the project's plausibility flags (shared by every codec); returns plain int bits.

    SpO2 == 0 is a dropout (missing), never a desaturation.  A value the device gives
    between 0 and 50 % is below the range oximeters are accurate in, but it is below
    90 % whatever its accuracy (oximetry.md): it stays valid, counts as below 90 % in
    numerator and denominator, and carries DEEP_DESATURATION so the night is reviewed.
    Dropping it, as a plain range rule would, could only lower T90.
    """
    flags = int(flags)
    if spo2 is None or spo2 == 0:
        flags |= _SPO2_MISSING
    elif spo2 < 0 or spo2 > SPO2_MAX_PCT:
        flags |= _SPO2_OUT_OF_RANGE
    elif spo2 < SPO2_MIN_PCT:
        flags |= _DEEP_DESATURATION
    if pulse is None or pulse == 0:
        flags |= _PULSE_MISSING
    elif not (PULSE_MIN_BPM <= pulse <= PULSE_MAX_BPM):
        flags |= _PULSE_OUT_OF_RANGE
    return flags


class Sample(NamedTuple):
    """A reading with the host time (UTC epoch seconds) it stands for, when that is not the feed's.

    BerryMed's codec emits one per second, stamped with the receipt time of the
    packet it kept for that second.
    """

    t: float
    reading: OximeterReading


@dataclass(frozen=True, slots=True)
class LostPackets:
    """The device's packet counter jumped: ``count`` frames never arrived before the one at ``t``."""

    t: float
    count: int


@dataclass(frozen=True, slots=True)
class CounterReset:
    """The packet counter stepped back (device restart): not a loss, but worth a note."""

    t: float
    counter: int


class RacpOpcode(enum.IntEnum):
    REPORT_RECORDS = 0x01
    DELETE_RECORDS = 0x02
    ABORT = 0x03
    REPORT_COUNT = 0x04
    COUNT_RESPONSE = 0x05
    RESPONSE_CODE = 0x06


class RacpCode(enum.IntEnum):
    SUCCESS = 0x01
    OPCODE_NOT_SUPPORTED = 0x02
    INVALID_OPERATOR = 0x03
    OPERATOR_NOT_SUPPORTED = 0x04
    INVALID_OPERAND = 0x05
    NO_RECORDS = 0x06
    ABORT_UNSUCCESSFUL = 0x07
    PROCEDURE_NOT_COMPLETED = 0x08
    OPERAND_NOT_SUPPORTED = 0x09


@dataclass(frozen=True, slots=True)
class RacpReply:
    """A Record Access Control Point indication: a record count or a response code to a request."""

    t: float
    count: int | None = None  # set for "number of stored records" (opcode 0x05)
    request_opcode: int | None = None  # set for a response code (opcode 0x06)
    code: int | None = None

    @property
    def ok(self) -> bool:
        return self.count is not None or self.code == RacpCode.SUCCESS

    @property
    def no_records(self) -> bool:
        return self.code == RacpCode.NO_RECORDS

    @property
    def done(self) -> bool:
        """A response code ends the procedure it answers (records, if any, came before it)."""
        return self.code is not None


@dataclass(frozen=True, slots=True)
class PlxFeatures:
    """PLX Features (0x2A60).  The device-and-sensor-status support field is 24 bits wide."""

    supported: int
    meas_status_support: int | None = None
    dev_status_support: int | None = None

    @property
    def has_storage(self) -> bool:
        """The device keeps spot-check records that RACP can back-fill."""
        return bool(self.supported & (1 << 2))

    @property
    def has_spot_timestamp(self) -> bool:
        return bool(self.supported & (1 << 3))

    @property
    def has_fast(self) -> bool:
        return bool(self.supported & (1 << 4))

    @property
    def has_slow(self) -> bool:
        return bool(self.supported & (1 << 5))

    @property
    def has_pai(self) -> bool:
        return bool(self.supported & (1 << 6))

    @property
    def multiple_bonds(self) -> bool:
        return bool(self.supported & (1 << 7))


@dataclass(frozen=True, slots=True)
class DeviceClock:
    """The device's own clock read at host time ``t``: ``device_s`` is its local wall time as if it were UTC epoch
    seconds (devices keep no zone), so ``t - device_s`` is the offset that maps a device stamp to host UTC."""

    t: float
    device_s: float


OximeterEvent = Union[OximeterReading, Sample, LostPackets, CounterReset, RacpReply, PlxFeatures, DeviceClock]


@dataclass(slots=True)
class ParserStats:
    """Counters every codec keeps; exposed in status and the closing report."""

    frames: int = 0  # well-formed frames decoded
    errors: int = 0  # malformed frames / bytes skipped while resyncing
    bytes_skipped: int = 0
    lost_packets: int = 0  # counter jumps (devices with a packet counter)
    last_error: str | None = None

    def error(self, why: str, skipped: int = 0) -> None:
        self.errors += 1
        self.bytes_skipped += skipped
        self.last_error = why


class OximeterParser(Protocol):
    """What the collector needs from a codec: stamped bytes of one characteristic in, events out."""

    stats: ParserStats

    def feed(self, t: float, characteristic: str, data: bytes) -> list[OximeterEvent]:
        """Decode one notification (or stream chunk) received at host time ``t``; never raises."""
        ...

    def end_of_input(self) -> list[OximeterEvent]:
        """The link dropped or the recording ends: emit what is held back, drop partial frames."""
        ...


def feed_many(parser: OximeterParser, characteristic: str,
              stamped: Iterable[tuple[float, bytes]]) -> list[tuple[float, OximeterEvent]]:
    """Decode many notifications of one characteristic: ``(t, event)`` pairs in order.

    A codec with its own ``feed_many`` (PLX) decodes the batch in one call; any other is fed
    frame by frame, which gives the same events by definition.
    """
    own = getattr(parser, "feed_many", None)
    if own is not None:
        return own(characteristic, stamped)  # type: ignore[no-any-return]
    out: list[tuple[float, OximeterEvent]] = []
    for t, data in stamped:
        out.extend((t, ev) for ev in parser.feed(t, characteristic, data))
    return out


@dataclass(frozen=True, slots=True)
class DeviceProfile:
    """How to talk to one family of oximeters over GATT (used by the BLE transport)."""

    protocol: str  # "plx" | "nonin" | "berrymed" | "o2ring"
    service_uuid: str
    notify_uuids: tuple[str, ...]  # characteristics to subscribe to
    expected_period_s: float  # nominal interval between notifications carrying readings
    read_uuids: tuple[str, ...] = ()  # characteristics to read once after connect (features, info)
    start_writes: tuple[tuple[str, bytes], ...] = field(default=())  # (uuid, payload) after subscribing
    pair: bool = False  # the device expects bonding: pair on connect when the stack is not paired yet
    # A polled device answers only when asked: (uuid, request, period_s) written while connected.
    poll: tuple[str, bytes, float] | None = None
    # The device stores whole nights in this import format, to download after the live night.
    night_file_format: str | None = None
