"""GLI-2012 / GLI Global 2022 against independent published outputs.

Data (tests/data/gli, see README there): the GLI web calculator's test grid
(overdodactyl/pft, rows 1-343 of 1000, spirometry columns) and an rspiro
oracle for GLI Global 2022 at integer ages.  pyspiro (MIT) is a test-only
cross-check on random inputs.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest

from collector.spirometry import gli

DATA = Path(__file__).parent / "data" / "gli"
ETHNIC = {"1": "caucasian", "2": "african_american", "3": "north_east_asian", "4": "south_east_asian", "5": "other"}
GRID_COLS = [
    ("fev1", "predicted", "fev1_predicted"), ("fev1", "lln", "fev1_lln"), ("fev1", "uln", "fev1_uln"),
    ("fvc", "predicted", "fvc_predicted"), ("fvc", "lln", "fvc_lln"), ("fvc", "uln", "fvc_uln"),
    ("fev1_fvc", "predicted", "fev1fvc_predicted"), ("fev1_fvc", "lln", "fev1fvc_lln"), ("fev1_fvc", "uln", "fev1fvc_uln"),
]


def _rows(name: str) -> list[dict[str, str]]:
    with open(DATA / name, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def grid() -> dict[str, np.ndarray]:
    inputs = _rows("gli_test_grid.csv")
    outputs = _rows("gli_test_grid_GLI_spirometry.csv")
    assert len(inputs) == len(outputs) == 343
    for i, o in zip(inputs, outputs):  # the extract is row-aligned with the calculator's inputs
        assert (i["sex"], i["ethnic"], float(i["height"])) == (o["sex"], o["ethnic"], float(o["height"]))
        assert round(float(i["age"]), 1) == float(o["age"])
    g = {
        "sex": np.array(["female" if r["sex"] == "F" else "male" for r in inputs]),
        "eth": np.array([ETHNIC[r["ethnic"]] for r in inputs]),
        "age": np.array([float(r["age"]) for r in inputs]),
        "height": np.array([float(r["height"]) for r in inputs]),
    }
    for _, _, col in GRID_COLS:
        g[col] = np.array([float(r[col]) for r in outputs])
    return g


def test_gli2012_matches_calculator_grid_within_accepted_heights(grid):
    res = gli.predict_many(grid["sex"], grid["age"], grid["height"], equation="gli-2012", ethnicity=grid["eth"])
    lo, hi = gli.HEIGHT_RANGE_CM["gli-2012"]
    inside = (grid["height"] >= lo) & (grid["height"] <= hi)
    assert inside.sum() > 200
    assert not res.refused[inside].any()
    for outcome, field, col in GRID_COLS:
        got = getattr(res.outcome(outcome), field)[inside]
        diff = np.abs(got - grid[col][inside])
        assert diff.max() <= 0.01, (outcome, field)
        # The calculator prints 3 decimals: we agree to rounding.
        assert diff.max() <= 0.00065, (outcome, field, diff.max())


def test_gli2012_grid_rows_outside_height_range_are_refused_not_extrapolated(grid):
    res = gli.predict_many(grid["sex"], grid["age"], grid["height"], equation="gli-2012", ethnicity=grid["eth"])
    lo, hi = gli.HEIGHT_RANGE_CM["gli-2012"]
    low, high = grid["height"] < lo, grid["height"] > hi
    assert low.any() and high.any()
    assert np.all(res.reason[low] & gli.Reason.HEIGHT_TOO_LOW)
    assert np.all(res.reason[high] & gli.Reason.HEIGHT_TOO_HIGH)
    assert np.isnan(res.fvc.predicted[low | high]).all()
    assert np.isnan(res.fvc.lln[low | high]).all()


def test_equation_arithmetic_matches_grid_on_every_row(grid, monkeypatch):
    """The equations themselves reproduce all grid rows, even the extreme heights we refuse by policy."""
    monkeypatch.setitem(gli.HEIGHT_RANGE_CM, "gli-2012", (1.0, 1000.0))
    res = gli.predict_many(grid["sex"], grid["age"], grid["height"], equation="gli-2012", ethnicity=grid["eth"])
    for outcome, field, col in GRID_COLS:
        diff = np.abs(getattr(res.outcome(outcome), field) - grid[col])
        assert diff.max() <= 0.00065, (outcome, field)


def test_linear_interpolation_is_what_the_grid_needs(grid, monkeypatch):
    """Looking up the spline row below the age (no interpolation) misses many grid rows."""
    monkeypatch.setitem(gli.HEIGHT_RANGE_CM, "gli-2012", (1.0, 1000.0))
    floored = np.floor(grid["age"] / 0.25) * 0.25
    curves = gli._curves("gli-2012")
    misses = 0
    for i in range(len(grid["age"])):
        c = curves[(grid["sex"][i], "fvc")]
        # M with the exact age in the closed-form terms but the spline of the row below.
        l, m, s = gli._lms(c, np.array([grid["age"][i]]), np.array([grid["height"][i]]), np.array([grid["eth"][i]]))
        spl_exact = gli._interp(c.m_spline, c.age0, np.array([grid["age"][i]]))[0]
        spl_floor = gli._interp(c.m_spline, c.age0, np.array([floored[i]]))[0]
        m_floor = m[0] * math.exp(spl_floor - spl_exact)
        if round(m_floor, 3) != grid["fvc_predicted"][i]:
            misses += 1
    assert misses > 30


def test_spline_interpolation_is_linear_between_quarter_years():
    c = gli._curves("gli-global-2022")[("male", "fvc")]
    a = np.array([60.0, 60.25, 60.125, 60.0625])
    v = gli._interp(c.m_spline, c.age0, a)
    i = int((60.0 - c.age0) / 0.25)
    assert v[0] == pytest.approx(c.m_spline[i], abs=1e-15)
    assert v[1] == pytest.approx(c.m_spline[i + 1], abs=1e-15)
    assert v[2] == pytest.approx((c.m_spline[i] + c.m_spline[i + 1]) / 2, abs=1e-15)
    assert v[3] == pytest.approx(0.75 * c.m_spline[i] + 0.25 * c.m_spline[i + 1], abs=1e-15)


def test_gli_global_2022_matches_rspiro_oracle():
    rows = _rows("gli_2022_oracle.csv")
    sex = ["male" if r["sex"] == "M" else "female" for r in rows]
    age = [float(r["age"]) for r in rows]
    height = [float(r["height"]) for r in rows]
    f = lambda col: np.array([float(r[col]) for r in rows])  # noqa: E731
    res = gli.predict_many(sex, age, height, fev1_l=f("fev1_measured"), fvc_l=f("fvc_measured"))
    assert res.equation == "gli-global-2022"
    for outcome in ("fev1", "fvc"):
        o = res.outcome(outcome)
        np.testing.assert_allclose(o.predicted, f(f"{outcome}_pred_2022"), atol=1e-9)
        np.testing.assert_allclose(o.lln, f(f"{outcome}_lln_2022"), atol=1e-9)
        np.testing.assert_allclose(o.z, f(f"{outcome}_zscore_2022"), atol=1e-9)
        np.testing.assert_allclose(o.percent_predicted, f(f"{outcome}_pctpred_2022"), atol=1e-9)
    # FEV1/FVC: measured ratio = fev1 / fvc, so feed the oracle's ratio with FVC = 1 L.
    ratio = gli.predict_many(sex, age, height, fev1_l=f("fev1fvc_measured"), fvc_l=np.ones(len(rows)))
    np.testing.assert_allclose(ratio.fev1_fvc.predicted, f("fev1fvc_pred_2022"), atol=1e-9)
    np.testing.assert_allclose(ratio.fev1_fvc.lln, f("fev1fvc_lln_2022"), atol=1e-9)
    np.testing.assert_allclose(ratio.fev1_fvc.z, f("fev1fvc_zscore_2022"), atol=1e-9)


@pytest.mark.parametrize("equation", ["gli-global-2022", "gli-2012"])
def test_cross_check_pyspiro_random_inputs(equation):
    pd = pytest.importorskip("pandas")
    pyspiro = pytest.importorskip("pyspiro")
    rng = np.random.default_rng(20240601)
    n = 400
    sex01 = rng.integers(0, 2, n)
    age = rng.uniform(3.0, 95.0, n)
    height = rng.uniform(95.0, 215.0, n)
    eth_code = rng.integers(1, 6, n)
    fvc = rng.uniform(0.4, 7.0, n)
    fev1 = fvc * rng.uniform(0.4, 0.95, n)
    sex = np.where(sex01 == 1, "male", "female")
    if equation == "gli-2012":
        ref = pyspiro.GLI_2012()
        ours = gli.predict_many(sex, age, height, equation=equation, ethnicity=[ETHNIC[str(c)] for c in eth_code],
                                fvc_l=fvc, fev1_l=fev1)
        extra = {"ethnicity_col": "ethnicity"}
    else:
        ref = pyspiro.BOWERMAN_2022()
        ours = gli.predict_many(sex, age, height, fvc_l=fvc, fev1_l=fev1)
        extra = {}
    df = pd.DataFrame({"sex": sex01, "age": age, "height": height, "ethnicity": eth_code,
                       "FEV1": fev1, "FVC": fvc, "RATIO": fev1 / fvc})
    for outcome, param, col in (("fev1", "FEV1", "FEV1"), ("fvc", "FVC", "FVC"), ("fev1_fvc", "FEV1FVC", "RATIO")):
        r = ref.compute(df, ref.Parameters[param], value_col=col, metrics=("zscore", "lln", "percent"), **extra)
        o = ours.outcome(outcome)
        np.testing.assert_allclose(o.z, r["zscore"].to_numpy(float), atol=1e-9)
        np.testing.assert_allclose(o.lln, r["lln"].to_numpy(float), atol=1e-9)
        np.testing.assert_allclose(o.percent_predicted, r["percent"].to_numpy(float), atol=0.006)  # pyspiro rounds to 0.01


def test_design_example_equation_decides():
    cmp = gli.compare_fvc_percent("male", 60, 178, 2.20, ethnicity_2012="caucasian")
    assert cmp.primary_equation == "gli-global-2022" and cmp.alternative_equation == "gli-2012"
    assert cmp.primary_pct == pytest.approx(50.4, abs=0.05)
    assert cmp.alternative_pct == pytest.approx(47.3, abs=0.05)
    assert cmp.primary_passes and not cmp.alternative_passes
    assert cmp.equation_decides
    assert cmp.alternative_ethnicity == "caucasian" and cmp.primary_ethnicity is None
    swapped = gli.compare_fvc_percent("male", 60, 178, 2.20, ethnicity_2012="caucasian", primary="gli-2012")
    assert swapped.primary_pct == pytest.approx(cmp.alternative_pct) and swapped.equation_decides


def test_compare_agrees_when_far_from_threshold():
    cmp = gli.compare_fvc_percent("female", 55, 162, 3.0, ethnicity_2012="other")
    assert cmp.primary_passes and cmp.alternative_passes and not cmp.equation_decides


def test_threshold_exactly_passes():
    p = gli.predict("male", 60, 178)
    cmp = gli.compare_fvc_percent("male", 60, 178, 2.20, ethnicity_2012="caucasian",
                                  threshold_pct=100.0 * 2.20 / p.fvc.predicted)
    assert cmp.primary_passes  # >= threshold


def test_scalar_prediction_records_equation_and_values():
    p = gli.predict("female", 45.5, 165.0, fvc_l=3.1, fev1_l=2.5)
    assert p.equation == "gli-global-2022" and p.ethnicity is None
    assert p.fvc.percent_predicted == pytest.approx(100 * 3.1 / p.fvc.predicted)
    assert p.fev1_fvc.measured == pytest.approx(2.5 / 3.1)
    # LLN is the 5th centile: its z-score is -1.645.
    q = gli.predict("female", 45.5, 165.0, fvc_l=p.fvc.lln)
    assert q.fvc.z == pytest.approx(-1.645, abs=1e-12)
    r = gli.predict("male", 70, 170, equation="gli-2012", ethnicity="north_east_asian")
    assert (r.equation, r.ethnicity) == ("gli-2012", "north_east_asian")
    assert r.fvc.z is None and r.fvc.percent_predicted is None


def test_vectorised_and_scalar_agree():
    rng = np.random.default_rng(7)
    age = rng.uniform(3, 95, 50)
    h = rng.uniform(100, 210, 50)
    sex = np.where(rng.random(50) < 0.5, "male", "female")
    fvc = rng.uniform(1, 5, 50)
    many = gli.predict_many(sex, age, h, fvc_l=fvc)
    for i in range(50):
        one = gli.predict(str(sex[i]), float(age[i]), float(h[i]), fvc_l=float(fvc[i]))
        assert one.fvc.z == pytest.approx(many.fvc.z[i], abs=1e-12)
        assert one.fev1.lln == pytest.approx(many.fev1.lln[i], abs=1e-12)


@pytest.mark.parametrize("equation,eth", [("gli-global-2022", None), ("gli-2012", "caucasian")])
def test_age_bounds_inclusive_and_refusals(equation, eth):
    assert gli.predict("male", 3.0, 100, equation=equation, ethnicity=eth).fvc.predicted > 0
    assert gli.predict("male", 95.0, 170, equation=equation, ethnicity=eth).fvc.predicted > 0
    with pytest.raises(gli.AgeOutOfRangeError, match="outside"):
        gli.predict("male", 2.99, 100, equation=equation, ethnicity=eth)
    with pytest.raises(gli.AgeOutOfRangeError, match="not extrapolated"):
        gli.predict("male", 95.01, 170, equation=equation, ethnicity=eth)
    lo, hi = gli.HEIGHT_RANGE_CM[equation]
    gli.predict("female", 40, lo, equation=equation, ethnicity=eth)
    gli.predict("female", 40, hi, equation=equation, ethnicity=eth)
    with pytest.raises(gli.HeightOutOfRangeError, match="cm"):
        gli.predict("female", 40, lo - 0.1, equation=equation, ethnicity=eth)
    with pytest.raises(gli.HeightOutOfRangeError):
        gli.predict("female", 40, 1.75, equation=equation, ethnicity=eth)  # metres typed as cm
    with pytest.raises(gli.InvalidInputError):
        gli.predict("female", float("nan"), 160, equation=equation, ethnicity=eth)


def test_error_messages_are_one_line():
    for call in (lambda: gli.predict("male", 100, 170), lambda: gli.predict("male", 50, 300),
                 lambda: gli.predict("M", 50, 170), lambda: gli.predict("male", 50, 170, ethnicity="caucasian"),
                 lambda: gli.predict("male", 50, 170, equation="gli-2012"),
                 lambda: gli.predict("male", 50, 170, equation="nhanes3"),
                 lambda: gli.predict("male", 50, 170, fvc_l=-1.0)):
        with pytest.raises(gli.SpirometryReferenceError) as exc:
            call()
        assert "\n" not in str(exc.value) and len(str(exc.value)) > 20


def test_vectorised_refusal_mask_and_strict():
    res = gli.predict_many(["male"] * 5, [2.0, 50, 50, 96, float("nan")], [170, 80, 170, 170, 170],
                           fvc_l=[3.0, 3.0, -1.0, 3.0, 3.0])
    assert res.reason[0] == gli.Reason.AGE_TOO_LOW
    assert res.reason[1] == gli.Reason.HEIGHT_TOO_LOW
    assert res.reason[2] == gli.Reason.FVC_INVALID and not res.refused[2]
    assert res.reason[3] == gli.Reason.AGE_TOO_HIGH
    assert res.reason[4] == gli.Reason.NOT_FINITE
    assert res.refused.tolist() == [True, True, False, True, True]
    assert np.isnan(res.fvc.predicted[[0, 1, 3, 4]]).all() and res.fvc.predicted[2] > 0
    assert np.isnan(res.fvc.z[2]) and res.fev1_fvc.z is None  # no FEV1 given
    assert "age below" in gli.describe_reason(int(res.reason[0]))
    with pytest.raises(gli.AgeOutOfRangeError):
        gli.predict_many(["male", "male"], [50, 2.0], [170, 170], strict=True)
    with pytest.raises(gli.InvalidInputError):
        gli.predict_many(["male", "x"], [50, 50], [170, 170])
    with pytest.raises(gli.InvalidInputError):
        gli.predict_many([0, 1], [50, 50], [170, 170])  # numeric codes are refused: convert at the edge
    with pytest.raises(gli.InvalidInputError):
        gli.predict_many(["male"] * 3, [50, 50], [170, 170, 170])


def test_gli2012_ethnic_groups_differ_and_other_is_composite():
    m = {e: gli.predict("male", 40, 175, equation="gli-2012", ethnicity=e).fvc.predicted for e in gli.ETHNICITIES}
    assert len(set(m.values())) == 5
    assert m["african_american"] < m["caucasian"]
    assert min(m.values()) < m["other"] < max(m.values())
