"""Typed spirometry results shared by the HL7 and GDT codecs.

Codecs never raise on bad input: what they cannot accept becomes a
:class:`DecodeError` carrying a one-line reason, so the daemon can record the
refusal (and, for HL7, answer the device with AE/AR) instead of crashing.

Subject data (sex, height, weight, birth date, patient number) is kept apart
from the measured values in :class:`SubjectData`, which is marked identifying
and redacts itself in ``repr`` so it never lands in a log by accident.  Names,
addresses and insurance numbers are not kept at all.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import ClassVar, Literal, Protocol, Union

from drivers.protocols.common import ParserStats

# Plausibility limits: beyond these a value is a decoding fault, not a patient.
# Volumes: the reference equations start at age 3, whose smallest predicted FVC (about 0.5 L, LLN
# about 0.4 L) is still far above 0.10 L; a severely restricted ALS patient keeps several hundred
# millilitres.  A forced or slow vital capacity below 0.10 L is a zeroing, unit or decoding fault.
MIN_VOLUME_L = 0.10  # FVC and VC
MIN_FEV1_L = 0.05  # FEV1 may be a little below the smallest FVC (it is <= FVC anyway)
MAX_VOLUME_L = 12.0  # no human FVC/VC reaches 12 L
# A device's FEV1/FVC against FEV1 / FVC: volumes come rounded to 0.01 L (error up to 0.005 L
# each) and the ratio to 0.01 or 1 %; beyond this tolerance the three figures contradict each
# other and the message is refused (a device summary may take the ratio from its "best test"
# rather than from the largest FEV1 and FVC, so there it is a warning, not a refusal).
RATIO_TOLERANCE = 0.02


def ratio_tolerance(fvc_l: float, ratio: float) -> float:
    """Allowed |device FEV1/FVC - FEV1/FVC|: 0.02 plus what rounding 0.005 L off both volumes can move."""
    return RATIO_TOLERANCE + 0.005 * (1.0 + ratio) / fvc_l
MAX_FLOW_L_S = 25.0  # PEF above 25 L/s is not physiological
MAX_FET_S = 60.0
MAX_BEV_L = 5.0
HEIGHT_CM_RANGE = (40.0, 250.0)
WEIGHT_KG_RANGE = (2.0, 400.0)

ManoeuvreType = Literal["FVC", "SVC"]
#: Where a result came from: a line codec or a vendor export file parser.
Source = Literal["hl7", "gdt", "ndd-xml", "csv"]
Bronchodilator = Literal["pre", "post"]


@dataclass(frozen=True, slots=True)
class RawField:
    """A field we did not map, kept verbatim (no identifying fields end up here)."""

    code: str  # OBX-3 code (HL7) or field id / test id (GDT)
    value: str
    unit: str | None = None
    text: str | None = None  # OBX-3 text or GDT test name
    system: str | None = None  # OBX-3 coding system (LN, L, 99xxx)


@dataclass(frozen=True, slots=True)
class ReferenceRange:
    """An OBX-7 reference range in one of its HL7 forms: ``> x``, ``>= x``, ``< y``, ``<= y``, ``x-y``."""

    text: str
    low: float | None = None
    high: float | None = None
    low_inclusive: bool = True
    high_inclusive: bool = True

    def as_dict(self) -> dict[str, object]:
        return {"text": self.text, "low": self.low, "high": self.high,
                "low_inclusive": self.low_inclusive, "high_inclusive": self.high_inclusive}


_NUM = r"[+-]?[0-9]+(?:[.,][0-9]+)?"
_RANGE_BOUND = re.compile(rf"(>=|<=|>|<|=>|=<)\s*({_NUM})")
_RANGE_SPAN = re.compile(rf"({_NUM})\s*(?:-|–|\.\.|to)\s*({_NUM})")


def parse_reference_range(text: str) -> ReferenceRange | None:
    """The bounds of an OBX-7 text; None when empty; bounds left None when the text is free prose."""
    t = text.strip()
    if not t:
        return None
    if (m := _RANGE_BOUND.fullmatch(t)) is not None:
        op, v = m.group(1), parse_number(m.group(2))
        if op in (">", ">=", "=>"):
            return ReferenceRange(t, low=v, low_inclusive=op != ">")
        return ReferenceRange(t, high=v, high_inclusive=op != "<")
    if (m := _RANGE_SPAN.fullmatch(t)) is not None:
        lo, hi = parse_number(m.group(1)), parse_number(m.group(2))
        if lo is not None and hi is not None and lo <= hi:
            return ReferenceRange(t, low=lo, high=hi)
    return ReferenceRange(t)


@dataclass(frozen=True, slots=True)
class Observation:
    """One result line exactly as the device sent it (HL7 OBX, GDT test group or text line), mapped or not.

    ``mapped_to`` names the parameter it filled (None when unmapped); ``group`` is the OBR (HL7)
    or test group (GDT) it came from.  Subject lines (PID, GDT 3xxx) never become observations.
    """

    group: int
    code: str
    value: str
    text: str | None = None
    system: str | None = None
    value_type: str | None = None
    unit: str | None = None
    reference: ReferenceRange | None = None
    abnormal_flags: str | None = None
    status: str | None = None
    sub_id: str | None = None
    mapped_to: str | None = None

    def as_dict(self) -> dict[str, object]:
        return {"group": self.group, "code": self.code, "text": self.text, "system": self.system, "value_type": self.value_type,
                "value": self.value, "unit": self.unit, "reference": self.reference.as_dict() if self.reference else None,
                "abnormal_flags": self.abnormal_flags, "status": self.status, "sub_id": self.sub_id, "mapped_to": self.mapped_to}


@dataclass(frozen=True, slots=True)
class Curve:
    """A sampled curve as sent: volume-time (x s, y L) or flow-volume (x L, y L/s)."""

    kind: Literal["volume_time", "flow_volume"]
    x: tuple[float, ...]
    y: tuple[float, ...]

    @property
    def units(self) -> tuple[str, str]:
        return ("s", "L") if self.kind == "volume_time" else ("L", "L/s")


@dataclass(frozen=True, slots=True)
class SubjectData:
    """Subject data the device sent.  IDENTIFYING: never log or export it.

    ``sex`` is normalised to "male"/"female" (``None`` when unknown), ``sex_raw``
    keeps the device's code (GDT 1/2, HL7 M/F), height is cm, weight kg, birth
    date ISO ``YYYY-MM-DD``.
    """

    identifying: ClassVar[bool] = True

    patient_id: str | None = None
    sex: Literal["male", "female"] | None = None
    sex_raw: str | None = None
    height_cm: float | None = None
    weight_kg: float | None = None
    birth_date: str | None = None

    def __repr__(self) -> str:  # keep identifying data out of logs and tracebacks
        present = [k for k in ("patient_id", "sex", "height_cm", "weight_kg", "birth_date") if getattr(self, k) is not None]
        return f"SubjectData(<identifying: {', '.join(present) or 'empty'}>)"

    __str__ = __repr__

    def is_empty(self) -> bool:
        return all(getattr(self, k) is None for k in ("patient_id", "sex", "sex_raw", "height_cm", "weight_kg", "birth_date"))


@dataclass(frozen=True, slots=True)
class ManoeuvreResult:
    """One manoeuvre (blow) as the device reported it, in SI-ish units (L, L/s, s).

    ``fev1_fvc`` is a fraction (0..1) whatever the device sent (% is divided by
    100).  ``summary`` is True when the device labelled these values as its own
    session best/summary rather than one blow: analysis must recompute the best
    values from the trials and not count a summary as a manoeuvre.
    ``device_derived`` holds the device's own predicted / % predicted / LLN
    figures, kept for cross-checking only (the collector recomputes them).
    """

    source: Source
    number: int | None = None
    time: str | None = None  # device local time, ISO-8601 without zone
    manoeuvre_type: ManoeuvreType | None = None
    posture: str | None = None
    bronchodilator: Bronchodilator | None = None
    fvc_l: float | None = None
    fev1_l: float | None = None
    fev1_fvc: float | None = None
    pef_l_s: float | None = None
    bev_l: float | None = None
    fet_s: float | None = None
    vc_l: float | None = None  # slow vital capacity (SVC manoeuvres)
    device_quality: tuple[str, ...] = ()
    device_derived: tuple[tuple[str, float], ...] = ()
    reference_ranges: tuple[tuple[str, str], ...] = ()  # (parameter, OBX-7 text verbatim)
    curves: tuple[Curve, ...] = ()
    subject: SubjectData | None = None
    unknown: tuple[RawField, ...] = ()
    summary: bool = False
    message_id: str | None = None
    observations: tuple[Observation, ...] = ()  # every line this result was read from, mapped or not
    # Measured by some exporters (ndd XML, our CSV) and judged by ATS/ERS: the volume change in the
    # last 1 s of expiration (the plateau) and the hesitation time.
    last_second_volume_l: float | None = None
    hesitation_s: float | None = None
    # The device's own acceptability verdict for this trial (kept to compare with ours, never deciding).
    device_acceptable: bool | None = None


@dataclass(frozen=True, slots=True)
class DecodeError:
    """Why bytes from the device were refused; one line, no patient data in it."""

    source: Source
    reason: str
    message_id: str | None = None
    location: str | None = None  # e.g. "OBR 2 / OBX 3" or "line 14"
    ack: bytes | None = None  # HL7: the AE/AR acknowledgement to send back
    masked_raw: bytes | None = None  # the message as received, subject fields masked (site audit copy)

    def __str__(self) -> str:
        where = f" at {self.location}" if self.location else ""
        mid = f" (message {self.message_id})" if self.message_id else ""
        return f"{self.source}{mid}{where}: {self.reason}"


@dataclass(frozen=True, slots=True)
class DecodedMessage:
    """A whole message/record accepted from the device."""

    source: Source
    message_id: str | None
    results: tuple[ManoeuvreResult, ...]
    subject: SubjectData | None = None
    ack: bytes | None = None  # HL7: the AA acknowledgement to send back
    unknown: tuple[RawField, ...] = ()  # message-level fields we did not map
    warnings: tuple[str, ...] = ()
    observations: tuple[Observation, ...] = ()  # lines of groups that carried no result (anthropometry, comments)
    masked_raw: bytes | None = None  # the message as received, subject fields masked (site audit copy)
    refuse_ack: bytes | None = None  # HL7: the AE to send instead of ``ack`` when the collector refuses it after decoding


SpiroEvent = Union[DecodedMessage, DecodeError]


class SpiroDecoder(Protocol):
    """What the daemon needs from a spirometry codec (sans-I/O)."""

    stats: ParserStats

    def feed(self, data: bytes) -> list[SpiroEvent]:
        """Bytes from the line in, events out; never raises."""
        ...

    def end_of_input(self) -> list[SpiroEvent]:
        """The line went idle or closed (or the file ended): flush what is pending."""
        ...


def _bad(x: float | None) -> bool:
    return x is not None and not math.isfinite(x)


def check_result(r: ManoeuvreResult) -> str | None:
    """Reason the values are impossible, or None when they are plausible."""
    named = {"FVC": r.fvc_l, "FEV1": r.fev1_l, "FEV1/FVC": r.fev1_fvc, "PEF": r.pef_l_s, "BEV": r.bev_l, "FET": r.fet_s, "VC": r.vc_l,
             "last-second volume": r.last_second_volume_l, "hesitation": r.hesitation_s}
    for name, v in named.items():
        if _bad(v):
            return f"{name} is not a finite number"
    for name, v, low in (("FVC", r.fvc_l, MIN_VOLUME_L), ("FEV1", r.fev1_l, MIN_FEV1_L), ("VC", r.vc_l, MIN_VOLUME_L)):
        if v is not None and v < 0:
            return f"negative volume: {name} {v:g} L"
        if v is not None and v < low:
            return f"implausible volume: {name} {v:g} L (< {low:g} L: no person aged 3 or more blows so little; zeroing or unit fault?)"
        if v is not None and v > MAX_VOLUME_L:
            return f"implausible volume: {name} {v:g} L (> {MAX_VOLUME_L:g} L)"
    if r.fev1_l is not None and r.fvc_l is not None and r.fev1_l > r.fvc_l:
        return f"FEV1 {r.fev1_l:g} L exceeds FVC {r.fvc_l:g} L"
    if r.fev1_fvc is not None and not (0.0 <= r.fev1_fvc <= 1.0):
        return f"FEV1/FVC {r.fev1_fvc:g} outside 0..1"
    if not r.summary and (why := ratio_contradiction(r)):
        return why
    if r.pef_l_s is not None and not (0.0 <= r.pef_l_s <= MAX_FLOW_L_S):
        return f"implausible PEF {r.pef_l_s:g} L/s"
    if r.bev_l is not None and not (0.0 <= r.bev_l <= MAX_BEV_L):
        return f"implausible back-extrapolated volume {r.bev_l:g} L"
    if r.fet_s is not None and not (0.0 <= r.fet_s <= MAX_FET_S):
        return f"implausible forced expiratory time {r.fet_s:g} s"
    if r.last_second_volume_l is not None and not (0.0 <= r.last_second_volume_l <= MAX_BEV_L):
        return f"implausible last-second volume change {r.last_second_volume_l:g} L"
    if r.hesitation_s is not None and not (0.0 <= r.hesitation_s <= MAX_FET_S):
        return f"implausible hesitation time {r.hesitation_s:g} s"
    for c in r.curves:
        if len(c.x) != len(c.y):
            return f"{c.kind} curve has {len(c.x)} x values but {len(c.y)} y values"
        if any(not math.isfinite(v) for v in c.x + c.y):
            return f"{c.kind} curve has a non-finite sample"
    return None


def ratio_contradiction(r: ManoeuvreResult) -> str | None:
    """Reason the device's FEV1/FVC contradicts its FEV1 and FVC (see RATIO_TOLERANCE), or None."""
    if r.fev1_fvc is None or r.fev1_l is None or r.fvc_l is None or r.fvc_l <= 0:
        return None
    own = r.fev1_l / r.fvc_l
    tol = ratio_tolerance(r.fvc_l, own)
    if abs(r.fev1_fvc - own) > tol:
        return (f"device FEV1/FVC {r.fev1_fvc:.3f} contradicts FEV1 {r.fev1_l:g} L / FVC {r.fvc_l:g} L = {own:.3f}"
                f" (tolerance {tol:.3f})")
    return None


def check_subject(s: SubjectData) -> str | None:
    """Reason the subject data is impossible (no values echoed: they identify)."""
    if s.height_cm is not None and not (HEIGHT_CM_RANGE[0] <= s.height_cm <= HEIGHT_CM_RANGE[1]):
        return "subject height outside 40..250 cm (wrong unit?)"
    if s.weight_kg is not None and not (WEIGHT_KG_RANGE[0] <= s.weight_kg <= WEIGHT_KG_RANGE[1]):
        return "subject weight outside 2..400 kg (wrong unit?)"
    return None


@dataclass(slots=True)
class CodeMapEntry:
    """Where a device code lands: a parameter name and, optionally, its phase/trial."""

    param: str
    bronchodilator: Bronchodilator | None = None
    trial: int | None = None
    extra: dict[str, str] = field(default_factory=dict)


# Parameter names a code map may target (shared by HL7 and GDT maps).
MEASURED_PARAMS = {"fvc", "fev1", "fev1_fvc", "pef", "bev", "fet", "vc"}
DERIVED_PARAMS = {"fvc_pred", "fvc_pct_pred", "fev1_pred", "fev1_pct_pred", "fvc_lln", "fev1_lln", "fvc_z", "fev1_z"}
SUBJECT_PARAMS = {"height", "weight"}
META_PARAMS = {"quality", "posture", "manoeuvre_type", "manoeuvre_number", "time", "curve_volume_time", "curve_flow_volume"}
KNOWN_PARAMS = MEASURED_PARAMS | DERIVED_PARAMS | SUBJECT_PARAMS | META_PARAMS


# --- units: convert at the edge, refuse what we do not understand -------------------------

_VOLUME = {"l": 1.0, "liter": 1.0, "litre": 1.0, "liters": 1.0, "litres": 1.0, "l btps": 1.0, "l(btps)": 1.0,
           "ml": 0.001, "dl": 0.1, "cl": 0.01}
_FLOW = {"l/s": 1.0, "l/sec": 1.0, "ls-1": 1.0, "l.s-1": 1.0, "l/min": 1 / 60, "ml/s": 0.001, "ml/sec": 0.001}
_TIME = {"s": 1.0, "sec": 1.0, "secs": 1.0, "second": 1.0, "seconds": 1.0, "ms": 0.001, "msec": 0.001}
_LENGTH_CM = {"cm": 1.0, "m": 100.0, "mm": 0.1, "[in_i]": 2.54, "in": 2.54}
_MASS_KG = {"kg": 1.0, "g": 0.001, "[lb_av]": 0.45359237, "lb": 0.45359237, "lbs": 0.45359237}
_RATIO = {"": 1.0, "1": 1.0, "{ratio}": 1.0, "ratio": 1.0, "l/l": 1.0, "%": 0.01}
_PARAM_UNITS: dict[str, tuple[dict[str, float], str]] = {
    **{p: (_VOLUME, "L") for p in ("fvc", "fev1", "vc", "bev", "fvc_pred", "fev1_pred", "fvc_lln", "fev1_lln")},
    "pef": (_FLOW, "L/s"),
    "fet": (_TIME, "s"),
    "fev1_fvc": (_RATIO, ""),
    "fvc_pct_pred": ({"%": 1.0, "": 1.0}, "%"),
    "fev1_pct_pred": ({"%": 1.0, "": 1.0}, "%"),
    "fvc_z": ({"": 1.0, "1": 1.0, "{z-score}": 1.0, "sd": 1.0}, ""),
    "fev1_z": ({"": 1.0, "1": 1.0, "{z-score}": 1.0, "sd": 1.0}, ""),
    "height": (_LENGTH_CM, "cm"),
    "weight": (_MASS_KG, "kg"),
}


def convert_unit(param: str, value: float, unit: str | None) -> tuple[float | None, str | None]:
    """``(value in canonical unit, None)`` or ``(None, reason)``.

    A missing unit means the canonical one (L, L/s, s, cm, kg), except FEV1/FVC
    where a unit-less value above 1 can only be a percentage.
    """
    table, canonical = _PARAM_UNITS.get(param, ({"": 1.0}, ""))
    u = (unit or "").strip().lower()
    if param == "fev1_fvc" and u == "" and 1.0 < value <= 100.0:
        return round(value / 100.0, 9), None
    if u == "" and canonical:
        return value, None
    factor = table.get(u)
    if factor is None:
        return None, f"unit {unit!r} not understood for {param} (expected {canonical or 'no unit'})"
    return (value if factor == 1.0 else round(value * factor, 9)), None


_DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]{1,3})?")


def parse_number(text: str) -> float | None:
    """Decimal number as devices send it ('2.20', '2,20', ' 3 '); None if not one.

    Only the ASCII digits 0-9 count: Python's float() also reads Arabic-Indic or full-width
    digits, which no device sends and which would otherwise pass as numbers."""
    t = text.strip().replace(",", ".")
    if not t or _DECIMAL.fullmatch(t) is None:
        return None
    v = float(t)
    return v if math.isfinite(v) else None
