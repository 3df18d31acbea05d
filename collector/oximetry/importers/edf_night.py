"""EDF / EDF+ (continuous) night with an SpO2 channel, read with edfio.

The SpO2 channel is the one named with ``channel`` (label, case-insensitive),
else the first channel whose label says SpO2/SaO2 (or oxygen saturation), else
the first whose physical unit is ``%``.  A pulse channel (label pulse/PR/HR/heart
rate, or unit bpm) is used when present, held to the SpO2 sample times.

EDF stores integers scaled to a physical range, so a written 90 can read back as
89.9993; values are rounded to the decimal resolution the scaling can carry
(see :func:`round_to_resolution`) so strict ``< 90`` sees what was recorded.
The header's start date/time is the recording's local clock with no zone; the
patient and recording identification fields are never read.
"""

from __future__ import annotations

import io
import math
import warnings
from datetime import datetime
from typing import Any

import numpy as np

from collector.errors import InvalidInput

from . import ParsedNight, local_iso, local_to_utc, naive_seconds

SPO2_WORDS = ("spo2", "sao2", "sp02", "oxygen saturation", "o2 sat", "osat")
PULSE_WORDS = ("pulse", "pr", "hr", "heart rate", "heartrate", "pulse rate")


def round_to_resolution(values: np.ndarray, gain: float) -> np.ndarray:
    """Round to the coarsest decimal step (10^-k) that is still >= the scaling step.

    The written value (integer or tenths, as devices report) is then recovered
    exactly: the quantisation error is at most half a scaling step.
    """
    if not (gain > 0 and math.isfinite(gain)):
        return values
    k = max(0, math.floor(-math.log10(gain) + 1e-9))
    return np.round(values, k)


def _norm(s: str) -> str:
    return " ".join(s.replace("_", " ").replace("-", " ").split()).lower()


def _is_spo2_label(label: str) -> bool:
    n = _norm(label)
    return any(w in n for w in SPO2_WORDS)


def _is_pulse(label: str, unit: str) -> bool:
    n = _norm(label)
    words = n.replace("(", " ").replace(")", " ").split()
    return (any(w in words for w in PULSE_WORDS) or "heart rate" in n or "pulse" in n
            or unit.strip().lower() in ("bpm", "/min", "1/min", "beats/min"))


def _gain(sig: Any) -> float:
    (pmin, pmax), (dmin, dmax) = sig.physical_range, sig.digital_range
    return abs((pmax - pmin) / (dmax - dmin)) if dmax != dmin else math.nan


def choose_channels(signals: list[Any], channel: str | None) -> tuple[int, int | None, str]:
    """(spo2 index, pulse index or None, how the SpO2 channel was chosen)."""
    labels = [s.label for s in signals]
    if channel is not None:
        want = channel.strip().lower()
        hits = [i for i, lab in enumerate(labels) if lab.strip().lower() == want]
        if not hits:
            raise InvalidInput(f"--channel {channel!r}: no such channel; the file has {', '.join(map(repr, labels)) or 'none'}")
        spo2_i, how = hits[0], "--channel"
    else:
        by_label = [i for i, s in enumerate(signals) if _is_spo2_label(s.label)]
        by_unit = [i for i, s in enumerate(signals) if s.physical_dimension.strip() == "%"]
        if by_label:
            spo2_i, how = by_label[0], "label"
        elif by_unit:
            spo2_i, how = by_unit[0], "unit %"
        else:
            raise InvalidInput(
                f"no SpO2 channel found (label SpO2/SaO2 or unit %) among {', '.join(map(repr, labels)) or 'no channels'}; "
                "name it with --channel LABEL"
            )
    pulse_i = next((i for i, s in enumerate(signals) if i != spo2_i and _is_pulse(s.label, s.physical_dimension)), None)
    return spo2_i, pulse_i, how


def parse_edf_night(raw: bytes, *, channel: str | None = None, tz: str | None = None,
                    utc_offset: str | None = None) -> ParsedNight:
    """Parse an EDF/EDF+C file (bytes); raises InvalidInput naming the field it cannot use."""
    from edfio import read_edf

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            edf = read_edf(io.BytesIO(raw), lazy_load_data=False)
            signals = list(edf.signals)
            start = datetime.combine(edf.startdate, edf.starttime)
            continuous = edf.is_continuous
    except InvalidInput:
        raise
    except Exception as exc:  # edfio raises ValueError/IndexError/... on malformed headers
        raise InvalidInput(f"not a readable EDF/EDF+ file ({type(exc).__name__}: {exc}); check it is an .edf export") from None
    if not continuous:
        raise InvalidInput("the EDF+ file is discontinuous (EDF+D); export the night as continuous EDF/EDF+C or as csv")
    if not signals:
        raise InvalidInput("the EDF file has no signal channels (only annotations)")
    si, pi, how = choose_channels(signals, channel)
    sig = signals[si]
    where = f"channel {sig.label.strip()!r}"
    fs = float(sig.sampling_frequency)
    if not (fs > 0 and math.isfinite(fs)):
        raise InvalidInput(f"{where}: sampling frequency {fs!r} is not usable")
    try:
        spo2 = round_to_resolution(np.asarray(sig.data, dtype=np.float64), _gain(sig))
    except Exception as exc:
        raise InvalidInput(f"{where}: cannot read its samples ({type(exc).__name__}: {exc})") from None
    n = spo2.size
    offs = np.arange(n, dtype=np.float64) / fs
    local = naive_seconds(start) + offs
    pulse = np.full(n, np.nan)
    pulse_label = None
    if pi is not None:
        psig = signals[pi]
        pfs = float(psig.sampling_frequency)
        try:
            pdata = round_to_resolution(np.asarray(psig.data, dtype=np.float64), _gain(psig))
        except Exception as exc:
            raise InvalidInput(f"channel {psig.label.strip()!r}: cannot read its samples ({type(exc).__name__}: {exc})") from None
        if pfs > 0 and pdata.size:
            # the pulse value in force at each SpO2 sample time (zero-order hold)
            k = np.floor(offs * pfs + 1e-9).astype(np.int64)
            ok = k < pdata.size
            pulse[ok] = pdata[k[ok]]
            pulse_label = psig.label.strip()
    if n < 2:
        raise InvalidInput(f"{where} has {n} sample{'s' if n != 1 else ''}; a night needs at least 2")
    utc, tzinfo = local_to_utc(local, tz, utc_offset, "EDF")
    source = {
        "format": "edf",
        "spo2_channel": sig.label.strip(),
        "spo2_channel_chosen_by": how,
        "spo2_unit": sig.physical_dimension.strip(),
        "sampling_frequency_hz": fs,
        "pulse_channel": pulse_label,
        "device_clock": tzinfo,
    }
    return ParsedNight(utc, spo2, pulse, [local_iso(v) for v in local], source)
