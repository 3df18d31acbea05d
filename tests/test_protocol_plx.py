"""PLX codec: every vector of ble-oximeters.md, status mapping, RACP, features, round trips."""

from __future__ import annotations

import pytest

from drivers.protocols.common import INVALIDATING, Flag, PlxFeatures, RacpReply, Sample
from drivers.protocols.plx import (
    PLX_CONTINUOUS_UUID,
    PLX_FEATURES_UUID,
    PLX_SERVICE_UUID,
    PLX_SPOT_CHECK_UUID,
    RACP_UUID,
    DevStatus,
    MeasStatus,
    PlxParser,
    RacpCode,
    RacpOpcode,
    decode_continuous,
    encode_continuous,
    encode_features,
    encode_racp_abort,
    encode_racp_count,
    encode_racp_count_response,
    encode_racp_delete_all,
    encode_racp_report_all,
    encode_racp_response,
    encode_spot_check,
    normalize_uuid,
    status_flags,
)
from drivers.protocols.sfloat import Special, decode_sfloat, encode_sfloat, sfloat_value


def feed1(p: PlxParser, uuid: str, hexstr: str):
    """The one event a notification gives (a reading stands for the receipt time)."""
    out = p.feed(12.5, uuid, bytes.fromhex(hexstr))
    assert len(out) == 1
    return out[0]


# --- SFLOAT -------------------------------------------------------------------------

@pytest.mark.parametrize(
    "word, value",
    [
        (0xF3D2, 97.8),
        (0xF03A, 5.8),
        (0xFFFF, -0.1),
        (0xF7FF, 204.7),  # ordinary, not a special value
        (0xF3E8, 100.0),
        (0xF384, 90.0),
        (0xF3CF, 97.5),
        (0xF057, 8.7),
        (0xE07D, 1.25),
        (0x0061, 97.0),
        (0x0000, 0.0),
    ],
)
def test_sfloat_ordinary_words(word, value):
    assert sfloat_value(word) == value
    assert decode_sfloat(word).special is None


@pytest.mark.parametrize(
    "word, special",
    [(0x07FF, Special.NAN), (0x0800, Special.NRES), (0x07FE, Special.POS_INF),
     (0x0802, Special.NEG_INF), (0x0801, Special.RESERVED)],
)
def test_sfloat_special_words_have_no_value(word, special):
    d = decode_sfloat(word)
    assert d.value is None and d.special is special


@pytest.mark.parametrize(
    "value, word",
    [(97, 0x0061), (97.5, 0xF3CF), (97.8, 0xF3D2), (5.8, 0xF03A), (-0.1, 0xFFFF),
     (204.7, 0xF7FF), (1.25, 0xE07D), (8.7, 0xF057), (0, 0x0000), (100.0, 0x0064)],
)
def test_sfloat_encode_picks_exact_exponent(value, word):
    assert encode_sfloat(value) == word
    assert sfloat_value(encode_sfloat(value)) == pytest.approx(value, abs=0)


def test_sfloat_encode_forced_exponent_and_specials():
    assert encode_sfloat(100, -1) == 0xF3E8  # the "other exponent" vector
    assert encode_sfloat(None) == 0x07FF
    assert encode_sfloat(float("nan")) == 0x07FF
    assert encode_sfloat(float("inf")) == 0x07FE
    assert encode_sfloat(float("-inf")) == 0x0802
    assert encode_sfloat(Special.NRES) == 0x0800


def test_sfloat_encode_refuses_inexact_unless_asked():
    from drivers.protocols.sfloat import SFloatEncodeError

    with pytest.raises(SFloatEncodeError):
        encode_sfloat(97.8333)
    with pytest.raises(SFloatEncodeError):
        encode_sfloat(2047)  # 2047e0 would be the NaN word
    assert sfloat_value(encode_sfloat(97.8333, exact=False)) == 97.8


# --- design vectors -------------------------------------------------------------------

def test_uuids_are_full_lower_case():
    assert PLX_SERVICE_UUID == "00001822-0000-1000-8000-00805f9b34fb"
    assert PLX_CONTINUOUS_UUID == "00002a5f-0000-1000-8000-00805f9b34fb"
    assert normalize_uuid("0x2A5F") == PLX_CONTINUOUS_UUID
    assert normalize_uuid("00002A5F-0000-1000-8000-00805F9B34FB") == PLX_CONTINUOUS_UUID


@pytest.mark.parametrize(
    "hexstr, spo2, pr",
    [("00 61 00 48 00", 97.0, 72.0), ("00 64 00 5a 00", 100.0, 90.0),
     ("00 e8 f3 84 f3", 100.0, 90.0), ("00 CF F3 48 00", 97.5, 72.0)],
)
def test_continuous_plain_vectors(hexstr, spo2, pr):
    r = feed1(PlxParser(), PLX_CONTINUOUS_UUID, hexstr)
    assert (r.spo2_pct, r.pulse_bpm) == (spo2, pr)
    assert r.flags == Flag.NONE and r.valid and r.pulse_valid
    assert r.status_raw is None and r.kind == "continuous"


def test_continuous_with_status_and_pai():
    r = feed1(PlxParser(), PLX_CONTINUOUS_UUID, "1c 5f 00 5a 00 20 00 00 00 00 57 f0")
    assert (r.spo2_pct, r.pulse_bpm, r.pai_pct) == (95.0, 90.0, 8.7)
    assert r.status_raw == 0x0020  # measurement ongoing, device/sensor 0
    assert r.valid and r.flags == Flag.NONE


def test_continuous_finger_out_is_invalid():
    r = feed1(PlxParser(), PLX_CONTINUOUS_UUID, "0c ff 07 ff 07 00 20 00 08 00")
    assert r.spo2_pct is None and r.pulse_bpm is None
    assert r.status_raw == (0x000800 << 16) | 0x2000
    assert r.flags & Flag.FINGER_OUT and r.flags & Flag.DEVICE_INVALID and r.flags & Flag.SPO2_MISSING
    assert not r.valid and not r.pulse_valid


def test_sensor_unconnected_88_is_not_a_desaturation():
    r = feed1(PlxParser(), PLX_CONTINUOUS_UUID, "0C 58 00 3C 00 00 00 00 08 00")
    assert r.spo2_pct == 88.0
    assert r.flags & Flag.FINGER_OUT
    assert not r.valid


def test_continuous_pai_only():
    r = feed1(PlxParser(), PLX_CONTINUOUS_UUID, "10 cf f3 3e 00 7d e0")
    assert (r.spo2_pct, r.pulse_bpm, r.pai_pct) == (97.5, 62.0, 1.25)
    assert r.valid


def test_spot_check_with_timestamp():
    r = feed1(PlxParser(), PLX_SPOT_CHECK_UUID, "01 60 00 3a 00 e9 07 01 1f 17 3b 3a")
    assert (r.spo2_pct, r.pulse_bpm) == (96.0, 58.0)
    assert r.device_time == "2025-01-31T23:59:58"
    assert r.kind == "spot_check" and r.valid


def test_spot_check_clock_not_set_and_specials():
    r = feed1(PlxParser(), PLX_SPOT_CHECK_UUID, "11 00 08 fe 07 00 00 00 00 00 00 00")
    assert r.spo2_pct is None and r.pulse_bpm is None  # NRes, +INF
    assert r.flags & Flag.DEVICE_CLOCK_NOT_SET
    assert r.device_time is None
    assert not r.valid


def test_all_zero_timestamp_is_unknown_even_with_clock_set():
    data = encode_spot_check(96, 60, timestamp=(0, 0, 0, 0, 0, 0))
    r = feed1(PlxParser(), PLX_SPOT_CHECK_UUID, data.hex())
    assert r.device_time is None and not r.flags & Flag.DEVICE_CLOCK_NOT_SET and r.valid


def test_impossible_date_gives_no_device_time():
    data = encode_spot_check(96, 60, timestamp=(2025, 2, 30, 12, 0, 0))
    assert feed1(PlxParser(), PLX_SPOT_CHECK_UUID, data.hex()).device_time is None


# --- status mapping ----------------------------------------------------------------------

@pytest.mark.parametrize("bit", [13, 15, 10, 11])
def test_measurement_status_bits_that_invalidate(bit):
    assert status_flags(1 << bit, None) & INVALIDATING


@pytest.mark.parametrize("bit", [1, 3, 11, 13, 14, 15])
def test_device_status_bits_that_invalidate(bit):
    assert status_flags(None, 1 << bit) & INVALIDATING


@pytest.mark.parametrize("bit", [0, 2, 4, 5, 6, 7, 8, 9, 10, 12, 16, 23])
def test_device_status_bits_that_only_flag(bit):
    assert not status_flags(None, 1 << bit) & INVALIDATING


@pytest.mark.parametrize("bit", [0, 4, 5, 6, 7, 8, 9, 12, 14])
def test_measurement_status_bits_that_do_not_invalidate(bit):
    assert not status_flags(1 << bit, None) & INVALIDATING


def test_specific_flag_mapping():
    assert status_flags(MeasStatus.QUESTIONABLE, None) == Flag.QUESTIONABLE
    assert status_flags(MeasStatus.FROM_STORAGE, None) == Flag.FROM_STORAGE
    assert status_flags(MeasStatus.DEMO, None) == Flag.DEMO_OR_TEST
    assert status_flags(MeasStatus.TESTING, None) == Flag.DEMO_OR_TEST
    assert status_flags(None, DevStatus.LOW_PERFUSION) == Flag.WEAK_SIGNAL
    assert status_flags(None, DevStatus.POOR_SIGNAL) == Flag.WEAK_SIGNAL
    assert status_flags(None, DevStatus.SENSOR_DISCONNECTED) == Flag.PROBE_UNPLUGGED
    assert status_flags(None, DevStatus.SENSOR_DISPLACED) == Flag.SENSOR_DISPLACED
    assert status_flags(None, DevStatus.SENSOR_UNCONNECTED) == Flag.FINGER_OUT


def test_questionable_reading_is_stored_valid_and_flagged():
    r = feed1(PlxParser(), PLX_CONTINUOUS_UUID, encode_continuous(85, 70, meas_status=MeasStatus.QUESTIONABLE).hex())
    assert r.valid and r.flags & Flag.QUESTIONABLE and r.spo2_pct == 85.0


def test_demo_data_is_never_valid():
    r = feed1(PlxParser(), PLX_CONTINUOUS_UUID, encode_continuous(85, 70, meas_status=MeasStatus.DEMO).hex())
    assert not r.valid and r.flags & Flag.DEMO_OR_TEST


def test_range_rules_applied():
    r = feed1(PlxParser(), PLX_CONTINUOUS_UUID, encode_continuous(120, 300).hex())
    assert r.flags & Flag.SPO2_OUT_OF_RANGE and r.flags & Flag.PULSE_OUT_OF_RANGE and not r.valid
    # Below 50 % but marked valid by the device: still valid (counts as below 90 %), flagged for review.
    r = feed1(PlxParser(), PLX_CONTINUOUS_UUID, encode_continuous(45, 300).hex())
    assert r.valid and r.flags & Flag.DEEP_DESATURATION and not r.flags & Flag.SPO2_OUT_OF_RANGE and not r.pulse_valid
    r = feed1(PlxParser(), PLX_CONTINUOUS_UUID, encode_continuous(0, 70).hex())
    assert r.flags & Flag.SPO2_MISSING and not r.valid


def test_status_raw_layout():
    data = encode_continuous(95, 70, meas_status=0xA5A0, dev_status=0x12345)
    r = feed1(PlxParser(), PLX_CONTINUOUS_UUID, data.hex())
    assert r.status_raw == (0x12345 << 16) | 0xA5A0
    data = encode_continuous(95, 70, dev_status=0xABCDEF)
    assert feed1(PlxParser(), PLX_CONTINUOUS_UUID, data.hex()).status_raw == 0xABCDEF << 16


# --- framing ------------------------------------------------------------------------

def test_short_frame_is_counted_and_dropped_then_next_decodes():
    p = PlxParser()
    assert p.feed(0.0, PLX_CONTINUOUS_UUID, bytes.fromhex("1c 5f 00 5a 00 20 00 00 00 00 57")) == []
    assert p.stats.errors == 1 and p.stats.frames == 0 and p.stats.last_error
    assert p.feed(0.0, PLX_CONTINUOUS_UUID, b"") == []
    assert p.stats.errors == 2
    r = feed1(p, PLX_CONTINUOUS_UUID, "00 61 00 48 00")
    assert r.spo2_pct == 97.0 and p.stats.frames == 1


def test_trailing_bytes_ignored():
    p = PlxParser()
    r = feed1(p, PLX_CONTINUOUS_UUID, "00 61 00 48 00 ff ee")
    assert r.spo2_pct == 97.0 and p.stats.errors == 0


def test_unknown_characteristic_counted_not_raised():
    p = PlxParser()
    assert p.feed(0.0, "00002a37-0000-1000-8000-00805f9b34fb", b"\x00\x50") == []
    assert p.stats.errors == 1


def test_fast_slow_kept_on_parser():
    p = PlxParser()
    feed1(p, PLX_CONTINUOUS_UUID, encode_continuous(95, 70, fast=(94, 71), slow=(96, 69)).hex())
    f = p.last_continuous
    assert f is not None and (f.spo2_fast.value, f.pr_fast.value, f.spo2_slow.value, f.pr_slow.value) == (94, 71, 96, 69)


# --- features and RACP ----------------------------------------------------------------

def test_features_with_24_bit_device_status_support():
    p = PlxParser()
    data = bytes.fromhex("ff 00") + (0xFFE0).to_bytes(2, "little") + bytes([0xFF, 0xFF, 0x01])
    (f,) = p.feed(0.0, PLX_FEATURES_UUID, data)
    assert isinstance(f, PlxFeatures) and f is p.features
    assert f.supported == 0xFF and f.meas_status_support == 0xFFE0
    assert f.dev_status_support == 0x01FFFF  # third byte read: the field is 24 bits
    assert f.has_storage and f.has_spot_timestamp and f.has_fast and f.has_slow and f.has_pai and f.multiple_bonds
    assert p.stats.frames == 1


def test_features_minimal_and_short():
    p = PlxParser()
    p.feed(0.0, PLX_FEATURES_UUID, bytes.fromhex("0c 00"))
    assert p.features is not None and p.features.meas_status_support is None and p.features.has_storage
    p.feed(0.0, PLX_FEATURES_UUID, bytes.fromhex("03 00 e0 ff ff ff"))  # needs 7 bytes
    assert p.stats.errors == 1


def test_features_encoder_round_trip():
    p = PlxParser()
    p.feed(0.0, PLX_FEATURES_UUID, encode_features(0x0C, meas_status_support=0x0220, dev_status_support=0x00A800))
    assert p.features.supported == 0x0F
    assert (p.features.meas_status_support, p.features.dev_status_support) == (0x0220, 0x00A800)


def test_racp_request_encoders():
    assert encode_racp_report_all() == bytes.fromhex("01 01")
    assert encode_racp_count() == bytes.fromhex("04 01")
    assert encode_racp_delete_all() == bytes.fromhex("02 01")
    assert encode_racp_abort() == bytes.fromhex("03 00")


def test_racp_responses_are_events():
    p = PlxParser()
    (r,) = p.feed(3.0, RACP_UUID, bytes.fromhex("05 00 2a 01"))
    assert r == RacpReply(3.0, count=0x012A) and r.ok and not r.done
    (r,) = p.feed(4.0, RACP_UUID, bytes.fromhex("06 00 01 06"))
    assert r.request_opcode == RacpOpcode.REPORT_RECORDS and r.no_records and not r.ok and r.done
    (r,) = p.feed(5.0, RACP_UUID, encode_racp_response(RacpOpcode.DELETE_RECORDS, RacpCode.SUCCESS))
    assert r.ok and r.request_opcode == 0x02
    (r,) = p.feed(6.0, RACP_UUID, encode_racp_count_response(7))
    assert r.count == 7
    assert p.feed(7.0, RACP_UUID, bytes.fromhex("06 00")) == []
    assert p.stats.errors == 1


def test_events_are_frozen():
    import dataclasses

    (r,) = PlxParser().feed(1.0, PLX_CONTINUOUS_UUID, bytes.fromhex("00 61 00 48 00"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.flags = 0  # type: ignore[misc]
    with pytest.raises(AttributeError):
        Sample(1.0, r).t = 2.0  # type: ignore[misc]


def test_stored_record_is_flagged_from_storage():
    data = encode_spot_check(93, 64, timestamp=(2025, 3, 1, 2, 3, 4), meas_status=MeasStatus.FROM_STORAGE)
    r = feed1(PlxParser(), PLX_SPOT_CHECK_UUID, data.hex())
    assert r.flags & Flag.FROM_STORAGE and r.valid and r.device_time == "2025-03-01T02:03:04"


# --- round trips --------------------------------------------------------------------

@pytest.mark.parametrize("spo2", [50, 88, 89.5, 90, 97.5, 100])
@pytest.mark.parametrize("pr", [20, 61.5, 250])
def test_continuous_round_trip(spo2, pr):
    data = encode_continuous(spo2, pr, meas_status=0x0020, dev_status=0x000010, pai=2.35, fast=(spo2, pr), slow=(spo2, pr))
    frame = decode_continuous(data)
    assert frame.flags == 0x1F and len(data) == 1 + 4 + 4 + 4 + 2 + 3 + 2
    r = feed1(PlxParser(), PLX_CONTINUOUS_UUID, data.hex())
    assert (r.spo2_pct, r.pulse_bpm, r.pai_pct) == (spo2, pr, 2.35)
    assert r.flags == Flag.WEAK_SIGNAL and r.valid


def test_spot_check_round_trip_all_fields():
    data = encode_spot_check(91, 55, timestamp=(2024, 12, 31, 23, 59, 59), meas_status=0x0080, dev_status=0x000020, pai=0.5)
    r = feed1(PlxParser(), PLX_SPOT_CHECK_UUID, data.hex())
    assert (r.spo2_pct, r.pulse_bpm, r.pai_pct, r.device_time) == (91, 55, 0.5, "2024-12-31T23:59:59")
    assert r.status_raw == (0x20 << 16) | 0x80


def test_encoder_reproduces_design_vectors():
    assert encode_continuous(97, 72) == bytes.fromhex("00 61 00 48 00")
    assert encode_continuous(95, 90, meas_status=0x0020, dev_status=0, pai=8.7) == bytes.fromhex("1c 5f 00 5a 00 20 00 00 00 00 57 f0")
    assert encode_continuous(None, None, meas_status=0x2000, dev_status=0x000800) == bytes.fromhex("0c ff 07 ff 07 00 20 00 08 00")
    assert encode_continuous(97.5, 62, pai=1.25) == bytes.fromhex("10 cf f3 3e 00 7d e0")
    assert encode_spot_check(96, 58, timestamp=(2025, 1, 31, 23, 59, 58)) == bytes.fromhex("01 60 00 3a 00 e9 07 01 1f 17 3b 3a")
    assert encode_spot_check(Special.NRES, Special.POS_INF, timestamp=(0,) * 6, clock_not_set=True) == bytes.fromhex(
        "11 00 08 fe 07 00 00 00 00 00 00 00"
    )


@pytest.mark.parametrize("meas, dev", [(MeasStatus.EARLY_ESTIMATE, 0), (0, DevStatus.SIGNAL_ANALYSIS_ONGOING)])
def test_early_estimate_and_signal_analysis_ongoing_count_as_provisional(meas, dev):
    r = feed1(PlxParser(), PLX_CONTINUOUS_UUID, encode_continuous(88, 70, meas_status=int(meas), dev_status=int(dev)).hex())
    assert r.valid and r.flags & Flag.PROVISIONAL_ESTIMATE and r.flags & Flag.QUESTIONABLE
    # with an invalidating bit as well, invalid as always
    r = feed1(PlxParser(), PLX_CONTINUOUS_UUID, encode_continuous(88, 70, meas_status=int(meas) | int(MeasStatus.INVALID),
                                                                  dev_status=int(dev)).hex())
    assert not r.valid


def test_current_time_read_gives_the_device_clock():
    from drivers.protocols.common import DeviceClock
    from drivers.protocols.cts import CURRENT_TIME_UUID, encode_current_time

    # 2025-01-31 23:59:58 and 128/256 s, Friday, no adjust reason
    raw = bytes.fromhex("e9 07 01 1f 17 3b 3a 05 80 00")
    assert encode_current_time(1738367998.5) == raw
    p = PlxParser()
    (ev,) = p.feed(100.0, CURRENT_TIME_UUID, raw)
    assert ev == DeviceClock(100.0, 1738367998.5)
    assert p.feed(1.0, CURRENT_TIME_UUID, raw[:9]) == [] and p.stats.errors == 1
    assert p.feed(1.0, CURRENT_TIME_UUID, bytes(10)) == [] and p.stats.errors == 2  # clock not set
