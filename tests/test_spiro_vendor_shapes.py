"""Results in the shapes real spirometers deliver: lab HL7 session results, GDT text fields, GDT
best-test records; structure decides trial vs summary; identifying fields never pass the decoder;
impossible volumes and contradicting ratios refused."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collector.clock import VirtualClock
from drivers.spirometry.gdt import GdtStreamParser, encode_line, parse_gdt_file
from drivers.spirometry.hl7 import MllpReceiver, frame, mask_identifying
from drivers.spirometry.registry import get_model, make_decoder
from drivers.spirometry.results import DecodedMessage, DecodeError, ManoeuvreResult, parse_number, parse_reference_range
from simulators.spirometer import SCENARIO_DIR, SpirometerSimulator, load_scenario
from simulators.vendor_shapes import FAKE_NAME, FAKE_STREET, gdt_best_test, gdt_text, lab_oru

ALS = load_scenario(SCENARIO_DIR / "spirometry_als_session.toml")
BEST = ManoeuvreResult("hl7", None, "2025-03-10T09:30:00", "FVC", fvc_l=2.20, fev1_l=1.86, pef_l_s=5.1, summary=True)
IDENTIFYING = [FAKE_NAME[0].encode(), FAKE_NAME[1].encode(), FAKE_STREET.encode(), b"19640502", b"02051964", b"SIM-0001",
               b"021-5555-0101"]


def hl7(data: bytes, **kw: object) -> DecodedMessage | DecodeError:
    [ev] = MllpReceiver({}, clock=VirtualClock(start=1_741_599_300.0), **kw).feed(frame(data))  # type: ignore[arg-type]
    return ev


def msg(*segments: str) -> bytes:
    return ("\r".join(segments) + "\r").encode()


MSH = "MSH|^~\\&|LAB|X|ALS|SITE|20250310093500||ORU^R01|M1|P|2.6"


# ------------------------------------------------------------------ HL7: the lab's session result


def test_lab_oru_is_a_device_summary_with_every_obx_kept() -> None:
    ev = hl7(lab_oru(BEST, ALS.subject, "LAB-1"))
    assert isinstance(ev, DecodedMessage) and ev.ack is not None
    [r] = ev.results
    assert r.summary and r.number is None and r.fvc_l == 2.20 and r.fev1_l == 1.86 and r.bronchodilator == "pre"
    assert dict(r.device_derived)["fvc_lln"] == 3.5 and dict(r.device_derived)["fvc_pct_pred"] == 50.0
    by_code = {o.code: o for o in r.observations}
    assert set(by_code) == {"19876-2", "19871-3", "20157-4", "20152-5", "19926-5", "MMEF", "33452-4", "COMMENT"}
    fvc = by_code["19876-2"]
    assert fvc.mapped_to == "fvc" and fvc.reference is not None and fvc.reference.low == 3.5 and not fvc.reference.low_inclusive
    assert fvc.abnormal_flags == "L" and fvc.unit == "L" and fvc.value_type == "NM" and fvc.status == "F"
    mmef = by_code["MMEF"]
    assert mmef.mapped_to is None and mmef.value == "2.10" and mmef.reference and (mmef.reference.low, mmef.reference.high) == (1.9, 4.8)
    assert by_code["COMMENT"].value.startswith("Acceptable and repeatable")
    # The anthropometry OBR carries no result: its lines are message-level observations.
    assert {o.code for o in ev.observations} == {"8302-2", "29463-7"}
    assert ev.subject is not None and ev.subject.sex == "male" and ev.subject.height_cm == 178


def test_the_audit_copy_masks_every_identifying_field_and_keeps_the_rest() -> None:
    raw = lab_oru(BEST, ALS.subject, "LAB-1")
    ev = hl7(raw)
    assert isinstance(ev, DecodedMessage) and ev.masked_raw is not None
    for token in (t for t in IDENTIFYING if t != b"02051964"):  # (the GDT spelling of the birth date)
        assert token in raw and token not in ev.masked_raw
    assert b"PID|1||***||***||***|M|" in ev.masked_raw  # set id and sex kept
    assert ev.masked_raw.replace(b"***", b"") != b"" and b"19876-2^FVC pre BD^LN||2.20|L|> 3.50|L" in ev.masked_raw
    for token in (b"TESTPATIENT", b"19640502", b"SIM-0001", b"Simulation"):
        assert token not in repr(ev).encode()
        assert all(token not in repr(o).encode() for o in ev.results[0].observations + ev.observations)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300), st.text(max_size=40))
def test_masking_never_raises_and_never_leaves_a_pid_field(junk: bytes, name: str) -> None:
    name = name.replace("|", "").replace("\r", "").replace("\n", "")
    out = mask_identifying(junk + b"\rPID|1|x|" + name.encode("utf-8") + b"||" + name.encode("utf-8") + b"|\r")
    pid = [seg for seg in out.split(b"\r") if seg.startswith(b"PID")][-1]
    assert pid == b"PID***" or all(f in (b"", b"***") for f in pid.split(b"|")[2:])


def test_repeated_obrs_without_a_trial_index_are_trials_and_a_unique_one_is_the_summary() -> None:
    def obr(i: int, code: str, fvc: str) -> list[str]:
        return [f"OBR|{i}|||{code}^Spirometry|||20250310093000", f"OBX|1|NM|19870-5^FVC^LN||{fvc}|L|||||F",
                f"OBX|2|NM|20150-9^FEV1^LN||1.80|L|||||F"]
    ev = hl7(msg(MSH, *obr(1, "SPIRO", "2.20"), *obr(2, "SPIRO", "2.10"), *obr(3, "SPIRO", "2.15"), *obr(4, "SPIRO-BEST", "2.20")))
    assert isinstance(ev, DecodedMessage)
    assert [(r.number, r.summary, r.fvc_l) for r in ev.results] == [(1, False, 2.20), (2, False, 2.10), (3, False, 2.15),
                                                                     (None, True, 2.20)]
    # Words do not decide: a trial OBR called "Best" is still a trial when its code repeats.
    ev = hl7(msg(MSH, *obr(1, "SPIRO", "2.20"), *obr(2, "SPIRO", "2.10")).replace(b"SPIRO^Spirometry", b"SPIRO^Best values"))
    assert [r.number for r in ev.results] == [1, 2]  # type: ignore[union-attr]


def test_one_blow_per_message_devices_say_so_in_their_model() -> None:
    one = msg(MSH, "OBR|1|||FVC^Forced manoeuvre", "OBX|1|NM|19870-5^FVC^LN||2.20|L", "OBX|2|NM|20150-9^FEV1^LN||1.80|L")
    assert [r.summary for r in hl7(one).results] == [True]  # type: ignore[union-attr]
    assert [(r.number, r.summary) for r in hl7(one, single_obr_is_summary=False).results] == [(1, False)]  # type: ignore[union-attr]


@pytest.mark.parametrize("text, low, high, low_inc, high_inc", [
    ("> 2.06", 2.06, None, False, True), (">=2,06", 2.06, None, True, True), ("< 0.7", None, 0.7, True, False),
    ("<= 0.7", None, 0.7, True, True), ("1.9-4.8", 1.9, 4.8, True, True), ("-1.64 - 1.64", -1.64, 1.64, True, True),
    ("normal", None, None, True, True),
])
def test_reference_ranges_in_their_hl7_forms(text: str, low: float | None, high: float | None, low_inc: bool, high_inc: bool) -> None:
    r = parse_reference_range(text)
    assert r is not None and (r.low, r.high, r.low_inclusive, r.high_inclusive) == (low, high, low_inc, high_inc) and r.text == text
    assert parse_reference_range("  ") is None


@given(st.text(max_size=30))
def test_reference_range_parser_never_raises(text: str) -> None:
    parse_reference_range(text)


# ------------------------------------------------------------------ impossible values (hardening)


def test_a_volume_below_the_physiological_range_is_refused_with_the_reason() -> None:
    ev = hl7(msg(MSH, "OBR|1|||FVC^x", "OBX|1|NM|19870-5^FVC^LN||0.001|L", "OBX|2|NM|20150-9^FEV1^LN||0.001|L"))
    assert isinstance(ev, DecodeError) and "implausible volume: FVC 0.001 L (< 0.1 L" in ev.reason and ev.ack and b"MSA|AE" in ev.ack
    [g] = parse_gdt_file(record([("8410", "FVC_1"), ("8420", "0.05"), ("8421", "L"), ("8410", "FEV1_1"), ("8420", "0.04")]),
                         {"FVC": "fvc", "FEV1": "fev1"})
    assert isinstance(g, DecodeError) and "implausible volume: FVC 0.05 L" in g.reason


def test_a_device_ratio_that_contradicts_its_volumes_is_refused_within_a_documented_tolerance() -> None:
    def blow(ratio: str) -> bytes:
        return msg(MSH, "OBR|1|||FVC^x", "OBX|1|NM|TRIAL^n^L||1", "OBX|2|NM|19870-5^FVC^LN||3.00|L",
                   "OBX|3|NM|20150-9^FEV1^LN||2.40|L", f"OBX|4|NM|19926-5^FEV1/FVC^LN||{ratio}|%")
    rx = MllpReceiver({"TRIAL": "manoeuvre_number"}, clock=VirtualClock(start=1.7e9))
    [bad] = rx.feed(frame(blow("60")))
    assert isinstance(bad, DecodeError) and "FEV1/FVC 0.600 contradicts FEV1 2.4 L / FVC 3 L = 0.800" in bad.reason
    [ok] = rx.feed(frame(blow("81").replace(b"|M1|", b"|M2|")))  # 0.81 vs 0.80: rounding, accepted
    assert isinstance(ok, DecodedMessage) and ok.results[0].fev1_fvc == 0.81
    # A device summary may take its ratio from its best test: kept with a warning, not refused.
    [summ] = MllpReceiver({}, clock=VirtualClock(start=1.7e9)).feed(frame(blow("60").replace(b"OBX|1|NM|TRIAL^n^L||1\r", b"")))
    assert isinstance(summ, DecodedMessage) and summ.results[0].summary and any("contradicts" in w for w in summ.warnings)


def test_numbers_take_ascii_digits_only() -> None:
    assert parse_number("٣٫٢") is None and parse_number("３.２") is None and parse_number("3,2") == 3.2
    ev = hl7(msg(MSH, "OBR|1|||FVC^x", "OBX|1|NM|19870-5^FVC^LN||٣|L"))
    assert isinstance(ev, DecodeError) and "not a number" in ev.reason


# ------------------------------------------------------------------ GDT


def record(lines: list[tuple[str, str]], charset: str = "3") -> bytes:
    body = b"".join(encode_line(f, c, charset) for f, c in [("9218", "02.10"), ("9206", charset), *lines])
    head = encode_line("8000", "6310", charset)
    return head + encode_line("8100", f"{len(head) + 14 + len(body):05d}", charset) + body


def test_a_latin1_digit_in_a_test_id_is_an_unmapped_test_not_an_internal_error() -> None:
    [ev] = parse_gdt_file(record([("8410", "FVC_²"), ("8420", "3.1"), ("8410", "FVC_1"), ("8420", "3.2"), ("8410", "FEV1_1"),
                                  ("8420", "2.5")]), {"FVC": "fvc", "FEV1": "fev1"})
    assert isinstance(ev, DecodedMessage), ev
    assert [r.number for r in ev.results] == [1] and [u.code for u in ev.unknown] == ["FVC_²"]


def test_gdt_text_fields_are_parsed_as_the_device_summary() -> None:
    data = gdt_text(BEST, ALS.subject)
    [ev] = make_decoder(get_model("generic-gdt")).feed(data)
    assert isinstance(ev, DecodedMessage)
    [r] = ev.results
    assert r.summary and (r.fvc_l, r.fev1_l, r.fev1_fvc) == (2.2, 1.86, 0.85)
    assert dict(r.device_derived) == {"fvc_pct_pred": 50.0, "fev1_pct_pred": 53.0}
    assert [o.mapped_to for o in r.observations] == ["fvc", "fev1", "fev1_fvc"]
    assert [o.code for o in ev.observations] == ["6228"] and ev.observations[0].value.startswith("Befund")
    assert ev.masked_raw is not None and b"02051964" in data and all(t not in ev.masked_raw for t in IDENTIFYING)
    # The masked copy keeps every line length and the record length: it frames like the original.
    assert len(ev.masked_raw) == len(data) and ev.masked_raw.count(b"\r\n") == data.count(b"\r\n")
    [again] = parse_gdt_file(ev.masked_raw, {})
    assert isinstance(again, DecodeError) and again.reason == "field 3103 birth date is not DDMMYYYY"


def test_a_per_model_text_label_map_and_gdt_3_headers() -> None:
    data = record([("6220", "CVF 2,40 L 55 %"), ("6220", "VEMS 1,90 L")]).replace(b"02.10", b"03.00")
    p = GdtStreamParser({}, text_labels={"CVF": "fvc", "VEMS": "fev1"})
    [ev] = p.feed(data)
    assert isinstance(ev, DecodedMessage) and not ev.warnings
    assert (ev.results[0].fvc_l, ev.results[0].fev1_l, dict(ev.results[0].device_derived)) == (2.4, 1.9, {"fvc_pct_pred": 55.0})


def test_best_test_records_are_device_summaries_with_their_reference_values() -> None:
    [ev] = make_decoder(get_model("gdt-best-test")).feed(gdt_best_test(BEST, ALS.subject))
    assert isinstance(ev, DecodedMessage)
    [r] = ev.results
    assert r.summary and r.number is None and (r.fvc_l, r.fev1_l, r.pef_l_s) == (2.2, 1.86, 5.1)
    assert dict(r.device_derived) == {"fvc_pred": 4.4, "fev1_pred": 3.52}
    assert {o.code: o.sub_id for o in r.observations}["FVC"] == "Best Test"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=255), max_size=60), max_size=6))
def test_gdt_text_lines_never_raise_and_a_bad_record_is_refused_whole(lines: list[str]) -> None:
    data = record([("6220", t) for t in lines if len(t.encode("latin-1")) < 900])
    events = parse_gdt_file(data, {})
    assert len(events) == 1 and isinstance(events[0], (DecodedMessage, DecodeError))
    assert not (isinstance(events[0], DecodeError) and "internal" in events[0].reason)


# ------------------------------------------------------------------ the simulator speaks each shape


@pytest.mark.parametrize("shape, protocol", [("lab-summary", "hl7"), ("gdt-text", "gdt"), ("gdt-best-test", "gdt")])
def test_the_simulator_sends_each_vendor_shape(shape: str, protocol: str) -> None:
    sim = SpirometerSimulator(dataclasses.replace(ALS, shape=shape), protocol)
    [(_, data)] = sim.messages()
    model = {"lab-summary": "generic-hl7", "gdt-text": "generic-gdt", "gdt-best-test": "gdt-best-test"}[shape]
    dec = make_decoder(get_model(model), clock=VirtualClock(start=1.7e9))
    [ev] = dec.feed(data) + dec.end_of_input()
    assert isinstance(ev, DecodedMessage) and [r.summary for r in ev.results] == [True] and ev.results[0].fvc_l == 2.20
