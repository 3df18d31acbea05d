"""Desaturation-burden (T90) analysis: pure code, no storage.

* :mod:`.report` -- definitions, :class:`NightData`, vectorised :func:`night_report`.
* :mod:`.live` -- :class:`LiveBurden`, O(1) per sample, equal to the report.
* :mod:`.odi` -- ODI3/ODI4 with one named algorithm.
* :mod:`.plot` -- A4 night plot (imported lazily: it pulls in matplotlib).
"""

from .live import Event, LiveBurden, LiveSnapshot, OutOfOrderError
from .report import (
    DEFINITION_NAME,
    AnalysisConfig,
    AnalysisInputError,
    NightData,
    night_report,
)

__all__ = [
    "DEFINITION_NAME",
    "AnalysisConfig",
    "AnalysisInputError",
    "Event",
    "LiveBurden",
    "LiveSnapshot",
    "NightData",
    "OutOfOrderError",
    "night_report",
]
