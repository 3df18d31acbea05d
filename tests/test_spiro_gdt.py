"""GDT 2.1 codec: line lengths in the record's charset, record delimiting, mapping, fuzz."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.spirometry.gdt import GdtStreamParser, encode_gdt, encode_line, parse_gdt_file
from drivers.spirometry.registry import get_model
from drivers.spirometry.results import DecodedMessage, DecodeError, ManoeuvreResult, SubjectData

TEST_MAP = {"FVC": "fvc", "FEV1": "fev1", "PEF": "pef", "FET": "fet", "BEV": "bev", "QUAL": "quality", "POS": "posture", "FVCPR": "fvc_pct_pred"}


def record(lines: list[tuple[str, str]], charset: str = "3", with_length: bool = True) -> bytes:
    body = b"".join(encode_line(f, c, charset) for f, c in lines)
    head = encode_line("8000", "6310", charset)
    if not with_length:
        return head + body
    total = len(head) + 14 + len(body)
    return head + encode_line("8100", f"{total:05d}", charset) + body


BASE = [("9218", "02.10"), ("9206", "3"), ("3000", "4711"), ("3101", "Müller"), ("3102", "Jürgen"), ("3103", "02051964"),
        ("3110", "1"), ("3622", "178"), ("3623", "74,5"), ("6200", "10032025"), ("6201", "093000")]
TRIALS = [("8410", "FVC_1"), ("8411", "FVC"), ("8420", "2.20"), ("8421", "l"),
          ("8410", "FEV1_1"), ("8411", "FEV1"), ("8420", "1840"), ("8421", "ml"),
          ("8410", "POS_1"), ("8420", "sitzend"),
          ("8410", "FVC_2"), ("8420", "2,10"), ("8421", "L"),
          ("8410", "FEV1_2"), ("8420", "1.75"), ("8421", "L"),
          ("8410", "FVC"), ("8411", "FVC best"), ("8420", "2.20"), ("8421", "L"),
          ("8410", "FVCPR"), ("8420", "50.4"), ("8421", "%"),
          ("8410", "XYZ"), ("8411", "Vendor thing"), ("8420", "12"), ("8421", "u")]


def test_line_length_is_encoded_bytes_incl_crlf() -> None:
    assert encode_line("8000", "6310") == b"01380006310\r\n"
    assert encode_line("3101", "Müller", "3") == "0153101Müller\r\n".encode("latin-1")  # ü is one byte
    assert encode_line("3101", "Müller", "2") == "0153101Müller\r\n".encode("cp437")
    assert encode_line("3101", "Müller", "1") == b"0153101M}ller\r\n"  # DIN 66003: } is ü


def test_whole_record_trials_units_subject() -> None:
    [ev] = parse_gdt_file(record(BASE + TRIALS), TEST_MAP)
    assert isinstance(ev, DecodedMessage) and ev.ack is None
    t1, t2, best = ev.results
    assert (t1.number, t1.fvc_l, t1.fev1_l, t1.posture, t1.summary) == (1, 2.2, 1.84, "sitzend", False)
    assert (t2.number, t2.fvc_l, t2.fev1_l) == (2, 2.1, 1.75)
    assert best.number is None and best.summary and dict(best.device_derived) == {"fvc_pct_pred": 50.4}
    assert t1.time == "2025-03-10T09:30:00"
    s = ev.subject
    assert (s.patient_id, s.sex, s.height_cm, s.weight_kg, s.birth_date) == ("4711", "male", 178, 74.5, "1964-05-02")
    assert [u.code for u in ev.unknown] == ["XYZ"]
    assert any("identifying" in w for w in ev.warnings)
    assert "Müller" not in repr(ev) and "4711" not in (ev.message_id or "")


def test_charsets_decode_umlauts() -> None:
    for cs in "123":
        lines = [("9218", "02.10"), ("9206", cs), ("8410", "POS_1"), ("8420", "Rückenlage"), ("8410", "FVC_1"), ("8420", "2.0")]
        [ev] = parse_gdt_file(record(lines, cs), TEST_MAP)
        assert ev.results[0].posture == "Rückenlage", cs


def test_record_boundaries_on_a_line() -> None:
    a, b = record(BASE + TRIALS), record(BASE + TRIALS[:8])
    p = GdtStreamParser(TEST_MAP)
    events = []
    for i in range(0, len(a + b), 5):
        events += p.feed((a + b)[i : i + 5])
    # both end by their 8100 byte count, without waiting for the next record or idle
    assert [type(e).__name__ for e in events] == ["DecodedMessage", "DecodedMessage"]
    # without 8100: the next 8000 ends the record, idle ends the last one
    c = record(BASE + TRIALS[:4], with_length=False)
    p = GdtStreamParser(TEST_MAP)
    assert p.feed(c) == []
    evs = p.feed(c)
    assert len(evs) == 1 and isinstance(evs[0], DecodedMessage)
    assert isinstance(p.end_of_input()[0], DecodedMessage)


def test_truncated_and_corrupt_records_refused() -> None:
    a = record(BASE + TRIALS)
    p = GdtStreamParser(TEST_MAP)
    evs = p.feed(a[:-40]) + p.feed(a)  # cut short, then a full record
    assert isinstance(evs[0], DecodeError) and "cut short" in evs[0].reason
    assert isinstance(evs[1], DecodedMessage)
    bad = a.replace(b"01384202.20", b"01484202.20")  # wrong LLL
    [ev] = parse_gdt_file(bad, TEST_MAP)
    assert isinstance(ev, DecodeError) and "length prefix" in ev.reason


def test_impossible_values_and_wrong_record_type() -> None:
    lines = BASE + [("8410", "FVC_1"), ("8420", "2.0"), ("8410", "FEV1_1"), ("8420", "2.5")]
    [ev] = parse_gdt_file(record(lines), TEST_MAP)
    assert isinstance(ev, DecodeError) and "exceeds FVC" in ev.reason and ev.location == "trial 1"
    [ev] = parse_gdt_file(record(BASE + [("8410", "FVC_1"), ("8420", "-1")]), TEST_MAP)
    assert isinstance(ev, DecodeError) and "negative" in ev.reason
    [ev] = parse_gdt_file(record([("9206", "3"), ("3622", "1.78")] + TRIALS[:4]), TEST_MAP)
    assert isinstance(ev, DecodeError) and "height" in ev.reason and "1.78" not in ev.reason
    req = encode_line("8000", "6302") + encode_line("3000", "1")
    [ev] = parse_gdt_file(req, TEST_MAP)
    assert isinstance(ev, DecodeError) and "6310" in ev.reason
    [ev] = parse_gdt_file(record([("9206", "7")]), TEST_MAP)
    assert isinstance(ev, DecodeError) and "9206" in ev.reason


def test_missing_fields_and_sex_codes() -> None:
    [ev] = parse_gdt_file(record([("3110", "2"), ("8410", "FVC_1"), ("8420", "")]), TEST_MAP)
    assert isinstance(ev, DecodedMessage) and ev.results == () and ev.subject.sex == "female"
    assert any("no value" in w for w in ev.warnings)


def test_encoder_round_trip_with_registry_model() -> None:
    model = get_model("sim-gdt")
    rs = [ManoeuvreResult("gdt", i, fvc_l=2.0 + i / 10, fev1_l=1.7, fev1_fvc=round(1.7 / (2.0 + i / 10), 4), pef_l_s=5.0,
                          bev_l=0.05, fet_s=7.0, device_quality=("ok",), posture="Übung") for i in (1, 2, 3)]
    subj = SubjectData("P9", "female", "2", 165.0, 60.0, "1970-11-23")
    for cs in "123":
        data = encode_gdt(rs, subj, model.encoder_codes(), "2025-03-11T14:00:00", charset=cs)
        assert int(data[20:25]) == len(data)  # field 8100 = whole record
        [ev] = parse_gdt_file(data, model.codes)
        assert [r.fvc_l for r in ev.results] == [2.1, 2.2, 2.3]
        assert ev.results[0].fev1_fvc == round(1.7 / 2.1, 4) and ev.results[0].posture == "Übung"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300), st.lists(st.integers(1, 80), max_size=8))
def test_fuzz_garbage_then_good_record(garbage: bytes, cuts: list[int]) -> None:
    good = record(BASE + TRIALS)
    p = GdtStreamParser(TEST_MAP)
    stream = garbage + b"\r\n" + good
    events, pos = [], 0
    for c in cuts:
        events += p.feed(stream[pos : pos + c])
        pos += c
    events += p.feed(stream[pos:]) + p.end_of_input()
    assert all(isinstance(e, (DecodedMessage, DecodeError)) for e in events)
    ok = [e for e in events if isinstance(e, DecodedMessage) and len(e.results) == 3]
    assert ok and ok[-1].results[0].fvc_l == 2.2


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(record(BASE + TRIALS).split(b"\r\n")) | st.binary(max_size=20), max_size=30))
def test_fuzz_shuffled_lines_never_raise(lines: list[bytes]) -> None:
    p = GdtStreamParser(TEST_MAP)
    events = p.feed(b"\r\n".join(lines)) + p.end_of_input()
    assert all(isinstance(e, (DecodedMessage, DecodeError)) for e in events)
