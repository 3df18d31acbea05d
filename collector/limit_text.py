"""Numbers next to their limits: shown honestly, and rounded as a case report form would.

Why one module: a failing value printed equal to its limit ("50.0 % < 50 %") reads as a
contradiction, and a value that the case report form's precision rounds onto the other side of a
limit (BMI 18.46 written as 18.5) can be transcribed as a pass.  Every screen that prints a figure
against a limit (eligibility reasons, spirometry show, night reports) uses :func:`limit_text`, and
the eligibility engine asks :func:`crf_rounding_crosses` whether rounding would move a value
across its limit.

``passes`` names the rule of the criterion: ``"ge"`` (value >= limit passes: FVC % predicted,
BMI), ``"le"`` (value <= limit passes: T90).  A value equal to the limit passes in both.
"""

from __future__ import annotations

import math
from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction
from typing import Literal, Union

Rule = Literal["ge", "le"]
Number = Union[float, int, Fraction, Decimal]

#: Decimals tried after the requested ones before giving up and printing repr().
_MAX_EXTRA = 9


def passes(value: Number, limit: Number, rule: Rule) -> bool:
    """Whether ``value`` meets the limit (the limit itself passes)."""
    v, lim = Fraction(value), Fraction(limit)
    return v >= lim if rule == "ge" else v <= lim


def limit_text(value: Number | None, limit: Number | None, rule: Rule = "ge", decimals: int = 1) -> str:
    """``value`` with at least ``decimals`` decimals and as many more as it takes for the printed
    figure to fall on the same side of ``limit`` as the value; a failing value never prints as the
    limit itself: 49.99 -> "49.99" (limit 50, "ge"), 2.004 -> "2.004" (limit 2, "le")."""
    if value is None:
        return "n/a"
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    exact = Fraction(value)
    for k in range(decimals, decimals + _MAX_EXTRA + 1):
        text = _fmt(exact, k)
        if limit is None:
            return text
        shown = Fraction(Decimal(text))
        lim = Fraction(limit)
        ok = passes(exact, lim, rule)
        if passes(shown, lim, rule) == ok and (ok or shown != lim):
            return text
    return repr(float(exact))


def crf_round(value: Number, decimals: int) -> Decimal:
    """The figure a case report form records: rounded half up (away from zero) to ``decimals``."""
    q = Decimal(1).scaleb(-decimals)
    return _decimal(Fraction(value)).quantize(q, rounding=ROUND_HALF_UP)


def crf_rounding_crosses(value: Number, limit: Number, rule: Rule, decimals: int) -> bool:
    """True when the value rounded to the case report form's precision is on the other side of the limit."""
    return passes(crf_round(value, decimals), limit, rule) != passes(value, limit, rule)


def _decimal(x: Fraction) -> Decimal:
    """An exact-enough Decimal of a fraction (30 significant digits: far beyond any recorded figure)."""
    from decimal import localcontext

    with localcontext() as ctx:
        ctx.prec = 40
        return Decimal(x.numerator) / Decimal(x.denominator)


def _fmt(x: Fraction, k: int) -> str:
    """``x`` to ``k`` decimals, rounded half away from zero (what a reader expects of a display)."""
    q = Decimal(1).scaleb(-k)
    return str(_decimal(x).quantize(q, rounding=ROUND_HALF_UP))
