"""Append-only fact store: corrections keep history, the database refuses rewrites."""

from __future__ import annotations

import sqlite3
from datetime import date
from decimal import Decimal

import pytest
import sqlite_utils

from collector.eligibility.engine import evaluate
from collector.eligibility.facts import FactValueError, UnknownFactError
from collector.eligibility.schema import FACTS_SQL as SCHEMA_SQL
from collector.eligibility.store import (
    CorrectionReasonRequiredError,
    FactStoreError,
    UnknownSubjectError,
    current_facts,
    fact_history,
    record_fact,
    retract_fact,
)

T0 = 1718445600.0  # 2024-06-15T10:00:00Z
TODAY = date(2024, 6, 15)


@pytest.fixture
def db(tmp_path):
    d = sqlite_utils.Database(tmp_path / "t.sqlite")
    d.execute("PRAGMA foreign_keys = ON")
    d.conn.executescript("CREATE TABLE subjects (id TEXT PRIMARY KEY);" + SCHEMA_SQL)
    d.execute("INSERT INTO subjects (id) VALUES ('S001'), ('S002')")
    yield d
    d.close()


def rec(db, fact, raw, *, t=T0, reason=None, by="nurse.a", subject="S001", source="staff"):
    return record_fact(db, subject, fact, raw, by=by, reason=reason, now_utc=t, source=source, today=TODAY)


def test_schema_is_idempotent(db):
    db.conn.executescript(SCHEMA_SQL)  # registering twice must not fail or duplicate


def test_record_and_current(db):
    r = rec(db, "height_cm", "172.5")
    assert r.value == Decimal("172.5") and r.recorded_by == "nurse.a" and r.source == "staff"
    assert r.recorded_at == "2024-06-15T10:00:00.000Z" and r.supersedes is None
    rec(db, "sex", "female", t=T0 + 1)
    cur = current_facts(db, "S001")
    assert set(cur) == {"height_cm", "sex"} and cur["sex"].value == "female"
    assert current_facts(db, "S002") == {}
    stored = db.execute("SELECT value FROM criteria_facts WHERE fact = 'height_cm'").fetchone()[0]
    assert stored == "172.5"


def test_correction_needs_reason_and_keeps_history(db):
    first = rec(db, "weight_kg", "70")
    with pytest.raises(CorrectionReasonRequiredError, match="give a reason"):
        rec(db, "weight_kg", "71", t=T0 + 60)
    second = rec(db, "weight_kg", "71", t=T0 + 60, reason="scale re-zeroed", by="dr.b")
    assert second.supersedes == first.id and second.reason == "scale re-zeroed"
    assert current_facts(db, "S001")["weight_kg"].value == Decimal("71")
    hist = fact_history(db, "S001")
    assert [(h.value, h.recorded_by, h.reason) for h in hist] == [
        (Decimal("70"), "nurse.a", None), (Decimal("71"), "dr.b", "scale re-zeroed")]
    assert fact_history(db, "S001", "sex") == []


def test_same_value_without_reason_is_a_no_op(db):
    a = rec(db, "cooperation", "yes")
    b = rec(db, "cooperation", "Y", t=T0 + 5)
    assert a == b and len(fact_history(db, "S001")) == 1


def test_database_refuses_update_delete_and_unchained_insert(db):
    rec(db, "cooperation", "yes")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        db.execute("UPDATE criteria_facts SET value = '\"no\"'")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        db.execute("DELETE FROM criteria_facts")
    raw = ("INSERT INTO criteria_facts (subject_id, fact, value, recorded_by, recorded_at, source, reason, "
           "supersedes) VALUES ('S001', 'cooperation', '\"no\"', 'x', '2024-06-15T10:00:00.000Z', 'staff', ?, ?)")
    with pytest.raises(sqlite3.IntegrityError, match="supersede"):
        db.execute(raw, ["sneaky", None])  # a second value that does not supersede the first
    with pytest.raises(sqlite3.IntegrityError):
        db.execute(raw, [None, 1])  # superseding without a reason
    with pytest.raises(sqlite3.IntegrityError):
        db.execute(raw.replace("'staff'", "'robot'"), ["r", 1])  # bad source
    with pytest.raises(sqlite3.IntegrityError):
        db.execute(raw.replace("'S001'", "'S999'"), ["r", None])  # no such subject (foreign key)
    assert [h.value for h in fact_history(db, "S001")] == ["yes"]


def test_errors(db):
    with pytest.raises(UnknownSubjectError, match="register the subject"):
        rec(db, "sex", "male", subject="S404")
    with pytest.raises(UnknownFactError):
        rec(db, "bmi", "20")
    with pytest.raises(FactValueError, match="outside 100-250"):
        rec(db, "height_cm", "1.72")
    with pytest.raises(FactStoreError, match="who records"):
        rec(db, "sex", "male", by="  ")
    with pytest.raises(FactStoreError, match="session:<id>"):
        rec(db, "height_cm", "170", source="spirometer")
    assert fact_history(db, "S001") == []


def test_future_dates_use_today_from_clock(db):
    with pytest.raises(FactValueError, match="in the future"):
        record_fact(db, "S001", "birth_date", "2024-06-16", by="x", now_utc="2024-06-15T10:00:00Z",
                    today=date(2024, 6, 15))
    # today defaults to the host's local date at now_utc
    with pytest.raises(FactValueError, match="in the future"):
        record_fact(db, "S001", "birth_date", "2030-01-01", by="x", now_utc=T0)


def test_cross_check_against_stored_facts(db):
    rec(db, "screening_date", "2024-06-10")
    with pytest.raises(FactValueError, match="after the screening date"):
        rec(db, "diagnosis_date", "2024-06-12")
    rec(db, "diagnosis_date", "2023-12-15")
    # Correcting a fact is checked against the others, not against its own old value.
    rec(db, "diagnosis_date", "2023-12-14", reason="date from the referral letter")


def test_session_source(db):
    r = rec(db, "height_cm", "178", source="session:sp-42")
    assert r.source == "session:sp-42"


def test_retract_then_record_again(db):
    rec(db, "birth_date", "1980-01-01")
    with pytest.raises(CorrectionReasonRequiredError):
        retract_fact(db, "S001", "birth_date", by="dr.b", reason=" ", now_utc=T0)
    retract_fact(db, "S001", "birth_date", by="dr.b", reason="entered for the wrong subject", now_utc=T0 + 1)
    assert "birth_date" not in current_facts(db, "S001")
    with pytest.raises(FactStoreError, match="no current value"):
        retract_fact(db, "S001", "birth_date", by="dr.b", reason="again", now_utc=T0 + 2)
    with pytest.raises(CorrectionReasonRequiredError, match="retracted"):
        rec(db, "birth_date", "1981-01-01", t=T0 + 3)
    rec(db, "birth_date", "1981-01-01", t=T0 + 3, reason="birth date of the right subject")
    assert [h.value for h in fact_history(db, "S001")] == [date(1980, 1, 1), None, date(1981, 1, 1)]


def test_store_feeds_engine(db):
    for fact, raw in [("consent_signed_on", "2024-06-10"), ("birth_date", "2006-06-15"),
                      ("screening_date", "2024-06-15")]:
        rec(db, fact, raw)
    d = evaluate(current_facts(db, "S001"), evaluated_at="2024-06-15T12:00:00.000Z")
    assert d.criterion("age").state == "met" and d.criterion("consent").state == "met"
    rec(db, "birth_date", "2006-06-16", reason="typo", t=T0 + 10)
    d = evaluate(current_facts(db, "S001"), evaluated_at="2024-06-15T12:00:00.000Z")
    age = d.criterion("age")
    assert age.state == "not_met" and age.recorded_at == "2024-06-15T10:00:10.000Z"
