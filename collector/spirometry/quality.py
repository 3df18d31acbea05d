"""ATS/ERS 2019 manoeuvre acceptability, repeatability, grading and reported values.

Why: the trial criterion uses the *best* FVC of a session, and what counts as
"best" depends on which blows are acceptable.  A device's own "best trial"
ranking may follow other rules, so the collector recomputes everything here
from the per-trial values (Graham et al., Am J Respir Crit Care Med
2019;200:e70-e88; criteria table "Table 7", grading "Table 10").

All volume comparisons are done in integer millilitres (and times in integer
milliseconds) so that boundary values such as a 0.150 L difference behave
exactly as written in the standard, not as binary floating point happens to
round them.

Criteria per manoeuvre (FEV1 and FVC judged separately)::

    criterion                                   acc FEV1  acc FVC  usable FEV1  usable FVC
    BEV <= max(0.100 L, 5 % of FVC)                 Y        Y         Y           Y
    no faulty zero-flow setting                     Y        Y         Y           Y
    no cough in the first second                    Y        -         Y           -
    no glottic closure in the first second          Y        Y         Y           Y
    no glottic closure after the first second       -        Y         -           -
    end of forced expiration (EOFE) reached         -        Y         -           -
    no obstructed mouthpiece/spirometer             Y        Y         -           -
    no leak                                         Y        Y         -           -
    maximal inspiration (FIVC - FVC <= max(0.100 L, 5 % FVC); device flag)
                                                    Y        Y         -           -
    hesitation <= 2 s: a reported warning (``hesitation_over_2s``); a failure of
    acceptability only with ``hesitation_fails=True``: the 2019 acceptability
    table does not list it, the text of the start-of-test section does

EOFE is met by any of: plateau (volume change <= 0.025 L in the last 1 s: the
2019 table's "<= 0.025 L"; its text says "less than", and the choice is
recorded as PLATEAU_RULE in every result); FET >= 15 s; or FVC within the repeatability tolerance of, or
greater than, the largest FVC observed in the *prior* manoeuvres of the
session (the rule that lets ALS patients, who often cannot reach a plateau,
still produce acceptable blows).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Sequence

__all__ = [
    "ACCEPTABLE",
    "USABLE",
    "NOT_USABLE",
    "MAX_ATTEMPTS",
    "InvalidManoeuvreError",
    "Judgement",
    "Manoeuvre",
    "ManoeuvreAssessment",
    "OutcomeSummary",
    "SessionAssessment",
    "assess_session",
    "grade",
    "repeatability_tolerance_ml",
]

ACCEPTABLE = "acceptable"
USABLE = "usable"
NOT_USABLE = "not_usable"

#: Generally no more than 8 attempts in a session (ATS/ERS 2019).
MAX_ATTEMPTS = 8
#: Aim: three acceptable manoeuvres.
TARGET_ACCEPTABLE = 3

BEV_ABS_LIMIT_ML = 100  # BEV <= 5 % of FVC or 0.100 L, whichever is greater
BEV_FVC_PERCENT = 5
FIVC_ABS_LIMIT_ML = 100  # FIVC - FVC <= 0.100 L or 5 % of FVC, whichever is greater
FIVC_FVC_PERCENT = 5
HESITATION_LIMIT_MS = 2000
FET_EOFE_MS = 15000  # FET >= 15 s
PLATEAU_LIMIT_ML = 25  # last-second volume change <= 0.025 L (the 2019 table; its text says "less than")
PLATEAU_RULE = "plateau: volume change <= 0.025 L in the last 1 s of expiration (ATS/ERS 2019 table; the text says 'less than')"
HESITATION_RULE_WARN = "hesitation > 2 s: reported as a warning, not an acceptability criterion (not in the ATS/ERS 2019 table)"
HESITATION_RULE_FAIL = "hesitation > 2 s: fails acceptability of FEV1 and FVC (site setting hesitation_fails)"

# Grading thresholds (Table 10): grade -> max difference of the two largest acceptable values.
ADULT_THRESHOLDS_ML = {"A": 150, "B": 150, "C": 200, "D": 250}
CHILD_THRESHOLDS_ML = {"A": 100, "B": 100, "C": 150, "D": 200}  # age <= 6, or 10 % of the highest value if greater
CHILD_MAX_AGE_YEARS = 6.0


class InvalidManoeuvreError(ValueError):
    """A manoeuvre's numbers are impossible (negative, not finite, duplicate number)."""


def _ml(litres: float) -> int:
    """Litres -> integer millilitres (round half away from zero, like a device display)."""
    return int(math.floor(abs(litres) * 1000.0 + 0.5)) * (1 if litres >= 0 else -1)


def _ms(seconds: float) -> int:
    return int(math.floor(abs(seconds) * 1000.0 + 0.5)) * (1 if seconds >= 0 else -1)


@dataclass(frozen=True)
class Manoeuvre:
    """One forced expiratory manoeuvre as reported by a device or its software.

    Optional measurements left as ``None`` are treated as *not verified*: a
    criterion that cannot be checked is not met (its reason says so).
    ``curve`` may carry ``(times_s, volumes_l)`` of the expiration; it is only
    used to derive the last-second volume change when that is not given.
    """

    number: int
    fvc_l: float
    fev1_l: float
    pef_l_s: float | None = None
    bev_l: float | None = None
    fet_s: float | None = None
    hesitation_s: float | None = None
    plateau: bool | None = None
    last_second_volume_change_l: float | None = None
    fivc_l: float | None = None
    cough_first_second: bool = False
    glottic_closure_first_second: bool = False
    glottic_closure_after_first_second: bool = False
    leak: bool = False
    obstructed: bool = False
    faulty_zero_flow: bool = False
    early_termination: bool = False
    submaximal_inspiration: bool = False
    curve: tuple[Sequence[float], Sequence[float]] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        for name in ("fvc_l", "fev1_l"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise InvalidManoeuvreError(f"manoeuvre {self.number}: {name}={v!r} is not a positive number of litres")
        for name in ("pef_l_s", "bev_l", "fet_s", "hesitation_s", "last_second_volume_change_l", "fivc_l"):
            v = getattr(self, name)
            if v is not None and not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise InvalidManoeuvreError(f"manoeuvre {self.number}: {name}={v!r} must be a finite number >= 0 or None")

    def last_second_change_ml(self) -> int | None:
        """Volume change over the last 1 s of expiration, from the field or the curve."""
        if self.last_second_volume_change_l is not None:
            return _ml(self.last_second_volume_change_l)
        if self.curve is None:
            return None
        times, volumes = self.curve
        if len(times) < 2 or len(times) != len(volumes) or times[-1] - times[0] < 1.0:
            return None
        t_end = times[-1]
        # Linear interpolation of the volume 1 s before the end.
        t0 = t_end - 1.0
        for i in range(len(times) - 1, 0, -1):
            if times[i - 1] <= t0 <= times[i]:
                span = times[i] - times[i - 1]
                frac = 0.0 if span == 0 else (t0 - times[i - 1]) / span
                v0 = volumes[i - 1] + frac * (volumes[i] - volumes[i - 1])
                return _ml(volumes[-1] - v0)
        return None


@dataclass(frozen=True)
class Judgement:
    """Acceptable / usable / not usable for one outcome, with every failed criterion."""

    status: str
    reasons: tuple[str, ...]  # criteria that failed (empty when acceptable)

    @property
    def acceptable(self) -> bool:
        return self.status == ACCEPTABLE


@dataclass(frozen=True)
class ManoeuvreAssessment:
    number: int
    fev1: Judgement
    fvc: Judgement
    eofe_met: bool
    eofe_by: tuple[str, ...]  # 'plateau', 'fet_15s', 'fvc_repeatable_with_prior'
    warnings: tuple[str, ...] = ()  # reported, not deciding (e.g. 'hesitation_over_2s')


@dataclass(frozen=True)
class OutcomeSummary:
    """Session result for FEV1 or FVC."""

    outcome: str
    grade: str  # 'A'..'F' or 'U'
    n_acceptable: int
    n_usable: int  # usable but not acceptable
    repeatability_diff_ml: int | None  # two largest acceptable values; None with < 2 acceptable
    repeatability_tolerance_ml: int
    repeatable: bool
    reported_l: float | None  # largest acceptable; largest usable only when none acceptable
    reported_from: int | None  # manoeuvre number
    reported_basis: str | None  # 'acceptable' | 'usable' | None
    largest_usable_or_acceptable_l: float | None  # for comparison with the alternative reading


@dataclass(frozen=True)
class SessionAssessment:
    manoeuvres: tuple[ManoeuvreAssessment, ...]
    fev1: OutcomeSummary
    fvc: OutcomeSummary
    attempts: int
    more_attempts_needed: bool
    more_attempts_reasons: tuple[str, ...]
    definition: str = "ats-ers-2019"


def repeatability_tolerance_ml(age_years: float | None, largest_ml: int) -> int:
    """Repeatability tolerance: 150 mL (age > 6); for age <= 6, 100 mL or 10 % of the largest value."""
    if age_years is not None and age_years <= CHILD_MAX_AGE_YEARS:
        return max(CHILD_THRESHOLDS_ML["A"], (largest_ml + 5) // 10)
    return ADULT_THRESHOLDS_ML["A"]


def _thresholds(age_years: float | None, largest_ml: int) -> dict[str, int]:
    if age_years is not None and age_years <= CHILD_MAX_AGE_YEARS:
        ten_pct = (largest_ml + 5) // 10
        return {k: max(v, ten_pct) for k, v in CHILD_THRESHOLDS_ML.items()}
    return dict(ADULT_THRESHOLDS_ML)


def grade(acceptable_ml: Sequence[int], n_usable: int, age_years: float | None = None) -> str:
    """ATS/ERS 2019 grade from acceptable values (mL) and the count of usable-only manoeuvres."""
    n = len(acceptable_ml)
    if n == 0:
        return "U" if n_usable > 0 else "F"
    if n == 1:
        return "E"
    top = sorted(acceptable_ml, reverse=True)
    diff = top[0] - top[1]
    th = _thresholds(age_years, top[0])
    if n >= 3 and diff <= th["A"]:
        return "A"
    if diff <= th["B"]:
        return "B"
    if diff <= th["C"]:
        return "C"
    if diff <= th["D"]:
        return "D"
    return "E"


def _start_reasons(m: Manoeuvre) -> list[str]:
    """Criteria required for both acceptability and usability of both outcomes."""
    reasons: list[str] = []
    if m.bev_l is None:
        reasons.append("bev_not_reported")
    else:
        bev_ml, fvc_ml = _ml(m.bev_l), _ml(m.fvc_l)
        # bev <= max(100 mL, 5 % FVC)  <=>  100*bev <= max(100*100, 5*FVC)
        if 100 * bev_ml > max(100 * BEV_ABS_LIMIT_ML, BEV_FVC_PERCENT * fvc_ml):
            reasons.append("bev_too_large")
    if m.faulty_zero_flow:
        reasons.append("faulty_zero_flow")
    if m.glottic_closure_first_second:
        reasons.append("glottic_closure_first_second")
    if _ml(m.fev1_l) > _ml(m.fvc_l):
        reasons.append("fev1_exceeds_fvc")
    return reasons


def _acceptability_only_reasons(m: Manoeuvre, hesitation_fails: bool = False) -> list[str]:
    """Criteria required for acceptability (not usability) of both outcomes."""
    reasons: list[str] = []
    if m.obstructed:
        reasons.append("obstructed")
    if m.leak:
        reasons.append("leak")
    if m.submaximal_inspiration:
        reasons.append("submaximal_inspiration")
    if m.fivc_l is not None:
        fivc_ml, fvc_ml = _ml(m.fivc_l), _ml(m.fvc_l)
        if fivc_ml > fvc_ml and 100 * (fivc_ml - fvc_ml) > max(100 * FIVC_ABS_LIMIT_ML, FIVC_FVC_PERCENT * fvc_ml):
            reasons.append("fivc_exceeds_fvc")
    if hesitation_fails and _hesitation_long(m):
        reasons.append("hesitation_too_long")
    return reasons


def _hesitation_long(m: Manoeuvre) -> bool:
    return m.hesitation_s is not None and _ms(m.hesitation_s) > HESITATION_LIMIT_MS


def _eofe(m: Manoeuvre, prior_max_fvc_ml: int | None, tolerance_ml: int) -> tuple[str, ...]:
    met: list[str] = []
    change = m.last_second_change_ml()
    if change is not None:
        if change <= PLATEAU_LIMIT_ML:
            met.append("plateau")
    elif m.plateau and not m.early_termination:
        met.append("plateau")
    if m.fet_s is not None and _ms(m.fet_s) >= FET_EOFE_MS:
        met.append("fet_15s")
    if prior_max_fvc_ml is not None and _ml(m.fvc_l) >= prior_max_fvc_ml - tolerance_ml:
        met.append("fvc_repeatable_with_prior")
    return tuple(met)


def _volume_trustworthy(m: Manoeuvre) -> bool:
    """Whether a manoeuvre's FVC may serve as 'largest prior observed FVC'."""
    return not (m.faulty_zero_flow or m.leak or m.obstructed)


def _summary(outcome: str, items: list[tuple[Manoeuvre, Judgement]], age_years: float | None) -> OutcomeSummary:
    def value(m: Manoeuvre) -> float:
        return m.fev1_l if outcome == "fev1" else m.fvc_l

    acc = [(m, j) for m, j in items if j.acceptable]
    usable_only = [(m, j) for m, j in items if j.status == USABLE]
    acc_ml = [_ml(value(m)) for m, _ in acc]
    top_ml = max(acc_ml) if acc_ml else 0
    tol = repeatability_tolerance_ml(age_years, top_ml)
    diff = None
    if len(acc_ml) >= 2:
        s = sorted(acc_ml, reverse=True)
        diff = s[0] - s[1]

    # Largest value; ties go to the earliest manoeuvre (stable, documented).
    def best(pool: list[tuple[Manoeuvre, Judgement]]) -> Manoeuvre | None:
        return max(pool, key=lambda mj: (_ml(value(mj[0])), -mj[0].number))[0] if pool else None

    if acc:
        chosen, basis = best(acc), ACCEPTABLE
    elif usable_only:
        chosen, basis = best(usable_only), USABLE
    else:
        chosen, basis = None, None
    widest = best(acc + usable_only)
    return OutcomeSummary(
        outcome=outcome,
        grade=grade(acc_ml, len(usable_only), age_years),
        n_acceptable=len(acc),
        n_usable=len(usable_only),
        repeatability_diff_ml=diff,
        repeatability_tolerance_ml=tol,
        repeatable=diff is not None and diff <= tol,
        reported_l=None if chosen is None else value(chosen),
        reported_from=None if chosen is None else chosen.number,
        reported_basis=basis,
        largest_usable_or_acceptable_l=None if widest is None else value(widest),
    )


def assess_session(
    manoeuvres: Iterable[Manoeuvre],
    *,
    age_years: float | None = None,
    max_attempts: int = MAX_ATTEMPTS,
    hesitation_fails: bool = False,
) -> SessionAssessment:
    """Judge every manoeuvre (in ``number`` order) and summarise the session.

    ``age_years`` selects the child (<= 6 y) tolerances; None means adult.
    The reported FVC/FEV1 is the largest among acceptable manoeuvres (they may
    come from different blows); only when none is acceptable is the largest
    usable value reported (grade U).
    """
    ordered = sorted(manoeuvres, key=lambda m: m.number)
    numbers = [m.number for m in ordered]
    if len(set(numbers)) != len(numbers):
        raise InvalidManoeuvreError(f"duplicate manoeuvre numbers in session: {numbers}")

    results: list[ManoeuvreAssessment] = []
    fev1_items: list[tuple[Manoeuvre, Judgement]] = []
    fvc_items: list[tuple[Manoeuvre, Judgement]] = []
    prior_max: int | None = None
    for m in ordered:
        start = _start_reasons(m)
        acc_only = _acceptability_only_reasons(m, hesitation_fails)
        warnings = ("hesitation_over_2s",) if _hesitation_long(m) and not hesitation_fails else ()
        tol = repeatability_tolerance_ml(age_years, prior_max or 0)
        eofe_by = _eofe(m, prior_max, tol)

        # FEV1
        fev1_usable_fail = start + (["cough_first_second"] if m.cough_first_second else [])
        fev1_acc_fail = fev1_usable_fail + acc_only
        fev1 = _judge(fev1_acc_fail, fev1_usable_fail)

        # FVC
        fvc_usable_fail = list(start)
        fvc_acc_fail = fvc_usable_fail + acc_only
        if m.glottic_closure_after_first_second:
            fvc_acc_fail.append("glottic_closure_after_first_second")
        if not eofe_by:
            fvc_acc_fail.append("no_end_of_forced_expiration")
        fvc = _judge(fvc_acc_fail, fvc_usable_fail)

        results.append(ManoeuvreAssessment(number=m.number, fev1=fev1, fvc=fvc,
                                           eofe_met=bool(eofe_by), eofe_by=eofe_by, warnings=warnings))
        fev1_items.append((m, fev1))
        fvc_items.append((m, fvc))
        if _volume_trustworthy(m):
            v = _ml(m.fvc_l)
            prior_max = v if prior_max is None else max(prior_max, v)

    fev1_sum = _summary("fev1", fev1_items, age_years)
    fvc_sum = _summary("fvc", fvc_items, age_years)
    attempts = len(ordered)
    reasons: list[str] = []
    for s in (fvc_sum, fev1_sum):
        if s.n_acceptable < TARGET_ACCEPTABLE:
            reasons.append(f"{s.outcome}_fewer_than_{TARGET_ACCEPTABLE}_acceptable")
        elif not s.repeatable:
            reasons.append(f"{s.outcome}_not_repeatable")
    more = bool(reasons) and attempts < max_attempts
    if reasons and not more:
        reasons.append(f"attempt_limit_{max_attempts}_reached")
    return SessionAssessment(manoeuvres=tuple(results), fev1=fev1_sum, fvc=fvc_sum, attempts=attempts,
                             more_attempts_needed=more, more_attempts_reasons=tuple(reasons))


def _judge(acceptable_failures: list[str], usable_failures: list[str]) -> Judgement:
    if not acceptable_failures:
        return Judgement(ACCEPTABLE, ())
    if not usable_failures:
        return Judgement(USABLE, tuple(acceptable_failures))
    return Judgement(NOT_USABLE, tuple(acceptable_failures))
