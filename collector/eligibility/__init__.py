"""Screening eligibility: staff facts, their append-only store, and the decision engine."""

from collector.eligibility.engine import (
    CRITERIA,
    Decision,
    EligibilityConfigError,
    NightResult,
    SpirometryResult,
    Thresholds,
    evaluate,
    thresholds_from_config,
)
from collector.eligibility.facts import (
    FACTS,
    IDENTIFYING_FACTS,
    FactError,
    FactValueError,
    RecordedFact,
    UnknownFactError,
    parse_fact,
)

__all__ = [
    "CRITERIA",
    "FACTS",
    "IDENTIFYING_FACTS",
    "Decision",
    "EligibilityConfigError",
    "FactError",
    "FactValueError",
    "NightResult",
    "RecordedFact",
    "SpirometryResult",
    "Thresholds",
    "UnknownFactError",
    "evaluate",
    "parse_fact",
    "thresholds_from_config",
]
