"""BerryMed (BM1000 family and white-label clones) 5-byte stream protocol, sans-I/O.

The device streams ~100 packets per second over a "transparent UART"
characteristic.  Notification boundaries mean nothing: one notification may hold
several packets or part of one, so the parser keeps a byte buffer.  Byte 0 of a
packet has bit 7 set, bytes 1-4 have it clear; that is the only framing, so the
parser resynchronises on it (skipped bytes are counted).

    0: bits 0-3 signal strength, 4 no signal, 5 probe unplugged, 6 pulse beep, 7 sync
    1: bits 0-6 pleth (0 = invalid)
    2: bits 0-3 bar graph, 4 no finger, 5 searching for pulse, 6 pulse-rate bit 7
    3: bits 0-6 pulse-rate bits 0-6 (PR 255 = invalid)
    4: bits 0-6 SpO2 (127 = invalid)

``status_raw`` of a reading is ``(byte0 << 8) | byte2`` verbatim.

Storage wants one reading per second, not 100: the codec reduces the stream
itself (:class:`OneHzReducer`, see its docstring for the rule and why), so
``feed`` returns one :class:`Sample` per host second and ``feed_packets`` the raw
packets (with the pleth) for whoever wants them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from drivers.protocols.common import Flag, OximeterEvent, OximeterReading, ParserStats, Sample, apply_range_rules

BERRYMED_SERVICE_UUID = "49535343-fe7d-4ae5-8fa9-9fafd205e455"
BERRYMED_NOTIFY_UUID = "49535343-1e4d-4bd9-ba61-23c647249616"
BERRYMED_WRITE_UUID = "49535343-8841-43f4-a8d4-ecbe34729bb3"

PACKET_LEN = 5
PR_INVALID = 255
SPO2_INVALID = 127


@dataclass(frozen=True, slots=True)
class BerryMedPacket:
    """One decoded 5-byte packet, including the pleth sample storage may keep."""

    signal_strength: int
    no_signal: bool
    probe_unplugged: bool
    pulse_beep: bool
    pleth: int | None  # None when the device sends 0 (invalid)
    bar_graph: int
    no_finger: bool
    searching: bool
    pulse: int | None  # None = 255
    spo2: int | None  # None = 127
    raw: bytes

    @property
    def flags(self) -> int:
        """Normalised flag bits (plain int, as apply_range_rules returns them)."""
        flags = Flag.NONE
        if self.no_finger:
            flags |= Flag.FINGER_OUT
        if self.searching:
            flags |= Flag.SEARCHING
        if self.probe_unplugged:
            flags |= Flag.PROBE_UNPLUGGED
        if self.no_signal:
            # BerryMed's protocol sheet: byte 0 bit 4 = "no signal": the value shown is not a
            # measurement, so the reading is invalid (not merely weak) and never counts for T90.
            flags |= Flag.WEAK_SIGNAL | Flag.DEVICE_INVALID
        return apply_range_rules(self.spo2, self.pulse, flags)

    @property
    def reading(self) -> OximeterReading:
        return OximeterReading(
            spo2_pct=None if self.spo2 is None else float(self.spo2),
            pulse_bpm=None if self.pulse is None else float(self.pulse),
            flags=self.flags,
            status_raw=(self.raw[0] << 8) | self.raw[2],
            kind="continuous",
        )


def decode_packet(p: bytes) -> BerryMedPacket:
    """Decode 5 bytes already known to be framed (sync bit only on byte 0)."""
    b0, b1, b2, b3, b4 = p[0], p[1], p[2], p[3], p[4]
    pulse = (((b2 >> 6) & 1) << 7) | (b3 & 0x7F)
    spo2 = b4 & 0x7F
    pleth = b1 & 0x7F
    return BerryMedPacket(
        signal_strength=b0 & 0x0F,
        no_signal=bool(b0 & 0x10),
        probe_unplugged=bool(b0 & 0x20),
        pulse_beep=bool(b0 & 0x40),
        pleth=pleth or None,
        bar_graph=b2 & 0x0F,
        no_finger=bool(b2 & 0x10),
        searching=bool(b2 & 0x20),
        pulse=None if pulse == PR_INVALID else pulse,
        spo2=None if spo2 == SPO2_INVALID else spo2,
        raw=bytes(p[:5]),
    )


class BerryMedParser:
    """Stream codec: bytes in any chunking -> one :class:`Sample` per host second.

    ``feed`` (the OximeterParser interface) decodes the packets and reduces them to
    one reading per second; a second is emitted when a packet of a later second
    arrives, or by ``end_of_input``.  ``feed_packets`` returns every
    :class:`BerryMedPacket` (they also carry the pleth sample), unreduced.
    """

    protocol = "berrymed"

    def __init__(self) -> None:
        self.stats = ParserStats()
        self._buf = bytearray()
        self._reducer = OneHzReducer()

    def feed(self, t: float, characteristic: str, data: bytes) -> list[OximeterEvent]:
        out: list[OximeterEvent] = []
        for p in self.feed_packets(characteristic, data):
            out += self._reducer.push(t, p.reading)
        return out

    def end_of_input(self) -> list[OximeterEvent]:
        """Emit the open second and drop a partial packet (its tail will never come after a drop)."""
        self._buf.clear()
        return list(self._reducer.flush())

    def feed_packets(self, characteristic: str, data: bytes) -> list[BerryMedPacket]:
        uuid = characteristic.strip().lower()
        if uuid != BERRYMED_NOTIFY_UUID:
            self.stats.error(f"BerryMed: data on unexpected characteristic {uuid}", len(data))
            return []
        self._buf += data
        return self._drain()

    def reset(self) -> None:
        """Drop a partial packet (call after a reconnect: its tail will never come)."""
        self._buf.clear()

    def _drain(self) -> list[BerryMedPacket]:
        out: list[BerryMedPacket] = []
        buf = self._buf
        i = 0
        n = len(buf)
        while i < n:
            if not buf[i] & 0x80:
                j = i
                while j < n and not buf[j] & 0x80:
                    j += 1
                self.stats.error("BerryMed: bytes before a sync byte skipped", j - i)
                i = j
                continue
            if n - i < PACKET_LEN:
                # Any sync byte inside the partial tail means the head is broken: skip it now
                # so the buffer never holds more than one partial packet.
                k = next((k for k in range(i + 1, n) if buf[k] & 0x80), None)
                if k is None:
                    break
                self.stats.error("BerryMed: packet cut short by a sync byte", k - i)
                i = k
                continue
            k = next((k for k in range(i + 1, i + PACKET_LEN) if buf[k] & 0x80), None)
            if k is not None:
                self.stats.error("BerryMed: packet cut short by a sync byte", k - i)
                i = k
                continue
            out.append(decode_packet(bytes(buf[i:i + PACKET_LEN])))
            self.stats.frames += 1
            i += PACKET_LEN
        del buf[:i]
        return out


def encode_packet(
    spo2: int | None,
    pulse: int | None,
    *,
    pleth: int = 50,
    signal_strength: int = 6,
    bar_graph: int = 5,
    no_signal: bool = False,
    probe_unplugged: bool = False,
    pulse_beep: bool = False,
    no_finger: bool = False,
    searching: bool = False,
) -> bytes:
    """Build one 5-byte packet (the codec in reverse).  None encodes the invalid codes."""
    pr = PR_INVALID if pulse is None else pulse & 0xFF
    sp = SPO2_INVALID if spo2 is None else spo2 & 0x7F
    b0 = 0x80 | (signal_strength & 0x0F) | (0x10 * no_signal) | (0x20 * probe_unplugged) | (0x40 * pulse_beep)
    b2 = (bar_graph & 0x0F) | (0x10 * no_finger) | (0x20 * searching) | (0x40 * ((pr >> 7) & 1))
    return bytes([b0, pleth & 0x7F, b2, pr & 0x7F, sp])


# Flags that describe the device's state during the second (not the chosen value).
_CONDITION_FLAGS = (
    Flag.FINGER_OUT
    | Flag.SEARCHING
    | Flag.PROBE_UNPLUGGED
    | Flag.WEAK_SIGNAL
    | Flag.QUESTIONABLE
    | Flag.DEVICE_INVALID
    | Flag.DEMO_OR_TEST
    | Flag.LOW_BATTERY
    | Flag.SENSOR_DISPLACED
)


_CONDITION = int(_CONDITION_FLAGS)


class OneHzReducer:
    """Reduce the ~100 Hz packet stream to one stored reading per whole host second.

    Rule: for each host second ``floor(t_host)``, keep the LAST packet received in
    that second, stamped at that packet's host time; its flags are OR-ed with the
    state flags (finger out, searching, probe unplugged, weak signal, ...) of every
    packet in the same second.  Value-derived flags (missing, out of range) come
    from the kept packet only, so they always describe the stored value.

    Why, for T90: the device's SpO2 is already its own averaged display value,
    repeated across packets, so taking one packet keeps the integer the device
    reported (a mean of 89 and 90 would invent 89.5 and move samples across the
    ``< 90`` line).  The OR makes a second that saw any invalidating state
    invalid: the value then is not counted in numerator or denominator, which
    costs at most a second of analysed time but never turns a finger-removal
    artefact into a desaturation.  The alternative "last valid packet" would keep
    more seconds but would store values adjacent to artefacts as valid.

    Packets whose host time goes backwards are put in the current second (the
    reducer never reorders).  Pure: no clock, no I/O.
    """

    def __init__(self) -> None:
        self._second: int | None = None
        self._last: tuple[float, OximeterReading] | None = None
        self._state = 0
        self.packets_in_second = 0

    def push(self, t_host: float, reading: OximeterReading) -> list[Sample]:
        """Add one packet's reading; returns the sample of a second that just closed, if any."""
        sec = math.floor(t_host)
        out: list[Sample] = []
        if self._second is not None and sec > self._second:
            out = self.flush()
        if self._second is None:
            self._second = sec
        self._last = (t_host, reading)
        self._state |= reading.flags & _CONDITION
        self.packets_in_second += 1
        return out

    def flush(self) -> list[Sample]:
        """Emit the open second (call at the end of a recording or on disconnect)."""
        if self._last is None:
            return []
        t, r = self._last
        flags = r.flags | self._state
        out = r if flags == r.flags else _with_flags(r, flags)
        self._second, self._last, self._state = None, None, 0
        self.packets_in_second = 0
        return [Sample(t, out)]


def _with_flags(r: OximeterReading, flags: int) -> OximeterReading:
    return OximeterReading(
        spo2_pct=r.spo2_pct,
        pulse_bpm=r.pulse_bpm,
        flags=flags,
        status_raw=r.status_raw,
        pai_pct=r.pai_pct,
        device_time=r.device_time,
        counter=r.counter,
        kind=r.kind,
    )
