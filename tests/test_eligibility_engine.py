"""Eligibility engine: every boundary of design/eligibility.md, multi-night and multi-session cases."""

from __future__ import annotations

import json
from datetime import date

import pytest

from collector.eligibility.engine import (
    CRITERIA,
    NightResult,
    SpirometryResult,
    Thresholds,
    add_months,
    age_on,
    completed_months,
    evaluate,
)
from collector.eligibility.facts import RecordedFact, parse_fact

TODAY = date(2030, 1, 1)
SCREEN = date(2024, 6, 15)
AT = "2024-06-20T10:00:00.000Z"


def facts(**raw: str) -> dict[str, RecordedFact]:
    """Typed facts from CLI strings, parsed exactly as the store parses them."""
    out = {}
    for i, (name, text) in enumerate(raw.items()):
        out[name] = RecordedFact(
            fact=name, value=parse_fact(name, text, today=TODAY), recorded_by="nurse.a",
            recorded_at=f"2024-06-1{i % 10}T08:00:00.000Z", source="staff", id=i + 1,
        )
    return out


GOOD = dict(
    consent_signed_on="2024-06-10",
    screening_date="2024-06-15",
    birth_date="1980-03-02",
    diagnosis_date="2023-09-01",
    wfn_category="probable",
    prior_treatment_failed="yes",
    prior_treatments="riluzole 2023-2024, progression",
    height_cm="175",
    weight_kg="70",
    sex="male",
    nutrition_good="yes",
    contraception="yes",
    cooperation="yes",
)
GOOD_SPIRO = [SpirometryResult("sp1", True, 72.0, "gli-global-2022", "gli-2012", 69.0, fvc_l=3.5, grade="A",
                               sex="male", height_cm=175.0)]
GOOD_NIGHTS = [NightResult("n1", 0.4, True)]


def run(overrides: dict | None = None, *, drop: tuple[str, ...] = (), spiro=None, nights=None,
        first_session_on: date | None = SCREEN, th: Thresholds | None = None):
    raw = {**GOOD, **(overrides or {})}
    for k in drop:
        raw.pop(k, None)
    return evaluate(
        facts(**raw),
        spirometry=GOOD_SPIRO if spiro is None else spiro,
        nights=GOOD_NIGHTS if nights is None else nights,
        first_session_on=first_session_on,
        thresholds=th or Thresholds(),
        evaluated_at=AT,
    )


def state(decision, cid: str) -> str:
    return decision.criterion(cid).state


# ----------------------------------------------------------------------- whole decision


def test_good_subject_is_eligible_and_json_shape():
    d = run()
    assert d.decision == "eligible", d.summary
    out = d.as_dict()
    json.dumps(out)  # serialisable
    assert {"decision", "criteria", "thresholds", "evaluated_at"} <= set(out)
    assert [c["id"] for c in out["criteria"]] == list(CRITERIA)
    for c in out["criteria"]:
        assert {"id", "state", "reason", "value", "source", "recorded_by", "recorded_at"} <= set(c)
        assert c["state"] == "met" and c["reason"]
    assert out["thresholds"]["equation"] == "gli-global-2022"
    assert out["thresholds"]["accepted_wfn_categories"] == ["definite", "probable", "probable_lab_supported",
                                                            "possible"]
    assert out["evaluated_at"] == AT


def test_birth_date_never_in_output():
    out = json.dumps(run().as_dict())
    assert "1980-03-02" not in out and "1980" not in out


def test_ineligible_lists_every_failed_criterion():
    d = run({"cooperation": "no", "weight_kg": "50"}, nights=[NightResult("n1", 3.0, True)])
    assert d.decision == "ineligible"
    failed = {c.id for c in d.criteria if c.state == "not_met"}
    assert failed == {"cooperation", "bmi", "nocturnal_spo2"}
    assert len(d.summary) == 3 and all(any(s.startswith(f) for s in d.summary) for f in failed)


def test_incomplete_lists_missing_and_review():
    d = run(drop=("cooperation",), nights=[NightResult("n1", 1.9, True, borderline=True)])
    assert d.decision == "incomplete"
    assert {(c.id, c.state) for c in d.criteria if c.state != "met"} == {
        ("cooperation", "pending"), ("nocturnal_spo2", "needs_review")}
    assert any("cooperation" in s for s in d.summary) and any("nocturnal_spo2" in s for s in d.summary)


def test_not_met_beats_pending():
    d = run({"cooperation": "no"}, drop=("sex",), spiro=[], nights=[])
    assert d.decision == "ineligible"


def test_nothing_recorded_is_incomplete():
    d = evaluate({}, evaluated_at=AT)
    assert d.decision == "incomplete"
    assert all(c.state == "pending" for c in d.criteria)


def test_provenance_is_latest_input():
    d = run()
    bmi = d.criterion("bmi")
    assert bmi.recorded_by == "nurse.a" and bmi.source == "staff"
    assert bmi.recorded_at == max(i["recorded_at"] for i in bmi.inputs)
    assert d.criterion("fvc").source == "session:sp1"
    assert d.criterion("nocturnal_spo2").source == "session:n1"


# ----------------------------------------------------------------------- age


@pytest.mark.parametrize(
    "birth, screening, expected_state, expected_age",
    [
        ("2006-06-16", "2024-06-15", "not_met", 17),  # 18th birthday tomorrow
        ("2006-06-15", "2024-06-15", "met", 18),  # 18th birthday on the screening day
        ("1964-06-15", "2024-06-15", "met", 60),
        ("1963-06-16", "2024-06-15", "met", 60),  # 61 tomorrow
        ("1963-06-15", "2024-06-15", "not_met", 61),  # 61st birthday on the screening day
        # 29 February birthdays
        ("2008-02-29", "2026-02-28", "needs_review", 17),  # 17 by 1 March rule, 18 by 28 Feb rule
        ("2008-02-29", "2026-03-01", "met", 18),
        ("2008-02-29", "2026-02-27", "not_met", 17),  # both rules agree
        ("2008-02-29", "2028-02-29", "met", 20),  # leap year: birthday exists
        ("1964-02-29", "2025-02-28", "needs_review", 60),  # 60 by 1 March rule, 61 by 28 Feb rule
        ("1964-02-29", "2025-03-01", "not_met", 61),
        ("1964-02-29", "2024-02-28", "met", 59),
        ("1964-02-29", "2024-02-29", "met", 60),
        ("2000-02-29", "2023-02-28", "met", 22),  # rules disagree on the age, not on the decision
    ],
)
def test_age_boundaries(birth, screening, expected_state, expected_age):
    d = run({"birth_date": birth, "screening_date": screening, "consent_signed_on": "2020-01-01",
             "diagnosis_date": "2020-01-01"}, first_session_on=None)
    c = d.criterion("age")
    assert c.state == expected_state, c.reason
    assert c.value["age_years"] == expected_age


def test_age_on_rules():
    assert age_on(date(2008, 2, 29), date(2026, 2, 28)) == 17
    assert age_on(date(2008, 2, 29), date(2026, 2, 28), "feb28") == 18
    assert age_on(date(2008, 2, 29), date(2026, 3, 1), "feb28") == 18


def test_age_pending_and_default_screening_date():
    d = run(drop=("birth_date",))
    assert state(d, "age") == "pending" and "birth_date" in d.criterion("age").reason
    # No screening_date fact: the first session date is the screening date.
    d = run({"birth_date": "2006-06-15"}, drop=("screening_date",), first_session_on=date(2024, 6, 15))
    assert state(d, "age") == "met" and d.screening_date == date(2024, 6, 15)
    d = run({"birth_date": "2006-06-15"}, drop=("screening_date",), first_session_on=date(2024, 6, 14))
    assert state(d, "age") == "not_met"
    d = run(drop=("screening_date",), first_session_on=None)
    assert state(d, "age") == "pending" and "screening_date" in d.criterion("age").reason


# ----------------------------------------------------------------------- diagnosis window


@pytest.mark.parametrize(
    "diagnosis, screening, expected",
    [
        ("2024-01-15", "2024-06-15", "not_met"),  # 5 months
        ("2023-12-16", "2024-06-15", "not_met"),  # one day short of 6 months
        ("2023-12-15", "2024-06-15", "met"),  # exactly 6 months to the day
        ("2022-06-15", "2024-06-15", "met"),  # exactly 24 months
        ("2022-06-16", "2024-06-15", "met"),
        ("2022-05-15", "2024-06-15", "not_met"),  # 25 months
        # 24 months and some days: 24 completed months (alternative) but past the window (primary)
        ("2022-06-14", "2024-06-15", "needs_review"),
        ("2022-05-16", "2024-06-15", "needs_review"),
        # month ends: 31 Aug + 6 months = 29 Feb (leap) / 28 Feb (non-leap); counting back disagrees
        ("2023-08-31", "2024-02-29", "needs_review"),
        ("2024-08-31", "2025-02-28", "needs_review"),
        ("2023-08-31", "2024-02-28", "not_met"),  # both ways short of 6 months
        ("2023-08-31", "2024-03-01", "met"),
        ("2023-08-29", "2024-02-29", "met"),  # no month-end ambiguity
        ("2022-02-28", "2024-02-29", "needs_review"),  # +24 months = 28 Feb 2024; back 24 = 28 Feb 2022
    ],
)
def test_diagnosis_window(diagnosis, screening, expected):
    d = run({"diagnosis_date": diagnosis, "screening_date": screening, "consent_signed_on": "2020-01-01"},
            first_session_on=None)
    c = d.criterion("als_diagnosis")
    assert c.state == expected, c.reason


def test_diagnosis_after_screening_not_met():
    f = facts(**{**GOOD})
    f["diagnosis_date"] = RecordedFact("diagnosis_date", date(2024, 7, 1), "x", "2024-06-01T00:00:00.000Z", "staff")
    d = evaluate(f, spirometry=GOOD_SPIRO, nights=GOOD_NIGHTS, evaluated_at=AT)
    assert state(d, "als_diagnosis") == "not_met"


@pytest.mark.parametrize("category, accepted, expected", [
    ("possible", ("definite", "probable", "probable_lab_supported", "possible"), "met"),
    ("possible", ("definite", "probable", "probable_lab_supported"), "not_met"),
    ("definite", ("definite",), "met"),
])
def test_wfn_category_config(category, accepted, expected):
    d = run({"wfn_category": category}, th=Thresholds(accepted_wfn_categories=accepted))
    assert state(d, "als_diagnosis") == expected
    assert d.as_dict()["thresholds"]["accepted_wfn_categories"] == list(accepted)


def test_calendar_helpers():
    assert add_months(date(2023, 8, 31), 6) == date(2024, 2, 29)
    assert add_months(date(2024, 8, 31), 6) == date(2025, 2, 28)
    assert add_months(date(2024, 3, 31), -1) == date(2024, 2, 29)
    assert add_months(date(2024, 1, 15), -13) == date(2022, 12, 15)
    assert completed_months(date(2023, 8, 31), date(2024, 2, 29)) == 6
    assert completed_months(date(2023, 8, 31), date(2024, 2, 28)) == 5
    assert completed_months(date(2022, 6, 14), date(2024, 6, 15)) == 24
    assert completed_months(date(2024, 6, 15), date(2024, 6, 15)) == 0


# ----------------------------------------------------------------------- consent


@pytest.mark.parametrize("signed, first, expected", [
    ("2024-06-14", date(2024, 6, 15), "met"),
    ("2024-06-15", date(2024, 6, 15), "met"),  # same day: date-only ICF counts as before
    ("2024-06-16", date(2024, 6, 16), "not_met"),  # after the screening_date fact (2024-06-15)
    ("2024-06-15", date(2024, 6, 14), "not_met"),  # a session before consent
    ("no", date(2024, 6, 15), "not_met"),
])
def test_consent(signed, first, expected):
    d = run({"consent_signed_on": signed}, first_session_on=first)
    assert state(d, "consent") == expected, d.criterion("consent").reason


def test_consent_without_any_session():
    d = run(drop=("screening_date",), first_session_on=None)
    assert state(d, "consent") == "met"
    assert state(run(drop=("consent_signed_on",)), "consent") == "pending"


# ----------------------------------------------------------------------- FVC


def spiro(gg: float | None, g12: float | None = None, *, sid="sp", valid=True, **kw) -> SpirometryResult:
    return SpirometryResult(sid, valid, gg, "gli-global-2022", "gli-2012" if g12 is not None else None, g12, **kw)


@pytest.mark.parametrize("sessions, expected", [
    ([spiro(49.9)], "not_met"),
    ([spiro(50.0)], "met"),
    ([spiro(50.0, 50.0)], "met"),
    ([spiro(49.9, 49.0)], "not_met"),
    ([spiro(50.4, 47.3)], "needs_review"),  # the design file's 60-year-old man
    ([spiro(49.9, 51.0)], "needs_review"),
    ([spiro(48.0, sid="a"), spiro(50.0, sid="b")], "met"),  # best valid session decides
    ([spiro(55.0, sid="a", valid=False), spiro(49.0, sid="b")], "not_met"),  # invalid session ignored
    ([spiro(55.0, valid=False, note="not repeatable")], "pending"),
    ([spiro(60.0, manoeuvre="SVC")], "pending"),  # SVC does not answer an FVC criterion
    ([], "pending"),
    # best per equation across sessions: no straddle when each equation's best passes
    ([spiro(50.4, 47.3, sid="a"), spiro(49.0, 51.0, sid="b")], "met"),
])
def test_fvc(sessions, expected):
    d = run(spiro=sessions)
    c = d.criterion("fvc")
    assert c.state == expected, c.reason
    if expected == "needs_review":
        assert "gli-2012" in c.reason and c.value["other_fvc_pct_predicted"] is not None


def test_fvc_configured_equation_and_mismatches():
    s = spiro(50.4, 47.3)
    d = run(spiro=[s], th=Thresholds(equation="gli-2012"))
    c = d.criterion("fvc")
    assert c.state == "needs_review" and c.value["equation"] == "gli-2012"
    assert c.value["fvc_pct_predicted"] == 47.3 and c.value["other_fvc_pct_predicted"] == 50.4
    # only the other equation computed: needs recomputation, not a guess
    only_gg = SpirometryResult("x", True, 60.0, "gli-global-2022")
    assert state(run(spiro=[only_gg], th=Thresholds(equation="gli-2012")), "fvc") == "needs_review"
    # prediction made with a height or sex that was corrected since
    assert state(run(spiro=[spiro(70.0, height_cm=180.0)]), "fvc") == "needs_review"
    assert state(run(spiro=[spiro(70.0, sex="female")]), "fvc") == "needs_review"
    assert state(run(spiro=[spiro(70.0, height_cm=175.3, sex="male")]), "fvc") == "met"


# ----------------------------------------------------------------------- nocturnal SpO2


N = NightResult


@pytest.mark.parametrize("nights, expected", [
    ([N("a", 2.00, True)], "met"),
    ([N("a", 2.01, True)], "not_met"),
    ([N("a", 0.0, True)], "met"),
    ([], "pending"),
    ([N("a", 0.5, False)], "pending"),  # invalid night only
    ([N("a", 9.0, False), N("b", 1.0, True)], "met"),  # invalid night does not count, even if high
    ([N("a", 1.0, True), N("b", 2.5, True), N("c", 0.3, True)], "not_met"),  # one failing among passing
    ([N("a", 1.0, True), N("b", 1.9, True, borderline=True)], "needs_review"),
    ([N("a", 2.3, True, borderline=True)], "needs_review"),  # primary fails, a variant passes
    ([N("a", 3.0, True), N("b", 1.9, True, borderline=True)], "not_met"),  # another valid night fails
    ([N("a", 1.0, True), N("b", 1.9, False, borderline=True)], "met"),  # borderline but invalid: ignored
    ([N("a", None, True)], "needs_review"),
])
def test_nocturnal_spo2(nights, expected):
    d = run(nights=nights)
    c = d.criterion("nocturnal_spo2")
    assert c.state == expected, c.reason
    invalid = [n.session_id for n in nights if not n.night_valid]
    for sid in invalid:
        assert sid in c.reason  # invalid nights are listed
    assert [n["session_id"] for n in c.value["nights"]] == [n.session_id for n in nights]


def test_failing_night_named_in_reason():
    c = run(nights=[N("good", 1.0, True), N("bad", 2.5, True)]).criterion("nocturnal_spo2")
    assert "bad" in c.reason and "good" not in c.reason and c.source == "session:bad"


# ----------------------------------------------------------------------- BMI


@pytest.mark.parametrize("height, weight, nutrition, expected", [
    ("200", "74", "yes", "met"),  # 18.5 exactly
    ("200", "73.96", "yes", "needs_review"),  # 18.49: the case report form's 1 decimal writes 18.5
    ("200", "73.76", "yes", "not_met"),  # 18.44 is written 18.4: fails either way
    ("170", "53.465", "yes", "met"),  # 18.5 exactly; float arithmetic gives 18.499999...
    ("170", "53.464", "yes", "needs_review"),  # 18.4996 -> 18.5 on the form
    ("175", "70", "no", "not_met"),  # investigator judges nutrition poor
    ("200", "73.96", "no", "not_met"),
    ("175", "70", None, "pending"),
    (None, "70", "yes", "pending"),
    ("200", "73.76", None, "not_met"),  # a failing part decides even if another is missing
])
def test_bmi(height, weight, nutrition, expected):
    over = {"height_cm": height, "weight_kg": weight, "nutrition_good": nutrition}
    drop = tuple(k for k, v in over.items() if v is None)
    d = run({k: v for k, v in over.items() if v is not None}, drop=drop)
    c = d.criterion("bmi")
    assert c.state == expected, c.reason


def test_bmi_display_never_rounds_up_to_pass():
    c = run({"height_cm": "200", "weight_kg": "73.999"}).criterion("bmi")
    assert c.state == "needs_review" and "BMI 18.4998 kg/m2" in c.reason and "written 18.5" in c.reason
    assert "18.50 " not in c.reason and c.value["crf_bmi"] == 18.5


def test_bmi_crf_precision_is_the_config_key():
    """BMI 18.46 rounds to 18.5 at one decimal (review) but to 18.46 at two (a plain fail)."""
    facts = {"height_cm": "200", "weight_kg": "73.84"}  # 18.46
    assert run(facts).criterion("bmi").state == "needs_review"
    two = run(facts, th=Thresholds(crf_decimals=2)).criterion("bmi")
    assert two.state == "not_met" and "BMI 18.46 kg/m2" in two.reason and two.value["crf_decimals"] == 2


def test_fvc_rounding_onto_the_limit_needs_review_and_is_never_shown_equal():
    c = run(spiro=[spiro(49.96)]).criterion("fvc")
    assert c.state == "needs_review" and "best FVC 49.96 % predicted" in c.reason and "written 50.0 %" in c.reason
    c = run(spiro=[spiro(49.99)], th=Thresholds(crf_decimals=2)).criterion("fvc")
    assert c.state == "not_met" and "49.99 % predicted" in c.reason and c.reason.endswith("< 50 %")
    c = run(spiro=[spiro(49.996)], th=Thresholds(crf_decimals=2)).criterion("fvc")
    assert c.state == "needs_review" and "49.996 %" in c.reason  # 2 decimals would print 50.00
    assert run(spiro=[spiro(50.04)]).criterion("fvc").state == "met"  # 50.0 on the form: same side


def test_fvc_lower_row_gli_lookup_on_the_other_side_needs_review():
    both = run(spiro=[spiro(50.1, lower_row_fvc_pct_predicted=49.9)]).criterion("fvc")
    assert both.state == "needs_review" and "lower quarter-year row" in both.reason and "49.9 %" in both.reason
    assert run(spiro=[spiro(50.3, lower_row_fvc_pct_predicted=50.2)]).criterion("fvc").state == "met"


def test_t90_above_limit_never_printed_equal_to_it():
    c = run(nights=[N("n1", 2.004, True)]).criterion("nocturnal_spo2")
    assert c.state == "not_met" and "T90 2.004 %" in c.reason


# ----------------------------------------------------------------------- staff yes/no criteria


@pytest.mark.parametrize("cid, fact, text, expected", [
    ("contraception", "contraception", "yes", "met"),
    ("contraception", "contraception", "no", "not_met"),
    ("contraception", "contraception", "not_applicable: post-menopausal", "met"),
    ("cooperation", "cooperation", "yes", "met"),
    ("cooperation", "cooperation", "no", "not_met"),
    ("prior_treatment", "prior_treatment_failed", "yes", "met"),
    ("prior_treatment", "prior_treatment_failed", "no", "not_met"),
])
def test_staff_criteria(cid, fact, text, expected):
    assert state(run({fact: text}), cid) == expected


def test_staff_criteria_pending():
    for cid, fact in [("contraception", "contraception"), ("cooperation", "cooperation"),
                      ("prior_treatment", "prior_treatment_failed")]:
        assert state(run(drop=(fact,)), cid) == "pending"
    # treatments must be listed
    assert state(run(drop=("prior_treatments",)), "prior_treatment") == "pending"
