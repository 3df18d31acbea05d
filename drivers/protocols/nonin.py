"""Nonin Oximetry Service (3150 WristOx2 BLE, 3230 Onyx BLE), sans-I/O.

One notification per second carries one 10-byte big-endian frame (layout from
Nonin's published spec 113142, cross-checked against a public decoder):

    0 length (10)  1 status  2 battery x0.1 V  3-4 PAI x0.01 %  5-6 counter
    7 SpO2 % (127 = missing)  8-9 pulse rate (511 = missing)

A notification is one frame: one whose length byte disagrees with its size is
counted and dropped, and the next notification decodes.  A frame longer than 10
bytes is accepted only when its length byte says so (fields past byte 9 ignored).

The packet counter should rise by one per frame; a forward jump is a
:class:`LostPackets` event with the missed count (also totalled in
``stats.lost_packets`` for status).  A backward step (or a jump of more than half
the 16-bit range) is taken as a device restart, not loss: a :class:`CounterReset`
event (counted in ``counter_resets``); a repeated counter is counted in
``duplicates`` and its frame still stored (the device sent it).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from drivers.protocols.common import (
    CounterReset,
    Flag,
    LostPackets,
    OximeterEvent,
    OximeterReading,
    ParserStats,
    apply_range_rules,
)

NONIN_SERVICE_UUID = "46a970e0-0d5f-11e2-8b5e-0002a5d5c51b"
NONIN_CONTINUOUS_UUID = "0aad7ea0-0d60-11e2-8e3c-0002a5d5c51b"  # notify, 1 Hz
NONIN_CONTROL_POINT_UUID = "1447af80-0d60-11e2-88b6-0002a5d5c51b"

FRAME_LEN = 10
SPO2_MISSING = 127
PR_MISSING = 511


class NoninStatus(enum.IntFlag):
    WEAK_SIGNAL = 1 << 1
    SMARTPOINT = 1 << 2  # reading passed Nonin's SmartPoint quality algorithm
    SEARCHING = 1 << 3
    SENSOR_ON = 1 << 4  # sensor correctly on the finger
    LOW_BATTERY = 1 << 5
    ENCRYPTED = 1 << 6


# What a healthy bonded device sends (the design's first vector, status 0x54).
STATUS_OK = NoninStatus.SENSOR_ON | NoninStatus.SMARTPOINT | NoninStatus.ENCRYPTED


@dataclass(frozen=True, slots=True)
class NoninFrame:
    status: int
    battery_v: float
    pai_pct: float
    counter: int
    spo2: int | None  # None = device's missing code
    pulse: int | None

    @property
    def reading(self) -> OximeterReading:
        return OximeterReading(
            spo2_pct=None if self.spo2 is None else float(self.spo2),
            pulse_bpm=None if self.pulse is None else float(self.pulse),
            flags=apply_range_rules(self.spo2, self.pulse, status_to_flags(self.status)),
            status_raw=self.status,
            pai_pct=self.pai_pct,
            counter=self.counter,
            kind="continuous",
        )


def status_to_flags(status: int) -> Flag:
    """Sensor off the finger -> FINGER_OUT; searching -> SEARCHING (both invalidate)."""
    flags = Flag.NONE
    if not status & NoninStatus.SENSOR_ON:
        flags |= Flag.FINGER_OUT
    if status & NoninStatus.SEARCHING:
        flags |= Flag.SEARCHING
    if status & NoninStatus.WEAK_SIGNAL:
        flags |= Flag.WEAK_SIGNAL
    if status & NoninStatus.LOW_BATTERY:
        flags |= Flag.LOW_BATTERY
    return flags


class NoninFrameError(ValueError):
    """A malformed frame (used inside the codec; the parser counts it)."""


def decode_frame(data: bytes) -> NoninFrame:
    if len(data) < FRAME_LEN or data[0] != len(data):
        raise NoninFrameError(
            f"Nonin: length byte {data[0] if data else None} but {len(data)} bytes (need {FRAME_LEN})"
        )
    spo2 = data[7]
    pulse = int.from_bytes(data[8:10], "big")
    return NoninFrame(
        status=data[1],
        battery_v=data[2] / 10,
        pai_pct=int.from_bytes(data[3:5], "big") / 100,
        counter=int.from_bytes(data[5:7], "big"),
        spo2=None if spo2 == SPO2_MISSING else spo2,
        pulse=None if pulse == PR_MISSING else pulse,
    )


class NoninParser:
    """Sans-I/O codec for the Nonin continuous-oximetry characteristic."""

    protocol = "nonin"

    def __init__(self) -> None:
        self.stats = ParserStats()
        self.last_counter: int | None = None
        self.counter_resets = 0
        self.duplicates = 0
        self.battery_v: float | None = None
        self.low_battery = False

    def feed(self, t: float, characteristic: str, data: bytes) -> list[OximeterEvent]:
        uuid = characteristic.strip().lower()
        data = bytes(data)
        if uuid != NONIN_CONTINUOUS_UUID:
            self.stats.error(f"Nonin: data on unexpected characteristic {uuid}", len(data))
            return []
        try:
            frame = decode_frame(data)
        except NoninFrameError as exc:
            self.stats.error(str(exc), len(data))
            return []
        self.stats.frames += 1
        self.battery_v = frame.battery_v
        self.low_battery = bool(frame.status & NoninStatus.LOW_BATTERY)
        counter_event = self._track_counter(t, frame.counter)
        reading = frame.reading
        return [reading] if counter_event is None else [counter_event, reading]

    def end_of_input(self) -> list[OximeterEvent]:
        return []  # one notification is one frame: nothing is held back

    def _track_counter(self, t: float, counter: int) -> OximeterEvent | None:
        last, self.last_counter = self.last_counter, counter
        if last is None:
            return None
        step = (counter - last) & 0xFFFF
        if step == 1:
            return None
        if step == 0:
            self.duplicates += 1
            return None
        if step > 0x8000:
            self.counter_resets += 1
            return CounterReset(t, counter)
        self.stats.lost_packets += step - 1
        return LostPackets(t, step - 1)


def encode_frame(
    spo2: int | None,
    pr: int | None,
    *,
    counter: int,
    status: int = STATUS_OK,
    battery_v: float = 3.0,
    pai: float = 0.0,
) -> bytes:
    """Build a 10-byte frame (the codec in reverse).  None encodes the missing codes."""
    return bytes(
        [FRAME_LEN, status & 0xFF, max(0, min(255, round(battery_v * 10)))]
    ) + (
        max(0, min(0xFFFF, round(pai * 100))).to_bytes(2, "big")
        + (counter & 0xFFFF).to_bytes(2, "big")
        + bytes([SPO2_MISSING if spo2 is None else spo2 & 0xFF])
        + ((PR_MISSING if pr is None else pr) & 0xFFFF).to_bytes(2, "big")
    )
