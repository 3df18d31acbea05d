"""Night scenarios for the simulated oximeters.

A scenario (TOML) describes what the device *would measure* over a night and
what goes wrong with the link.  :func:`build_timeline` turns it into arrays, one
entry per device tick, deterministically (seeded), so tests can compare what the
collector stored with what the device sent.

Example::

    [device]
    protocol = "plx"            # plx | nonin | berrymed | o2ring
    address = "SIM-PLX-01"
    name = "SimOx PLX"
    interval_s = 1.0            # reading interval (BerryMed: packet interval)
    memory = "undelivered"      # PLX only: keep records the collector missed ("all": every reading), served by RACP
    clock_offset_s = 28800      # the device's wall clock minus UTC (a device set to Beijing time: +8 h)
    clock_drift_ppm = 0         # the device clock runs fast (+) or slow (-) by this much

    [night]
    duration_s = 28800
    baseline_spo2 = 95
    baseline_pulse = 68
    noise_spo2 = 0.5            # SD of the beat-to-beat noise, % points
    seed = 7

    [[desaturations]]           # episodes: explicit times, or a count spread over the night
    count = 12
    depth = 7                   # % points below baseline at the bottom
    duration_s = 45

    [[finger_out]]
    at_s = 3600
    duration_s = 120

    [[disconnects]]             # the device goes out of range
    at_s = 7200
    duration_s = 90

    [[silences]]                # link stays up but no data (watchdog case)
    at_s = 9000
    duration_s = 60

    [[garbage]]                 # malformed notifications instead of good frames
    at_s = 600
    count = 3
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from collector.errors import InvalidInput

PROTOCOLS = ("plx", "nonin", "berrymed", "o2ring")

# Tick states.
OK, FINGER_OUT, DISCONNECTED, SILENT, GARBAGE = 0, 1, 2, 3, 4


@dataclass(frozen=True)
class Interval:
    at_s: float
    duration_s: float

    @property
    def end_s(self) -> float:
        return self.at_s + self.duration_s


@dataclass(frozen=True)
class Scenario:
    protocol: str
    address: str
    name: str
    interval_s: float
    duration_s: float
    baseline_spo2: float
    baseline_pulse: float
    noise_spo2: float
    seed: int
    desaturations: list[dict[str, Any]] = field(default_factory=list)
    finger_out: list[Interval] = field(default_factory=list)
    disconnects: list[Interval] = field(default_factory=list)
    silences: list[Interval] = field(default_factory=list)
    garbage: list[tuple[float, int]] = field(default_factory=list)
    source: str = "<inline>"
    memory: str = ""  # "" (none), "undelivered" or "all"
    clock_offset_s: float = 0.0
    clock_drift_ppm: float = 0.0


@dataclass(frozen=True)
class Timeline:
    """One entry per device tick: offsets from the start, values, and tick state."""

    offset_s: np.ndarray
    spo2: np.ndarray  # integer % the sensor would show
    pulse: np.ndarray
    state: np.ndarray  # OK / FINGER_OUT / DISCONNECTED / SILENT / GARBAGE


def _err(source: str, what: str) -> InvalidInput:
    return InvalidInput(f"scenario {source}: {what}; fix the file (see simulators/scenario.py for the format)")


def _number(table: dict[str, Any], key: str, default: float | None, source: str, *, low: float, high: float) -> float:
    value = table.get(key, default)
    if value is None:
        raise _err(source, f"missing '{key}'")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _err(source, f"'{key}' must be a number, got {value!r}")
    if not (low <= value <= high):
        raise _err(source, f"'{key}' = {value} is outside {low}..{high}")
    return float(value)


def _intervals(raw: Any, key: str, source: str) -> list[Interval]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise _err(source, f"'{key}' must be an array of tables ([[{key}]])")
    out = []
    for i, item in enumerate(raw):
        where = f"{key}[{i}]"
        if not isinstance(item, dict):
            raise _err(source, f"{where} must be a table")
        out.append(
            Interval(
                _number(item, "at_s", None, source + " " + where, low=0, high=86400 * 2),
                _number(item, "duration_s", None, source + " " + where, low=0, high=86400),
            )
        )
    return out


def parse_scenario(data: dict[str, Any], source: str = "<inline>") -> Scenario:
    device = data.get("device", {})
    night = data.get("night", {})
    if not isinstance(device, dict) or not isinstance(night, dict):
        raise _err(source, "[device] and [night] must be tables")
    protocol = device.get("protocol", "plx")
    if protocol not in PROTOCOLS:
        raise _err(source, f"unknown protocol {protocol!r} (known: {', '.join(PROTOCOLS)})")
    default_interval = 0.01 if protocol == "berrymed" else 1.0
    desats = data.get("desaturations", [])
    if not isinstance(desats, list):
        raise _err(source, "'desaturations' must be an array of tables")
    for i, d in enumerate(desats):
        where = f"{source} desaturations[{i}]"
        if not isinstance(d, dict):
            raise _err(source, f"desaturations[{i}] must be a table")
        _number(d, "depth", None, where, low=0, high=60)
        _number(d, "duration_s", None, where, low=1, high=7200)
        if "at_s" not in d and "count" not in d:
            raise _err(where, "give 'at_s' (a number or a list) or 'count'")
    garbage = []
    for i, g in enumerate(data.get("garbage", []) or []):
        where = f"{source} garbage[{i}]"
        garbage.append((_number(g, "at_s", None, where, low=0, high=86400 * 2), int(_number(g, "count", 1, where, low=1, high=10_000))))
    return Scenario(
        protocol=protocol,
        address=str(device.get("address", f"SIM-{protocol.upper()}-01")),
        name=str(device.get("name", f"Simulated {protocol} oximeter")),
        interval_s=_number(device, "interval_s", default_interval, source, low=0.001, high=60),
        duration_s=_number(night, "duration_s", 8 * 3600, source, low=1, high=86400 * 2),
        baseline_spo2=_number(night, "baseline_spo2", 95, source, low=50, high=100),
        baseline_pulse=_number(night, "baseline_pulse", 68, source, low=20, high=250),
        noise_spo2=_number(night, "noise_spo2", 0.5, source, low=0, high=10),
        seed=int(_number(night, "seed", 1, source, low=0, high=2**31)),
        desaturations=list(desats),
        finger_out=_intervals(data.get("finger_out"), "finger_out", source),
        disconnects=_intervals(data.get("disconnects"), "disconnects", source),
        silences=_intervals(data.get("silences"), "silences", source),
        garbage=garbage,
        source=source,
        memory=_memory(device.get("memory", ""), protocol, source),
        clock_offset_s=_number(device, "clock_offset_s", 0.0, source, low=-86400, high=86400),
        clock_drift_ppm=_number(device, "clock_drift_ppm", 0.0, source, low=-10000, high=10000),
    )


def _memory(value: Any, protocol: str, source: str) -> str:
    if value not in ("", "undelivered", "all"):
        raise _err(source, f"'memory' must be \"undelivered\" or \"all\", got {value!r}")
    if value and protocol != "plx":
        raise _err(source, "'memory' is a PLX feature (records served through RACP); remove it for this protocol")
    return str(value)


def load_scenario(path: str | Path) -> Scenario:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidInput(f"cannot read scenario {path}: {exc.strerror or exc}") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InvalidInput(f"scenario {path}: not valid TOML ({exc})") from exc
    return parse_scenario(data, str(path))


def _episode_starts(d: dict[str, Any], duration_s: float, rng: np.random.Generator) -> list[float]:
    if "at_s" in d:
        at = d["at_s"]
        return [float(x) for x in (at if isinstance(at, list) else [at])]
    count = int(d["count"])
    if count <= 0:
        return []
    # Spread evenly after the first 15 minutes, with a little seeded jitter.
    span = max(duration_s - 900 - float(d["duration_s"]), 1.0)
    slots = 900 + (np.arange(count) + 0.5) * span / count
    jitter = rng.uniform(-0.25, 0.25, count) * span / count
    return list(slots + jitter)


def build_timeline(sc: Scenario) -> Timeline:
    rng = np.random.default_rng(sc.seed)
    n = int(math.floor(sc.duration_s / sc.interval_s)) + 1
    offset = np.arange(n) * sc.interval_s
    spo2 = sc.baseline_spo2 + rng.normal(0.0, sc.noise_spo2, n) if sc.noise_spo2 > 0 else np.full(n, sc.baseline_spo2)
    pulse = sc.baseline_pulse + rng.normal(0.0, 1.5, n)
    for d in sc.desaturations:
        depth, dur = float(d["depth"]), float(d["duration_s"])
        for start in _episode_starts(d, sc.duration_s, rng):
            # Trapezoid: fall over a third, hold a third, recover over a third.
            x = (offset - start) / dur
            shape = np.clip(np.minimum(np.minimum(x * 3, 1.0), (1 - x) * 3), 0.0, 1.0)
            shape[(x < 0) | (x > 1)] = 0.0
            spo2 = spo2 - depth * shape
            pulse = pulse + 0.8 * depth * shape
    spo2 = np.clip(np.rint(spo2), 0, 100)
    pulse = np.clip(np.rint(pulse), 30, 240)
    state = np.full(n, OK, dtype=np.int8)
    for iv in sc.finger_out:
        state[(offset >= iv.at_s) & (offset < iv.end_s)] = FINGER_OUT
    for at, count in sc.garbage:
        first = int(np.searchsorted(offset, at))
        state[first : first + count] = GARBAGE
    for iv in sc.silences:
        state[(offset >= iv.at_s) & (offset < iv.end_s)] = SILENT
    for iv in sc.disconnects:
        state[(offset >= iv.at_s) & (offset < iv.end_s)] = DISCONNECTED
    return Timeline(offset, spo2, pulse, state)
