"""Times as people read them: the site's zone ([site] timezone, IANA), with the zone shown.

Storage and exports stay UTC; only what a person reads (CLI tables, the page, the PNG,
the PDF) goes through here, always with its UTC offset so a local time is never
mistaken for UTC ("02:10 +08:00", "2026-12-01 02:10:05 +08:00").
"""

from __future__ import annotations

from datetime import datetime, timezone, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from collector.clock import parse_utc


def site_zone(config: dict[str, Any]) -> tzinfo:
    """The site's zone from the config; UTC if the name is unknown to this machine (never a guess)."""
    name = (config.get("site") or {}).get("timezone") or "UTC"
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return timezone.utc


def _dt(t: float | str, tz: tzinfo) -> datetime:
    seconds = parse_utc(t) if isinstance(t, str) else float(t)
    return datetime.fromtimestamp(seconds, tz=timezone.utc).astimezone(tz)


def offset_text(dt: datetime) -> str:
    off = dt.utcoffset()
    minutes = int(off.total_seconds() // 60) if off is not None else 0
    sign = "+" if minutes >= 0 else "-"
    return f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


def local_time(t: float | str | None, tz: tzinfo, *, seconds: bool = False) -> str:
    """``02:10 +08:00``: the offset, not the abbreviation (China's "CST" is also US Central time)."""
    if t is None:
        return ""
    dt = _dt(t, tz)
    return dt.strftime("%H:%M:%S" if seconds else "%H:%M") + f" {offset_text(dt)}"


def local_datetime(t: float | str | None, tz: tzinfo) -> str:
    """``2026-12-01 02:10:05 +08:00`` for tables and files a person reads."""
    if t is None:
        return ""
    dt = _dt(t, tz)
    return dt.strftime("%Y-%m-%d %H:%M:%S ") + offset_text(dt)


def duration_text(seconds: float) -> str:
    """``45 s``, ``12 min 5 s``, ``1 h 02 min``."""
    s = int(round(max(0.0, seconds)))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s" if s % 60 else f"{s // 60} min"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"
