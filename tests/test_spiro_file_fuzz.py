"""Hypothesis fuzz of the file parsers (ndd XML, trial CSV, GDT request and folder helpers):
no exception escapes, and a file is either refused whole or every result in it is plausible."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collector.spirometry.files import decode_file
from drivers.spirometry.csv_trials import parse_csv_trials
from drivers.spirometry.gdt import declared_record_length, encode_request, parse_request
from drivers.spirometry.ndd_xml import parse_ndd_xml
from drivers.spirometry.results import DecodedMessage, DecodeError, check_result
from simulators.spirometer import SCENARIO_DIR, load_scenario
from simulators.vendor_shapes import ndd_xml, trials_csv

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ALS = load_scenario(SCENARIO_DIR / "spirometry_als_session.toml")
GOOD_XML = ndd_xml(ALS.manoeuvres, ALS.subject)
GOOD_CSV = trials_csv(ALS.manoeuvres, with_summary=True)


def _whole_or_nothing(ev: object) -> None:
    assert isinstance(ev, (DecodedMessage, DecodeError))
    if isinstance(ev, DecodedMessage):
        for r in ev.results:
            assert check_result(r) is None
    else:
        assert ev.reason and "\n" not in ev.reason


@st.composite
def mutated(draw: st.DrawFn, base: bytes) -> bytes:
    """The good file with a few bytes replaced, inserted or cut."""
    data = bytearray(base)
    for _ in range(draw(st.integers(1, 6))):
        i = draw(st.integers(0, max(0, len(data) - 1)))
        op = draw(st.sampled_from(["replace", "insert", "delete", "truncate"]))
        b = draw(st.binary(min_size=1, max_size=4))
        if op == "replace":
            data[i:i + len(b)] = b
        elif op == "insert":
            data[i:i] = b
        elif op == "delete":
            del data[i:i + len(b)]
        else:
            del data[i:]
    return bytes(data)


@FUZZ
@given(st.binary(max_size=400))
def test_ndd_xml_garbage_never_raises(data: bytes) -> None:
    _whole_or_nothing(parse_ndd_xml(data))


@FUZZ
@given(mutated(GOOD_XML))
def test_ndd_xml_mutations_are_refused_whole_or_plausible(data: bytes) -> None:
    _whole_or_nothing(parse_ndd_xml(data))


@FUZZ
@given(st.text(max_size=300))
def test_csv_garbage_never_raises(text: str) -> None:
    _whole_or_nothing(parse_csv_trials(text.encode("utf-8", "surrogatepass")))


@FUZZ
@given(mutated(GOOD_CSV))
def test_csv_mutations_are_refused_whole_or_plausible(data: bytes) -> None:
    _whole_or_nothing(parse_csv_trials(data))


@FUZZ
@given(st.binary(max_size=300), st.sampled_from(["hl7", "gdt", "ndd-xml", "csv"]))
def test_every_import_format_never_raises(data: bytes, fmt: str) -> None:
    _whole_or_nothing(decode_file(data, fmt))


@FUZZ
@given(st.binary(max_size=120))
def test_folder_helpers_never_raise(data: bytes) -> None:
    n = declared_record_length(data)
    assert n is None or n > 0
    assert isinstance(parse_request(data), dict)


@FUZZ
@given(st.from_regex(r"[A-Z]{2,5}-[0-9]{3,6}", fullmatch=True), st.sampled_from(["02.10", "03.00"]),
       st.sampled_from([None, "male", "female"]), st.one_of(st.none(), st.floats(100, 250)))
def test_request_records_read_back(pid: str, version: str, sex: str | None, height: float | None) -> None:
    raw = encode_request(pid, receiver_id="SPIR", sender_id="ALSC", version=version, sex=sex, height_cm=height)
    req = parse_request(raw)
    assert req["3000"] == pid and req["9218"] == version
    assert (declared_record_length(raw) == len(raw)) if version == "02.10" else declared_record_length(raw) is None
