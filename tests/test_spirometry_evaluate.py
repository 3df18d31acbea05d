"""The session result from stored rows: device summaries, the lower-row GLI lookup, recorded rule choices."""

from __future__ import annotations

from typing import Any

from collector.spirometry import gli
from collector.spirometry.store import SubjectInputs, evaluate, evaluation_settings

INPUTS = SubjectInputs(sex="male", height_cm=178.0, age_years=60.2, on_date="2025-03-10", on_date_basis="screening_date fact")


def row(i: int, fvc: float, *, summary: bool = False, fev1: float | None = None) -> dict[str, Any]:
    return {"id": i, "number": None if summary else i, "is_summary": int(summary), "manoeuvre_type": "FVC", "fvc_l": fvc,
            "fev1_l": fev1 if fev1 is not None else round(fvc * 0.82, 2), "pef_l_s": 5.0, "bev_l": 0.05, "fet_s": 15.0,
            "device_quality": [], "curves": [], "raw": {}}


def test_a_summary_alone_needs_review_unless_the_site_accepts_device_summaries() -> None:
    r = evaluate([row(1, 2.5, summary=True)], INPUTS)
    assert r["fvc_basis"] == "device_summary" and r["valid"] and r["fvc_l"] == 2.5 and r["grade_review"]
    assert r["more_attempts_needed"] is False and r["prediction"]["fvc_l"] == 2.5
    ok = evaluate([row(1, 2.5, summary=True)], INPUTS, device_summary_acceptable=True)
    assert ok["valid"] and ok["grade_review"] is None and "device_summary_acceptable" in ok["note"]
    assert evaluation_settings({"device_summary_acceptable": True})["device_summary_acceptable"] is True


def test_manoeuvres_decide_and_the_device_summary_is_kept_for_comparison() -> None:
    r = evaluate([row(1, 3.0), row(2, 2.95), row(3, 2.9), row(4, 3.2, summary=True)], INPUTS)
    assert r["fvc_basis"] == "manoeuvres" and r["fvc_l"] == 3.0 and r["fvc"]["grade"] == "A" and r["grade_review"] is None
    assert r["device_summary"]["fvc_l"] == 3.2 and r["device_summary"]["differs_from_manoeuvres_l"] == 0.2


def test_lower_row_lookup_is_computed_and_flagged_when_it_crosses_the_limit() -> None:
    """Between quarter-year rows the interpolated and the lower-row % predicted differ (60.2 y: ~0.07 points)."""
    interp = gli.predict("male", 60.2, 178.0, fvc_l=1.0).fvc.percent_predicted
    lower = gli.predict("male", 60.2, 178.0, fvc_l=1.0, spline_lookup="lower_row").fvc.percent_predicted
    assert interp is not None and lower is not None and 0 < interp - lower < 0.25
    fvc = 50.0 / ((interp + lower) / 2) * 1.0  # an FVC whose two figures straddle 50 %
    r = evaluate([row(1, fvc), row(2, fvc - 0.05), row(3, fvc - 0.1)], INPUTS)
    assert r["prediction"]["percent_predicted_fvc"] >= 50 > r["lower_row_fvc_pct_predicted"] and r["interpolation_decides"] is True
    on_row = gli.predict("male", 60.25, 178.0, fvc_l=2.2)
    assert on_row.fvc.percent_predicted == gli.predict("male", 60.25, 178.0, fvc_l=2.2, spline_lookup="lower_row").fvc.percent_predicted


def test_rule_choices_are_recorded_and_hesitation_is_configurable() -> None:
    r = evaluate([row(1, 3.0)], INPUTS)
    assert "<= 0.025 L" in r["rules"]["plateau"] and "warning" in r["rules"]["hesitation"]
    assert "fails" in evaluate([row(1, 3.0)], INPUTS, hesitation_fails=True)["rules"]["hesitation"]
    assert evaluation_settings({"hesitation_fails": True})["hesitation_fails"] is True
