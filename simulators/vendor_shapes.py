"""Result messages in the shapes real spirometers' PC software writes, for the simulator and tests.

Written from the interface descriptions (field ids, segment structure), not copied from any
vendor's files; the values are the simulated session's.  Each shape carries the identifying
fields a real one would (name, birth date, hospital number, address) so the tests show they
never get past the decoder.

* ``lab-summary``: a pulmonary-lab ORU^R01 (HL7 2.3.1): an anthropometry OBR (height, weight)
  and one session-result OBR (pre-bronchodilator FVC, FEV1, % predicted, LLN written ``> x``,
  MMEF, PEF, a text comment), no trial index: the device's own summary.
* ``gdt-text``: a GDT 2.1 record (6310) with the results in free-text fields 6220/6228.
* ``gdt-best-test``: a GDT record of best-test values only: 8410 test, 8411 name, 8420 value,
  8421 unit, 8460 reference value, 8470 "Best Test" (the Spirotrac-style export).
* ``ndd-xml``: an ndd EasyWare / EasyOne Connect XML export: one ``Trial`` per blow with its
  ``ResultParameter`` values (FVC, FEV1, PEF, BEV, FET, EOTV = the last-second volume), the
  device's ``Accepted`` verdict and quality codes; patient names and birth date included.
* ``csv``: the collector's own trial CSV (drivers/spirometry/csv_trials.py).
"""

from __future__ import annotations

from xml.sax.saxutils import escape as xml_escape

from drivers.spirometry.gdt import RECORD_EXAM_DATA, encode_line
from drivers.spirometry.hl7 import Delimiters, escape
from drivers.spirometry.results import ManoeuvreResult, SubjectData

SHAPES = ("trials", "lab-summary", "gdt-text", "gdt-best-test")
#: Shapes written as files (the GDT folder device and import tests): the line shapes plus exports.
FILE_SHAPES = ("trials", "gdt-text", "gdt-best-test", "ndd-xml", "csv")
#: Simulated name and address the device holds (never to be seen past the decoder).
FAKE_NAME = ("TESTPATIENT", "SIMONE")
FAKE_STREET = "1 Simulation Road"


def _ts(iso: str | None) -> str:
    return (iso or "2025-03-10T09:30:00").replace("-", "").replace(":", "").replace("T", "")[:14]


def lab_oru(best: ManoeuvreResult, subject: SubjectData | None, message_id: str, *, pred_fvc_l: float = 4.4,
            lln_fvc_l: float = 3.5, version: str = "2.3.1") -> bytes:
    """One ORU^R01 as a lung-function lab's software sends a finished session (unframed)."""
    d = Delimiters()
    f, c = d.field, d.component
    ts = _ts(best.time)
    segs = [f.join(["MSH", d.encoding_chars, "PFTLAB", "LUNGLAB", "ALS", "SITE", ts, "", f"ORU{c}R01", message_id, "P", version])]
    s = subject or SubjectData()
    sex = {"male": "M", "female": "F"}.get(s.sex or "", "U")
    segs.append(f.join(["PID", "1", "", f"{s.patient_id or 'MRN-1'}{c}{c}{c}HOSP{c}MR", "", f"{FAKE_NAME[0]}{c}{FAKE_NAME[1]}", "",
                        (s.birth_date or "").replace("-", ""), sex, "", "", f"{FAKE_STREET}{c}{c}Shanghai", "", "021-5555-0101"]))
    segs.append(f.join(["PV1", "1", "O"]))
    segs.append(f.join(["OBR", "1", "", "PFT-1", f"ANTHRO{c}Anthropometry{c}L", "", "", ts]))
    n = 0

    def obx(vtype: str, code: str, value: str, unit: str = "", ref: str = "", flags: str = "") -> str:
        nonlocal n
        n += 1
        return f.join(["OBX", str(n), vtype, code, "", value, unit, escape(ref, d), flags, "", "", "F"])

    if s.height_cm is not None:
        segs.append(obx("NM", f"8302-2{c}Body height{c}LN", f"{s.height_cm:g}", "cm"))
    if s.weight_kg is not None:
        segs.append(obx("NM", f"29463-7{c}Body weight{c}LN", f"{s.weight_kg:g}", "kg"))
    n = 0
    segs.append(f.join(["OBR", "2", "", "PFT-1", f"SPIRO{c}PreBD Spirometry{c}L", "", "", ts]))
    fvc, fev1 = best.fvc_l or 0.0, best.fev1_l or 0.0
    pct = 100 * fvc / pred_fvc_l
    segs.append(obx("NM", f"19876-2{c}FVC pre BD{c}LN", f"{fvc:.2f}", "L", f"> {lln_fvc_l:.2f}", "L" if fvc < lln_fvc_l else ""))
    segs.append(obx("NM", f"19871-3{c}FVC % predicted pre BD{c}LN", f"{pct:.0f}", "%"))
    segs.append(obx("NM", f"20157-4{c}FEV1 pre BD{c}LN", f"{fev1:.2f}", "L", "> 2.06"))
    segs.append(obx("NM", f"20152-5{c}FEV1 % predicted{c}LN", f"{100 * fev1 / (pred_fvc_l * 0.8):.0f}", "%"))
    segs.append(obx("NM", f"19926-5{c}FEV1/FVC{c}LN", f"{100 * fev1 / fvc:.0f}", "%", "> 70"))
    segs.append(obx("NM", f"MMEF{c}MMEF 25-75{c}L", "2.10", "L/s", "1.9-4.8"))
    if best.pef_l_s is not None:
        segs.append(obx("NM", f"33452-4{c}PEF{c}LN", f"{best.pef_l_s:.2f}", "L/s"))
    segs.append(obx("TX", f"COMMENT{c}Technician comment{c}L", "Acceptable and repeatable; patient tired after trial 3"))
    return ("\r".join(segs) + "\r").encode("latin-1")


def _record(lines: list[tuple[str, str]], charset: str = "3") -> bytes:
    body = b"".join(encode_line(fid, content, charset) for fid, content in lines)
    head = encode_line("8000", RECORD_EXAM_DATA, charset)
    total = len(head) + 14 + len(body)
    return head + encode_line("8100", f"{total:05d}", charset) + body


def _subject_lines(subject: SubjectData | None, exam_time: str | None, version: str) -> list[tuple[str, str]]:
    s = subject or SubjectData()
    lines = [("9218", version), ("9206", "3"), ("3000", s.patient_id or "4711"), ("3101", FAKE_NAME[0]), ("3102", FAKE_NAME[1])]
    if s.birth_date:
        y, m, d = s.birth_date.split("-")
        lines.append(("3103", f"{d}{m}{y}"))
    lines += [("3107", FAKE_STREET)]
    if s.sex:
        lines.append(("3110", "1" if s.sex == "male" else "2"))
    if s.height_cm is not None:
        lines.append(("3622", f"{s.height_cm:g}"))
    if s.weight_kg is not None:
        lines.append(("3623", f"{s.weight_kg:g}"))
    date, _, t = (exam_time or "2025-03-10T09:30:00").partition("T")
    y, m, d = date.split("-")
    lines += [("6200", f"{d}{m}{y}"), ("6201", t.replace(":", "")[:6] or "0930")]
    return lines


def gdt_text(best: ManoeuvreResult, subject: SubjectData | None, *, pred_fvc_l: float = 4.4, version: str = "02.10") -> bytes:
    """A GDT record whose results are free-text lines (6220 findings, 6228 result table)."""
    fvc, fev1 = best.fvc_l or 0.0, best.fev1_l or 0.0
    lines = _subject_lines(subject, best.time, version)
    lines += [("6220", f"FVC {fvc:.2f} l {100 * fvc / pred_fvc_l:.0f} %".replace(".", ",")),
              ("6220", f"FEV1: {fev1:.2f} L ({100 * fev1 / (pred_fvc_l * 0.8):.0f} % Soll)"),
              ("6220", f"FEV1/FVC = {100 * fev1 / fvc:.0f} %"),
              ("6228", "Befund: restriktive Ventilationsstoerung, Mitarbeit gut")]
    return _record(lines)


def gdt_best_test(best: ManoeuvreResult, subject: SubjectData | None, *, pred_fvc_l: float = 4.4, version: str = "02.10") -> bytes:
    """A GDT record of best-test values only (8410/8411/8420/8421/8460/8470), no trial index."""
    fvc, fev1 = best.fvc_l or 0.0, best.fev1_l or 0.0
    lines = _subject_lines(subject, best.time, version)
    for tid, name, value, unit, ref in (("FVC", "Forced vital capacity", f"{fvc:.2f}", "L", f"{pred_fvc_l:.2f}"),
                                        ("FEV1", "Forced expiratory volume 1 s", f"{fev1:.2f}", "L", f"{pred_fvc_l * 0.8:.2f}"),
                                        ("FEV1/FVC", "FEV1 / FVC", f"{100 * fev1 / fvc:.1f}", "%", "78.0"),
                                        ("PEF", "Peak expiratory flow", f"{best.pef_l_s or 5.0:.2f}", "L/s", "8.50")):
        lines += [("8410", tid), ("8411", name), ("8420", value), ("8421", unit), ("8460", ref), ("8470", "Best Test")]
    return _record(lines)


def best_of(manoeuvres: list[ManoeuvreResult]) -> ManoeuvreResult:
    """The session's best values as a device summary (largest FVC and largest FEV1)."""
    fvcs = [m.fvc_l for m in manoeuvres if m.fvc_l is not None]
    fev1s = [m.fev1_l for m in manoeuvres if m.fev1_l is not None]
    pefs = [m.pef_l_s for m in manoeuvres if m.pef_l_s is not None]
    time = manoeuvres[0].time if manoeuvres else None
    return ManoeuvreResult("hl7", None, time, "FVC", fvc_l=max(fvcs), fev1_l=max(fev1s), pef_l_s=max(pefs) if pefs else None,
                           summary=True)


def _last_second_volume(m: ManoeuvreResult) -> float:
    """What a device would measure over the last second: flat for a finished blow, steep for an early stop."""
    return 0.012 if "early_termination" not in m.device_quality else 0.180


def device_accepts(m: ManoeuvreResult) -> bool:
    """The simulated device's own verdict: it flags early stops and coughs but lets a large BEV through
    (an older BEV rule), so the large-BEV blow is where it and ATS/ERS 2019 disagree."""
    return not ({"early_termination", "cough"} & set(m.device_quality))


def ndd_xml(manoeuvres: list[ManoeuvreResult], subject: SubjectData | None, *, test_date: str | None = None) -> bytes:
    """An ndd XML export of one FVC test (names, ID and birth date as the software writes them)."""
    s = subject or SubjectData()
    when = test_date or (manoeuvres[0].time if manoeuvres else None) or "2025-03-10T09:30:00"
    sex = {"male": "Male", "female": "Female"}.get(s.sex or "", "")
    out = ['<?xml version="1.0" encoding="utf-8"?>', '<ndd Version="ndd.EasyWarePro.V1">', '  <Command Type="Export"/>',
           "  <Patients>", f'    <Patient ID="{xml_escape(s.patient_id or "4711")}">',
           f"      <LastName>{FAKE_NAME[0]}</LastName>", f"      <FirstName>{FAKE_NAME[1]}</FirstName>",
           "      <PatientDataAtPresent>", f"        <Street>{FAKE_STREET}</Street>"]
    if s.birth_date:
        out.append(f"        <DateOfBirth>{s.birth_date}</DateOfBirth>")
    if sex:
        out.append(f"        <Gender>{sex}</Gender>")
    if s.height_cm is not None:
        out.append(f"        <Height>{s.height_cm / 100:.2f}</Height>")
    if s.weight_kg is not None:
        out.append(f"        <Weight>{s.weight_kg:g}</Weight>")
    out += ["      </PatientDataAtPresent>", "      <Intervals>", "        <Interval>", "          <Tests>",
            '            <Test TypeOfTest="FVC">', f"              <TestDate>{when}</TestDate>",
            "              <QualityGrade>A</QualityGrade>", "              <Trials>"]
    for i, m in enumerate(manoeuvres, 1):
        out += ["                <Trial>", f"                  <Date>{m.time or when}</Date>",
                f"                  <Number>{m.number or i}</Number>", f"                  <Rank>{i}</Rank>",
                f"                  <Accepted>{'true' if device_accepts(m) else 'false'}</Accepted>"]
        for q in m.device_quality:
            if q != "ok":
                out.append(f"                  <QualityCode>{xml_escape(q)}</QualityCode>")
        out.append("                  <ResultParameters>")
        for pid, v, unit in (("FVC", m.fvc_l, "L"), ("FEV1", m.fev1_l, "L"), ("PEF", m.pef_l_s, "L/s"), ("BEV", m.bev_l, "L"),
                             ("FET", m.fet_s, "s"), ("EOTV", _last_second_volume(m), "L"), ("FEF2575", 1.9, "L/s")):
            if v is not None:
                out += [f'                    <ResultParameter ID="{pid}">', f"                      <DataValue>{v:.3f}</DataValue>",
                        f"                      <Unit>{unit}</Unit>", "                    </ResultParameter>"]
        out += ["                  </ResultParameters>", "                </Trial>"]
    out += ["              </Trials>", "            </Test>", "          </Tests>", "        </Interval>", "      </Intervals>",
            "    </Patient>", "  </Patients>", "</ndd>", ""]
    return "\n".join(out).encode("utf-8")


def trials_csv(manoeuvres: list[ManoeuvreResult], *, with_summary: bool = False) -> bytes:
    """The collector's trial CSV for a session (drivers/spirometry/csv_trials.py)."""
    lines = ["# spirometry trials, one row per blow (collector CSV layout)",
             "trial,type,fvc_l,fev1_l,pef_l_s,bev_l,fet_s,last_second_volume_l,hesitation_s,device_acceptable,quality"]

    def f(v: float | None) -> str:
        return "" if v is None else f"{v:.3f}"

    for i, m in enumerate(manoeuvres, 1):
        quality = ";".join(q for q in m.device_quality if q != "ok")
        lines.append(f"{m.number or i},{m.manoeuvre_type or 'FVC'},{f(m.fvc_l)},{f(m.fev1_l)},{f(m.pef_l_s)},{f(m.bev_l)},"
                     f"{f(m.fet_s)},{f(_last_second_volume(m))},0.4,{'yes' if device_accepts(m) else 'no'},{quality}")
    if with_summary and manoeuvres:
        b = best_of(manoeuvres)
        lines.append(f"best,FVC,{f(b.fvc_l)},{f(b.fev1_l)},{f(b.pef_l_s)},,,,,,")
    return ("\n".join(lines) + "\n").encode("utf-8")
