"""Hand-computed nights: exact T90 under the project's definitions (oximetry.md)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from collector.oximetry.analysis.report import (
    AnalysisConfig,
    AnalysisInputError,
    NightData,
    exact,
    exceeds,
    night_report,
)

T0 = 1_767_225_600.0


def night(t, spo2, valid=None, breaks=(), pulse=None, flags=None) -> NightData:
    return NightData.from_samples([T0 + x for x in t], spo2, valid=valid, pulse=pulse,
                                  breaks=[(T0 + a, T0 + b, c) for a, b, c in breaks], flags=flags)


def long_night(n_below: int, n_total: int, below: float = 89.0, extra_ms: int = 0) -> NightData:
    """1 Hz night of n_total held seconds (+1 final sample), the first n_below below 90."""
    spo2 = np.full(n_total + 1, 95.0)
    spo2[:n_below] = below
    t = T0 + np.arange(n_total + 1, dtype=np.float64)
    if extra_ms:  # stretch the hold of the last below-90 sample by extra_ms
        t[n_below:] += extra_ms / 1000.0
    return NightData(t, spo2, np.full(n_total + 1, 60.0), np.ones(n_total + 1, bool), np.ones(n_total + 1, bool))


def test_samples_exactly_at_90_are_not_below_but_count_inclusive() -> None:
    r = night_report(night([0, 1, 2, 3, 4, 5], [95, 90, 90, 89, 90.0, 95]))
    assert r["analysed_s"] == 5.0 and r["recording_s"] == 5.0
    assert r["t90_s"] == 1.0  # only the 89
    assert r["t90_s_inclusive"] == 4.0
    assert r["t90_pct"] == 20.0 and r["t90_pct_inclusive"] == 80.0


def test_missing_samples_are_bridged_by_the_hold_up_to_max_hold() -> None:
    # holds: 1, 1, 3, 1, 0 -> the 89 at t=1 holds 1 s, the 89 at t=5 holds 1 s
    r = night_report(night([0, 1, 2, 5, 6], [95, 89, 95, 89, 95]))
    assert r["analysed_s"] == 6.0 and r["t90_s"] == 2.0
    assert r["gaps"]["count"] == 0


def test_irregular_intervals_are_time_weighted() -> None:
    # holds 0.5, 3.5, 0.25, 10 (capped from 15.75), 1, 0
    t = [0, 0.5, 4, 4.25, 20, 21]
    r = night_report(night(t, [89, 95, 88, 85, 95, 80]))
    assert r["analysed_s"] == 15.25
    assert r["t90_s"] == 0.5 + 0.25 + 10.0
    assert r["t85_s"] == 0.0 and r["t88_s"] == 10.0
    assert r["gaps"]["by_cause"] == {"max_hold_exceeded": {"count": 1, "total_s": 5.75}}
    assert r["nadir_spo2"] == 80.0  # the last sample holds 0 s but is still the nadir


def test_gap_longer_than_max_hold_never_inherits_the_last_value() -> None:
    r = night_report(night([0, 30, 31], [89, 95, 95]))
    assert r["analysed_s"] == 11.0 and r["t90_s"] == 10.0
    assert r["recording_s"] == 31.0
    assert r["t90_pct"] == 1000 / 11
    assert r["t90_pct_of_recording"] == 1000 / 31
    assert r["gaps"]["longest_s"] == 20.0
    cfg = AnalysisConfig(max_hold_s=4.0)
    assert night_report(night([0, 30, 31], [89, 95, 95]), cfg)["t90_s"] == 4.0


def test_spo2_zero_and_nan_are_dropouts_even_if_marked_valid() -> None:
    r = night_report(night([0, 1, 2, 3, 4], [95, 0, float("nan"), 89, 95], valid=[True] * 5))
    assert r["analysed_s"] == 2.0  # t=0 and t=3
    assert r["t90_s"] == 1.0
    assert r["nadir_spo2"] == 89.0
    assert r["gaps"]["by_cause"]["invalid_samples"] == {"count": 1, "total_s": 2.0}
    assert r["n_usable_samples"] == 3


def test_out_of_range_and_device_invalid_samples_do_not_count() -> None:
    r = night_report(night([0, 1, 2, 3, 4], [95, 101, 0, 85, 95], valid=[True, True, True, False, True]))
    assert r["analysed_s"] == 1.0 and r["t90_s"] == 0.0


def test_a_device_valid_reading_below_50_counts_below_90_and_is_reviewed() -> None:
    # 45 % marked valid: below 90 whatever its accuracy, in numerator and denominator (oximetry.md)
    r = night_report(night([0, 1, 2, 3, 4, 5], [95, 45, 44, 85, 95, 95], valid=[True, True, True, False, True, True]))
    assert r["analysed_s"] == 4.0 and r["t90_s"] == 2.0
    assert r["valid_below_50"] == [{"start_s": T0 + 1, "end_s": T0 + 3, "duration_s": 2.0, "min_spo2": 44.0, "n_samples": 2}]
    assert r["needs_review"] and "suspected_deep_desaturation" in r["review_reasons"]
    assert "below_50" in r["definitions"]
    assert r["spo2_histogram"][0]["s"] == 2.0  # the lowest band holds them
    # invalid below 50 is still a dropout, and 0 is never a desaturation
    r = night_report(night([0, 1, 2], [95, 45, 95], valid=[True, False, True]))
    assert r["valid_below_50"] == [] and r["t90_s"] == 0.0


def test_provisional_plx_readings_count_and_make_a_reversible_night_borderline() -> None:
    from drivers.protocols.common import Flag

    prov = int(Flag.PROVISIONAL_ESTIMATE | Flag.QUESTIONABLE)
    t = list(range(0, 1001))
    spo2 = [95.0] * 1001
    for i in range(100, 125):
        spo2[i] = 85.0  # 25 s below 90: 2.5 % of 1000 s
    flags = [prov if 100 <= i < 110 else 0 for i in t]  # 10 s of it early estimates
    r = night_report(NightData.from_samples(t, spo2, flags=flags), AnalysisConfig(min_analysed_h=0, min_analysed_pct=0))
    assert r["t90_s"] == 25.0 and r["decision"] == "fail"  # primary: they count
    assert "excluding_provisional_estimates" in r["borderline_variants"] and r["borderline"]
    assert r["flag_counts"]["provisional_estimate"]["samples"] == 10
    assert "plx_provisional" in r["definitions"]


def test_break_cuts_the_hold_and_is_reported_by_cause() -> None:
    r = night_report(night([0, 1, 2, 100, 101], [95, 95, 85, 95, 95], breaks=[(2.5, 99, "device_disconnected")]))
    assert r["analysed_s"] == 3.5 and r["t90_s"] == 0.5
    g = r["gaps"]
    assert g["by_cause"] == {"device_disconnected": {"count": 1, "total_s": 97.5}}
    assert g["breaks"][0]["cause"] == "device_disconnected" and g["breaks"][0]["duration_s"] == 96.5


def test_break_starting_exactly_at_a_sample_gives_it_zero_hold() -> None:
    r = night_report(night([0, 1, 40, 41], [95, 85, 95, 95], breaks=[(1, 39, "daemon_down")]))
    assert r["analysed_s"] == 2.0 and r["t90_s"] == 0.0
    assert r["gaps"]["by_cause"] == {"daemon_down": {"count": 1, "total_s": 39.0}}


def test_max_hold_then_break_splits_the_gap_between_causes() -> None:
    r = night_report(night([0, 60], [95, 95], breaks=[(30, 55, "device_disconnected")]))
    assert r["gaps"]["by_cause"] == {
        "device_disconnected": {"count": 1, "total_s": 30.0},
        "max_hold_exceeded": {"count": 1, "total_s": 20.0},
    }
    assert r["gaps"]["count"] == 1 and r["gaps"]["longest_s"] == 50.0


def test_exact_2_00_percent_passes_and_just_above_fails() -> None:
    r = night_report(long_night(360, 18_000))  # 360 / 18000 s = 2.00 %
    assert r["night_valid"] and r["t90_pct"] == 2.0
    assert r["meets_t90_criterion"] is True and r["decision"] == "pass"
    r = night_report(long_night(361, 18_000))
    assert r["meets_t90_criterion"] is False and r["decision"] == "fail"
    r = night_report(long_night(360, 18_000, extra_ms=1))  # 1 ms above
    assert r["t90_s"] == 360.001 and r["analysed_s"] == 18_000.001
    assert r["meets_t90_criterion"] is False


def test_threshold_comparison_has_no_float_surprise() -> None:
    assert (7 / 100) * 100 > 7.0  # the naive float comparison would fail this pass
    assert not exceeds(7, 100, exact(7.0))
    assert exceeds(7001, 100_000, exact(7.0))
    assert not exceeds(21, 1000, exact(2.1)) and exceeds(211, 10_000, exact(2.1))


def test_borderline_when_inclusive_variant_reverses_the_decision() -> None:
    d = long_night(342, 18_000)  # 1.90 % strict
    d.spo2[342:450] = 90.0  # + 108 s at exactly 90 -> 2.50 % inclusive
    r = night_report(d)
    assert r["meets_t90_criterion"] is True and r["borderline"] is True
    assert r["borderline_variants"] == ["inclusive_le90"]
    assert r["needs_review"] and "borderline_t90" in r["review_reasons"]


def test_borderline_when_pct_of_recording_reverses_the_decision() -> None:
    d = long_night(370, 18_000)  # 2.06 % of analysed: fail
    d.valid[5000:5800] = False  # 800 s invalid -> analysed 17200, 370/17200 = 2.15 %; of recording 2.06 %
    d.spo2[5000:5800] = np.nan
    r = night_report(d)
    assert r["decision"] == "fail" and not r["borderline"]
    d2 = long_night(355, 18_000)
    d2.valid[5000:5800] = False
    d2.spo2[5000:5800] = np.nan
    r2 = night_report(d2)  # 355/17200 = 2.06 % fail; 355/18000 = 1.97 % of recording
    assert r2["decision"] == "fail" and r2["borderline_variants"] == ["pct_of_recording"]


def test_night_validity_limits_are_inclusive_and_exact() -> None:
    four_h = 4 * 3600
    assert night_report(long_night(0, four_h))["night_valid"] is True
    d = long_night(0, four_h)
    d.t_s[-1] -= 0.001
    r = night_report(d)
    assert r["night_valid"] is False and r["night_invalid_reasons"] == ["analysed_time_below_minimum"]
    assert r["meets_t90_criterion"] is None and r["decision"] == "invalid"
    # 70 % analysed exactly: 7 h analysed in 10 h recording
    d = long_night(0, 36_000)
    d.valid[: 3 * 3600] = False
    assert night_report(d)["analysed_pct"] == 70.0 and night_report(d)["night_valid"] is True
    d.valid[3 * 3600] = False
    r = night_report(d)
    assert r["night_invalid_reasons"] == ["analysed_pct_below_minimum"]


def test_sustained_nadir_longest_run_and_secondary_metrics() -> None:
    # 80 for 5 s, 84 for 10 s, 87 for 3 s, then 95 for 10 s
    spo2 = [80] * 5 + [84] * 10 + [87] * 3 + [95] * 10 + [95]
    r = night_report(night(list(range(len(spo2))), spo2))
    assert r["nadir_spo2"] == 80.0
    assert r["sustained_nadir_spo2"] == 84.0  # <= 84 for 15 s; <= 80 only 5 s
    assert r["longest_run_le88_s"] == 18.0
    assert r["t80_s"] == 0.0 and r["t85_s"] == 15.0 and r["t88_s"] == 18.0
    assert r["median_spo2"] == 84.0
    assert r["mean_spo2"] == pytest.approx((80 * 5 + 84 * 10 + 87 * 3 + 95 * 10) / 28)


def test_longest_run_is_broken_by_a_gap() -> None:
    r = night_report(night([0, 1, 2, 30, 31, 32, 33], [85, 85, 85, 85, 85, 85, 95]))
    # first run: holds 1 + 1 + 10 (capped) = 12 s; second run after the 18 s gap: 3 s
    assert r["longest_run_le88_s"] == 12.0


def test_suspected_deep_desaturation_is_recorded_for_review() -> None:
    spo2 = [94, 90, 86, 82, 79, None, None, None, 93, 94]
    r = night_report(night(list(range(10)), spo2))
    ev = r["suspected_deep_desaturation"]
    assert len(ev) == 1 and ev[0]["last_valid_spo2"] == 79.0
    assert ev[0]["start_s"] == T0 + 5 and ev[0]["end_s"] == T0 + 8 and ev[0]["n_invalid_samples"] == 3
    assert "suspected_deep_desaturation" in r["review_reasons"]
    # steady 79 (not falling) and a finger-out after a normal value are not suspicious
    assert night_report(night(list(range(6)), [79, 79, 79, None, 95, 95]))["suspected_deep_desaturation"] == []
    assert night_report(night(list(range(6)), [95, 94, 93, None, 95, 95]))["suspected_deep_desaturation"] == []


def test_pulse_histogram_flags_and_json() -> None:
    d = night([0, 1, 2, 3], [95, 89, 85, 95], pulse=[60, 300, 70, None], flags=[0, 256, 256 | 8, 0])
    r = night_report(d)
    assert (r["pulse_min"], r["pulse_mean"], r["pulse_max"]) == (60.0, 65.0, 70.0)
    assert [h["s"] for h in r["spo2_histogram"]] == [0, 0, 1.0, 1.0, 0, 0, 1.0]
    assert r["flag_counts"]["questionable"] == {"samples": 2, "usable_samples": 2, "analysed_s": 2.0}
    text = json.dumps(r, allow_nan=False)  # strict JSON: no NaN anywhere
    assert json.loads(text)["definitions"]["t90"] == "T90/strict-lt90/zero-order-hold/v1"
    assert r["odi_algorithm"]["name"] == "trailing-mean-frozen-baseline"


def test_degenerate_nights_do_not_crash() -> None:
    for d in (night([], []), night([0], [85]), night([0, 1], [None, None])):
        r = night_report(d)
        assert r["t90_pct"] is None and r["decision"] == "invalid"
        json.dumps(r, allow_nan=False)


def test_stable_keys() -> None:
    r = night_report(night([0, 1], [95, 95]))
    for k in ("recording_s", "analysed_s", "analysed_pct", "t90_s", "t90_pct", "t90_pct_of_recording",
              "t90_pct_inclusive", "borderline", "night_valid", "meets_t90_criterion", "odi3_per_h",
              "odi4_per_h", "nadir_spo2", "mean_spo2", "gaps", "definitions"):
        assert k in r


@pytest.mark.parametrize(
    "kwargs, msg",
    [
        ({"t_s": [2.0, 1.0]}, "not sorted"),
        ({"t_s": [1.0, math.nan]}, "NaN"),
        ({"spo2": [95.0]}, "shape"),
        ({"breaks": [(5.0, 1.0, "x")]}, "end before start"),
    ],
)
def test_bad_input_raises_a_specific_error(kwargs, msg) -> None:
    base = dict(t_s=[1.0, 2.0], spo2=[95.0, 95.0], pulse=[60.0, 60.0], valid=[True, True], pulse_valid=[True, True])
    base.update(kwargs)
    with pytest.raises(AnalysisInputError, match=msg):
        NightData(**base)


def test_bad_config_raises() -> None:
    with pytest.raises(AnalysisInputError, match="max_hold_s"):
        AnalysisConfig(max_hold_s=0)
    with pytest.raises(AnalysisInputError, match="threshold_pct"):
        AnalysisConfig(threshold_pct=float("nan"))
