"""IEEE-11073 16-bit SFLOAT, the number format of the Bluetooth health profiles.

Word layout: high 4 bits = signed base-10 exponent, low 12 bits = signed mantissa.
Exactly five whole words are special (NaN, NRes, +INF, -INF, reserved); any other
word, e.g. 0xF7FF = 2047e-1 = 204.7, is an ordinary number.  A special word never
yields a usable reading, so :func:`sfloat_value` maps it to ``None``.

Decoding divides by a power of ten for negative exponents so that 975e-1 becomes
the float nearest 97.5 (multiplying by 0.1 would not be correctly rounded).
"""

from __future__ import annotations

import enum
import functools
import math
from dataclasses import dataclass
from decimal import Decimal

MANTISSA_MIN = -2048
MANTISSA_MAX = 2047
EXPONENT_MIN = -8
EXPONENT_MAX = 7


class Special(enum.IntEnum):
    """The five reserved whole words (exponent 0, mantissa 0x7FE..0x802)."""

    NAN = 0x07FF
    NRES = 0x0800  # not at this resolution
    POS_INF = 0x07FE
    NEG_INF = 0x0802
    RESERVED = 0x0801


_SPECIAL_WORDS = {s.value: s for s in Special}


class SFloatEncodeError(ValueError):
    """The value cannot be written as an SFLOAT (out of range or not exact)."""


@dataclass(frozen=True, slots=True)
class SFloat:
    """A decoded word: ``value`` is None exactly when ``special`` is set."""

    value: float | None
    special: Special | None = None
    mantissa: int = 0
    exponent: int = 0


def _signed(raw: int, bits: int) -> int:
    return raw - (1 << bits) if raw & (1 << (bits - 1)) else raw


def decode_sfloat(word: int) -> SFloat:
    """Decode one 16-bit word (only the low 16 bits are used)."""
    return _decode_word(word & 0xFFFF)


@functools.lru_cache(maxsize=None)  # at most 65536 immutable results; a night repeats a few dozen words
def _decode_word(word: int) -> SFloat:
    special = _SPECIAL_WORDS.get(word)
    if special is not None:
        return SFloat(None, special)
    mantissa = _signed(word & 0x0FFF, 12)
    exponent = _signed(word >> 12, 4)
    if exponent >= 0:
        value = float(mantissa * 10**exponent)
    else:
        value = mantissa / 10 ** (-exponent)
    return SFloat(value, None, mantissa, exponent)


def sfloat_value(word: int) -> float | None:
    """The number a word carries, or None for any special word."""
    return decode_sfloat(word).value


def read_sfloat(data: bytes, offset: int) -> SFloat:
    """Decode the little-endian word at ``data[offset:offset+2]`` (caller checks length)."""
    return decode_sfloat(data[offset] | (data[offset + 1] << 8))


def _word(mantissa: int, exponent: int) -> int:
    return ((exponent & 0xF) << 12) | (mantissa & 0x0FFF)


def encode_sfloat(value: float | Special | None, exponent: int | None = None, *, exact: bool = True) -> int:
    """Encode a number as an SFLOAT word (the codec in reverse, for simulators and tests).

    ``None`` and float NaN encode as NaN, +/-inf as +/-INF, a :class:`Special` as itself.
    Without ``exponent`` the exponent nearest zero that holds the value exactly is chosen:
    97 -> 97e0, 97.5 -> 975e-1, 1.25 -> 125e-2, 5000 -> 500e1.  With ``exact=False``
    a value needing more digits is rounded to the finest exponent whose mantissa fits.
    Raises :class:`SFloatEncodeError` when that is impossible.
    """
    if isinstance(value, Special):
        return int(value)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return int(Special.NAN)
    if math.isinf(value):
        return int(Special.POS_INF if value > 0 else Special.NEG_INF)
    if exponent is not None:
        return _encode_with_exponent(value, exponent, exact)
    dec = Decimal(repr(float(value))) if isinstance(value, float) else Decimal(value)
    if dec == 0:
        return 0
    # normalize() gives the fewest decimals (or the largest power of ten) that is exact.
    sign, digits, exp = dec.normalize().as_tuple()
    mantissa = int("".join(map(str, digits))) * (-1 if sign else 1)
    assert isinstance(exp, int)
    # Prefer exponent 0 for integers that fit (how devices send 97 or 100).
    while exp > 0 and MANTISSA_MIN <= mantissa * 10 <= MANTISSA_MAX:
        mantissa *= 10
        exp -= 1
    if _fits(mantissa, exp):
        return _word(mantissa, exp)
    if exact:
        raise SFloatEncodeError(f"{value!r} has no exact SFLOAT form (12-bit mantissa, exponent -8..7)")
    for e in range(EXPONENT_MIN, EXPONENT_MAX + 1):
        m = int((dec / (Decimal(10) ** e)).to_integral_value())
        if _fits(m, e):
            return _word(m, e)
    raise SFloatEncodeError(f"{value!r} is outside the SFLOAT range")


def _fits(mantissa: int, exponent: int) -> bool:
    if not (MANTISSA_MIN <= mantissa <= MANTISSA_MAX and EXPONENT_MIN <= exponent <= EXPONENT_MAX):
        return False
    return _word(mantissa, exponent) not in _SPECIAL_WORDS


def _encode_with_exponent(value: float, exponent: int, exact: bool) -> int:
    dec = Decimal(repr(float(value))) if isinstance(value, float) else Decimal(value)
    scaled = dec / (Decimal(10) ** exponent)
    mantissa = int(scaled.to_integral_value())
    if exact and scaled != mantissa:
        raise SFloatEncodeError(f"{value!r} is not a whole multiple of 10^{exponent}")
    if not _fits(mantissa, exponent):
        raise SFloatEncodeError(f"{value!r} does not fit an SFLOAT with exponent {exponent}")
    return _word(mantissa, exponent)


def pack_sfloat(value: float | Special | None, exponent: int | None = None, *, exact: bool = True) -> bytes:
    """:func:`encode_sfloat` as two little-endian bytes."""
    return encode_sfloat(value, exponent, exact=exact).to_bytes(2, "little")
