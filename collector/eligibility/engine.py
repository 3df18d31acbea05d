"""Eligibility decision: recorded facts + device results -> a state per criterion -> a decision.

Pure functions, no I/O except :func:`load_thresholds`.  Every boundary is inclusive as
the protocol says; where a boundary depends on a definition (29 February birthdays,
month ends, the reference equation, an oximetry variant) the primary definition decides
and the criterion is ``needs_review`` when a defensible alternative would reverse it.
The definitions used are written into every decision (``rules``) so a decision can be
audited later even if the code changes.
"""

from __future__ import annotations

import calendar
import math
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from fractions import Fraction
from typing import Any, Iterable, Literal, Mapping, Sequence

from collector.i18n import N_
from collector.limit_text import crf_round, crf_rounding_crosses, limit_text
from collector.eligibility.messages import AND, Node, english, join, msg
from collector.eligibility.facts import (
    WFN_CATEGORIES,
    ContraceptionAnswer,
    RecordedFact,
    display_value,
)

__all__ = [
    "CRITERIA",
    "EQUATIONS",
    "RULES",
    "CriterionResult",
    "Decision",
    "EligibilityConfigError",
    "NightResult",
    "SpirometryResult",
    "Thresholds",
    "add_months",
    "age_on",
    "completed_months",
    "evaluate",
    "load_thresholds",
    "summarise",
    "thresholds_from_mapping",
]

State = Literal["met", "not_met", "pending", "needs_review"]
DecisionValue = Literal["eligible", "ineligible", "incomplete"]

CRITERIA = (
    "consent",
    "age",
    "als_diagnosis",
    "prior_treatment",
    "fvc",
    "nocturnal_spo2",
    "bmi",
    "contraception",
    "cooperation",
)
EQUATIONS = ("gli-global-2022", "gli-2012")

# Definitions chosen where the protocol text leaves room; recorded with every decision.
RULES: dict[str, str] = {
    "consent": "ICF date on or before the earliest of the first screening session date and the "
    "screening date (the ICF date has no time, so the same day counts as before)",
    "age": "completed years on the screening date; the birthday counts on the day itself; a 29 February "
    "birthday turns over on 1 March in non-leap years (needs_review if 28 February would change the result)",
    "als_diagnosis": "diagnosis_date + diagnosis_months_min <= screening_date <= diagnosis_date + "
    "diagnosis_months_max, adding calendar months and clamping to the month end (31 Aug + 6 months = 28/29 Feb); "
    "needs_review if counting back from the screening date, or counting completed months (24 months and some "
    "days = 24), would change the result",
    "prior_treatment": "prior_treatment_failed = yes and the prior treatments listed (prior_treatments)",
    "fvc": "largest FVC % predicted over valid (acceptable, repeatable: ATS/ERS 2019 FVC grade A-C) FVC sessions with the configured equation; "
    ">= fvc_pct_min ([spirometry] fvc_threshold_pct) passes; needs_review if the other equation's best falls on the other side, "
    "if the GLI spline read at the lower quarter-year row (no interpolation) falls on the other side, or if rounding to the case "
    "report form's precision ([eligibility] crf_decimals, half up) would move it across the limit",
    "nocturnal_spo2": "every valid night T90 (SpO2 < 90 %, % of analysed time) <= t90_pct_max ([oximetry] t90_threshold_pct); any valid night "
    "above fails; invalid nights do not count; a borderline valid night needs review unless another valid night "
    "already fails; no valid night -> pending",
    "bmi": "weight_kg / (height_cm / 100)^2 computed exactly from the typed decimals, >= bmi_min, and "
    "nutrition_good = yes; needs_review if rounding to the case report form's precision ([eligibility] crf_decimals, "
    "half up) would move it across bmi_min",
    "contraception": "yes, or not_applicable with a reason",
    "cooperation": "yes",
}


class EligibilityConfigError(ValueError):
    """The configuration given to the engine lacks a value or holds an impossible one."""


# --------------------------------------------------------------------------- thresholds


@dataclass(frozen=True)
class Thresholds:
    """Limits and settings a decision was made with (all inclusive)."""

    fvc_pct_min: float = 50.0
    t90_pct_max: float = 2.0
    bmi_min: Decimal = Decimal("18.5")
    age_min: int = 18
    age_max: int = 60
    diagnosis_months_min: int = 6
    diagnosis_months_max: int = 24
    accepted_wfn_categories: tuple[str, ...] = WFN_CATEGORIES
    equation: str = "gli-global-2022"
    crf_decimals: int = 1  # decimals the case report form records FVC % predicted and BMI with

    def as_dict(self) -> dict[str, Any]:
        return {
            "fvc_pct_min": self.fvc_pct_min,
            "t90_pct_max": self.t90_pct_max,
            "bmi_min": float(self.bmi_min),
            "age_min": self.age_min,
            "age_max": self.age_max,
            "diagnosis_months_min": self.diagnosis_months_min,
            "diagnosis_months_max": self.diagnosis_months_max,
            "accepted_wfn_categories": list(self.accepted_wfn_categories),
            "equation": self.equation,
            "crf_decimals": self.crf_decimals,
        }


def thresholds_from_config(config: Mapping[str, Any]) -> Thresholds:
    """Thresholds from the one collector config: ``[eligibility]`` for the limits of its own, the T90
    limit from ``[oximetry] t90_threshold_pct``, the FVC limit and the equation from ``[spirometry]``
    (the keys the night report, the live alert and the spirometry result read), so no screen can
    decide with another copy.  The config is validated at load (collector.config_schema)."""
    try:
        el, ox, sp = config["eligibility"], config["oximetry"], config["spirometry"]
        cats = list(el["accepted_wfn_categories"])
        th = Thresholds(
            fvc_pct_min=float(sp["fvc_threshold_pct"]),
            t90_pct_max=float(ox["t90_threshold_pct"]),
            bmi_min=Decimal(repr(float(el["bmi_min"]))),
            age_min=int(el["age_min"]),
            age_max=int(el["age_max"]),
            diagnosis_months_min=int(el["diagnosis_months_min"]),
            diagnosis_months_max=int(el["diagnosis_months_max"]),
            accepted_wfn_categories=tuple(c for c in WFN_CATEGORIES if c in cats),
            equation=str(sp["equation"]),
            crf_decimals=int(el.get("crf_decimals", 1)),
        )
    except KeyError as exc:
        raise EligibilityConfigError(f"eligibility config: {exc.args[0]} is not set; load the config with collector.config.load_config") from None
    if th.equation not in EQUATIONS or not th.accepted_wfn_categories:
        raise EligibilityConfigError("eligibility config: equation or accepted_wfn_categories not usable; load the config with collector.config.load_config")
    return th


# --------------------------------------------------------------------------- device results


@dataclass(frozen=True)
class SpirometryResult:
    """One spirometry session as the analysis module reports it.

    ``valid`` means the session has a reportable FVC (acceptable manoeuvres meeting the
    ATS/ERS 2019 repeatability rule, see spirometry.md); ``fvc_pct_predicted`` is the best
    FVC of the session as % of predicted by ``equation``.  ``sex`` and ``height_cm`` are
    the inputs the prediction used, so a later correction of those facts is noticed.
    """

    session_id: str
    valid: bool
    fvc_pct_predicted: float | None
    equation: str
    other_equation: str | None = None
    other_fvc_pct_predicted: float | None = None
    fvc_l: float | None = None
    grade: str | None = None
    manoeuvre: str = "FVC"
    sex: str | None = None
    height_cm: float | None = None
    analysed_at: str | None = None
    note: str = ""  # why the session is not valid, if it is not
    review: str = ""  # why a valid session still needs a person (a grade accepted only by a site rule)
    lower_row_fvc_pct_predicted: float | None = None  # configured equation, splines read at the lower 0.25-year row

    def pct_for(self, equation: str) -> float | None:
        if self.equation == equation:
            return self.fvc_pct_predicted
        if self.other_equation == equation:
            return self.other_fvc_pct_predicted
        return None


@dataclass(frozen=True)
class NightResult:
    """One overnight oximetry session's final report (oximetry.md).

    ``t90_pct`` is the primary T90 (SpO2 < 90 %, % of analysed time); ``borderline``
    means a reported variant falls on the other side of the threshold.
    """

    session_id: str
    t90_pct: float | None
    night_valid: bool
    borderline: bool = False
    analysed_at: str | None = None
    note: str = ""  # why invalid / which variant is on the other side
    review: str = ""  # what a person must confirm before the night decides (e.g. a host clock step)
    stale: str = ""  # why the stored report cannot decide as it is (made with another limit): recompute it
    review_message: Any = None  # ``review`` as a message tree (collector/eligibility/messages.py), when the caller has one
    stale_message: Any = None  # ``stale`` as a message tree


# --------------------------------------------------------------------------- output types


@dataclass
class CriterionResult:
    id: str
    state: State
    reason: str
    value: Any = None
    source: str | None = None
    recorded_by: str | None = None
    recorded_at: str | None = None
    inputs: list[dict[str, Any]] = field(default_factory=list)
    review: dict[str, Any] | None = None  # an investigator's resolution of needs_review (collector/eligibility/review.py)
    message: Node | None = None  # ``reason`` as a message tree (collector/eligibility/messages.py): read in any language
    review_message: Node | None = None  # the reason that needed review, as a tree, once a resolution replaced it

    def set_reason(self, node: Node) -> None:
        """The reason and its message tree together (the English text is the tree's English)."""
        self.message, self.reason = node, english(node)

    def as_dict(self) -> dict[str, Any]:
        out = {
            "id": self.id,
            "state": self.state,
            "reason": self.reason,
            "value": self.value,
            "source": self.source,
            "recorded_by": self.recorded_by,
            "recorded_at": self.recorded_at,
            "inputs": self.inputs,
        }
        if self.review is not None:
            out["review"] = self.review
        return out


@dataclass
class Decision:
    decision: DecisionValue
    criteria: list[CriterionResult]
    thresholds: Thresholds
    evaluated_at: str
    screening_date: date | None
    summary: list[str]

    def criterion(self, cid: str) -> CriterionResult:
        return next(c for c in self.criteria if c.id == cid)

    def as_dict(self) -> dict[str, Any]:
        """The shape of ``collector eligibility --json`` (no identifying values)."""
        return {
            "decision": self.decision,
            "summary": self.summary,
            "criteria": [c.as_dict() for c in self.criteria],
            "thresholds": self.thresholds.as_dict(),
            "rules": dict(RULES),
            "screening_date": self.screening_date.isoformat() if self.screening_date else None,
            "evaluated_at": self.evaluated_at,
        }


# --------------------------------------------------------------------------- calendar helpers


def add_months(d: date, months: int) -> date:
    """``d`` plus calendar months, the day clamped to the month end (31 Aug + 6 = 28/29 Feb)."""
    index = d.year * 12 + (d.month - 1) + months
    year, month0 = divmod(index, 12)
    day = min(d.day, calendar.monthrange(year, month0 + 1)[1])
    return date(year, month0 + 1, day)


def completed_months(start: date, end: date) -> int:
    """Whole calendar months from ``start`` to ``end`` (largest n with add_months(start, n) <= end)."""
    if end < start:
        raise ValueError(f"completed_months: end {end} is before start {start}")
    n = (end.year - start.year) * 12 + end.month - start.month
    while n > 0 and add_months(start, n) > end:
        n -= 1
    return n


def age_on(birth: date, on: date, feb29: Literal["mar1", "feb28"] = "mar1") -> int:
    """Age in completed years on ``on``; a 29 Feb birthday turns over on ``feb29`` in non-leap years."""
    anniversary = (birth.month, birth.day)
    if anniversary == (2, 29) and not calendar.isleap(on.year):
        anniversary = (3, 1) if feb29 == "mar1" else (2, 28)
    return on.year - birth.year - (1 if (on.month, on.day) < anniversary else 0)


# --------------------------------------------------------------------------- evaluation helpers


def _input(fact: str, rec: RecordedFact | None) -> dict[str, Any]:
    if rec is None:
        return {"fact": fact, "value": None, "source": None, "recorded_by": None, "recorded_at": None}
    return {
        "fact": fact,
        "value": display_value(fact, rec.value),
        "source": rec.source,
        "recorded_by": rec.recorded_by,
        "recorded_at": rec.recorded_at,
    }


def _result(cid: str, state: State, reason: Node, value: Any, inputs: list[dict[str, Any]]) -> CriterionResult:
    """Top-level provenance is the most recently recorded input: the one that last changed the state.
    ``reason`` is a message tree; the stored reason is its English."""
    recorded = [i for i in inputs if i.get("recorded_at") or i.get("source")]
    latest = max(recorded, key=lambda i: i.get("recorded_at") or "", default=None)
    return CriterionResult(
        id=cid,
        state=state,
        reason=english(reason),
        message=reason,
        value=value,
        source=latest["source"] if latest else None,
        recorded_by=latest["recorded_by"] if latest else None,
        recorded_at=latest["recorded_at"] if latest else None,
        inputs=inputs,
    )


_PRIORITY: dict[State, int] = {"not_met": 3, "needs_review": 2, "pending": 1, "met": 0}


def _combine(parts: Sequence[tuple[State, Node]]) -> tuple[State, Node]:
    """Worst state wins; the reason lists every part that is not met (or all parts when met)."""
    worst = max((s for s, _ in parts), key=_PRIORITY.__getitem__)
    if worst == "met":
        return "met", join("; ", (r for _, r in parts))
    if worst == "not_met":
        return "not_met", join("; ", (r for s, r in parts if s == "not_met"))
    return worst, join("; ", (r for s, r in sorted(parts, key=lambda p: -_PRIORITY[p[0]]) if s != "met"))


def _yes_no(
    cid: str, fact: str, facts: Mapping[str, RecordedFact], what: str
) -> tuple[State, Node, Any, dict[str, Any]]:
    """``what`` is a msgid (marked with N_ by the caller)."""
    rec = facts.get(fact)
    if rec is None or rec.value is None:
        return "pending", msg(N_("{fact} not recorded ({what})"), fact=fact, what=msg(what)), None, _input(fact, None)
    if rec.value == "yes":
        return "met", msg(N_("{what}: yes"), what=msg(what)), "yes", _input(fact, rec)
    return "not_met", msg(N_("{what}: no"), what=msg(what)), rec.value, _input(fact, rec)


def _val(facts: Mapping[str, RecordedFact], name: str) -> Any:
    rec = facts.get(name)
    return None if rec is None else rec.value


def _fmt_pct(x: float, limit: float | None = None) -> str:
    """A T90 figure; against its limit it never prints equal to the limit when above it."""
    return limit_text(x, limit, "le", 2) + " %"


def _crf_note(what: Node, value: Any, limit: Any, decimals: int, unit: str) -> Node:
    shown = crf_round(value, decimals)
    template = (N_("{what} is written {shown}{unit} on the case report form ({decimals} decimal), on the other side of {limit}{unit}")
                if decimals == 1 else
                N_("{what} is written {shown}{unit} on the case report form ({decimals} decimals), on the other side of {limit}{unit}"))
    return msg(template, what=what, shown=str(shown), unit=unit, decimals=str(decimals), limit=f"{limit:g}")


def _not_recorded(facts: Sequence[str]) -> Node:
    return msg(N_("{facts} not recorded"), facts=join(AND, facts))


# --------------------------------------------------------------------------- criteria


def _consent(facts: Mapping[str, RecordedFact], first_session_on: date | None) -> CriterionResult:
    rec = facts.get("consent_signed_on")
    inputs = [_input("consent_signed_on", rec)]
    if rec is None or rec.value is None:
        return _result("consent", "pending", _not_recorded(["consent_signed_on"]), None, inputs)
    if rec.value == "no":
        return _result("consent", "not_met", msg(N_("ICF not signed")), "no", inputs)
    signed: date = rec.value
    planned = _val(facts, "screening_date")
    candidates = [d for d in (first_session_on, planned) if isinstance(d, date)]
    value = {"signed_on": signed.isoformat()}
    if not candidates:
        return _result("consent", "met", msg(N_("ICF signed on {signed}; no screening measurement yet"), signed=str(signed)),
                       value, inputs)
    first = min(candidates)
    value["first_screening_on"] = first.isoformat()
    if signed < first:
        return _result("consent", "met", msg(N_("ICF signed on {signed}, before screening on {first}"),
                                             signed=str(signed), first=str(first)), value, inputs)
    if signed == first:
        return _result(
            "consent", "met",
            msg(N_("ICF signed on {signed}, the day screening started (date only: counted as before)"), signed=str(signed)),
            value, inputs,
        )
    return _result(
        "consent", "not_met",
        msg(N_("ICF signed on {signed}, after screening started on {first}: consent must precede any screening measurement"),
            signed=str(signed), first=str(first)),
        value, inputs,
    )


def _screening_date(facts: Mapping[str, RecordedFact], first_session_on: date | None) -> tuple[date | None, dict]:
    rec = facts.get("screening_date")
    if rec is not None and rec.value is not None:
        return rec.value, _input("screening_date", rec)
    if first_session_on is not None:
        return first_session_on, {
            "fact": "screening_date", "value": first_session_on.isoformat(),
            "source": "first screening session", "recorded_by": None, "recorded_at": None,
        }
    return None, _input("screening_date", None)


def _age(facts: Mapping[str, RecordedFact], screening: date | None, s_input: dict, th: Thresholds) -> CriterionResult:
    rec = facts.get("birth_date")
    inputs = [_input("birth_date", rec), s_input]
    missing = [n for n, v in (("birth_date", rec and rec.value), ("screening_date", screening)) if v is None]
    if missing:
        return _result("age", "pending", _not_recorded(missing), None, inputs)
    assert rec is not None and screening is not None
    birth: date = rec.value
    if birth >= screening:
        return _result("age", "needs_review", msg(N_("birth date is not before the screening date: check both")), None, inputs)
    age = age_on(birth, screening, "mar1")
    ok = th.age_min <= age <= th.age_max
    value = {"age_years": age, "screening_date": screening.isoformat()}
    limits = f"{th.age_min}-{th.age_max}"
    if (birth.month, birth.day) == (2, 29) and not calendar.isleap(screening.year):
        alt = age_on(birth, screening, "feb28")
        if (th.age_min <= alt <= th.age_max) != ok:
            value["age_years_feb28_rule"] = alt
            return _result(
                "age", "needs_review",
                msg(N_("29 February birthday: age {age} on {screening} (turns over on 1 March) but {alt} if it turns "
                       "over on 28 February: the two rules disagree on the {limits} range, review"),
                    age=str(age), screening=str(screening), alt=str(alt), limits=limits),
                value, inputs,
            )
    if ok:
        return _result("age", "met", msg(N_("age {age} on {screening}, within {limits}"), age=str(age), screening=str(screening),
                                         limits=limits), value, inputs)
    return _result("age", "not_met", msg(N_("age {age} on {screening}, outside {limits}"), age=str(age), screening=str(screening),
                                         limits=limits), value, inputs)


def _window_primary(diag: date, s: date, lo: int, hi: int) -> bool:
    return add_months(diag, lo) <= s <= add_months(diag, hi)


def _window_backward(diag: date, s: date, lo: int, hi: int) -> bool:
    return add_months(s, -hi) <= diag <= add_months(s, -lo)


def _window_completed(diag: date, s: date, lo: int, hi: int) -> bool:
    return diag <= s and lo <= completed_months(diag, s) <= hi


def _diagnosis(
    facts: Mapping[str, RecordedFact], screening: date | None, s_input: dict, th: Thresholds
) -> CriterionResult:
    cat_rec, diag_rec = facts.get("wfn_category"), facts.get("diagnosis_date")
    inputs = [_input("wfn_category", cat_rec), _input("diagnosis_date", diag_rec), s_input]
    parts: list[tuple[State, Node]] = []
    value: dict[str, Any] = {"accepted_wfn_categories": list(th.accepted_wfn_categories)}
    category = cat_rec.value if cat_rec else None
    if category is None:
        parts.append(("pending", _not_recorded(["wfn_category"])))
    else:
        value["wfn_category"] = category
        if category in th.accepted_wfn_categories:
            parts.append(("met", msg(N_("WFN category {category} accepted"), category=str(category))))
        else:
            parts.append(("not_met", msg(N_("WFN category {category} not accepted (accepted: {accepted})"),
                                         category=str(category), accepted=", ".join(th.accepted_wfn_categories))))
    diag = diag_rec.value if diag_rec else None
    lo, hi = th.diagnosis_months_min, th.diagnosis_months_max
    if diag is None or screening is None:
        missing = [n for n, v in (("diagnosis_date", diag), ("screening_date", screening)) if v is None]
        parts.append(("pending", _not_recorded(missing)))
    elif diag > screening:
        parts.append(("not_met", msg(N_("diagnosis date {diagnosed} is after the screening date {screening}"),
                                     diagnosed=str(diag), screening=str(screening))))
    else:
        months = completed_months(diag, screening)
        value.update(
            diagnosis_date=diag.isoformat(),
            months_before_screening=months,
            window=[add_months(diag, lo).isoformat(), add_months(diag, hi).isoformat()],
        )
        ok = _window_primary(diag, screening, lo, hi)
        window = msg(N_("screening between {start} and {end}"), start=str(add_months(diag, lo)), end=str(add_months(diag, hi)))
        alternatives = {
            N_("counting back from the screening date"): _window_backward(diag, screening, lo, hi),
            N_("counting completed months"): _window_completed(diag, screening, lo, hi),
        }
        disagree = [name for name, alt_ok in alternatives.items() if alt_ok != ok]
        head = msg(N_("diagnosed {diagnosed}, {months} completed months before screening on {screening} ({window})"),
                   diagnosed=str(diag), months=str(months), screening=str(screening), window=window)
        span = f"{lo}-{hi}"
        if disagree:
            template = (N_("{head}: passes {span} months by calendar months from the diagnosis but fails {alternatives}") if ok
                        else N_("{head}: fails {span} months by calendar months from the diagnosis but passes {alternatives}"))
            parts.append(("needs_review", msg(template, head=head, span=span, alternatives=join(AND, [msg(d) for d in disagree]))))
        elif ok:
            parts.append(("met", msg(N_("{head}, within {span} months"), head=head, span=span)))
        else:
            parts.append(("not_met", msg(N_("{head}, outside {span} months"), head=head, span=span)))
    state, reason = _combine(parts)
    return _result("als_diagnosis", state, reason, value, inputs)


def _prior_treatment(facts: Mapping[str, RecordedFact]) -> CriterionResult:
    state, reason, value, inp = _yes_no(
        "prior_treatment", "prior_treatment_failed", facts, N_("prior standard treatment failed or disease progressed")
    )
    text_rec = facts.get("prior_treatments")
    inputs = [inp, _input("prior_treatments", text_rec)]
    text = text_rec.value if text_rec else None
    if state == "met" and not text:
        state, reason = "pending", msg(N_("prior treatments not listed (record prior_treatments)"))
    return _result("prior_treatment", state, reason, {"failed": value, "treatments": text}, inputs)


def _session_input(session_id: str, analysed_at: str | None, value: Any) -> dict[str, Any]:
    return {"fact": "session", "value": value, "source": f"session:{session_id}",
            "recorded_by": "device", "recorded_at": analysed_at}


def _fvc(facts: Mapping[str, RecordedFact], sessions: Sequence[SpirometryResult], th: Thresholds) -> CriterionResult:
    eq = th.equation
    listed: list[Node] = []
    usable: list[SpirometryResult] = []
    wrong_eq: list[SpirometryResult] = []
    for s in sessions:
        if s.manoeuvre.upper() != "FVC":
            listed.append(msg(N_("session {session}: {manoeuvre} manoeuvre, the protocol asks for FVC"),
                              session=s.session_id, manoeuvre=s.manoeuvre))
        elif not s.valid:
            listed.append(msg(N_("session {session}: not valid ({note})"), session=s.session_id, note=s.note) if s.note
                          else msg(N_("session {session}: not valid"), session=s.session_id))
        elif s.pct_for(eq) is None:
            wrong_eq.append(s)
        elif not math.isfinite(s.pct_for(eq)):  # type: ignore[arg-type]
            listed.append(msg(N_("session {session}: % predicted is not a number"), session=s.session_id))
        else:
            usable.append(s)
    inputs = [_session_input(s.session_id, s.analysed_at, {
        "valid": s.valid, "manoeuvre": s.manoeuvre, "fvc_l": s.fvc_l, "grade": s.grade,
        s.equation: s.fvc_pct_predicted, **({s.other_equation: s.other_fvc_pct_predicted} if s.other_equation else {}),
    }) for s in sessions]
    if not usable:
        if wrong_eq:
            ids = ", ".join(s.session_id for s in wrong_eq)
            return _result("fvc", "needs_review",
                           msg(N_("valid session(s) {sessions} have no % predicted by the configured equation {equation}: recompute"),
                               sessions=ids, equation=eq),
                           {"equation": eq}, inputs)
        why = join("; ", listed) if listed else msg(N_("no spirometry session yet"))
        return _result("fvc", "pending", msg(N_("no valid FVC session ({why})"), why=why), {"equation": eq}, inputs)
    best = max(usable, key=lambda s: s.pct_for(eq))  # type: ignore[arg-type,return-value]
    pct = best.pct_for(eq)
    assert pct is not None
    ok = pct >= th.fvc_pct_min
    other_eq = next(e for e in EQUATIONS if e != eq)
    others = [(p, s) for s in usable if (p := s.pct_for(other_eq)) is not None and math.isfinite(p)]
    other_pct = max((p for p, _ in others), default=None)
    lim, dec = th.fvc_pct_min, th.crf_decimals
    value = {"fvc_pct_predicted": pct, "equation": eq, "session_id": best.session_id, "fvc_l": best.fvc_l,
             "grade": best.grade, "other_equation": other_eq, "other_fvc_pct_predicted": other_pct,
             "lower_row_fvc_pct_predicted": best.lower_row_fvc_pct_predicted,
             "crf_fvc_pct_predicted": float(crf_round(pct, dec)), "crf_decimals": dec}
    inputs.sort(key=lambda i: i["source"] != f"session:{best.session_id}")  # deciding session first
    shown, limit = limit_text(pct, lim, "ge", dec), f"{lim:g}"
    head = (msg(N_("best FVC {pct} % predicted ({equation}, session {session}, grade {grade})"), pct=shown, equation=eq,
                session=best.session_id, grade=str(best.grade)) if best.grade else
            msg(N_("best FVC {pct} % predicted ({equation}, session {session})"), pct=shown, equation=eq, session=best.session_id))
    review: list[Node] = []
    if best.review:
        review.append(best.review)
    if other_pct is not None and (other_pct >= th.fvc_pct_min) != ok:
        review.append(msg(N_("{equation} gives {pct} %, on the other side of {limit} %"), equation=other_eq,
                          pct=limit_text(other_pct, lim, "ge", dec), limit=limit))
    low = best.lower_row_fvc_pct_predicted
    if low is not None and math.isfinite(low) and (low >= lim) != ok:
        review.append(msg(N_("the GLI splines read at the lower quarter-year row (as rspiro and spiref do) give {pct} %, "
                             "on the other side of {limit} % (interpolated: {interpolated} %)"),
                          pct=limit_text(low, lim, "ge", dec), limit=limit, interpolated=shown))
    if crf_rounding_crosses(pct, lim, "ge", dec):
        review.append(_crf_note(msg(N_("FVC {pct} % predicted"), pct=shown), pct, lim, dec, " %"))
    sex, height = _val(facts, "sex"), _val(facts, "height_cm")
    if best.sex is not None and sex is not None and best.sex != sex:
        review.append(msg(N_("prediction used sex {used} but sex is recorded as {recorded}: recompute"),
                          used=str(best.sex), recorded=str(sex)))
    if best.height_cm is not None and height is not None and abs(float(height) - best.height_cm) > 0.5:
        review.append(msg(N_("prediction used height {used} cm but height_cm is {recorded}: recompute"),
                          used=f"{best.height_cm:g}", recorded=f"{float(height):g}"))
    res_inputs = inputs + [_input("sex", facts.get("sex")), _input("height_cm", facts.get("height_cm"))]
    if review:
        r = _result("fvc", "needs_review", msg(N_("{head}: {review}"), head=head, review=join("; ", review)), value, res_inputs)
    elif ok:
        r = _result("fvc", "met", msg(N_("{head} >= {limit} %"), head=head, limit=limit), value, res_inputs)
    else:
        r = _result("fvc", "not_met", msg(N_("{head} < {limit} %"), head=head, limit=limit), value, res_inputs)
    # The deciding session is the provenance of a device criterion.
    r.source, r.recorded_by, r.recorded_at = f"session:{best.session_id}", "device", best.analysed_at
    return r


def _nocturnal(nights: Sequence[NightResult], th: Thresholds) -> CriterionResult:
    limit = th.t90_pct_max
    valid = [n for n in nights if n.night_valid]
    invalid = [n for n in nights if not n.night_valid]
    unknown = [n for n in valid if n.t90_pct is None or not math.isfinite(n.t90_pct)]
    stale = [n for n in valid if n not in unknown and n.stale]
    clear_fail = [n for n in valid if n not in unknown and n not in stale and not n.borderline and n.t90_pct > limit]  # type: ignore
    border = [n for n in valid if n not in unknown and n not in stale and n.borderline]
    flagged = [n for n in valid if n not in unknown and (n.review or n.stale) and n not in border]
    inputs = [_session_input(n.session_id, n.analysed_at, {
        "t90_pct": n.t90_pct, "night_valid": n.night_valid, "borderline": n.borderline, "note": n.note or None,
    }) for n in nights]
    value = {
        "nights": [{"session_id": n.session_id, "t90_pct": n.t90_pct, "night_valid": n.night_valid,
                    "borderline": n.borderline} for n in nights],
        "t90_pct_max": limit,
        "valid_nights": len(valid),
        "worst_valid_t90_pct": max((n.t90_pct for n in valid if n not in unknown), default=None),  # type: ignore
    }
    inv: list[Node] = ([msg(N_("invalid night(s) not counted: {sessions}"), sessions=", ".join(n.session_id for n in invalid))]
                       if invalid else [])
    lim = f"{limit:g}"

    def desc(ns: Iterable[NightResult]) -> Node:
        return join(", ", (msg(N_("{session} T90 {t90}"), session=n.session_id, t90=_fmt_pct(n.t90_pct, limit))  # type: ignore[arg-type]
                           for n in ns))

    def with_source(r: CriterionResult, deciding: Sequence[NightResult]) -> CriterionResult:
        if deciding:
            d = deciding[0]
            r.source, r.recorded_by, r.recorded_at = f"session:{d.session_id}", "device", d.analysed_at
        return r

    if clear_fail:
        return with_source(_result("nocturnal_spo2", "not_met",
                                   join("; ", [msg(N_("T90 above {limit} % on valid night(s): {nights}"), limit=lim,
                                                   nights=desc(clear_fail)), *inv]),
                                   value, inputs), clear_fail)
    if unknown or border or flagged:
        reasons: list[Node] = []
        if flagged:
            reasons.append(join("; ", (msg(N_("night {session}: {why}"), session=n.session_id,
                                           why=join("; ", [t or x for x, t in ((n.stale, n.stale_message), (n.review, n.review_message)) if x]))
                                       for n in flagged)))
        if border:
            template = (N_("borderline night(s) for review: {nights} (primary T90 above {limit} %, a reported variant on the other side)")
                        if any(n.t90_pct > limit for n in border) else  # type: ignore[operator]
                        N_("borderline night(s) for review: {nights} (primary T90 within {limit} %, a reported variant on the other side)"))
            reasons.append(msg(template, nights=desc(border), limit=lim))
        if unknown:
            reasons.append(msg(N_("valid night(s) without a T90 figure: {sessions}"), sessions=", ".join(n.session_id for n in unknown)))
        return with_source(_result("nocturnal_spo2", "needs_review", join("; ", reasons + inv), value, inputs),
                           border or unknown or flagged)
    if not valid:
        why = join("; ", [msg(N_("no valid night yet")), *inv]) if invalid else msg(N_("no screening night recorded yet"))
        return _result("nocturnal_spo2", "pending", why, value, inputs)
    worst = max(valid, key=lambda n: n.t90_pct)  # type: ignore[arg-type,return-value]
    return with_source(_result("nocturnal_spo2", "met",
                               join("; ", [msg(N_("every valid night T90 <= {limit} % ({nights})"), limit=lim, nights=desc(valid)),
                                           *inv]), value, inputs), [worst])


def bmi_exact(height_cm: Decimal, weight_kg: Decimal) -> Fraction:
    """BMI as an exact fraction of the typed decimals: 18.5 exactly is 18.5, not 18.499999."""
    h = Fraction(height_cm) / 100
    return Fraction(weight_kg) / (h * h)


def _bmi(facts: Mapping[str, RecordedFact], th: Thresholds) -> CriterionResult:
    h_rec, w_rec = facts.get("height_cm"), facts.get("weight_kg")
    n_state, n_reason, n_value, n_input = _yes_no("bmi", "nutrition_good", facts, N_("investigator judges nutrition good"))
    inputs = [_input("height_cm", h_rec), _input("weight_kg", w_rec), n_input]
    parts: list[tuple[State, Node]] = []
    value: dict[str, Any] = {"bmi": None, "nutrition_good": n_value}
    h = h_rec.value if h_rec else None
    w = w_rec.value if w_rec else None
    if h is None or w is None:
        missing = [n for n, v in (("height_cm", h), ("weight_kg", w)) if v is None]
        parts.append(("pending", _not_recorded(missing)))
    else:
        bmi = bmi_exact(Decimal(h), Decimal(w))
        dec = th.crf_decimals
        value.update(bmi=round(float(bmi), 4), height_cm=float(h), weight_kg=float(w),
                     crf_bmi=float(crf_round(bmi, dec)), crf_decimals=dec)
        shown = limit_text(bmi, th.bmi_min, "ge", 2)
        text = msg(N_("BMI {bmi} kg/m2 ({weight} kg, {height} cm)"), bmi=shown, weight=f"{float(w):g}", height=f"{float(h):g}")
        bmi_min = str(th.bmi_min)
        if crf_rounding_crosses(bmi, th.bmi_min, "ge", dec):
            note = _crf_note(msg(N_("BMI {bmi}"), bmi=shown), bmi, th.bmi_min, dec, "")
            template = N_("{text} >= {limit}: {note}") if bmi >= Fraction(th.bmi_min) else N_("{text} < {limit}: {note}")
            parts.append(("needs_review", msg(template, text=text, limit=bmi_min, note=note)))
        elif bmi >= Fraction(th.bmi_min):
            parts.append(("met", msg(N_("{text} >= {limit}"), text=text, limit=bmi_min)))
        else:
            parts.append(("not_met", msg(N_("{text} < {limit}"), text=text, limit=bmi_min)))
    parts.append((n_state, n_reason))
    state, reason = _combine(parts)
    return _result("bmi", state, reason, value, inputs)


def _contraception(facts: Mapping[str, RecordedFact]) -> CriterionResult:
    rec = facts.get("contraception")
    inputs = [_input("contraception", rec)]
    ans = rec.value if rec else None
    if ans is None:
        return _result("contraception", "pending", _not_recorded(["contraception"]), None, inputs)
    assert isinstance(ans, ContraceptionAnswer)
    value = display_value("contraception", ans)
    if ans.answer == "yes":
        return _result("contraception", "met", msg(N_("contraception agreed")), value, inputs)
    if ans.answer == "not_applicable":
        if ans.reason:
            return _result("contraception", "met", msg(N_("not applicable: {reason}"), reason=str(ans.reason)), value, inputs)
        return _result("contraception", "pending", msg(N_("not_applicable recorded without a reason")), value, inputs)
    return _result("contraception", "not_met", msg(N_("contraception not agreed")), value, inputs)


def _simple(cid: str, fact: str, facts: Mapping[str, RecordedFact], what: str) -> CriterionResult:
    state, reason, value, inp = _yes_no(cid, fact, facts, what)
    return _result(cid, state, reason, value, [inp])


# --------------------------------------------------------------------------- decision


def evaluate(
    facts: Mapping[str, RecordedFact],
    *,
    spirometry: Sequence[SpirometryResult] = (),
    nights: Sequence[NightResult] = (),
    first_session_on: date | None = None,
    thresholds: Thresholds | None = None,
    evaluated_at: str,
) -> Decision:
    """Decide eligibility from the current facts and the device results.

    ``facts`` maps fact name -> current :class:`RecordedFact` (``store.current_facts``);
    ``first_session_on`` is the local date of the subject's first screening session: it is
    the screening date when no ``screening_date`` fact is recorded, and consent must not
    be later than it.  ``evaluated_at`` is a UTC ISO time from the caller's clock.
    """
    th = thresholds or Thresholds()
    screening, s_input = _screening_date(facts, first_session_on)
    criteria = [
        _consent(facts, first_session_on),
        _age(facts, screening, s_input, th),
        _diagnosis(facts, screening, s_input, th),
        _prior_treatment(facts),
        _fvc(facts, spirometry, th),
        _nocturnal(nights, th),
        _bmi(facts, th),
        _contraception(facts),
        _simple("cooperation", "cooperation", facts, N_("able to cooperate with history collection and visits")),
    ]
    decision, summary = summarise(criteria)
    return Decision(decision, criteria, th, evaluated_at, screening, summary)


def summarise(criteria: Sequence[CriterionResult]) -> tuple[DecisionValue, list[str]]:
    """Overall decision from criterion states: any not_met -> ineligible; any open -> incomplete."""
    failed = [c for c in criteria if c.state == "not_met"]
    open_ = [c for c in criteria if c.state in ("pending", "needs_review")]
    if failed:
        return "ineligible", [f"{c.id}: {c.reason}" for c in failed]
    if open_:
        return "incomplete", [f"{c.id} ({c.state}): {c.reason}" for c in open_]
    return "eligible", ["all criteria met"]


def summary_messages(criteria: Sequence[CriterionResult]) -> list[Node]:
    """:func:`summarise`'s lines as message trees for the reader's language (the criterion named by its label).

    Their English names the criterion by its label, not its id: in English the stored summary is shown
    (collector.eligibility.messages.localise)."""
    from collector.eligibility.labels import CRITERIA as LABELS, STATES

    def reason(c: CriterionResult) -> Node:
        return c.message if c.message is not None else c.reason

    failed = [c for c in criteria if c.state == "not_met"]
    open_ = [c for c in criteria if c.state in ("pending", "needs_review")]
    if failed:
        return [msg(N_("{criterion}: {reason}"), criterion=msg(LABELS.get(c.id, c.id)), reason=reason(c)) for c in failed]
    if open_:
        return [msg(N_("{criterion} ({state}): {reason}"), criterion=msg(LABELS.get(c.id, c.id)), state=msg(STATES[c.state]),
                    reason=reason(c)) for c in open_]
    return [msg(N_("all criteria met"))]
