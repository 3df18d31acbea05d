"""BerryMed codec: design vectors, chunking, resync, round trips, and the 1 Hz reducer."""

from __future__ import annotations

import pytest

from drivers.protocols.berrymed import (
    BERRYMED_NOTIFY_UUID,
    BerryMedParser,
    OneHzReducer,
    encode_packet,
)
from drivers.protocols.common import Flag, OximeterReading, Sample

GOOD = bytes.fromhex("c6 3c 06 48 61")
PR140 = bytes.fromhex("84 32 47 0c 60")
NOFINGER = bytes.fromhex("84 00 50 7f 7f")


def packets(p: BerryMedParser, data: bytes):
    return p.feed_packets(BERRYMED_NOTIFY_UUID, data)


def test_design_vectors():
    a, b, c = packets(BerryMedParser(), GOOD + PR140 + NOFINGER)
    assert (a.signal_strength, a.pulse_beep, a.pleth, a.bar_graph, a.pulse, a.spo2) == (6, True, 60, 6, 72, 97)
    assert a.reading.valid and a.reading.flags == Flag.NONE
    assert (b.pulse, b.spo2) == (140, 96) and b.reading.valid
    assert c.no_finger and c.pulse is None and c.spo2 is None and c.pleth is None
    rc = c.reading
    assert rc.flags & Flag.FINGER_OUT and rc.flags & Flag.SPO2_MISSING and rc.flags & Flag.PULSE_MISSING
    assert not rc.valid


def test_status_raw_is_byte0_and_byte2():
    (pkt,) = packets(BerryMedParser(), GOOD)
    assert pkt.reading.status_raw == (0xC6 << 8) | 0x06


def test_feed_reduces_to_one_sample_per_second():
    p = BerryMedParser()
    assert p.feed(10.2, BERRYMED_NOTIFY_UUID.upper(), GOOD) == []  # the second is still open
    assert p.feed(10.7, BERRYMED_NOTIFY_UUID, PR140) == []
    (s,) = p.feed(11.1, BERRYMED_NOTIFY_UUID, GOOD)  # a packet of the next second closes 10 s
    assert isinstance(s, Sample) and s.t == 10.7 and s.reading.spo2_pct == 96.0
    p.feed(11.5, BERRYMED_NOTIFY_UUID, NOFINGER[:3])  # a partial packet when the link drops
    (last,) = p.end_of_input()
    assert last.t == 11.1 and last.reading.spo2_pct == 97.0
    assert p.end_of_input() == [] and len(p._buf) == 0


@pytest.mark.parametrize("chunk", [1, 2, 3, 4, 5, 7, 20])
def test_any_chunking_gives_the_same_packets(chunk):
    stream = (GOOD + PR140 + NOFINGER) * 4
    p = BerryMedParser()
    out = []
    for i in range(0, len(stream), chunk):
        out += packets(p, stream[i:i + chunk])
    assert [x.raw for x in out] == [GOOD, PR140, NOFINGER] * 4
    assert p.stats.errors == 0 and p.stats.frames == 12


def test_leading_garbage_skipped_and_counted():
    p = BerryMedParser()
    out = packets(p, bytes([0x01, 0x02, 0x7F]) + GOOD)
    assert [x.raw for x in out] == [GOOD]
    assert p.stats.errors == 1 and p.stats.bytes_skipped == 3


def test_truncated_packet_then_valid_packet_resyncs():
    p = BerryMedParser()
    out = packets(p, GOOD[:3] + PR140 + GOOD)
    assert [x.raw for x in out] == [PR140, GOOD]
    assert p.stats.errors == 1 and p.stats.bytes_skipped == 3


def test_truncated_tail_resolved_by_next_notification():
    p = BerryMedParser()
    assert packets(p, GOOD[:2]) == []
    assert [x.raw for x in packets(p, PR140)] == [PR140]
    assert p.stats.errors == 1


def test_reset_drops_partial_packet():
    p = BerryMedParser()
    packets(p, GOOD[:4])
    p.reset()
    assert [x.raw for x in packets(p, GOOD[4:] + PR140)] == [PR140]


def test_unexpected_characteristic_counted():
    p = BerryMedParser()
    assert p.feed(0.0, "00002a5f-0000-1000-8000-00805f9b34fb", GOOD) == []
    assert p.stats.errors == 1


@pytest.mark.parametrize(
    "kwargs, flag",
    [({"probe_unplugged": True}, Flag.PROBE_UNPLUGGED), ({"searching": True}, Flag.SEARCHING),
     ({"no_finger": True}, Flag.FINGER_OUT)],
)
def test_invalidating_bits(kwargs, flag):
    (pkt,) = packets(BerryMedParser(), encode_packet(95, 70, **kwargs))
    assert pkt.reading.flags & flag and not pkt.reading.valid


def test_no_signal_bit_makes_the_reading_invalid():
    (pkt,) = packets(BerryMedParser(), encode_packet(95, 70, no_signal=True))
    assert pkt.reading.flags == Flag.WEAK_SIGNAL | Flag.DEVICE_INVALID and not pkt.reading.valid


def test_encoder_reproduces_design_vectors():
    assert encode_packet(97, 72, pleth=60, signal_strength=6, bar_graph=6, pulse_beep=True) == GOOD
    assert encode_packet(96, 140, pleth=50, signal_strength=4, bar_graph=7) == PR140
    assert encode_packet(None, None, pleth=0, signal_strength=4, bar_graph=0, no_finger=True) == NOFINGER


@pytest.mark.parametrize("spo2", [None, 0, 50, 89, 90, 100])
@pytest.mark.parametrize("pr", [None, 0, 30, 127, 128, 200, 254])
def test_round_trip(spo2, pr):
    (pkt,) = packets(BerryMedParser(), encode_packet(spo2, pr, pleth=33))
    assert (pkt.spo2, pkt.pulse, pkt.pleth) == (spo2, pr, 33)


# --- OneHzReducer --------------------------------------------------------------------

def R(spo2: float | None, flags: Flag = Flag.NONE) -> OximeterReading:
    return OximeterReading(spo2, 60.0, flags)


def test_reducer_keeps_last_packet_of_each_second():
    red = OneHzReducer()
    out = []
    for i in range(250):  # 2.5 s at 100 Hz
        t = 100.0 + i * 0.01
        out += red.push(t, R(90 + int(t) - 100))
    assert [(round(t, 2), r.spo2_pct) for t, r in out] == [(100.99, 90), (101.99, 91)]
    ((t, r),) = red.flush()
    assert round(t, 2) == 102.49 and r.spo2_pct == 92
    assert red.flush() == []


def test_reducer_ors_state_flags_of_the_second():
    red = OneHzReducer()
    red.push(10.1, R(None, Flag.FINGER_OUT | Flag.SPO2_MISSING))
    red.push(10.5, R(85))
    ((t, r),) = red.push(11.0, R(95))
    assert t == 10.5 and r.spo2_pct == 85
    assert r.flags & Flag.FINGER_OUT and not r.valid  # artefact second never counts
    assert not r.flags & Flag.SPO2_MISSING  # value flags describe the kept value only
    ((_, r2),) = red.flush()
    assert r2.valid and r2.flags == Flag.NONE  # state does not leak into the next second


def test_reducer_gap_seconds_emit_nothing_and_backwards_time_stays_in_bucket():
    red = OneHzReducer()
    assert red.push(5.2, R(95)) == []
    assert red.push(5.1, R(94)) == []  # host clock stepped back: same bucket, no reorder
    out = red.push(9.0, R(93))
    assert [(t, r.spo2_pct) for t, r in out] == [(5.1, 94)]
