"""ATS/ERS 2019 acceptability, EOFE (incl. the ALS-relevant third rule), grades, reported values."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collector.spirometry.quality import (
    ACCEPTABLE,
    NOT_USABLE,
    USABLE,
    InvalidManoeuvreError,
    Manoeuvre,
    assess_session,
    grade,
    repeatability_tolerance_ml,
)


def blow(number: int, fvc: float, fev1: float | None = None, **kw) -> Manoeuvre:
    """A clean manoeuvre (plateau reached) unless overridden."""
    base = dict(bev_l=0.05, fet_s=8.0, last_second_volume_change_l=0.010, hesitation_s=0.5)
    base.update(kw)
    return Manoeuvre(number=number, fvc_l=fvc, fev1_l=fev1 if fev1 is not None else round(fvc * 0.8, 3), **base)


def one(m: Manoeuvre):
    return assess_session([m]).manoeuvres[0]


# ------------------------------------------------------------------ start of test


@pytest.mark.parametrize("fvc,bev,ok", [
    (3.000, 0.150, True),   # 5 % of 3.000 L = 0.150 L: at the limit passes
    (3.000, 0.151, False),
    (1.500, 0.100, True),   # 5 % = 0.075 < 0.100: the 0.100 L floor applies
    (1.500, 0.101, False),
    (2.100, 0.105, True),   # 5 % of 2.100 = 0.105 (0.05 * 2.1 = 0.10500000000000001 in floats)
])
def test_bev_limit_is_inclusive_in_integer_millilitres(fvc, bev, ok):
    a = one(blow(1, fvc, bev_l=bev))
    assert (a.fev1.status == ACCEPTABLE) is ok
    assert (a.fvc.status == ACCEPTABLE) is ok
    if not ok:
        assert a.fev1.status == NOT_USABLE and a.fvc.status == NOT_USABLE
        assert "bev_too_large" in a.fvc.reasons


def test_bev_not_reported_cannot_be_verified():
    a = one(blow(1, 3.0, bev_l=None))
    assert a.fvc.status == NOT_USABLE and "bev_not_reported" in a.fvc.reasons


def test_hesitation_over_two_seconds_is_a_warning_unless_configured():
    assert one(blow(1, 3.0, hesitation_s=2.0)).fev1.status == ACCEPTABLE
    a = one(blow(1, 3.0, hesitation_s=2.001))
    assert a.fev1.status == ACCEPTABLE and a.fvc.status == ACCEPTABLE and a.warnings == ("hesitation_over_2s",)
    strict = assess_session([blow(1, 3.0, hesitation_s=2.001)], hesitation_fails=True).manoeuvres[0]
    assert strict.fev1.status == USABLE and "hesitation_too_long" in strict.fev1.reasons and strict.warnings == ()


# ------------------------------------------------------------------ end of forced expiration


def test_plateau_exactly_25_ml_passes_by_the_table():
    """The 2019 table says <= 0.025 L (its text 'less than'): the table is used and recorded."""
    a = one(blow(1, 3.0, last_second_volume_change_l=0.025, fet_s=9.0))
    assert a.eofe_by == ("plateau",) and a.fvc.status == ACCEPTABLE
    b = one(blow(1, 3.0, last_second_volume_change_l=0.026, fet_s=9.0))
    assert not b.eofe_met
    assert b.fvc.status == USABLE and "no_end_of_forced_expiration" in b.fvc.reasons
    assert b.fev1.status == ACCEPTABLE  # EOFE is not needed for FEV1


def test_fet_exactly_15_s_passes():
    a = one(blow(1, 3.0, last_second_volume_change_l=0.200, fet_s=15.0))
    assert a.eofe_by == ("fet_15s",) and a.fvc.status == ACCEPTABLE
    b = one(blow(1, 3.0, last_second_volume_change_l=0.200, fet_s=14.999))
    assert not b.eofe_met


def test_plateau_from_curve_and_device_flag():
    times = [i * 0.1 for i in range(61)]  # 0..6 s
    vols = [min(3.0, 0.8 * t) if t < 3.75 else 3.0 + 0.01 * (t - 3.75) for t in times]
    a = one(blow(1, 3.0, last_second_volume_change_l=None, curve=(times, vols)))
    assert a.eofe_by == ("plateau",)
    assert one(blow(1, 3.0, last_second_volume_change_l=None, plateau=True)).eofe_by == ("plateau",)
    # A device 'early termination' flag overrides its own plateau flag.
    assert not one(blow(1, 3.0, last_second_volume_change_l=None, plateau=True, early_termination=True)).eofe_met


def test_third_eofe_rule_lets_short_blows_count_als_session():
    """No plateau, FET 4 s: typical ALS blows.  FVC within 150 mL of, or above, the largest prior FVC."""
    short = dict(last_second_volume_change_l=0.120, fet_s=4.0)
    s = assess_session([
        blow(1, 2.00, 1.70, **short),  # no prior: cannot use rule 3
        blow(2, 1.85, 1.60, **short),  # 2.00 - 0.150 = 1.85: exactly at tolerance -> met
        blow(3, 2.10, 1.72, **short),  # greater than the largest prior -> met
        blow(4, 1.80, 1.50, **short),  # 300 mL below 2.10 -> not met
    ])
    fvc = [m.fvc.status for m in s.manoeuvres]
    assert fvc == [USABLE, ACCEPTABLE, ACCEPTABLE, USABLE]
    assert s.manoeuvres[1].eofe_by == ("fvc_repeatable_with_prior",)
    assert s.fvc.reported_l == 2.10 and s.fvc.reported_from == 3 and s.fvc.reported_basis == ACCEPTABLE
    assert s.fvc.repeatability_diff_ml == 250 and s.fvc.grade == "D"
    assert [m.fev1.status for m in s.manoeuvres] == [ACCEPTABLE] * 4  # FEV1 does not need EOFE
    assert s.fev1.reported_l == 1.72 and s.fev1.grade == "A"
    assert s.more_attempts_needed and s.more_attempts_reasons == ("fvc_fewer_than_3_acceptable",)


def test_third_rule_ignores_prior_blows_with_untrustworthy_volume():
    short = dict(last_second_volume_change_l=0.120, fet_s=4.0)
    s = assess_session([blow(1, 2.60, faulty_zero_flow=True, **short), blow(2, 2.00, **short)])
    assert s.manoeuvres[1].fvc.status == USABLE  # 2.60 from a faulty-zero blow is not a reference


# ------------------------------------------------------------------ other criteria


def test_cough_in_first_second_spoils_fev1_only():
    a = one(blow(1, 3.0, cough_first_second=True))
    assert a.fev1.status == NOT_USABLE and a.fvc.status == ACCEPTABLE


def test_glottic_closure():
    a = one(blow(1, 3.0, glottic_closure_first_second=True))
    assert a.fev1.status == NOT_USABLE and a.fvc.status == NOT_USABLE
    b = one(blow(1, 3.0, glottic_closure_after_first_second=True))
    assert b.fev1.status == ACCEPTABLE and b.fvc.status == USABLE


@pytest.mark.parametrize("flag", ["leak", "obstructed", "submaximal_inspiration"])
def test_acceptability_only_flags_leave_the_blow_usable(flag):
    a = one(blow(1, 3.0, **{flag: True}))
    assert a.fev1.status == USABLE and a.fvc.status == USABLE and flag in a.fvc.reasons


def test_faulty_zero_flow_makes_not_usable():
    a = one(blow(1, 3.0, faulty_zero_flow=True))
    assert a.fev1.status == NOT_USABLE and a.fvc.status == NOT_USABLE


def test_fivc_limit():
    assert one(blow(1, 3.0, fivc_l=3.150)).fvc.status == ACCEPTABLE  # 150 mL = 5 % of 3.0 L
    a = one(blow(1, 3.0, fivc_l=3.151))
    assert a.fvc.status == USABLE and "fivc_exceeds_fvc" in a.fvc.reasons


def test_fev1_above_fvc_is_not_usable():
    a = one(Manoeuvre(number=1, fvc_l=2.0, fev1_l=2.2, bev_l=0.05, fet_s=8, last_second_volume_change_l=0.01))
    assert a.fvc.status == NOT_USABLE and "fev1_exceeds_fvc" in a.fvc.reasons


# ------------------------------------------------------------------ repeatability, grades, reported values


def test_repeatability_exactly_150_ml_passes_despite_floating_point():
    assert 3.45 - 3.30 > 0.150 and 1.85 - 1.70 > 0.150  # the trap: 0.15000000000000036
    s = assess_session([blow(1, 3.45, 1.85), blow(2, 3.30, 1.70), blow(3, 3.10, 1.60)])
    assert s.fvc.repeatability_diff_ml == 150 and s.fvc.repeatable and s.fvc.grade == "A"
    assert s.fev1.repeatability_diff_ml == 150 and s.fev1.grade == "A"
    assert not s.more_attempts_needed and s.more_attempts_reasons == ()
    t = assess_session([blow(1, 3.45, 1.85), blow(2, 3.299, 1.70), blow(3, 3.10, 1.60)])
    assert not t.fvc.repeatable and t.fvc.grade == "C"
    assert t.more_attempts_needed and t.more_attempts_reasons == ("fvc_not_repeatable",)


@pytest.mark.parametrize("values,usable,expected", [
    ([3000, 2850, 2800], 0, "A"),
    ([3000, 2850], 0, "B"),
    ([3000, 2849, 2700], 0, "C"),
    ([3000, 2800], 0, "C"),
    ([3000, 2750], 0, "D"),
    ([3000, 2749], 0, "E"),
    ([3000], 0, "E"),
    ([], 2, "U"),
    ([], 0, "F"),
])
def test_grades_adult(values, usable, expected):
    assert grade(values, usable) == expected


def test_grades_child_use_100_ml_or_10_percent():
    assert repeatability_tolerance_ml(5, 800) == 100
    assert repeatability_tolerance_ml(5, 1200) == 120
    assert repeatability_tolerance_ml(6, 1200) == 120
    assert repeatability_tolerance_ml(6.01, 1200) == 150
    assert grade([1200, 1080, 1000], 0, age_years=5) == "A"
    assert grade([1200, 1079, 1000], 0, age_years=5) == "C"  # 121 mL <= max(150, 120)
    assert grade([1200, 1079, 1000], 0, age_years=30) == "A"


def test_reported_values_are_largest_acceptable_possibly_from_different_blows():
    s = assess_session([
        blow(1, 3.40, 2.50),
        blow(2, 3.30, 2.70),
        blow(3, 3.60, 2.20, leak=True),  # larger, but only usable
        blow(4, 3.35, 2.60),
    ])
    assert (s.fvc.reported_l, s.fvc.reported_from) == (3.40, 1)
    assert (s.fev1.reported_l, s.fev1.reported_from) == (2.70, 2)
    assert s.fvc.largest_usable_or_acceptable_l == 3.60  # the alternative reading, for review
    assert s.fvc.n_acceptable == 3 and s.fvc.n_usable == 1


def test_no_acceptable_but_usable_reports_largest_usable_grade_u():
    s = assess_session([blow(1, 2.0, leak=True), blow(2, 2.2, leak=True)])
    assert s.fvc.grade == "U" and s.fvc.reported_l == 2.2 and s.fvc.reported_basis == USABLE
    s2 = assess_session([blow(1, 2.0, faulty_zero_flow=True)])
    assert s2.fvc.grade == "F" and s2.fvc.reported_l is None and s2.fvc.reported_basis is None


def test_attempt_limit_eight():
    blows = [blow(i, 2.0 + 0.3 * i, leak=True) for i in range(1, 9)]
    s = assess_session(blows)
    assert s.attempts == 8 and not s.more_attempts_needed
    assert "attempt_limit_8_reached" in s.more_attempts_reasons
    assert assess_session(blows[:7]).more_attempts_needed


def test_order_follows_manoeuvre_number_and_duplicates_are_refused():
    short = dict(last_second_volume_change_l=0.120, fet_s=4.0)
    s = assess_session([blow(2, 1.95, **short), blow(1, 2.00, **short)])
    assert [m.number for m in s.manoeuvres] == [1, 2]
    assert s.manoeuvres[1].fvc.status == ACCEPTABLE
    with pytest.raises(InvalidManoeuvreError, match="duplicate"):
        assess_session([blow(1, 2.0), blow(1, 2.1)])


@pytest.mark.parametrize("kw", [dict(fvc_l=-1.0), dict(fvc_l=float("nan")), dict(fev1_l=0.0), dict(bev_l=-0.01)])
def test_impossible_numbers_are_refused(kw):
    args = dict(number=1, fvc_l=3.0, fev1_l=2.4, bev_l=0.05)
    args.update(kw)
    with pytest.raises(InvalidManoeuvreError) as exc:
        Manoeuvre(**args)
    assert "\n" not in str(exc.value)


_blows = st.builds(
    lambda n, fvc, ratio, bev, fet, lsc, flags: Manoeuvre(
        number=n, fvc_l=fvc, fev1_l=round(fvc * ratio, 3), bev_l=bev, fet_s=fet,
        last_second_volume_change_l=lsc, **flags),
    st.integers(1, 1000), st.floats(0.3, 7.0), st.floats(0.3, 1.0),
    st.one_of(st.none(), st.floats(0, 0.4)), st.one_of(st.none(), st.floats(0, 25)),
    st.one_of(st.none(), st.floats(0, 0.3)),
    st.fixed_dictionaries({k: st.booleans() for k in (
        "cough_first_second", "glottic_closure_first_second", "glottic_closure_after_first_second",
        "leak", "obstructed", "faulty_zero_flow", "submaximal_inspiration")}),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_blows, min_size=0, max_size=10, unique_by=lambda m: m.number))
def test_session_invariants(blows):
    s = assess_session(blows)
    for outcome in (s.fvc, s.fev1):
        assert outcome.grade in set("ABCDEFU")
        values = {m.number: (m.fvc_l if outcome.outcome == "fvc" else m.fev1_l) for m in blows}
        judged = {a.number: (a.fvc if outcome.outcome == "fvc" else a.fev1) for a in s.manoeuvres}
        acc = [values[n] for n, j in judged.items() if j.status == ACCEPTABLE]
        if acc:
            assert outcome.reported_l == max(acc) and outcome.reported_basis == ACCEPTABLE
        assert (outcome.grade == "F") == (outcome.reported_l is None)
        for j in judged.values():
            assert (j.status == ACCEPTABLE) == (j.reasons == ())
    assert s.more_attempts_needed == (bool(s.more_attempts_reasons) and len(blows) < 8)
