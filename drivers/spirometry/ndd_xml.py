"""ndd EasyWare / EasyOne Connect XML exports (one file, one FVC test), sans-I/O.

Layout read (from ndd's description of its XML export): ``ndd/Patients/Patient`` with
``PatientDataAtPresent`` (``Gender``, ``Height`` in metres, ``Weight`` kg, ``DateOfBirth``) and
``Intervals/Interval/Tests/Test[@TypeOfTest]`` holding ``Trials/Trial`` elements: each trial has
``Number``, ``Date``, ``Accepted`` (the device's verdict), optional quality codes
(``QualityCode`` / ``AcceptabilityCode`` / ``ATSCode``, each element one code) and
``ResultParameters/ResultParameter[@ID]`` with ``DataValue`` and ``Unit``.

Why so strict: the file is refused whole (with the element named) at the first value that is
not a number, a unit we do not know, an impossible volume, a second patient or a second
FVC test, because a partly read export could change a decision without anyone noticing.
Unknown result parameters are kept as observations, never dropped; names, IDs and addresses
are never read (the masked audit copy replaces them).  XML is parsed with defusedxml: an export
with entity definitions (billion laughs, external entities) is refused, not expanded.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Final, Iterable

import defusedxml.ElementTree as DET
from defusedxml import DefusedXmlException

from drivers.spirometry.results import (
    DecodedMessage,
    DecodeError,
    ManoeuvreResult,
    Observation,
    SubjectData,
    check_result,
    check_subject,
    convert_unit,
    parse_number,
)

SOURCE: Final = "ndd-xml"
MAX_BYTES = 20_000_000  # an export of one test with curves is far smaller
#: ResultParameter ID (upper case) -> parameter; anything else is kept as an observation.
PARAMETERS: dict[str, str] = {
    "FVC": "fvc", "FEV1": "fev1", "FEV1_FVC": "fev1_fvc", "FEV1/FVC": "fev1_fvc", "FEV1%FVC": "fev1_fvc", "FEV1FVC": "fev1_fvc",
    "PEF": "pef", "BEV": "bev", "VEXT": "bev", "FET": "fet", "EOTV": "last_second_volume", "VC": "vc",
    "HESITATION": "hesitation", "TIME_HESITATION": "hesitation",
}
_UNIT_PARAM = {"last_second_volume": "bev", "hesitation": "fet"}  # same units as BEV (L) and FET (s)
QUALITY_ELEMENTS = ("QualityCode", "AcceptabilityCode", "ATSCode")
#: Elements that identify a person: masked in the audit copy, never read.
IDENTIFYING = frozenset({"LastName", "FirstName", "MiddleName", "DateOfBirth", "Street", "City", "ZipCode", "Zip", "Country",
                         "Phone", "Telephone", "Email", "Address", "PatientID", "ExternalID", "InsuranceNumber", "Title", "Name"})
FVC_TESTS = {"FVC", "FVL", "FVC_PRE", "FVL_PRE"}
SVC_TESTS = {"SVC", "VC"}


class _Refused(Exception):
    def __init__(self, reason: str, where: str | None = None) -> None:
        super().__init__(reason)
        self.reason, self.where = reason, where


def _local(tag: object) -> str:
    t = tag if isinstance(tag, str) else ""
    return t.rsplit("}", 1)[-1]


def _child(el: ET.Element, name: str) -> ET.Element | None:
    return next((c for c in el if _local(c.tag) == name), None)


def _children(el: ET.Element, name: str) -> list[ET.Element]:
    return [c for c in el if _local(c.tag) == name]


def _text(el: ET.Element | None) -> str:
    return (el.text or "").strip() if el is not None else ""


def mask_xml(root: ET.Element) -> bytes:
    """The export re-serialised with identifying elements' text and the patient's ID attribute as ``*``."""
    for el in root.iter():
        name = _local(el.tag)
        if name in IDENTIFYING and el.text:
            el.text = "*" * len(el.text)
        if name == "Patient" and "ID" in el.attrib:
            el.attrib["ID"] = "*" * len(el.attrib["ID"])
    out: bytes = ET.tostring(root, encoding="utf-8")
    return out


def parse_ndd_xml(data: bytes) -> DecodedMessage | DecodeError:
    """One export file in, one message (or the one reason it is refused) out; never raises."""
    if len(data) > MAX_BYTES:
        return DecodeError(SOURCE, f"file larger than {MAX_BYTES // 1_000_000} MB: not one ndd test export")
    try:
        root = DET.fromstring(data, forbid_dtd=True)
    except DefusedXmlException as exc:
        return DecodeError(SOURCE, f"XML declares a DTD or entities ({type(exc).__name__}): refused, not expanded")
    except ET.ParseError as exc:
        line, col = getattr(exc, "position", (0, 0))
        return DecodeError(SOURCE, "not well-formed XML", location=f"line {line}, column {col}")
    except Exception as exc:  # expat raises others on odd encodings
        return DecodeError(SOURCE, f"not readable as XML ({type(exc).__name__})")
    try:
        msg = _decode(root)
    except _Refused as r:
        return DecodeError(SOURCE, r.reason, location=r.where, masked_raw=_safe_mask(root))
    except Exception as exc:  # a parser bug must not kill the daemon or the CLI
        return DecodeError(SOURCE, f"internal decoder error ({type(exc).__name__}); file not accepted")
    return msg


def _safe_mask(root: ET.Element) -> bytes | None:
    try:
        return mask_xml(root)
    except Exception:
        return None


def _subject(patient: ET.Element) -> SubjectData | None:
    present = _child(patient, "PatientDataAtPresent")
    if present is None:
        return None
    where = "Patient/PatientDataAtPresent"
    sex_raw = _text(_child(present, "Gender"))
    sex = {"MALE": "male", "FEMALE": "female", "M": "male", "F": "female"}.get(sex_raw.upper())
    if sex_raw and sex is None:
        raise _Refused(f"Gender {sex_raw!r} is not Male or Female", f"{where}/Gender")
    height_cm = weight_kg = None
    h = _text(_child(present, "Height"))
    if h:
        v = parse_number(h)
        if v is None:
            raise _Refused("Height is not a number", f"{where}/Height")
        if v > 3.0:
            raise _Refused("Height is not in metres (the ndd export gives metres; a value above 3 is a unit fault)",
                           f"{where}/Height")
        height_cm = round(v * 100.0, 6)
    w = _text(_child(present, "Weight"))
    if w:
        weight_kg = parse_number(w)
        if weight_kg is None:
            raise _Refused("Weight is not a number", f"{where}/Weight")
    birth = _text(_child(present, "DateOfBirth"))[:10] or None
    if birth is not None and not (len(birth) == 10 and birth[4] == "-" and birth[7] == "-" and birth.replace("-", "").isascii()
                                  and birth.replace("-", "").isdigit()):
        raise _Refused("DateOfBirth is not YYYY-MM-DD", f"{where}/DateOfBirth")
    s = SubjectData(sex=sex, sex_raw=sex_raw or None, height_cm=height_cm, weight_kg=weight_kg, birth_date=birth)  # type: ignore[arg-type]
    if (why := check_subject(s)) is not None:
        raise _Refused(why, where)
    return None if s.is_empty() else s


def _bool(text: str, where: str) -> bool | None:
    t = text.strip().lower()
    if not t:
        return None
    if t in ("true", "1", "yes"):
        return True
    if t in ("false", "0", "no"):
        return False
    raise _Refused(f"{text!r} is not true or false", where)


def _tests(patient: ET.Element) -> Iterable[ET.Element]:
    for interval in _children(_child(patient, "Intervals") or ET.Element("x"), "Interval"):
        yield from _children(_child(interval, "Tests") or ET.Element("x"), "Test")


def _decode(root: ET.Element) -> DecodedMessage:
    if _local(root.tag) != "ndd":
        raise _Refused(f"root element is <{_local(root.tag)}>, not <ndd>", "/")
    patients = _children(_child(root, "Patients") or ET.Element("x"), "Patient")
    if len(patients) != 1:
        raise _Refused(f"file holds {len(patients)} patients: export one patient's test per file", "ndd/Patients")
    patient = patients[0]
    subject = _subject(patient)
    tests = [t for t in _tests(patient) if (t.get("TypeOfTest") or "").upper() in FVC_TESTS | SVC_TESTS]
    if len(tests) != 1:
        raise _Refused(f"file holds {len(tests)} FVC/SVC tests: export one test per file", "Patient/Intervals")
    test = tests[0]
    mtype = "SVC" if (test.get("TypeOfTest") or "").upper() in SVC_TESTS else "FVC"
    test_date = _text(_child(test, "TestDate")) or None
    mid = f"ndd-{test_date}" if test_date else None
    trials = _children(_child(test, "Trials") or ET.Element("x"), "Trial")
    if not trials:
        raise _Refused("test has no Trial elements", "Test/Trials")
    results: list[ManoeuvreResult] = []
    seen: set[int] = set()
    for ti, trial in enumerate(trials, 1):
        where = f"Trial {ti}"
        num_text = _text(_child(trial, "Number"))
        number = ti
        if num_text:
            n = parse_number(num_text)
            if n is None or n != int(n) or n < 1:
                raise _Refused(f"Number {num_text!r} is not a trial number", f"{where}/Number")
            number = int(n)
        if number in seen:
            raise _Refused(f"trial number {number} occurs twice", f"{where}/Number")
        seen.add(number)
        where = f"Trial {ti} (number {number})"
        values: dict[str, float] = {}
        observations: list[Observation] = []
        params = _children(_child(trial, "ResultParameters") or ET.Element("x"), "ResultParameter")
        for pi, rp in enumerate(params, 1):
            pid = (rp.get("ID") or "").strip()
            value_text = _text(_child(rp, "DataValue"))
            unit = _text(_child(rp, "Unit")) or None
            param = PARAMETERS.get(pid.upper())
            observations.append(Observation(number, pid or f"#{pi}", value_text, None, "ndd-ResultParameter", None, unit,
                                            None, None, None, None, param))
            if param is None or not value_text:
                continue
            v = parse_number(value_text)
            if v is None:
                raise _Refused(f"ResultParameter {pid}: DataValue {value_text!r} is not a number", f"{where}/ResultParameter[@ID='{pid}']")
            conv, why = convert_unit(_UNIT_PARAM.get(param, param), v, unit)
            if conv is None:
                raise _Refused(f"ResultParameter {pid}: {why}", f"{where}/ResultParameter[@ID='{pid}']")
            if param in values and abs(values[param] - conv) > 1e-9:
                raise _Refused(f"{pid} given twice with different values", f"{where}/ResultParameter[@ID='{pid}']")
            values[param] = conv
        quality = tuple(_text(q) for name in QUALITY_ELEMENTS for q in _children(trial, name) if _text(q))
        accepted = _bool(_text(_child(trial, "Accepted")), f"{where}/Accepted")
        r = ManoeuvreResult(
            source=SOURCE, number=number, time=_text(_child(trial, "Date")) or test_date, manoeuvre_type=mtype,  # type: ignore[arg-type]
            fvc_l=values.get("fvc"), fev1_l=values.get("fev1"), fev1_fvc=values.get("fev1_fvc"), pef_l_s=values.get("pef"),
            bev_l=values.get("bev"), fet_s=values.get("fet"), vc_l=values.get("vc"), device_quality=quality,
            subject=subject, message_id=mid, observations=tuple(observations),
            last_second_volume_l=values.get("last_second_volume"), hesitation_s=values.get("hesitation"),
            device_acceptable=accepted)
        if mtype == "FVC" and r.fvc_l is None:
            raise _Refused("trial has no FVC ResultParameter", where)
        if (why := check_result(r)) is not None:
            raise _Refused(why, where)
        results.append(r)
    warnings = []
    grade = _text(_child(test, "QualityGrade"))
    if grade:
        warnings.append(f"device quality grade {grade} (ours is recomputed)")
    return DecodedMessage(SOURCE, mid, tuple(results), subject, None, (), tuple(warnings), (), mask_xml(root))
