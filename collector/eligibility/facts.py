"""The facts staff record for screening, and how a typed CLI string becomes a typed value.

Facts are the only staff-entered inputs of the eligibility decision, so parsing is strict:
a wrong type or an implausible value is refused with a one-line message saying what to
type instead.  Values round-trip through JSON (the storage format) without loss:
numbers are kept as the decimal the user typed (``Decimal``) so BMI can be compared
exactly against its threshold.
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass
from datetime import date
from decimal import Decimal, InvalidOperation
from typing import Any, Literal, Mapping

from collector.i18n import N_

__all__ = [
    "FACTS",
    "IDENTIFYING_FACTS",
    "WFN_CATEGORIES",
    "ContraceptionAnswer",
    "FactError",
    "FactSpec",
    "FactValueError",
    "RecordedFact",
    "UnknownFactError",
    "decode_value",
    "display_value",
    "encode_value",
    "parse_fact",
]

WFN_CATEGORIES = ("definite", "probable", "probable_lab_supported", "possible")
EARLIEST_PLAUSIBLE_DATE = date(1900, 1, 1)

Kind = Literal["date", "choice", "number", "text", "consent", "contraception"]


class FactError(ValueError):
    """Base class: a fact the user typed cannot be recorded."""


class UnknownFactError(FactError):
    """The fact name is not one of :data:`FACTS`."""


class FactValueError(FactError):
    """The value has the wrong type, is out of range, or contradicts another fact."""


@dataclass(frozen=True)
class FactSpec:
    """What one staff fact is, which criterion it feeds, and how to check it."""

    name: str
    kind: Kind
    criteria: tuple[str, ...]
    help: str
    choices: tuple[str, ...] = ()
    min_value: Decimal | None = None
    max_value: Decimal | None = None
    unit: str = ""
    identifying: bool = False  # never leaves the local database (exports, logs, JSON output)
    not_in_future: bool = True  # dates only


@dataclass(frozen=True)
class ContraceptionAnswer:
    """``yes``, ``no`` or ``not_applicable`` (the last one always with a reason)."""

    answer: Literal["yes", "no", "not_applicable"]
    reason: str | None = None


@dataclass(frozen=True)
class RecordedFact:
    """A fact's current value with its provenance (one row of the append-only store)."""

    fact: str
    value: Any  # typed: date, Decimal, str, ContraceptionAnswer
    recorded_by: str
    recorded_at: str  # UTC ISO-8601
    source: str  # 'staff' or 'session:<id>'
    id: int | None = None
    reason: str | None = None
    supersedes: int | None = None


_YES_NO = ("yes", "no")

FACTS: dict[str, FactSpec] = {
    s.name: s
    for s in (
        FactSpec("consent_signed_on", "consent", ("consent",),
                 N_("date the ICF was signed (YYYY-MM-DD), or 'no' if not signed/refused")),
        FactSpec("screening_date", "date", ("age", "als_diagnosis"),
                 N_("screening date (YYYY-MM-DD); defaults to the date of the first screening session"),
                 not_in_future=False),
        FactSpec("birth_date", "date", ("age",), N_("birth date (YYYY-MM-DD); local database only"),
                 identifying=True),
        FactSpec("diagnosis_date", "date", ("als_diagnosis",),
                 N_("date of the initial ALS diagnosis (YYYY-MM-DD)")),
        FactSpec("wfn_category", "choice", ("als_diagnosis",),
                 N_("WFN (El Escorial / Awaji) category"), choices=WFN_CATEGORIES),
        FactSpec("prior_treatment_failed", "choice", ("prior_treatment",),
                 N_("prior standard treatment with poor efficacy or progression"), choices=_YES_NO),
        FactSpec("prior_treatments", "text", ("prior_treatment",),
                 N_("free text: prior treatments (riluzole, edaravone, ...)")),
        FactSpec("height_cm", "number", ("bmi", "fvc"), N_("measured height"),
                 min_value=Decimal(100), max_value=Decimal(250), unit="cm"),
        FactSpec("weight_kg", "number", ("bmi",), N_("measured weight"),
                 min_value=Decimal(20), max_value=Decimal(300), unit="kg"),
        FactSpec("sex", "choice", ("fvc",), N_("sex at birth (used by the reference equations)"),
                 choices=("male", "female")),
        FactSpec("nutrition_good", "choice", ("bmi",), N_("investigator's nutrition judgement"),
                 choices=_YES_NO),
        FactSpec("contraception", "contraception", ("contraception",),
                 N_("contraception agreement: yes, no, or 'not_applicable: <reason>'")),
        FactSpec("cooperation", "choice", ("cooperation",),
                 N_("able to cooperate with history collection and visits"), choices=_YES_NO),
    )
}

IDENTIFYING_FACTS = frozenset(name for name, spec in FACTS.items() if spec.identifying)

_DATE_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")  # ASCII digits only, used with fullmatch
_NA_RE = re.compile(r"not[_ ]applicable\s*(?:[:=]\s*(?P<reason>.*))?", re.IGNORECASE | re.DOTALL)


def _spec(fact: str) -> FactSpec:
    try:
        return FACTS[fact]
    except KeyError:
        raise UnknownFactError(
            f"unknown fact {fact!r}: use one of {', '.join(FACTS)}"
        ) from None


def _parse_date(spec: FactSpec, raw: str) -> date:
    raw = unicodedata.normalize("NFKC", raw).strip()  # full-width digits are the same digits
    if not _DATE_RE.fullmatch(raw):
        raise FactValueError(f"{spec.name}: {raw!r} is not a date; type it as YYYY-MM-DD")
    try:
        return date.fromisoformat(raw)
    except ValueError:
        raise FactValueError(f"{spec.name}: {raw!r} is not a calendar date; check day and month") from None


_NUMBER_RE = re.compile(r"[+-]?[0-9]+(?:\.[0-9]+)?")


def _parse_number(spec: FactSpec, raw: str) -> Decimal:
    # Full-width digits from a Chinese input method are the same digits (NFKC); any other script's
    # digits (Arabic-Indic, Devanagari ...) are refused rather than guessed.
    text = unicodedata.normalize("NFKC", raw).strip()
    text = text.replace(",", ".", 1) if text.count(",") == 1 and "." not in text else text
    if not _NUMBER_RE.fullmatch(text):
        raise FactValueError(f"{spec.name}: {raw!r} is not a number; type e.g. 172.5 (in {spec.unit}) with the digits 0-9")
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise FactValueError(f"{spec.name}: {raw!r} is not a number; type e.g. 172.5 (in {spec.unit})") from None
    if not value.is_finite():
        raise FactValueError(f"{spec.name}: {raw!r} is not a finite number; type e.g. 172.5 (in {spec.unit})")
    if value.as_tuple().exponent < -3:  # type: ignore[operator]
        raise FactValueError(f"{spec.name}: {raw!r} has more than 3 decimals; round it (in {spec.unit})")
    assert spec.min_value is not None and spec.max_value is not None
    if not spec.min_value <= value <= spec.max_value:
        raise FactValueError(
            f"{spec.name}: {raw} {spec.unit} is outside {spec.min_value}-{spec.max_value} {spec.unit}; "
            f"check the unit and the measurement"
        )
    return value


def _parse_choice(spec: FactSpec, raw: str) -> str:
    value = raw.strip().lower().replace("-", "_").replace(" ", "_")
    if value in ("y", "true"):
        value = "yes" if "yes" in spec.choices else value
    if value in ("n", "false"):
        value = "no" if "no" in spec.choices else value
    if value not in spec.choices:
        raise FactValueError(f"{spec.name}: {raw!r} is not allowed; use one of {', '.join(spec.choices)}")
    return value


def _parse_contraception(spec: FactSpec, raw: str) -> ContraceptionAnswer:
    text = raw.strip()
    m = _NA_RE.fullmatch(text)
    if m:
        reason = (m.group("reason") or "").strip()
        if not reason:
            raise FactValueError(
                "contraception: not_applicable needs a reason; type 'not_applicable: <reason>'"
            )
        return ContraceptionAnswer("not_applicable", reason)
    low = text.lower()
    if low in ("yes", "y"):
        return ContraceptionAnswer("yes")
    if low in ("no", "n"):
        return ContraceptionAnswer("no")
    raise FactValueError(f"contraception: {raw!r} is not allowed; use yes, no or 'not_applicable: <reason>'")


def _check_against(spec: FactSpec, value: Any, today: date, known: Mapping[str, Any]) -> None:
    """Refuse dates that are impossible on their own or against facts already recorded."""
    if not isinstance(value, date):
        return
    if value < EARLIEST_PLAUSIBLE_DATE:
        raise FactValueError(f"{spec.name}: {value.isoformat()} is before 1900; check the year")
    if spec.not_in_future and value > today:
        raise FactValueError(
            f"{spec.name}: {value.isoformat()} is in the future (today is {today.isoformat()}); check the date"
        )
    birth = known.get("birth_date")
    screening = known.get("screening_date")
    diagnosis = known.get("diagnosis_date")
    consent = known.get("consent_signed_on")
    name = spec.name
    # Only identifying-safe messages: never echo the birth date itself.
    if name == "diagnosis_date":
        if isinstance(screening, date) and value > screening:
            raise FactValueError(
                f"diagnosis_date: {value.isoformat()} is after the screening date {screening.isoformat()}; check both"
            )
        if isinstance(birth, date) and value < birth:
            raise FactValueError("diagnosis_date: is before the recorded birth date; check both")
    elif name == "screening_date":
        if isinstance(diagnosis, date) and value < diagnosis:
            raise FactValueError(
                f"screening_date: {value.isoformat()} is before the diagnosis date {diagnosis.isoformat()}; check both"
            )
        if isinstance(birth, date) and value <= birth:
            raise FactValueError("screening_date: is not after the recorded birth date; check both")
    elif name == "birth_date":
        if isinstance(screening, date) and value >= screening:
            raise FactValueError("birth_date: is not before the screening date; check both")
        if isinstance(diagnosis, date) and value > diagnosis:
            raise FactValueError("birth_date: is after the recorded diagnosis date; check both")
        if isinstance(consent, date) and value > consent:
            raise FactValueError("birth_date: is after the recorded consent date; check both")
    elif name == "consent_signed_on":
        if isinstance(birth, date) and value < birth:
            raise FactValueError("consent_signed_on: is before the recorded birth date; check both")


def parse_fact(fact: str, raw: str, *, today: date, known: Mapping[str, Any] | None = None) -> Any:
    """Typed value of ``fact`` from what the user typed.

    ``today`` is the local calendar date (dates after it are refused, except the
    screening date which may be planned); ``known`` maps other facts' current typed
    values, for cross-checks (a diagnosis after the screening date, a birth after the
    diagnosis...).  Raises :class:`UnknownFactError` or :class:`FactValueError`.
    """
    spec = _spec(fact)
    if not isinstance(raw, str):
        raise FactValueError(f"{fact}: expected text as typed on the command line, got {type(raw).__name__}")
    text = raw.strip()
    if not text:
        raise FactValueError(f"{fact}: empty value; {spec.help}")
    value: Any
    if spec.kind == "date":
        value = _parse_date(spec, text)
    elif spec.kind == "consent":
        value = "no" if text.lower() in ("no", "n", "refused") else _parse_date(spec, text)
    elif spec.kind == "number":
        value = _parse_number(spec, text)
    elif spec.kind == "choice":
        value = _parse_choice(spec, text)
    elif spec.kind == "contraception":
        value = _parse_contraception(spec, text)
    else:  # text
        if len(text) > 2000:
            raise FactValueError(f"{fact}: text longer than 2000 characters; shorten it")
        value = text
    _check_against(spec, value, today, known or {})
    return value


def encode_value(fact: str, value: Any) -> str:
    """Typed value -> the JSON text stored in ``criteria_facts.value`` (``None`` = retracted)."""
    _spec(fact)  # an unknown fact is refused here
    if value is None:
        return "null"
    if isinstance(value, date):
        obj: Any = value.isoformat()
    elif isinstance(value, Decimal):
        obj = float(value)  # <= 3 decimals and <= 300: the float's repr is the typed decimal
    elif isinstance(value, ContraceptionAnswer):
        obj = {"answer": value.answer, "reason": value.reason} if value.reason else {"answer": value.answer}
    else:
        obj = value
    return json.dumps(obj, ensure_ascii=False, sort_keys=True)


def decode_value(fact: str, text: str) -> Any:
    """Stored JSON text -> typed value (inverse of :func:`encode_value`)."""
    spec = _spec(fact)
    obj = json.loads(text)
    if obj is None:
        return None
    if spec.kind == "date" or (spec.kind == "consent" and obj != "no"):
        return date.fromisoformat(obj)
    if spec.kind == "number":
        return Decimal(repr(obj)) if isinstance(obj, float) else Decimal(str(obj))
    if spec.kind == "contraception":
        return ContraceptionAnswer(obj["answer"], obj.get("reason"))
    return obj


def display_value(fact: str, value: Any) -> Any:
    """JSON-friendly value for reports; identifying facts are withheld."""
    if fact in IDENTIFYING_FACTS:
        return "<withheld>"
    if value is None:
        return None
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, ContraceptionAnswer):
        return {"answer": value.answer, "reason": value.reason} if value.reason else value.answer
    return value
