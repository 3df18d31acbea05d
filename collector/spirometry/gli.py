"""GLI reference equations for spirometry (LMS method), scalar and vectorised.

Why this module exists: "FVC >= 50 % predicted" decides who enters the trial,
and the predicted value depends on which equation is used.  Two equations are
supported, each identified by a stable id that every result carries:

* ``'gli-global-2022'`` (default): race-neutral GLI Global, Bowerman et al.,
  Am J Respir Crit Care Med 2023;207:768-774.
* ``'gli-2012'``: Quanjer et al., Eur Respir J 2012;40:1324-1343, with the
  ethnic groups ``'caucasian'``, ``'african_american'``, ``'north_east_asian'``,
  ``'south_east_asian'`` and ``'other'`` (Other/mixed composite).

For each outcome (``fev1``, ``fvc``, ``fev1_fvc``)::

    M = exp(a0 + a1 ln(height) + a2 ln(age) [+ group terms] + Mspline(age))
    S = exp(p0 + p1 ln(age) [+ group terms] + Sspline(age))
    L = q0 + q1 ln(age) [+ Lspline(age)]
    z = ((x / M)^L - 1) / (L S);  LLN = M (1 - 1.645 L S)^(1/L);  %pred = 100 x / M

The splines are tabulated every 0.25 year and are interpolated *linearly*
between the two neighbouring rows (the closed-form terms use the exact age).
The tables are the published ones, shipped in ``collector/data/gli`` (see
SOURCE.md there).

Out-of-range policy (never extrapolate):

* scalar :func:`predict` raises a :class:`SpirometryReferenceError` subclass
  with a one-line message;
* vectorised :func:`predict_many` returns NaN for the refused rows and a
  per-row ``reason`` bit mask (see :class:`Reason`); pass ``strict=True`` to
  raise on the first refused row instead.
"""

from __future__ import annotations

import csv
import enum
import io
import math
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any, Mapping

import numpy as np
from numpy.typing import ArrayLike, NDArray

from collector.spirometry.equations import DEFAULT_EQUATION, EQUATIONS, ETHNICITIES, GLI_2012, GLI_GLOBAL_2022

__all__ = [
    "AGE_RANGE_YEARS",
    "DEFAULT_EQUATION",
    "EQUATIONS",
    "ETHNICITIES",
    "GLI_2012",
    "GLI_GLOBAL_2022",
    "HEIGHT_RANGE_CM",
    "LLN_Z",
    "OUTCOMES",
    "AgeOutOfRangeError",
    "EquationComparison",
    "HeightOutOfRangeError",
    "InvalidInputError",
    "OutcomeArrays",
    "OutcomePrediction",
    "Prediction",
    "PredictionArrays",
    "REFUSED",
    "Reason",
    "SpirometryReferenceError",
    "compare_fvc_percent",
    "describe_reason",
    "predict",
    "predict_many",
]

OUTCOMES: tuple[str, ...] = ("fev1", "fvc", "fev1_fvc")
SEXES: tuple[str, ...] = ("female", "male")

#: z-score of the 5th centile used for the lower limit of normal.
LLN_Z = 1.645

#: Valid ages (inclusive) for both equations: the spline tables span 3-95 y.
AGE_RANGE_YEARS: Mapping[str, tuple[float, float]] = {
    GLI_GLOBAL_2022: (3.0, 95.0),
    GLI_2012: (3.0, 95.0),
}

#: Accepted heights (inclusive).  The equation papers do not publish a hard
#: height limit that we could verify; this is a policy choice that brackets
#: the reference populations' stature (3-year-olds to very tall adults) and
#: refuses clearly implausible entries (e.g. metres or inches typed as cm).
HEIGHT_RANGE_CM: Mapping[str, tuple[float, float]] = {
    GLI_GLOBAL_2022: (90.0, 220.0),
    GLI_2012: (90.0, 220.0),
}

_AGE_STEP = 0.25

# Table column stems in the shipped CSVs.
_TABLE_OUTCOME = {"fev1": "FEV1", "fvc": "FVC", "fev1_fvc": "FEV1FVC"}
_TABLE_SEX = {"female": "females", "male": "males"}
_TABLE_FILES = {
    GLI_2012: ("gli_2012_coefficients.csv", "gli_2012_splines.csv"),
    GLI_GLOBAL_2022: ("bowerman_2022_coefficients.csv", "bowerman_2022_splines.csv"),
}
# GLI-2012 group indicator coefficients: ethnicity -> (M term, S term).
_GROUP_TERMS = {
    "caucasian": (None, None),
    "african_american": ("a3", "p2"),
    "north_east_asian": ("a4", "p3"),
    "south_east_asian": ("a5", "p4"),
    "other": ("a6", "p5"),
}


# --------------------------------------------------------------------------- errors


class SpirometryReferenceError(ValueError):
    """Base class: the reference equation cannot give a value for these inputs."""


class AgeOutOfRangeError(SpirometryReferenceError):
    """Age outside the equation's range: no value is given rather than an extrapolated one."""


class HeightOutOfRangeError(SpirometryReferenceError):
    """Height outside the accepted range: no value is given rather than an extrapolated one."""


class InvalidInputError(SpirometryReferenceError):
    """Unknown sex/equation/ethnicity, non-finite number, or impossible measurement."""


class Reason(enum.IntFlag):
    """Per-row reason bits of :func:`predict_many` (stable values, storable as int)."""

    OK = 0
    AGE_TOO_LOW = 1 << 0
    AGE_TOO_HIGH = 1 << 1
    HEIGHT_TOO_LOW = 1 << 2
    HEIGHT_TOO_HIGH = 1 << 3
    NOT_FINITE = 1 << 4  # age or height NaN/inf: no prediction
    FVC_INVALID = 1 << 5  # measured FVC not a positive finite number: no FVC/ratio z, %pred
    FEV1_INVALID = 1 << 6  # measured FEV1 not a positive finite number: no FEV1/ratio z, %pred


#: Reasons that refuse the prediction itself (M, S, L, LLN are NaN).
REFUSED = (Reason.AGE_TOO_LOW | Reason.AGE_TOO_HIGH | Reason.HEIGHT_TOO_LOW | Reason.HEIGHT_TOO_HIGH
           | Reason.NOT_FINITE)

_REASON_TEXT = {
    Reason.AGE_TOO_LOW: "age below the equation's range",
    Reason.AGE_TOO_HIGH: "age above the equation's range",
    Reason.HEIGHT_TOO_LOW: "height below the accepted range",
    Reason.HEIGHT_TOO_HIGH: "height above the accepted range",
    Reason.NOT_FINITE: "age or height is not a finite number",
    Reason.FVC_INVALID: "measured FVC is not a positive number",
    Reason.FEV1_INVALID: "measured FEV1 is not a positive number",
}


def describe_reason(code: int) -> str:
    """Human-readable text for a :class:`Reason` bit mask ('' when OK)."""
    return "; ".join(text for bit, text in _REASON_TEXT.items() if int(code) & bit)


# --------------------------------------------------------------------------- tables


@dataclass(frozen=True)
class _Curve:
    """Coefficients and splines of one (equation, sex, outcome)."""

    a0: float
    a1: float
    a2: float
    p0: float
    p1: float
    q0: float
    q1: float
    group: Mapping[str, float]  # a3..a6, p2..p5 (GLI-2012 only)
    m_spline: NDArray[np.float64]
    s_spline: NDArray[np.float64]
    l_spline: NDArray[np.float64]
    age0: float


def _read_rows(name: str) -> list[list[str]]:
    text = resources.files("collector").joinpath("data", "gli", name).read_text(encoding="utf-8")
    return [row for row in csv.reader(io.StringIO(text), delimiter=";") if row]


def _number(cell: str) -> float:
    """Coefficient cell; an empty cell means the term is absent (0)."""
    cell = cell.strip()
    return float(cell) if cell else 0.0


@lru_cache(maxsize=None)
def _curves(equation: str) -> dict[tuple[str, str], _Curve]:
    """Load one equation's tables once: {(sex, outcome): _Curve}."""
    coef_file, spline_file = _TABLE_FILES[equation]
    rows = _read_rows(coef_file)
    header = rows[0]
    var_col = header.index("var")
    coefs: dict[str, dict[str, float]] = {}
    for row in rows[1:]:
        name = row[var_col].strip()
        for col, cell in enumerate(row):
            if col > var_col:
                coefs.setdefault(header[col].strip(), {})[name] = _number(cell)

    srows = _read_rows(spline_file)
    sheader = [h.strip() for h in srows[0]]
    table = np.array([[float(c) if c.strip() else np.nan for c in r] for r in srows[1:]], dtype=np.float64)
    ages = table[:, 0]
    age0 = float(ages[0])
    expected = age0 + _AGE_STEP * np.arange(len(ages))
    if not np.allclose(ages, expected, atol=1e-9):
        raise RuntimeError(f"{spline_file}: ages are not in {_AGE_STEP}-year steps")
    lower = {h.lower(): i for i, h in enumerate(sheader)}

    curves: dict[tuple[str, str], _Curve] = {}
    for sex, tsex in _TABLE_SEX.items():
        for outcome, tout in _TABLE_OUTCOME.items():
            key = f"{tout}_{tsex}"
            c = coefs[key]

            def spline(kind: str) -> NDArray[np.float64]:
                col = lower.get(f"{key}_{kind}spline".lower())
                if col is None:
                    return np.zeros(len(ages))
                values = table[:, col].copy()
                if np.isnan(values).any():
                    raise RuntimeError(f"{spline_file}: gaps in {key} {kind}spline")
                return values

            curves[(sex, outcome)] = _Curve(
                a0=c["a0"], a1=c["a1"], a2=c["a2"], p0=c["p0"], p1=c["p1"],
                q0=c["q0"], q1=c.get("q1", 0.0),
                group={k: c.get(k, 0.0) for k in ("a3", "a4", "a5", "a6", "p2", "p3", "p4", "p5")},
                m_spline=spline("M"), s_spline=spline("S"), l_spline=spline("L"),
                age0=age0,
            )
    return curves


#: How the 0.25-year spline tables are read between rows: linear interpolation (the GLI
#: calculators, pyspiro; ours) or the row at or below the age (rspiro's GLI Global path, spiref).
SPLINE_LOOKUPS = ("interpolate", "lower_row")


def _interp(values: NDArray[np.float64], age0: float, age: NDArray[np.float64], lookup: str = "interpolate") -> NDArray[np.float64]:
    """A 0.25-year table at ``age`` (ages must already be in range): interpolated, or the lower row."""
    pos = (age - age0) / _AGE_STEP
    lo = np.clip(np.floor(pos + 1e-9).astype(np.int64), 0, len(values) - 2)
    if lookup == "lower_row":
        return values[lo]
    frac = pos - lo
    return values[lo] + frac * (values[lo + 1] - values[lo])


def _lms(curve: _Curve, age: NDArray[np.float64], height: NDArray[np.float64],
         ethnicity: NDArray[Any] | None, lookup: str = "interpolate") -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    ln_age = np.log(age)
    m_lin = curve.a0 + curve.a1 * np.log(height) + curve.a2 * ln_age + _interp(curve.m_spline, curve.age0, age, lookup)
    s_lin = curve.p0 + curve.p1 * ln_age + _interp(curve.s_spline, curve.age0, age, lookup)
    if ethnicity is not None:
        for group, (a_key, p_key) in _GROUP_TERMS.items():
            if a_key is None or p_key is None:  # the reference group has no terms
                continue
            is_group = ethnicity == group
            m_lin = m_lin + curve.group[a_key] * is_group
            s_lin = s_lin + curve.group[p_key] * is_group
    l_val = curve.q0 + curve.q1 * ln_age + _interp(curve.l_spline, curve.age0, age, lookup)
    return l_val, np.exp(m_lin), np.exp(s_lin)


def _centile(m: NDArray[np.float64], s: NDArray[np.float64], l: NDArray[np.float64], z: float) -> NDArray[np.float64]:
    small = np.abs(l) < 1e-12
    safe_l = np.where(small, 1.0, l)
    with np.errstate(invalid="ignore", divide="ignore"):
        general = m * np.power(1.0 + z * safe_l * s, 1.0 / safe_l)
    return np.where(small, m * np.exp(z * s), general)


def _zscore(x: NDArray[np.float64], m: NDArray[np.float64], s: NDArray[np.float64], l: NDArray[np.float64]) -> NDArray[np.float64]:
    small = np.abs(l) < 1e-12
    safe_l = np.where(small, 1.0, l)
    with np.errstate(invalid="ignore", divide="ignore"):
        general = (np.power(x / m, safe_l) - 1.0) / (safe_l * s)
        return np.where(small, np.log(x / m) / s, general)


# --------------------------------------------------------------------------- validation


def _check_equation(equation: str, ethnicity: Any) -> None:
    if equation not in EQUATIONS:
        raise InvalidInputError(f"unknown reference equation {equation!r}: use one of {', '.join(EQUATIONS)}")
    if equation == GLI_GLOBAL_2022 and ethnicity is not None:
        raise InvalidInputError("gli-global-2022 is race-neutral: pass ethnicity=None (ethnicity applies to gli-2012 only)")
    if equation == GLI_2012 and ethnicity is None:
        raise InvalidInputError(f"gli-2012 needs an ethnicity: one of {', '.join(ETHNICITIES)} ('other' for mixed/unknown)")


def _as_sex_array(sex: Any) -> NDArray[np.str_]:
    arr = np.asarray(sex)
    if arr.dtype.kind not in "UO":
        raise InvalidInputError("sex must be given as 'female' or 'male' strings (convert device codes at the edge)")
    arr = arr.astype(str)
    bad = ~np.isin(arr, SEXES)
    if bad.any():
        raise InvalidInputError(f"unknown sex {arr[bad].flat[0]!r}: use 'female' or 'male' (convert device codes at the edge)")
    return arr


def _as_ethnicity_array(ethnicity: Any) -> NDArray[np.str_] | None:
    if ethnicity is None:
        return None
    arr = np.asarray(ethnicity).astype(str)
    bad = ~np.isin(arr, ETHNICITIES)
    if bad.any():
        raise InvalidInputError(f"unknown ethnicity {arr[bad].flat[0]!r}: use one of {', '.join(ETHNICITIES)}")
    return arr


def _range_reasons(equation: str, age: NDArray[np.float64], height: NDArray[np.float64]) -> NDArray[np.int64]:
    a_lo, a_hi = AGE_RANGE_YEARS[equation]
    h_lo, h_hi = HEIGHT_RANGE_CM[equation]
    reason = np.zeros(age.shape, dtype=np.int64)
    finite = np.isfinite(age) & np.isfinite(height)
    reason |= np.where(~finite, int(Reason.NOT_FINITE), 0)
    with np.errstate(invalid="ignore"):
        reason |= np.where(finite & (age < a_lo), int(Reason.AGE_TOO_LOW), 0)
        reason |= np.where(finite & (age > a_hi), int(Reason.AGE_TOO_HIGH), 0)
        reason |= np.where(finite & (height < h_lo), int(Reason.HEIGHT_TOO_LOW), 0)
        reason |= np.where(finite & (height > h_hi), int(Reason.HEIGHT_TOO_HIGH), 0)
    return reason


def _refusal_error(equation: str, code: int, age: float, height: float) -> SpirometryReferenceError:
    a_lo, a_hi = AGE_RANGE_YEARS[equation]
    h_lo, h_hi = HEIGHT_RANGE_CM[equation]
    if code & Reason.NOT_FINITE:
        return InvalidInputError(f"age {age!r} / height {height!r} is not a finite number: enter both in years and cm")
    if code & (Reason.AGE_TOO_LOW | Reason.AGE_TOO_HIGH):
        return AgeOutOfRangeError(
            f"age {age:g} y is outside {equation}'s range {a_lo:g}-{a_hi:g} y: no predicted value (not extrapolated); check the birth date")
    return HeightOutOfRangeError(
        f"height {height:g} cm is outside the accepted range {h_lo:g}-{h_hi:g} cm for {equation}: check the unit (cm) and the entry")


# --------------------------------------------------------------------------- vectorised API


@dataclass(frozen=True)
class OutcomeArrays:
    """Arrays for one outcome; NaN where refused (or, for z/percent, where nothing measured)."""

    predicted: NDArray[np.float64]  # M
    s: NDArray[np.float64]
    l: NDArray[np.float64]
    lln: NDArray[np.float64]
    uln: NDArray[np.float64]
    measured: NDArray[np.float64] | None
    z: NDArray[np.float64] | None
    percent_predicted: NDArray[np.float64] | None


@dataclass(frozen=True)
class PredictionArrays:
    """Result of :func:`predict_many`.  ``reason`` is a :class:`Reason` bit mask per row."""

    equation: str
    ethnicity: NDArray[np.str_] | None
    reason: NDArray[np.int64]
    fev1: OutcomeArrays
    fvc: OutcomeArrays
    fev1_fvc: OutcomeArrays

    @property
    def refused(self) -> NDArray[np.bool_]:
        """Rows with no prediction at all (age/height out of range or not finite)."""
        return (self.reason & int(REFUSED)) != 0

    def outcome(self, name: str) -> OutcomeArrays:
        return getattr(self, name)


def _measured(values: ArrayLike | None, n: int, flag: Reason, reason: NDArray[np.int64]) -> NDArray[np.float64] | None:
    if values is None:
        return None
    arr = np.broadcast_to(np.asarray(values, dtype=np.float64), (n,)).copy()
    with np.errstate(invalid="ignore"):
        bad = ~(np.isfinite(arr) & (arr > 0))
    reason |= np.where(bad, int(flag), 0)
    arr[bad] = np.nan
    return arr


def predict_many(
    sex: ArrayLike,
    age_years: ArrayLike,
    height_cm: ArrayLike,
    *,
    equation: str = DEFAULT_EQUATION,
    ethnicity: ArrayLike | str | None = None,
    fvc_l: ArrayLike | None = None,
    fev1_l: ArrayLike | None = None,
    strict: bool = False,
    spline_lookup: str = "interpolate",
) -> PredictionArrays:
    """Vectorised predictions for many subjects (arrays broadcast together).

    Rows outside the age/height range get NaN and a ``reason`` bit; with
    ``strict=True`` the first such row raises instead.  Unknown sex,
    ethnicity or equation strings always raise (fix the mapping at the edge).
    """
    _check_equation(equation, ethnicity)
    if spline_lookup not in SPLINE_LOOKUPS:
        raise InvalidInputError(f"spline_lookup must be one of {', '.join(SPLINE_LOOKUPS)}")
    age = np.atleast_1d(np.asarray(age_years, dtype=np.float64))
    height = np.atleast_1d(np.asarray(height_cm, dtype=np.float64))
    sex_arr = np.atleast_1d(_as_sex_array(sex))
    eth_arr = _as_ethnicity_array(ethnicity)
    parts: list[NDArray[Any]] = [age, height, sex_arr] + ([np.atleast_1d(eth_arr)] if eth_arr is not None else [])
    try:
        shape = np.broadcast_shapes(*(p.shape for p in parts))
    except ValueError as exc:
        raise InvalidInputError("sex, age, height (and ethnicity) arrays must have the same length") from exc
    if len(shape) != 1:
        raise InvalidInputError("predict_many takes one-dimensional arrays (or scalars)")
    n = shape[0]
    age = np.broadcast_to(age, shape)
    height = np.broadcast_to(height, shape)
    sex_arr = np.broadcast_to(sex_arr, shape)
    eth_b = np.broadcast_to(np.atleast_1d(eth_arr), shape) if eth_arr is not None else None

    reason = _range_reasons(equation, age, height)
    ok = (reason & int(REFUSED)) == 0
    if strict and not ok.all():
        i = int(np.flatnonzero(~ok)[0])
        raise _refusal_error(equation, int(reason[i]), float(age[i]), float(height[i]))

    # Safe placeholders for refused rows (masked to NaN below).
    a_lo = AGE_RANGE_YEARS[equation][0]
    age_safe = np.where(ok, age, a_lo)
    height_safe = np.where(ok, height, 150.0)

    fvc = _measured(fvc_l, n, Reason.FVC_INVALID, reason)
    fev1 = _measured(fev1_l, n, Reason.FEV1_INVALID, reason)
    ratio = fev1 / fvc if (fvc is not None and fev1 is not None) else None
    measured = {"fev1": fev1, "fvc": fvc, "fev1_fvc": ratio}

    curves = _curves(equation)
    results: dict[str, OutcomeArrays] = {}
    for outcome in OUTCOMES:
        m = np.full(n, np.nan)
        s = np.full(n, np.nan)
        l = np.full(n, np.nan)
        for sex_name in SEXES:
            rows = sex_arr == sex_name
            if not rows.any():
                continue
            lv, mv, sv = _lms(curves[(sex_name, outcome)], age_safe[rows], height_safe[rows],
                              eth_b[rows] if eth_b is not None else None, spline_lookup)
            m[rows], s[rows], l[rows] = mv, sv, lv
        m[~ok] = s[~ok] = l[~ok] = np.nan
        x = measured[outcome]
        z = pct = None
        if x is not None:
            z = _zscore(x, m, s, l)
            pct = 100.0 * x / m
        results[outcome] = OutcomeArrays(
            predicted=m, s=s, l=l,
            lln=_centile(m, s, l, -LLN_Z), uln=_centile(m, s, l, LLN_Z),
            measured=x, z=z, percent_predicted=pct,
        )
    return PredictionArrays(equation=equation, ethnicity=eth_b, reason=reason, **results)


# --------------------------------------------------------------------------- scalar API


@dataclass(frozen=True)
class OutcomePrediction:
    """One outcome for one subject.  z / percent_predicted are None when nothing was measured."""

    outcome: str
    predicted: float  # M, litres (FEV1, FVC) or a ratio (FEV1/FVC)
    s: float
    l: float
    lln: float
    uln: float
    measured: float | None = None
    z: float | None = None
    percent_predicted: float | None = None


@dataclass(frozen=True)
class Prediction:
    """All outcomes for one subject, with the equation (and ethnicity) that produced them."""

    equation: str
    ethnicity: str | None
    sex: str
    age_years: float
    height_cm: float
    fev1: OutcomePrediction
    fvc: OutcomePrediction
    fev1_fvc: OutcomePrediction

    def outcome(self, name: str) -> OutcomePrediction:
        return getattr(self, name)


def _scalar_measure(name: str, value: float | None) -> float | None:
    if value is None:
        return None
    v = float(value)
    if not (math.isfinite(v) and v > 0):
        raise InvalidInputError(f"measured {name} {value!r} L is not a positive number: re-enter the value in litres")
    return v


def predict(
    sex: str,
    age_years: float,
    height_cm: float,
    *,
    equation: str = DEFAULT_EQUATION,
    ethnicity: str | None = None,
    fvc_l: float | None = None,
    fev1_l: float | None = None,
    spline_lookup: str = "interpolate",
) -> Prediction:
    """Predicted values, LLN and (when measured values are given) z and % predicted.

    Raises :class:`AgeOutOfRangeError`, :class:`HeightOutOfRangeError` or
    :class:`InvalidInputError`; never returns an extrapolated number.
    """
    if not isinstance(sex, str):
        raise InvalidInputError("sex must be 'female' or 'male' (convert device codes at the edge)")
    if ethnicity is not None and not isinstance(ethnicity, str):
        raise InvalidInputError(f"ethnicity must be a string: one of {', '.join(ETHNICITIES)}")
    fvc = _scalar_measure("FVC", fvc_l)
    fev1 = _scalar_measure("FEV1", fev1_l)
    try:
        age = float(age_years)
        height = float(height_cm)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"age {age_years!r} / height {height_cm!r} must be numbers (years, cm)") from exc
    arrays = predict_many(sex, age, height, equation=equation, ethnicity=ethnicity,
                          fvc_l=fvc, fev1_l=fev1, strict=True, spline_lookup=spline_lookup)

    def one(name: str) -> OutcomePrediction:
        o = arrays.outcome(name)
        return OutcomePrediction(
            outcome=name, predicted=float(o.predicted[0]), s=float(o.s[0]), l=float(o.l[0]),
            lln=float(o.lln[0]), uln=float(o.uln[0]),
            measured=None if o.measured is None else float(o.measured[0]),
            z=None if o.z is None else float(o.z[0]),
            percent_predicted=None if o.percent_predicted is None else float(o.percent_predicted[0]),
        )

    return Prediction(equation=equation, ethnicity=ethnicity, sex=sex, age_years=age, height_cm=height,
                      fev1=one("fev1"), fvc=one("fvc"), fev1_fvc=one("fev1_fvc"))


# --------------------------------------------------------------------------- when the equation decides


@dataclass(frozen=True)
class EquationComparison:
    """FVC % predicted by the configured and the alternative equation, against a threshold."""

    threshold_pct: float
    primary_equation: str
    primary_ethnicity: str | None
    primary_pct: float
    primary_passes: bool
    alternative_equation: str
    alternative_ethnicity: str | None
    alternative_pct: float
    alternative_passes: bool

    @property
    def equation_decides(self) -> bool:
        """True when the two equations fall on different sides of the threshold (-> needs_review)."""
        return self.primary_passes != self.alternative_passes


def compare_fvc_percent(
    sex: str,
    age_years: float,
    height_cm: float,
    fvc_l: float,
    *,
    ethnicity_2012: str,
    primary: str = DEFAULT_EQUATION,
    threshold_pct: float = 50.0,
) -> EquationComparison:
    """FVC % predicted by GLI Global 2022 and by GLI-2012 (``ethnicity_2012``).

    ``primary`` is the configured equation; the other is the alternative.  A
    value equal to the threshold passes (``>=``).  ``ethnicity_2012`` has no
    default on purpose: choosing one is a decision the caller must record
    ('other' is GLI-2012's composite for mixed or unknown ethnicity).
    """
    if primary not in EQUATIONS:
        raise InvalidInputError(f"unknown reference equation {primary!r}: use one of {', '.join(EQUATIONS)}")
    alternative = GLI_2012 if primary == GLI_GLOBAL_2022 else GLI_GLOBAL_2022

    def pct(eq: str) -> tuple[float, str | None]:
        eth = ethnicity_2012 if eq == GLI_2012 else None
        p = predict(sex, age_years, height_cm, equation=eq, ethnicity=eth, fvc_l=fvc_l)
        assert p.fvc.percent_predicted is not None
        return p.fvc.percent_predicted, eth

    p_pct, p_eth = pct(primary)
    a_pct, a_eth = pct(alternative)
    return EquationComparison(
        threshold_pct=threshold_pct,
        primary_equation=primary, primary_ethnicity=p_eth, primary_pct=p_pct,
        primary_passes=p_pct >= threshold_pct,
        alternative_equation=alternative, alternative_ethnicity=a_eth, alternative_pct=a_pct,
        alternative_passes=a_pct >= threshold_pct,
    )
