"""Wellue/Viatom O2Ring and Checkme O2 (same protocol) over BLE, and the ring's night file, sans-I/O.

The ring answers only when asked: the host writes a request to the write
characteristic and the answer arrives on the notify characteristic, split over
as many notifications as the link's MTU needs.  The live reading is polled
(``realtime_request``, the transport sends it every ``POLL_PERIOD_S``); the
stored nights are files the host opens, reads block by block and closes
(:class:`NightDownload`).  A stored night file (``.dat``, the same bytes the
ViHealth app keeps) is a 40-byte header and 5-byte records, one per 4 s.

Facts relied on, and where they come from (facts only; no code or text taken):

* GATT: service ``14839ac4-7d7e-415c-9a42-167340cf2339``; the ring notifies on
  ``0734594a-a8e7-4b1a-a6b1-cd5243059a57`` and takes writes (without response)
  on ``8b00ace7-eb0b-49b0-bbe9-9aee0a26e1a3``.  Sources: MackeyStingray/o2r
  ``o2r/defines.py``; the "Wellue O2Ring / Checkme O2 Bluetooth Integration"
  note citing "Wellue O2 Product Bluetooth Communication Protocol v1.3";
  /work/shared/design/ble-oximeters.md section 4.
* Frames (little-endian): request ``AA cmd ~cmd block:u16 len:u16 data crc``;
  answer ``55 status ~status block:u16 len:u16 data crc``; the answer's second
  byte is a status (0 = done), not the command, so the host must know what it
  asked.  ``crc`` is CRC-8, polynomial 0x07 (x^8 + x^2 + x + 1), initial value
  0, no reflection, no final XOR, over every byte before it.  Sources: o2r
  ``o2r/o2pkt.py``; the integration note above; ble-oximeters.md.
* Commands: 0x03 open file (data: file name, NUL-terminated; answer data: the
  file size, u32), 0x04 read file (block field = block number; answer data:
  the next piece), 0x05 close file, 0x14 device information (answer data:
  JSON text; ``FileList`` is a comma-separated list of stored nights,
  ``CurTIME`` the ring clock as ``YYYY-MM-DD,HH:MM:SS``), 0x15 ping, 0x16 configuration (JSON), 0x17
  live reading.  Sources: o2r ``defines.py``/``o2state.py``; viatom-dev
  VTO2Lib ``VTO2Def.h`` (the same command numbers).
* Live reading (answer to 0x17, 13 data bytes): 0 SpO2 %, 1-2 pulse u16, 3-6
  step count u32, 7 battery %, 8 charging (0 no, 1 charging, 2 full), 9
  motion, 10 perfusion index in tenths of a %, 11 bit 0 = worn, 12 reserved.
  Sources: the integration note (pulse as u16); viatom-dev VTRealObject.h
  (``hr`` is an unsigned short); o2r reads the same offsets (pulse byte 1
  only, which agrees below 256).  The ring writes 0xFF both for "no finger"
  and for SpO2 below its range (< 61 %): ble-oximeters.md, oximetry.md.
* Night file (OSCAR ``SleepLib/loader_plugins/viatom_loader.cpp`` and
  ``viatom_loader.h``): bytes 0-1
  signature (3; OSCAR also accepts 5 since its Checkme O2 change), 2-3 year, 4 month, 5
  day, 6 hour, 7 minute, 8 second (the ring's local clock, no zone), 9-12 file
  size in bytes (OSCAR: 16-bit with 11-12 always 0), 13-16 recording duration
  in s (same), 17 average SpO2, 18 lowest SpO2, 19 drops >= 3 %, 20 drops >=
  4 %, 21 unknown, 22-23 time under 90 % in s, 24 number of events under 90
  %, 25 "O2 score" x 0.1, 26-39 zero.  Records: SpO2, pulse, invalid flag (0
  or 0xFF; with 0xFF SpO2 and pulse are 0xFF too), motion, vibration (0, 0x40
  or 0x80).  Records are 4 s apart; files whose duration says 2 s hold every
  record twice (OSCAR de-duplicates them, so do we); Checkme O2 files may end
  on a part record (duration / records slightly under 4).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Sequence

from drivers.protocols.common import Flag, OximeterEvent, OximeterReading, ParserStats, apply_range_rules

O2RING_SERVICE_UUID = "14839ac4-7d7e-415c-9a42-167340cf2339"
O2RING_NOTIFY_UUID = "0734594a-a8e7-4b1a-a6b1-cd5243059a57"
O2RING_WRITE_UUID = "8b00ace7-eb0b-49b0-bbe9-9aee0a26e1a3"

CMD_FILE_OPEN = 0x03
CMD_FILE_READ = 0x04
CMD_FILE_CLOSE = 0x05
CMD_INFO = 0x14
CMD_PING = 0x15
CMD_CONFIG = 0x16
CMD_REALTIME = 0x17

REQUEST_HEAD = 0xAA
ANSWER_HEAD = 0x55
FRAME_OVERHEAD = 8  # head, cmd/status, its complement, block u16, length u16, crc
MAX_DATA = 4096  # no answer we ask for is longer; a longer length field is garbage
REALTIME_LEN = 13
POLL_PERIOD_S = 1.0
NOTIFY_CHUNK = 20  # payload of one notification at the default ATT MTU (23)

INVALID = 0xFF
RECORD_INTERVAL_S = 4.0
HEADER_LEN = 40
RECORD_LEN = 5
SIGNATURES = (0x0003, 0x0005)


def _crc_table() -> tuple[int, ...]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = ((c << 1) ^ 0x07) & 0xFF if c & 0x80 else (c << 1) & 0xFF
        table.append(c)
    return tuple(table)


_CRC = _crc_table()


def crc8(data: bytes) -> int:
    """CRC-8, polynomial 0x07, initial 0 (the frames' last byte)."""
    c = 0
    for b in data:
        c = _CRC[c ^ b]
    return c


def _frame(head: int, code: int, block: int, data: bytes) -> bytes:
    body = struct.pack("<BBBHH", head, code & 0xFF, ~code & 0xFF, block & 0xFFFF, len(data)) + data
    return body + bytes([crc8(body)])


def encode_request(cmd: int, block: int = 0, data: bytes = b"") -> bytes:
    """A host request (what the collector writes)."""
    return _frame(REQUEST_HEAD, cmd, block, data)


def encode_answer(status: int, data: bytes = b"", block: int = 0) -> bytes:
    """A ring answer (what the simulator notifies); status 0 = done."""
    return _frame(ANSWER_HEAD, status, block, data)


def realtime_request() -> bytes:
    return encode_request(CMD_REALTIME)


def split_notifications(frame: bytes, chunk: int = NOTIFY_CHUNK) -> list[bytes]:
    """One answer as the notifications that carry it."""
    return [frame[i:i + chunk] for i in range(0, len(frame), chunk)] or [b""]


@dataclass(frozen=True, slots=True)
class Frame:
    """One checked frame: ``code`` is the command (requests) or the status (answers)."""

    head: int
    code: int
    block: int
    data: bytes


class FrameAssembler:
    """Bytes in any chunking -> checked frames of one head byte; never raises.

    A frame is accepted only if its code's complement and its CRC agree; on a
    mismatch the head byte is skipped and the search resumes at the next
    candidate, so garbage costs at most the bytes it occupies.
    """

    def __init__(self, head: int, stats: ParserStats) -> None:
        self.head = head
        self.stats = stats
        self._buf = bytearray()

    def push(self, data: bytes) -> list[Frame]:
        self._buf += data
        out: list[Frame] = []
        buf = self._buf
        i = 0
        while True:
            j = buf.find(self.head, i)
            if j < 0:
                if len(buf) > i:
                    self.stats.error("O2Ring: bytes outside a frame skipped", len(buf) - i)
                i = len(buf)
                break
            if j > i:
                self.stats.error("O2Ring: bytes outside a frame skipped", j - i)
            i = j
            if len(buf) - i < 7:
                break
            code, inv, block, length = buf[i + 1], buf[i + 2], buf[i + 3] | buf[i + 4] << 8, buf[i + 5] | buf[i + 6] << 8
            if code ^ inv != 0xFF or length > MAX_DATA:
                self.stats.error("O2Ring: bad frame head", 1)
                i += 1
                continue
            end = i + FRAME_OVERHEAD + length
            if len(buf) < end:
                # Still incomplete: but if a complete, checked frame starts later, this head
                # was garbage (a real answer is never interleaved with another one).
                k = self._later_frame(i + 1)
                if k is None:
                    break
                self.stats.error("O2Ring: incomplete frame overtaken by a later one", k - i)
                i = k
                continue
            if crc8(bytes(buf[i:end - 1])) != buf[end - 1]:
                self.stats.error("O2Ring: CRC mismatch", 1)
                i += 1
                continue
            out.append(Frame(self.head, code, block, bytes(buf[i + 7:end - 1])))
            i = end
        del buf[:i]
        return out

    def _later_frame(self, start: int) -> int | None:
        buf = self._buf
        k = buf.find(self.head, start)
        while k >= 0 and len(buf) - k >= FRAME_OVERHEAD:
            length = buf[k + 5] | buf[k + 6] << 8
            end = k + FRAME_OVERHEAD + length
            if (buf[k + 1] ^ buf[k + 2] == 0xFF and length <= MAX_DATA and end <= len(buf)
                    and crc8(bytes(buf[k:end - 1])) == buf[end - 1]):
                return k
            k = buf.find(self.head, k + 1)
        return None

    def reset(self) -> None:
        self._buf.clear()


# -- live readings -------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class RealtimeData:
    """The 13 data bytes of a live-reading answer, decoded."""

    spo2: int | None  # None = 0xFF/0 (no finger, or below the ring's range)
    pulse: int | None
    steps: int
    battery_pct: int
    charging: int
    motion: int
    pi_pct: float | None
    worn: bool
    raw: bytes

    @property
    def reading(self) -> OximeterReading:
        flags = 0 if self.worn else int(Flag.FINGER_OUT)
        return OximeterReading(
            spo2_pct=None if self.spo2 is None else float(self.spo2),
            pulse_bpm=None if self.pulse is None else float(self.pulse),
            flags=apply_range_rules(self.spo2, self.pulse, flags),
            status_raw=self.raw[11] | (self.raw[8] << 8),
            pai_pct=self.pi_pct,
            kind="continuous",
        )


def decode_realtime(data: bytes) -> RealtimeData:
    """13 bytes known to be a live-reading answer."""
    spo2, pulse, steps, batt, chg, motion, pi, wear = struct.unpack_from("<BHIBBBBB", data)
    return RealtimeData(
        spo2=None if spo2 in (0, INVALID) else spo2,
        pulse=None if pulse in (0, INVALID, 0xFFFF) else pulse,
        steps=steps,
        battery_pct=batt,
        charging=chg,
        motion=motion,
        pi_pct=None if pi == INVALID else pi / 10.0,
        worn=bool(wear & 1),
        raw=bytes(data[:REALTIME_LEN]),
    )


def encode_realtime(spo2: int | None, pulse: int | None, *, worn: bool = True, motion: int = 0, pi_tenths: int = 45,
                    battery_pct: int = 80, steps: int = 0) -> bytes:
    """The 13 data bytes of a live-reading answer (the codec in reverse); None writes 0xFF."""
    sp = INVALID if spo2 is None else spo2 & 0xFF
    pr = INVALID if pulse is None else pulse & 0xFFFF
    return struct.pack("<BHIBBBBBB", sp, pr, steps & 0xFFFFFFFF, battery_pct & 0xFF, 0, motion & 0xFF,
                       pi_tenths & 0xFF, 1 if worn else 0, 0)


class O2RingParser:
    """Live codec: answers to the polled 0x17 request -> one reading each, stamped on receipt.

    Only a complete, checked answer of exactly 13 data bytes with status 0 is a
    reading (``stats.frames`` counts those, so the watchdog sees a ring that
    answers nothing useful as silent); any other answer is counted as an error.
    """

    protocol = "o2ring"

    def __init__(self) -> None:
        self.stats = ParserStats()
        self._frames = FrameAssembler(ANSWER_HEAD, self.stats)

    def feed(self, t: float, characteristic: str, data: bytes) -> list[OximeterEvent]:
        uuid = characteristic.strip().lower()
        if uuid != O2RING_NOTIFY_UUID:
            self.stats.error(f"O2Ring: data on unexpected characteristic {uuid}", len(data))
            return []
        out: list[OximeterEvent] = []
        for f in self._frames.push(data):
            if f.code != 0:
                self.stats.error(f"O2Ring: the ring answered status 0x{f.code:02x}")
            elif len(f.data) != REALTIME_LEN:
                self.stats.error(f"O2Ring: an answer of {len(f.data)} bytes is not a live reading")
            else:
                self.stats.frames += 1
                out.append(decode_realtime(f.data).reading)
        return out

    def end_of_input(self) -> list[OximeterEvent]:
        """A partial answer will never be completed after a drop."""
        self._frames.reset()
        return []


# -- the night file ------------------------------------------------------------------------

class InvalidNightFile(ValueError):
    """The bytes are not an O2Ring/Checkme O2 night file; the message names the field."""


@dataclass(frozen=True, slots=True)
class NightHeader:
    """The ring's own header: start on its local clock and the firmware's own statistics."""

    signature: int
    start_local: datetime
    file_size: int
    duration_s: int
    spo2_avg: int
    spo2_min: int
    drops_3pct: int
    drops_4pct: int
    t90_s: int  # the firmware's "time under 90 %", seconds
    events_under_90: int
    o2_score: float

    def stats(self) -> dict[str, int | float]:
        return {"duration_s": self.duration_s, "spo2_avg": self.spo2_avg, "spo2_min": self.spo2_min,
                "drops_3pct": self.drops_3pct, "drops_4pct": self.drops_4pct, "t90_s": self.t90_s,
                "events_under_90": self.events_under_90, "o2_score": self.o2_score}


@dataclass(frozen=True, slots=True)
class NightRecord:
    spo2: int | None  # None = invalid (no finger, or SpO2 below the ring's range)
    pulse: int | None
    motion: int
    vibration: bool


@dataclass(frozen=True, slots=True)
class NightFile:
    header: NightHeader
    records: tuple[NightRecord, ...]
    interval_s: float  # seconds between records (4 after de-duplication)
    deduplicated: bool  # the file held every record twice (a "2 s" file)
    file_bytes: int = 0  # bytes actually present
    trailing_bytes: int = 0  # a part record at the end (ignored, counted)

    @property
    def truncated(self) -> bool:
        """Fewer bytes than the header says: the copy or download stopped early (the records present are kept)."""
        expected = self.header.file_size
        if self.deduplicated:
            expected = HEADER_LEN + 2 * (expected - HEADER_LEN)  # the size field counts distinct records
        return self.file_bytes < expected

    def record_times_local(self) -> list[datetime]:
        return [self.header.start_local + timedelta(seconds=k * self.interval_s) for k in range(len(self.records))]


def _raw_record(rec: bytes) -> tuple[int, int, int, int, int]:
    return rec[0], rec[1], rec[2], rec[3], rec[4]


def parse_night_file(raw: bytes) -> NightFile:
    """Header and records of one stored night; InvalidNightFile names what is wrong."""
    if len(raw) < HEADER_LEN + RECORD_LEN:
        raise InvalidNightFile(f"{len(raw)} bytes is too short for an O2Ring night file (40-byte header and 5-byte records)")
    sig, year, month, day, hour, minute, second = struct.unpack_from("<HHBBBBB", raw, 0)
    if sig not in SIGNATURES:
        raise InvalidNightFile(f"header signature 0x{sig:04x} is not an O2Ring/Checkme O2 night file (0x0003 or 0x0005)")
    try:
        start = datetime(year, month, day, hour, minute, second)
    except ValueError:
        raise InvalidNightFile(f"header start time {year}-{month:02d}-{day:02d} {hour:02d}:{minute:02d}:{second:02d} "
                               "is not a date") from None
    file_size, duration = struct.unpack_from("<II", raw, 9)
    avg, low, d3, d4, _unknown, t90, ev90, score = struct.unpack_from("<BBBBBHBB", raw, 17)
    header = NightHeader(sig, start, file_size, duration, avg, low, d3, d4, t90, ev90, score / 10.0)
    body = raw[HEADER_LEN:]
    n = len(body) // RECORD_LEN
    raws = [_raw_record(body[k * RECORD_LEN:(k + 1) * RECORD_LEN]) for k in range(n)]
    for k, (sp, pr, inv, _m, _v) in enumerate(raws):
        if inv not in (0, INVALID):
            raise InvalidNightFile(f"record {k + 1}: invalid-flag byte 0x{inv:02x} is neither 0x00 nor 0xff; "
                                   "not an O2Ring night file")
    dedup = False
    if duration > 0 and n >= 2 and n % 2 == 0 and round(duration / n) == 2 and all(raws[k] == raws[k + 1] for k in range(0, n, 2)):
        raws, dedup = raws[::2], True
    records = tuple(
        NightRecord(None if inv == INVALID or sp in (0, INVALID) else sp,
                    None if inv == INVALID or pr in (0, INVALID) else pr, m, bool(v & 0xC0))
        for sp, pr, inv, m, v in raws
    )
    return NightFile(header, records, RECORD_INTERVAL_S, dedup, len(raw), len(body) % RECORD_LEN)


def night_readings(f: NightFile) -> list[OximeterReading]:
    """The file's records as readings stamped with the ring's local time, for the device-memory back-fill.

    A record the ring marked invalid (no finger, or below its range: one code) is a reading
    without SpO2, so it can hold time as unusable but never count toward T90.
    """
    times = f.record_times_local()
    return [OximeterReading(
        spo2_pct=None if r.spo2 is None else float(r.spo2),
        pulse_bpm=None if r.pulse is None else float(r.pulse),
        flags=apply_range_rules(r.spo2, r.pulse, 0),
        device_time=t.isoformat(),
        kind="continuous",
    ) for r, t in zip(f.records, times)]


def encode_night_file(start_local: datetime, records: Sequence[NightRecord], *, t90_s: int | None = None,
                      signature: int = 0x0003) -> bytes:
    """A night file as the ring writes it (the simulator's); header statistics from the records.

    ``t90_s`` defaults to the firmware-style count: 4 s for every valid record below 90 %.
    """
    valid = [r.spo2 for r in records if r.spo2 is not None]
    below = sum(1 for v in valid if v < 90)
    t90 = below * int(RECORD_INTERVAL_S) if t90_s is None else t90_s
    duration = int(len(records) * RECORD_INTERVAL_S)
    size = HEADER_LEN + RECORD_LEN * len(records)
    head = struct.pack("<HHBBBBBIIBBBBBHBB", signature, start_local.year, start_local.month, start_local.day,
                       start_local.hour, start_local.minute, start_local.second, size, duration,
                       round(sum(valid) / len(valid)) if valid else 0, min(valid) if valid else 0, 0, 0, 0,
                       min(t90, 0xFFFF), 0, 0)
    head += bytes(HEADER_LEN - len(head))
    body = b"".join(
        bytes([INVALID, INVALID, INVALID, r.motion & 0xFF, 0x80 if r.vibration else 0]) if r.spo2 is None else
        bytes([r.spo2 & 0xFF, INVALID if r.pulse is None else r.pulse & 0xFF, 0, r.motion & 0xFF, 0x80 if r.vibration else 0])
        for r in records
    )
    return head + body


# -- downloading stored nights ---------------------------------------------------------------

def parse_info(info_answer: bytes) -> dict[str, object]:
    """A device-information answer (JSON text, NUL-padded) as a dict; {} when it is not JSON."""
    text = info_answer.decode("ascii", "replace").rstrip(" \t\r\n\x00")
    try:
        info = json.loads(text)
    except ValueError:
        return {}
    return info if isinstance(info, dict) else {}


def parse_file_list(info_answer: bytes) -> list[str]:
    """The stored nights named in a device-information answer (``FileList``, comma-separated)."""
    names = parse_info(info_answer).get("FileList", "")
    return [n for n in str(names).split(",") if n.strip()]


def parse_ring_clock(info_answer: bytes) -> datetime | None:
    """The ring's clock (``CurTIME``, ``YYYY-MM-DD,HH:MM:SS``, local, no zone) from a device-information answer.

    Read with the host UTC of the answer's arrival, it gives the measured offset
    that maps the night file's local times to host UTC.
    """
    value = parse_info(info_answer).get("CurTIME")
    try:
        return datetime.strptime(str(value), "%Y-%m-%d,%H:%M:%S") if value is not None else None
    except ValueError:
        return None


class DownloadError(Exception):
    """The ring refused or broke off a download; the message says where."""


class NightDownload:
    """Sans-I/O download of every stored night: requests out, answers in.

    ``start()`` gives the first request; every notification goes to
    ``feed()``, which returns the requests to write next.  When ``done`` is
    true, ``files`` maps each stored night's name to its bytes (in the ring's
    order).  A refused open or read raises :class:`DownloadError`; the
    transport decides whether to retry.  ``wanted`` limits it to some names.
    """

    def __init__(self, wanted: Sequence[str] | None = None) -> None:
        self.stats = ParserStats()
        self._frames = FrameAssembler(ANSWER_HEAD, self.stats)
        self.wanted = None if wanted is None else list(wanted)
        self.files: dict[str, bytes] = {}
        self.ring_clock: datetime | None = None  # the ring's CurTIME, when its information answer had one
        self.done = False
        self._queue: list[str] = []
        self._state = "idle"
        self._name: str | None = None
        self._size = 0
        self._data = bytearray()
        self._block = 0

    def start(self) -> bytes:
        self._state = "info"
        return encode_request(CMD_INFO)

    def feed(self, data: bytes) -> list[bytes]:
        out: list[bytes] = []
        for f in self._frames.push(data):
            out += self._answer(f)
        return out

    def _answer(self, f: Frame) -> list[bytes]:
        state = self._state
        if state == "info":
            if f.code != 0:
                raise DownloadError(f"the ring refused the device-information request (status 0x{f.code:02x})")
            names = parse_file_list(f.data)
            self.ring_clock = parse_ring_clock(f.data)
            self._queue = [n for n in names if self.wanted is None or n in self.wanted]
            return self._next_file()
        if state == "open":
            if f.code != 0 or len(f.data) < 4:
                raise DownloadError(f"the ring refused to open {self._name!r} (status 0x{f.code:02x})")
            self._size = struct.unpack_from("<I", f.data)[0]
            self._data, self._block = bytearray(), 0
            if self._size == 0:
                return self._close()
            self._state = "read"
            return [encode_request(CMD_FILE_READ, block=0)]
        if state == "read":
            if f.code != 0 or not f.data:
                raise DownloadError(f"the ring broke off {self._name!r} at block {self._block} (status 0x{f.code:02x})")
            self._data += f.data
            self._block += 1
            if len(self._data) < self._size:
                return [encode_request(CMD_FILE_READ, block=self._block)]
            return self._close()
        if state == "close":
            assert self._name is not None
            self.files[self._name] = bytes(self._data[:self._size])
            return self._next_file()
        self.stats.error("O2Ring: an answer nobody asked for")
        return []

    def _close(self) -> list[bytes]:
        self._state = "close"
        return [encode_request(CMD_FILE_CLOSE)]

    def _next_file(self) -> list[bytes]:
        if not self._queue:
            self._state, self.done = "done", True
            return []
        self._name = self._queue.pop(0)
        self._state = "open"
        return [encode_request(CMD_FILE_OPEN, data=self._name.encode("ascii", "replace") + b"\x00")]
