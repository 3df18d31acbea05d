"""Is the host clock synchronised?  Host UTC labels every sample, so a site must know.

Sources, best first: chrony's tracking report (it gives the measured offset), systemd's
``timedatectl`` (synchronised yes/no), then the kernel's own NTP state through ``adjtimex``
(read-only), and Windows' ``w32tm``.  The parsers are pure functions of the tools' text so
they are tested on their documented output; :func:`read` runs whichever tool the host has.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import re
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from typing import Any, Callable

#: An offset above this is a finding even when the host says it is synchronised.
MAX_OFFSET_S = 1.0


@dataclass(frozen=True)
class ClockSync:
    """What the host says of its clock; ``synchronised`` is None when nothing could tell."""

    synchronised: bool | None
    source: str
    offset_s: float | None = None
    max_error_s: float | None = None
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


_CHRONY_OFFSET = re.compile(r"^System time\s*:\s*([0-9.]+)\s+seconds\s+(fast|slow)", re.M)
_CHRONY_LEAP = re.compile(r"^Leap status\s*:\s*(.+)$", re.M)


def parse_chrony_tracking(text: str) -> ClockSync | None:
    """``chronyc tracking``: 'Leap status : Normal' when synchronised, offset from 'System time'."""
    leap = _CHRONY_LEAP.search(text)
    if leap is None:
        return None
    status = leap.group(1).strip()
    offset = _CHRONY_OFFSET.search(text)
    offset_s = None if offset is None else float(offset.group(1)) * (1 if offset.group(2) == "fast" else -1)
    return ClockSync(synchronised=status != "Not synchronised", source="chrony", offset_s=offset_s,
                     detail=f"leap status {status}")


def parse_timedatectl(text: str) -> ClockSync | None:
    """``timedatectl show``: NTPSynchronized=yes|no (and NTP=yes|no: whether a sync service is on)."""
    fields = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    synced = fields.get("NTPSynchronized")
    if synced not in ("yes", "no"):
        return None
    return ClockSync(synchronised=synced == "yes", source="timedatectl",
                     detail=f"NTP service {'on' if fields.get('NTP') == 'yes' else 'off'}")


_W32TM_LEAP = re.compile(r"^Leap Indicator:\s*(\d)", re.M)
_W32TM_SOURCE = re.compile(r"^Source:\s*(.+)$", re.M)


def parse_w32tm(text: str) -> ClockSync | None:
    """``w32tm /query /status``: leap indicator 3 means not synchronised."""
    leap = _W32TM_LEAP.search(text)
    if leap is None:
        return None
    source = _W32TM_SOURCE.search(text)
    src = source.group(1).strip() if source else "unknown"
    return ClockSync(synchronised=leap.group(1) != "3" and "Local CMOS Clock" not in src, source="w32tm",
                     detail=f"source {src}")


# -- the kernel's view (Linux adjtimex, read-only) ---------------------------------------------
class _Timeval(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long)]


class _Timex(ctypes.Structure):
    _fields_ = [
        ("modes", ctypes.c_uint), ("offset", ctypes.c_long), ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long), ("esterror", ctypes.c_long), ("status", ctypes.c_int),
        ("constant", ctypes.c_long), ("precision", ctypes.c_long), ("tolerance", ctypes.c_long),
        ("time", _Timeval), ("tick", ctypes.c_long), ("ppsfreq", ctypes.c_long), ("jitter", ctypes.c_long),
        ("shift", ctypes.c_int), ("stabil", ctypes.c_long), ("jitcnt", ctypes.c_long), ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long), ("stbcnt", ctypes.c_long), ("tai", ctypes.c_int), ("_pad", ctypes.c_int * 11),
    ]


_TIME_ERROR = 5      # adjtimex's return value when the clock is not synchronised
_STA_UNSYNC = 0x0040
_STA_NANO = 0x2000


def kernel_state(state: int, status: int, offset: int, maxerror_us: int) -> ClockSync:
    """The kernel's NTP discipline state, as adjtimex returns it (pure: tested on its values)."""
    synced = state != _TIME_ERROR and not status & _STA_UNSYNC
    scale = 1e-9 if status & _STA_NANO else 1e-6
    return ClockSync(synchronised=synced, source="kernel", offset_s=offset * scale if synced else None,
                     max_error_s=maxerror_us * 1e-6, detail="kernel NTP state " + ("synchronised" if synced else "unsynchronised"))


def read_kernel() -> ClockSync | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        tx = _Timex()
        state = libc.adjtimex(ctypes.byref(tx))  # modes = 0: read only
    except (OSError, AttributeError):
        return None
    if state < 0:
        return None
    return kernel_state(state, tx.status, tx.offset, tx.maxerror)


def _run(argv: list[str]) -> str | None:
    if shutil.which(argv[0]) is None:
        return None
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=3, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


_TOOLS: tuple[tuple[list[str], Callable[[str], ClockSync | None]], ...] = (
    (["chronyc", "tracking"], parse_chrony_tracking),
    (["timedatectl", "show"], parse_timedatectl),
    (["w32tm", "/query", "/status"], parse_w32tm),
)


def read() -> ClockSync:
    """The host's own statement about its clock, from the first source that answers."""
    for argv, parse in _TOOLS:
        text = _run(argv)
        found = parse(text) if text is not None else None
        if found is not None:
            return found
    kernel = read_kernel()
    if kernel is not None:
        return kernel
    return ClockSync(synchronised=None, source="none", detail="no clock synchronisation service answered")
