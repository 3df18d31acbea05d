"""Names of the reference equations and ethnic groups (owned here; :mod:`collector.spirometry.gli` uses them).

Apart from the equations themselves so that the command line can offer them as choices
without loading numpy and the spline tables.
"""

from __future__ import annotations

GLI_GLOBAL_2022 = "gli-global-2022"
GLI_2012 = "gli-2012"
DEFAULT_EQUATION = GLI_GLOBAL_2022
EQUATIONS: tuple[str, ...] = (GLI_GLOBAL_2022, GLI_2012)

ETHNICITIES: tuple[str, ...] = (
    "caucasian",
    "african_american",
    "north_east_asian",
    "south_east_asian",
    "other",
)
