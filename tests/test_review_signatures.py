"""Review resolution and electronic signatures through the real CLI, SQLite and bundle files."""

from __future__ import annotations

import importlib.resources
import io
import json
import sqlite3
from pathlib import Path

import pytest

from conftest import TEST_PASSWORD, invoke

PW = TEST_PASSWORD + "\n"


def _json(r) -> object:
    assert r.exit_code == 0, r.output
    return json.loads(r.output)


def _criterion(db: Path, subject: str, cid: str) -> dict:
    return next(c for c in _json(invoke(db, "eligibility", subject, "--json"))["criteria"] if c["id"] == cid)


@pytest.fixture()
def db(tmp_path: Path) -> Path:
    db = tmp_path / "r.sqlite"
    for s in ("SCR-0001", "SCR-0002"):
        assert invoke(db, "subject", "add", s, operator="dr.a").exit_code == 0
    assert invoke(db, "user", "full-name", "dr.a", "Li Wei", operator="adm").exit_code == 0
    return db


def _borderline_bmi(db: Path) -> None:
    # 53.45 kg at 170 cm: BMI 18.495, below 18.5, but written 18.5 on the form: needs review.
    for fact, value in (("height_cm", "170"), ("weight_kg", "53.45"), ("nutrition_good", "yes")):
        assert invoke(db, "criteria", "set", "SCR-0001", fact, value, operator="dr.a").exit_code == 0


def test_a_review_is_listed_with_its_evidence_resolved_signed_and_reopened_when_its_inputs_change(db: Path) -> None:
    _borderline_bmi(db)
    items = _json(invoke(db, "review", "list", "SCR-0001", "--json"))
    bmi = next(i for i in items if i["criterion"] == "bmi")
    assert bmi["status"] == "open" and bmi["state"] == "needs_review" and "18.5" in bmi["reason"]
    assert {i["fact"] for i in bmi["evidence"]["inputs"]} >= {"height_cm", "weight_kg"} and len(bmi["evidence_sha256"]) == 64
    assert "evidence SHA-256" in invoke(db, "review", "list").output

    assert invoke(db, "criteria", "set", "SCR-0001", "birth_date", "1979-04-02", operator="dr.a").exit_code == 0
    r = invoke(db, "review", "resolve", "SCR-0001", "bmi", "--decision", "not_met", "--reason", "born 1979-04-02, BMI low",
               "--password-stdin", operator="dr.a", input=PW)
    assert r.exit_code == 2 and "birth date" in r.output  # a signed reason travels in bundles: it cannot quote it
    r = invoke(db, "review", "resolve", "SCR-0001", "bmi", "--decision", "not_met", "--reason", "18.495 is below 18.5",
               "--password-stdin", operator="dr.a", input="not my password\n")
    assert r.exit_code == 10 and "wrong password" in r.output
    conn = sqlite3.connect(db, isolation_level=None)
    assert conn.execute("SELECT count(*) FROM review_resolutions").fetchone()[0] == 0
    assert conn.execute("SELECT count(*) FROM audit WHERE action = 'signature_refused' AND actor = 'dr.a'").fetchone()[0] == 1

    r = invoke(db, "review", "resolve", "SCR-0001", "bmi", "--decision", "not_met", "--reason", "18.495 is below 18.5",
               "--password-stdin", operator="dr.a", input=PW)
    assert r.exit_code == 0, r.output
    assert "Signed electronically by Li Wei (investigator, operator dr.a): reviewed" in r.output
    crit = _criterion(db, "SCR-0001", "bmi")
    assert crit["state"] == "not_met" and crit["review"]["status"] == "resolved"
    assert crit["review"]["resolved_by"] == "dr.a" and crit["review"]["reason"] == "18.495 is below 18.5"
    assert crit["review"]["resolved_at"].endswith("Z") and "resolved not_met by dr.a" in crit["reason"]
    sigs = _json(invoke(db, "signatures", "SCR-0001", "--json"))
    assert [(s["record_type"], s["meaning"], s["valid"], s["full_name"]) for s in sigs] == [
        ("review_resolution", "reviewed", True, "Li Wei")]
    assert "(UTC+08:00)" in sigs[0]["signed_local"]
    assert conn.execute("SELECT count(*) FROM audit WHERE action IN ('review_resolved', 'signature_made')").fetchone()[0] == 2
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("UPDATE review_resolutions SET decision = 'met'")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("DELETE FROM signatures")

    # A remeasured weight still at the limit: the evidence is not what was resolved, so the review is open again.
    assert invoke(db, "criteria", "set", "SCR-0001", "weight_kg", "53.44", "--reason", "remeasured", operator="dr.a").exit_code == 0
    crit = _criterion(db, "SCR-0001", "bmi")
    assert crit["state"] == "needs_review" and crit["review"]["status"] == "reopened" and "re-opened" in crit["reason"]
    assert [i["status"] for i in _json(invoke(db, "review", "list", "SCR-0001", "--json")) if i["criterion"] == "bmi"] == ["reopened"]
    # A weight clearly above the limit: nothing to review, the old resolution is shown as no longer needed.
    assert invoke(db, "criteria", "set", "SCR-0001", "weight_kg", "60", "--reason", "remeasured", operator="dr.a").exit_code == 0
    crit = _criterion(db, "SCR-0001", "bmi")
    assert crit["state"] == "met" and crit["review"]["status"] == "no_longer_needed"
    r = invoke(db, "review", "resolve", "SCR-0001", "bmi", "--decision", "met", "--reason", "x", "--password-stdin",
               operator="dr.a", input=PW)
    assert r.exit_code == 5 and "nothing to resolve" in r.output


def test_signing_needs_a_full_name_and_a_decided_subject(db: Path) -> None:
    assert invoke(db, "subject", "add", "SCR-0003", operator="dr.b").exit_code == 0
    assert invoke(db, "criteria", "set", "SCR-0003", "cooperation", "no", operator="dr.b").exit_code == 0
    r = invoke(db, "sign", "SCR-0003", "--meaning", "approved", "--password-stdin", operator="dr.b", input=PW)
    assert r.exit_code == 2 and "full name" in r.output and "collector user full-name dr.b" in r.output
    r = invoke(db, "sign", "SCR-0001", "--meaning", "approved", "--password-stdin", operator="dr.a", input=PW)
    assert r.exit_code == 5 and "incomplete" in r.output


def _site(tmp: Path) -> Path:
    cfg = tmp / "site.toml"
    cfg.write_text('[site]\nname = "Test Hospital 1"\n')
    return cfg


def _bundle(out: Path) -> Path:
    (bundle,) = [p for p in out.iterdir() if p.is_dir()]
    return bundle


def test_sign_change_the_record_and_verify_reports_the_signature_invalid(db: Path, tmp_path: Path) -> None:
    cfg = _site(tmp_path)
    assert invoke(db, "criteria", "set", "SCR-0002", "cooperation", "no", operator="dr.a").exit_code == 0
    r = invoke(db, "sign", "SCR-0002", "--meaning", "approved", "--password-stdin", operator="dr.a", input=PW, config=cfg)
    assert r.exit_code == 0 and "approved" in r.output, r.output
    assert invoke(db, "user", "full-name", "dm.x", "Zhang Min", operator="adm").exit_code == 4  # not an operator yet
    assert invoke(db, "export", "--all", "--out", str(tmp_path / "none"), operator="dm.x", config=cfg).exit_code in (0, 5)
    assert invoke(db, "user", "full-name", "dm.x", "Zhang Min", operator="adm").exit_code == 0

    r = invoke(db, "export", "SCR-0002", "--out", str(tmp_path / "b1"), "--sign", "--password-stdin", "--lang", "en", operator="dm.x",
               input=PW, config=cfg)
    assert r.exit_code == 0 and "responsible for this export" in r.output, r.output
    b1 = _bundle(tmp_path / "b1")
    sigs = json.loads((b1 / "data/signatures.json").read_text())["signatures"]
    assert [(s["record_type"], s["valid"]) for s in sigs] == [("eligibility_decision", True), ("export", True)]
    v = _json(invoke(db, "verify", str(b1), "--json"))
    assert v["ok"] and [s["valid"] for s in v["signatures"]] == [True, True]
    import pypdf

    text = "".join(p.extract_text() for p in pypdf.PdfReader(b1 / "data/report.pdf").pages)
    assert "Li Wei (investigator): approved" in text and "____" not in text

    # The record changes after signing: the site and the next bundle show the signature as no longer valid.
    assert invoke(db, "criteria", "set", "SCR-0002", "height_cm", "170", operator="dr.a").exit_code == 0
    sigs = _json(invoke(db, "signatures", "SCR-0002", "--json"))
    assert [(s["record_type"], s["valid"]) for s in sigs] == [("eligibility_decision", False), ("export", True)]
    assert "changed after it was signed" in sigs[0]["invalid_reason"]
    assert "NO LONGER VALID" in invoke(db, "signatures", "SCR-0002").output
    assert invoke(db, "export", "SCR-0002", "--out", str(tmp_path / "b2"), "--lang", "en", operator="dm.x", config=cfg).exit_code == 0
    r = invoke(db, "verify", str(_bundle(tmp_path / "b2")), "--json")
    v = json.loads(r.output)
    assert r.exit_code == 0  # the site itself marked it no longer valid: reported, the bundle is what the site holds
    assert [(s["record_type"], s["valid"]) for s in v["signatures"]] == [("eligibility_decision", False)]
    assert any("NO LONGER VALID" in n for n in v["notes"])

    # A signature edited in the bundle is a verification failure (exit 8), named in signatures.json.
    doc = json.loads((b1 / "data/signatures.json").read_text())
    doc["signatures"][0]["content"]["decision"] = "eligible"
    (b1 / "data/signatures.json").write_text(json.dumps(doc))
    r = invoke(db, "verify", str(b1))
    assert r.exit_code == 8 and "signatures.json" in r.output and "altered" in r.output


def test_the_odm_export_carries_the_approval_as_a_signature(db: Path, tmp_path: Path) -> None:
    import xmlschema

    cfg = _site(tmp_path)
    assert invoke(db, "criteria", "set", "SCR-0002", "cooperation", "no", operator="dr.a").exit_code == 0
    assert invoke(db, "sign", "SCR-0002", "--meaning", "approved", "--password-stdin", operator="dr.a", input=PW).exit_code == 0
    r = invoke(db, "export", "SCR-0002", "--format", "odm", "--out", str(tmp_path / "edc"), "--json", operator="dm.x", config=cfg)
    odm = Path(_json(r)["odm"]).read_bytes()
    xmlschema.XMLSchema(str(importlib.resources.files("odmlib") / "schemas/odm/1.3.2/ODM1-3-2.xsd")).validate(io.BytesIO(odm))
    text = odm.decode()
    assert "<Signature>" in text and "<Meaning>approved</Meaning>" in text and "<FullName>Li Wei</FullName>" in text
    assert "SignatureRef" in text and "LegalReason" in text




def test_the_signature_check_never_crashes_on_garbage() -> None:
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from collector.export.verify import check_signatures

    scalars = st.none() | st.booleans() | st.integers(-2**60, 2**60) | st.floats() | st.text(max_size=20)
    values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                          max_leaves=20)
    sig = st.fixed_dictionaries({"uuid": st.text(max_size=8) | st.integers(), "record_type": st.sampled_from(
        ["eligibility_decision", "export", "review_resolution", "other"]) | values, "content_sha256": st.text(max_size=64),
        "content": values}, optional={"valid": values, "meaning": values})

    @settings(max_examples=300, deadline=None)
    @given(doc=st.fixed_dictionaries({"signatures": st.lists(sig | values, max_size=4)}) | values, elig=values)
    def run(doc, elig) -> None:
        problems, entries, notes = check_signatures(doc, elig, {"data/a.csv": "0" * 64})
        assert all(isinstance(p, str) for p in problems)

    run()
