"""O2Ring / Checkme O2 codec: frame vectors, the live reading, the night file, download, and fuzzing."""

from __future__ import annotations

import asyncio
import struct
from datetime import datetime

import pytest
from bleak import BleakClient
from hypothesis import given, settings
from hypothesis import strategies as st

from collector.clock import VirtualClock
from drivers.ble.o2ring_download import RingClockReading, download_nights
from drivers.protocols import o2ring
from drivers.protocols.common import Flag, OximeterReading
from drivers.protocols.o2ring import (
    O2RING_NOTIFY_UUID,
    DownloadError,
    InvalidNightFile,
    NightDownload,
    NightRecord,
    O2RingParser,
    crc8,
    decode_realtime,
    encode_answer,
    encode_night_file,
    encode_realtime,
    encode_request,
    parse_night_file,
    split_notifications,
)
from drivers.protocols.registry import guess_protocol, make_parser, profile
from simulators.ble_backend import SimulatedAir
from simulators.oximeter import SimulatedOximeter
from simulators.scenario import FINGER_OUT, Interval
from conftest import T0, scenario

FUZZ = settings(max_examples=300, deadline=None)


# --- framing --------------------------------------------------------------------------------

def test_crc8_is_polynomial_0x07_with_zero_start():
    assert crc8(b"123456789") == 0xF4  # the catalogued check value of CRC-8 (poly 0x07, init 0)
    assert crc8(b"") == 0


def test_request_vectors():
    # AA cmd ~cmd block(u16) len(u16) data crc8
    assert encode_request(0x14).hex(" ") == "aa 14 eb 00 00 00 00 c6"  # device information
    assert o2ring.realtime_request().hex(" ") == "aa 17 e8 00 00 00 00 1b"  # live reading
    req = encode_request(o2ring.CMD_FILE_READ, block=0x0102)
    assert req[:7] == bytes([0xAA, 0x04, 0xFB, 0x02, 0x01, 0x00, 0x00]) and req[7] == crc8(req[:7])
    opened = encode_request(o2ring.CMD_FILE_OPEN, data=b"20251229172000\x00")
    assert struct.unpack_from("<H", opened, 5)[0] == 15 and opened[7:22] == b"20251229172000\x00"


# Live-reading answer data bytes as documented (o2r's annotated capture): SpO2 98, pulse 66, battery 97,
# motion 146, PI 1.0 %, worn; and a ring off the finger: 0xFF codes, not worn.
WORN = bytes.fromhex("624200000000006100920a0100")
OFF = bytes.fromhex("ffffff00000000600005000000")


def test_live_reading_vectors():
    d = decode_realtime(WORN)
    assert (d.spo2, d.pulse, d.battery_pct, d.charging, d.motion, d.pi_pct, d.worn) == (98, 66, 97, 0, 146, 1.0, True)
    r = d.reading
    assert (r.spo2_pct, r.pulse_bpm, r.valid, r.pulse_valid, r.pai_pct) == (98.0, 66.0, True, True, 1.0)
    off = decode_realtime(OFF)
    assert (off.spo2, off.pulse, off.worn) == (None, None, False)
    assert not off.reading.valid and off.reading.flags & Flag.FINGER_OUT and off.reading.flags & Flag.SPO2_MISSING
    # Worn but 0xFF: the ring's code for "below its range" is still missing, never a value.
    low = decode_realtime(encode_realtime(None, 70, worn=True)).reading
    assert low.spo2_pct is None and not low.valid and low.pulse_bpm == 70.0
    assert encode_realtime(98, 66, motion=146, pi_tenths=10, battery_pct=97) == WORN


def test_answer_spans_notifications_and_decodes_once():
    frame = encode_answer(0, WORN)
    assert frame.hex(" ").startswith("55 00 ff 00 00 0d 00 62 42")
    p = O2RingParser()
    parts = split_notifications(frame, 4)
    events = [ev for part in parts for ev in p.feed(1.0, O2RING_NOTIFY_UUID, part)]
    assert events == [decode_realtime(WORN).reading] and p.stats.frames == 1 and p.stats.errors == 0


def test_bad_crc_status_and_length_are_errors_not_readings():
    p = O2RingParser()
    frame = bytearray(encode_answer(0, WORN))
    frame[-1] ^= 0x01
    assert p.feed(0.0, O2RING_NOTIFY_UUID, bytes(frame)) == []
    assert p.feed(0.0, O2RING_NOTIFY_UUID, encode_answer(0x01)) == []  # the ring refused
    assert p.feed(0.0, O2RING_NOTIFY_UUID, encode_answer(0, b"\x00" * 4)) == []  # not a live reading
    assert p.feed(0.0, "00002a5f-0000-1000-8000-00805f9b34fb", encode_answer(0, WORN)) == []
    assert p.stats.frames == 0 and p.stats.errors >= 4
    (r,) = p.feed(0.0, O2RING_NOTIFY_UUID, encode_answer(0, WORN))
    assert r.spo2_pct == 98.0


def test_registry_speaks_o2ring():
    prof = profile("o2ring")
    assert prof.service_uuid == "14839ac4-7d7e-415c-9a42-167340cf2339"
    assert prof.notify_uuids == (O2RING_NOTIFY_UUID,)
    assert prof.poll == (o2ring.O2RING_WRITE_UUID, o2ring.realtime_request(), 1.0)
    assert isinstance(make_parser("o2ring"), O2RingParser)
    assert guess_protocol(["14839AC4-7D7E-415C-9A42-167340CF2339"]) == "o2ring"


# --- fuzzing ------------------------------------------------------------------------------

@FUZZ
@given(st.lists(st.binary(max_size=40), max_size=10), st.integers(1, 21))
def test_garbage_never_raises_and_a_good_answer_after_it_decodes(garbage, chunk):
    p = O2RingParser()
    for g in garbage:
        for ev in p.feed(0.0, O2RING_NOTIFY_UUID, g):
            assert isinstance(ev, OximeterReading)
    good = encode_answer(0, encode_realtime(91, 61))
    out = [ev for part in split_notifications(good, chunk) for ev in p.feed(0.0, O2RING_NOTIFY_UUID, part)]
    assert out and out[-1].spo2_pct == 91.0 and out[-1].pulse_bpm == 61.0


@FUZZ
@given(st.binary(max_size=600))
def test_night_file_garbage_is_refused_with_a_message_never_a_crash(raw):
    try:
        f = parse_night_file(raw)
    except InvalidNightFile as exc:
        assert str(exc)
    else:
        assert f.interval_s == 4.0


@FUZZ
@given(st.lists(st.binary(max_size=30), max_size=20))
def test_download_garbage_never_raises_anything_but_download_error(notes):
    dl = NightDownload()
    dl.start()
    for n in notes:
        try:
            for req in dl.feed(n):
                assert req[0] == 0xAA
        except DownloadError:
            break


# --- the night file -----------------------------------------------------------------------

def _header(**kw: int) -> bytes:
    """A header laid out byte by byte as OSCAR's viatom_loader reads it."""
    h = bytearray(40)
    h[0:2] = (3).to_bytes(2, "little")
    h[2:4] = (2025).to_bytes(2, "little")
    h[4:9] = bytes([3, 6, 22, 20, 56])
    h[9:13] = kw.get("size", 40 + 5 * 3).to_bytes(4, "little")
    h[13:17] = kw.get("duration", 12).to_bytes(4, "little")
    h[17], h[18], h[19], h[20] = 95, 84, 7, 3
    h[22:24] = kw.get("t90", 8).to_bytes(2, "little")
    h[24], h[25] = 2, 87
    return bytes(h)


def test_night_file_vector():
    body = bytes([97, 62, 0, 3, 0]) + bytes([0xFF, 0xFF, 0xFF, 0, 0]) + bytes([84, 70, 0, 12, 0x80])
    f = parse_night_file(_header() + body)
    h = f.header
    assert h.start_local == datetime(2025, 3, 6, 22, 20, 56)
    assert (h.file_size, h.duration_s, h.spo2_avg, h.spo2_min, h.drops_3pct, h.drops_4pct) == (55, 12, 95, 84, 7, 3)
    assert (h.t90_s, h.events_under_90, h.o2_score) == (8, 2, 8.7)
    assert f.records == (NightRecord(97, 62, 3, False), NightRecord(None, None, 0, False), NightRecord(84, 70, 12, True))
    assert f.interval_s == 4.0 and not f.deduplicated
    assert f.record_times_local()[2] == datetime(2025, 3, 6, 22, 21, 4)


def test_two_second_files_hold_every_record_twice():
    recs = [bytes([96, 60, 0, 1, 0]), bytes([88, 61, 0, 2, 0])]
    f = parse_night_file(_header(duration=8, size=40 + 10) + b"".join(r + r for r in recs))
    assert f.deduplicated and [r.spo2 for r in f.records] == [96, 88]


def test_night_file_refusals_name_the_field():
    with pytest.raises(InvalidNightFile, match="too short"):
        parse_night_file(b"\x03\x00")
    with pytest.raises(InvalidNightFile, match="signature 0x0009"):
        parse_night_file(b"\x09\x00" + _header()[2:] + bytes(5))
    bad_date = bytearray(_header())
    bad_date[4] = 13
    with pytest.raises(InvalidNightFile, match="not a date"):
        parse_night_file(bytes(bad_date) + bytes(5))
    with pytest.raises(InvalidNightFile, match="record 1: invalid-flag byte 0x07"):
        parse_night_file(_header() + bytes([97, 60, 7, 0, 0]))


def test_night_file_round_trip_and_firmware_style_t90():
    recs = [NightRecord(95 - (k % 8), 60 + k % 3, k % 4, False) for k in range(7200)] + [NightRecord(None, None, 0, False)]
    raw = encode_night_file(datetime(2025, 12, 29, 23, 0, 0), recs)
    f = parse_night_file(raw)
    assert f.records == tuple(recs)
    assert f.header.file_size == len(raw) and f.header.duration_s == 4 * len(recs)
    assert f.header.t90_s == 4 * sum(1 for r in recs if r.spo2 is not None and r.spo2 < 90)


# --- download through the simulated radio -------------------------------------------------

def test_download_of_the_stored_night_through_bleak():
    async def go() -> tuple[SimulatedOximeter, dict[str, bytes]]:
        clock = VirtualClock(start=T0)
        air = SimulatedAir(clock)
        sc = scenario(protocol="o2ring", duration_s=3600.0, finger_out=[Interval(600, 40)], disconnects=[Interval(1800, 300)])
        dev = air.add(SimulatedOximeter(sc, clock))
        dev.started_at = T0  # the ring's night began at T0
        readings: list[RingClockReading] = []
        async with BleakClient(dev.address, backend=air.client_backend) as client:
            files = await download_nights(client, timeout_s=10, now=clock.now, on_clock=readings.append)
        (reading,) = readings
        assert reading.offset_s == pytest.approx(8 * 3600, abs=1.0)  # the ring keeps UTC+8
        return dev, files

    dev, files = asyncio.run(go())
    assert list(files) == [dev.ring_file_name()] == ["20251229172000"]  # the ring's local clock, UTC+8
    f = parse_night_file(files["20251229172000"])
    tl = dev.timeline
    assert len(f.records) == 901  # 0 .. 3600 s every 4 s, the disconnect included: the ring kept measuring
    for k, rec in enumerate(f.records):
        tick = 4 * k
        if tl.state[tick] == FINGER_OUT:
            assert rec.spo2 is None
        else:
            assert rec.spo2 == tl.spo2[tick]


def test_download_refusal_is_a_download_error():
    dl = NightDownload(["20250101000000"])
    dl.start()
    assert dl.feed(encode_answer(0, b'{"FileList":"20250101000000,"}\x00'))[0][1] == o2ring.CMD_FILE_OPEN
    with pytest.raises(DownloadError, match="refused to open '20250101000000'"):
        dl.feed(encode_answer(0x01))


def test_a_cut_file_keeps_its_records_and_says_it_was_cut():
    recs = [NightRecord(95, 60, 0, False)] * 20
    raw = encode_night_file(datetime(2025, 3, 6, 22, 0, 0), recs)
    whole, cut = parse_night_file(raw), parse_night_file(raw[:-7])
    assert not whole.truncated and whole.trailing_bytes == 0
    assert cut.truncated and len(cut.records) == 18 and cut.trailing_bytes == 3


@FUZZ
@given(st.binary(min_size=40, max_size=300), st.sampled_from(["+08:00", "-11:30", "Z"]))
def test_o2ring_dat_import_refuses_garbage_with_invalid_input_only(raw, offset):
    from collector.errors import InvalidInput
    from collector.oximetry.importers import ImportLimits
    from collector.oximetry.importers.ingest import parse_night

    try:
        night = parse_night(b"\x03\x00" + raw, "o2ring-dat", utc_offset=offset, limits=ImportLimits(), now_utc_s=T0)
    except InvalidInput as exc:
        assert str(exc) and "\n" not in str(exc)
    else:
        assert night.n >= 2 and night.source["format"] == "o2ring-dat"
