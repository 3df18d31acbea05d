"""Hypothesis fuzz of every oximeter codec: garbage never raises, errors are counted,
and a good frame after garbage decodes (BerryMed within one packet; PLX/Nonin on the
next notification, since each notification is one frame)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.protocols.common import LostPackets, OximeterReading, Sample
from drivers.protocols.berrymed import BERRYMED_NOTIFY_UUID, BerryMedParser, encode_packet
from drivers.protocols.nonin import NONIN_CONTINUOUS_UUID, NoninParser, encode_frame
from drivers.protocols.plx import (
    PLX_CONTINUOUS_UUID,
    PLX_FEATURES_UUID,
    PLX_SPOT_CHECK_UUID,
    RACP_UUID,
    PlxParser,
    encode_continuous,
    encode_spot_check,
)
from drivers.protocols.sfloat import decode_sfloat, encode_sfloat

FUZZ = settings(max_examples=300, deadline=None)
chunks = st.lists(st.binary(max_size=40), max_size=8)
plx_uuids = st.sampled_from([PLX_CONTINUOUS_UUID, PLX_SPOT_CHECK_UUID, PLX_FEATURES_UUID, RACP_UUID, "2a5f", "bogus",
                             "00002a2b-0000-1000-8000-00805f9b34fb"])  # Current Time (device clock for back-fill)


def _check_event(ev) -> None:
    if isinstance(ev, Sample):
        assert isinstance(ev.t, float)
        _check_reading(ev.reading)
    elif isinstance(ev, OximeterReading):
        _check_reading(ev)


def _check_reading(r) -> None:
    assert r.spo2_pct is None or isinstance(r.spo2_pct, float)
    assert r.pulse_bpm is None or isinstance(r.pulse_bpm, float)
    _ = r.valid, r.pulse_valid


@FUZZ
@given(st.lists(st.tuples(plx_uuids, st.binary(max_size=30)), max_size=10))
def test_plx_garbage_never_raises_and_counts(notifications):
    p = PlxParser()
    for uuid, data in notifications:
        before = (p.stats.frames, p.stats.errors)
        for ev in p.feed(0.0, uuid, data):
            _check_event(ev)
        after = (p.stats.frames, p.stats.errors)
        assert sum(after) == sum(before) + 1  # every notification is a frame or an error
    good = encode_continuous(93, 65, meas_status=0x20, dev_status=0, pai=3.1)
    (r,) = p.feed(0.0, PLX_CONTINUOUS_UUID, good)
    assert (r.spo2_pct, r.pulse_bpm, r.valid) == (93.0, 65.0, True)
    (r,) = p.feed(0.0, PLX_SPOT_CHECK_UUID, encode_spot_check(94, 66))
    assert r.spo2_pct == 94.0


@FUZZ
@given(st.lists(st.binary(max_size=24), max_size=10))
def test_nonin_garbage_never_raises_and_next_frame_decodes(notifications):
    p = NoninParser()
    for data in notifications:
        before = p.stats.frames + p.stats.errors
        for ev in p.feed(0.0, NONIN_CONTINUOUS_UUID, data):
            _check_event(ev)
        assert p.stats.frames + p.stats.errors == before + 1
        assert p.stats.lost_packets >= 0
    *_, r = p.feed(0.0, NONIN_CONTINUOUS_UUID, encode_frame(95, 61, counter=42))
    assert (r.spo2_pct, r.pulse_bpm, r.counter) == (95.0, 61.0, 42)


@FUZZ
@given(st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=30))
def test_nonin_lost_packets_never_decrease(counters):
    p = NoninParser()
    seen = 0
    for c in counters:
        events = p.feed(0.0, NONIN_CONTINUOUS_UUID, encode_frame(95, 60, counter=c))
        lost = sum(ev.count for ev in events if isinstance(ev, LostPackets))
        assert lost >= 0 and p.stats.lost_packets == seen + lost  # the events are the whole story
        seen = p.stats.lost_packets
        assert sum(isinstance(ev, OximeterReading) for ev in events) == 1  # every frame is stored
    assert p.stats.frames == len(counters)


@FUZZ
@given(chunks, st.integers(1, 7))
def test_berrymed_resyncs_within_one_packet(garbage_chunks, split):
    p = BerryMedParser()
    errors = 0
    for data in garbage_chunks:
        for pkt in p.feed_packets(BERRYMED_NOTIFY_UUID, data):
            _check_reading(pkt.reading)
        assert p.stats.errors >= errors
        errors = p.stats.errors
    good = encode_packet(91, 67, pleth=40)
    # The good packet's sync byte cuts off any partial packet the garbage left, so the
    # very first good packet decodes, however the stream is chunked.
    out = []
    for i in range(0, len(good), split):
        out += p.feed_packets(BERRYMED_NOTIFY_UUID, good[i:i + split])
    assert out and out[-1].raw == good
    assert (out[-1].spo2, out[-1].pulse, out[-1].pleth) == (91, 67, 40)
    assert len(p._buf) == 0


@FUZZ
@given(st.binary(max_size=200))
def test_berrymed_buffer_stays_bounded_and_counts_every_byte(data):
    p = BerryMedParser()
    n_packets = len(p.feed_packets(BERRYMED_NOTIFY_UUID, data))
    pending = len(p._buf)
    assert pending < 5
    assert n_packets * 5 + p.stats.bytes_skipped + pending == len(data)


@FUZZ
@given(st.integers(0, 0xFFFF))
def test_sfloat_decode_encode_round_trip(word):
    d = decode_sfloat(word)
    if d.special is not None:
        assert encode_sfloat(d.special) == word
        return
    again = decode_sfloat(encode_sfloat(d.value))
    assert again.value == d.value


@FUZZ
@given(st.integers(-2045, 2045), st.integers(-8, 7))
def test_sfloat_encode_exact_values(mantissa, exponent):
    from decimal import Decimal

    value = float(Decimal(mantissa) * Decimal(10) ** exponent)
    word = encode_sfloat(value)
    assert decode_sfloat(word).value == value
