"""What must never leave the site, and the last check before a bundle is written.

Birth dates (every value ever recorded, in the common written forms) and device
addresses are turned into search tokens.  Text going into the bundle is scrubbed
(the token replaced by ``<withheld>``); then every byte of every file is searched
once more and the export is refused if anything is left.
"""

from __future__ import annotations

import json
import math
import re
import sqlite3
from datetime import date
from typing import Any

from collector.eligibility.store import recorded_values
from collector.storage import repo

WITHHELD = "<withheld>"
_DATE_FORMATS = ("%Y-%m-%d", "%d.%m.%Y", "%d/%m/%Y", "%m/%d/%Y", "%Y/%m/%d", "%d-%m-%Y", "%Y%m%d", "%d%m%Y",
                 "%d-%b-%Y", "%d %b %Y", "%d %B %Y", "%B %d, %Y")


def date_tokens(d: date) -> list[str]:
    return sorted({d.strftime(f) for f in _DATE_FORMATS})


def address_tokens(address: str) -> list[str]:
    a = (address or "").strip()
    if len(a) < 6:
        return []
    out = {a}
    bare = re.sub(r"[:\-]", "", a)
    if re.fullmatch(r"[0-9A-Fa-f]{12}", bare):  # a MAC address in any spelling
        out |= {bare, ":".join(bare[i:i + 2] for i in range(0, 12, 2)), "-".join(bare[i:i + 2] for i in range(0, 12, 2))}
    return sorted(out)


def forbidden_tokens(conn: sqlite3.Connection, subject_id: str) -> list[str]:
    """Tokens for this subject's birth dates (all recorded values) and every known device address."""
    tokens: set[str] = set()
    try:
        values = recorded_values(conn, subject_id, "birth_date")
    except sqlite3.OperationalError:  # a database made without the eligibility feature
        values = []
    for value in values:
        try:
            v = json.loads(value)
            if v:
                tokens.update(date_tokens(date.fromisoformat(v)))
        except (ValueError, TypeError):
            continue
    for address in repo.device_addresses(conn):
        tokens.update(address_tokens(address))
    return sorted(tokens, key=len, reverse=True)


def _pattern(tokens: list[str]) -> re.Pattern[str] | None:
    if not tokens:
        return None
    parts = [(r"(?<!\d)" + re.escape(t) + r"(?!\d)") if t.isdigit() else re.escape(t) for t in tokens]
    return re.compile("|".join(parts), re.IGNORECASE)


class Scrubber:
    def __init__(self, tokens: list[str]) -> None:
        self.tokens = tokens
        self._re = _pattern(tokens)
        self._bytes_re = re.compile(self._re.pattern.encode("utf-8"), re.IGNORECASE) if self._re else None

    def text(self, s: Any) -> Any:
        if self._re is None or not isinstance(s, str):
            return s
        return self._re.sub(WITHHELD, s)

    def hits(self, s: str | None) -> bool:
        return bool(self._re and isinstance(s, str) and self._re.search(s))

    def obj(self, o: Any) -> Any:
        """Scrub every string (keys too) of a JSON-ready structure."""
        if isinstance(o, str):
            return self.text(o)
        if isinstance(o, dict):
            return {self.text(k): self.obj(v) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [self.obj(v) for v in o]
        return o

    def leaks(self, files: dict[str, bytes]) -> list[str]:
        """Names of files whose bytes (UTF-8 or UTF-16) still contain a token."""
        if self._bytes_re is None:
            return []
        bad = []
        for name, data in files.items():
            if self._bytes_re.search(data):
                bad.append(name)
                continue
            low = data.lower()
            if any(t.lower().encode(enc) in low for enc in ("utf-16-le", "utf-16-be") for t in self.tokens):
                bad.append(name)
        return bad


# -- figures from which a birth date could be worked back ------------------------------------------
def _safe_round(value: float, digits: int, threshold: float | None) -> float:
    """Round to the case report form's precision, with more digits only where rounding would land on the threshold."""
    if threshold is None:
        return round(value, digits)
    for k in range(digits, digits + 8):
        r = round(value, k)
        if (r >= threshold) == (value >= threshold):
            return r
    return value


def coarsen(obj: Any, *, fvc_threshold_pct: float | None = None, pct_decimals: int = 1) -> Any:
    """Whole-year ages and CRF-precision reference values in an exported structure.

    A decimal age next to the date it was computed on gives the birth date back to the day,
    and so do full-precision predicted values with height and sex (the equations are public).
    Exports therefore carry the age in completed years, predicted/LLN/ULN volumes to 0.01 L,
    z-scores to 0.01 and % predicted to the case report form's ``[eligibility] crf_decimals`` (more digits only where that rounding would move a value onto
    the other side of the FVC limit).  The site database keeps the exact figures.
    """
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            if isinstance(v, float) and math.isfinite(v):
                if k.startswith("age_years"):
                    out[k] = int(math.floor(v))
                    continue
                if k.startswith(("predicted_", "lln_", "uln_")):
                    out[k] = round(v, 2)
                    continue
                if k.startswith("z_"):
                    out[k] = round(v, 2)
                    continue
                if "pct_predicted" in k or k.startswith("percent_predicted"):
                    out[k] = _safe_round(v, pct_decimals, fvc_threshold_pct)
                    continue
            out[k] = coarsen(v, fvc_threshold_pct=fvc_threshold_pct, pct_decimals=pct_decimals)
        return out
    if isinstance(obj, list):
        return [coarsen(v, fvc_threshold_pct=fvc_threshold_pct, pct_decimals=pct_decimals) for v in obj]
    return obj


def export_form(conn: sqlite3.Connection, subject_id: str, obj: Any, *, config: dict[str, Any]) -> Any:
    """``obj`` exactly as a bundle carries it: personal data withheld, figures at the form's precision.

    A signed decision is signed in this form, so the central team can check the signature against
    the bundle's own eligibility.json, and the signed content may leave the site.
    """
    return coarsen(Scrubber(forbidden_tokens(conn, subject_id)).obj(obj),
                   fvc_threshold_pct=float(config["spirometry"]["fvc_threshold_pct"]),
                   pct_decimals=int(config["eligibility"]["crf_decimals"]))
