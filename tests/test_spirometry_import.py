"""``collector spirometry import``: vendor export files into a spirometry session, all or nothing, once per file."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from simulators.spirometer import SCENARIO_DIR, load_scenario
from simulators.vendor_shapes import FAKE_NAME, FAKE_STREET, best_of, gdt_best_test, gdt_text, lab_oru, ndd_xml, trials_csv
from conftest import invoke

SUBJECT = "SCR-0101"
FACTS = {"sex": "male", "height_cm": "178", "birth_date": "1964-05-02", "screening_date": "2025-03-10"}
ALS = load_scenario(SCENARIO_DIR / "spirometry_als_session.toml")


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "collector.sqlite"
    assert invoke(path, "subject", "add", SUBJECT).exit_code == 0
    for name, value in FACTS.items():
        assert invoke(path, "criteria", "set", SUBJECT, name, value).exit_code == 0
    return path


def rows(db: Path, sql: str, *params: object) -> list[tuple]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def imported(db: Path, tmp_path: Path, name: str, data: bytes, fmt: str, *extra: str) -> dict:
    f = tmp_path / name
    f.write_bytes(data)
    r = invoke(db, "spirometry", "import", str(f), "--subject", SUBJECT, "--format", fmt, "--json", *extra)
    assert r.exit_code == 0, r.output
    return json.loads(r.output)


def test_ndd_xml_trials_with_plateau_and_the_devices_verdict_compared_with_ours(db: Path, tmp_path: Path) -> None:
    out = imported(db, tmp_path, "export.xml", ndd_xml(ALS.manoeuvres, ALS.subject), "ndd-xml")
    sid = out["session_id"]
    assert out["manoeuvres"] == 5 and out["summaries"] == 0
    res = out["result"]
    # EOTV (the last-second volume) is the plateau: the two good blows end by plateau, as the 2019 table reads it.
    eofe = {m["number"]: m["eofe_by"] for m in res["manoeuvres"]}
    assert "plateau" in eofe[1] and "plateau" in eofe[2]
    assert res["fvc_l"] == 2.20 and res["fvc"]["grade"] in ("A", "B", "C") and res["valid"] is True
    # The device passed the large-BEV blow; ATS/ERS 2019 does not: an event says so, ours decides.
    by_number = {d["number"]: d for d in out["disagreements"]}
    assert by_number[5]["device_acceptable"] is True and by_number[5]["ours"] != "acceptable"
    assert "bev_too_large" in by_number[5]["our_reasons"]
    events = rows(db, "SELECT detail_json FROM events WHERE session_id = ? AND kind = 'spirometry_quality_disagreement'", sid)
    assert {json.loads(d)["number"] for (d,) in events} == set(by_number)
    # Unknown parameters are kept; names, street, patient ID and birth date are not.
    assert ("FEF2575",) in rows(db, "SELECT code FROM spirometry_observations WHERE session_id = ? AND mapped_to IS NULL", sid)
    dump = "\n".join(str(r) for t in ("sessions", "spirometry_manoeuvres", "spirometry_observations", "spirometry_messages",
                                      "events", "audit") for r in rows(db, f"SELECT * FROM {t}"))
    assert FAKE_NAME[0] not in dump and FAKE_STREET not in dump and "SIM-0001" not in dump and "1964-05-02" not in dump
    assert rows(db, "SELECT origin, state, kind FROM sessions WHERE id = ?", sid) == [("import", "stopped", "spirometry")]
    shown = invoke(db, "spirometry", "show", str(sid))
    assert shown.exit_code == 0 and "device:" in shown.output


def test_the_same_file_is_not_imported_twice(db: Path, tmp_path: Path) -> None:
    data = trials_csv(ALS.manoeuvres)
    first = imported(db, tmp_path, "a.csv", data, "csv")
    (tmp_path / "renamed.csv").write_bytes(data)
    again = invoke(db, "spirometry", "import", str(tmp_path / "renamed.csv"), "--subject", SUBJECT, "--format", "csv")
    assert again.exit_code == 5 and f"session {first['session_id']}" in again.output
    assert len(again.output.strip().splitlines()) == 1 and "Traceback" not in again.output
    assert rows(db, "SELECT COUNT(*) FROM sessions") == [(1,)]


def test_csv_layout_with_a_device_summary_row(db: Path, tmp_path: Path) -> None:
    out = imported(db, tmp_path, "t.csv", trials_csv(ALS.manoeuvres, with_summary=True), "csv")
    assert out["manoeuvres"] == 5 and out["summaries"] == 1
    assert out["result"]["fvc_basis"] == "manoeuvres" and out["result"]["device_summary"]["fvc_l"] == 2.20
    summary_only = "trial,fvc_l,fev1_l\nbest,2.20,1.86\n".encode()
    out = imported(db, tmp_path, "s.csv", summary_only, "csv")
    assert out["result"]["fvc_basis"] == "device_summary" and out["result"]["grade_review"]


@pytest.mark.parametrize("fmt, data, model", [
    ("hl7", lab_oru(best_of(ALS.manoeuvres), ALS.subject, "LAB-1"), None),
    ("gdt", gdt_text(best_of(ALS.manoeuvres), ALS.subject), None),
    ("gdt", gdt_best_test(best_of(ALS.manoeuvres), ALS.subject), "gdt-best-test"),
])
def test_hl7_and_gdt_files_of_device_summaries(db: Path, tmp_path: Path, fmt: str, data: bytes, model: str | None) -> None:
    out = imported(db, tmp_path, f"x.{fmt}", data, fmt, *(["--model", model] if model else []))
    assert out["summaries"] == 1 and out["result"]["fvc_basis"] == "device_summary" and out["result"]["fvc_l"] == 2.20
    dump = "\n".join(str(r) for r in rows(db, "SELECT * FROM spirometry_messages"))
    assert FAKE_NAME[0] not in dump


@pytest.mark.parametrize("fmt, data, where", [
    ("ndd-xml", ndd_xml(ALS.manoeuvres, ALS.subject).replace(b"<DataValue>2.120</DataValue>", b"<DataValue>2,1x</DataValue>"),
     "Trial 2 (number 2)/ResultParameter[@ID='FVC']"),
    ("ndd-xml", ndd_xml(ALS.manoeuvres, ALS.subject).replace(b"<Height>1.78</Height>", b"<Height>178</Height>"), "Height"),
    ("ndd-xml", b'<?xml version="1.0"?><!DOCTYPE ndd [<!ENTITY a "aaaa">]><ndd>&a;</ndd>', "DTD"),
    ("ndd-xml", b"<ndd><Patients>", "line 1"),
    ("csv", b"trial,fvc_l,fev1_l\n1,2.20,1.80\n2,abc,1.70\n", "line 3, column fvc_l"),
    ("csv", b"trial,fvc_l,fev1_l,patient_name\n1,2.20,1.80,Li\n", "personal data"),
    ("csv", b"trial,fvc_l,fev1_l\n1,1.20,1.80\n", "exceeds FVC"),
    ("gdt", b"01380006310\r\ngarbage\r\n", "gdt"),
    ("hl7", b"MSH|^~\\&|A|B|C|D|20250310||ORU^R01|1|P|2.3\rMSH|^~\\&|A|B|C|D|20250310||ORU^R01|2|P|2.3\r", "more than one"),
])
def test_a_bad_file_is_refused_whole_and_named(db: Path, tmp_path: Path, fmt: str, data: bytes, where: str) -> None:
    f = tmp_path / "bad"
    f.write_bytes(data)
    r = invoke(db, "spirometry", "import", str(f), "--subject", SUBJECT, "--format", fmt)
    assert r.exit_code == 2, r.output
    assert r.output.startswith("error: ") and len(r.output.strip().splitlines()) == 1 and "Traceback" not in r.output
    assert where in r.output and "nothing was stored" in r.output
    for table in ("sessions", "spirometry_manoeuvres", "spirometry_files", "spirometry_messages"):
        assert rows(db, f"SELECT COUNT(*) FROM {table}") == [(0,)], table


def test_a_file_of_another_person_is_refused(db: Path, tmp_path: Path) -> None:
    sc = load_scenario(SCENARIO_DIR / "spirometry_als_session.toml")
    other = sc.subject.__class__("x", "female", "2", 178, 74, "1964-05-02") if sc.subject else None
    f = tmp_path / "other.xml"
    f.write_bytes(ndd_xml(sc.manoeuvres, other))
    r = invoke(db, "spirometry", "import", str(f), "--subject", SUBJECT, "--format", "ndd-xml")
    assert r.exit_code == 2 and "contradicts" in r.output and "sex" in r.output
    assert rows(db, "SELECT COUNT(*) FROM sessions") == [(0,)]


def test_the_documented_csv_example_imports(db: Path, tmp_path: Path) -> None:
    doc = (Path(__file__).parent.parent / "docs" / "spirometry-vendors.md").read_text()
    block = doc.split("### The collector's trial CSV", 1)[1]
    lines = [line[4:] for line in block.splitlines() if line.startswith("    ")]
    out = imported(db, tmp_path, "doc.csv", ("\n".join(lines) + "\n").encode(), "csv")
    assert out["manoeuvres"] == 3 and out["summaries"] == 1
    assert {m["number"]: m["fvc"]["status"] for m in out["result"]["manoeuvres"]}[3] != "acceptable"


def test_an_imported_session_exports_and_verifies_without_personal_data(db: Path, tmp_path: Path) -> None:
    imported(db, tmp_path, "export.xml", ndd_xml(ALS.manoeuvres, ALS.subject), "ndd-xml")
    cfg = tmp_path / "site.toml"
    cfg.write_text('[site]\nname = "Test Hospital 1"\n')
    out = tmp_path / "bundles"
    r = invoke(db, "export", SUBJECT, "--out", str(out), config=cfg)
    assert r.exit_code == 0, r.output
    bag = next(out.iterdir())
    blob = b"".join(p.read_bytes() for p in bag.rglob("*") if p.is_file())
    assert FAKE_NAME[0].encode() not in blob and FAKE_STREET.encode() not in blob and b"SIM-0001" not in blob
    assert invoke(db, "verify", str(bag)).exit_code == 0
