"""Bedside collector for ALS trial screening: overnight oximetry, spirometry, eligibility."""

__version__ = "0.1.0"
