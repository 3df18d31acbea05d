"""Nonin codec: design vectors, status mapping, counter gaps, garbage, round trips, registry."""

from __future__ import annotations

import pytest

from drivers.protocols.common import CounterReset, Flag, LostPackets, OximeterReading
from drivers.protocols.nonin import (
    NONIN_CONTINUOUS_UUID,
    NONIN_SERVICE_UUID,
    STATUS_OK,
    NoninParser,
    NoninStatus,
    encode_frame,
)
from drivers.protocols.registry import PROFILES, UnknownProtocol, guess_protocol, make_parser, profile


def feed1(p: NoninParser, data: bytes, t: float = 0.0):
    """The reading of a frame that carries no counter news."""
    out = p.feed(t, NONIN_CONTINUOUS_UUID, data)
    assert len(out) == 1 and isinstance(out[0], OximeterReading)
    return out[0]


def test_good_vector():
    p = NoninParser()
    r = feed1(p, bytes.fromhex("0a 54 1e 01 2c 00 7b 61 00 48"))
    assert (r.spo2_pct, r.pulse_bpm, r.pai_pct, r.counter) == (97.0, 72.0, 3.0, 123)
    assert r.status_raw == 0x54 and r.flags == Flag.NONE and r.valid and r.pulse_valid
    assert p.battery_v == 3.0 and not p.low_battery


def test_searching_sensor_off_vector():
    r = feed1(NoninParser(), bytes.fromhex("0a 48 1e 00 00 00 7c 7f 01 ff"))
    assert r.spo2_pct is None and r.pulse_bpm is None and r.counter == 124
    assert r.flags & Flag.SEARCHING and r.flags & Flag.FINGER_OUT
    assert r.flags & Flag.SPO2_MISSING and r.flags & Flag.PULSE_MISSING
    assert not r.valid


def test_uuids_lower_case_and_upper_accepted():
    assert NONIN_SERVICE_UUID == "46a970e0-0d5f-11e2-8b5e-0002a5d5c51b"
    p = NoninParser()
    assert p.feed(0.0, NONIN_CONTINUOUS_UUID.upper(), encode_frame(97, 60, counter=1))


@pytest.mark.parametrize(
    "status, flag, invalid",
    [
        (STATUS_OK | NoninStatus.WEAK_SIGNAL, Flag.WEAK_SIGNAL, False),
        (STATUS_OK | NoninStatus.LOW_BATTERY, Flag.LOW_BATTERY, False),
        (STATUS_OK | NoninStatus.SEARCHING, Flag.SEARCHING, True),
        (STATUS_OK & ~NoninStatus.SENSOR_ON, Flag.FINGER_OUT, True),
    ],
)
def test_status_bits(status, flag, invalid):
    p = NoninParser()
    r = feed1(p, encode_frame(92, 60, counter=5, status=status))
    assert r.flags & flag
    assert r.valid is (not invalid)
    assert r.status_raw == int(status)


def test_smartpoint_and_encryption_bits_do_not_flag():
    r = feed1(NoninParser(), encode_frame(92, 60, counter=5, status=NoninStatus.SENSOR_ON))
    assert r.flags == Flag.NONE


def test_counter_gap_is_a_lost_packets_event_with_wrap():
    p = NoninParser()
    feed1(p, encode_frame(95, 60, counter=65533), 1.0)
    feed1(p, encode_frame(95, 60, counter=65534), 2.0)
    lost, sample = p.feed(6.0, NONIN_CONTINUOUS_UUID, encode_frame(95, 60, counter=2))  # 65535, 0, 1 missing
    assert lost == LostPackets(6.0, 3) and isinstance(sample, OximeterReading) and sample.counter == 2
    assert p.stats.lost_packets == 3
    feed1(p, encode_frame(95, 60, counter=3))
    assert p.stats.lost_packets == 3


def test_counter_duplicate_and_restart_are_not_loss():
    p = NoninParser()
    feed1(p, encode_frame(95, 60, counter=1000))
    feed1(p, encode_frame(95, 60, counter=1000))
    reset, _ = p.feed(9.0, NONIN_CONTINUOUS_UUID, encode_frame(95, 60, counter=5))
    assert reset == CounterReset(9.0, 5)
    assert p.stats.lost_packets == 0 and p.duplicates == 1 and p.counter_resets == 1


@pytest.mark.parametrize(
    "hexstr",
    [
        "",
        "0a",
        "0a 54 1e 01 2c 00 7b 61 00",  # 9 bytes, length says 10
        "0b 54 1e 01 2c 00 7b 61 00 48",  # length byte disagrees
        "0a 54 1e 01 2c 00 7b 61 00 48 00",  # 11 bytes, length says 10
        "05 01 02 03 04",
    ],
)
def test_garbage_counted_then_next_frame_decodes(hexstr):
    p = NoninParser()
    assert p.feed(0.0, NONIN_CONTINUOUS_UUID, bytes.fromhex(hexstr)) == []
    assert p.stats.errors == 1 and p.stats.frames == 0
    r = feed1(p, bytes.fromhex("0a 54 1e 01 2c 00 7b 61 00 48"))
    assert r.spo2_pct == 97.0 and p.stats.frames == 1


def test_longer_frame_with_matching_length_byte_accepted():
    data = bytes([12]) + encode_frame(96, 61, counter=9)[1:] + b"\x00\x00"
    r = feed1(NoninParser(), data)
    assert (r.spo2_pct, r.pulse_bpm) == (96.0, 61.0)


def test_out_of_range_values():
    r = feed1(NoninParser(), encode_frame(120, 300, counter=1))
    assert r.flags & Flag.SPO2_OUT_OF_RANGE and r.flags & Flag.PULSE_OUT_OF_RANGE and not r.valid
    r = feed1(NoninParser(), encode_frame(0, 0, counter=1))
    assert r.flags & Flag.SPO2_MISSING and not r.valid


def test_encoder_reproduces_design_vectors():
    assert encode_frame(97, 72, counter=123, status=0x54, battery_v=3.0, pai=3.0) == bytes.fromhex(
        "0a 54 1e 01 2c 00 7b 61 00 48"
    )
    assert encode_frame(None, None, counter=124, status=0x48, battery_v=3.0, pai=0) == bytes.fromhex(
        "0a 48 1e 00 00 00 7c 7f 01 ff"
    )


@pytest.mark.parametrize("spo2", [None, 50, 89, 90, 100])
@pytest.mark.parametrize("pr", [None, 20, 250, 300])
def test_round_trip(spo2, pr):
    r = feed1(NoninParser(), encode_frame(spo2, pr, counter=77, battery_v=2.7, pai=12.34))
    assert r.spo2_pct == (None if spo2 is None else float(spo2))
    assert r.pulse_bpm == (None if pr is None else float(pr))
    assert (r.counter, r.pai_pct) == (77, 12.34)


# --- registry (shared module; tested here to keep the file count small) --------------

def test_registry_profiles():
    assert set(PROFILES) == {"plx", "nonin", "berrymed", "o2ring"}
    for name, prof in PROFILES.items():
        assert prof.protocol == name
        assert prof.service_uuid == prof.service_uuid.lower() and len(prof.service_uuid) == 36
        assert all(u == u.lower() and len(u) == 36 for u in prof.notify_uuids + prof.read_uuids)
        assert 0.5 <= prof.expected_period_s <= 2.0
    assert profile("NONIN").notify_uuids == (NONIN_CONTINUOUS_UUID,)
    # features, then the Current Time that maps stored records to host UTC
    assert PROFILES["plx"].read_uuids == ("00002a60-0000-1000-8000-00805f9b34fb", "00002a2b-0000-1000-8000-00805f9b34fb")


def test_make_parser_each_protocol_fresh():
    for name in PROFILES:
        a, b = make_parser(name), make_parser(name)
        assert a is not b and a.stats.frames == 0 and hasattr(a, "feed")


def test_unknown_protocol_message_lists_names():
    with pytest.raises(UnknownProtocol) as ei:
        make_parser("emay")
    msg = str(ei.value)
    assert "emay" in msg and "berrymed, nonin, o2ring, plx" in msg
    with pytest.raises(UnknownProtocol):
        profile("")


def test_guess_protocol():
    assert guess_protocol(["0x1822"]) == "plx"
    assert guess_protocol(["00001822-0000-1000-8000-00805F9B34FB"]) == "plx"
    assert guess_protocol([NONIN_SERVICE_UUID.upper(), "1822"]) == "nonin"
    assert guess_protocol(["49535343-FE7D-4AE5-8FA9-9FAFD205E455"]) == "berrymed"
    assert guess_protocol(["49535343-fe7d-4ae5-8fa9-9fafd205e455", "1822"]) == "plx"
    assert guess_protocol(["180d", "zzzz"]) is None
    assert guess_protocol([]) is None
