"""HL7 v2 ORU^R01 / MLLP codec: hand-written vectors, ACKs, refusals, fuzz."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collector.clock import VirtualClock
from drivers.spirometry.hl7 import (
    Delimiters,
    MllpFramer,
    MllpReceiver,
    encode_oru,
    escape,
    frame,
    hl7_ts_to_iso,
    parse_ack,
    unescape,
)
from drivers.spirometry.registry import get_model, make_decoder
from drivers.spirometry.results import Curve, DecodedMessage, DecodeError, ManoeuvreResult, SubjectData


def msg(*segments: str) -> bytes:
    return ("\r".join(segments) + "\r").encode("utf-8")


MSH = "MSH|^~\\&|PFTLAB|LUNGLAB|ALS|SITE|20250310093500||ORU^R01|CTRL-42|P|2.5"
PID = "PID|1||12345^^^LAB^MR||DOE^JOHN||19640502|M"
GOOD = msg(
    MSH,
    PID,
    "OBR|1||94405^LOCAL|ANTH^Anthropometry^L|||20250310093000",
    "OBX|1|NM|8302-2^Height^LN||178|cm|||||F",
    "OBX|2|NM|3141-9^Weight^LN||74.5|kg|||||F",
    "OBR|2||94405^LOCAL|FVC^Forced manoeuvre 1^L|||20250310093000",
    "OBX|1|NM|19870-5^FVC^LN||2.20|L|> 3.10||||F",
    "OBX|2|NM|20150-9^FEV1^LN||1840|mL|||||F",
    "OBX|3|NM|19926-5^FEV1/FVC^LN||83.6|%|||||F",
    "OBX|4|NM|33452-4^PEF^LN||5.3|L/sec|||||F",
    "OBX|5|NM|19872-1^FVC % predicted^LN||50.4|%|||||F",
    "OBX|6|NM|BEVX^Back-extrapolated volume^99LOC||60|mL|||||F",
    "OBX|7|ST|QCODE^Quality^99LOC||A~no cough||||||F",
    "OBX|8|NM|99999-9^Something new^LN||7|x|||||F",
)
LOCAL = {"BEVX": "bev", "99LOC:QCODE": "quality"}


def decode(data: bytes, local=LOCAL) -> list:
    rx = MllpReceiver(local, clock=VirtualClock(start=1_741_599_300.0))
    return rx.feed(frame(data))


def test_full_message_values_units_and_ack() -> None:
    [ev] = decode(GOOD)
    assert isinstance(ev, DecodedMessage)
    [r] = ev.results  # the anthropometry OBR carries no blow
    assert r.fvc_l == 2.20 and r.fev1_l == 1.84  # mL converted to L
    assert r.fev1_fvc == pytest.approx(0.836)  # % converted to a fraction
    assert r.pef_l_s == 5.3 and r.bev_l == 0.06
    assert r.device_quality == ("A", "no cough")
    assert dict(r.device_derived) == {"fvc_pct_pred": 50.4, "fvc_lln": 3.10}  # OBX-7 "> x" read as the LLN
    assert r.reference_ranges == (("fvc", "> 3.10"),)
    # One result OBR without a trial index: the device's session result, not blow #1 (decided by structure)
    assert r.time == "2025-03-10T09:30:00" and r.number is None and r.summary and r.manoeuvre_type == "FVC"
    assert [u.code for u in r.unknown] == ["99999-9"]  # unknown kept raw
    s = ev.subject
    assert s is not None and s.sex == "male" and s.height_cm == 178 and s.weight_kg == 74.5 and s.birth_date == "1964-05-02"
    assert s.patient_id == "12345"
    assert "DOE" not in repr(ev) and "1964" not in repr(s)  # identifying data stays out of reprs
    ack = ev.ack
    assert ack.startswith(b"\x0b") and ack.endswith(b"\x1c\r")
    segs = ack[1:-2].split(b"\r")
    assert segs[0].startswith(b"MSH|^~\\&|") and b"|ACK^R01^ACK|" in segs[0] and segs[0].endswith(b"|P|2.5")
    assert segs[0].split(b"|")[4:6] == [b"PFTLAB", b"LUNGLAB"]  # addressed back to the sender
    assert segs[1] == b"MSA|AA|CTRL-42"
    assert parse_ack(ack[1:-2]).code == "AA"


def test_loinc_post_bronchodilator_and_percent_predicted_are_not_fvc() -> None:
    [ev] = decode(msg(MSH, "OBR|1|||FVC^Post BD^L", "OBX|1|NM|19874-7^FVC post^LN||2.5|L|||||F",
                      "OBX|2|NM|20155-8^FEV1 post^LN||2.0|L|||||F"))
    [r] = ev.results
    assert r.bronchodilator == "post" and r.fvc_l == 2.5
    [ev] = decode(msg(MSH, "OBR|1|||FVC^x^L", "OBX|1|NM|19872-1^FVC %pred^LN||48|%|||||F", "OBX|2|NM|19870-5^FVC^LN||2.1|L|||||F"))
    [r] = ev.results
    assert r.fvc_l == 2.1 and dict(r.device_derived)["fvc_pct_pred"] == 48


def test_mixed_pre_and_post_in_one_obr_is_refused() -> None:
    [ev] = decode(msg(MSH, "OBR|1|||FVC^x^L", "OBX|1|NM|19876-2^FVC pre^LN||2.4|L|||||F", "OBX|2|NM|19874-7^FVC post^LN||2.5|L|||||F"))
    assert isinstance(ev, DecodeError) and "pre- and post" in ev.reason
    assert b"MSA|AE|CTRL-42" in ev.ack


def test_escapes_and_custom_delimiters() -> None:
    d = Delimiters()
    assert unescape(r"a\F\b\S\c\T\d\R\e\E\f\X41\\.br\g", d) == "a|b^c&d~e\\fA\ng"
    assert unescape(r"keep \Z\ and lone \ ", d) == r"keep \Z\ and lone \ "
    for text in ("a|b", "x^y~z&w\\v", "line\nbreak"):
        assert unescape(escape(text, d), d) == text.replace("\r", "\n")
    # a sender that uses '#' as field separator and other encoding characters
    m = msg("MSH#*@!%#DEV##ALS##20250310##ORU*R01#C7#P#2.5",
            "OBR#1###FVC*Forced@x#",
            "OBX#1#ST#POS*Posture*L##sitting !F! upright##",
            "OBX#2#NM#19870-5*FVC*LN##2,35#L")
    [ev] = decode(m, {"POS": "posture"})
    [r] = ev.results
    assert r.posture == "sitting # upright" and r.fvc_l == 2.35
    assert ev.ack.split(b"\r")[0][1:].startswith(b"MSH#*@!%#") and b"MSA#AA#C7" in ev.ack


def test_impossible_values_refused_with_reason() -> None:
    cases = {
        "negative volume": "OBX|1|NM|19870-5^FVC^LN||-0.5|L|||||F",
        "exceeds FVC": "OBX|1|NM|19870-5^FVC^LN||2.0|L|||||F\rOBX|2|NM|20150-9^FEV1^LN||2.5|L|||||F",
        "not understood": "OBX|1|NM|19870-5^FVC^LN||2.0|gallon|||||F",
        "not a number": "OBX|1|NM|19870-5^FVC^LN||two|L|||||F",
        "implausible volume": "OBX|1|NM|19870-5^FVC^LN||2200|L|||||F",
    }
    for why, obx in cases.items():
        [ev] = decode(msg(MSH, "OBR|1|||FVC^x^L", obx))
        assert isinstance(ev, DecodeError), why
        assert why in ev.reason and ev.message_id == "CTRL-42"
        assert b"MSA|AE|CTRL-42|" in ev.ack and b"\rERR|||102^" in ev.ack


def test_wrong_type_and_missing_control_id_get_ar() -> None:
    [ev] = decode(msg("MSH|^~\\&|X||Y||20250101||ADT^A01|C1|P|2.5", "PID|1"))
    assert isinstance(ev, DecodeError) and b"MSA|AR|C1|" in ev.ack and "ORU^R01" in ev.reason
    [ev] = decode(msg("MSH|^~\\&|X||Y||20250101||ORU^R01||P|2.5"))
    assert isinstance(ev, DecodeError) and b"MSA|AR||" in ev.ack
    [ev] = decode(b"PID|1||x\r")
    assert isinstance(ev, DecodeError) and ev.ack is None  # nothing to acknowledge


def test_missing_fields_and_statuses() -> None:
    [ev] = decode(msg(MSH, "OBR|1|||FVC^x^L", "OBX|1|NM|19870-5^FVC^LN||2.3", "OBX|2|NM|20150-9^FEV1^LN|||L",
                      "OBX|3|NM|33452-4^PEF^LN||9.9|L/s|||||X"))
    [r] = ev.results
    assert r.fvc_l == 2.3 and r.fev1_l is None and r.pef_l_s is None  # no unit = L; empty; status X ignored
    assert any("no value" in w for w in ev.warnings) and any("status X" in w for w in ev.warnings)
    [ev] = decode(msg(MSH, PID))
    assert isinstance(ev, DecodedMessage) and ev.results == () and ev.warnings


def test_alternate_coding_and_structured_numeric() -> None:
    [ev] = decode(msg(MSH, "OBR|1|||FVC^x^L", "OBX|1|SN|LFVC^FVC^L^19870-5^FVC^LN||=^2.41|L"))
    assert ev.results[0].fvc_l == 2.41
    [ev] = decode(msg(MSH, "OBR|1|||FVC^x^L", "OBX|1|SN|19870-5^FVC^LN||>^2.41|L"))
    assert isinstance(ev, DecodeError) and "bound" in ev.reason


def test_curve_and_encoder_round_trip() -> None:
    codes = get_model("sim-hl7").encoder_codes()
    r = ManoeuvreResult("hl7", 3, "2025-03-10T09:31:00", "FVC", "sitting", fvc_l=2.2, fev1_l=1.8, fev1_fvc=0.818, pef_l_s=5.0,
                        bev_l=0.07, fet_s=6.5, device_quality=("ok|fine",), curves=(Curve("volume_time", (0.0, 0.5, 1.0), (0.0, 1.2, 1.8)),))
    subj = SubjectData("P1", "female", "F", 160.0, 55.0, "1970-01-02")
    data = encode_oru([r], "M1", subj, codes, "2025-03-10T09:35:00")
    dec = make_decoder(get_model("sim-hl7"))
    [ev] = dec.feed(frame(data))
    [got] = ev.results
    assert (got.number, got.fvc_l, got.fev1_l, got.bev_l, got.fet_s, got.posture) == (3, 2.2, 1.8, 0.07, 6.5, "sitting")
    assert got.device_quality == ("ok|fine",) and got.curves == r.curves
    assert ev.subject.sex == "female" and ev.subject.birth_date == "1970-01-02"


def test_framing_split_reads_garbage_and_resync() -> None:
    rx = MllpReceiver(LOCAL)
    stream = b"noise\r\n" + frame(GOOD) + b"\x0bMSH|broken without end" + frame(GOOD)
    events = []
    for i in range(0, len(stream), 7):  # arrives in small pieces
        events += rx.feed(stream[i : i + 7])
    kinds = [type(e).__name__ for e in events]
    assert kinds == ["DecodeError", "DecodedMessage", "DecodeError", "DecodedMessage"]
    assert rx.stats.frames == 2 and rx.stats.errors == 2 and rx.stats.bytes_skipped > 0
    # FS without its CR is completed at end of input
    rx2 = MllpReceiver(LOCAL)
    assert rx2.feed(b"\x0b" + GOOD + b"\x1c") == []
    assert isinstance(rx2.end_of_input()[0], DecodedMessage)


def test_framer_oversize_frame() -> None:
    f = MllpFramer(max_frame=100)
    out = f.feed(b"\x0b" + b"A" * 200)
    assert len(out) == 1 and "longer" in out[0].reason
    assert f.feed(frame(b"MSH|x")) == [b"MSH|x"]


def test_timestamps() -> None:
    assert hl7_ts_to_iso("20250310093000") == "2025-03-10T09:30:00"
    assert hl7_ts_to_iso("202503100930+0100") == "2025-03-10T09:30:00+01:00"
    assert hl7_ts_to_iso("20250310") == "2025-03-10"
    assert hl7_ts_to_iso("20251310") is None and hl7_ts_to_iso("garbage") is None


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400), st.lists(st.integers(1, 64), max_size=8))
def test_fuzz_garbage_then_good_message(garbage: bytes, cuts: list[int]) -> None:
    rx = MllpReceiver(LOCAL)
    stream = garbage + frame(GOOD)
    events = []
    pos = 0
    for c in cuts:
        events += rx.feed(stream[pos : pos + c])
        pos += c
    events += rx.feed(stream[pos:])
    good = [e for e in events if isinstance(e, DecodedMessage) and e.message_id == "CTRL-42"]
    assert good and good[-1].results[0].fvc_l == 2.20


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(list(GOOD.split(b"\r"))) | st.just([b"\x0b", b"\x1c", b"|", b"^", b"\\", b"~"]), max_size=20),
       st.binary(max_size=50))
def test_fuzz_mutated_messages_never_raise(parts: list, noise: bytes) -> None:
    flat = [p if isinstance(p, bytes) else b"".join(p) for p in parts]
    rx = MllpReceiver(LOCAL)
    events = rx.feed(b"\x0b" + b"\r".join(flat) + noise + b"\x1c\r") + rx.end_of_input()
    for e in events:
        assert isinstance(e, (DecodedMessage, DecodeError))
        if isinstance(e, DecodedMessage):
            assert e.ack is not None
