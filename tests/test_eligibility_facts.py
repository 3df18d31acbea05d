"""Staff facts: typed parsing, one-line errors, JSON round trip, identifying facts."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collector.eligibility.facts import (
    FACTS,
    IDENTIFYING_FACTS,
    ContraceptionAnswer,
    FactError,
    FactValueError,
    UnknownFactError,
    decode_value,
    display_value,
    encode_value,
    parse_fact,
)

TODAY = date(2024, 6, 20)


def test_fact_names_are_the_design_names():
    assert set(FACTS) == {
        "consent_signed_on", "screening_date", "birth_date", "diagnosis_date", "wfn_category",
        "prior_treatment_failed", "prior_treatments", "height_cm", "weight_kg", "sex", "nutrition_good",
        "contraception", "cooperation",
    }
    assert IDENTIFYING_FACTS == {"birth_date"}
    assert display_value("birth_date", date(1980, 1, 1)) == "<withheld>"


@pytest.mark.parametrize("fact, raw, expected", [
    ("consent_signed_on", "2024-06-10", date(2024, 6, 10)),
    ("consent_signed_on", "no", "no"),
    ("screening_date", "2024-07-01", date(2024, 7, 1)),  # a planned screening may be in the future
    ("birth_date", " 1980-02-29 ", date(1980, 2, 29)),
    ("diagnosis_date", "2023-12-15", date(2023, 12, 15)),
    ("wfn_category", "probable_lab_supported", "probable_lab_supported"),
    ("wfn_category", "Probable-Lab-Supported", "probable_lab_supported"),
    ("prior_treatment_failed", "YES", "yes"),
    ("prior_treatment_failed", "n", "no"),
    ("prior_treatments", "riluzole 50 mg bid since 2023", "riluzole 50 mg bid since 2023"),
    ("height_cm", "100", Decimal("100")),
    ("height_cm", "250", Decimal("250")),
    ("height_cm", "172.5", Decimal("172.5")),
    ("height_cm", "172,5", Decimal("172.5")),
    ("weight_kg", "20", Decimal("20")),
    ("weight_kg", "300", Decimal("300")),
    ("weight_kg", "53.465", Decimal("53.465")),
    ("sex", "female", "female"),
    ("nutrition_good", "yes", "yes"),
    ("contraception", "yes", ContraceptionAnswer("yes")),
    ("contraception", "no", ContraceptionAnswer("no")),
    ("contraception", "not_applicable: post-menopausal", ContraceptionAnswer("not_applicable", "post-menopausal")),
    ("contraception", "Not applicable = surgically sterile", ContraceptionAnswer("not_applicable",
                                                                                "surgically sterile")),
    ("cooperation", "no", "no"),
])
def test_parse_ok(fact, raw, expected):
    assert parse_fact(fact, raw, today=TODAY) == expected


@pytest.mark.parametrize("fact, raw, words", [
    ("height_cm", "99.9", "outside 100-250"),
    ("height_cm", "250.1", "outside 100-250"),
    ("height_cm", "1.75", "outside 100-250"),  # metres typed instead of cm
    ("weight_kg", "19.99", "outside 20-300"),
    ("weight_kg", "301", "outside 20-300"),
    ("weight_kg", "seventy", "not a number"),
    ("weight_kg", "nan", "not a number"),
    ("weight_kg", "inf", "not a number"),
    ("height_cm", "172.5555", "more than 3 decimals"),
    ("birth_date", "2024-06-21", "in the future"),
    ("birth_date", "1880-01-01", "before 1900"),
    ("birth_date", "15/06/1980", "YYYY-MM-DD"),
    ("birth_date", "1981-02-29", "not a calendar date"),
    ("diagnosis_date", "2024-13-01", "not a calendar date"),
    ("consent_signed_on", "2025-01-01", "in the future"),
    ("consent_signed_on", "maybe", "YYYY-MM-DD"),
    ("wfn_category", "suspected", "definite, probable, probable_lab_supported, possible"),
    ("sex", "m", "male, female"),
    ("cooperation", "perhaps", "yes, no"),
    ("contraception", "not_applicable", "needs a reason"),
    ("contraception", "not_applicable:   ", "needs a reason"),
    ("contraception", "sometimes", "not_applicable: <reason>"),
    ("nutrition_good", "", "empty value"),
    ("height_cm", "\u0661\u0667\u0660", "digits 0-9"),  # Arabic-Indic 170: refused, not read as 170
    ("weight_kg", "\u096c\u096b", "digits 0-9"),  # Devanagari 65
    ("height_cm", "1e2", "digits 0-9"),
    ("birth_date", "\u0661\u0669\u0668\u0660-01-01", "YYYY-MM-DD"),
])
def test_parse_errors_are_specific_and_one_line(fact, raw, words):
    with pytest.raises(FactValueError) as exc:
        parse_fact(fact, raw, today=TODAY)
    msg = str(exc.value)
    assert words in msg and "\n" not in msg and msg.startswith(fact)


def test_full_width_digits_from_a_chinese_input_method_are_the_same_digits():
    assert parse_fact("height_cm", "\uff11\uff17\uff12.\uff15", today=TODAY) == Decimal("172.5")
    assert parse_fact("birth_date", "\uff11\uff19\uff18\uff10-\uff10\uff14-\uff10\uff12", today=TODAY) == date(1980, 4, 2)


def test_unknown_fact():
    with pytest.raises(UnknownFactError, match="use one of"):
        parse_fact("bmi", "20", today=TODAY)
    assert issubclass(UnknownFactError, FactError) and issubclass(FactValueError, FactError)


@pytest.mark.parametrize("fact, raw, known, words", [
    ("diagnosis_date", "2024-06-16", {"screening_date": date(2024, 6, 15)}, "after the screening date"),
    ("diagnosis_date", "1979-01-01", {"birth_date": date(1980, 1, 1)}, "before the recorded birth date"),
    ("screening_date", "2024-01-01", {"diagnosis_date": date(2024, 2, 1)}, "before the diagnosis date"),
    ("screening_date", "1980-01-01", {"birth_date": date(1980, 1, 1)}, "not after the recorded birth date"),
    ("birth_date", "2024-06-15", {"screening_date": date(2024, 6, 15)}, "not before the screening date"),
    ("birth_date", "2020-01-01", {"diagnosis_date": date(2019, 1, 1)}, "after the recorded diagnosis date"),
])
def test_cross_checks(fact, raw, known, words):
    with pytest.raises(FactValueError, match=words):
        parse_fact(fact, raw, today=TODAY, known=known)


def test_cross_check_messages_do_not_echo_birth_date():
    with pytest.raises(FactValueError) as exc:
        parse_fact("birth_date", "2024-06-15", today=TODAY, known={"screening_date": date(2024, 6, 15)})
    assert "2024-06-15" not in str(exc.value)


def test_diagnosis_on_screening_day_is_allowed_as_input():
    assert parse_fact("diagnosis_date", "2024-06-15", today=TODAY,
                      known={"screening_date": date(2024, 6, 15)}) == date(2024, 6, 15)


@pytest.mark.parametrize("fact, raw", [
    ("consent_signed_on", "2024-06-10"), ("consent_signed_on", "no"), ("birth_date", "1980-02-29"),
    ("height_cm", "172.5"), ("weight_kg", "53.465"), ("weight_kg", "70"), ("sex", "male"),
    ("contraception", "yes"), ("contraception", "not_applicable: vasectomy"), ("prior_treatments", "edaravone é"),
])
def test_json_round_trip(fact, raw):
    v = parse_fact(fact, raw, today=TODAY)
    assert decode_value(fact, encode_value(fact, v)) == v
    assert decode_value(fact, encode_value(fact, None)) is None


@settings(max_examples=300, deadline=None)
@given(st.decimals(min_value=Decimal(20), max_value=Decimal(300), places=3, allow_nan=False, allow_infinity=False))
def test_numbers_round_trip_exactly(x):
    v = parse_fact("weight_kg", str(x), today=TODAY)
    assert v == x
    assert decode_value("weight_kg", encode_value("weight_kg", v)) == x


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=30))
def test_parse_never_raises_anything_but_fact_errors(raw):
    for fact in FACTS:
        try:
            parse_fact(fact, raw, today=TODAY)
        except FactError as exc:
            assert "\n" not in str(exc)
