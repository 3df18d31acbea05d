"""Device quality codes and session grades (owned here; the spirometry store and the config schema use them).

A module of its own so that validating the config does not load the store, numpy and sqlite-utils.
"""

from __future__ import annotations

#: Device quality code (case-insensitive) -> quality.Manoeuvre flag.  Config adds to / overrides it.
DEFAULT_QUALITY_CODES: dict[str, str] = {
    "cough": "cough_first_second",
    "cough_first_second": "cough_first_second",
    "early_termination": "early_termination",
    "plateau": "plateau",
    "leak": "leak",
    "glottic_closure": "glottic_closure_first_second",
    "glottic_closure_first_second": "glottic_closure_first_second",
    "glottic_closure_after_first_second": "glottic_closure_after_first_second",
    "obstructed": "obstructed",
    "zero_flow_error": "faulty_zero_flow",
    "faulty_zero_flow": "faulty_zero_flow",
    "submaximal_inspiration": "submaximal_inspiration",
}
QUALITY_FLAGS = frozenset(DEFAULT_QUALITY_CODES.values())
#: ATS/ERS 2019 FVC grades of a repeatable session (>= 2 acceptable within 0.200 L): only these decide.
FVC_GRADES: tuple[str, ...] = ("A", "B", "C")
ALL_GRADES = frozenset("ABCDEUF")

#: The file formats ``collector spirometry import`` reads (collector/spirometry/files.py reads each).
IMPORT_FORMATS = ("hl7", "gdt", "ndd-xml", "csv")
