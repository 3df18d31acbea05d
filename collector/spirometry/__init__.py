"""Spirometry science: GLI reference equations and ATS/ERS 2019 manoeuvre quality (pure code, no I/O)."""

from collector.spirometry.gli import (
    DEFAULT_EQUATION,
    EQUATIONS,
    ETHNICITIES,
    AgeOutOfRangeError,
    EquationComparison,
    HeightOutOfRangeError,
    InvalidInputError,
    Prediction,
    PredictionArrays,
    Reason,
    SpirometryReferenceError,
    compare_fvc_percent,
    predict,
    predict_many,
)
from collector.spirometry.quality import (
    InvalidManoeuvreError,
    Manoeuvre,
    SessionAssessment,
    assess_session,
)

__all__ = [
    "DEFAULT_EQUATION", "EQUATIONS", "ETHNICITIES", "AgeOutOfRangeError", "EquationComparison",
    "HeightOutOfRangeError", "InvalidInputError", "InvalidManoeuvreError", "Manoeuvre", "Prediction",
    "PredictionArrays", "Reason", "SessionAssessment", "SpirometryReferenceError", "assess_session",
    "compare_fvc_percent", "predict", "predict_many",
]
